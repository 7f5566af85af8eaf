//! The audit and metrics wrapper around a request: with the audit log or request metrics
//! on, a request's outcome is recorded (op, what it named, status, duration) when it
//! completes.
//!
//! A request's future can be dropped before it completes: the connection broke while writes
//! were in flight, or shutdown stopped waiting for the session. A write whose commit was
//! already handed to the engine still lands in the WAL, so its audit record must not depend
//! on the future finishing. The record is held by an [`AuditGuard`] owned by the future: the
//! future's completion writes it with the outcome; dropping the future first writes it with
//! `status: "abandoned"` (outcome unknown: the WAL says whether the write took effect) and the
//! same ids. Either way every request that reached dispatch has exactly one line. (Running
//! each write in a spawned task instead would also record the real outcome, but would keep
//! executing requests of a client that is gone and cost a task per request.)

use super::{Pending, Session};
use crate::audit::{AuditLog, Record};
use crate::shared::Shared;
use crate::timefmt::rfc3339_now;
use rstmdb_protocol::{Command, ErrorCode, Inbound, Op, ResponseBody, decode_request};
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// The request fields the audit log records: which op, on what. Never a param that could
/// carry a secret or the instance data.
#[derive(Debug, Default)]
struct AuditFields {
    op: Option<&'static str>,
    instance_id: Option<String>,
    machine: Option<String>,
    event: Option<String>,
    instance_ids: Option<Vec<String>>,
    machines: Option<Vec<String>>,
    backup_id: Option<String>,
}

/// Longest name (id, machine, event) an audit line repeats from a request. Names are checked
/// by the handler, after the audit record has taken them, so a request could otherwise put a
/// name as long as a frame into the audit log.
const MAX_AUDIT_NAME_BYTES: usize = 256;

/// `s`, cut to [`MAX_AUDIT_NAME_BYTES`] on a character boundary, saying so.
fn cap(s: &str) -> String {
    if s.len() <= MAX_AUDIT_NAME_BYTES {
        return s.to_owned();
    }
    let mut end = MAX_AUDIT_NAME_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &s[..end], s.len())
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    let s = cap(s);
    if !v.contains(&s) {
        v.push(s);
    }
}

impl AuditFields {
    fn of(cmd: &Command) -> AuditFields {
        let names = cmd.names();
        let mut f = AuditFields {
            op: Some(cmd.op().as_str()),
            instance_id: names.any_instance().map(cap),
            machine: names.machine.map(cap),
            ..AuditFields::default()
        };
        match cmd {
            Command::ApplyEvent(p) => f.event = Some(cap(&p.event)),
            Command::Batch(p) => {
                // Every element's instance (existing or asked-for) and machine, in order.
                let (mut ids, mut machines) = (Vec::new(), Vec::new());
                for c in &p.ops {
                    let n = c.names();
                    n.each_instance(&mut |id| push_unique(&mut ids, id));
                    if let Some(id) = n.new_instance {
                        push_unique(&mut ids, id);
                    }
                    if let Some(m) = n.machine {
                        push_unique(&mut machines, m);
                    }
                }
                f.instance_ids = Some(ids);
                f.machines = Some(machines);
            }
            Command::RestoreInstance(p) => {
                // The backup's id, and the id it is restored under when that differs.
                let mut ids = vec![cap(&p.instance_id)];
                if let Some(as_id) = &p.as_id {
                    push_unique(&mut ids, as_id);
                }
                f.instance_id = Some(cap(p.as_id.as_deref().unwrap_or(&p.instance_id)));
                f.instance_ids = Some(ids);
            }
            Command::BackupRead(p) => f.backup_id = Some(cap(&p.backup_id)),
            Command::BackupEnd(p) => f.backup_id = Some(cap(&p.backup_id)),
            _ => {}
        }
        f
    }

    /// What only the answer knows: BACKUP_BEGIN's backup id, the ids a BATCH's creates were
    /// given.
    fn complete_from(&mut self, op: Option<Op>, result: &Value) {
        match op {
            Some(Op::BackupBegin) => {
                self.backup_id = result.get("backup_id").and_then(Value::as_str).map(cap);
            }
            Some(Op::Batch) => {
                let (Some(ids), Some(items)) = (
                    self.instance_ids.as_mut(),
                    result.get("results").and_then(Value::as_array),
                ) else {
                    return;
                };
                for item in items {
                    if let Some(id) = item
                        .get("result")
                        .and_then(|r| r.get("instance_id"))
                        .and_then(Value::as_str)
                    {
                        push_unique(ids, id);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Writes a request's audit record exactly once: with its outcome from [`AuditGuard::done`],
/// or as `abandoned` when dropped before (see the module docs).
struct AuditGuard {
    audit: AuditLog,
    shared: Arc<Shared>,
    client_addr: String,
    identity: Option<String>,
    start: Instant,
    /// `None` once written.
    fields: Option<AuditFields>,
}

impl AuditGuard {
    fn done(mut self, error: Option<ErrorCode>, result: Option<&Value>, op: Option<Op>) {
        if let Some(mut f) = self.fields.take() {
            if let Some(v) = result {
                f.complete_from(op, v);
            }
            let status = if error.is_some() { "error" } else { "ok" };
            self.write(f, status, error);
        }
    }

    fn write(&mut self, f: AuditFields, status: &'static str, error: Option<ErrorCode>) {
        // Instance ops name no machine; the audit trail should (one state-store read, only
        // with the audit log on). Gone instances leave it null.
        let machine = f.machine.or_else(|| {
            let id = f.instance_id.as_deref()?;
            self.shared.db.get_instance(id).ok().map(|i| i.machine)
        });
        self.audit.record(Record {
            timestamp: rfc3339_now(),
            client_addr: std::mem::take(&mut self.client_addr),
            identity: self.identity.take(),
            op: f.op,
            instance_id: f.instance_id,
            machine,
            event: f.event,
            instance_ids: f.instance_ids,
            machines: f.machines,
            backup_id: f.backup_id,
            status,
            error_code: error.map(ErrorCode::as_str),
            duration_ms: self.start.elapsed().as_secs_f64() * 1000.0,
        });
    }
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        if let Some(f) = self.fields.take() {
            self.write(f, "abandoned", None);
        }
    }
}

impl Session {
    /// Runs one request; with the audit log or metrics on, its outcome is recorded when it
    /// completes (and with the audit log on, as `abandoned` if it never does).
    pub(super) fn dispatch(&mut self, inbound: Inbound) -> Pending {
        let decoded = decode_request(&inbound.payload);
        let audit = self.shared.audit.clone();
        let metrics_on = self.shared.config.metrics.enabled;
        if audit.is_none() && !metrics_on {
            return self.dispatch_inner(decoded, inbound.payload);
        }
        let start = Instant::now();
        let op = decoded.as_ref().ok().map(|r| r.command.op());
        let fields = match (&audit, &decoded) {
            (Some(_), Ok(r)) => AuditFields::of(&r.command),
            _ => AuditFields::default(),
        };
        let pending = self.dispatch_inner(decoded, inbound.payload);
        // After dispatch: a successful AUTH (run synchronously) records who it authenticated.
        let identity = self.principal.as_ref().map(|p| p.name.clone());
        let guard = audit.map(|audit| AuditGuard {
            audit,
            shared: self.shared.clone(),
            client_addr: self.peer.to_string(),
            identity,
            start,
            fields: Some(fields),
        });
        let metrics = metrics_on.then(|| self.shared.metrics.clone());
        Box::pin(async move {
            let out = pending.await;
            let (error, result) = match &out.response.body {
                ResponseBody::Ok(v) => (None, Some(v)),
                ResponseBody::OkRaw(_) => (None, None),
                ResponseBody::Err(e) => (Some(e.code), None),
            };
            if let Some(m) = metrics {
                m.request(op, start.elapsed(), error);
            }
            if let Some(g) = guard {
                g.done(error, result, op);
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_on_a_character_boundary_and_say_so() {
        assert_eq!(cap("order-1"), "order-1");
        let exact = "a".repeat(MAX_AUDIT_NAME_BYTES);
        assert_eq!(cap(&exact), exact);
        // 'é' is two bytes: 200 of them straddle the limit.
        let long = "é".repeat(200);
        let c = cap(&long);
        assert!(c.ends_with("…(400 bytes)"), "{c}");
        let kept = c.trim_end_matches("…(400 bytes)");
        assert!(kept.len() <= MAX_AUDIT_NAME_BYTES && kept.chars().all(|ch| ch == 'é'));
    }
}
