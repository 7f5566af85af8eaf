//! COMPACT, FLUSH_ALL, REPLICATION_STATUS, REPLICATE / REPLICATE_ACK (refused),
//! BACKUP_BEGIN / BACKUP_READ / BACKUP_END (the spools themselves are `crate::backup`) and
//! RESTORE_INSTANCE.

use super::reply::{Answer, Ctx, engine, to_value, value};
use crate::error::{bad_request, with_details};
use rstmdb_protocol::{
    BackupBeginParams, BackupEndParams, BackupReadParams, CompactParams, CompactResult,
    FlushAllParams, FlushAllResult, ReplicationStatusResult, RestoreInstanceParams,
    RestoreInstanceResult,
};
use rstmdb_storage::FlushOutcome;
use serde_json::Value;

/// The answer to REPLICATE and REPLICATE_ACK sent as requests (0.3.0's words).
pub const REPLICATION_OPS_INTERNAL: &str =
    "invalid request: replication operations are handled internally";

pub(super) async fn compact(ctx: Ctx<'_>, _: CompactParams) -> Answer {
    let cp = engine(ctx.db.checkpoint().await)?;
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

pub(super) async fn flush_all(ctx: Ctx<'_>, _: FlushAllParams) -> Answer {
    let f = engine(run_flush_all(ctx).await)?;
    value(to_value(&flushed_result(&f))?, Some(f.wal_offset))
}

/// FLUSH_ALL, on its own or as a batch element, and the end of every subscription on every
/// connection (what they watched is gone). Both happen in a task of their own, so a caller
/// that stops waiting (its client gone) cannot leave subscriptions open on a flushed
/// database.
pub(super) async fn run_flush_all(ctx: Ctx<'_>) -> Result<FlushOutcome, rstmdb_core::Error> {
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

pub(super) fn flushed_result(f: &FlushOutcome) -> FlushAllResult {
    FlushAllResult {
        flushed: true,
        instances_removed: f.instances_removed,
        machines_removed: f.machines_removed,
    }
}

/// This node has no replication configured (that comes with its own `replication:` block),
/// so it reports 0.3.0's standalone shape and nothing else.
pub(super) fn replication_status(_: Ctx<'_>) -> Answer {
    let result = ReplicationStatusResult {
        role: "standalone".into(),
        ..Default::default()
    };
    value(to_value(&result)?, None)
}

/// 0.3.0 reserved REPLICATE and REPLICATE_ACK for replication but never accepts them as
/// requests; the exact message is 0.3.0's, which its clients may show or match.
pub(super) fn replicate(_: Ctx<'_>) -> Answer {
    Err(bad_request(REPLICATION_OPS_INTERNAL))
}

pub(super) async fn backup_begin(ctx: Ctx<'_>, _: BackupBeginParams) -> Answer {
    let (result, off) = crate::backup::begin(ctx.backups, ctx.db, ctx.backup_owner).await?;
    value(to_value(&result)?, off)
}

pub(super) async fn backup_read(ctx: Ctx<'_>, p: BackupReadParams) -> Answer {
    let result = crate::backup::read(ctx.backups, p).await?;
    value(to_value(&result)?, None)
}

pub(super) fn backup_end(ctx: Ctx<'_>, p: BackupEndParams) -> Answer {
    let result = crate::backup::end(ctx.backups, &p.backup_id)?;
    value(to_value(&result)?, None)
}

pub(super) async fn restore_instance(ctx: Ctx<'_>, p: RestoreInstanceParams) -> Answer {
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
        ctx.db
            .restore_instance(
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
