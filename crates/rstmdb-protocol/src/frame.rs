//! The binary RCP frame (`binary_json` wire mode) and its codec.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "RCPX"
//!      4     2  version (1)
//!      6     2  flags
//!      8     2  header_len   (extension length, skipped)
//!     10     4  payload_len
//!     14     4  crc32c of the payload (checked iff CRC_PRESENT)
//!     18     *  header extension, then payload
//! ```
//!
//! Every integer is big-endian. The decoder validates the fixed header before the body arrives,
//! so a peer cannot make us buffer an oversized frame, and it never trusts a byte it has not
//! checked: any failure means the byte stream is out of sync and the connection must close.

use bytes::{Buf, BufMut, Bytes, BytesMut};
#[cfg(feature = "codec")]
use tokio_util::codec::{Decoder, Encoder};

use crate::{FRAME_HEADER_BYTES, MAX_FRAME_PAYLOAD_BYTES, PROTOCOL_VERSION};

/// The four bytes every frame starts with.
pub const FRAME_MAGIC: [u8; 4] = *b"RCPX";

/// Frame flag bits (the `flags` header field).
pub mod flags {
    /// The `crc32c` header field holds the payload's CRC-32C and must be verified.
    pub const CRC_PRESENT: u16 = 0x0001;
    /// Defined by the reference, never produced; accepted and ignored on input.
    pub const COMPRESSED: u16 = 0x0002;
    /// Defined by the reference, never produced; accepted and ignored on input.
    pub const STREAM: u16 = 0x0004;
    /// Defined by the reference, never produced; accepted and ignored on input.
    pub const END_STREAM: u16 = 0x0008;
    /// Every bit a peer may set. Anything else means the peer speaks another protocol.
    pub const KNOWN: u16 = CRC_PRESENT | COMPRESSED | STREAM | END_STREAM;
    /// Reserved bits: a frame with any of them set is rejected.
    pub const RESERVED: u16 = !KNOWN;
}

/// Largest number of bytes the decoder reserves ahead of the data actually received.
///
/// The header's `payload_len` is chosen by the peer; reserving all of it up front would let
/// 18 bytes of input allocate 16 MiB. The buffer still grows as the body arrives.
const MAX_RESERVE_AHEAD_BYTES: usize = 64 * 1024;

/// Everything that can go wrong below the JSON layer: frames, JSON lines and the choice
/// between them.
///
/// From a decoder, every variant means the peer's byte stream can no longer be trusted to be
/// in sync (or the transport failed), so the only safe reaction is to close the connection.
/// From an encoder (`PayloadTooLarge`, `NewlineInPayload`), the message cannot be sent and
/// nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The first four bytes are not `RCPX`.
    #[error("bad frame magic {0:02x?} (expected \"RCPX\")")]
    BadMagic([u8; 4]),
    /// The header's version is not [`PROTOCOL_VERSION`].
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u16),
    /// A reserved flag bit is set (the whole flags field is reported).
    #[error("invalid frame flags {0:#06x}")]
    InvalidFlags(u16),
    /// A payload (or JSON line to send) is longer than the configured limit.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Length announced by the header, or of the payload being encoded.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// The payload does not match the CRC-32C carried in the header.
    #[error("frame CRC mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    CrcMismatch {
        /// The value in the header.
        expected: u32,
        /// The value computed over the received payload.
        actual: u32,
    },
    /// The stream ended in the middle of a message.
    #[error("stream ended inside a message ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete message that had arrived.
        buffered: usize,
    },
    /// A JSON line is longer than the configured limit (the newline is not counted).
    #[error("JSON line of at least {len} bytes exceeds the limit of {max} bytes")]
    LineTooLong {
        /// Length seen so far (the line may be longer still).
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A payload to be sent as a JSON line contains a raw newline, which would split it.
    #[error("payload contains a raw newline and cannot be sent as a JSON line")]
    NewlineInPayload,
    /// A message starts with a byte that begins neither a frame (`R`) nor a JSON line (`{`).
    #[error("unknown message start byte {0:#04x}")]
    UnknownMessageStart(u8),
    /// The underlying transport failed (required by the `tokio_util` codec traits).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// CRC-32C (Castagnoli) of `data`, as carried in the frame header.
pub fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

/// One decoded frame: the flags the sender set and the payload (header extension dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Flags as received. Only `CRC_PRESENT` has an effect (already applied by the decoder).
    pub flags: u16,
    /// The message: UTF-8 JSON text, not yet validated. A `BytesMut` owning its bytes alone,
    /// so a receiver can wipe a secret in it (a frozen `Bytes` would share the read buffer's
    /// allocation and could not be written).
    pub payload: BytesMut,
}

/// Decodes [`Frame`]s and encodes payloads as frames.
///
/// Outgoing frames always carry version 1, `CRC_PRESENT`, no header extension and a filled-in
/// CRC, so every frame we send can be verified by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    max_payload_bytes: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec with the protocol's payload limit, [`MAX_FRAME_PAYLOAD_BYTES`].
    pub fn new() -> Self {
        Self::with_max_payload_bytes(MAX_FRAME_PAYLOAD_BYTES)
    }

    /// A codec whose payload limit (inclusive, both directions) is `max_payload_bytes`.
    ///
    /// The header's length field is 32 bits, so a limit above `u32::MAX` acts as `u32::MAX`.
    pub fn with_max_payload_bytes(max_payload_bytes: usize) -> Self {
        let wire_max = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
        Self {
            max_payload_bytes: max_payload_bytes.min(wire_max),
        }
    }

    /// The payload limit in force (inclusive).
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// Appends `payload` to `dst` as one complete frame.
    ///
    /// Fails (writing nothing) when the payload is over the limit: an oversized frame would be
    /// rejected by the peer and kill the connection anyway, so we refuse to produce it.
    pub fn encode_payload(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        let too_large = || FrameError::PayloadTooLarge {
            len: payload.len() as u64,
            max: self.max_payload_bytes as u64,
        };
        if payload.len() > self.max_payload_bytes {
            return Err(too_large());
        }
        let payload_len = u32::try_from(payload.len()).map_err(|_| too_large())?;

        dst.reserve(FRAME_HEADER_BYTES + payload.len());
        dst.put_slice(&FRAME_MAGIC);
        dst.put_u16(PROTOCOL_VERSION);
        dst.put_u16(flags::CRC_PRESENT);
        dst.put_u16(0); // header_len: we never send an extension
        dst.put_u32(payload_len);
        dst.put_u32(crc32c(payload));
        dst.put_slice(payload);
        Ok(())
    }
}

/// The fixed part of a frame header, already validated.
struct Header {
    flags: u16,
    header_len: usize,
    payload_len: usize,
    crc: u32,
}

impl FrameCodec {
    /// Reads and validates the fixed header at the start of `src`, or `None` when fewer than
    /// [`FRAME_HEADER_BYTES`] bytes are buffered. Checks run in the order of protocol.md §2.4.
    fn parse_header(&self, src: &[u8]) -> Result<Option<Header>, FrameError> {
        let Some(mut fixed) = src.get(..FRAME_HEADER_BYTES) else {
            return Ok(None);
        };

        let mut magic = [0u8; 4];
        fixed.copy_to_slice(&mut magic);
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = fixed.get_u16();
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let flags = fixed.get_u16();
        if flags & flags::RESERVED != 0 {
            return Err(FrameError::InvalidFlags(flags));
        }
        let header_len = usize::from(fixed.get_u16());
        let payload_len = fixed.get_u32();
        let payload_len = usize::try_from(payload_len)
            .ok()
            .filter(|len| *len <= self.max_payload_bytes)
            .ok_or(FrameError::PayloadTooLarge {
                len: u64::from(payload_len),
                max: self.max_payload_bytes as u64,
            })?;
        let crc = fixed.get_u32();
        Ok(Some(Header {
            flags,
            header_len,
            payload_len,
            crc,
        }))
    }
}

#[cfg(feature = "codec")]
impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = self.parse_header(src)? else {
            return Ok(None);
        };

        // Saturating: a sum past usize::MAX could never be buffered anyway.
        let body_start = FRAME_HEADER_BYTES.saturating_add(header.header_len);
        let frame_len = body_start.saturating_add(header.payload_len);
        if src.len() < frame_len {
            let missing = frame_len - src.len();
            src.reserve(missing.min(MAX_RESERVE_AHEAD_BYTES));
            return Ok(None);
        }

        let mut frame = src.split_to(frame_len);
        frame.advance(body_start);
        let payload = frame;

        if header.flags & flags::CRC_PRESENT != 0 {
            let actual = crc32c(&payload);
            if actual != header.crc {
                return Err(FrameError::CrcMismatch {
                    expected: header.crc,
                    actual,
                });
            }
        }
        Ok(Some(Frame {
            flags: header.flags,
            payload,
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

#[cfg(feature = "codec")]
impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_payload(&payload, dst)
    }
}

#[cfg(feature = "codec")]
impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_payload(payload, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn reserved_flags_are_the_complement_of_known_flags() {
        assert_eq!(flags::KNOWN, 0x000F);
        assert_eq!(flags::RESERVED, 0xFFF0);
    }
}
