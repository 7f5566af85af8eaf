//! The record layouts: a little-endian header followed by the payload. Version 1 (24-byte
//! header) carries no term and is what every record with term 0 is written as, byte for byte
//! what older builds wrote; version 2 (32-byte header) adds the raft term and is written for
//! every record whose term is above 0. A segment may hold both.
//!
//! | bytes (v1) | bytes (v2) | field         | value                                       |
//! |------------|------------|---------------|---------------------------------------------|
//! | 0..4       | 0..4       | magic         | `RWAL`                                      |
//! | 4          | 4          | version       | 1 or 2                                      |
//! | 5          | 5          | flags         | bit 0: payload encrypted; others reserved   |
//! | 6..8       | 6..8       | reserved      | 0                                           |
//! | 8..12      | 8..12      | payload_len   | u32                                         |
//! | 12..20     | 12..20     | seq           | u64                                         |
//! | —          | 20..28     | term          | u64, above 0 (a v1 record reads as term 0)  |
//! | 20..24     | 28..32     | crc32c        | CRC-32C of the bytes before it, then of the payload |
//!
//! The CRC covers the header too, so a flipped bit in a length, sequence number or term is
//! caught before the value is trusted. The version byte decides the header size; any version
//! other than 1 or 2 is read with the v1 size and then refused (after the CRC check) as
//! written by a newer build.

/// First four bytes of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"RWAL";
/// Version of a record without a term (term 0): the 24-byte header.
pub const RECORD_VERSION: u8 = 1;
/// Version of a record with a raft term above 0: the 32-byte header.
pub const RECORD_VERSION_V2: u8 = 2;
/// Size of a version 1 record header in bytes.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Size of a version 2 record header in bytes.
pub const RECORD_HEADER_V2_BYTES: usize = 32;
/// Flag bit: the payload is sealed with AES-256-GCM (`key_id ‖ nonce ‖ ciphertext ‖ tag`,
/// associated data = the version's domain string ‖ the header bytes before the CRC;
/// `docs/wal-format.md`).
pub const FLAG_ENCRYPTED: u8 = 0x01;
/// Flag bits this version understands. A record with any other bit set was written by a newer
/// version (e.g. compressed) and must not be misread as plain bytes.
pub(crate) const KNOWN_FLAGS: u8 = FLAG_ENCRYPTED;
/// Prefix of the associated data of an encrypted v1 record, so a sealed WAL payload can never
/// be accepted as a sealed state-store value or the reverse.
pub(crate) const WAL_AAD_DOMAIN: &[u8] = b"rstmdb wal v1\0";
/// Prefix of the associated data of an encrypted v2 record: distinct from the v1 one, so a
/// payload sealed for one version never authenticates under the other.
pub(crate) const WAL_AAD_DOMAIN_V2: &[u8] = b"rstmdb wal v2\0";
/// Largest payload length a reader accepts, whatever `max_record_bytes` says (1 GiB). It only
/// bounds what a garbage length can make us allocate; the file size bounds it further.
pub const MAX_PAYLOAD_BYTES_LIMIT: u32 = 1 << 30;

const CRC_OFFSET: usize = 20;
const CRC_OFFSET_V2: usize = 28;
const MAX_AAD_BYTES: usize = WAL_AAD_DOMAIN_V2.len() + CRC_OFFSET_V2;

/// Associated data of an encrypted record: the version's domain, then the header bytes before
/// the CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalAad {
    bytes: [u8; MAX_AAD_BYTES],
    len: usize,
}

impl WalAad {
    pub fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// Header size of a record whose version byte is `version` (the v1 size for unknown versions,
/// which are refused once the CRC has been checked).
pub(crate) fn header_len_for_version(version: u8) -> usize {
    if version == RECORD_VERSION_V2 {
        RECORD_HEADER_V2_BYTES
    } else {
        RECORD_HEADER_BYTES
    }
}

/// Header size of a record written with `term`: v1 for term 0, v2 otherwise.
pub(crate) fn header_len_for_term(term: u64) -> usize {
    if term == 0 {
        RECORD_HEADER_BYTES
    } else {
        RECORD_HEADER_V2_BYTES
    }
}

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
                .open(header.aad().as_slice(), &payload)
                .map_err(|e: OpenFailure| e.to_string()),
            _ => Ok(payload),
        }
    }
}

/// Size on disk of a record with `term` and a payload of `payload_len` bytes.
pub(crate) fn record_len(term: u64, payload_len: usize) -> u64 {
    header_len_for_term(term) as u64 + payload_len as u64
}

/// Appends the header fields before the CRC: v1 for term 0, v2 (with the term) otherwise.
fn put_header(buf: &mut Vec<u8>, seq: u64, term: u64, flags: u8, payload_len: u32) {
    buf.extend_from_slice(&RECORD_MAGIC);
    buf.push(if term == 0 {
        RECORD_VERSION
    } else {
        RECORD_VERSION_V2
    });
    buf.push(flags);
    buf.extend_from_slice(&0u16.to_le_bytes());
    buf.extend_from_slice(&payload_len.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    if term != 0 {
        buf.extend_from_slice(&term.to_le_bytes());
    }
}

/// Appends one encoded record to `buf` (v1 when `term` is 0, v2 otherwise). The caller has
/// checked `payload.len()` against the limits, so it fits a `u32`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, seq: u64, term: u64, flags: u8, payload: &[u8]) {
    let start = buf.len();
    let payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    debug_assert!(payload_len <= MAX_PAYLOAD_BYTES_LIMIT);
    put_header(buf, seq, term, flags, payload_len);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[start..]), payload);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Appends one record whose payload is sealed with `cipher`: flags = [`FLAG_ENCRYPTED`], and
/// the associated data binds the whole header (seq, term, length, flags, version) so a record
/// cannot be moved to another position, term or log without failing authentication. The CRC
/// covers the stored (sealed) bytes, so torn-write detection works without the key.
pub(crate) fn encode_sealed_record(
    buf: &mut Vec<u8>,
    seq: u64,
    term: u64,
    cipher: &Cipher,
    payload: &[u8],
) -> Result<(), SealError> {
    let start = buf.len();
    let stored_len = payload.len() + SEAL_OVERHEAD;
    let payload_len = u32::try_from(stored_len).unwrap_or(u32::MAX);
    put_header(buf, seq, term, FLAG_ENCRYPTED, payload_len);
    let crc_at = buf.len();
    let aad = wal_aad(&buf[start..crc_at]);
    buf.extend_from_slice(&[0u8; 4]);
    let payload_start = buf.len();
    if let Err(e) = cipher.seal_into(buf, aad.as_slice(), payload) {
        buf.truncate(start);
        return Err(e);
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[start..crc_at]), &buf[payload_start..]);
    buf[crc_at..payload_start].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The associated data for the header bytes before the CRC (`covered`): 20 bytes for v1, 28
/// for v2; the domain string follows from that.
fn wal_aad(covered: &[u8]) -> WalAad {
    let domain = if covered.len() == CRC_OFFSET_V2 {
        WAL_AAD_DOMAIN_V2
    } else {
        WAL_AAD_DOMAIN
    };
    let mut bytes = [0u8; MAX_AAD_BYTES];
    let len = domain.len() + covered.len();
    bytes[..domain.len()].copy_from_slice(domain);
    bytes[domain.len()..len].copy_from_slice(covered);
    WalAad { bytes, len }
}

/// A decoded header. Nothing in it is trusted until [`RecordHeader::crc_matches`] says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// The header bytes; only the first `header_len` are the record's.
    pub raw: [u8; RECORD_HEADER_V2_BYTES],
    /// 24 (v1 or an unknown version) or 32 (v2).
    pub header_len: usize,
    pub magic: [u8; 4],
    pub version: u8,
    pub flags: u8,
    pub reserved: u16,
    pub payload_len: u32,
    pub seq: u64,
    /// 0 for a v1 record.
    pub term: u64,
    pub crc: u32,
}

impl RecordHeader {
    /// Bytes still to read after the first [`RECORD_HEADER_BYTES`] of a header (`first`)
    /// before it can be decoded: 8 for a v2 header, 0 otherwise.
    pub fn extra_len(first: &[u8; RECORD_HEADER_BYTES]) -> usize {
        header_len_for_version(first[4]) - RECORD_HEADER_BYTES
    }

    /// Decodes a header from `raw`, which holds at least the size the version byte (at 4)
    /// asks for (see [`RecordHeader::extra_len`]); missing bytes read as zero.
    pub fn decode(raw: &[u8]) -> RecordHeader {
        let mut b = [0u8; RECORD_HEADER_V2_BYTES];
        let n = raw.len().min(RECORD_HEADER_V2_BYTES);
        b[..n].copy_from_slice(&raw[..n]);
        let u64_at = |i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let header_len = header_len_for_version(b[4]);
        let v2 = header_len == RECORD_HEADER_V2_BYTES;
        RecordHeader {
            raw: b,
            header_len,
            magic: [b[0], b[1], b[2], b[3]],
            version: b[4],
            flags: b[5],
            reserved: u16::from_le_bytes([b[6], b[7]]),
            payload_len: u32_at(8),
            seq: u64_at(12),
            term: if v2 { u64_at(CRC_OFFSET) } else { 0 },
            crc: u32_at(if v2 { CRC_OFFSET_V2 } else { CRC_OFFSET }),
        }
    }

    /// Size of the whole record on disk.
    pub fn record_len(&self) -> u64 {
        self.header_len as u64 + u64::from(self.payload_len)
    }

    fn crc_offset(&self) -> usize {
        self.header_len - 4
    }

    /// Why these header bytes cannot start a record whose payload must fit in `available`
    /// bytes. These are the problems a torn or never-completed write produces.
    pub fn shape_problem(&self, available: u64) -> Option<String> {
        if self.raw[..self.header_len].iter().all(|&b| b == 0) {
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
        wal_aad(&self.raw[..self.crc_offset()])
    }

    pub fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }

    pub fn crc_matches(&self, payload: &[u8]) -> bool {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&self.raw[..self.crc_offset()]), payload);
        crc == self.crc
    }

    /// Why a record whose CRC matches is still not the record expected here. A torn write
    /// cannot produce these; they mean a newer format or a broken log.
    pub fn field_problem(&self, expected_seq: u64) -> Option<String> {
        if self.version != RECORD_VERSION && self.version != RECORD_VERSION_V2 {
            return Some(format!(
                "unsupported record version {} (this build reads {RECORD_VERSION} and \
                 {RECORD_VERSION_V2})",
                self.version
            ));
        }
        if self.version == RECORD_VERSION_V2 && self.term == 0 {
            return Some("version 2 record with term 0 (term 0 is written as version 1)".into());
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
        encode_record(&mut buf, seq, 0, 0, payload);
        buf
    }

    fn header(bytes: &[u8]) -> RecordHeader {
        RecordHeader::decode(&bytes[..header_len_for_version(bytes[4])])
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
        encode_record(&mut buf, 1, 0, 0x02, b"x");
        let h = header(&buf);
        assert!(h.crc_matches(b"x"));
        assert!(h.field_problem(1).is_some_and(|p| p.contains("flags")));
    }

    #[test]
    fn a_sealed_record_hides_its_payload_and_binds_its_header() {
        let key = crate::crypto::EncryptionKey::from_bytes([9; 32]);
        let cipher = Arc::new(Cipher::new(&key));
        let mut buf = Vec::new();
        encode_sealed_record(&mut buf, 5, 0, &cipher, b"marker-payload").unwrap();
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

    #[test]
    fn a_v2_record_has_the_documented_layout() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 0x0102, 0x0a0b_0c0d, 0, b"hello");
        assert_eq!(buf.len(), 32 + 5);
        assert_eq!(&buf[0..4], b"RWAL");
        assert_eq!(buf[4], 2);
        assert_eq!(&buf[8..12], &5u32.to_le_bytes());
        assert_eq!(&buf[12..20], &0x0102u64.to_le_bytes());
        assert_eq!(&buf[20..28], &0x0a0b_0c0du64.to_le_bytes());
        let mut covered = buf[0..28].to_vec();
        covered.extend_from_slice(b"hello");
        assert_eq!(&buf[28..32], &crc32c::crc32c(&covered).to_le_bytes());
        let h = header(&buf);
        assert_eq!((h.header_len, h.seq, h.term), (32, 0x0102, 0x0a0b_0c0d));
        assert_eq!(h.record_len(), 37);
        assert!(h.crc_matches(b"hello"));
        assert_eq!(h.field_problem(0x0102), None);
        assert_eq!(record_len(0x0a0b_0c0d, 5), 37);
        assert_eq!(record_len(0, 5), 29);
        let v1 = one(3, b"x");
        assert_eq!(header(&v1).term, 0);
    }

    #[test]
    fn a_v2_record_with_term_zero_or_an_unknown_version_is_a_field_problem() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 7, 0, b"x");
        buf[20..28].copy_from_slice(&0u64.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[..28]), b"x");
        buf[28..32].copy_from_slice(&crc.to_le_bytes());
        let h = header(&buf);
        assert!(h.crc_matches(b"x"));
        assert!(h.field_problem(1).is_some_and(|p| p.contains("term 0")));

        let mut v3 = one(1, b"x");
        v3[4] = 3;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&v3[..20]), b"x");
        v3[20..24].copy_from_slice(&crc.to_le_bytes());
        let h = header(&v3);
        assert_eq!(h.header_len, 24);
        assert!(h.crc_matches(b"x"));
        assert!(h.field_problem(1).is_some_and(|p| p.contains("version 3")));
    }

    #[test]
    fn a_sealed_v2_record_binds_its_term_and_never_opens_as_v1() {
        let key = crate::crypto::EncryptionKey::from_bytes([9; 32]);
        let cipher = Arc::new(Cipher::new(&key));
        let expect = Expect::Sealed(Arc::clone(&cipher));
        let mut buf = Vec::new();
        encode_sealed_record(&mut buf, 5, 3, &cipher, b"marker-payload").unwrap();
        assert_eq!(buf.len(), 32 + 14 + SEAL_OVERHEAD);
        assert_eq!((buf[4], buf[5]), (2, FLAG_ENCRYPTED));
        let payload = buf[32..].to_vec();
        let h = header(&buf);
        assert!(h.crc_matches(&payload));
        assert_eq!(expect.open(&h, payload.clone()).unwrap(), b"marker-payload");
        assert!(h.aad().as_slice().starts_with(WAL_AAD_DOMAIN_V2));
        assert_eq!(h.aad().as_slice().len(), WAL_AAD_DOMAIN_V2.len() + 28);

        // Another term: authentication fails.
        let mut other_term = buf.clone();
        other_term[20..28].copy_from_slice(&4u64.to_le_bytes());
        assert!(
            expect
                .open(&header(&other_term), payload.clone())
                .is_err_and(|e| e.contains("authentication"))
        );
        // The same sealed payload under a v1 header with the same seq: fails too.
        let mut v1 = buf[..20].to_vec();
        v1[4] = 1;
        v1.extend_from_slice(&[0; 4]);
        v1.extend_from_slice(&payload);
        assert!(
            expect
                .open(&header(&v1), payload)
                .is_err_and(|e| e.contains("authentication"))
        );
    }
}
