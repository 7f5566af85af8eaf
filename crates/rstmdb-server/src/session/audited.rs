//! The audit and metrics wrapper around a request: with the audit log or request metrics
//! on, a request's outcome is recorded (op, what it named, status, duration) when it
//! completes.

use super::{Pending, Session};
use crate::audit::Record;
use crate::timefmt::rfc3339_now;
use rstmdb_protocol::{Command, ErrorCode, Inbound, decode_request};

/// The request fields the audit log records: which op, on what. Never a param that could
/// carry a secret or the instance data.
#[derive(Debug, Default)]
struct AuditFields {
    op: Option<&'static str>,
    instance_id: Option<String>,
    machine: Option<String>,
    event: Option<String>,
}

impl AuditFields {
    fn of(cmd: &Command) -> AuditFields {
        let names = cmd.names();
        AuditFields {
            op: Some(cmd.op().as_str()),
            instance_id: names.any_instance().map(str::to_owned),
            machine: names.machine.map(str::to_owned),
            event: match cmd {
                Command::ApplyEvent(p) => Some(p.event.clone()),
                _ => None,
            },
        }
    }
}

impl Session {
    /// Runs one request; with the audit log or metrics on, its outcome is recorded when it
    /// completes.
    pub(super) fn dispatch(&mut self, inbound: Inbound) -> Pending {
        let decoded = decode_request(&inbound.payload);
        let audit = self.shared.audit.clone();
        let metrics_on = self.shared.config.metrics.enabled;
        if audit.is_none() && !metrics_on {
            return self.dispatch_inner(decoded, inbound.payload);
        }
        let start = std::time::Instant::now();
        let op = decoded.as_ref().ok().map(|r| r.command.op());
        let fields = match (&audit, &decoded) {
            (Some(_), Ok(r)) => AuditFields::of(&r.command),
            _ => AuditFields::default(),
        };
        let pending = self.dispatch_inner(decoded, inbound.payload);
        let identity = self.principal.as_ref().map(|p| p.name.clone());
        let client_addr = self.peer.to_string();
        let metrics = metrics_on.then(|| self.shared.metrics.clone());
        let shared = self.shared.clone();
        Box::pin(async move {
            let out = pending.await;
            let error = match &out.response.body {
                rstmdb_protocol::ResponseBody::Ok(_) | rstmdb_protocol::ResponseBody::OkRaw(_) => {
                    None
                }
                rstmdb_protocol::ResponseBody::Err(e) => Some(e.code),
            };
            let elapsed = start.elapsed();
            if let Some(m) = metrics {
                m.request(op, elapsed, error);
            }
            if let Some(audit) = audit {
                // Instance ops name no machine; the audit trail should (one state-store
                // read, only with the audit log on). Gone instances leave it null.
                let machine = fields.machine.or_else(|| {
                    let id = fields.instance_id.as_deref()?;
                    shared.db.get_instance(id).ok().map(|i| i.machine)
                });
                audit.record(Record {
                    timestamp: rfc3339_now(),
                    client_addr,
                    identity,
                    op: fields.op,
                    instance_id: fields.instance_id,
                    machine,
                    event: fields.event,
                    status: if error.is_some() { "error" } else { "ok" },
                    error_code: error.map(ErrorCode::as_str),
                    duration_ms: elapsed.as_secs_f64() * 1000.0,
                });
            }
            out
        })
    }
}
