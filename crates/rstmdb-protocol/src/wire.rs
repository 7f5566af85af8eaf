//! What a server connection reads and writes: frames or JSON lines, mixed.
//!
//! Input: every message announces its own encoding with its first byte, `R` (frame magic) or
//! `{` (a JSON object on one line), so a peer may mix both at any time and no negotiation is
//! needed to read. Output: one [`WireMode`] per connection, chosen by HELLO and switchable at
//! any moment, because the peer must know how to split our byte stream.

use std::fmt;
use std::str::FromStr;

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
#[cfg(feature = "codec")]
use tokio_util::codec::{Decoder, Encoder};

use crate::ParseNameError;
use crate::frame::{FrameCodec, FrameError};
use crate::jsonl::{JsonlCodec, is_json_whitespace};

/// How a received message was encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireKind {
    /// A binary `RCPX` frame.
    Frame,
    /// A `\n`-terminated JSON line.
    Line,
}

/// One received message: its payload (JSON text, not yet validated) and how it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The message bytes, without frame header or line terminator, owned alone (see
    /// [`crate::Frame::payload`]).
    pub payload: BytesMut,
    /// Frame or line.
    pub kind: WireKind,
}

/// The encoding of everything a connection sends, as negotiated by HELLO `wire_modes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireMode {
    /// Binary frames (the default, and what every known client expects).
    #[default]
    BinaryJson,
    /// JSON lines.
    Jsonl,
}

impl WireMode {
    /// Every mode, in the order the server prefers them.
    pub const ALL: [WireMode; 2] = [WireMode::BinaryJson, WireMode::Jsonl];

    /// The wire name (`binary_json`, `jsonl`).
    pub fn as_str(self) -> &'static str {
        match self {
            WireMode::BinaryJson => "binary_json",
            WireMode::Jsonl => "jsonl",
        }
    }

    /// The mode HELLO selects for a client that listed `requested`: the first name we know
    /// (decisions.md), or `binary_json` when none is known, so a client never ends up with a
    /// mode it did not ask for other than the default.
    pub fn negotiate<S: AsRef<str>>(requested: &[S]) -> WireMode {
        requested
            .iter()
            .find_map(|name| name.as_ref().parse().ok())
            .unwrap_or_default()
    }
}

impl fmt::Display for WireMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WireMode {
    type Err = ParseNameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        WireMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == name)
            .ok_or_else(|| ParseNameError::new("wire mode", name))
    }
}

/// Splits a connection's input into [`Inbound`] messages, frames and JSON lines mixed.
///
/// JSON whitespace between messages is skipped (a line-oriented peer may send blank lines or
/// a stray `\r\n`); any other byte that starts neither a frame nor a line is an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboundCodec {
    frames: FrameCodec,
    lines: JsonlCodec,
}

impl InboundCodec {
    /// A codec with the protocol's limit, [`crate::MAX_FRAME_PAYLOAD_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A codec whose frame payloads and lines may be at most `max_payload_bytes` long.
    pub fn with_max_payload_bytes(max_payload_bytes: usize) -> Self {
        Self {
            frames: FrameCodec::with_max_payload_bytes(max_payload_bytes),
            lines: JsonlCodec::with_max_line_bytes(max_payload_bytes),
        }
    }
}

#[cfg(feature = "codec")]
impl Decoder for InboundCodec {
    type Item = Inbound;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        // Only reached between messages: a partial message keeps its first byte (`R` or `{`)
        // at the front of the buffer until it is consumed whole.
        let blank = src.iter().take_while(|&&b| is_json_whitespace(b)).count();
        src.advance(blank);

        let Some(&first) = src.first() else {
            return Ok(None);
        };
        match first {
            b'R' => Ok(self.frames.decode(src)?.map(|frame| Inbound {
                payload: frame.payload,
                kind: WireKind::Frame,
            })),
            b'{' => Ok(self.lines.decode(src)?.map(|payload| Inbound {
                payload,
                kind: WireKind::Line,
            })),
            other => Err(FrameError::UnknownMessageStart(other)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

/// Encodes outgoing payloads in the connection's current [`WireMode`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboundCodec {
    mode: WireMode,
    frames: FrameCodec,
    lines: JsonlCodec,
}

impl OutboundCodec {
    /// A codec sending frames, with the protocol's limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// A codec sending frames, refusing payloads over `max_payload_bytes`.
    pub fn with_max_payload_bytes(max_payload_bytes: usize) -> Self {
        Self {
            mode: WireMode::BinaryJson,
            frames: FrameCodec::with_max_payload_bytes(max_payload_bytes),
            lines: JsonlCodec::with_max_line_bytes(max_payload_bytes),
        }
    }

    /// The mode the next payload will be encoded in.
    pub fn mode(&self) -> WireMode {
        self.mode
    }

    /// Switches the encoding of every later payload (HELLO's response already uses the new
    /// mode, so the session calls this before encoding it).
    pub fn set_mode(&mut self, mode: WireMode) {
        self.mode = mode;
    }

    /// Appends `payload` to `dst` in the current mode; on error nothing is written.
    pub fn encode_payload(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        match self.mode {
            WireMode::BinaryJson => self.frames.encode_payload(payload, dst),
            WireMode::Jsonl => self.lines.encode_payload(payload, dst),
        }
    }
}

#[cfg(feature = "codec")]
impl Encoder<Bytes> for OutboundCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_payload(&payload, dst)
    }
}

#[cfg(feature = "codec")]
impl Encoder<&[u8]> for OutboundCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_payload(payload, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_picks_the_first_known_mode() {
        assert_eq!(
            WireMode::negotiate(&["jsonl", "binary_json"]),
            WireMode::Jsonl
        );
        assert_eq!(
            WireMode::negotiate(&["carrier_pigeon", "binary_json", "jsonl"]),
            WireMode::BinaryJson
        );
        assert_eq!(WireMode::negotiate::<&str>(&[]), WireMode::BinaryJson);
        assert_eq!(WireMode::negotiate(&["JSONL"]), WireMode::BinaryJson);
    }

    #[test]
    fn wire_mode_names() {
        for mode in WireMode::ALL {
            assert_eq!(mode.as_str().parse::<WireMode>().unwrap(), mode);
            assert_eq!(
                serde_json::to_string(&mode).unwrap(),
                format!("\"{}\"", mode.as_str())
            );
        }
    }
}
