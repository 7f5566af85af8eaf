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
//! | CLUSTER_STATUS, CLUSTER_ADD_NODE, CLUSTER_REMOVE_NODE | `cluster.rs` |

mod admin;
mod batch;
mod cluster;
mod instances;
mod machines;
mod reply;
mod wal;

pub use admin::REPLICATION_OPS_INTERNAL;
pub use instances::{DEFAULT_LIST_LIMIT, instance_view};
pub(crate) use reply::to_value;
pub use reply::{Answer, Ctx, Payload};

use crate::error::bad_request;
use rstmdb_protocol::Command;

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
        Command::ListInstances(p) => instances::list_instances(ctx, p).await,
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
        Command::ClusterStatus => cluster::cluster_status(ctx).await,
        Command::ClusterAddNode(p) => cluster::cluster_add_node(ctx, p).await,
        Command::ClusterRemoveNode(p) => cluster::cluster_remove_node(ctx, p).await,
        Command::Hello(_)
        | Command::Auth(_)
        | Command::Ping
        | Command::Bye
        | Command::Info
        | Command::WatchInstance(_)
        | Command::WatchAll(_)
        | Command::Unwatch(_)
        | Command::Sessions
        | Command::EndSession(_) => Err(bad_request(format!(
            "{} is not a data operation",
            command.op().as_str()
        ))),
    }
}
