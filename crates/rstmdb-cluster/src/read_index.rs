//! Read indexes for linearizable reads, one round for many reads.
//!
//! A read needs the leader's commit index as of a moment after the read arrived (the leader
//! confirms with a quorum that it still leads; a follower asks the leader over the peer link).
//! One task does those rounds: it takes every read waiting, does one round and gives them all
//! its answer. A read that arrives during a round waits for the next, which begins after it
//! arrived, so every read still gets an index at least as new as its own arrival. Without
//! this, 64 concurrent reads on a follower made 64 round trips and 64 leader quorum checks
//! each time (`docs/benchmarks.md`).

use crate::forward::ForwardError;
use crate::net::{PeerClient, PeerIdentity};
use crate::peer_tls::PeerSecurity;
use crate::types::{NodeId, TypeConfig};
use openraft::Raft;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// One waiting read: where its answer goes.
pub(crate) type Waiter = oneshot::Sender<Result<u64, ForwardError>>;

/// Reads waiting for a round, at most (a full queue makes a read wait to enqueue).
const QUEUE: usize = 4096;

/// Starts the task; returns where reads queue.
pub(crate) fn spawn(
    raft: Raft<TypeConfig>,
    me: PeerIdentity,
    security: PeerSecurity,
    timeout: Duration,
) -> (mpsc::Sender<Waiter>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = tokio::spawn(run(rx, raft, me, security, timeout));
    (tx, task)
}

async fn run(
    mut rx: mpsc::Receiver<Waiter>,
    raft: Raft<TypeConfig>,
    me: PeerIdentity,
    security: PeerSecurity,
    timeout: Duration,
) {
    let mut link: Option<(NodeId, PeerClient)> = None;
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let answer = round(&raft, &me, &security, &mut link, timeout).await;
        for w in batch.drain(..) {
            let _ = w.send(answer.clone());
        }
    }
}

/// One read index: the leader's own, or asked of the leader.
async fn round(
    raft: &Raft<TypeConfig>,
    me: &PeerIdentity,
    security: &PeerSecurity,
    link: &mut Option<(NodeId, PeerClient)>,
    timeout: Duration,
) -> Result<u64, ForwardError> {
    if let Ok((read, _)) = raft.get_read_log_id().await {
        return Ok(read.map_or(0, |l| l.index));
    }
    let (leader, node) = {
        let m = raft.metrics();
        let m = m.borrow();
        let Some(id) = m.current_leader else {
            return Err(ForwardError::NoLeader);
        };
        if id == me.node_id {
            // Became the leader between the two checks: the next round asks raft again.
            return Err(ForwardError::IsLeader);
        }
        match m.membership_config.membership().get_node(&id) {
            Some(n) => (id, n.clone()),
            None => return Err(ForwardError::NoLeader),
        }
    };
    let mut client = match link.take() {
        Some((id, c)) if id == leader => c,
        _ => PeerClient::new(me.clone(), security.clone(), leader, node),
    };
    let r = client.read_index(timeout).await;
    if r.is_ok() {
        *link = Some((leader, client));
    }
    r
}
