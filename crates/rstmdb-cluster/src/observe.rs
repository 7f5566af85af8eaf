//! What the node's raft metrics watch observes over its life: how often a new leader became
//! known, and every node id of every membership seen (node ids are never reused), kept in
//! `<data_dir>/raft/member_ids` across restarts.

use crate::hardstate::HardStateError;
use crate::types::{Member, NodeId};
use openraft::RaftMetrics;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What the metrics watch has seen.
#[derive(Debug)]
pub struct Observed {
    /// Times a leader other than the last known one became known since the node started.
    pub leader_changes: AtomicU64,
    /// Every node id of every membership this node has seen (as leader, follower or learner),
    /// since its data directory was created.
    seen: Mutex<BTreeSet<NodeId>>,
    /// Where `seen` is kept.
    path: PathBuf,
}

fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HardStateError {
    let path = path.to_path_buf();
    move |source| HardStateError::Io {
        context,
        path,
        source,
    }
}

/// Replaces `path` with `ids` (a JSON array): a temporary file, synced, renamed over it, the
/// directory synced; a crash leaves the old list or the new one.
fn save(path: &Path, ids: &BTreeSet<NodeId>) -> Result<(), HardStateError> {
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec(ids).map_err(|e| HardStateError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("encoding: {e}"),
    })?;
    let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    f.write_all(&body).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming over", path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", dir))?;
    }
    Ok(())
}

impl Observed {
    /// Loads the ids kept in `dir` (none when the file does not exist yet).
    pub fn open(dir: &Path) -> Result<Observed, HardStateError> {
        let path = dir.join("member_ids");
        let seen = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<BTreeSet<NodeId>>(&bytes).map_err(|e| {
                HardStateError::Corrupt {
                    path: path.clone(),
                    reason: format!("not a JSON array of node ids: {e}"),
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => {
                return Err(HardStateError::Io {
                    context: "reading",
                    path,
                    source,
                });
            }
        };
        Ok(Observed {
            leader_changes: AtomicU64::new(0),
            seen: Mutex::new(seen),
            path,
        })
    }

    /// Takes in one metrics update; returns the ids to save when it named a new one.
    fn note(
        &self,
        m: &RaftMetrics<NodeId, Member>,
        last_leader: &mut Option<NodeId>,
    ) -> Option<BTreeSet<NodeId>> {
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
        let before = seen.len();
        seen.extend(m.membership_config.membership().nodes().map(|(id, _)| *id));
        (seen.len() > before).then(|| seen.clone())
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
        let grown = {
            let m = rx.borrow_and_update();
            observed.note(&m, &mut last_leader)
        };
        if let Some(ids) = grown {
            let path = observed.path.clone();
            let saved = tokio::task::spawn_blocking(move || save(&path, &ids)).await;
            match saved {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "keeping the member ids seen"),
                Err(e) => tracing::warn!(error = %e, "keeping the member ids seen: task failed"),
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
