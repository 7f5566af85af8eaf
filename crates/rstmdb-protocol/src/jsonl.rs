//! JSON lines (`jsonl` wire mode): one compact JSON document per line, `\n` terminated.
//!
//! The line limit is the frame payload limit, so switching wire modes never changes which
//! messages fit. Blank lines (only JSON whitespace) between messages are skipped, and a `\r`
//! before the `\n` is dropped, so a human typing into `nc` or a Windows tool can talk to us.

use bytes::{BufMut, Bytes, BytesMut};
#[cfg(feature = "codec")]
use tokio_util::codec::{Decoder, Encoder};

use crate::MAX_FRAME_PAYLOAD_BYTES;
use crate::frame::FrameError;

/// Decodes lines into payloads and encodes payloads as lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonlCodec {
    max_line_bytes: usize,
    /// How far the buffer was already searched for `\n`, so a long line arriving in small
    /// reads is scanned once rather than once per read. Always relative to the start of the
    /// buffer, which only moves when a line is consumed (and then this is reset to 0).
    scanned: usize,
}

impl Default for JsonlCodec {
    fn default() -> Self {
        Self::new()
    }
}

/// JSON's insignificant whitespace.
pub(crate) fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

impl JsonlCodec {
    /// A codec with the protocol's limit, [`MAX_FRAME_PAYLOAD_BYTES`], per line.
    pub fn new() -> Self {
        Self::with_max_line_bytes(MAX_FRAME_PAYLOAD_BYTES)
    }

    /// A codec whose line limit (inclusive, terminator not counted) is `max_line_bytes`.
    pub fn with_max_line_bytes(max_line_bytes: usize) -> Self {
        Self {
            max_line_bytes,
            scanned: 0,
        }
    }

    /// The line limit in force (inclusive, terminator not counted).
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// Appends `payload` and a `\n` to `dst`.
    ///
    /// Fails (writing nothing) on a payload over the limit or containing a raw newline: either
    /// would desynchronise the peer's reader.
    pub fn encode_payload(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        if payload.len() > self.max_line_bytes {
            return Err(FrameError::PayloadTooLarge {
                len: payload.len() as u64,
                max: self.max_line_bytes as u64,
            });
        }
        if payload.contains(&b'\n') {
            return Err(FrameError::NewlineInPayload);
        }
        dst.reserve(payload.len() + 1);
        dst.put_slice(payload);
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(feature = "codec")]
impl Decoder for JsonlCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        loop {
            let unscanned = src.get(self.scanned..).unwrap_or_default();
            let Some(offset) = unscanned.iter().position(|&b| b == b'\n') else {
                self.scanned = src.len();
                // One byte of slack: the next byte may be the `\n` of a `\r\n` pair.
                if src.len() > self.max_line_bytes.saturating_add(1) {
                    return Err(FrameError::LineTooLong {
                        len: src.len(),
                        max: self.max_line_bytes,
                    });
                }
                return Ok(None);
            };

            let newline = self.scanned + offset;
            self.scanned = 0;
            let mut line = src.split_to(newline + 1);
            line.truncate(newline);
            if line.last() == Some(&b'\r') {
                line.truncate(newline - 1);
            }
            if line.len() > self.max_line_bytes {
                return Err(FrameError::LineTooLong {
                    len: line.len(),
                    max: self.max_line_bytes,
                });
            }
            if line.iter().all(|&b| is_json_whitespace(b)) {
                continue;
            }
            return Ok(Some(line));
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if let Some(line) = self.decode(src)? {
            return Ok(Some(line));
        }
        if src.iter().all(|&b| is_json_whitespace(b)) {
            src.clear();
            self.scanned = 0;
            return Ok(None);
        }
        // An unterminated last line may be a message cut in half: never act on it.
        Err(FrameError::Truncated {
            buffered: src.len(),
        })
    }
}

#[cfg(feature = "codec")]
impl Encoder<Bytes> for JsonlCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_payload(&payload, dst)
    }
}

#[cfg(feature = "codec")]
impl Encoder<&[u8]> for JsonlCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_payload(payload, dst)
    }
}
