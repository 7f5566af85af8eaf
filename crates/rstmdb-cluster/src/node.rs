//! One cluster node: the replicated database, openraft on top of it, the peer listener, and
//! the [`Proposer`] that turns a validated write into a raft proposal.

use crate::forward::{ForwardError, ForwardHandler, ForwardReply};
use crate::hardstate::{CommittedFile, HardStateError, HardStateFile};
use crate::log_store::LogStore;
use crate::net::{ForwardSlot, PeerClient, PeerIdentity, PeerNetwork};
use crate::peer_tls::{NotTls, PeerSecurity, PeerTls};
use crate::state_machine::StateMachine;
use crate::types::{Member, NodeId, Request, TypeConfig};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{Config, Raft, SnapshotPolicy};
use rstmdb_storage::replicated::{Proposal, Proposer, ReplicatedOpen};
use rstmdb_storage::{Database, OpenError, StorageConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How reads on a cluster member see writes (`cluster.read_consistency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    Linearizable,
    Lease,
    Stale,
}

/// Idle forwarding links kept per node (each carries one request at a time).
const MAX_IDLE_FORWARD_LINKS: usize = 16;

/// What a node needs to know to run (the server maps its `cluster:` config onto this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    pub cluster_id: String,
    pub node_id: NodeId,
    /// The peer listener's address.
    pub raft_listen: String,
    /// This node's addresses as others should use them.
    pub advertise: Member,
    /// Read only by a node whose raft state is empty: the first membership.
    pub initial_members: BTreeMap<NodeId, Member>,
    pub election_timeout_ms: (u64, u64),
    pub heartbeat_ms: u64,
    pub write_timeout_ms: u64,
    /// A snapshot is built once this many bytes of records were applied since the last one
    /// (then raft may purge the log before it); 0 = never.
    pub snapshot_log_bytes: u64,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    HardState(#[from] HardStateError),
    #[error("raft configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("binding the peer listener on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// A running node. Dropping it does not stop raft: call [`ClusterNode::shutdown`].
pub struct ClusterNode {
    db: Database,
    raft: Raft<TypeConfig>,
    opts: ClusterOptions,
    security: PeerSecurity,
    peer_task: tokio::task::JoinHandle<()>,
    /// What the metrics watch has seen (leader changes, every member id); see
    /// [`crate::observe::Observed`].
    pub(crate) observed: Arc<crate::observe::Observed>,
    watch_task: tokio::task::JoinHandle<()>,
    /// The committed index this node had persisted when it started (`/readyz` waits until
    /// it has applied that far).
    startup_committed: u64,
    /// The database holds it weakly (see `Database::set_proposer`).
    _proposer: Arc<dyn Proposer>,
    snapshot_task: tokio::task::JoinHandle<()>,
    me: PeerIdentity,
    /// What this node runs for requests forwarded to it (installed by the server).
    forward: ForwardSlot,
    /// Idle links to the leader for forwarding, reused (one request at a time each).
    forward_links: std::sync::Mutex<Vec<(NodeId, PeerClient)>>,
    /// Where linearizable reads queue for a read-index round (`crate::read_index`).
    read_index: tokio::sync::mpsc::Sender<crate::read_index::Waiter>,
    read_index_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("cluster_id", &self.opts.cluster_id)
            .field("node_id", &self.opts.node_id)
            .finish_non_exhaustive()
    }
}

impl ClusterNode {
    /// Opens the data directory as a replica, starts raft and the peer listener, and, on a
    /// node with no raft state yet that is one of `initial_members`, proposes that membership
    /// (every initial member does the same with the same list; raft lets one of them win).
    /// `security` is how the peer link is secured: TLS with mutual authentication, or
    /// plaintext (tests only).
    pub async fn start(
        storage: StorageConfig,
        opts: ClusterOptions,
        security: PeerSecurity,
    ) -> Result<ClusterNode, ClusterError> {
        let data_dir = storage.data_dir.clone();
        let committed = CommittedFile::open(&crate::raft_dir(&data_dir))?;
        let replay_to = committed.load().map_or(0, |(index, _)| index);
        let (db, log, apply) = {
            let storage = storage.clone();
            tokio::task::spawn_blocking(move || {
                Database::open_replicated(
                    storage,
                    ReplicatedOpen {
                        committed: replay_to,
                    },
                )
            })
            .await
            .map_err(|e| ClusterError::Raft(format!("open task: {e}")))??
        };
        let hard = HardStateFile::open(&crate::raft_dir(&data_dir))?;
        let log_store = LogStore::new(log.clone(), hard, committed);
        let sm = StateMachine::new(apply, log);
        let applied_bytes = sm.bytes_since_snapshot();
        let (min, max) = opts.election_timeout_ms;
        let config = Config {
            cluster_name: opts.cluster_id.clone(),
            election_timeout_min: min,
            election_timeout_max: max,
            heartbeat_interval: opts.heartbeat_ms,
            // Our snapshots are built on demand for now (snapshot_log_mb comes with the
            // checkpointer's trigger); a node that fell behind a purge installs one.
            snapshot_policy: SnapshotPolicy::Never,
            max_payload_entries: 256,
            install_snapshot_timeout: 30_000,
            ..Config::default()
        }
        .validate()
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(&opts.raft_listen)
            .await
            .map_err(|source| ClusterError::Listen {
                addr: opts.raft_listen.clone(),
                source,
            })?;
        let me = PeerIdentity {
            cluster_id: opts.cluster_id.clone(),
            node_id: opts.node_id,
        };
        let raft = Raft::new(
            opts.node_id,
            Arc::new(config),
            PeerNetwork {
                me: me.clone(),
                security: security.clone(),
            },
            log_store,
            sm,
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let forward: ForwardSlot = Arc::default();
        let peer_task = tokio::spawn(crate::net::serve(
            listener,
            raft.clone(),
            me.clone(),
            forward.clone(),
            security.clone(),
        ));
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        if !initialized && opts.initial_members.contains_key(&opts.node_id) {
            match raft.initialize(opts.initial_members.clone()).await {
                Ok(()) => {
                    tracing::info!(members = ?opts.initial_members.keys().collect::<Vec<_>>(), "proposed the initial cluster membership")
                }
                Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                    tracing::info!(reason = %e, "initial membership already set");
                }
                Err(e) => return Err(ClusterError::Raft(format!("initializing the cluster: {e}"))),
            }
        }
        let snapshot_task = tokio::spawn(snapshot_trigger(
            raft.clone(),
            applied_bytes,
            opts.snapshot_log_bytes,
        ));
        let proposer: Arc<dyn Proposer> = Arc::new(RaftProposer {
            raft: raft.clone(),
            metrics: raft.metrics(),
            write_timeout: Duration::from_millis(opts.write_timeout_ms.max(1)),
        });
        db.set_proposer(&proposer);
        let observed = Arc::new(crate::observe::Observed::open(&crate::raft_dir(&data_dir))?);
        let watch_task = tokio::spawn(crate::observe::observe(raft.metrics(), observed.clone()));
        let (read_index, read_index_task) = crate::read_index::spawn(
            raft.clone(),
            me.clone(),
            security.clone(),
            Duration::from_millis(opts.write_timeout_ms.max(1)),
        );
        Ok(ClusterNode {
            db,
            raft,
            opts,
            security,
            peer_task,
            observed,
            watch_task,
            startup_committed: replay_to,
            _proposer: proposer,
            snapshot_task,
            me,
            forward,
            forward_links: std::sync::Mutex::new(Vec::new()),
            read_index,
            read_index_task,
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// Swaps the peer link's TLS material (SIGHUP): connections made from now on, in and
    /// out, use it; open ones keep their session. Refused on a plaintext peer link.
    pub fn set_peer_tls(&self, tls: PeerTls) -> Result<(), NotTls> {
        self.security.replace(tls)
    }

    /// Peer TLS handshakes that failed, in and out (a live counter, for metrics).
    pub fn peer_handshake_failures(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.security.handshake_failures()
    }

    /// Whether the peer link runs TLS.
    pub fn peer_tls(&self) -> bool {
        self.security.is_tls()
    }

    /// The current leader and its addresses, if one is known.
    pub fn leader(&self) -> Option<(NodeId, Option<Member>)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id).cloned();
        Some((id, node))
    }

    /// The latest raft metrics (role, term, indexes, membership, replication progress).
    pub fn metrics(&self) -> openraft::RaftMetrics<NodeId, Member> {
        self.raft.metrics().borrow().clone()
    }

    /// Installs what this node runs when a follower forwards it a request (once).
    pub fn set_forward_handler(&self, handler: Arc<dyn ForwardHandler>) -> bool {
        self.forward.set(handler).is_ok()
    }

    /// Sends a client request to the leader and returns its answer (see `crate::forward`).
    /// `ttl` bounds the exchange.
    pub async fn forward(
        &self,
        principal: String,
        request: String,
        ttl: Duration,
    ) -> Result<ForwardReply, ForwardError> {
        let (leader, node) = self.leader_link()?;
        let mut link = self.take_link(leader, node);
        let r = link.forward(principal, request, ttl).await;
        self.return_link(leader, link, r.is_ok());
        r
    }

    /// Waits until a read on this node reflects every write acknowledged before the call
    /// (`Linearizable`: the leader's read index — its commit index once a quorum confirmed it
    /// still leads — applied here), or, for `Lease`, returns at once on a leader whose quorum
    /// answered within the shortest election timeout (no other leader can exist yet, given
    /// bounded clock drift) and otherwise does the same as `Linearizable`. `Stale` returns
    /// at once. `timeout` bounds the wait.
    pub async fn read_barrier(
        &self,
        consistency: ReadConsistency,
        timeout: Duration,
    ) -> Result<(), ForwardError> {
        match consistency {
            ReadConsistency::Stale => return Ok(()),
            ReadConsistency::Lease => {
                let m = self.raft.metrics();
                let m = m.borrow();
                // A new leader may not have applied what its predecessor committed: the lease
                // holds only once a record of its own term is applied (as the write gate).
                if m.state == openraft::ServerState::Leader
                    && m.millis_since_quorum_ack
                        .is_some_and(|ms| ms < self.opts.election_timeout_ms.0)
                    && m.last_applied
                        .is_some_and(|l| l.leader_id.term == m.current_term)
                {
                    return Ok(());
                }
            }
            ReadConsistency::Linearizable => {}
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.read_index
            .send(tx)
            .await
            .map_err(|_| ForwardError::NoLeader)?;
        let index = match rx.await.map_err(|_| ForwardError::NoLeader)? {
            // Became the leader between the round's two checks: ask again, once.
            Err(ForwardError::IsLeader) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.read_index
                    .send(tx)
                    .await
                    .map_err(|_| ForwardError::NoLeader)?;
                rx.await.map_err(|_| ForwardError::NoLeader)??
            }
            other => other?,
        };
        let waited = self
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await;
        match waited {
            Ok(_) => Ok(()),
            Err(e) => Err(ForwardError::NoAnswer {
                leader: "this node".into(),
                detail: format!("did not apply up to the read index {index} in time: {e}"),
            }),
        }
    }

    /// The leader (not this node) and its addresses.
    fn leader_link(&self) -> Result<(NodeId, Member), ForwardError> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let Some(id) = m.current_leader else {
            return Err(ForwardError::NoLeader);
        };
        if id == self.opts.node_id {
            return Err(ForwardError::IsLeader);
        }
        match m.membership_config.membership().get_node(&id) {
            Some(n) => Ok((id, n.clone())),
            None => Err(ForwardError::NoLeader),
        }
    }

    fn take_link(&self, leader: NodeId, node: Member) -> PeerClient {
        self.forward_links
            .lock()
            .ok()
            .and_then(|mut links| {
                let at = links.iter().position(|(id, _)| *id == leader)?;
                Some(links.swap_remove(at).1)
            })
            .unwrap_or_else(|| {
                PeerClient::new(self.me.clone(), self.security.clone(), leader, node)
            })
    }

    fn return_link(&self, leader: NodeId, link: PeerClient, healthy: bool) {
        if healthy
            && let Ok(mut links) = self.forward_links.lock()
            && links.len() < MAX_IDLE_FORWARD_LINKS
        {
            links.push((leader, link));
        }
    }

    /// Ready to serve: a leader is known and this node has applied at least what it had
    /// committed when it started (so reads do not go back in time across a restart).
    pub fn is_ready(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let applied = m.last_applied.map_or(0, |l| l.index);
        m.current_leader.is_some() && applied >= self.startup_committed
    }

    /// Whether this node is the leader now (as far as it knows).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == openraft::ServerState::Leader
    }

    /// Stops raft and the peer listener, then closes the database (checkpoint, WAL sync).
    /// Call it once; the node serves nothing afterwards.
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        self.peer_task.abort();
        self.snapshot_task.abort();
        self.read_index_task.abort();
        self.watch_task.abort();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.db
            .clone()
            .close()
            .await
            .map_err(|e| ClusterError::Raft(format!("closing the database: {e}")))
    }
}

/// Asks raft for a snapshot whenever `threshold` bytes were applied since the last one
/// began (checked once a second).
async fn snapshot_trigger(
    raft: Raft<TypeConfig>,
    applied: Arc<std::sync::atomic::AtomicU64>,
    threshold: u64,
) {
    if threshold == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if applied.load(std::sync::atomic::Ordering::Relaxed) >= threshold {
            // Reset here too: a build that fails must not be asked for every second.
            applied.store(0, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = raft.trigger().snapshot().await {
                // Raft stopped (it is shutting down); the next tick tries again otherwise.
                tracing::warn!(error = %e, "could not start a raft snapshot");
            }
        }
    }
}

/// Proposes validated writes through raft and finishes them with what the state machine
/// answered.
struct RaftProposer {
    raft: Raft<TypeConfig>,
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Member>>,
    write_timeout: Duration,
}

/// "(leader: <client address>)" for a refusal, from what this node knows.
pub(crate) fn leader_hint(m: &openraft::RaftMetrics<NodeId, Member>) -> String {
    m.current_leader
        .and_then(|id| m.membership_config.membership().get_node(&id))
        .map(|n| n.client.clone())
        .unwrap_or_else(|| "unknown".into())
}

impl Proposer for RaftProposer {
    fn write_gate(&self) -> Result<(), String> {
        let m = self.metrics.borrow();
        if m.state != openraft::ServerState::Leader {
            return Err(format!(
                "this node is not the leader (leader: {}); nothing was written",
                leader_hint(&m)
            ));
        }
        // Records apply in order: once one of this term is applied, so is everything
        // committed before the term began.
        match m.last_applied {
            Some(id) if id.leader_id.term == m.current_term => Ok(()),
            _ => Err(
                "this node has just become the leader and is still applying earlier \
                      records; nothing was written, retry shortly"
                    .into(),
            ),
        }
    }

    fn propose(&self, mut proposal: Proposal) {
        let raft = self.raft.clone();
        let timeout = self.write_timeout;
        tokio::spawn(async move {
            let Ok(json) = String::from_utf8(proposal.payload().to_vec()) else {
                proposal.fail_not_written("the WAL entry is not UTF-8 JSON");
                return;
            };
            let locks = proposal.take_locks();
            let write = raft.client_write(Request(json));
            tokio::pin!(write);
            let result = match tokio::time::timeout(timeout, &mut write).await {
                Ok(r) => r,
                Err(_) => {
                    proposal.fail_commit_timeout(format!(
                        "not committed within cluster.write_timeout_ms ({} ms); it may still be: retry with the same idempotency key",
                        timeout.as_millis()
                    ));
                    // The entry may still commit: hold its instances until its fate is known.
                    let _ = write.await;
                    drop(locks);
                    return;
                }
            };
            match result {
                Ok(resp) => proposal.complete(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    match f.leader_node {
                        Some(n) => proposal.fail_not_written(format!(
                            "this node is not the leader (leader: {}); nothing was written",
                            n.client
                        )),
                        None => proposal.fail_no_leader(
                            "the cluster has no leader at the moment; nothing was written, retry",
                        ),
                    }
                }
                Err(e) => proposal.fail_outcome_unknown(format!(
                    "the write's outcome is unknown ({e}); retry with the same idempotency key"
                )),
            }
            drop(locks);
        });
    }
}
