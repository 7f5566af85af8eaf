//! The apply stage: plans each record's state changes in sequence order (ahead, while the
//! group's sync runs), writes them to the store with the high-water offset, fills the
//! instance cache, publishes the new end of the log, acknowledges and broadcasts watch
//! events; also replay at open, FLUSH_ALL and the store's part of a checkpoint.

use super::{
    ApplyMsg, CheckpointMark, CommitError, CommitOutcome, CommitRequest, CommitStats, GroupApplied,
    Poison, fail_all, is_flush,
};
use crate::cache::InstanceCache;
use crate::entry::WalEntry;
use crate::state::{self, ChangeEvent, FlushCounts, View, keys};
use crate::store::{Store, StoreError};
use crate::wal::WalPublisher;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::broadcast;

pub(crate) struct ApplyStage {
    db: Store,
    idempotency_ttl_ms: i64,
    events: broadcast::Sender<Arc<ChangeEvent>>,
    pub(super) stats: Arc<CommitStats>,
    publisher: WalPublisher,
    pub(super) poison: Arc<Poison>,
    /// Highest sequence applied to sled (persisted with each batch).
    pub high_water: u64,
    /// Cluster only: the raft term of the records being applied (0 on a single node, where
    /// nothing extra is written). Persisted with `high_water`, so the pair is the applied
    /// log id.
    pub applied_term: u64,
    counts: HashMap<Vec<u8>, u64>,
    /// Groups written but not yet durable, planned ahead, oldest first.
    waiting: std::collections::VecDeque<Planned>,
    /// Updated right after each store batch, before acknowledging (see `cache`).
    cache: Arc<InstanceCache>,
    /// Set when writing the overlay to sled failed after a group was applied to the store:
    /// that group is visible, so it is acknowledged, and then the stage is poisoned.
    flush_failure: Option<String>,
    /// Checkpoints leave tombstones in place (`allow_instance_recreate: false` needs them to
    /// refuse a deleted id for good).
    keep_tombstones: bool,
}

/// A group planned while its sync runs. `batch` is `None` when it holds a FLUSH_ALL, which
/// can only be planned against the store as it is once everything before it is written.
struct Planned {
    first_seq: u64,
    group: Vec<CommitRequest>,
    batch: Result<Option<PlannedBatch>, String>,
}

struct PlannedBatch {
    writes: state::Writes,
    count_deltas: HashMap<Vec<u8>, i64>,
    /// Instance versions written, in order, for the instance cache.
    instances: Vec<(rstmdb_core::Instance, usize)>,
}

/// The state store as the planner reads it (pending writes are the planner's own).
struct StoreView<'a>(&'a Store);

impl View for StoreView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.0.get(key).map_err(|e| format!("reading state: {e}"))
    }
}

impl ApplyStage {
    pub fn new(
        db: Store,
        idempotency_ttl_ms: i64,
        events: broadcast::Sender<Arc<ChangeEvent>>,
        stats: Arc<CommitStats>,
        publisher: WalPublisher,
        high_water: u64,
        cache: Arc<InstanceCache>,
    ) -> Self {
        ApplyStage {
            db,
            idempotency_ttl_ms,
            events,
            stats,
            publisher,
            poison: Arc::new(Poison::default()),
            high_water,
            applied_term: 0,
            counts: HashMap::new(),
            waiting: std::collections::VecDeque::new(),
            cache,
            flush_failure: None,
            keep_tombstones: false,
        }
    }

    /// Checkpoints keep tombstones instead of purging them.
    pub fn keep_tombstones(mut self, keep: bool) -> Self {
        self.keep_tombstones = keep;
        self
    }

    /// One message from the log stage, on the apply thread or inline on the log stage's
    /// ([`ApplyHandoff`](super::handoff::ApplyHandoff)), always in the order the log stage sent them.
    pub(super) fn handle(&mut self, msg: ApplyMsg) {
        match msg {
            ApplyMsg::Group {
                first_seq,
                group,
                durable: true,
            } => {
                // Poisoned: nothing more reaches the store (or readers).
                if let Some(reason) = self.poison.get() {
                    fail_all(group, CommitError::Apply(reason));
                    return;
                }
                let r = self.apply_group(&group, first_seq);
                self.complete(first_seq, group, r);
            }
            ApplyMsg::Group {
                first_seq,
                group,
                durable: false,
            } => {
                let batch = self.plan_group(&group, first_seq);
                self.waiting.push_back(Planned {
                    first_seq,
                    group,
                    batch,
                });
            }
            ApplyMsg::Durable { up_to } => {
                while self
                    .waiting
                    .front()
                    .is_some_and(|p| p.first_seq + p.group.len() as u64 - 1 <= up_to)
                {
                    if let Some(p) = self.waiting.pop_front() {
                        self.finish_planned(p);
                    }
                }
            }
            ApplyMsg::Failed { error } => {
                for p in self.waiting.drain(..) {
                    fail_all(p.group, CommitError::Wal(error.clone()));
                }
            }
            ApplyMsg::Checkpoint { seq, now_ms, reply } => {
                let _ = reply.send(self.checkpoint(seq, now_ms));
            }
        }
    }

    fn finish_planned(&mut self, p: Planned) {
        if let Some(reason) = self.poison.get() {
            return fail_all(p.group, CommitError::Apply(reason));
        }
        let last_seq = p.first_seq + p.group.len() as u64 - 1;
        let result = match p.batch {
            Ok(Some(b)) => self.write_batch(b, last_seq).map(|()| HashMap::new()),
            Ok(None) => self.apply_group(&p.group, p.first_seq),
            Err(e) => Err(e),
        };
        self.complete(p.first_seq, p.group, result);
    }

    /// After a raft snapshot replaced the store's contents: continue from `seq`.
    pub(crate) fn reset_to(&mut self, seq: u64, term: u64) {
        self.high_water = seq;
        self.applied_term = term;
        self.counts.clear();
        self.waiting.clear();
    }

    /// Refuses every later write (a committed record could not be applied).
    pub(crate) fn poison_with(&self, reason: String) {
        self.poison.set(reason);
    }

    /// Cluster only: applies records that raft committed (already durable in the local log),
    /// all of one term, then publishes and acknowledges them like a local group.
    pub(crate) fn apply_committed(&mut self, first_seq: u64, term: u64, group: Vec<CommitRequest>) {
        if let Some(reason) = self.poison.get() {
            return fail_all(group, CommitError::Apply(reason));
        }
        self.applied_term = term;
        let r = self.apply_group(&group, first_seq);
        self.complete(first_seq, group, r);
    }

    /// Publishes, notifies and acknowledges an applied group, or fails it and poisons.
    fn complete(
        &mut self,
        first_seq: u64,
        group: Vec<CommitRequest>,
        result: Result<GroupApplied, String>,
    ) {
        if let Some(reason) = self.poison.get() {
            return fail_all(group, CommitError::Apply(reason));
        }
        let last_seq = first_seq + group.len() as u64 - 1;
        match result {
            Ok(flushed) => {
                // Publishing makes every record up to `last_seq` visible (and the replies
                // below acknowledge them): none of them may still wait for its sync.
                debug_assert!(
                    self.waiting.front().is_none_or(|p| p.first_seq > last_seq),
                    "publishing offset {last_seq} while a group at or below it is not durable"
                );
                self.high_water = self.high_water.max(last_seq);
                self.publisher.publish(last_seq);
                // Events are built only for subscribers. One that subscribes after this
                // check read a published end at or past `last_seq`, so it replays this
                // group from the WAL instead (`Database::watch`).
                let mut events: Vec<Arc<ChangeEvent>> = Vec::new();
                if self.events.receiver_count() > 0 {
                    for (i, req) in group.iter().enumerate() {
                        state::events_of(&req.entry, first_seq + i as u64, &mut events);
                    }
                }
                // Acknowledge first: a client watching its own writes then gets the response
                // before the event.
                for (i, req) in group.into_iter().enumerate() {
                    let seq = first_seq + i as u64;
                    let _ = req.reply.send(Ok(CommitOutcome {
                        seq,
                        flushed: flushed.get(&seq).copied(),
                    }));
                }
                for ev in events {
                    // No receivers is fine.
                    let _ = self.events.send(ev);
                }
                if let Some(reason) = self.flush_failure.take() {
                    tracing::error!(error = %reason, last_seq, "writing the state store to disk failed; refusing writes until restart (the WAL holds every acknowledged change)");
                    self.poison.set(reason);
                }
            }
            Err(reason) => {
                tracing::error!(error = %reason, first_seq, "applying committed records to the state store failed; refusing writes until restart");
                self.poison.set(reason.clone());
                fail_all(group, CommitError::Apply(reason));
            }
        }
    }

    /// Plans a whole group without writing anything (see [`Planned`]).
    fn plan_group(
        &self,
        group: &[CommitRequest],
        first_seq: u64,
    ) -> Result<Option<PlannedBatch>, String> {
        if group.iter().any(is_flush) {
            return Ok(None);
        }
        self.plan_records(group, first_seq).map(Some)
    }

    /// Plans consecutive records (none of them a FLUSH_ALL) against sled plus their own
    /// earlier writes.
    fn plan_records(&self, reqs: &[CommitRequest], first_seq: u64) -> Result<PlannedBatch, String> {
        let mut batch = PlannedBatch {
            writes: state::Writes::new(),
            count_deltas: HashMap::new(),
            instances: Vec::new(),
        };
        for (i, req) in reqs.iter().enumerate() {
            let plan = state::plan(
                &req.entry,
                first_seq + i as u64,
                self.idempotency_ttl_ms,
                &StoreView(&self.db),
                &req.hints,
                &mut batch.writes,
            )?;
            for (k, d) in plan.counts {
                *batch.count_deltas.entry(k).or_insert(0) += d;
            }
            batch.instances.extend(plan.instances);
        }
        Ok(batch)
    }

    /// Applies one WAL record during recovery, through the same planner as live commits.
    pub fn replay(&mut self, entry: &WalEntry, seq: u64) -> Result<(), String> {
        let mut writes = state::Writes::new();
        let plan = state::plan(
            entry,
            seq,
            self.idempotency_ttl_ms,
            &StoreView(&self.db),
            &[],
            &mut writes,
        )?;
        if plan.flush {
            self.flush_all(seq)?;
        } else {
            let mut count_deltas: HashMap<Vec<u8>, i64> = HashMap::new();
            for (k, d) in plan.counts {
                *count_deltas.entry(k).or_insert(0) += d;
            }
            let batch = PlannedBatch {
                writes,
                count_deltas,
                instances: plan.instances,
            };
            self.write_batch(batch, seq)?;
            if let Some(reason) = self.flush_failure.take() {
                return Err(reason);
            }
        }
        self.high_water = self.high_water.max(seq);
        Ok(())
    }

    /// Plans and applies every record of the group with one sled batch, split only around
    /// a FLUSH_ALL. Returns the FLUSH_ALL counts by sequence.
    fn apply_group(
        &mut self,
        group: &[CommitRequest],
        first_seq: u64,
    ) -> Result<GroupApplied, String> {
        let mut flushed = HashMap::new();
        let mut start = 0;
        while start < group.len() {
            let end = group[start..]
                .iter()
                .position(is_flush)
                .map_or(group.len(), |p| start + p);
            if end > start {
                let b = self.plan_records(&group[start..end], first_seq + start as u64)?;
                self.write_batch(b, first_seq + end as u64 - 1)?;
            }
            if end < group.len() {
                let seq = first_seq + end as u64;
                flushed.insert(seq, self.flush_all(seq)?);
            }
            start = end + 1;
        }
        Ok(flushed)
    }

    fn count(&mut self, key: &[u8]) -> Result<u64, String> {
        if let Some(c) = self.counts.get(key) {
            return Ok(*c);
        }
        let c = self
            .db
            .get(key)
            .map_err(|e| format!("reading counter: {e}"))?
            .and_then(|v| state::decode_u64(&v))
            .unwrap_or(0);
        self.counts.insert(key.to_vec(), c);
        Ok(c)
    }

    /// Writes a planned batch to sled, then puts its instance versions in the cache.
    fn write_batch(&mut self, planned: PlannedBatch, high_water: u64) -> Result<(), String> {
        let PlannedBatch {
            writes,
            count_deltas,
            instances,
        } = planned;
        let mut batch = self.db.batch();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        let mut new_counts = Vec::with_capacity(count_deltas.len());
        for (k, d) in count_deltas {
            if d == 0 {
                continue;
            }
            let c = self.count(&k)?;
            let n = c.saturating_add_signed(d);
            if n == 0 {
                batch.remove(k.clone());
            } else {
                batch.insert(k.clone(), state::encode_u64(n));
            }
            new_counts.push((k, n));
        }
        batch.insert(
            keys::HIGH_WATER,
            state::encode_u64(high_water.max(self.high_water)),
        );
        if self.applied_term > 0 {
            batch.insert(keys::APPLIED_TERM, state::encode_u64(self.applied_term));
        }
        self.db
            .apply_batch(batch)
            .map_err(|e| format!("writing state: {e}"))?;
        for (k, n) in new_counts {
            self.counts.insert(k, n);
        }
        for (inst, encoded) in instances {
            self.cache.put(Arc::new(inst), encoded);
        }
        // The batch is applied (readers see it): a failure to write the overlay to sled no
        // longer concerns this group; `complete` poisons the stage after acknowledging it.
        if let Err(e) = self.db.flush_if_full()
            && self.flush_failure.is_none()
        {
            self.flush_failure = Some(format!("writing state to disk: {e}"));
        }
        Ok(())
    }

    /// FLUSH_ALL at `seq`: removes everything written before it. Items the store holds from
    /// after `seq` (only possible when replaying over a store that got ahead) survive.
    fn flush_all(&mut self, seq: u64) -> Result<FlushCounts, String> {
        let mut counts = FlushCounts::default();
        let mut batch = self.db.batch();
        let mut survivors: HashMap<Vec<u8>, u64> = HashMap::new();
        let err = |e: StoreError| format!("flushing state: {e}");
        for item in self.db.scan_prefix(keys::INSTANCE) {
            let (k, v) = item.map_err(err)?;
            let inst = state::decode_instance(&v)?;
            if inst.last_wal_offset < seq {
                batch.remove(k);
                batch.remove(keys::tombstone(&inst.id));
                if !inst.deleted {
                    batch.remove(keys::by_state(&inst.machine, &inst.state, &inst.id));
                    counts.instances_removed += 1;
                }
            } else if !inst.deleted {
                *survivors
                    .entry(keys::count(&inst.machine, &inst.state))
                    .or_insert(0) += 1;
            }
        }
        for item in self.db.scan_prefix(keys::MACHINE) {
            let (k, v) = item.map_err(err)?;
            let m: state::StoredMachine =
                serde_json::from_slice(&v).map_err(|e| format!("corrupt machine record: {e}"))?;
            if m.wal_offset < seq {
                batch.remove(k);
                counts.machines_removed += 1;
            }
        }
        for item in self.db.scan_prefix(keys::IDEM) {
            let (k, v) = item.map_err(err)?;
            let rec: state::IdemRecord = serde_json::from_slice(&v)
                .map_err(|e| format!("corrupt idempotency record: {e}"))?;
            if rec.wal_offset < seq {
                let scope = &k[keys::IDEM.len()..];
                batch.remove(keys::idem_expiry(
                    rec.expires_at,
                    &String::from_utf8_lossy(scope),
                ));
                batch.remove(k);
            }
        }
        for item in self.db.scan_prefix(keys::COUNT) {
            let (k, _) = item.map_err(err)?;
            batch.remove(k);
        }
        self.counts.clear();
        for (k, n) in survivors {
            batch.insert(k.clone(), state::encode_u64(n));
            self.counts.insert(k, n);
        }
        batch.insert(
            keys::HIGH_WATER,
            state::encode_u64(seq.max(self.high_water)),
        );
        if self.applied_term > 0 {
            batch.insert(keys::APPLIED_TERM, state::encode_u64(self.applied_term));
        }
        self.db.apply_batch(batch).map_err(err)?;
        // Every lock shard is held (live) or nothing else runs (replay): see `cache`.
        self.cache.clear();
        Ok(counts)
    }

    /// Runs after every record up to `checkpoint_seq` (synced by the log stage) is applied.
    pub(crate) fn checkpoint(
        &mut self,
        checkpoint_seq: u64,
        now_ms: i64,
    ) -> Result<CheckpointMark, String> {
        if let Some(reason) = self.poison.get() {
            return Err(reason);
        }
        let err = |e: StoreError| format!("checkpoint: {e}");
        let mut batch = self.db.batch();
        let mut tombstones_purged = 0;
        let tombstones = if self.keep_tombstones {
            None
        } else {
            Some(self.db.scan_prefix(keys::TOMBSTONE))
        };
        for item in tombstones.into_iter().flatten() {
            let (k, v) = item.map_err(err)?;
            let off = state::decode_u64(&v).unwrap_or(u64::MAX);
            if off > checkpoint_seq {
                continue;
            }
            let id = &k[keys::TOMBSTONE.len()..];
            let mut ikey = keys::INSTANCE.to_vec();
            ikey.extend_from_slice(id);
            if let Some(v) = self.db.get(&ikey).map_err(err)? {
                let inst = state::decode_instance(&v)?;
                if inst.deleted && inst.last_wal_offset == off {
                    batch.remove(ikey);
                    tombstones_purged += 1;
                }
            }
            batch.remove(k);
        }
        let mut idempotency_purged = 0;
        for item in self.db.scan_prefix(keys::IDEM_EXPIRY) {
            let (k, _) = item.map_err(err)?;
            match keys::idem_expiry_time(&k) {
                Some(t) if t <= now_ms => {}
                _ => break, // ordered by expiry: nothing later has expired
            }
            if let Some(scope) = keys::idem_expiry_scope(&k) {
                let mut ikey = keys::IDEM.to_vec();
                ikey.extend_from_slice(scope);
                batch.remove(ikey);
                idempotency_purged += 1;
            }
            batch.remove(k);
        }
        batch.insert(keys::CHECKPOINT, state::encode_u64(checkpoint_seq));
        self.db.apply_batch(batch).map_err(err)?;
        Ok(CheckpointMark {
            checkpoint_seq,
            tombstones_purged,
            idempotency_purged,
        })
    }
}
