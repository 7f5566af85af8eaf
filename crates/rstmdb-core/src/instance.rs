//! Instances and the pure transition function.
//!
//! The core decides *what* a change is; it never decides *whether it is durable*. Storage
//! calls [`apply_event`] under the instance's lock, writes the resulting change to the WAL,
//! and only then publishes the new [`Instance`] with its `last_wal_offset` set.

use crate::definition::Machine;
use crate::error::{ConflictKind, Error, Result};
use crate::limits::DEFAULT_MAX_CTX_BYTES;
use crate::names::validate_instance_id;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Limits applied to instance data. The server fills these from its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceLimits {
    /// Largest context, serialised as compact JSON, after a payload merge.
    pub max_ctx_bytes: usize,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        InstanceLimits {
            max_ctx_bytes: DEFAULT_MAX_CTX_BYTES,
        }
    }
}

/// One state-machine instance, pinned to `(machine, version)` for life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub machine: String,
    pub version: u32,
    pub state: String,
    /// Always a JSON object (decisions.md: absent or null `initial_ctx` means `{}`).
    pub ctx: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
    /// Offset of the WAL record that last created, changed or deleted the instance.
    pub last_wal_offset: u64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    #[serde(default)]
    pub deleted: bool,
}

/// Reads an optional object parameter (`initial_ctx`, `payload`): absent or `null` is `{}`,
/// any other non-object is a `BAD_REQUEST` naming the parameter.
pub fn object_param(path: &str, value: Option<Value>) -> Result<Map<String, Value>> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(Error::bad_request(
            path,
            format!("must be a JSON object, got {}", json_type(&other)),
        )),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Serialised size of a context, without building the string.
pub fn ctx_size_bytes(ctx: &Map<String, Value>) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0);
    // Writing to a counter cannot fail, and a Map always serialises.
    let _ = serde_json::to_writer(&mut c, ctx);
    c.0
}

fn check_ctx_size(path: &str, ctx: &Map<String, Value>, limits: &InstanceLimits) -> Result<()> {
    let size = ctx_size_bytes(ctx);
    if size > limits.max_ctx_bytes {
        return Err(Error::bad_request(
            path,
            format!(
                "context would be {size} bytes, over the limit of {} bytes",
                limits.max_ctx_bytes
            ),
        ));
    }
    Ok(())
}

impl Instance {
    /// A new instance in the machine's initial state. `last_wal_offset` is 0 until storage
    /// has written the create record.
    pub fn create(
        id: &str,
        machine: &Machine,
        initial_ctx: Map<String, Value>,
        now_ms: i64,
        limits: &InstanceLimits,
    ) -> Result<Instance> {
        validate_instance_id(id)?;
        check_ctx_size("initial_ctx", &initial_ctx, limits)?;
        Ok(Instance {
            id: id.to_owned(),
            machine: machine.name().to_owned(),
            version: machine.version(),
            state: machine.definition().initial.clone(),
            ctx: initial_ctx,
            last_event_id: None,
            last_wal_offset: 0,
            created_at: now_ms,
            updated_at: now_ms,
            deleted: false,
        })
    }
}

/// An event to apply, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct EventRequest<'a> {
    pub event: &'a str,
    pub payload: &'a Map<String, Value>,
    pub expected_state: Option<&'a str>,
    pub expected_wal_offset: Option<u64>,
    pub event_id: Option<&'a str>,
}

/// The outcome of [`apply_event`]: the instance as it will be once the change is durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The new instance. Its `last_wal_offset` is still the old one: storage sets it.
    pub instance: Instance,
    pub from_state: String,
    pub to_state: String,
}

/// Applies `req` to `instance` under `machine`, or says why it cannot be applied.
///
/// Checks, first failure wins: deleted → `INSTANCE_NOT_FOUND`; `expected_state` →
/// `CONFLICT`; `expected_wal_offset` → `CONFLICT`; transition for (state, event) →
/// `INVALID_TRANSITION`; guards (on the context *before* the merge) → `GUARD_FAILED`; merged
/// context size → `BAD_REQUEST`. The payload is merged shallowly: each top-level key
/// replaces the context's.
pub fn apply_event(
    instance: &Instance,
    machine: &Machine,
    req: &EventRequest<'_>,
    now_ms: i64,
    limits: &InstanceLimits,
) -> Result<Applied> {
    if instance.deleted {
        return Err(Error::InstanceNotFound {
            instance_id: instance.id.clone(),
        });
    }
    if instance.machine != machine.name() || instance.version != machine.version() {
        return Err(Error::Internal {
            detail: format!(
                "instance '{}' is pinned to {} v{}, not {} v{}",
                instance.id,
                instance.machine,
                instance.version,
                machine.name(),
                machine.version()
            ),
        });
    }
    if let Some(expected) = req.expected_state
        && expected != instance.state
    {
        return Err(Error::Conflict(ConflictKind::State {
            expected: expected.to_owned(),
            actual: instance.state.clone(),
        }));
    }
    if let Some(expected) = req.expected_wal_offset
        && expected != instance.last_wal_offset
    {
        return Err(Error::Conflict(ConflictKind::WalOffset {
            expected,
            actual: instance.last_wal_offset,
        }));
    }
    let transition =
        machine.select_transition(&instance.state, req.event, &instance.ctx, req.payload)?;

    let mut ctx = instance.ctx.clone();
    for (k, v) in req.payload {
        ctx.insert(k.clone(), v.clone());
    }
    check_ctx_size("payload", &ctx, limits)?;

    let next = Instance {
        id: instance.id.clone(),
        machine: instance.machine.clone(),
        version: instance.version,
        state: transition.to.clone(),
        ctx,
        last_event_id: req.event_id.map(str::to_owned),
        last_wal_offset: instance.last_wal_offset,
        created_at: instance.created_at,
        updated_at: now_ms,
        deleted: false,
    };
    Ok(Applied {
        from_state: instance.state.clone(),
        to_state: transition.to.clone(),
        instance: next,
    })
}

/// What deleting an instance does.
#[derive(Debug, Clone, PartialEq)]
pub enum Deletion {
    /// The instance becomes a tombstone; storage writes the delete record.
    Deleted(Instance),
    /// Already deleted: succeed with the original delete offset, write nothing.
    AlreadyDeleted { wal_offset: u64 },
}

/// Soft delete.
pub fn delete_instance(instance: &Instance, now_ms: i64) -> Deletion {
    if instance.deleted {
        return Deletion::AlreadyDeleted {
            wal_offset: instance.last_wal_offset,
        };
    }
    let mut next = instance.clone();
    next.deleted = true;
    next.updated_at = now_ms;
    Deletion::Deleted(next)
}

#[cfg(test)]
#[path = "instance_tests.rs"]
mod tests;
