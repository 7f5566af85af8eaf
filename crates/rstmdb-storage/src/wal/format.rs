//! The record layout: a 24-byte little-endian header followed by the payload.
//!
//! | bytes  | field         | value                                             |
//! |--------|---------------|---------------------------------------------------|
//! | 0..4   | magic         | `RWAL`                                            |
//! | 4      | version       | 1                                                 |
//! | 5      | flags         | bit 0: payload encrypted; other bits reserved     |
//! | 6..8   | reserved      | 0                                                 |
//! | 8..12  | payload_len   | u32                                               |
//! | 12..20 | seq           | u64                                               |
//! | 20..24 | crc32c        | CRC-32C of bytes 0..20, then of the payload       |
//!
//! The CRC covers the header too, so a flipped bit in a length or sequence number is caught
//! before the value is trusted.

/// First four bytes of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"RWAL";
/// The only record version this code writes and reads.
pub const RECORD_VERSION: u8 = 1;
/// Size of the record header in bytes.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Flag bit: the payload is sealed with AES-256-GCM (`key_id ‖ nonce ‖ ciphertext ‖ tag`,
/// associated data = `"rstmdb wal v1\0"` ‖ header bytes 0..20; `docs/wal-format.md`).
pub const FLAG_ENCRYPTED: u8 = 0x01;
/// Flag bits this version understands. A record with any other bit set was written by a newer
/// version (e.g. compressed) and must not be misread as plain bytes.
pub(crate) const KNOWN_FLAGS: u8 = FLAG_ENCRYPTED;
/// Prefix of the associated data of an encrypted record, so a sealed WAL payload can never be
/// accepted as a sealed state-store value or the reverse.
pub(crate) const WAL_AAD_DOMAIN: &[u8] = b"rstmdb wal v1\0";
/// Associated data of an encrypted record: the domain, then header bytes 0..20.
pub(crate) type WalAad = [u8; WAL_AAD_DOMAIN.len() + CRC_OFFSET];
/// Largest payload length a reader accepts, whatever `max_record_bytes` says (1 GiB). It only
/// bounds what a garbage length can make us allocate; the file size bounds it further.
pub const MAX_PAYLOAD_BYTES_LIMIT: u32 = 1 << 30;

const CRC_OFFSET: usize = 20;

use crate::crypto::{Cipher, OpenFailure, SEAL_OVERHEAD, SealError};
use std::sync::Arc;

/// What the log expects of each record's encryption: set by the configured key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Expect {
    /// No check (repair, fuzzing): only the structure is validated.
    #[default]
    Any,
    /// No key configured: an encrypted record cannot be read.
    Plain,
    /// Every record must be sealed with this key.
    Sealed(Arc<Cipher>),
}

impl Expect {
    pub fn of(cipher: Option<&Arc<Cipher>>) -> Expect {
        match cipher {
            Some(c) => Expect::Sealed(Arc::clone(c)),
            None => Expect::Plain,
        }
    }

    /// Why a structurally valid record does not match the configured key, checked without
    /// decrypting (the key id in the payload). The tag is checked when the record is read.
    pub fn problem(&self, header: &RecordHeader, payload: &[u8]) -> Option<String> {
        match (self, header.is_encrypted()) {
            (Expect::Any, _) | (Expect::Plain, false) => None,
            (Expect::Plain, true) => Some(format!(
                "the record is encrypted{} but no encryption key is configured \
                 (storage.encryption.key_file)",
                Cipher::sealed_key_id(payload)
                    .map(|id| format!(" (key id {id})"))
                    .unwrap_or_default()
            )),
            (Expect::Sealed(_), false) => Some(
                "the record is not encrypted but an encryption key is configured: this log was \
                 written without encryption; convert the data directory with `rstmdb rekey` \
                 instead of mixing plaintext and encrypted records"
                    .into(),
            ),
            (Expect::Sealed(c), true) => c.check_key_id(payload).err().map(|e| e.to_string()),
        }
    }

    /// The plaintext of a record that passed the CRC check.
    pub fn open(&self, header: &RecordHeader, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        if let Some(problem) = self.problem(header, &payload) {
            return Err(problem);
        }
        match (self, header.is_encrypted()) {
            (Expect::Sealed(c), true) => c
                .open(&header.aad(), &payload)
                .map_err(|e: OpenFailure| e.to_string()),
            _ => Ok(payload),
        }
    }
}

/// Size on disk of a record with a payload of `payload_len` bytes.
pub(crate) fn record_len(payload_len: usize) -> u64 {
    RECORD_HEADER_BYTES as u64 + payload_len as u64
}

/// Appends one encoded record to `buf`. The caller has checked `payload.len()` against the
/// limits, so it fits a `u32`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, seq: u64, flags: u8, payload: &[u8]) {
    let start = buf.len();
    let payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    debug_assert!(payload_len <= MAX_PAYLOAD_BYTES_LIMIT);
    buf.extend_from_slice(&RECORD_MAGIC);
    buf.push(RECORD_VERSION);
    buf.push(flags);
    buf.extend_from_slice(&0u16.to_le_bytes());
    buf.extend_from_slice(&payload_len.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[start..start + CRC_OFFSET]), payload);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Appends one record whose payload is sealed with `cipher`: flags = [`FLAG_ENCRYPTED`], and
/// the associated data binds the whole header (seq, length, flags) so a record cannot be moved
/// to another position or log without failing authentication. The CRC covers the stored
/// (sealed) bytes, so torn-write detection works without the key.
pub(crate) fn encode_sealed_record(
    buf: &mut Vec<u8>,
    seq: u64,
    cipher: &Cipher,
    payload: &[u8],
) -> Result<(), SealError> {
    let start = buf.len();
    let stored_len = payload.len() + SEAL_OVERHEAD;
    let payload_len = u32::try_from(stored_len).unwrap_or(u32::MAX);
    buf.extend_from_slice(&RECORD_MAGIC);
    buf.push(RECORD_VERSION);
    buf.push(FLAG_ENCRYPTED);
    buf.extend_from_slice(&0u16.to_le_bytes());
    buf.extend_from_slice(&payload_len.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    let aad = wal_aad(&buf[start..start + CRC_OFFSET]);
    buf.extend_from_slice(&[0u8; 4]);
    let payload_start = buf.len();
    if let Err(e) = cipher.seal_into(buf, &aad, payload) {
        buf.truncate(start);
        return Err(e);
    }
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&buf[start..start + CRC_OFFSET]),
        &buf[payload_start..],
    );
    buf[start + CRC_OFFSET..payload_start].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn wal_aad(header: &[u8]) -> WalAad {
    let mut aad = [0u8; WAL_AAD_DOMAIN.len() + CRC_OFFSET];
    aad[..WAL_AAD_DOMAIN.len()].copy_from_slice(WAL_AAD_DOMAIN);
    aad[WAL_AAD_DOMAIN.len()..].copy_from_slice(&header[..CRC_OFFSET]);
    aad
}

/// A decoded header. Nothing in it is trusted until [`RecordHeader::crc_matches`] says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub raw: [u8; RECORD_HEADER_BYTES],
    pub magic: [u8; 4],
    pub version: u8,
    pub flags: u8,
    pub reserved: u16,
    pub payload_len: u32,
    pub seq: u64,
    pub crc: u32,
}

impl RecordHeader {
    pub fn decode(raw: &[u8; RECORD_HEADER_BYTES]) -> RecordHeader {
        let b = raw;
        RecordHeader {
            raw: *raw,
            magic: [b[0], b[1], b[2], b[3]],
            version: b[4],
            flags: b[5],
            reserved: u16::from_le_bytes([b[6], b[7]]),
            payload_len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            seq: u64::from_le_bytes([b[12], b[13], b[14], b[15], b[16], b[17], b[18], b[19]]),
            crc: u32::from_le_bytes([b[20], b[21], b[22], b[23]]),
        }
    }

    /// Size of the whole record on disk.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_BYTES as u64 + u64::from(self.payload_len)
    }

    /// Why these header bytes cannot start a record whose payload must fit in `available`
    /// bytes. These are the problems a torn or never-completed write produces.
    pub fn shape_problem(&self, available: u64) -> Option<String> {
        if self.raw.iter().all(|&b| b == 0) {
            return Some("zero bytes where a record header should be".into());
        }
        if self.magic != RECORD_MAGIC {
            return Some(format!("bad magic {:02x?}", self.magic));
        }
        if self.payload_len > MAX_PAYLOAD_BYTES_LIMIT {
            return Some(format!(
                "payload length {} exceeds the format limit {MAX_PAYLOAD_BYTES_LIMIT}",
                self.payload_len
            ));
        }
        if u64::from(self.payload_len) > available {
            return Some(format!(
                "partial record: payload length {} but only {available} bytes follow the header",
                self.payload_len
            ));
        }
        None
    }

    /// Associated data of this record's sealed payload.
    pub fn aad(&self) -> WalAad {
        wal_aad(&self.raw)
    }

    pub fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }

    pub fn crc_matches(&self, payload: &[u8]) -> bool {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&self.raw[..CRC_OFFSET]), payload);
        crc == self.crc
    }

    /// Why a record whose CRC matches is still not the record expected here. A torn write
    /// cannot produce these; they mean a newer format or a broken log.
    pub fn field_problem(&self, expected_seq: u64) -> Option<String> {
        if self.version != RECORD_VERSION {
            return Some(format!(
                "unsupported record version {} (this build reads {RECORD_VERSION})",
                self.version
            ));
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return Some(format!("unknown record flags {:#04x}", self.flags));
        }
        if self.reserved != 0 {
            return Some(format!(
                "reserved header field is {:#06x}, not 0",
                self.reserved
            ));
        }
        if self.seq != expected_seq {
            return Some(format!(
                "record has seq {} where seq {expected_seq} was expected",
                self.seq
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_record(&mut buf, seq, 0, payload);
        buf
    }

    fn header(bytes: &[u8]) -> RecordHeader {
        let mut raw = [0u8; RECORD_HEADER_BYTES];
        raw.copy_from_slice(&bytes[..RECORD_HEADER_BYTES]);
        RecordHeader::decode(&raw)
    }

    #[test]
    fn encoded_record_has_the_documented_layout() {
        let buf = one(0x0102_0304_0506_0708, b"hello");
        assert_eq!(buf.len(), 24 + 5);
        assert_eq!(&buf[0..4], b"RWAL");
        assert_eq!(buf[4], 1);
        assert_eq!(buf[5], 0);
        assert_eq!(&buf[6..8], &[0, 0]);
        assert_eq!(&buf[8..12], &5u32.to_le_bytes());
        assert_eq!(&buf[12..20], &0x0102_0304_0506_0708u64.to_le_bytes());
        let mut covered = buf[0..20].to_vec();
        covered.extend_from_slice(b"hello");
        assert_eq!(&buf[20..24], &crc32c::crc32c(&covered).to_le_bytes());
        assert_eq!(&buf[24..], b"hello");
    }

    #[test]
    fn decoded_header_round_trips_and_validates() {
        let buf = one(7, b"abc");
        let h = header(&buf);
        assert_eq!(h.seq, 7);
        assert_eq!(h.payload_len, 3);
        assert_eq!(h.record_len(), 27);
        assert_eq!(h.shape_problem(3), None);
        assert!(h.crc_matches(b"abc"));
        assert!(!h.crc_matches(b"abd"));
        assert_eq!(h.field_problem(7), None);
        assert!(h.field_problem(8).is_some());
    }

    #[test]
    fn shape_problems_name_the_torn_write() {
        let zeros = RecordHeader::decode(&[0u8; RECORD_HEADER_BYTES]);
        assert!(zeros.shape_problem(100).is_some_and(|p| p.contains("zero")));
        let buf = one(1, b"abc");
        assert!(
            header(&buf)
                .shape_problem(2)
                .is_some_and(|p| p.contains("partial"))
        );
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(
            header(&bad)
                .shape_problem(3)
                .is_some_and(|p| p.contains("magic"))
        );
    }

    #[test]
    fn unknown_flags_and_versions_are_field_problems_even_with_a_valid_crc() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 0x02, b"x");
        let h = header(&buf);
        assert!(h.crc_matches(b"x"));
        assert!(h.field_problem(1).is_some_and(|p| p.contains("flags")));
    }

    #[test]
    fn a_sealed_record_hides_its_payload_and_binds_its_header() {
        let key = crate::crypto::EncryptionKey::from_bytes([9; 32]);
        let cipher = Arc::new(Cipher::new(&key));
        let mut buf = Vec::new();
        encode_sealed_record(&mut buf, 5, &cipher, b"marker-payload").unwrap();
        assert_eq!(buf.len(), 24 + 14 + SEAL_OVERHEAD);
        assert_eq!(buf[5], FLAG_ENCRYPTED);
        assert!(!buf.windows(6).any(|w| w == b"marker"));
        let h = header(&buf);
        let payload = buf[24..].to_vec();
        assert!(h.crc_matches(&payload));
        assert_eq!(h.field_problem(5), None);
        let expect = Expect::Sealed(Arc::clone(&cipher));
        assert_eq!(expect.open(&h, payload.clone()).unwrap(), b"marker-payload");
        assert!(
            Expect::Plain
                .open(&h, payload.clone())
                .is_err_and(|e| e.contains("no encryption key"))
        );
        // The same bytes under another seq (a record moved) fail authentication.
        let mut moved = buf.clone();
        moved[12..20].copy_from_slice(&6u64.to_le_bytes());
        let h2 = header(&moved);
        assert!(
            expect
                .open(&h2, payload)
                .is_err_and(|e| e.contains("authentication"))
        );
        let plain = one(5, b"x");
        assert!(
            expect
                .open(&header(&plain), b"x".to_vec())
                .is_err_and(|e| e.contains("not encrypted"))
        );
    }
}
