//! BATCH: its elements run by the storage engine, atomically or best effort; FLUSH_ALL
//! elements end every subscription as the op on its own does.

use super::admin::{flushed_result, run_flush_all};
use super::instances::{
    applied_view, apply_req, create_req, created_view, delete_req, deleted_result, instance_view,
};
use super::reply::{Answer, Ctx, to_value, value};
use crate::error::{bad_request, to_wire, with_details};
use rstmdb_protocol::{BatchItemResult, BatchMode, BatchParams, BatchResult, Command, ErrorObject};
use rstmdb_storage::{BatchFailure, BatchOp, BatchOutput, Database};
use serde_json::Value;

/// One BATCH element's result (the same as the op's on its own) and its WAL offset.
pub(super) fn output_value(out: &BatchOutput) -> Result<(Value, Option<u64>), ErrorObject> {
    Ok(match out {
        BatchOutput::Created(c) => (to_value(&created_view(c))?, Some(c.wal_offset)),
        BatchOutput::Applied(a) => (to_value(&applied_view(a))?, Some(a.wal_offset)),
        BatchOutput::Deleted(d) => (to_value(&deleted_result(d))?, Some(d.wal_offset)),
        BatchOutput::Instance(i) => (to_value(&instance_view(i))?, None),
        BatchOutput::Flushed(f) => (to_value(&flushed_result(f))?, Some(f.wal_offset)),
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

pub(super) async fn batch(ctx: Ctx<'_>, p: BatchParams) -> Answer {
    let (mode, cmds) = (p.mode, p.ops);
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
            value(to_value(&BatchResult { results: items })?, last_offset)
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
        results.push(run_flush_all(ctx).await.map(BatchOutput::Flushed));
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
