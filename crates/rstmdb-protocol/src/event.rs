//! Event messages (subscription pushes) and [`ServerMessage`], what a client reads.

use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::response::Response;

/// One applied transition, pushed to a subscription.
///
/// Fields are top-level in the message, in the order of protocol.md §5.17. `ctx` is only
/// present when the subscription asked for it; when present it may be `null`, so `None` and
/// `Some(Value::Null)` are different messages.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    /// The subscription that matched.
    pub subscription_id: String,
    /// Instance id.
    pub instance_id: String,
    /// Machine name.
    pub machine: String,
    /// Machine version of the instance.
    pub version: u32,
    /// Offset of the apply record.
    pub wal_offset: u64,
    /// State before the transition.
    pub from_state: String,
    /// State after the transition.
    pub to_state: String,
    /// Event name.
    pub event: String,
    /// The APPLY_EVENT payload (`null` when none was sent).
    #[serde(default)]
    pub payload: Value,
    /// Context after the transition, when the subscription includes it.
    #[serde(default, deserialize_with = "present")]
    pub ctx: Option<Value>,
}

/// A present key is `Some`, even when its value is `null`; an absent key stays `None`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl Event {
    /// Compact JSON, ready to be sent as a frame payload or a JSON line.
    pub fn to_json_bytes(&self) -> Result<Bytes, serde_json::Error> {
        serde_json::to_vec(self).map(Bytes::from)
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = if self.ctx.is_some() { 11 } else { 10 };
        let mut map = serializer.serialize_map(Some(len))?;
        map.serialize_entry("type", "event")?;
        map.serialize_entry("subscription_id", &self.subscription_id)?;
        map.serialize_entry("instance_id", &self.instance_id)?;
        map.serialize_entry("machine", &self.machine)?;
        map.serialize_entry("version", &self.version)?;
        map.serialize_entry("wal_offset", &self.wal_offset)?;
        map.serialize_entry("from_state", &self.from_state)?;
        map.serialize_entry("to_state", &self.to_state)?;
        map.serialize_entry("event", &self.event)?;
        map.serialize_entry("payload", &self.payload)?;
        if let Some(ctx) = &self.ctx {
            map.serialize_entry("ctx", ctx)?;
        }
        map.end()
    }
}

/// Anything a server sends, told apart by the `type` key: what a client reads off the wire.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// The answer to one request, matched by `id`.
    Response(Response),
    /// A subscription push, matched by `subscription_id`.
    Event(Event),
}

impl ServerMessage {
    /// Decodes one payload (a frame payload or a JSON line).
    pub fn from_json_bytes(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    /// Compact JSON, ready to be sent as a frame payload or a JSON line.
    pub fn to_json_bytes(&self) -> Result<Bytes, serde_json::Error> {
        match self {
            ServerMessage::Response(response) => response.to_json_bytes(),
            ServerMessage::Event(event) => event.to_json_bytes(),
        }
    }
}

impl From<Response> for ServerMessage {
    fn from(response: Response) -> Self {
        ServerMessage::Response(response)
    }
}

impl From<Event> for ServerMessage {
    fn from(event: Event) -> Self {
        ServerMessage::Event(event)
    }
}
