//! CREATE_INSTANCE, GET_INSTANCE, LIST_INSTANCES, DELETE_INSTANCE, APPLY_EVENT,
//! SNAPSHOT_INSTANCE, and the borrowed result views of the hot ones (also used for BATCH
//! elements).

use super::reply::{Answer, Ctx, Payload, engine, to_raw, to_value, value};
use rstmdb_core::Instance;
use rstmdb_protocol::{
    AppliedView, ApplyEventParams, CreateInstanceParams, CreatedView, DeleteInstanceParams,
    DeleteInstanceResult, GetInstanceParams, InstanceSummary, InstanceView, ListInstancesParams,
    ListInstancesResult, SnapshotInstanceParams, SnapshotInstanceResult,
};
use rstmdb_storage::{
    ApplyEvent, ApplyOutcome, CreateInstance, CreateOutcome, DeleteInstance, DeleteOutcome,
    ListQuery,
};
use sha2::{Digest, Sha256};

/// Default LIST_INSTANCES page.
pub const DEFAULT_LIST_LIMIT: usize = 100;

pub(super) async fn create_instance(ctx: Ctx<'_>, p: CreateInstanceParams) -> Answer {
    let c = engine(ctx.db.create_instance(create_req(p)).await)?;
    debug_assert!(
        c.wal_offset > 0,
        "a create is acknowledged with its WAL offset"
    );
    Ok((Payload::Raw(to_raw(&created_view(&c))?), Some(c.wal_offset)))
}

pub(super) fn get_instance(ctx: Ctx<'_>, p: GetInstanceParams) -> Answer {
    let i = engine(ctx.db.get_instance_shared(&p.instance_id))?;
    debug_assert_eq!(
        i.id, p.instance_id,
        "the engine answered for another instance"
    );
    Ok((Payload::Raw(to_raw(&instance_view(&i))?), None))
}

/// Runs on the blocking pool: without filters (and with `include_deleted`) the engine scans
/// and decodes (decrypts) every instance for the total, which must not stall a runtime thread
/// and the connections it serves (issue 18 finding 11).
pub(super) async fn list_instances(ctx: Ctx<'_>, p: ListInstancesParams) -> Answer {
    let q = ListQuery {
        machine: p.machine,
        state: p.state,
        limit: p.limit.map_or(DEFAULT_LIST_LIMIT, |l| l as usize),
        offset: p.offset.unwrap_or(0) as usize,
        after: p.after,
        include_deleted: p.include_deleted,
    };
    let db = ctx.db.clone();
    let page = tokio::task::spawn_blocking(move || db.list_instances(&q))
        .await
        .map_err(|e| {
            rstmdb_protocol::ErrorObject::new(
                rstmdb_protocol::ErrorCode::InternalError,
                format!("listing instances: {e}"),
            )
        })?;
    let page = engine(page)?;
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
    let result = ListInstancesResult {
        instances,
        total: page.total,
        has_more: page.has_more,
        next_after,
    };
    value(to_value(&result)?, None)
}

pub(super) async fn delete_instance(ctx: Ctx<'_>, p: DeleteInstanceParams) -> Answer {
    let d = engine(ctx.db.delete_instance(delete_req(p)).await)?;
    value(to_value(&deleted_result(&d))?, Some(d.wal_offset))
}

pub(super) async fn apply_event(ctx: Ctx<'_>, p: ApplyEventParams) -> Answer {
    let a = engine(ctx.db.apply_event(apply_req(p)).await)?;
    debug_assert!(
        a.wal_offset > 0,
        "an apply is acknowledged with its WAL offset"
    );
    Ok((Payload::Raw(to_raw(&applied_view(&a))?), Some(a.wal_offset)))
}

/// A snapshot is a checkpoint: the instance (and everything else) is then durable in the
/// state store, independent of the WAL.
/// The instance as of its last WAL record, which is durable: no checkpoint is taken, since
/// one would trim the WAL every client reads from, and a writer limited to some machines must
/// not be able to do that (issue 18 finding 3). The id names that state: `snap-<offset>`.
pub(super) async fn snapshot_instance(ctx: Ctx<'_>, p: SnapshotInstanceParams) -> Answer {
    let i = engine(ctx.db.get_instance(&p.instance_id))?;
    let bytes = serde_json::to_vec(&to_value(&instance_view(&i))?).unwrap_or_default();
    let checksum: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let result = SnapshotInstanceResult {
        instance_id: i.id,
        snapshot_id: format!("snap-{}", i.last_wal_offset),
        wal_offset: i.last_wal_offset,
        size_bytes: bytes.len() as u64,
        checksum,
    };
    value(to_value(&result)?, None)
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
pub(super) fn applied_view(a: &ApplyOutcome) -> AppliedView<'_> {
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
pub(super) fn created_view(c: &CreateOutcome) -> CreatedView<'_> {
    CreatedView {
        instance_id: &c.instance_id,
        state: &c.state,
        wal_offset: c.wal_offset,
    }
}

pub(super) fn create_req(p: CreateInstanceParams) -> CreateInstance {
    CreateInstance {
        instance_id: p.instance_id,
        machine: p.machine,
        version: p.version,
        initial_ctx: p.initial_ctx,
        idempotency_key: p.idempotency_key,
    }
}

pub(super) fn apply_req(p: ApplyEventParams) -> ApplyEvent {
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

pub(super) fn delete_req(p: DeleteInstanceParams) -> DeleteInstance {
    DeleteInstance {
        instance_id: p.instance_id,
        idempotency_key: p.idempotency_key,
    }
}

pub(super) fn deleted_result(d: &DeleteOutcome) -> DeleteInstanceResult {
    DeleteInstanceResult {
        instance_id: d.instance_id.clone(),
        deleted: true,
        wal_offset: d.wal_offset,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::handlers::batch::output_value;
    use rstmdb_storage::BatchOutput;
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
