//! rstmdb-server: the `rstmdb` binary's library. RCP over TCP on top of the embedded
//! storage engine.
//!
//! - [`config`]: YAML + environment configuration, validated up front.
//! - [`server`]: the listener, connection limit and graceful shutdown.
//! - [`session`]: one connection — framing, ordering, session ops, subscriptions.
//! - [`handlers`]: one handler per data operation behind one dispatcher.
//! - [`auth`]: token hashes compared in constant time; principals with roles and machine globs.
//! - [`authz`]: which role each op needs, which machines a principal may touch.
//! - [`tls`]: TLS/mTLS material, loaded at startup and on SIGHUP.
//! - [`audit`]: the JSON audit log.
//! - [`metrics`]: Prometheus counters and the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - [`harden`]: no core dumps (non-dumpable process, core limit 0).
//! - [`error`]: the one mapping from engine errors to RCP error objects.

pub mod audit;
pub mod auth;
pub mod authz;
pub mod backup;
pub mod config;
pub mod error;
pub mod handlers;
pub mod harden;
pub mod metrics;
pub mod server;
pub mod session;
pub mod tls;
