//! Response envelopes.
//!
//! ```text
//! {"type":"response","id":"7","status":"ok","result":{…},"meta":{…}}
//! {"type":"response","id":"7","status":"error","error":{"code":"…","message":"…","retryable":false,"details":{…}}}
//! ```
//! `id` is `null` only when the request's id could not be read. `meta` and `details` are left
//! out when empty, as the reference does, so old clients see exactly the shapes they know.

use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error_code::ErrorCode;

/// Outcome of a request (or of one BATCH element).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseStatus {
    /// Success: a `result` follows.
    Ok,
    /// Failure: an `error` follows.
    Error,
}

/// The `error` object of a failed request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorObject {
    /// One of the 19 protocol codes.
    pub code: ErrorCode,
    /// Human-readable text; clients must not parse it.
    pub message: String,
    /// Whether retrying the same request may succeed; always [`ErrorCode::retryable`].
    pub retryable: bool,
    /// Structured context (bad field path, expected/actual state, batch index).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
}

impl ErrorObject {
    /// An error whose `retryable` flag follows from its code, so the two never disagree.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: code.retryable(),
            details: Map::new(),
        }
    }

    /// Adds one `details` entry.
    pub fn with_detail(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }
}

/// Response metadata: `server_time`, `wal_offset`, and any keys a newer peer adds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// When the response was built (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time: Option<String>,
    /// On mutations: the WAL offset of the record written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_offset: Option<u64>,
    /// Keys this version does not know, kept for forward compatibility.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Meta {
    /// True when there is nothing to send (the key is then omitted).
    pub fn is_empty(&self) -> bool {
        self.server_time.is_none() && self.wal_offset.is_none() && self.extra.is_empty()
    }
}

/// `result` or `error`.
#[derive(Debug, Clone)]
pub enum ResponseBody {
    /// `status: ok` with this `result` (an object for every op).
    Ok(Value),
    /// `status: ok` with a `result` already serialized (a JSON object). Built by servers for
    /// hot paths; decoding a response always yields [`ResponseBody::Ok`].
    OkRaw(Box<RawValue>),
    /// `status: error` with this `error`.
    Err(ErrorObject),
}

impl ResponseBody {
    /// The result as a `Value` (`None` for an error).
    pub fn into_result(self) -> Result<Value, ErrorObject> {
        match self {
            ResponseBody::Ok(v) => Ok(v),
            ResponseBody::OkRaw(raw) => Ok(serde_json::from_str(raw.get()).unwrap_or(Value::Null)),
            ResponseBody::Err(e) => Err(e),
        }
    }
}

impl PartialEq for ResponseBody {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ResponseBody::Err(a), ResponseBody::Err(b)) => a == b,
            (ResponseBody::Err(_), _) | (_, ResponseBody::Err(_)) => false,
            (ResponseBody::Ok(a), ResponseBody::Ok(b)) => a == b,
            (ResponseBody::OkRaw(a), ResponseBody::OkRaw(b)) => a.get() == b.get(),
            // Same JSON, one of them not parsed yet.
            (ResponseBody::OkRaw(raw), ResponseBody::Ok(v))
            | (ResponseBody::Ok(v), ResponseBody::OkRaw(raw)) => {
                serde_json::from_str::<Value>(raw.get()).is_ok_and(|parsed| &parsed == v)
            }
        }
    }
}

/// A response to one request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawResponse")]
pub struct Response {
    /// The request's id; `None` (sent as `null`) only when it could not be read.
    pub id: Option<String>,
    /// Result or error.
    pub body: ResponseBody,
    /// Omitted from the wire when `None` or empty.
    pub meta: Option<Meta>,
}

impl Response {
    /// A success carrying `result`.
    pub fn ok(id: impl Into<String>, result: Value) -> Self {
        Self {
            id: Some(id.into()),
            body: ResponseBody::Ok(result),
            meta: None,
        }
    }

    /// A success whose `result` is already serialized JSON.
    pub fn ok_raw(id: impl Into<String>, result: Box<RawValue>) -> Self {
        Self {
            id: Some(id.into()),
            body: ResponseBody::OkRaw(result),
            meta: None,
        }
    }

    /// A success carrying a typed result (one of the `*Result` structs).
    pub fn ok_from<T: Serialize>(
        id: impl Into<String>,
        result: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::ok(id, serde_json::to_value(result)?))
    }

    /// A failure; `id` is `None` only when the request's id could not be read.
    pub fn error(id: Option<String>, error: ErrorObject) -> Self {
        Self {
            id,
            body: ResponseBody::Err(error),
            meta: None,
        }
    }

    /// The same response with `meta` attached.
    pub fn with_meta(mut self, meta: Meta) -> Self {
        self.meta = Some(meta);
        self
    }

    /// `ok` or `error`.
    pub fn status(&self) -> ResponseStatus {
        match self.body {
            ResponseBody::Ok(_) | ResponseBody::OkRaw(_) => ResponseStatus::Ok,
            ResponseBody::Err(_) => ResponseStatus::Error,
        }
    }

    /// Compact JSON, ready to be sent as a frame payload or a JSON line.
    pub fn to_json_bytes(&self) -> Result<Bytes, serde_json::Error> {
        serde_json::to_vec(self).map(Bytes::from)
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let meta = self.meta.as_ref().filter(|meta| !meta.is_empty());
        let mut map = serializer.serialize_map(Some(if meta.is_some() { 5 } else { 4 }))?;
        map.serialize_entry("type", "response")?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("status", &self.status())?;
        match &self.body {
            ResponseBody::Ok(result) => map.serialize_entry("result", result)?,
            ResponseBody::OkRaw(result) => map.serialize_entry("result", result)?,
            ResponseBody::Err(error) => map.serialize_entry("error", error)?,
        }
        if let Some(meta) = meta {
            map.serialize_entry("meta", meta)?;
        }
        map.end()
    }
}

/// The wire shape, before `status` and `result`/`error` are checked to agree.
#[derive(Deserialize)]
struct RawResponse {
    #[serde(default)]
    id: Option<String>,
    status: ResponseStatus,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<ErrorObject>,
    #[serde(default)]
    meta: Option<Meta>,
}

impl TryFrom<RawResponse> for Response {
    type Error = &'static str;

    fn try_from(raw: RawResponse) -> Result<Self, Self::Error> {
        let body = match raw.status {
            ResponseStatus::Ok => ResponseBody::Ok(raw.result.unwrap_or(Value::Null)),
            ResponseStatus::Error => ResponseBody::Err(
                raw.error
                    .ok_or("missing field `error` in an error response")?,
            ),
        };
        Ok(Self {
            id: raw.id,
            body,
            meta: raw.meta,
        })
    }
}
