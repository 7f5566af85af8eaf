//! An async client for rstmdb, the state-machine database: RCP over TCP or TLS.
//!
//! - One connection per [`Client`], shared by its clones. Requests from concurrent tasks are
//!   pipelined on it and their responses matched by id, so a slow request does not hold up
//!   the caller of a fast one.
//! - HELLO (and AUTH, when a token is configured) on every connect; TLS with a private CA,
//!   mutual TLS with a client certificate, or an insecure mode for development
//!   ([`TlsOptions`]).
//! - A typed method for every op, returning the typed results of `rstmdb-protocol`; a
//!   refusal is [`Error::Server`] with the RCP [`ErrorCode`].
//! - Watches are [`futures::Stream`]s ([`WatchStream`]) that resume from the last seen WAL
//!   offset after a reconnect, without gaps or duplicates.
//! - Timeouts on connect and on every request; reconnect with exponential backoff is opt-in
//!   ([`ReconnectPolicy`]).
//!
//! # Example
//!
//! ```no_run
//! use futures::StreamExt;
//! use rstmdb_client::{
//!     ApplyEventParams, Client, ClientConfig, CreateInstanceParams, ReconnectPolicy,
//!     WatchAllParams,
//! };
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), rstmdb_client::Error> {
//! let client = Client::connect(
//!     ClientConfig::new("127.0.0.1:7401")
//!         .with_token("my-secret-token")
//!         .with_reconnect(ReconnectPolicy::default()),
//! )
//! .await?;
//!
//! let definition = json!({
//!     "states": ["pending", "paid", "shipped"],
//!     "initial": "pending",
//!     "transitions": [
//!         {"from": "pending", "event": "PAY", "to": "paid"},
//!         {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0"}
//!     ]
//! });
//! client.put_machine("order", 1, definition).await?;
//!
//! // Every transition to `paid`, from now on, across reconnects.
//! let mut paid = client
//!     .watch_all(WatchAllParams {
//!         to_states: vec!["paid".into()],
//!         ..WatchAllParams::default()
//!     })
//!     .await?;
//!
//! client
//!     .create_instance(CreateInstanceParams {
//!         instance_id: Some("order-001".into()),
//!         machine: "order".into(),
//!         version: 1,
//!         initial_ctx: Some(json!({"customer": "alice"})),
//!         idempotency_key: None,
//!     })
//!     .await?;
//! let applied = client
//!     .apply_event(ApplyEventParams {
//!         instance_id: "order-001".into(),
//!         event: "PAY".into(),
//!         payload: Some(json!({"amount": 99.5})),
//!         expected_state: Some("pending".into()),
//!         expected_wal_offset: None,
//!         event_id: None,
//!         idempotency_key: Some("pay-001".into()),
//!     })
//!     .await?;
//! assert_eq!(applied.to_state, "paid");
//!
//! if let Some(event) = paid.next().await {
//!     let event = event?;
//!     println!("{} is now {} (offset {})", event.instance_id, event.to_state, event.wal_offset);
//! }
//!
//! // Errors carry the RCP code.
//! match client.get_instance("no-such-order").await {
//!     Err(e) if e.code() == Some(rstmdb_client::ErrorCode::InstanceNotFound) => {}
//!     other => println!("unexpected: {other:?}"),
//! }
//! # Ok(())
//! # }
//! ```

mod client;
mod config;
mod connection;
mod error;
mod tls;
mod watch;

pub use client::Client;
pub use config::{
    ClientConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_EVENT_BUFFER, DEFAULT_REQUEST_TIMEOUT,
    ReconnectPolicy,
};
pub use error::{Error, Result};
pub use tls::TlsOptions;
pub use watch::{WatchStart, WatchStream};

/// The protocol crate, for anything not re-exported below.
pub use rstmdb_protocol as protocol;

// The request and result types of every op, so callers need no direct dependency on the
// protocol crate.
pub use rstmdb_protocol::{
    ApplyEventParams, ApplyEventResult, BatchItemResult, BatchMode, BatchResult,
    ClusterAddNodeParams, ClusterAddNodeResult, ClusterLeader, ClusterMember,
    ClusterRemoveNodeParams, ClusterRemoveNodeResult, ClusterStatusResult, Command, CompactParams,
    CompactResult, CreateInstanceParams, CreateInstanceResult, DeleteInstanceParams,
    DeleteInstanceResult, EndSessionParams, EndSessionResult, ErrorCode, ErrorObject, Event,
    FlushAllResult, GetInstanceParams, GetInstanceResult, GetMachineParams, GetMachineResult,
    HelloResult, InfoResult, InstanceSummary, IoStats, ListInstancesParams, ListInstancesResult,
    ListMachinesResult, MachineSummary, Op, PutMachineParams, PutMachineResult, ReplicaStatus,
    ReplicationStatusResult, SessionInfo, SessionsResult, SnapshotInstanceParams,
    SnapshotInstanceResult, UnwatchParams, UnwatchResult, WalReadParams, WalReadResult, WalRecord,
    WalStatsResult, WatchAllParams, WatchInstanceParams, WireMode,
};
