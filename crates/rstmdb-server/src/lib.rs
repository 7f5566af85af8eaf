//! rstmdb-server: the `rstmdb` binary's library. RCP over TCP on top of the embedded
//! storage engine.
//!
//! - [`config`]: YAML + environment configuration, validated up front; the `cluster:`
//!   section in [`config::cluster`].
//! - [`server`]: the listener, connection limit and graceful shutdown.
//! - [`session`]: one connection — the read/answer loop; its session ops, watch forwarding
//!   and audit wrapper in submodules.
//! - `ordering`: which earlier requests a request waits for (per connection).
//! - [`timefmt`]: RFC 3339 timestamps for `meta.server_time` and the audit log.
//! - [`registry`]: the open connections (SESSIONS, END_SESSION).
//! - [`shared`]: what every session shares (engine, config, reloadable auth/TLS, …).
//! - [`handlers`]: one handler per data operation behind one dispatcher.
//! - [`auth`]: token hashes compared in constant time; principals with roles and machine globs.
//! - [`authz`]: which role each op needs, which machines a principal may touch.
//! - [`tls`]: TLS/mTLS material, loaded at startup and on SIGHUP.
//! - [`audit`]: the JSON audit log.
//! - [`metrics`]: Prometheus counters, kept with relaxed atomics.
//! - [`metrics_http`]: the exporter: renders them, serves `/metrics`, `/healthz`, `/readyz`.
//! - [`harden`]: no core dumps (non-dumpable process, core limit 0).
//! - [`error`]: the one mapping from engine errors to RCP error objects.

pub mod audit;
pub mod auth;
pub mod authz;
pub mod backup;
pub mod config;
pub mod error;
pub mod forward;
pub mod handlers;
pub mod harden;
pub mod metrics;
pub mod metrics_http;
mod ordering;
pub mod raft_metrics;
pub mod registry;
pub mod server;
pub mod session;
pub mod shared;
pub mod timefmt;
pub mod tls;
