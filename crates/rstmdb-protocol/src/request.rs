//! Request envelopes: decoding a payload into a typed [`Request`], and encoding one (clients).
//!
//! Decoding separates two failures because the server treats them differently:
//! - [`RequestError::Malformed`]: not UTF-8 or not JSON. Nothing in it can be trusted, not
//!   even the id, so the server answers `BAD_REQUEST` with `id: null` and closes.
//! - [`RequestError::Invalid`]: valid JSON that is not a valid request. The message boundary
//!   is intact, so the server answers `BAD_REQUEST` echoing the id (when one could be read)
//!   and keeps the connection.
//!
//! Error messages quote client input, so they are clipped: a hostile 16 MiB string must not
//! come back 16 MiB long in an error response or a log line.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::MAX_REQUEST_ID_BYTES;
use crate::error_code::ErrorCode;
use crate::op::Op;
use crate::params::{
    ApplyEventParams, AuthParams, BackupBeginParams, BackupEndParams, BackupReadParams, BatchMode,
    ClusterAddNodeParams, ClusterRemoveNodeParams, CompactParams, CreateInstanceParams,
    DeleteInstanceParams, EndSessionParams, FlushAllParams, GetInstanceParams, GetMachineParams,
    HelloParams, ListInstancesParams, PutMachineParams, RestoreInstanceParams,
    SnapshotInstanceParams, UnwatchParams, WalReadParams, WatchAllParams, WatchInstanceParams,
};
use crate::response::{ErrorObject, Response};

/// BATCH: several ops in one request.
///
/// Decoded by [`crate::decode_request`] (not serde) because each element is a whole command
/// and its errors must name the element (`ops[3].op`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchParams {
    /// Absent means best-effort.
    pub mode: BatchMode,
    /// The elements, in order (`ops` on the wire; `operations` is accepted too).
    pub ops: Vec<Command>,
}

/// Longest error message we build from client input, in bytes.
const MAX_ERROR_MESSAGE_BYTES: usize = 512;
/// Longest piece of client input (an op name) quoted verbatim in a message, in bytes.
const MAX_QUOTED_INPUT_BYTES: usize = 64;

/// A decoded request: the client's id and what it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed in the response; at most [`MAX_REQUEST_ID_BYTES`] bytes.
    pub id: String,
    /// The op and its typed params.
    pub command: Command,
}

/// An op together with its typed params: one variant per op.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// HELLO.
    Hello(HelloParams),
    /// AUTH.
    Auth(AuthParams),
    /// PING (params ignored).
    Ping,
    /// BYE (params ignored).
    Bye,
    /// INFO (params ignored).
    Info,
    /// PUT_MACHINE.
    PutMachine(PutMachineParams),
    /// GET_MACHINE.
    GetMachine(GetMachineParams),
    /// LIST_MACHINES (params ignored).
    ListMachines,
    /// CREATE_INSTANCE.
    CreateInstance(CreateInstanceParams),
    /// GET_INSTANCE.
    GetInstance(GetInstanceParams),
    /// LIST_INSTANCES.
    ListInstances(ListInstancesParams),
    /// DELETE_INSTANCE.
    DeleteInstance(DeleteInstanceParams),
    /// APPLY_EVENT.
    ApplyEvent(ApplyEventParams),
    /// BATCH.
    Batch(BatchParams),
    /// SNAPSHOT_INSTANCE.
    SnapshotInstance(SnapshotInstanceParams),
    /// WAL_READ.
    WalRead(WalReadParams),
    /// WAL_STATS (params ignored).
    WalStats,
    /// COMPACT.
    Compact(CompactParams),
    /// WATCH_INSTANCE.
    WatchInstance(WatchInstanceParams),
    /// WATCH_ALL.
    WatchAll(WatchAllParams),
    /// UNWATCH.
    Unwatch(UnwatchParams),
    /// FLUSH_ALL.
    FlushAll(FlushAllParams),
    /// REPLICATION_STATUS (params ignored).
    ReplicationStatus,
    /// REPLICATE sent as a request (params ignored; always refused).
    Replicate,
    /// REPLICATE_ACK sent as a request (params ignored; always refused).
    ReplicateAck,
    /// BACKUP_BEGIN (extension).
    BackupBegin(BackupBeginParams),
    /// BACKUP_READ (extension).
    BackupRead(BackupReadParams),
    /// BACKUP_END (extension).
    BackupEnd(BackupEndParams),
    /// RESTORE_INSTANCE (extension).
    RestoreInstance(RestoreInstanceParams),
    /// SESSIONS (extension; params ignored).
    Sessions,
    /// END_SESSION (extension).
    EndSession(EndSessionParams),
    /// CLUSTER_STATUS (extension; params ignored).
    ClusterStatus,
    /// CLUSTER_ADD_NODE (extension).
    ClusterAddNode(ClusterAddNodeParams),
    /// CLUSTER_REMOVE_NODE (extension).
    ClusterRemoveNode(ClusterRemoveNodeParams),
}

impl Command {
    /// The op this command is for.
    pub fn op(&self) -> Op {
        match self {
            Command::Hello(_) => Op::Hello,
            Command::Auth(_) => Op::Auth,
            Command::Ping => Op::Ping,
            Command::Bye => Op::Bye,
            Command::Info => Op::Info,
            Command::PutMachine(_) => Op::PutMachine,
            Command::GetMachine(_) => Op::GetMachine,
            Command::ListMachines => Op::ListMachines,
            Command::CreateInstance(_) => Op::CreateInstance,
            Command::GetInstance(_) => Op::GetInstance,
            Command::ListInstances(_) => Op::ListInstances,
            Command::DeleteInstance(_) => Op::DeleteInstance,
            Command::ApplyEvent(_) => Op::ApplyEvent,
            Command::Batch(_) => Op::Batch,
            Command::SnapshotInstance(_) => Op::SnapshotInstance,
            Command::WalRead(_) => Op::WalRead,
            Command::WalStats => Op::WalStats,
            Command::Compact(_) => Op::Compact,
            Command::WatchInstance(_) => Op::WatchInstance,
            Command::WatchAll(_) => Op::WatchAll,
            Command::Unwatch(_) => Op::Unwatch,
            Command::FlushAll(_) => Op::FlushAll,
            Command::ReplicationStatus => Op::ReplicationStatus,
            Command::Replicate => Op::Replicate,
            Command::ReplicateAck => Op::ReplicateAck,
            Command::BackupBegin(_) => Op::BackupBegin,
            Command::BackupRead(_) => Op::BackupRead,
            Command::BackupEnd(_) => Op::BackupEnd,
            Command::RestoreInstance(_) => Op::RestoreInstance,
            Command::Sessions => Op::Sessions,
            Command::EndSession(_) => Op::EndSession,
            Command::ClusterStatus => Op::ClusterStatus,
            Command::ClusterAddNode(_) => Op::ClusterAddNode,
            Command::ClusterRemoveNode(_) => Op::ClusterRemoveNode,
        }
    }
}

impl Request {
    /// A request with the given id.
    pub fn new(id: impl Into<String>, command: Command) -> Self {
        Self {
            id: id.into(),
            command,
        }
    }

    /// The op this request is for.
    pub fn op(&self) -> Op {
        self.command.op()
    }

    /// Compact JSON, ready to be sent as a frame payload or a JSON line.
    pub fn to_json_bytes(&self) -> Result<Bytes, serde_json::Error> {
        serde_json::to_vec(self).map(Bytes::from)
    }
}

/// Serialises as `{"type":"request","id":…,"op":…,"params":{…}}`.
impl Serialize for Request {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("type", "request")?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("op", &self.op())?;
        map.serialize_entry("params", &ParamsOf(&self.command))?;
        map.end()
    }
}

/// Serialises as a BATCH element, `{"op":…,"params":{…}}`.
impl Serialize for Command {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("op", &self.op())?;
        map.serialize_entry("params", &ParamsOf(self))?;
        map.end()
    }
}

/// The params object of a command (`{}` for ops without params).
struct ParamsOf<'a>(&'a Command);

impl Serialize for ParamsOf<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Command::Hello(params) => params.serialize(serializer),
            Command::Auth(params) => params.serialize(serializer),
            Command::PutMachine(params) => params.serialize(serializer),
            Command::GetMachine(params) => params.serialize(serializer),
            Command::CreateInstance(params) => params.serialize(serializer),
            Command::GetInstance(params) => params.serialize(serializer),
            Command::ListInstances(params) => params.serialize(serializer),
            Command::DeleteInstance(params) => params.serialize(serializer),
            Command::ApplyEvent(params) => params.serialize(serializer),
            Command::Batch(params) => params.serialize(serializer),
            Command::SnapshotInstance(params) => params.serialize(serializer),
            Command::WalRead(params) => params.serialize(serializer),
            Command::Compact(params) => params.serialize(serializer),
            Command::WatchInstance(params) => params.serialize(serializer),
            Command::WatchAll(params) => params.serialize(serializer),
            Command::Unwatch(params) => params.serialize(serializer),
            Command::FlushAll(params) => params.serialize(serializer),
            Command::BackupBegin(params) => params.serialize(serializer),
            Command::BackupRead(params) => params.serialize(serializer),
            Command::BackupEnd(params) => params.serialize(serializer),
            Command::RestoreInstance(params) => params.serialize(serializer),
            Command::EndSession(params) => params.serialize(serializer),
            Command::ClusterAddNode(params) => params.serialize(serializer),
            Command::ClusterRemoveNode(params) => params.serialize(serializer),
            Command::Ping
            | Command::Sessions
            | Command::ClusterStatus
            | Command::Bye
            | Command::Info
            | Command::ListMachines
            | Command::WalStats
            | Command::ReplicationStatus
            | Command::Replicate
            | Command::ReplicateAck => serializer.serialize_map(Some(0))?.end(),
        }
    }
}

/// Why a payload is not a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not UTF-8 or not JSON: answer with `id: null`, then close the connection.
    #[error("invalid request: {message}")]
    Malformed {
        /// What is wrong, for the error response.
        message: String,
    },
    /// Valid JSON but not a valid request: answer echoing `id`, keep the connection.
    #[error("invalid request: {message}")]
    Invalid {
        /// The request's id, when it was present, a string and not too long.
        id: Option<String>,
        /// What is wrong, for the error response.
        message: String,
        /// Path of the offending field relative to `params` (`instance_id`, `ops[3].op`), or
        /// an envelope key (`id`, `op`, `params`).
        field: Option<String>,
    },
}

impl RequestError {
    /// The id to echo in the error response.
    pub fn id(&self) -> Option<&str> {
        match self {
            RequestError::Malformed { .. } => None,
            RequestError::Invalid { id, .. } => id.as_deref(),
        }
    }

    /// What is wrong, without the `invalid request: ` prefix of `Display`.
    pub fn message(&self) -> &str {
        match self {
            RequestError::Malformed { message } | RequestError::Invalid { message, .. } => message,
        }
    }

    /// The offending field, when one can be named.
    pub fn field(&self) -> Option<&str> {
        match self {
            RequestError::Malformed { .. } => None,
            RequestError::Invalid { field, .. } => field.as_deref(),
        }
    }

    /// Whether the connection must close after the error response: after unparsable JSON
    /// the peer's idea of the conversation cannot be trusted any more.
    pub fn closes_connection(&self) -> bool {
        matches!(self, RequestError::Malformed { .. })
    }

    /// The `BAD_REQUEST` error object for this failure, with `details.field` when known.
    pub fn to_error_object(&self) -> ErrorObject {
        let error = ErrorObject::new(ErrorCode::BadRequest, self.to_string());
        match self.field() {
            Some(field) => error.with_detail("field", field),
            None => error,
        }
    }

    /// The complete error response (without `meta`, which is the server's to add).
    pub fn to_response(&self) -> Response {
        Response::error(self.id().map(str::to_owned), self.to_error_object())
    }
}

/// An error below the envelope, before the id is attached.
#[derive(Debug)]
struct ParamsError {
    message: String,
    field: Option<String>,
}

impl ParamsError {
    /// An error about `field`, reported at location `at` (empty at the top level).
    fn new(at: &str, message: impl Into<String>, field: String) -> Self {
        let message = message.into();
        let message = if at.is_empty() {
            message
        } else {
            format!("{at}: {message}")
        };
        Self {
            message: clip(message, MAX_ERROR_MESSAGE_BYTES),
            field: Some(field),
        }
    }
}

/// Decodes one payload (a frame payload or a JSON line) into a [`Request`].
///
/// `params` absent or `null` is treated as `{}` (the documented intent; the reference's
/// `null` made every typed op fail). Ops that take no params ignore the value entirely.
pub fn decode_request(payload: &[u8]) -> Result<Request, RequestError> {
    if let Some(request) = fast::decode(payload) {
        return Ok(request);
    }
    decode_request_general(payload)
}

/// The hot ops decoded straight from the text into their params, without a `Value` tree.
/// It answers only when the request is well formed in the plainest way (an object envelope
/// with no repeated key, an object `params` that decodes as is); anything else — every
/// error included — goes to [`decode_request_general`], which therefore alone defines the
/// results and every error message. A property test checks the two agree.
///
/// Fields serde would skip (unknown keys, in the envelope or the params) also send a request
/// to the general decoder: a skipped value is only scanned, so a number past f64 in it would
/// pass here while the general decoder refuses the payload as JSON.
mod fast {
    use super::{Command, MAX_REQUEST_ID_BYTES, Op, Request};
    use serde::Deserialize;
    use serde_json::value::RawValue;
    use std::borrow::Cow;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Envelope<'a> {
        #[serde(rename = "type", borrow)]
        _kind: Cow<'a, str>,
        id: String,
        #[serde(borrow)]
        op: Cow<'a, str>,
        #[serde(borrow)]
        params: &'a RawValue,
    }

    /// `text` is a JSON object (serde would also read a struct from an array).
    fn is_object(text: &str) -> bool {
        text.trim_start().starts_with('{')
    }

    pub(super) fn decode(payload: &[u8]) -> Option<Request> {
        let text = std::str::from_utf8(payload).ok()?;
        if !is_object(text) {
            return None;
        }
        let envelope: Envelope<'_> = serde_json::from_str(text).ok()?;
        if envelope.id.len() > MAX_REQUEST_ID_BYTES {
            return None;
        }
        let params = envelope.params.get();
        if !is_object(params) {
            return None;
        }
        let command = match envelope.op.parse::<Op>().ok()? {
            Op::GetInstance => Command::GetInstance(every_field(params)?),
            Op::ApplyEvent => Command::ApplyEvent(every_field(params)?),
            Op::CreateInstance => Command::CreateInstance(every_field(params)?),
            _ => return None,
        };
        Some(Request {
            id: envelope.id,
            command,
        })
    }

    /// `text` as a `T`, unless it does not decode or serde skipped any of its fields.
    fn every_field<'de, T: Deserialize<'de>>(text: &'de str) -> Option<T> {
        let mut de = serde_json::Deserializer::from_str(text);
        let mut skipped = false;
        let value = serde_ignored::deserialize(&mut de, |_| skipped = true).ok()?;
        de.end().ok()?;
        (!skipped).then_some(value)
    }
}

/// [`decode_request`] without the fast path for hot ops: the reference for its results.
#[doc(hidden)]
pub fn decode_request_general(payload: &[u8]) -> Result<Request, RequestError> {
    let text = std::str::from_utf8(payload).map_err(|error| RequestError::Malformed {
        message: format!("payload is not valid UTF-8: {error}"),
    })?;
    let envelope: Value = serde_json::from_str(text).map_err(|error| RequestError::Malformed {
        message: clip(format!("invalid JSON: {error}"), MAX_ERROR_MESSAGE_BYTES),
    })?;
    let Value::Object(mut envelope) = envelope else {
        return Err(invalid_envelope(
            None,
            format!(
                "request must be a JSON object, got {}",
                json_type(&envelope)
            ),
            None,
        ));
    };

    let id = match envelope.get("id") {
        None => {
            return Err(invalid_envelope(None, "missing field `id`", Some("id")));
        }
        Some(Value::String(id)) if id.len() > MAX_REQUEST_ID_BYTES => {
            return Err(invalid_envelope(
                None,
                format!(
                    "`id` is {} bytes long, the limit is {MAX_REQUEST_ID_BYTES}",
                    id.len()
                ),
                Some("id"),
            ));
        }
        Some(Value::String(id)) => id.clone(),
        Some(other) => {
            return Err(invalid_envelope(
                None,
                format!("`id` must be a string, got {}", json_type(other)),
                Some("id"),
            ));
        }
    };

    // The value of `type` is not checked (the reference accepts anything), only its presence.
    match envelope.get("type") {
        Some(Value::String(_)) => {}
        None => {
            return Err(invalid_envelope(
                Some(id),
                "missing field `type`",
                Some("type"),
            ));
        }
        Some(other) => {
            return Err(invalid_envelope(
                Some(id),
                format!("`type` must be a string, got {}", json_type(other)),
                Some("type"),
            ));
        }
    }

    match decode_command(&mut envelope, "") {
        Ok(command) => Ok(Request { id, command }),
        Err(ParamsError { message, field }) => Err(RequestError::Invalid {
            id: Some(id),
            message,
            field,
        }),
    }
}

fn invalid_envelope(
    id: Option<String>,
    message: impl Into<String>,
    field: Option<&str>,
) -> RequestError {
    RequestError::Invalid {
        id,
        message: message.into(),
        field: field.map(str::to_owned),
    }
}

/// Decodes the `op` and `params` of `object`: the envelope (`at` empty) or a BATCH element
/// (`at` = `ops[3]`). Field paths are relative to the request's params.
fn decode_command(object: &mut Map<String, Value>, at: &str) -> Result<Command, ParamsError> {
    let op_field = join(at, "op");
    let op = match object.get("op") {
        None => {
            return Err(ParamsError::new(at, "missing field `op`", op_field));
        }
        Some(Value::String(name)) => match name.parse::<Op>() {
            Ok(op) => op,
            Err(_) => {
                let quoted = clip(name.clone(), MAX_QUOTED_INPUT_BYTES);
                return Err(ParamsError::new(
                    at,
                    format!("unknown op `{quoted}`"),
                    op_field,
                ));
            }
        },
        Some(other) => {
            let message = format!("`op` must be a string, got {}", json_type(other));
            return Err(ParamsError::new(at, message, op_field));
        }
    };
    let params_field = join(at, "params");
    // Top-level fields are named without a `params.` prefix; elements' with theirs.
    let prefix = if at.is_empty() {
        ""
    } else {
        params_field.as_str()
    };
    // Only read for ops that take params: the others accept any value, as the reference.
    let mut params = || match object.remove("params") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(params)) => Ok(params),
        Some(other) => {
            let message = format!("params must be a JSON object, got {}", json_type(&other));
            Err(ParamsError::new(at, message, params_field.clone()))
        }
    };

    let command = match op {
        Op::Ping => Command::Ping,
        Op::Bye => Command::Bye,
        Op::Info => Command::Info,
        Op::ListMachines => Command::ListMachines,
        Op::WalStats => Command::WalStats,
        Op::ReplicationStatus => Command::ReplicationStatus,
        Op::Replicate => Command::Replicate,
        Op::ReplicateAck => Command::ReplicateAck,
        Op::Sessions => Command::Sessions,
        Op::EndSession => Command::EndSession(typed(params()?, prefix)?),
        Op::ClusterStatus => Command::ClusterStatus,
        Op::ClusterAddNode => Command::ClusterAddNode(typed(params()?, prefix)?),
        Op::ClusterRemoveNode => Command::ClusterRemoveNode(typed(params()?, prefix)?),
        Op::Hello => Command::Hello(typed(params()?, prefix)?),
        Op::Auth => Command::Auth(typed(params()?, prefix)?),
        Op::PutMachine => Command::PutMachine(typed(params()?, prefix)?),
        Op::GetMachine => Command::GetMachine(typed(params()?, prefix)?),
        Op::CreateInstance => Command::CreateInstance(typed(params()?, prefix)?),
        Op::GetInstance => Command::GetInstance(typed(params()?, prefix)?),
        Op::ListInstances => Command::ListInstances(typed(params()?, prefix)?),
        Op::DeleteInstance => Command::DeleteInstance(typed(params()?, prefix)?),
        Op::ApplyEvent => Command::ApplyEvent(typed(params()?, prefix)?),
        Op::Batch => Command::Batch(decode_batch(params()?, prefix)?),
        Op::SnapshotInstance => Command::SnapshotInstance(typed(params()?, prefix)?),
        Op::WalRead => Command::WalRead(typed(params()?, prefix)?),
        Op::Compact => Command::Compact(typed(params()?, prefix)?),
        Op::WatchInstance => Command::WatchInstance(typed(params()?, prefix)?),
        Op::WatchAll => Command::WatchAll(typed(params()?, prefix)?),
        Op::Unwatch => Command::Unwatch(typed(params()?, prefix)?),
        Op::FlushAll => Command::FlushAll(typed(params()?, prefix)?),
        Op::BackupBegin => Command::BackupBegin(typed(params()?, prefix)?),
        Op::BackupRead => Command::BackupRead(typed(params()?, prefix)?),
        Op::BackupEnd => Command::BackupEnd(typed(params()?, prefix)?),
        Op::RestoreInstance => Command::RestoreInstance(typed(params()?, prefix)?),
    };
    Ok(command)
}

/// Decodes BATCH params: `mode`, and the elements under `ops` or (docs' name) `operations`.
fn decode_batch(mut params: Map<String, Value>, prefix: &str) -> Result<BatchParams, ParamsError> {
    let mode = match params.remove("mode") {
        None | Some(Value::Null) => BatchMode::default(),
        Some(mode) => typed(mode, &join(prefix, "mode"))?,
    };

    let ops = params.remove("ops").filter(|value| !value.is_null());
    let operations = params.remove("operations").filter(|value| !value.is_null());
    let (key, list) = match (ops, operations) {
        (Some(list), None) => ("ops", list),
        (None, Some(list)) => ("operations", list),
        (None, None) => {
            return Err(ParamsError::new(
                prefix,
                "missing field `ops`",
                join(prefix, "ops"),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(ParamsError::new(
                prefix,
                "give either `ops` or `operations`, not both",
                join(prefix, "operations"),
            ));
        }
    };
    let list_path = join(prefix, key);
    let Value::Array(elements) = list else {
        let message = format!("`{key}` must be an array, got {}", json_type(&list));
        return Err(ParamsError::new(prefix, message, list_path));
    };

    let mut commands = Vec::with_capacity(elements.len());
    for (index, element) in elements.into_iter().enumerate() {
        let at = format!("{list_path}[{index}]");
        let Value::Object(mut element) = element else {
            let message = format!("must be a JSON object, got {}", json_type(&element));
            return Err(ParamsError::new(&at, message, at.clone()));
        };
        commands.push(decode_command(&mut element, &at)?);
    }
    Ok(BatchParams {
        mode,
        ops: commands,
    })
}

/// Decodes `value` as `T`, naming the failing field by its path below `prefix`.
fn typed<T: DeserializeOwned>(value: impl Into<Value>, prefix: &str) -> Result<T, ParamsError> {
    serde_path_to_error::deserialize(value.into()).map_err(|error| {
        let mut location = prefix.to_owned();
        for segment in error.path().iter() {
            push_segment(&mut location, segment);
        }
        let reason = error.into_inner().to_string();
        // A missing field is reported by serde at its parent; name the field itself.
        let field = match missing_field_name(&reason) {
            Some(name) => Some(join(&location, name)),
            None if location.is_empty() => None,
            None => Some(location.clone()),
        };
        let message = if location.is_empty() {
            reason
        } else {
            format!("{location}: {reason}")
        };
        ParamsError {
            message: clip(message, MAX_ERROR_MESSAGE_BYTES),
            field,
        }
    })
}

fn push_segment(path: &mut String, segment: &serde_path_to_error::Segment) {
    use serde_path_to_error::Segment;
    match segment {
        Segment::Seq { index } => {
            path.push('[');
            path.push_str(&index.to_string());
            path.push(']');
        }
        Segment::Map { key } => push_key(path, key),
        Segment::Enum { variant } => push_key(path, variant),
        Segment::Unknown => push_key(path, "?"),
    }
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn join(path: &str, key: &str) -> String {
    let mut joined = path.to_owned();
    push_key(&mut joined, key);
    joined
}

/// The field name in serde's "missing field `name`" message.
fn missing_field_name(reason: &str) -> Option<&str> {
    reason
        .strip_prefix("missing field `")?
        .strip_suffix('`')
        .filter(|name| !name.contains('`'))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
fn clip(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_respects_char_boundaries() {
        let text = "é".repeat(100);
        let clipped = clip(text, 11);
        assert!(clipped.len() <= 11);
        assert!(clipped.ends_with('…'));
        assert_eq!(clip("short".to_owned(), 11), "short");
    }

    #[test]
    fn missing_field_name_is_extracted() {
        assert_eq!(
            missing_field_name("missing field `instance_id`"),
            Some("instance_id")
        );
        assert_eq!(missing_field_name("invalid type: null"), None);
    }
}
