//! RCP, the wire protocol of rstmdb: how bytes on a TCP stream become typed requests, and
//! how responses and events become bytes again.
//!
//! Two layers, kept apart so each can be tested and fuzzed on its own:
//!
//! - **Byte layer** ([`frame`], [`jsonl`], [`wire`]): `tokio_util` codecs that split a byte
//!   stream into payloads. Input may mix binary `RCPX` frames and JSON lines
//!   ([`InboundCodec`]); output follows the connection's negotiated [`WireMode`]
//!   ([`OutboundCodec`]). Any error here ([`FrameError`]) means the stream is out of sync and
//!   the connection must close.
//! - **Message layer** ([`decode_request`], [`Response`], [`Event`], [`ServerMessage`]): JSON
//!   envelopes with typed params and results for every op. Errors here
//!   ([`RequestError`]) are answered with `BAD_REQUEST`; the connection survives unless the
//!   payload was not even JSON.
//!
//! The crate does no I/O and holds no state beyond a codec's buffer bookkeeping; it never
//! panics on input. Limits are constants with their unit in the name.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use rstmdb_protocol::{
//!     Command, ErrorCode, ErrorObject, FrameCodec, PingResult, Response, decode_request,
//! };
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut codec = FrameCodec::new();
//!
//! // A client's PING, as it arrives on the socket.
//! let mut wire = BytesMut::new();
//! codec.encode(&br#"{"type":"request","id":"1","op":"PING"}"#[..], &mut wire)?;
//!
//! // The server's side: split off a frame, decode the request, answer it.
//! let frame = codec.decode(&mut wire)?.ok_or("incomplete frame")?;
//! let request = decode_request(&frame.payload)?;
//! let response = match request.command {
//!     Command::Ping => Response::ok_from(request.id, &PingResult { pong: true })?,
//!     _ => Response::error(Some(request.id), ErrorObject::new(ErrorCode::BadRequest, "unexpected")),
//! };
//! assert_eq!(
//!     response.to_json_bytes()?,
//!     r#"{"type":"response","id":"1","status":"ok","result":{"pong":true}}"#
//! );
//! # Ok(())
//! # }
//! ```

pub mod error_code;
pub mod event;
// Without the `codec` feature the byte layer keeps its types (frames, wire modes, errors) but
// not the codec impls, so their private helpers go unused.
#[cfg_attr(not(feature = "codec"), allow(dead_code, unused_imports))]
pub mod frame;
#[cfg_attr(not(feature = "codec"), allow(dead_code, unused_imports))]
pub mod jsonl;
pub mod names;
pub mod op;
pub mod params;
pub mod request;
pub mod response;
pub mod results;
#[cfg_attr(not(feature = "codec"), allow(dead_code, unused_imports))]
pub mod wire;

pub use error_code::ErrorCode;
pub use event::{Event, ServerMessage};
pub use frame::{FRAME_MAGIC, Frame, FrameCodec, FrameError, crc32c, flags};
pub use jsonl::JsonlCodec;
pub use names::Names;
pub use op::Op;
pub use params::*;
pub use request::{BatchParams, Command, Request, RequestError, decode_request};
pub use response::{ErrorObject, Meta, Response, ResponseBody, ResponseStatus};
pub use results::*;
pub use wire::{Inbound, InboundCodec, OutboundCodec, WireKind, WireMode};

/// The protocol version in frame headers and HELLO.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest frame payload (and JSON line) accepted or sent, inclusive: 16 MiB.
pub const MAX_FRAME_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// Size of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 18;

/// Longest request id accepted, in bytes (UTF-8), inclusive.
pub const MAX_REQUEST_ID_BYTES: usize = 256;

/// The TCP port a server listens on unless configured otherwise.
pub const DEFAULT_PORT: u16 = 7401;

/// A wire name (op, error code, wire mode) that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{name}`")]
pub struct ParseNameError {
    kind: &'static str,
    name: String,
}

impl ParseNameError {
    /// Longest part of the rejected name kept for the message, in bytes.
    const MAX_NAME_BYTES: usize = 64;

    pub(crate) fn new(kind: &'static str, name: &str) -> Self {
        let mut end = name.len().min(Self::MAX_NAME_BYTES);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            kind,
            name: name.get(..end).unwrap_or_default().to_owned(),
        }
    }

    /// What kind of name was expected (`op`, `error code`, `wire mode`).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The rejected name (cut to 64 bytes).
    pub fn name(&self) -> &str {
        &self.name
    }
}
