//! Per-instance serialisation without a global lock.
//!
//! A fixed table of async mutexes; an instance id hashes to one of them. Every mutation of
//! an instance holds its shard from the checks (`expected_state`, existence) through the
//! commit acknowledgement, so checks are atomic with the write, while different instances
//! proceed in parallel and share group commits. A fixed table bounds memory no matter how
//! many instances exist; two ids sharing a shard only wait for each other.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Number of lock shards. Far above the number of concurrent writers we expect, so that
/// false sharing between unrelated instances is rare.
pub(crate) const LOCK_SHARDS: usize = 4096;

pub(crate) struct LockTable {
    shards: Vec<Arc<Mutex<()>>>,
    hasher: RandomState,
}

impl LockTable {
    pub fn new() -> Self {
        LockTable {
            shards: (0..LOCK_SHARDS).map(|_| Arc::new(Mutex::new(()))).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % self.shards.len()
    }

    /// The shard of `key` if it is free right now (never waits).
    pub fn try_lock(&self, key: &str) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.shards.get(self.shard(key))?.try_lock().ok()
    }

    /// Locks every shard, in order (FLUSH_ALL: nothing else may be mid-write).
    pub async fn lock_every_shard(&self) -> Vec<OwnedMutexGuard<()>> {
        let mut guards = Vec::with_capacity(self.shards.len());
        for m in &self.shards {
            guards.push(m.clone().lock_owned().await);
        }
        guards
    }

    /// Locks the shards of all `keys`, in shard order so that two multi-key lockers cannot
    /// deadlock. The guards are owned so that a write can hand them to the commit pipeline,
    /// which releases them only once the change is applied — even if the writer's caller has
    /// stopped waiting.
    pub async fn lock_all(&self, keys: &[&str]) -> Vec<OwnedMutexGuard<()>> {
        let mut idx: Vec<usize> = keys.iter().map(|k| self.shard(k)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            if let Some(m) = self.shards.get(i) {
                guards.push(m.clone().lock_owned().await);
            }
        }
        guards
    }
}
