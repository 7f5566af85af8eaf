//! Reads: GET_INSTANCE (through the instance cache) and LIST_INSTANCES (from the counters
//! and the (machine, state) index).

use super::{Database, internal, sled_err};
use crate::cache::InstanceCacheStats;
use crate::state::{self, keys};
use crate::{InstancePage, ListQuery, MAX_LIST_LIMIT};
use rstmdb_core::{Error, Instance, Result};
use std::sync::Arc;

impl Database {
    /// GET_INSTANCE: deleted instances are not found.
    pub fn get_instance(&self, id: &str) -> Result<Instance> {
        self.get_instance_shared(id).map(Arc::unwrap_or_clone)
    }

    /// GET_INSTANCE without copying the instance out of the cache.
    pub fn get_instance_shared(&self, id: &str) -> Result<Arc<Instance>> {
        match self.unlocked().load_shared(id)? {
            Some(i) if !i.deleted => Ok(i),
            _ => Err(Error::InstanceNotFound {
                instance_id: id.to_owned(),
            }),
        }
    }

    /// Hits, misses and size of the decoded-instance cache (`StorageConfig::instance_cache_mb`).
    pub fn instance_cache_stats(&self) -> InstanceCacheStats {
        self.inner.cache.stats()
    }

    /// LIST_INSTANCES, ordered by instance id (byte order), with exact `total`.
    pub fn list_instances(&self, q: &ListQuery) -> Result<InstancePage> {
        let limit = q.limit.min(MAX_LIST_LIMIT);
        let db = &self.inner.db;
        let after = q.after.as_deref();
        let matches = |i: &Instance| {
            (q.include_deleted || !i.deleted)
                && q.machine.as_deref().is_none_or(|m| m == i.machine)
                && q.state.as_deref().is_none_or(|s| s == i.state)
        };
        if q.include_deleted {
            // Tombstones are not indexed: scan everything (rare; tombstones are purged at
            // checkpoints).
            let mut total = 0u64;
            let mut page = Vec::new();
            let mut skipped = 0usize;
            let mut has_more = false;
            for item in db.scan_prefix(keys::INSTANCE) {
                let (_, v) = item.map_err(sled_err)?;
                let inst = state::decode_instance(&v).map_err(internal)?;
                if !matches(&inst) {
                    continue;
                }
                total += 1;
                if after.is_some_and(|a| inst.id.as_str() <= a) {
                    continue;
                }
                if skipped < q.offset {
                    skipped += 1;
                } else if page.len() < limit {
                    page.push(inst);
                } else {
                    has_more = true;
                }
            }
            return Ok(InstancePage {
                instances: page,
                total,
                has_more,
            });
        }

        // Live instances: totals from the counters, ids from the (machine, state) index.
        let mut groups: Vec<(String, String, u64)> = Vec::new();
        for item in db.scan_prefix(keys::COUNT) {
            let (k, v) = item.map_err(sled_err)?;
            let Some((m, s)) = keys::split_count(&k) else {
                continue;
            };
            if q.machine.as_deref().is_some_and(|x| x != m)
                || q.state.as_deref().is_some_and(|x| x != s)
            {
                continue;
            }
            groups.push((m, s, state::decode_u64(&v).unwrap_or(0)));
        }
        let total: u64 = groups.iter().map(|g| g.2).sum();
        let mut ids: Box<dyn Iterator<Item = Result<String>>> =
            if q.machine.is_none() && q.state.is_none() {
                Box::new(
                    db.scan_prefix(keys::INSTANCE)
                        .filter_map(|item| match item {
                            Ok((k, v)) => match state::decode_instance(&v) {
                                Ok(i) if !i.deleted => {
                                    Some(Ok(String::from_utf8_lossy(&k[keys::INSTANCE.len()..])
                                        .into_owned()))
                                }
                                Ok(_) => None,
                                Err(e) => Some(Err(internal(e))),
                            },
                            Err(e) => Some(Err(sled_err(e))),
                        }),
                )
            } else {
                let streams: Vec<_> = groups
                    .iter()
                    .map(|(m, s, _)| {
                        let prefix = keys::by_state_prefix(m, s);
                        let plen = prefix.len();
                        db.scan_prefix(&prefix).map(move |item| {
                            item.map(|(k, _)| String::from_utf8_lossy(&k[plen..]).into_owned())
                                .map_err(sled_err)
                        })
                    })
                    .collect();
                Box::new(MergeById::new(streams))
            };
        let mut page = Vec::new();
        let mut skipped = 0usize;
        let mut has_more = false;
        for id in ids.by_ref() {
            let id = id?;
            if after.is_some_and(|a| id.as_str() <= a) {
                continue;
            }
            if skipped < q.offset {
                skipped += 1;
                continue;
            }
            if page.len() == limit {
                has_more = true;
                break;
            }
            // Lists are not snapshots: an instance deleted or moved since the index was read
            // is left out rather than reported in a state it no longer has.
            match self.unlocked().load(&id)? {
                Some(i) if matches(&i) => page.push(i),
                _ => {}
            }
        }
        Ok(InstancePage {
            instances: page,
            total,
            has_more,
        })
    }
}

/// Merges id streams that are each sorted by id into one sorted stream.
struct MergeById<I: Iterator<Item = Result<String>>> {
    streams: Vec<std::iter::Peekable<I>>,
}

impl<I: Iterator<Item = Result<String>>> MergeById<I> {
    fn new(streams: Vec<I>) -> Self {
        MergeById {
            streams: streams.into_iter().map(Iterator::peekable).collect(),
        }
    }
}

impl<I: Iterator<Item = Result<String>>> Iterator for MergeById<I> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        let mut best: Option<(usize, String)> = None;
        for i in 0..self.streams.len() {
            match self.streams[i].peek() {
                None => {}
                // Surface errors first.
                Some(Err(_)) => return self.streams[i].next(),
                Some(Ok(id)) if best.as_ref().is_none_or(|(_, b)| id < b) => {
                    best = Some((i, id.clone()));
                }
                Some(Ok(_)) => {}
            }
        }
        best.and_then(|(i, _)| self.streams[i].next())
    }
}
