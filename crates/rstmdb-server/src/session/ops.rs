//! The ops a session answers itself, from its own state (wire mode, principal,
//! subscriptions) rather than through a data handler: HELLO, AUTH, PING, BYE, INFO, the
//! watch ops (their subscription plumbing is in `subscriptions.rs`), SESSIONS and
//! END_SESSION (over the server's registry of connections).

use super::subscriptions::Target;
use super::{Outgoing, Pending, Session, ready, respond};
use crate::auth::Principal;
use crate::error::bad_request;
use crate::handlers::to_value;
use rstmdb_protocol::{
    AuthResult, ByeResult, Command, EndSessionResult, ErrorCode, ErrorObject, HelloResult,
    InfoResult, Op, PingResult, SessionInfo, SessionsResult, UnwatchResult, WireMode,
};
use serde_json::json;
use std::sync::Arc;

/// `server_name` in HELLO and INFO.
const SERVER_NAME: &str = "rstmdb";

/// Features a client may negotiate in HELLO (the reference set).
pub const FEATURES: [&str; 3] = ["idempotency", "batch", "wal_read"];

/// INFO's `cluster` object: who this node is and where the leader takes writes.
fn cluster_info(node: &rstmdb_cluster::ClusterNode) -> serde_json::Value {
    let leader_client = node
        .leader()
        .and_then(|(_, m)| m)
        .map(|m| serde_json::Value::from(m.client))
        .unwrap_or(serde_json::Value::Null);
    json!({
        "cluster_id": node.options().cluster_id,
        "node_id": node.options().node_id,
        "role": node.role().as_str(),
        "leader_client": leader_client,
    })
}

/// How the session treats an op: the one list of session ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handling {
    /// Answered by the session before any authentication or role check: HELLO, AUTH, PING,
    /// BYE.
    Open,
    /// Answered by the session for an authenticated principal with the op's role: INFO and
    /// the watch ops.
    Session,
    /// Everything else: ordered, authorised per instance and run by a data handler.
    Data,
}

pub(super) fn handling(op: Op) -> Handling {
    match op {
        Op::Hello | Op::Auth | Op::Ping | Op::Bye => Handling::Open,
        Op::Info
        | Op::WatchInstance
        | Op::WatchAll
        | Op::Unwatch
        | Op::Sessions
        | Op::EndSession => Handling::Session,
        _ => Handling::Data,
    }
}

impl Session {
    /// Runs a session op (the caller has checked authentication and the role).
    pub(super) fn session_op(
        &mut self,
        id: Option<String>,
        command: Command,
        principal: Arc<Principal>,
    ) -> Pending {
        match command {
            Command::Hello(p) => {
                if p.protocol_version != rstmdb_protocol::PROTOCOL_VERSION {
                    let e = ErrorObject::new(
                        ErrorCode::UnsupportedProtocol,
                        format!("unsupported protocol version: {}", p.protocol_version),
                    )
                    .with_detail("supported", json!([rstmdb_protocol::PROTOCOL_VERSION]));
                    return ready(self.out(id, Err(e)));
                }
                self.mode = WireMode::negotiate(&p.wire_modes);
                let features = FEATURES
                    .iter()
                    .filter(|f| p.features.iter().any(|r| r == *f))
                    .map(|f| f.to_string())
                    .collect();
                let result = HelloResult {
                    protocol_version: rstmdb_protocol::PROTOCOL_VERSION,
                    wire_mode: self.mode,
                    server_name: SERVER_NAME.into(),
                    server_version: env!("CARGO_PKG_VERSION").into(),
                    features,
                };
                ready(self.out(id, to_value(&result).map(|v| (v, None))))
            }
            Command::Auth(mut p) => {
                let r = if self.cert_identified {
                    zeroize::Zeroize::zeroize(&mut p.token);
                    let name = self.principal.as_ref().map_or("", |p| p.name.as_str());
                    Err(ErrorObject::new(
                        ErrorCode::AuthFailed,
                        format!(
                            "authentication failed: this connection is identified by its client \
                             certificate ({name}); AUTH cannot change that"
                        ),
                    ))
                } else if p.method != "bearer" {
                    zeroize::Zeroize::zeroize(&mut p.token);
                    Err(ErrorObject::new(
                        ErrorCode::AuthFailed,
                        format!(
                            "authentication failed: unsupported auth method: {}",
                            p.method
                        ),
                    ))
                } else if let Err(wait) = self.shared.auth_throttle.admit(self.peer.ip()) {
                    zeroize::Zeroize::zeroize(&mut p.token);
                    Err(ErrorObject::new(
                        ErrorCode::RateLimited,
                        format!(
                            "too many failed authentication attempts from this address; retry in {} s",
                            wait.as_secs().max(1)
                        ),
                    )
                    .with_detail("retry_after_ms", json!(wait.as_millis() as u64)))
                } else {
                    match self.shared.auth().check_token(&mut p.token) {
                        Ok((principal, token)) => {
                            self.registration
                                .set_principal(Some(principal.name.clone()));
                            self.principal = Some(Arc::new(principal));
                            self.token = token;
                            to_value(&AuthResult {
                                authenticated: true,
                            })
                            .map(|v| (v, None))
                        }
                        Err(why) => {
                            tracing::info!(peer = %self.peer, reason = why, "authentication failed");
                            self.shared
                                .metrics
                                .auth_failures
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            self.shared.auth_throttle.record_failure(self.peer.ip());
                            Err(ErrorObject::new(
                                ErrorCode::AuthFailed,
                                format!("authentication failed: {why}"),
                            ))
                        }
                    }
                };
                ready(self.out(id, r))
            }
            Command::Ping => {
                let r = to_value(&PingResult { pong: true }).map(|v| (v, None));
                ready(self.out(id, r))
            }
            Command::Bye => {
                self.closing = true;
                let r = to_value(&ByeResult { goodbye: true }).map(|v| (v, None));
                let mut o = self.out(id, r);
                o.close_after = true;
                ready(o)
            }
            Command::Info => {
                // Ordered after every earlier request, so `wal_offset` covers the client's
                // own pipelined writes.
                let mode = self.mode;
                self.after_earlier(move |shared| {
                    let cfg = &shared.config;
                    // Both limits are validated far below u32::MAX (config.rs).
                    let result = InfoResult {
                        server_name: SERVER_NAME.into(),
                        server_version: env!("CARGO_PKG_VERSION").into(),
                        protocol_version: rstmdb_protocol::PROTOCOL_VERSION,
                        features: FEATURES.iter().map(|f| f.to_string()).collect(),
                        max_frame_bytes: u32::try_from(cfg.network.max_frame_bytes)
                            .unwrap_or(u32::MAX),
                        max_batch_ops: u32::try_from(cfg.storage.max_batch_ops).unwrap_or(u32::MAX),
                    };
                    let info = to_value(&result).map(|mut v| {
                        // Our addition, not in the client's `InfoResult` (the CLI prints it).
                        if let Some(obj) = v.as_object_mut() {
                            obj.insert("wal_offset".into(), shared.db.last_offset().into());
                            if let Some(node) = &shared.cluster {
                                obj.insert("cluster".into(), cluster_info(node));
                            }
                        }
                        (v, None)
                    });
                    Outgoing {
                        response: respond(id, info),
                        mode,
                        close_after: false,
                        start_watch: None,
                        failed_watch: None,
                    }
                })
            }
            Command::WatchInstance(p) => self.watch(id, Target::Instance(p), principal),
            Command::WatchAll(p) => self.watch(id, Target::All(p), principal),
            Command::Unwatch(p) => {
                let removed = match self.watches.remove(&p.subscription_id) {
                    Some(task) => {
                        if let Some(t) = task {
                            t.abort();
                        }
                        true
                    }
                    None => false,
                };
                let result = UnwatchResult {
                    subscription_id: p.subscription_id,
                    removed,
                };
                ready(self.out(id, to_value(&result).map(|v| (v, None))))
            }
            Command::Sessions => {
                let sessions = self
                    .shared
                    .sessions
                    .list()
                    .into_iter()
                    .map(|l| SessionInfo {
                        session_id: l.id,
                        client_addr: l.peer.to_string(),
                        principal: l.principal,
                        since: l.since,
                        tls: l.tls,
                    })
                    .collect();
                let result = SessionsResult { sessions };
                ready(self.out(id, to_value(&result).map(|v| (v, None))))
            }
            Command::EndSession(p) => {
                let r = if self.shared.sessions.end(p.session_id) {
                    tracing::info!(
                        peer = %self.peer,
                        by = principal.name.as_str(),
                        session_id = p.session_id,
                        "ending a session on request (END_SESSION)"
                    );
                    to_value(&EndSessionResult {
                        session_id: p.session_id,
                        ended: true,
                    })
                    .map(|v| (v, None))
                } else {
                    Err(ErrorObject::new(
                        ErrorCode::NotFound,
                        format!("no open session {}", p.session_id),
                    ))
                };
                ready(self.out(id, r))
            }
            other => ready(self.out(
                id,
                Err(bad_request(format!(
                    "{} cannot be handled here",
                    other.op().as_str()
                ))),
            )),
        }
    }
}
