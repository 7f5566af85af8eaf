//! The decoded-instance cache: the latest committed version of recently used live instances,
//! so that GET_INSTANCE and the checks of a write skip the store lookup and the JSON decode.
//!
//! Coherence — a cached instance is always the version the store (overlay, then sled) holds:
//! - The apply stage puts every instance it writes (and removes every one it deletes) right
//!   after the store accepted the batch, before the write is acknowledged. FLUSH_ALL clears the
//!   cache the same way.
//! - Readers fill it only while holding the instance's lock shard. Every writer holds that
//!   shard from its checks until the apply stage has updated the cache, so under it the store holds
//!   the latest committed version and no write of the instance is in flight. A reader without
//!   the shard (GET_INSTANCE, LIST_INSTANCES) tries it once on a miss and, if it is busy,
//!   reads the store without filling the cache.
//! - Eviction and removal may happen at any moment: they only cause misses.
//!
//! Deleted instances (kept as tombstones until a checkpoint purges them) are never cached.
//!
//! Memory is bounded by `StorageConfig::instance_cache_mb`; an entry weighs an estimate of its
//! decoded size (twice its JSON encoding plus a fixed 512 bytes). 0 turns the cache off.

use rstmdb_core::Instance;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Estimated in-memory size of a decoded instance whose JSON encoding has `encoded` bytes.
fn weight_of(encoded: usize) -> u64 {
    (encoded as u64).saturating_mul(2).saturating_add(512)
}

#[derive(Clone)]
struct Entry {
    inst: Arc<Instance>,
    weight: u64,
}

#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<String, Entry> for ByWeight {
    fn weight(&self, _key: &String, val: &Entry) -> u64 {
        val.weight
    }
}

/// Counters and sizes for the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceCacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to read the state store (including ids that do not exist).
    pub misses: u64,
    pub entries: u64,
    /// Estimated bytes held (see the module docs).
    pub weight_bytes: u64,
    /// The configured bound in bytes (0: the cache is off).
    pub capacity_bytes: u64,
}

pub(crate) struct InstanceCache {
    cache: Option<quick_cache::sync::Cache<String, Entry, ByWeight>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl InstanceCache {
    pub fn new(capacity_mb: u64) -> InstanceCache {
        let bytes = capacity_mb.saturating_mul(1024 * 1024);
        let cache = (bytes > 0).then(|| {
            // Only a sizing hint for the hash tables: ~1 KiB per entry.
            let items = usize::try_from(bytes / 1024).unwrap_or(usize::MAX).max(16);
            quick_cache::sync::Cache::with_weighter(items, bytes, ByWeight)
        });
        InstanceCache {
            cache,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached instance, counting a hit or a miss.
    pub fn get(&self, id: &str) -> Option<Arc<Instance>> {
        let cache = self.cache.as_ref()?;
        match cache.get(id) {
            Some(e) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(e.inst)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Records `inst` (JSON-encoded in `encoded` bytes) as the current version of its id.
    /// Callers: the apply stage after a write, or a reader holding the instance's lock shard
    /// (see the module docs). A deleted instance is removed instead.
    pub fn put(&self, inst: Arc<Instance>, encoded: usize) {
        let Some(cache) = &self.cache else { return };
        // The cache holds the version the store holds, so a put never replaces a newer
        // version of the id by an older one (what a fill outside the lock shard, racing a
        // write, would do).
        debug_assert!(
            cache
                .peek(inst.id.as_str())
                .is_none_or(|held| held.inst.last_wal_offset <= inst.last_wal_offset),
            "instance {} at offset {} would replace a newer cached version",
            inst.id,
            inst.last_wal_offset
        );
        if inst.deleted {
            cache.remove(inst.id.as_str());
            return;
        }
        let entry = Entry {
            weight: weight_of(encoded),
            inst,
        };
        cache.insert(entry.inst.id.clone(), entry);
    }

    pub fn clear(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    pub fn stats(&self) -> InstanceCacheStats {
        InstanceCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.cache.as_ref().map_or(0, |c| c.len() as u64),
            weight_bytes: self.cache.as_ref().map_or(0, |c| c.weight()),
            capacity_bytes: self.cache.as_ref().map_or(0, |c| c.capacity()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn inst(id: &str, state: &str, deleted: bool) -> Arc<Instance> {
        Arc::new(Instance {
            id: id.into(),
            machine: "m".into(),
            version: 1,
            state: state.into(),
            ctx: Default::default(),
            last_event_id: None,
            last_wal_offset: 1,
            created_at: 0,
            updated_at: 0,
            deleted,
        })
    }

    #[test]
    fn counts_hits_and_misses_and_keeps_the_latest_version() {
        let c = InstanceCache::new(1);
        assert!(c.get("a").is_none());
        c.put(inst("a", "s1", false), 10);
        c.put(inst("a", "s2", false), 10);
        assert_eq!(c.get("a").unwrap().state, "s2");
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
        assert_eq!(s.weight_bytes, weight_of(10));
        assert_eq!(s.capacity_bytes, 1024 * 1024);
    }

    #[test]
    fn a_deleted_instance_leaves_the_cache() {
        let c = InstanceCache::new(1);
        c.put(inst("a", "s1", false), 10);
        c.put(inst("a", "s1", true), 10);
        assert!(c.get("a").is_none());
        assert_eq!(c.stats().entries, 0);
    }

    #[test]
    fn stays_within_its_bound() {
        let c = InstanceCache::new(1);
        for i in 0..10_000 {
            c.put(inst(&format!("i{i}"), "s", false), 1000);
        }
        let s = c.stats();
        assert!(s.weight_bytes <= s.capacity_bytes, "{s:?}");
        assert!(s.entries < 10_000 && s.entries > 0, "{s:?}");
    }

    #[test]
    fn off_when_sized_zero() {
        let c = InstanceCache::new(0);
        c.put(inst("a", "s1", false), 10);
        assert!(c.get("a").is_none());
        assert_eq!(c.stats(), InstanceCacheStats::default());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "would replace a newer cached version")]
    fn replacing_a_cached_version_by_an_older_one_is_caught() {
        let c = InstanceCache::new(1);
        let mut newer = Arc::unwrap_or_clone(inst("a", "s2", false));
        newer.last_wal_offset = 5;
        c.put(Arc::new(newer), 10);
        // What a reader that read the store before the write, then filled the cache without
        // holding the lock shard, would put.
        c.put(inst("a", "s1", false), 10);
    }
}
