//! One handler function per data operation, grouped by concern, behind one dispatcher
//! ([`execute`]) that only maps an op to its function. Handlers turn typed params into engine
//! calls and engine results into `rstmdb_protocol` result types; they know nothing about
//! connections. Session operations (HELLO, AUTH, INFO, WATCH_*, …) are answered by the
//! session itself (`session/ops.rs`).
//!
//! | ops | file |
//! |---|---|
//! | PUT_MACHINE, GET_MACHINE, LIST_MACHINES | `machines.rs` |
//! | CREATE_INSTANCE, GET_INSTANCE, LIST_INSTANCES, DELETE_INSTANCE, APPLY_EVENT, SNAPSHOT_INSTANCE | `instances.rs` |
//! | BATCH | `batch.rs` |
//! | WAL_READ, WAL_STATS | `wal.rs` |
//! | COMPACT, FLUSH_ALL, REPLICATION_STATUS, REPLICATE, REPLICATE_ACK, BACKUP_BEGIN/READ/END, RESTORE_INSTANCE | `admin.rs` |

mod admin;
mod batch;
mod instances;
mod machines;
mod wal;

pub use instances::{DEFAULT_LIST_LIMIT, instance_view};

use crate::backup::Backups;
use crate::error::{bad_request, to_wire};
use rstmdb_protocol::{Command, ErrorObject};
use rstmdb_storage::Database;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::sync::watch;

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

/// A result, as a `Value` or (for the hot ops) already serialized.
#[derive(Debug)]
pub enum Payload {
    Value(Value),
    Raw(Box<RawValue>),
}

/// A data op's answer: its result and, for mutations, the WAL offset to report in `meta`.
pub type Answer = Result<(Payload, Option<u64>), ErrorObject>;

/// Runs one data operation: one arm per op, each naming the op's function and nothing else.
/// Session operations never reach here (the session answers them); should one, it is
/// answered with an error rather than a panic.
pub async fn execute(ctx: Ctx<'_>, command: Command) -> Answer {
    match command {
        Command::PutMachine(p) => machines::put_machine(ctx, p).await,
        Command::GetMachine(p) => machines::get_machine(ctx, p),
        Command::ListMachines => machines::list_machines(ctx),
        Command::CreateInstance(p) => instances::create_instance(ctx, p).await,
        Command::GetInstance(p) => instances::get_instance(ctx, p),
        Command::ListInstances(p) => instances::list_instances(ctx, p),
        Command::DeleteInstance(p) => instances::delete_instance(ctx, p).await,
        Command::ApplyEvent(p) => instances::apply_event(ctx, p).await,
        Command::SnapshotInstance(p) => instances::snapshot_instance(ctx, p).await,
        Command::Batch(p) => batch::batch(ctx, p).await,
        Command::WalRead(p) => wal::wal_read(ctx, p),
        Command::WalStats => wal::wal_stats(ctx).await,
        Command::Compact(p) => admin::compact(ctx, p).await,
        Command::FlushAll(p) => admin::flush_all(ctx, p).await,
        Command::ReplicationStatus => admin::replication_status(ctx),
        Command::Replicate | Command::ReplicateAck => admin::replicate(ctx),
        Command::BackupBegin(p) => admin::backup_begin(ctx, p).await,
        Command::BackupRead(p) => admin::backup_read(ctx, p).await,
        Command::BackupEnd(p) => admin::backup_end(ctx, p),
        Command::RestoreInstance(p) => admin::restore_instance(ctx, p).await,
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

fn engine<T>(r: Result<T, rstmdb_core::Error>) -> Result<T, ErrorObject> {
    r.map_err(|e| to_wire(&e))
}

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

/// A `Value` result and its WAL offset.
fn value(v: Value, wal_offset: Option<u64>) -> Answer {
    Ok((Payload::Value(v), wal_offset))
}
