//! One handler per data operation, behind one dispatcher ([`execute`]). Handlers turn typed
//! params into engine calls and engine results into RCP result objects; they know nothing
//! about connections. Session operations (HELLO, AUTH, WATCH, …) live in `session.rs`.

use crate::backup::Backups;
use crate::error::{bad_request, to_wire, with_details};
use rstmdb_core::Instance;
use rstmdb_protocol::{
    AppliedView, ApplyEventParams, BatchItemResult, BatchMode, BatchResult, Command, CompactResult,
    CreateInstanceParams, CreatedView, DeleteInstanceParams, DeleteInstanceResult, ErrorObject,
    FlushAllResult, GetMachineResult, InstanceSummary, InstanceView, IoStats, ListInstancesParams,
    ListInstancesResult, ListMachinesResult, MachineSummary, PutMachineResult,
    ReplicationStatusResult, RestoreInstanceResult, SnapshotInstanceResult, WalReadResult,
    WalRecord, WalStatsResult,
};
use rstmdb_storage::{
    ApplyEvent, ApplyOutcome, BatchFailure, BatchOp, BatchOutput, CreateInstance, CreateOutcome,
    Database, DeleteInstance, DeleteOutcome, FlushOutcome, ListQuery,
};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::watch;

/// Default LIST_INSTANCES page.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// The answer to REPLICATE and REPLICATE_ACK sent as requests (0.3.0's words).
pub const REPLICATION_OPS_INTERNAL: &str =
    "invalid request: replication operations are handled internally";

/// What a data op runs against: the engine, the spooled backups, and the FLUSH_ALL epoch
/// (bumped after a flush so every subscription on every connection ends).
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub db: &'a Database,
    pub backups: &'a Backups,
    pub flush_epoch: &'a Arc<watch::Sender<u64>>,
}

fn engine<T>(r: Result<T, rstmdb_core::Error>) -> Result<T, ErrorObject> {
    r.map_err(|e| to_wire(&e))
}

/// A result, as a `Value` or (for the hot ops) already serialized.
#[derive(Debug)]
pub enum Payload {
    Value(Value),
    Raw(Box<RawValue>),
}

/// A data op's answer: its result and, for mutations, the WAL offset to report in `meta`.
pub type Answer = Result<(Payload, Option<u64>), ErrorObject>;

fn encoding_failed(e: serde_json::Error) -> ErrorObject {
    ErrorObject::new(
        rstmdb_protocol::ErrorCode::InternalError,
        format!("encoding result: {e}"),
    )
}

/// A result type of `rstmdb_protocol::results` as a `Value`: an object's keys sorted, the
/// bytes the server has always written for it.
pub(crate) fn to_value<T: Serialize>(v: &T) -> Result<Value, ErrorObject> {
    serde_json::to_value(v).map_err(encoding_failed)
}

/// A borrowed view (`InstanceView`, `AppliedView`, `CreatedView`) serialized as is: its
/// fields are in key order, so these are the same bytes as [`to_value`]'s.
fn to_raw<T: Serialize>(v: &T) -> Result<Box<RawValue>, ErrorObject> {
    serde_json::value::to_raw_value(v).map_err(encoding_failed)
}

/// GET_INSTANCE's result for `i`, borrowed.
pub fn instance_view(i: &Instance) -> InstanceView<'_> {
    InstanceView {
        created_at: i.created_at,
        ctx: &i.ctx,
        instance_id: &i.id,
        last_event_id: i.last_event_id.as_deref(),
        last_wal_offset: i.last_wal_offset,
        machine: &i.machine,
        state: &i.state,
        updated_at: i.updated_at,
        version: i.version,
    }
}

/// APPLY_EVENT's result for `a`, borrowed.
fn applied_view(a: &ApplyOutcome) -> AppliedView<'_> {
    AppliedView {
        applied: a.applied,
        ctx: &a.ctx,
        event_id: a.event_id.as_deref(),
        from_state: &a.from_state,
        to_state: &a.to_state,
        wal_offset: a.wal_offset,
    }
}

/// CREATE_INSTANCE's result for `c`, borrowed.
fn created_view(c: &CreateOutcome) -> CreatedView<'_> {
    CreatedView {
        instance_id: &c.instance_id,
        state: &c.state,
        wal_offset: c.wal_offset,
    }
}

fn create_req(p: CreateInstanceParams) -> CreateInstance {
    CreateInstance {
        instance_id: p.instance_id,
        machine: p.machine,
        version: p.version,
        initial_ctx: p.initial_ctx,
        idempotency_key: p.idempotency_key,
    }
}

fn apply_req(p: ApplyEventParams) -> ApplyEvent {
    ApplyEvent {
        instance_id: p.instance_id,
        event: p.event,
        payload: p.payload,
        expected_state: p.expected_state,
        expected_wal_offset: p.expected_wal_offset,
        event_id: p.event_id,
        idempotency_key: p.idempotency_key,
    }
}

fn delete_req(p: DeleteInstanceParams) -> DeleteInstance {
    DeleteInstance {
        instance_id: p.instance_id,
        idempotency_key: p.idempotency_key,
    }
}

/// One BATCH element's result (the same as the op's on its own) and its WAL offset.
fn output_value(out: &BatchOutput) -> Result<(Value, Option<u64>), ErrorObject> {
    Ok(match out {
        BatchOutput::Created(c) => (to_value(&created_view(c))?, Some(c.wal_offset)),
        BatchOutput::Applied(a) => (to_value(&applied_view(a))?, Some(a.wal_offset)),
        BatchOutput::Deleted(d) => (to_value(&deleted_result(d))?, Some(d.wal_offset)),
        BatchOutput::Instance(i) => (to_value(&instance_view(i))?, None),
        BatchOutput::Flushed(f) => (to_value(&flushed_result(f))?, Some(f.wal_offset)),
    })
}

fn deleted_result(d: &DeleteOutcome) -> DeleteInstanceResult {
    DeleteInstanceResult {
        instance_id: d.instance_id.clone(),
        deleted: true,
        wal_offset: d.wal_offset,
    }
}

fn flushed_result(f: &FlushOutcome) -> FlushAllResult {
    FlushAllResult {
        flushed: true,
        instances_removed: f.instances_removed,
        machines_removed: f.machines_removed,
    }
}

/// FLUSH_ALL, on its own or as a batch element, and the end of every subscription on every
/// connection (what they watched is gone). Both happen in a task of their own, so a caller
/// that stops waiting (its client gone) cannot leave subscriptions open on a flushed
/// database.
async fn flush_all(ctx: Ctx<'_>) -> Result<FlushOutcome, rstmdb_core::Error> {
    let db = ctx.db.clone();
    let flush_epoch = ctx.flush_epoch.clone();
    tokio::spawn(async move {
        let flushed = db.flush_all().await?;
        flush_epoch.send_modify(|e| *e += 1);
        Ok(flushed)
    })
    .await
    .map_err(|e| rstmdb_core::Error::Internal {
        detail: format!("FLUSH_ALL task failed: {e}"),
    })?
}

/// Runs one data operation: exactly one arm per op. The hot ops (GET_INSTANCE, APPLY_EVENT,
/// CREATE_INSTANCE) are serialized straight from borrowed views into a `RawValue`; the others
/// through their `rstmdb_protocol` result types into a `Value`. Session operations never
/// reach here (the session answers them); should one, it is answered with an error.
pub async fn execute(ctx: Ctx<'_>, command: Command) -> Answer {
    let db = ctx.db;
    let value = |v: Value, off: Option<u64>| Ok((Payload::Value(v), off));
    match command {
        Command::PutMachine(p) => {
            let r = engine(db.put_machine(&p.machine, p.version, &p.definition).await)?;
            let off = r.created.then(|| db.last_offset());
            let result = PutMachineResult {
                machine: r.machine,
                version: r.version,
                stored_checksum: r.checksum,
                created: r.created,
            };
            value(to_value(&result)?, off)
        }
        Command::GetMachine(p) => {
            let m = engine(db.get_machine(&p.machine, p.version))?;
            let result = GetMachineResult {
                definition: m.definition,
                checksum: m.checksum,
            };
            value(to_value(&result)?, None)
        }
        Command::ListMachines => {
            let items = engine(db.list_machines())?
                .into_iter()
                .map(|(machine, versions)| MachineSummary { machine, versions })
                .collect();
            value(to_value(&ListMachinesResult { items })?, None)
        }
        Command::CreateInstance(p) => {
            let c = engine(db.create_instance(create_req(p)).await)?;
            Ok((Payload::Raw(to_raw(&created_view(&c))?), Some(c.wal_offset)))
        }
        Command::GetInstance(p) => {
            let i = engine(db.get_instance_shared(&p.instance_id))?;
            Ok((Payload::Raw(to_raw(&instance_view(&i))?), None))
        }
        Command::ListInstances(p) => value(list_instances(db, p)?, None),
        Command::DeleteInstance(p) => {
            let d = engine(db.delete_instance(delete_req(p)).await)?;
            value(to_value(&deleted_result(&d))?, Some(d.wal_offset))
        }
        Command::ApplyEvent(p) => {
            let a = engine(db.apply_event(apply_req(p)).await)?;
            Ok((Payload::Raw(to_raw(&applied_view(&a))?), Some(a.wal_offset)))
        }
        Command::Batch(p) => {
            let (v, off) = batch(ctx, p.mode, p.ops).await?;
            value(v, off)
        }
        Command::SnapshotInstance(p) => {
            // A snapshot is a checkpoint: the instance (and everything else) is then durable
            // in the state store, independent of the WAL.
            let cp = engine(db.checkpoint().await)?;
            let i = engine(db.get_instance(&p.instance_id))?;
            let bytes = serde_json::to_vec(&to_value(&instance_view(&i))?).unwrap_or_default();
            let checksum: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let result = SnapshotInstanceResult {
                instance_id: i.id,
                snapshot_id: format!("snap-{}", cp.checkpoint_offset),
                wal_offset: i.last_wal_offset,
                size_bytes: bytes.len() as u64,
                checksum,
            };
            value(to_value(&result)?, None)
        }
        Command::WalRead(p) => {
            let limit = p.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
            let page = engine(db.wal_read(p.from_offset, limit))?;
            let records = page
                .records
                .into_iter()
                .map(|r| WalRecord {
                    sequence: r.offset,
                    offset: r.offset,
                    entry: r.entry,
                })
                .collect();
            let result = WalReadResult {
                records,
                next_offset: page.next_offset,
            };
            value(to_value(&result)?, None)
        }
        Command::WalStats => {
            let s = engine(db.wal_stats().await)?;
            let result = WalStatsResult {
                entry_count: s.entry_count,
                segment_count: s.segment_count,
                total_size_bytes: s.total_size_bytes,
                latest_offset: Some(s.latest_offset),
                io_stats: IoStats {
                    bytes_written: s.bytes_written,
                    bytes_read: s.bytes_read,
                    writes: s.writes,
                    reads: s.reads,
                    fsyncs: s.fsyncs,
                },
                earliest_offset: s.earliest_offset,
                checkpoint_offset: Some(s.checkpoint_offset),
            };
            let mut v = to_value(&result)?;
            // Added after the client's `IoStats` was fixed; kept out of it so the CLI's
            // `--json` output stays as it was.
            if let Some(io) = v.get_mut("io_stats").and_then(Value::as_object_mut) {
                io.insert("archive_failures".into(), Value::from(s.archive_failures));
            }
            value(v, None)
        }
        Command::Compact(_) => {
            let cp = engine(db.checkpoint().await)?;
            let result = CompactResult {
                snapshots_created: 0,
                segments_deleted: cp.segments_deleted,
                bytes_reclaimed: cp.bytes_reclaimed,
                total_snapshots: 0,
                wal_segments: cp.wal_segments,
            };
            let mut v = to_value(&result)?;
            // Our addition, not in the client's `CompactResult` (the CLI prints that type).
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "checkpoint_offset".into(),
                    Value::from(cp.checkpoint_offset),
                );
            }
            value(v, None)
        }
        Command::FlushAll(_) => {
            let f = engine(flush_all(ctx).await)?;
            value(to_value(&flushed_result(&f))?, Some(f.wal_offset))
        }
        // This node has no replication configured (that comes with its own `replication:`
        // block), so it reports 0.3.0's standalone shape and nothing else.
        Command::ReplicationStatus => {
            let result = ReplicationStatusResult {
                role: "standalone".into(),
                ..Default::default()
            };
            value(to_value(&result)?, None)
        }
        // 0.3.0 reserved these op names for replication but never accepts them as requests;
        // the exact message is 0.3.0's, which its clients may show or match.
        Command::Replicate | Command::ReplicateAck => Err(bad_request(REPLICATION_OPS_INTERNAL)),
        Command::BackupBegin(_) => {
            let (result, off) = crate::backup::begin(ctx.backups, db).await?;
            value(to_value(&result)?, off)
        }
        Command::BackupRead(p) => {
            let result = crate::backup::read(ctx.backups, p).await?;
            value(to_value(&result)?, None)
        }
        Command::BackupEnd(p) => {
            let result = crate::backup::end(ctx.backups, &p.backup_id)?;
            value(to_value(&result)?, None)
        }
        Command::RestoreInstance(p) => {
            let mut wal = Vec::with_capacity(p.wal.len());
            for (i, r) in p.wal.into_iter().enumerate() {
                let offset = r.get("offset").and_then(Value::as_u64);
                match (offset, r.get("entry")) {
                    (Some(o), Some(e)) => wal.push((o, e.clone())),
                    _ => {
                        return Err(with_details(
                            bad_request("each wal element needs `offset` and `entry`"),
                            &[("path", Value::from(format!("wal[{i}]")))],
                        ));
                    }
                }
            }
            let r = engine(
                db.restore_instance(
                    &p.instance_id,
                    p.instance,
                    &wal,
                    p.as_id.as_deref(),
                    p.replace,
                )
                .await,
            )?;
            let result = RestoreInstanceResult {
                instance_id: r.instance.id,
                machine: r.instance.machine,
                version: r.instance.version,
                state: r.instance.state,
                wal_offset: r.wal_offset,
                replaced: r.replaced,
            };
            value(to_value(&result)?, Some(r.wal_offset))
        }
        // The session answers these itself; a session op reaching the data path is a bug of
        // ours, answered as a bad request rather than a panic.
        Command::Hello(_)
        | Command::Auth(_)
        | Command::Ping
        | Command::Bye
        | Command::Info
        | Command::WatchInstance(_)
        | Command::WatchAll(_)
        | Command::Unwatch(_) => Err(bad_request(format!(
            "{} is not a data operation",
            command.op().as_str()
        ))),
    }
}

fn list_instances(db: &Database, p: ListInstancesParams) -> Result<Value, ErrorObject> {
    let q = ListQuery {
        machine: p.machine,
        state: p.state,
        limit: p.limit.map_or(DEFAULT_LIST_LIMIT, |l| l as usize),
        offset: p.offset.unwrap_or(0) as usize,
        after: p.after,
        include_deleted: p.include_deleted,
    };
    let page = engine(db.list_instances(&q))?;
    let next_after = if page.has_more {
        page.instances.last().map(|i| i.id.clone())
    } else {
        None
    };
    let instances = page
        .instances
        .into_iter()
        .map(|i| InstanceSummary {
            id: i.id,
            machine: i.machine,
            version: i.version,
            state: i.state,
            created_at: i.created_at,
            updated_at: i.updated_at,
            last_wal_offset: i.last_wal_offset,
        })
        .collect();
    to_value(&ListInstancesResult {
        instances,
        total: page.total,
        has_more: page.has_more,
        next_after,
    })
}

fn batch_op(index: usize, cmd: Command) -> Result<BatchOp, ErrorObject> {
    Ok(match cmd {
        Command::CreateInstance(p) => BatchOp::Create(create_req(p)),
        Command::ApplyEvent(p) => BatchOp::Apply(apply_req(p)),
        Command::DeleteInstance(p) => BatchOp::Delete(delete_req(p)),
        Command::GetInstance(p) => BatchOp::Get {
            instance_id: p.instance_id,
        },
        Command::FlushAll(_) => BatchOp::FlushAll,
        other => {
            debug_assert!(!other.op().is_batchable(), "{:?} is batchable", other.op());
            return Err(with_details(
                bad_request(format!(
                    "ops[{index}]: {} cannot be batched (only CREATE_INSTANCE, APPLY_EVENT, DELETE_INSTANCE, GET_INSTANCE, FLUSH_ALL)",
                    other.op().as_str()
                )),
                &[
                    ("index", Value::from(index)),
                    ("op", Value::from(other.op().as_str())),
                ],
            ));
        }
    })
}

async fn batch(
    ctx: Ctx<'_>,
    mode: BatchMode,
    cmds: Vec<Command>,
) -> Result<(Value, Option<u64>), ErrorObject> {
    let max = ctx.db.config().max_batch_ops;
    if cmds.len() > max {
        return Err(with_details(
            bad_request(format!("batch size {} exceeds limit {max}", cmds.len())),
            &[("limit", Value::from(max))],
        ));
    }
    let ops = cmds
        .into_iter()
        .enumerate()
        .map(|(i, c)| batch_op(i, c))
        .collect::<Result<Vec<_>, _>>()?;
    let flushes = ops.iter().any(|op| matches!(op, BatchOp::FlushAll));
    let storage_mode = match mode {
        BatchMode::Atomic => rstmdb_storage::BatchMode::Atomic,
        BatchMode::BestEffort => rstmdb_storage::BatchMode::BestEffort,
    };
    let results = match (mode, flushes) {
        (_, false) => ctx.db.batch(storage_mode, ops).await,
        (BatchMode::BestEffort, true) => Ok(best_effort_with_flush(ctx, ops).await),
        (BatchMode::Atomic, true) => atomic_with_flush(ctx, ops).await,
    };
    match results {
        Ok(results) => {
            let mut last_offset = None;
            let mut items = Vec::with_capacity(results.len());
            for r in &results {
                items.push(match r {
                    Ok(out) => {
                        let (v, off) = output_value(out)?;
                        last_offset = last_offset.max(off);
                        BatchItemResult::ok(v)
                    }
                    Err(e) => BatchItemResult::error(to_wire(e)),
                });
            }
            Ok((to_value(&BatchResult { results: items })?, last_offset))
        }
        Err(f) => {
            let mut obj = to_wire(&f.error);
            obj.message = format!(
                "atomic batch failed at ops[{}] ({}): {}",
                f.index, f.op, obj.message
            );
            Err(with_details(
                obj,
                &[("index", Value::from(f.index)), ("op", Value::from(f.op))],
            ))
        }
    }
}

type OpResults = Vec<Result<BatchOutput, rstmdb_core::Error>>;

/// Some ops of a best-effort batch, run by the storage engine.
async fn best_effort(db: &Database, ops: Vec<BatchOp>) -> OpResults {
    let n = ops.len();
    match db.batch(rstmdb_storage::BatchMode::BestEffort, ops).await {
        Ok(results) => results,
        // Only a size over the limit, checked before; every op gets the error all the same.
        Err(f) => (0..n).map(|_| Err(f.error.clone())).collect(),
    }
}

/// A best-effort batch holding FLUSH_ALL runs in stretches: the ops up to a flush, then the
/// flush exactly as the op on its own (so subscriptions have ended before the next op runs),
/// and so on. A refused flush (disabled) is that element's error; the others still run.
async fn best_effort_with_flush(ctx: Ctx<'_>, ops: Vec<BatchOp>) -> OpResults {
    let mut results = Vec::with_capacity(ops.len());
    let mut stretch = Vec::new();
    for op in ops {
        if !matches!(op, BatchOp::FlushAll) {
            stretch.push(op);
            continue;
        }
        if !stretch.is_empty() {
            results.extend(best_effort(ctx.db, std::mem::take(&mut stretch)).await);
        }
        results.push(flush_all(ctx).await.map(BatchOutput::Flushed));
    }
    if !stretch.is_empty() {
        results.extend(best_effort(ctx.db, stretch).await);
    }
    results
}

/// An atomic batch holding FLUSH_ALL (the storage engine's rules: `Database::batch`): once
/// committed, every subscription ends, in a task of its own as for the op on its own.
async fn atomic_with_flush(ctx: Ctx<'_>, ops: Vec<BatchOp>) -> Result<OpResults, BatchFailure> {
    let db = ctx.db.clone();
    let flush_epoch = ctx.flush_epoch.clone();
    tokio::spawn(async move {
        let results = db.batch(rstmdb_storage::BatchMode::Atomic, ops).await?;
        flush_epoch.send_modify(|e| *e += 1);
        Ok(results)
    })
    .await
    .map_err(|e| BatchFailure {
        index: 0,
        op: "BATCH",
        error: rstmdb_core::Error::Internal {
            detail: format!("BATCH task failed: {e}"),
        },
    })?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn instance(last_event_id: Option<&str>) -> Instance {
        Instance {
            id: "order-1".into(),
            machine: "order".into(),
            version: 3,
            state: "paid".into(),
            ctx: json!({"z": 1, "a": {"b": [1, 2.5, "x\"y"]}})
                .as_object()
                .cloned()
                .unwrap(),
            last_event_id: last_event_id.map(Into::into),
            last_wal_offset: 42,
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_000_500,
            deleted: false,
        }
    }

    /// The typed results write exactly the bytes the `Value` objects did.
    #[test]
    fn typed_results_serialize_like_the_value_objects() {
        for event_id in [None, Some("ev-7")] {
            let i = instance(event_id);
            let mut want = json!({
                "instance_id": i.id, "machine": i.machine, "version": i.version,
                "state": i.state, "ctx": i.ctx, "last_wal_offset": i.last_wal_offset,
                "created_at": i.created_at, "updated_at": i.updated_at,
            });
            if let Some(id) = event_id {
                want["last_event_id"] = json!(id);
            }
            let raw = to_raw(&instance_view(&i)).unwrap();
            assert_eq!(raw.get(), serde_json::to_string(&want).unwrap());
            assert_eq!(to_value(&instance_view(&i)).unwrap(), want);

            let a = ApplyOutcome {
                from_state: "pending".into(),
                to_state: "paid".into(),
                ctx: i.ctx.clone(),
                wal_offset: 43,
                applied: true,
                event_id: event_id.map(Into::into),
            };
            let mut want = json!({
                "from_state": a.from_state, "to_state": a.to_state, "ctx": a.ctx,
                "wal_offset": a.wal_offset, "applied": a.applied,
            });
            if let Some(id) = event_id {
                want["event_id"] = json!(id);
            }
            let raw = to_raw(&applied_view(&a)).unwrap();
            assert_eq!(raw.get(), serde_json::to_string(&want).unwrap());
            assert_eq!(output_value(&BatchOutput::Applied(a)).unwrap().0, want);
        }
    }
}
