//! rstmdb backup files.
//!
//! A backup is a *logical* copy of a database: the state (machine definitions, instances,
//! idempotency records) exported while writes continue, plus every WAL record from
//! `base_offset + 1` to `wal_end`. The export reflects at least every record up to
//! `base_offset` and at most every record up to `wal_end`; replaying the WAL part over it (the
//! replay skips what an instance already reflects) gives exactly the state at `wal_end`.
//!
//! The body is JSON lines, one [`Record`] each: machines, then instances, then idempotency
//! records, then WAL records in offset order. The file wraps it in a versioned container:
//!
//! ```text
//! "RSTMDB\0B"  container version (u16 LE)  manifest length (u32 LE)  manifest (JSON)
//! crc32c of everything before it (u32 LE)
//! chunk*: length (u32 LE)  flags (u8, 1 = last)  data  crc32c(index, flags, manifest hash, data)
//! ```
//!
//! Without encryption a chunk's data is up to [`CHUNK_BYTES`] of the body. With encryption it
//! is that plaintext sealed with AES-256-GCM: nonce = the file's random 8-byte salt followed by
//! the chunk index (u32 BE); associated data = a label, the chunk index, the flags and the
//! SHA-256 of the manifest, so reordered, dropped, spliced or truncated chunks and an edited
//! manifest all fail. The last chunk carries the `last` flag; data after it is an error. The
//! manifest holds the SHA-256 of the whole body, checked end to end when the body is read.

mod key;
mod seal;

pub use key::{Key, looks_like_passphrase};
use seal::Sealer;

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

/// First bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"RSTMDB\0B";
/// The container layout this code writes and reads.
pub const CONTAINER_VERSION: u16 = 1;
/// The body format ([`Record`] lines) this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Plaintext bytes per chunk.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Largest body line (one record) accepted, in bytes. A WAL record is at most 16 MiB.
pub const MAX_RECORD_LINE_BYTES: usize = 64 * 1024 * 1024;
/// Environment variable holding the key as 64 hex characters.
pub const KEY_ENV: &str = "RSTMDB_BACKUP_KEY";
/// Name of the only cipher.
pub const ALGORITHM: &str = "AES-256-GCM";

const TAG_BYTES: usize = 16;
const AAD_LABEL: &[u8] = b"rstmdb-backup-chunk-v1";
const FLAG_LAST: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not an rstmdb backup file (bad magic)")]
    BadMagic,
    #[error("unsupported backup container version {0} (this build reads {CONTAINER_VERSION})")]
    UnsupportedVersion(u16),
    #[error("backup file is corrupt: {0}")]
    Corrupt(String),
    #[error("backup file is truncated: {0}")]
    Truncated(String),
    #[error("backup is encrypted: give the key with --key-file or {KEY_ENV}")]
    KeyRequired,
    #[error("wrong key: its fingerprint {given} is not the backup's {expected}")]
    WrongKey { given: String, expected: String },
    #[error("key: {0}")]
    Key(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

// ---- records ------------------------------------------------------------------------------

/// One line of the body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// A machine definition version as stored.
    Machine {
        machine: String,
        version: u32,
        checksum: String,
        definition: Value,
        wal_offset: u64,
    },
    /// An instance (live or tombstone) as stored: `id`, `machine`, `version`, `state`, `ctx`,
    /// `last_event_id`, `last_wal_offset`, `created_at`, `updated_at`, `deleted`.
    Instance { instance: Value },
    /// An idempotency record under its scope.
    Idempotency { scope: String, record: Value },
    /// A WAL record: its offset and decoded entry.
    Wal { offset: u64, entry: Value },
}

impl Record {
    /// The id of an instance record.
    pub fn instance_id(&self) -> Option<&str> {
        match self {
            Record::Instance { instance } => instance.get("id").and_then(Value::as_str),
            _ => None,
        }
    }
}

// ---- manifest -----------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub machines: u64,
    pub instances: u64,
    pub idempotency_records: u64,
    pub wal_records: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub algorithm: String,
    /// First 8 bytes (hex) of SHA-256("rstmdb-backup-key-fingerprint" ‖ key): tells a wrong
    /// key from a damaged file without revealing the key.
    pub key_fingerprint: String,
    /// 8 random bytes (hex), the first part of every chunk's nonce.
    pub nonce_salt: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Unix ms when the server finished the export.
    pub created_at: i64,
    pub server_version: String,
    /// The exported state reflects every WAL record up to this offset (and maybe later ones).
    pub base_offset: u64,
    /// The last WAL record in the backup; the backup restores the state at this offset.
    pub wal_end: u64,
    pub counts: Counts,
    pub body_bytes: u64,
    /// Lowercase hex SHA-256 of the (plaintext) body.
    pub body_sha256: String,
    pub chunk_bytes: u32,
    #[serde(default)]
    pub encryption: Option<Encryption>,
}

// ---- writing --------------------------------------------------------------------------------

/// Writes a backup file: the header at creation, then the body through [`Writer::write_body`],
/// then [`Writer::finish`].
pub struct Writer<W: Write> {
    out: W,
    sealer: Sealer,
    manifest: Manifest,
    buf: Vec<u8>,
    index: u64,
    body_bytes: u64,
    hasher: Sha256,
}

impl<W: Write> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("index", &self.index)
            .field("body_bytes", &self.body_bytes)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Writer<W> {
    /// Writes the header. `manifest.encryption` and `chunk_bytes` are filled in here; the
    /// body written must then match `manifest.body_bytes` and `body_sha256`.
    pub fn new(mut out: W, mut manifest: Manifest, key: Option<&Key>) -> Result<Writer<W>> {
        manifest.chunk_bytes = CHUNK_BYTES as u32;
        let cipher = match key {
            None => {
                manifest.encryption = None;
                None
            }
            Some(k) => {
                let mut salt = [0u8; 8];
                OsRng.fill_bytes(&mut salt);
                manifest.encryption = Some(Encryption {
                    algorithm: ALGORITHM.into(),
                    key_fingerprint: k.fingerprint(),
                    nonce_salt: hex(&salt),
                });
                Some((k.cipher()?, salt))
            }
        };
        let mbytes = serde_json::to_vec(&manifest)
            .map_err(|e| Error::Invalid(format!("encoding manifest: {e}")))?;
        if mbytes.len() > MAX_MANIFEST_BYTES {
            return Err(Error::Invalid("manifest too large".into()));
        }
        let mut header = Vec::with_capacity(14 + mbytes.len() + 4);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&CONTAINER_VERSION.to_le_bytes());
        header.extend_from_slice(&(mbytes.len() as u32).to_le_bytes());
        header.extend_from_slice(&mbytes);
        let crc = crc32c::crc32c(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        out.write_all(&header)
            .map_err(io("writing backup header"))?;
        Ok(Writer {
            out,
            sealer: Sealer::new(&mbytes, cipher),
            manifest,
            buf: Vec::with_capacity(CHUNK_BYTES),
            index: 0,
            body_bytes: 0,
            hasher: Sha256::new(),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn emit(&mut self, last: bool) -> Result<()> {
        let flags = if last { FLAG_LAST } else { 0 };
        let stored = self.sealer.seal(self.index, flags, &self.buf)?;
        let crc = self.sealer.crc(self.index, flags, &stored);
        let mut frame = Vec::with_capacity(stored.len() + 9);
        frame.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        frame.push(flags);
        frame.extend_from_slice(&stored);
        frame.extend_from_slice(&crc.to_le_bytes());
        self.out
            .write_all(&frame)
            .map_err(io("writing backup chunk"))?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    pub fn write_body(&mut self, mut data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.body_bytes += data.len() as u64;
        while !data.is_empty() {
            let room = CHUNK_BYTES - self.buf.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buf.extend_from_slice(now);
            data = rest;
            if self.buf.len() == CHUNK_BYTES {
                self.emit(false)?;
            }
        }
        Ok(())
    }

    /// Writes the last chunk and checks the body against the manifest. Returns the output.
    pub fn finish(mut self) -> Result<W> {
        self.emit(true)?;
        let sha = hex(&std::mem::take(&mut self.hasher).finalize());
        if self.body_bytes != self.manifest.body_bytes || sha != self.manifest.body_sha256 {
            return Err(Error::Corrupt(format!(
                "body received ({} bytes, sha256 {sha}) differs from what the server announced ({} bytes, sha256 {})",
                self.body_bytes, self.manifest.body_bytes, self.manifest.body_sha256
            )));
        }
        self.out.flush().map_err(io("writing backup"))?;
        Ok(self.out)
    }
}

// ---- reading --------------------------------------------------------------------------------

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Truncated(format!("end of file inside {what}"))
        } else {
            Error::Io {
                context: format!("reading {what}"),
                source: e,
            }
        }
    })
}

/// Reads a backup file: the header on open, then the body chunk by chunk, checking each.
pub struct Reader<R: Read> {
    input: R,
    manifest: Manifest,
    sealer: Sealer,
    index: u64,
    done: bool,
    body_bytes: u64,
    hasher: Sha256,
}

impl<R: Read> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("manifest", &self.manifest)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// Reads only the header: the manifest of a backup (no key needed).
pub fn read_manifest(input: &mut impl Read) -> Result<(Manifest, Vec<u8>)> {
    let mut fixed = [0u8; 14];
    read_exact_or(input, &mut fixed, "the header")?;
    if &fixed[..8] != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = u16::from_le_bytes([fixed[8], fixed[9]]);
    if version != CONTAINER_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let len = u32::from_le_bytes([fixed[10], fixed[11], fixed[12], fixed[13]]) as usize;
    if len > MAX_MANIFEST_BYTES {
        return Err(Error::Corrupt(format!(
            "manifest length {len} is too large"
        )));
    }
    let mut mbytes = vec![0u8; len];
    read_exact_or(input, &mut mbytes, "the manifest")?;
    let mut crc = [0u8; 4];
    read_exact_or(input, &mut crc, "the header checksum")?;
    let want = crc32c::crc32c_append(crc32c::crc32c(&fixed), &mbytes);
    if u32::from_le_bytes(crc) != want {
        return Err(Error::Corrupt("header checksum mismatch".into()));
    }
    let manifest: Manifest =
        serde_json::from_slice(&mbytes).map_err(|e| Error::Corrupt(format!("manifest: {e}")))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(Error::Invalid(format!(
            "unsupported backup format version {} (this build reads {FORMAT_VERSION})",
            manifest.format_version
        )));
    }
    Ok((manifest, mbytes))
}

impl<R: Read> Reader<R> {
    pub fn open(mut input: R, key: Option<&Key>) -> Result<Reader<R>> {
        let (manifest, mbytes) = read_manifest(&mut input)?;
        let cipher = match (&manifest.encryption, key) {
            (None, _) => None,
            (Some(_), None) => return Err(Error::KeyRequired),
            (Some(enc), Some(k)) => {
                if enc.algorithm != ALGORITHM {
                    return Err(Error::Invalid(format!(
                        "unsupported cipher {:?}",
                        enc.algorithm
                    )));
                }
                if enc.key_fingerprint != k.fingerprint() {
                    return Err(Error::WrongKey {
                        given: k.fingerprint(),
                        expected: enc.key_fingerprint.clone(),
                    });
                }
                let salt = unhex(&enc.nonce_salt)
                    .and_then(|v| <[u8; 8]>::try_from(v).ok())
                    .ok_or_else(|| Error::Corrupt("bad nonce salt in manifest".into()))?;
                Some((k.cipher()?, salt))
            }
        };
        Ok(Reader {
            input,
            sealer: Sealer::new(&mbytes, cipher),
            manifest,
            index: 0,
            done: false,
            body_bytes: 0,
            hasher: Sha256::new(),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The next chunk of plaintext body; `None` after the last one, once the whole body has
    /// been checked against the manifest.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        read_exact_or(
            &mut self.input,
            &mut head,
            &format!("chunk {} (no final chunk)", self.index),
        )?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let flags = head[4];
        let max = CHUNK_BYTES + TAG_BYTES;
        if len > max || flags & !FLAG_LAST != 0 {
            return Err(Error::Corrupt(format!(
                "chunk {} has a bad header (length {len}, flags {flags:#x})",
                self.index
            )));
        }
        let mut stored = vec![0u8; len];
        read_exact_or(
            &mut self.input,
            &mut stored,
            &format!("chunk {}", self.index),
        )?;
        let mut crc = [0u8; 4];
        read_exact_or(
            &mut self.input,
            &mut crc,
            &format!("chunk {} checksum", self.index),
        )?;
        if u32::from_le_bytes(crc) != self.sealer.crc(self.index, flags, &stored) {
            return Err(Error::Corrupt(format!(
                "chunk {} checksum mismatch",
                self.index
            )));
        }
        let plain = self.sealer.open(self.index, flags, stored)?;
        self.index += 1;
        self.hasher.update(&plain);
        self.body_bytes += plain.len() as u64;
        if flags & FLAG_LAST != 0 {
            self.done = true;
            let mut extra = [0u8; 1];
            match self.input.read(&mut extra) {
                Ok(0) => {}
                Ok(_) => return Err(Error::Corrupt("data after the final chunk".into())),
                Err(e) => return Err(io("reading backup")(e)),
            }
            let sha = hex(&std::mem::take(&mut self.hasher).finalize());
            if self.body_bytes != self.manifest.body_bytes || sha != self.manifest.body_sha256 {
                return Err(Error::Corrupt(format!(
                    "body ({} bytes, sha256 {sha}) does not match the manifest ({} bytes, sha256 {})",
                    self.body_bytes, self.manifest.body_bytes, self.manifest.body_sha256
                )));
            }
        }
        Ok(Some(plain))
    }

    /// The body's records, one at a time.
    pub fn records(self) -> Records<R> {
        Records {
            reader: self,
            pending: Vec::new(),
            pos: 0,
            ended: false,
        }
    }
}

/// Iterator over a body's [`Record`]s. Stops after the first error.
pub struct Records<R: Read> {
    reader: Reader<R>,
    pending: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl<R: Read> std::fmt::Debug for Records<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Records<R> {
    pub fn manifest(&self) -> &Manifest {
        &self.reader.manifest
    }

    fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(nl) = self.pending[self.pos..].iter().position(|&b| b == b'\n') {
                let line = self.pending[self.pos..self.pos + nl].to_vec();
                self.pos += nl + 1;
                return Ok(Some(line));
            }
            if self.pending.len() - self.pos > MAX_RECORD_LINE_BYTES {
                return Err(Error::Corrupt("a record line is too long".into()));
            }
            match self.reader.next_chunk()? {
                Some(chunk) => {
                    self.pending.drain(..self.pos);
                    self.pos = 0;
                    self.pending.extend_from_slice(&chunk);
                }
                None => {
                    if self.pos < self.pending.len() {
                        return Err(Error::Corrupt("body ends inside a record".into()));
                    }
                    return Ok(None);
                }
            }
        }
    }
}

impl<R: Read> Iterator for Records<R> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.ended {
            return None;
        }
        let out = match self.next_line() {
            Ok(Some(line)) => serde_json::from_slice::<Record>(&line)
                .map_err(|e| Error::Corrupt(format!("undecodable record: {e}"))),
            Ok(None) => {
                self.ended = true;
                return None;
            }
            Err(e) => Err(e),
        };
        if out.is_err() {
            self.ended = true;
        }
        Some(out)
    }
}

/// Encodes one record as a body line.
pub fn encode_record(r: &Record, out: &mut Vec<u8>) -> Result<()> {
    serde_json::to_writer(&mut *out, r)
        .map_err(|e| Error::Invalid(format!("encoding record: {e}")))?;
    out.push(b'\n');
    Ok(())
}

// ---- verification ---------------------------------------------------------------------------

/// What `backup verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub manifest: Manifest,
    pub counts: Counts,
    pub chunks: u64,
    /// First and last WAL offsets in the body (`None` when it has no WAL records).
    pub wal_first: Option<u64>,
    pub wal_last: Option<u64>,
}

/// Reads a whole backup and checks it end to end: header, every chunk (checksum, and tag when
/// encrypted), the body hash, every record, section order, that the WAL records run
/// contiguously from `base_offset + 1` to `wal_end`, and the counts in the manifest.
/// `progress` is told the number of body bytes read so far.
pub fn verify(
    input: impl Read,
    key: Option<&Key>,
    mut progress: impl FnMut(u64),
) -> Result<Summary> {
    let reader = Reader::open(input, key)?;
    let manifest = reader.manifest().clone();
    let mut records = reader.records();
    let mut counts = Counts::default();
    let mut section = 0u8;
    let mut next_wal = manifest.base_offset + 1;
    let mut wal_first = None;
    let mut wal_last = None;
    let mut n = 0u64;
    while let Some(r) = records.next() {
        let r = r?;
        let rank = match &r {
            Record::Machine { .. } => {
                counts.machines += 1;
                0
            }
            Record::Instance { instance } => {
                counts.instances += 1;
                for field in ["id", "machine", "state"] {
                    if instance.get(field).and_then(Value::as_str).is_none() {
                        return Err(Error::Corrupt(format!(
                            "an instance record lacks `{field}`"
                        )));
                    }
                }
                1
            }
            Record::Idempotency { .. } => {
                counts.idempotency_records += 1;
                2
            }
            Record::Wal { offset, entry } => {
                counts.wal_records += 1;
                if *offset != next_wal {
                    return Err(Error::Corrupt(format!(
                        "WAL records are not contiguous: expected offset {next_wal}, found {offset}"
                    )));
                }
                if entry.get("type").and_then(Value::as_str).is_none() {
                    return Err(Error::Corrupt(format!("WAL record {offset} has no type")));
                }
                wal_first.get_or_insert(*offset);
                wal_last = Some(*offset);
                next_wal += 1;
                3
            }
        };
        if rank < section {
            return Err(Error::Corrupt("records are out of section order".into()));
        }
        section = rank;
        n += 1;
        if n.is_multiple_of(1024) {
            progress(records.reader.body_bytes);
        }
    }
    progress(records.reader.body_bytes);
    if next_wal != manifest.wal_end + 1 {
        return Err(Error::Corrupt(format!(
            "WAL records end at {} but the manifest says {}",
            next_wal - 1,
            manifest.wal_end
        )));
    }
    if counts != manifest.counts {
        return Err(Error::Corrupt(format!(
            "record counts {counts:?} differ from the manifest's {:?}",
            manifest.counts
        )));
    }
    Ok(Summary {
        manifest,
        counts,
        chunks: records.reader.index,
        wal_first,
        wal_last,
    })
}

#[cfg(test)]
mod tests;
