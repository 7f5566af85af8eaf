//! The peer link: raft RPCs between nodes over TCP on `cluster.raft_listen`, inside TLS with
//! mutual authentication when the server runs with TLS ([`crate::peer_tls`]).
//!
//! Each RPC is one request frame and one response frame on a connection the caller keeps for
//! its next RPC: a 4-byte big-endian length, then JSON. Every request names the cluster and
//! the target node; a node answers a request for another cluster or another node id with an
//! error and closes the connection (a wrong address must never make a leader replicate to
//! itself). Frames are bounded ([`MAX_FRAME_BYTES`]); an append that would not fit is split
//! by openraft ([`PayloadTooLarge`]).

use crate::forward::{ForwardError, ForwardHandler, ForwardReply};
use crate::peer_tls::{BoxedStream, PeerSecurity};
use crate::types::{Member, NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, Raft};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Largest frame either side sends or accepts.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// How long a peer connection may sit between the frames of one request.
const READ_IDLE: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize, Deserialize)]
struct PeerRequest {
    cluster_id: String,
    from: NodeId,
    to: NodeId,
    rpc: Rpc,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client request a follower forwards to the leader (`crate::forward`).
    Forward {
        principal: String,
        request: String,
    },
    /// A follower's linearizable read asks the leader for its read index.
    ReadIndex,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
enum Reply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Forward(ForwardReply),
    /// The leader's read index (its commit index once it confirmed its leadership), or why not.
    ReadIndex(Result<u64, String>),
    /// The request was not for this node or cluster.
    Refused(String),
}

/// Who this node is on the peer link.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub cluster_id: String,
    pub node_id: NodeId,
}

async fn write_frame<S: AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame over 4 GiB"))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
    stream.write_all(&buf).await?;
    // A TLS stream holds written data until flushed.
    stream.flush().await
}

async fn read_frame<S: AsyncRead + Unpin + ?Sized>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(std::io::Error::other(format!(
            "peer frame of {len} bytes is over the limit of {MAX_FRAME_BYTES}"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

// ---- client side ---------------------------------------------------------------------------

/// Makes one [`PeerClient`] per target; openraft asks for one per replication stream.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    pub me: PeerIdentity,
    pub security: PeerSecurity,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            me: self.me.clone(),
            target,
            target_node: node.clone(),
            security: self.security.clone(),
            conn: None,
        }
    }
}

/// The link to one peer: one connection, one RPC at a time, reconnected after any error.
pub struct PeerClient {
    me: PeerIdentity,
    target: NodeId,
    target_node: Member,
    security: PeerSecurity,
    conn: Option<BoxedStream>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("me", &self.me)
            .field("target", &self.target)
            .field("target_node", &self.target_node)
            .field("tls", &self.security.is_tls())
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

/// Why an RPC got no answer.
enum CallError {
    /// Not sent: the peer could not be reached.
    Unreachable(std::io::Error),
    /// Sent, but no valid answer came back.
    Network(std::io::Error),
    TooLarge,
    Refused(String),
}

impl PeerClient {
    /// A link to `target` at `node` (connected on first use).
    pub fn new(
        me: PeerIdentity,
        security: PeerSecurity,
        target: NodeId,
        node: Member,
    ) -> PeerClient {
        PeerClient {
            me,
            target,
            target_node: node,
            security,
            conn: None,
        }
    }

    /// Sends a client request (RCP request JSON) to this peer, the leader, and returns its
    /// answer. `ttl` bounds the whole exchange.
    pub async fn forward(
        &mut self,
        principal: String,
        request: String,
        ttl: Duration,
    ) -> Result<ForwardReply, ForwardError> {
        let leader = self.target_node.client.clone();
        match self.call(Rpc::Forward { principal, request }, ttl).await {
            Ok(Reply::Forward(r)) => Ok(r),
            Ok(_) => Err(ForwardError::NoAnswer {
                leader,
                detail: "the peer answered another RPC".into(),
            }),
            Err(CallError::Unreachable(e)) => Err(ForwardError::Unreachable {
                leader,
                detail: e.to_string(),
            }),
            Err(CallError::Refused(why)) => Err(ForwardError::Unreachable {
                leader,
                detail: why,
            }),
            Err(CallError::TooLarge) => Err(ForwardError::Unreachable {
                leader,
                detail: format!(
                    "the request is over the peer frame limit of {MAX_FRAME_BYTES} bytes"
                ),
            }),
            Err(CallError::Network(e)) => Err(ForwardError::NoAnswer {
                leader,
                detail: e.to_string(),
            }),
        }
    }

    /// Asks this peer, the leader, for its read index.
    pub async fn read_index(&mut self, ttl: Duration) -> Result<u64, ForwardError> {
        let leader = self.target_node.client.clone();
        match self.call(Rpc::ReadIndex, ttl).await {
            Ok(Reply::ReadIndex(Ok(i))) => Ok(i),
            Ok(Reply::ReadIndex(Err(detail))) => Err(ForwardError::Unreachable { leader, detail }),
            Ok(_) => Err(ForwardError::NoAnswer {
                leader,
                detail: "the peer answered another RPC".into(),
            }),
            Err(CallError::Network(e)) => Err(ForwardError::NoAnswer {
                leader,
                detail: e.to_string(),
            }),
            Err(CallError::Unreachable(e)) => Err(ForwardError::Unreachable {
                leader,
                detail: e.to_string(),
            }),
            Err(CallError::Refused(detail)) => Err(ForwardError::Unreachable { leader, detail }),
            Err(CallError::TooLarge) => Err(ForwardError::Unreachable {
                leader,
                detail: "over the frame limit".into(),
            }),
        }
    }

    async fn call(&mut self, rpc: Rpc, ttl: Duration) -> Result<Reply, CallError> {
        let req = PeerRequest {
            cluster_id: self.me.cluster_id.clone(),
            from: self.me.node_id,
            to: self.target,
            rpc,
        };
        let body =
            serde_json::to_vec(&req).map_err(|e| CallError::Network(std::io::Error::other(e)))?;
        if body.len() > MAX_FRAME_BYTES {
            return Err(CallError::TooLarge);
        }
        let mut stream = match self.conn.take() {
            Some(s) => s,
            None => crate::peer_tls::dial(&self.security, &self.target_node.raft, ttl)
                .await
                .map_err(CallError::Unreachable)?,
        };
        let exchange = async {
            write_frame(&mut stream, &body).await?;
            read_frame(&mut stream).await
        };
        let answer = tokio::time::timeout(ttl, exchange)
            .await
            .map_err(|_| CallError::Network(std::io::Error::other("no answer in time")))?
            .map_err(CallError::Network)?;
        let reply: Reply = serde_json::from_slice(&answer).map_err(|e| {
            CallError::Network(std::io::Error::other(format!("undecodable answer: {e}")))
        })?;
        if let Reply::Refused(why) = reply {
            return Err(CallError::Refused(why));
        }
        // Only a connection that completed an exchange is kept.
        self.conn = Some(stream);
        Ok(reply)
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        e: CallError,
        entries: u64,
    ) -> RPCError<NodeId, Member, E> {
        match e {
            CallError::Unreachable(io) => RPCError::Unreachable(Unreachable::new(&io)),
            CallError::Network(io) => RPCError::Network(NetworkError::new(&io)),
            CallError::TooLarge => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint((entries / 2).max(1)))
            }
            CallError::Refused(why) => {
                RPCError::Unreachable(Unreachable::from(AnyError::error(format!(
                    "node {} at {} refused: {why}",
                    self.target, self.target_node.raft
                ))))
            }
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, Member, E> {
        RPCError::Network(NetworkError::from(AnyError::error(
            "the peer answered another RPC",
        )))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let n = rpc.entries.len() as u64;
        match self.call(Rpc::Append(rpc), option.hard_ttl()).await {
            Ok(Reply::Append(Ok(r))) => Ok(r),
            Ok(Reply::Append(Err(e))) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.target_node.clone(),
                e,
            ))),
            Ok(_) => Err(self.unexpected()),
            Err(e) => Err(self.rpc_error(e, n)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(Rpc::Snapshot(rpc), option.hard_ttl()).await {
            Ok(Reply::Snapshot(Ok(r))) => Ok(r),
            Ok(Reply::Snapshot(Err(e))) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.target_node.clone(),
                e,
            ))),
            Ok(_) => Err(self.unexpected()),
            Err(e) => Err(self.rpc_error(e, 1)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(Rpc::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(Ok(r))) => Ok(r),
            Ok(Reply::Vote(Err(e))) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.target_node.clone(),
                e,
            ))),
            Ok(_) => Err(self.unexpected()),
            Err(e) => Err(self.rpc_error(e, 1)),
        }
    }
}

// ---- server side ---------------------------------------------------------------------------

/// Accepts peer connections until the listener fails or the task is aborted.
/// Where the leader finds the handler for forwarded requests (installed after start).
pub type ForwardSlot = Arc<OnceLock<Arc<dyn ForwardHandler>>>;

pub async fn serve(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    me: PeerIdentity,
    forward: ForwardSlot,
    security: PeerSecurity,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "peer listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (raft, me, security, forward) =
            (raft.clone(), me.clone(), security.clone(), forward.clone());
        tokio::spawn(async move {
            let Some(stream) = crate::peer_tls::accept(&security, stream, peer).await else {
                return;
            };
            if let Err(e) = serve_connection(stream, raft, &me, &forward).await {
                tracing::debug!(%peer, error = %e, "peer connection ended");
            }
        });
    }
}

async fn serve_connection(
    mut stream: BoxedStream,
    raft: Raft<TypeConfig>,
    me: &PeerIdentity,
    forward: &ForwardSlot,
) -> std::io::Result<()> {
    loop {
        let frame = match tokio::time::timeout(READ_IDLE, read_frame(&mut stream)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let req: PeerRequest = match serde_json::from_slice(&frame) {
            Ok(r) => r,
            Err(e) => {
                let reply = Reply::Refused(format!("undecodable request: {e}"));
                let _ = write_frame(&mut stream, &serde_json::to_vec(&reply)?).await;
                return Ok(());
            }
        };
        let refusal = if req.cluster_id != me.cluster_id {
            Some(format!(
                "this node belongs to cluster {:?}, not {:?}",
                me.cluster_id, req.cluster_id
            ))
        } else if req.to != me.node_id {
            Some(format!(
                "this is node {}, not node {} (a wrong address in the membership?)",
                me.node_id, req.to
            ))
        } else {
            None
        };
        if let Some(why) = refusal {
            tracing::warn!(from = req.from, %why, "peer request refused");
            let reply = Reply::Refused(why);
            let _ = write_frame(&mut stream, &serde_json::to_vec(&reply)?).await;
            return Ok(());
        }
        let reply = match req.rpc {
            Rpc::Append(r) => Reply::Append(raft.append_entries(r).await),
            Rpc::Vote(r) => Reply::Vote(raft.vote(r).await),
            Rpc::Snapshot(r) => Reply::Snapshot(raft.install_snapshot(r).await),
            Rpc::ReadIndex => Reply::ReadIndex(match raft.get_read_log_id().await {
                Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
                Err(e) => Err(e.to_string()),
            }),
            Rpc::Forward { principal, request } => Reply::Forward(match forward.get() {
                Some(h) => h.handle(principal, request.into_bytes()).await,
                None => ForwardReply {
                    result: None,
                    error: Some(serde_json::json!({
                        "code": "WAL_IO_ERROR",
                        "message": "the leader is still starting; nothing was written",
                        "retryable": true
                    })),
                    wal_offset: None,
                },
            }),
        };
        let body = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
        write_frame(&mut stream, &body).await?;
    }
}
