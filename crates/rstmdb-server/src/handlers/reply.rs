//! What every data handler shares: the context it runs against, its answer type, and the
//! encoding of results (the bottom of the handlers; it imports none of its siblings).

use crate::backup::Backups;
use crate::error::to_wire;
use rstmdb_protocol::ErrorObject;
use rstmdb_storage::Database;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::sync::watch;

/// What a data op runs against: the engine, the spooled backups, the FLUSH_ALL epoch
/// (bumped after a flush so every subscription on every connection ends) and the cluster node.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub db: &'a Database,
    pub backups: &'a Backups,
    /// The session running the op: the owner of the backups it begins
    /// (`crate::backup::SessionSpools::owner`).
    pub backup_owner: u64,
    pub flush_epoch: &'a Arc<watch::Sender<u64>>,
    /// The raft node when this server is a cluster member (CLUSTER_* ops).
    pub cluster: Option<&'a rstmdb_cluster::ClusterNode>,
}

/// A result, as a `Value` or (for the hot ops) already serialized.
#[derive(Debug)]
pub enum Payload {
    Value(Value),
    Raw(Box<RawValue>),
}

/// A data op's answer: its result and, for mutations, the WAL offset to report in `meta`.
pub type Answer = Result<(Payload, Option<u64>), ErrorObject>;

pub(super) fn engine<T>(r: Result<T, rstmdb_core::Error>) -> Result<T, ErrorObject> {
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
pub(super) fn to_raw<T: Serialize>(v: &T) -> Result<Box<RawValue>, ErrorObject> {
    serde_json::value::to_raw_value(v).map_err(encoding_failed)
}

/// A `Value` result and its WAL offset.
pub(super) fn value(v: Value, wal_offset: Option<u64>) -> Answer {
    Ok((Payload::Value(v), wal_offset))
}
