//! What the node's raft metrics watch observes over its life: how often a new leader became
//! known, and every node id of every membership seen (node ids are never reused).

use crate::types::{Member, NodeId};
use openraft::RaftMetrics;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What the metrics watch has seen since the node started.
#[derive(Debug, Default)]
pub struct Observed {
    /// Times a leader other than the last known one became known.
    pub leader_changes: AtomicU64,
    /// Every node id of every membership this node has seen (memberships it applied or
    /// received since it started, and the one it started with).
    seen: Mutex<BTreeSet<NodeId>>,
}

impl Observed {
    fn note(&self, m: &RaftMetrics<NodeId, Member>, last_leader: &mut Option<NodeId>) {
        if let Some(l) = m.current_leader
            && *last_leader != Some(l)
        {
            *last_leader = Some(l);
            self.leader_changes.fetch_add(1, Relaxed);
        }
        let mut seen = match self.seen.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        seen.extend(m.membership_config.membership().nodes().map(|(id, _)| *id));
    }

    pub(crate) fn was_member(&self, id: NodeId) -> bool {
        match self.seen.lock() {
            Ok(s) => s.contains(&id),
            Err(poisoned) => poisoned.into_inner().contains(&id),
        }
    }
}

/// Follows the raft metrics until raft stops.
pub(crate) async fn observe(
    mut rx: tokio::sync::watch::Receiver<RaftMetrics<NodeId, Member>>,
    observed: std::sync::Arc<Observed>,
) {
    let mut last_leader = None;
    loop {
        {
            let m = rx.borrow_and_update();
            observed.note(&m, &mut last_leader);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
