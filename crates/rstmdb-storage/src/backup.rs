//! Online logical backups and offline restores (with point-in-time recovery).
//!
//! **Export** ([`Database::backup_export`]), while writes continue:
//! 1. Under the checkpoint lock: read the published offset `S` (every record ≤ S is applied
//!    to the state store) and pin `S + 1`, so no checkpoint deletes a segment holding a
//!    record the backup still has to read.
//! 2. Export machines, instances (tombstones included) and idempotency records from the state
//!    store through the decoded records. Writes go on, so this copy is *fuzzy*: a key may
//!    already show a change after `S`, never one after the end read in step 3.
//! 3. Read the published offset `E` and copy the WAL records `S + 1 ..= E`, then unpin.
//!
//! **Restore** ([`restore`]): write the exported state into an empty data directory with the
//! checkpoint mark at `S`, write the WAL records `S + 1 ..` into its log with their own
//! offsets, and open the database: recovery replays them through the same planner live
//! commits use. The planner skips what an instance already reflects
//! (`last_wal_offset ≥ record`), so records the fuzzy export already contains are no-ops and
//! the result is exactly the state at the last record replayed. Instances deleted during the
//! export are covered too: a tombstone exported after the delete is at the delete's offset; one
//! purged by a checkpoint during the export leaves the instance absent, which replay keeps
//! absent (applies and deletes of an absent instance are skipped).
//!
//! Point-in-time recovery replays past `E` with the records of archived segments
//! (`storage.wal_archive_dir`) and stops at a given offset or time. The earliest point a backup
//! restores is its own `E` (before it, the fuzzy export may already hold later changes).

use crate::config::StorageConfig;
use crate::datadir::open_state;
use crate::db::Database;
use crate::entry::WalEntry;
use crate::state::{self, IdemRecord, StoredMachine, keys};
use crate::state_import::{StateKind, state_writes};
use crate::wal::{Wal, WalOptions};
use rstmdb_backup::{Counts, Record};
use rstmdb_core::{Error, Instance, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn internal(detail: impl Into<String>) -> Error {
    Error::Internal {
        detail: detail.into(),
    }
}

/// What an export contained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupExport {
    /// Every record up to here is in the exported state.
    pub base_offset: u64,
    /// The last WAL record in the backup.
    pub wal_end: u64,
    pub counts: Counts,
}

/// Removes a backup's WAL pin when dropped.
struct Pin<'a> {
    db: &'a Database,
    id: u64,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        if let Ok(mut pins) = self.db.inner_pins().0.lock() {
            pins.remove(&self.id);
        }
    }
}

impl Database {
    /// Exports a consistent online backup as [`Record`]s handed to `sink`, in body order
    /// (machines, instances, idempotency records, WAL records). Blocking: run it on a blocking
    /// thread. Writes continue meanwhile; see the module docs for why the result is consistent.
    pub fn backup_export(
        &self,
        sink: &mut dyn FnMut(&Record) -> std::result::Result<(), String>,
    ) -> Result<BackupExport> {
        let (base, pin) = self.with_checkpoint_lock(|| {
            let base = self.wal_reader().published_seq();
            let (pins, next) = self.inner_pins();
            let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match pins.lock() {
                Ok(mut p) => {
                    p.insert(id, base + 1);
                    Ok((base, Pin { db: self, id }))
                }
                Err(_) => Err(internal("backup pin lock poisoned")),
            }
        })??;
        let mut counts = Counts::default();
        let out = |r: &Record, sink: &mut dyn FnMut(&Record) -> std::result::Result<(), String>| {
            sink(r).map_err(|e| internal(format!("writing the backup: {e}")))
        };
        self.export_state(sink, &mut counts)?;

        let iter = self
            .wal_reader()
            .iter_from(base + 1)
            .map_err(|e| internal(format!("reading the WAL: {e}")))?;
        let end = iter.until().max(base);
        let mut next = base + 1;
        for rec in iter {
            let rec = rec.map_err(|e| internal(format!("reading the WAL: {e}")))?;
            if rec.seq != next {
                return Err(internal(format!(
                    "WAL record {next} is missing (found {}): the backup cannot be completed",
                    rec.seq
                )));
            }
            let entry = WalEntry::from_bytes(&rec.payload)
                .and_then(|e| serde_json::to_value(&e))
                .map_err(|e| internal(format!("WAL record {} is undecodable: {e}", rec.seq)))?;
            out(
                &Record::Wal {
                    offset: rec.seq,
                    entry,
                },
                sink,
            )?;
            counts.wal_records += 1;
            next += 1;
        }
        if next != end + 1 {
            return Err(internal(format!(
                "WAL ended at {} before the backup end {end}",
                next - 1
            )));
        }
        drop(pin);
        Ok(BackupExport {
            base_offset: base,
            wal_end: end,
            counts,
        })
    }

    /// Exports machines, instances (tombstones included) and idempotency records from the
    /// state store as it is now, in body order.
    pub(crate) fn export_state(
        &self,
        sink: &mut dyn FnMut(&Record) -> std::result::Result<(), String>,
        counts: &mut Counts,
    ) -> Result<()> {
        let out = |r: &Record, sink: &mut dyn FnMut(&Record) -> std::result::Result<(), String>| {
            sink(r).map_err(|e| internal(format!("writing the backup: {e}")))
        };
        let db = self.state_db();
        let sled_err = |e: crate::store::StoreError| internal(format!("state store: {e}"));

        for item in db.scan_prefix(keys::MACHINE) {
            let (_, v) = item.map_err(sled_err)?;
            let m: StoredMachine = serde_json::from_slice(&v)
                .map_err(|e| internal(format!("corrupt machine record: {e}")))?;
            out(
                &Record::Machine {
                    machine: m.machine,
                    version: m.version,
                    checksum: m.checksum,
                    definition: m.definition,
                    wal_offset: m.wal_offset,
                },
                sink,
            )?;
            counts.machines += 1;
        }
        for item in db.scan_prefix(keys::INSTANCE) {
            let (_, v) = item.map_err(sled_err)?;
            let inst = state::decode_instance(&v).map_err(internal)?;
            let instance = serde_json::to_value(&inst)
                .map_err(|e| internal(format!("encoding instance: {e}")))?;
            out(&Record::Instance { instance }, sink)?;
            counts.instances += 1;
        }
        for item in db.scan_prefix(keys::IDEM) {
            let (k, v) = item.map_err(sled_err)?;
            let scope = std::str::from_utf8(&k[keys::IDEM.len()..])
                .map_err(|_| internal("idempotency scope is not UTF-8"))?
                .to_owned();
            let rec: IdemRecord = serde_json::from_slice(&v)
                .map_err(|e| internal(format!("corrupt idempotency record: {e}")))?;
            let record = serde_json::to_value(&rec)
                .map_err(|e| internal(format!("encoding idempotency record: {e}")))?;
            out(&Record::Idempotency { scope, record }, sink)?;
            counts.idempotency_records += 1;
        }

        Ok(())
    }
}

// ---- one instance back into a running database -------------------------------------------

struct MemView(HashMap<Vec<u8>, Vec<u8>>);

impl state::View for MemView {
    fn get(&self, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, String> {
        Ok(self.0.get(key).cloned())
    }
}

/// The instance `id` at a backup's end: its exported record (if any) with the backup's WAL
/// records replayed over it through the planner, in a scratch store. `None`: absent or
/// deleted at the end.
pub fn materialize_instance(
    id: &str,
    exported: Option<Value>,
    wal: &[(u64, Value)],
) -> Result<Option<Instance>> {
    let mut view = MemView(HashMap::new());
    if let Some(v) = exported {
        let inst: Instance = serde_json::from_value(v)
            .map_err(|e| Error::bad_request("instance", format!("not an instance record: {e}")))?;
        if inst.id != id {
            return Err(Error::bad_request(
                "instance",
                format!("the record is for instance {:?}, not {id:?}", inst.id),
            ));
        }
        let bytes =
            serde_json::to_vec(&inst).map_err(|e| internal(format!("encoding instance: {e}")))?;
        view.0.insert(keys::instance(id), bytes);
    }
    let mut records: Vec<&(u64, Value)> = wal.iter().collect();
    records.sort_by_key(|(o, _)| *o);
    for (offset, entry) in records {
        let e: WalEntry = serde_json::from_value(entry.clone()).map_err(|e| {
            Error::bad_request("wal", format!("record {offset} is not a WAL entry: {e}"))
        })?;
        let mut writes = state::Writes::new();
        let plan = state::plan(&e, *offset, i64::MAX, &view, &[], &mut writes).map_err(internal)?;
        if plan.flush {
            view.0.clear();
        }
        for (k, v) in writes {
            match v {
                Some(v) => view.0.insert(k, v),
                None => view.0.remove(&k),
            };
        }
    }
    match view.0.get(&keys::instance(id)) {
        None => Ok(None),
        Some(bytes) => {
            let inst = state::decode_instance(bytes).map_err(internal)?;
            Ok((!inst.deleted).then_some(inst))
        }
    }
}

/// What RESTORE_INSTANCE did.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredInstance {
    pub instance: Instance,
    pub wal_offset: u64,
    /// A live instance with that id was replaced.
    pub replaced: bool,
}

impl Database {
    /// Puts instance `id` as a backup held it at its end (see [`materialize_instance`]) back,
    /// under `as_id` when given, with one WAL record. Its machine version must exist and hold
    /// its state. A live instance with the target id is an `INSTANCE_EXISTS` error unless
    /// `replace`. Nothing else changes.
    pub async fn restore_instance(
        &self,
        id: &str,
        exported: Option<Value>,
        wal: &[(u64, Value)],
        as_id: Option<&str>,
        replace: bool,
    ) -> Result<RestoredInstance> {
        let inst =
            materialize_instance(id, exported, wal)?.ok_or_else(|| Error::InstanceNotFound {
                instance_id: id.to_owned(),
            })?;
        let target = as_id.unwrap_or(id).to_owned();
        rstmdb_core::names::validate_instance_id(&target)?;
        let machine = self.machine_def(&inst.machine, inst.version)?;
        if !machine.has_state(&inst.state) {
            return Err(Error::bad_request(
                "instance",
                format!(
                    "state {:?} is not in machine {} v{} on this server",
                    inst.state, inst.machine, inst.version
                ),
            ));
        }
        let guards = self.lock_instances(&[target.as_str()]).await;
        self.write_gate()?;
        let existing = self.load_instance(&target)?;
        let replaced = existing.as_ref().is_some_and(|e| !e.deleted);
        if replaced && !replace {
            return Err(Error::InstanceExists {
                instance_id: target,
            });
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let entry = WalEntry::RestoreInstance {
            instance_id: target.clone(),
            machine: inst.machine.clone(),
            version: inst.version,
            state: inst.state.clone(),
            ctx: inst.ctx.clone(),
            last_event_id: inst.last_event_id.clone(),
            created_at: inst.created_at,
            updated_at: now,
        };
        let seq = self
            .commit_entry(entry, vec![(target.clone(), existing)], guards)
            .await?;
        let instance = Instance {
            id: target,
            last_wal_offset: seq,
            updated_at: now,
            deleted: false,
            ..inst
        };
        Ok(RestoredInstance {
            instance,
            wal_offset: seq,
            replaced,
        })
    }
}

// ---- restore ------------------------------------------------------------------------------

/// Where a restore stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestoreTarget {
    /// The end of the backup, or of the archive when one is given.
    #[default]
    End,
    /// Exactly the state after this WAL offset.
    Offset(u64),
    /// The state before the first record whose time (Unix ms) is after this.
    Time(i64),
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Must not exist or be empty.
    pub data_dir: PathBuf,
    pub target: RestoreTarget,
    /// Archived WAL segments to replay past the backup's end.
    pub wal_archive: Option<PathBuf>,
    /// The data key of the server that wrote the archive, when it ran with encryption at
    /// rest (`storage.encryption.key_file`). The restored directory is plaintext either way.
    pub wal_archive_key: Option<crate::crypto::EncryptionKey>,
    pub wal_segment_size_mb: u64,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub base_offset: u64,
    pub backup_wal_end: u64,
    /// The offset the restored state is at.
    pub restored_to: u64,
    pub machines: u64,
    pub instances: u64,
    pub idempotency_records: u64,
    /// WAL records written from the backup and from the archive.
    pub wal_records_from_backup: u64,
    pub wal_records_from_archive: u64,
}

/// The time of a WAL entry (Unix ms): its `created_at`, `updated_at` or `timestamp`, the
/// latest of a batch's entries; `None` for entries without one (PUT_MACHINE).
pub fn entry_time(entry: &Value) -> Option<i64> {
    if let Some(list) = entry.get("entries").and_then(Value::as_array) {
        return list.iter().filter_map(entry_time).max();
    }
    ["created_at", "updated_at", "timestamp"]
        .iter()
        .find_map(|k| entry.get(*k).and_then(Value::as_i64))
}

fn dir_is_empty(p: &Path) -> std::result::Result<bool, String> {
    match std::fs::read_dir(p) {
        Ok(mut d) => Ok(d.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(format!("reading {}: {e}", p.display())),
    }
}

struct Restorer {
    db: sled::Db,
    wal: Wal,
    batch: sled::Batch,
    batched: usize,
    counts: HashMap<Vec<u8>, u64>,
    target: RestoreTarget,
    /// The last WAL offset written to the new log.
    last: u64,
    /// Set once the target was reached (the next record is past it).
    stopped: bool,
    report: RestoreReport,
}

impl Restorer {
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) -> std::result::Result<(), String> {
        self.batch.insert(k, v);
        self.batched += 1;
        if self.batched >= 10_000 {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> std::result::Result<(), String> {
        let b = std::mem::take(&mut self.batch);
        self.batched = 0;
        self.db
            .apply_batch(b)
            .map_err(|e| format!("writing the state store: {e}"))
    }

    fn state(&mut self, r: Record) -> std::result::Result<(), String> {
        let mut writes = Vec::new();
        let kind = state_writes(r, &mut writes, &mut self.counts)?;
        for (k, v) in writes {
            self.put(k, v)?;
        }
        match kind {
            StateKind::Machine => self.report.machines += 1,
            StateKind::Instance => self.report.instances += 1,
            StateKind::Idempotency => self.report.idempotency_records += 1,
        }
        Ok(())
    }

    /// Appends one WAL record unless the target is behind it. Returns whether it was taken.
    fn wal(&mut self, offset: u64, payload: &[u8]) -> std::result::Result<bool, String> {
        if self.stopped {
            return Ok(false);
        }
        if offset != self.last + 1 {
            return Err(format!(
                "WAL records are not contiguous: expected {}, found {offset}",
                self.last + 1
            ));
        }
        let past = match self.target {
            RestoreTarget::End => false,
            RestoreTarget::Offset(n) => offset > n,
            RestoreTarget::Time(t) => {
                let v: Value = serde_json::from_slice(payload)
                    .map_err(|e| format!("WAL record {offset}: {e}"))?;
                entry_time(&v).is_some_and(|at| at > t)
            }
        };
        if past {
            if offset <= self.report.backup_wal_end {
                // The exported state may already hold this record's change: no exact state
                // exists before the backup's end.
                return Err(format!(
                    "the target is before the backup's end {} (record {offset} is stamped later); a backup restores to its end or later",
                    self.report.backup_wal_end
                ));
            }
            self.stopped = true;
            return Ok(false);
        }
        let seq = self
            .wal
            .append(&[payload])
            .map_err(|e| format!("writing the WAL: {e}"))?;
        if seq != offset {
            return Err(format!("WAL wrote record {offset} as {seq}"));
        }
        self.last = offset;
        Ok(true)
    }
}

/// Archived segments, oldest first: (first seq, path).
fn archived_segments(dir: &Path) -> std::result::Result<Vec<(u64, PathBuf)>, String> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for ent in rd {
        let ent = ent.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let name = ent.file_name();
        if let Some(first) = name
            .to_str()
            .and_then(crate::wal::segment::parse_segment_name)
        {
            out.push((first, ent.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Offline restore of a whole database from a backup's records into an empty directory, then
/// (optionally) forward through archived WAL segments. The restored database is opened once
/// (recovery replays the WAL part) and closed with a checkpoint. On failure (a damaged backup
/// found half-way, a target beyond the archive…) what was written is removed again.
pub fn restore(
    records: impl Iterator<Item = std::result::Result<Record, String>>,
    base_offset: u64,
    wal_end: u64,
    opts: &RestoreOptions,
) -> std::result::Result<RestoreReport, String> {
    if !dir_is_empty(&opts.data_dir)? {
        return Err(format!(
            "{} is not empty; restore only into a new or empty directory",
            opts.data_dir.display()
        ));
    }
    let result = restore_into(records, base_offset, wal_end, opts);
    if result.is_err() {
        let config = StorageConfig::new(&opts.data_dir);
        let _ = std::fs::remove_dir_all(config.state_dir());
        let _ = std::fs::remove_dir_all(config.wal_dir());
    }
    result
}

fn restore_into(
    mut records: impl Iterator<Item = std::result::Result<Record, String>>,
    base_offset: u64,
    wal_end: u64,
    opts: &RestoreOptions,
) -> std::result::Result<RestoreReport, String> {
    match opts.target {
        RestoreTarget::Offset(n) if n < wal_end => {
            return Err(format!(
                "offset {n} is before the backup's end {wal_end}: a backup restores to its end or later"
            ));
        }
        _ => {}
    }
    let config = StorageConfig {
        wal_segment_size_mb: opts.wal_segment_size_mb.max(1),
        ..StorageConfig::new(&opts.data_dir)
    };
    std::fs::create_dir_all(&opts.data_dir)
        .map_err(|e| format!("creating {}: {e}", opts.data_dir.display()))?;
    let db =
        open_state(&config.state_dir(), config.cache_capacity_mb).map_err(|e| e.to_string())?;
    let mut wal_opts = WalOptions::new(config.wal_dir());
    wal_opts.segment_size_bytes = config.wal_segment_size_mb.saturating_mul(1024 * 1024);
    let (mut wal, _) = Wal::open(wal_opts, 1).map_err(|e| e.to_string())?;
    if base_offset > 0 {
        wal.skip_to(base_offset + 1).map_err(|e| e.to_string())?;
    }
    let mut r = Restorer {
        db,
        wal,
        batch: sled::Batch::default(),
        batched: 0,
        counts: HashMap::new(),
        target: opts.target,
        last: base_offset,
        stopped: false,
        report: RestoreReport {
            base_offset,
            backup_wal_end: wal_end,
            restored_to: base_offset,
            machines: 0,
            instances: 0,
            idempotency_records: 0,
            wal_records_from_backup: 0,
            wal_records_from_archive: 0,
        },
    };
    for rec in records.by_ref() {
        match rec? {
            Record::Wal { offset, entry } => {
                // Re-encoded through the typed entry: an entry recovery could not replay is
                // refused here.
                let e: WalEntry = serde_json::from_value(entry)
                    .map_err(|e| format!("WAL record {offset}: {e}"))?;
                let bytes = e.to_bytes().map_err(|e| e.to_string())?;
                if r.wal(offset, &bytes)? {
                    r.report.wal_records_from_backup += 1;
                }
            }
            other => r.state(other)?,
        }
    }
    if r.last != wal_end && !r.stopped {
        return Err(format!(
            "the backup's WAL records end at {} but its manifest says {wal_end}",
            r.last
        ));
    }
    if let Some(archive) = &opts.wal_archive
        && !r.stopped
    {
        let segments = archived_segments(archive)?;
        let archive_cipher = opts
            .wal_archive_key
            .as_ref()
            .map(|k| std::sync::Arc::new(crate::crypto::Cipher::new(k)));
        let count = segments.len();
        'segments: for (k, (first, path)) in segments.into_iter().enumerate() {
            if r.stopped {
                break;
            }
            let image =
                std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            let mut recs: Vec<(u64, Vec<u8>)> = Vec::new();
            // An archive written with encryption at rest needs the data key
            // (`wal_archive_key`); without one, its first sealed record stops the restore.
            let scan = crate::wal::scan_archived_segment_image(
                &image,
                first,
                archive_cipher.as_ref(),
                |seq, payload| recs.push((seq, payload.to_vec())),
            );
            if let Some(why) = scan.invalid {
                // A torn tail is possible only in the newest segment (a live segment copied in
                // after a crash); its valid records are used. Anything else is corruption.
                if scan.definite || k + 1 != count {
                    return Err(format!("archived segment {}: {why}", path.display()));
                }
                tracing::warn!(segment = %path.display(), reason = %why, "using the records before a torn tail in the newest archived segment");
            }
            for (seq, payload) in recs {
                if seq <= r.last {
                    continue;
                }
                if !r.wal(seq, &payload)? {
                    break 'segments;
                }
                r.report.wal_records_from_archive += 1;
            }
        }
    }
    if let RestoreTarget::Offset(n) = opts.target
        && r.last < n
    {
        return Err(format!(
            "offset {n} is beyond what the backup and archive hold (last record {})",
            r.last
        ));
    }
    r.flush_batch()?;
    for (k, n) in std::mem::take(&mut r.counts) {
        r.put(k, state::encode_u64(n))?;
    }
    r.put(keys::CHECKPOINT.to_vec(), state::encode_u64(base_offset))?;
    r.put(keys::HIGH_WATER.to_vec(), state::encode_u64(base_offset))?;
    r.flush_batch()?;
    r.db.flush()
        .map_err(|e| format!("flushing the state store: {e}"))?;
    r.wal.sync().map_err(|e| format!("syncing the WAL: {e}"))?;
    let mut report = r.report.clone();
    report.restored_to = r.last;
    drop(r);

    // Recovery replays the WAL part through the planner; closing checkpoints it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    rt.block_on(async {
        let db = Database::open(config).map_err(|e| format!("opening the restored data: {e}"))?;
        let last = db.last_offset();
        db.close()
            .await
            .map_err(|e| format!("closing the restored data: {e}"))?;
        if last != report.restored_to {
            return Err(format!(
                "restored log ends at {last}, expected {}",
                report.restored_to
            ));
        }
        Ok(report)
    })
}
