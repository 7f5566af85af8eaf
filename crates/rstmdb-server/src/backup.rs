//! BACKUP_BEGIN / BACKUP_READ / BACKUP_END: online backups over RCP.
//!
//! BACKUP_BEGIN runs the storage engine's export (consistent while writes continue, see
//! `rstmdb_storage::backup`) into a spool file under `<data_dir>/backup-spool/`, hashing the
//! body as it goes, and answers with the manifest fields. The client then pulls the body with
//! BACKUP_READ (base64, at most [`MAX_READ_BYTES`] per response, far below the frame limit) and
//! wraps it in the backup container itself (so encryption keys never reach the server).
//!
//! The spool is sealed (issue 18 finding 1): each backup gets its own random AES-256-GCM key,
//! held only in this process's memory (in the registry entry, wiped when the entry goes), and
//! the body is written as [`SPOOL_CHUNK`]-byte chunks, each sealed on its own with its index as
//! associated data, so a BACKUP_READ at any offset opens only the chunks it covers. The bytes
//! and SHA-256 a client receives are the plain body, exactly as before. The directory is 0700
//! and the files 0600. A spool is deleted by BACKUP_END, when the session that began it ends
//! ([`SessionSpools`] dropped: connection closed, BYE, shutdown), when nobody read it for
//! [`SPOOL_IDLE`] (checked at the next backup op), and at startup; after a crash the key is
//! gone, so a leftover spool cannot be decrypted. The WAL pin is held only while the export
//! runs, so a slow client never holds back checkpoints.

use crate::error::bad_request;
use base64::Engine;
use rstmdb_backup::{Record, encode_record, hex};
use rstmdb_protocol::{
    BackupBeginResult, BackupEndResult, BackupReadParams, BackupReadResult, ErrorCode, ErrorObject,
};
use rstmdb_storage::{Cipher, Database, EncryptionKey, SEAL_OVERHEAD};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest BACKUP_READ answer, in body bytes (base64 makes it 4/3 of that on the wire).
pub const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;
/// Backups spooled at once.
pub const MAX_SPOOLS: usize = 4;
/// A spool nobody read for this long is deleted.
pub const SPOOL_IDLE: Duration = Duration::from_secs(15 * 60);
/// Plaintext bytes per sealed spool chunk (the last one may be shorter); on disk each chunk
/// takes `SEAL_OVERHEAD` bytes more.
pub const SPOOL_CHUNK: u64 = 64 * 1024;
/// Associated data of a chunk: this, then the chunk index (u64, big-endian).
const CHUNK_AAD: &[u8] = b"rstmdb backup spool chunk v1\0";

#[derive(Debug)]
struct Spool {
    path: PathBuf,
    size: u64,
    last_used: Instant,
    /// The session that began it ([`SessionSpools::owner`]).
    owner: u64,
    /// The spool's own key, in memory only.
    cipher: Arc<Cipher>,
}

type Registry = Arc<Mutex<HashMap<String, Spool>>>;

/// The spooled backups of one server.
#[derive(Debug)]
pub struct Backups {
    dir: PathBuf,
    spools: Registry,
    next_owner: AtomicU64,
}

/// The spools one session began: dropping it (the session ended: connection closed, BYE,
/// server shutdown) deletes them. A session makes one with [`Backups::session`] and passes
/// [`SessionSpools::owner`] to the backup ops.
#[derive(Debug)]
pub struct SessionSpools {
    owner: u64,
    spools: Registry,
}

impl SessionSpools {
    /// The id BACKUP_BEGIN records as the spool's owner.
    pub fn owner(&self) -> u64 {
        self.owner
    }
}

impl Drop for SessionSpools {
    fn drop(&mut self) {
        end_session(&self.spools, self.owner);
    }
}

/// Deletes every spool `owner` began.
fn end_session(spools: &Mutex<HashMap<String, Spool>>, owner: u64) {
    // Nothing panics under the lock, so a poisoned registry is still consistent.
    let mut s = spools
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    s.retain(|id, sp| {
        let keep = sp.owner != owner;
        if !keep {
            tracing::info!(backup_id = %id, "the session that began the backup ended; deleting its spool");
            let _ = std::fs::remove_file(&sp.path);
        }
        keep
    });
}

fn internal(msg: impl Into<String>) -> ErrorObject {
    ErrorObject::new(ErrorCode::InternalError, msg)
}

impl Backups {
    /// Spools live in `<data_dir>/backup-spool`; leftovers of an earlier run are removed.
    pub fn new(data_dir: &Path) -> Backups {
        let dir = data_dir.join("backup-spool");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for ent in rd.flatten() {
                let _ = std::fs::remove_file(ent.path());
            }
        }
        Backups {
            dir,
            spools: Arc::new(Mutex::new(HashMap::new())),
            next_owner: AtomicU64::new(1),
        }
    }

    /// A new session's handle: the spools it begins are deleted when the handle is dropped.
    pub fn session(&self) -> SessionSpools {
        SessionSpools {
            owner: self.next_owner.fetch_add(1, Ordering::Relaxed),
            spools: self.spools.clone(),
        }
    }

    fn sweep(&self) {
        if let Ok(mut s) = self.spools.lock() {
            s.retain(|id, sp| {
                let keep = sp.last_used.elapsed() < SPOOL_IDLE;
                if !keep {
                    tracing::info!(backup_id = %id, "deleting an idle backup spool");
                    let _ = std::fs::remove_file(&sp.path);
                }
                keep
            });
        }
    }
}

/// The associated data that binds a sealed chunk to its place in the spool.
fn chunk_aad(index: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(CHUNK_AAD.len() + 8);
    aad.extend_from_slice(CHUNK_AAD);
    aad.extend_from_slice(&index.to_be_bytes());
    aad
}

/// Writes the body as sealed chunks of [`SPOOL_CHUNK`] plaintext bytes.
struct SealedWriter<W: Write> {
    out: W,
    cipher: Arc<Cipher>,
    plain: Vec<u8>,
    sealed: Vec<u8>,
    index: u64,
}

impl<W: Write> SealedWriter<W> {
    fn new(out: W, cipher: Arc<Cipher>) -> Self {
        SealedWriter {
            out,
            cipher,
            plain: Vec::with_capacity(SPOOL_CHUNK as usize),
            sealed: Vec::with_capacity(SPOOL_CHUNK as usize + SEAL_OVERHEAD),
            index: 0,
        }
    }

    fn write_all(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            let take = (SPOOL_CHUNK as usize - self.plain.len()).min(data.len());
            let (now, rest) = data.split_at(take);
            self.plain.extend_from_slice(now);
            data = rest;
            if self.plain.len() == SPOOL_CHUNK as usize {
                self.seal_chunk()?;
            }
        }
        Ok(())
    }

    fn seal_chunk(&mut self) -> Result<(), String> {
        if self.plain.is_empty() {
            return Ok(());
        }
        self.sealed.clear();
        self.cipher
            .seal_into(&mut self.sealed, &chunk_aad(self.index), &self.plain)
            .map_err(|e| e.to_string())?;
        self.out
            .write_all(&self.sealed)
            .map_err(|e| e.to_string())?;
        self.index += 1;
        zeroize::Zeroize::zeroize(&mut self.plain);
        self.plain.clear();
        Ok(())
    }

    /// Seals the last, shorter chunk and hands the writer back.
    fn finish(mut self) -> Result<W, String> {
        self.seal_chunk()?;
        Ok(self.out)
    }
}

/// Bytes `offset .. offset + n` of the body (`size` bytes in all) from a sealed spool,
/// opening only the chunks they lie in.
fn read_sealed(
    path: &Path,
    cipher: &Cipher,
    size: u64,
    offset: u64,
    n: u64,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(n as usize);
    if n == 0 {
        return Ok(out);
    }
    let end = offset + n;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut sealed = Vec::new();
    for index in offset / SPOOL_CHUNK..=(end - 1) / SPOOL_CHUNK {
        let start = index * SPOOL_CHUNK;
        let len = SPOOL_CHUNK.min(size - start);
        sealed.resize(len as usize + SEAL_OVERHEAD, 0);
        f.seek(SeekFrom::Start(
            index * (SPOOL_CHUNK + SEAL_OVERHEAD as u64),
        ))
        .map_err(|e| e.to_string())?;
        f.read_exact(&mut sealed).map_err(|e| e.to_string())?;
        let plain = zeroize::Zeroizing::new(
            cipher
                .open(&chunk_aad(index), &sealed)
                .map_err(|e| format!("spool chunk {index}: {e}"))?,
        );
        let lo = (offset.max(start) - start) as usize;
        let hi = (end.min(start + len) - start) as usize;
        let part = plain
            .get(lo..hi)
            .ok_or_else(|| format!("spool chunk {index} is shorter than {hi} bytes"))?;
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// Creates the spool directory 0700 (and makes an existing one 0700).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        b.mode(0o700);
        b.create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    b.create(dir)
}

/// Creates a new spool file 0600 whatever the umask.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// BACKUP_BEGIN, for the session `owner` ([`SessionSpools::owner`]).
pub async fn begin(
    backups: &Backups,
    db: &Database,
    owner: u64,
) -> Result<(BackupBeginResult, Option<u64>), ErrorObject> {
    backups.sweep();
    let id = uuid::Uuid::now_v7().to_string();
    let path = backups.dir.join(format!("{id}.body"));
    let cipher = Arc::new(Cipher::new(
        &EncryptionKey::generate().map_err(|e| internal(format!("backup spool key: {e}")))?,
    ));
    {
        let mut s = backups
            .spools
            .lock()
            .map_err(|_| internal("backup registry lock poisoned"))?;
        if s.len() >= MAX_SPOOLS {
            return Err(ErrorObject::new(
                ErrorCode::RateLimited,
                format!("{MAX_SPOOLS} backups are already spooled; end one with BACKUP_END"),
            ));
        }
        // Reserved now so concurrent BEGINs count against the limit.
        s.insert(
            id.clone(),
            Spool {
                path: path.clone(),
                size: 0,
                last_used: Instant::now(),
                owner,
                cipher: cipher.clone(),
            },
        );
    }
    let started = Instant::now();
    let db = db.clone();
    let dir = backups.dir.clone();
    let registry = backups.spools.clone();
    let task_id = id.clone();
    let p = path.clone();
    let result = tokio::task::spawn_blocking(move || {
        let written = (|| {
            private_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let file = private_file(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
            let mut out =
                SealedWriter::new(std::io::BufWriter::with_capacity(1 << 20, file), cipher);
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut line = Vec::new();
            let export = db
                .backup_export(&mut |r: &Record| {
                    line.clear();
                    encode_record(r, &mut line).map_err(|e| e.to_string())?;
                    hasher.update(&line);
                    size += line.len() as u64;
                    out.write_all(&line)
                })
                .map_err(|e| e.to_string())?;
            let file = out.finish()?.into_inner().map_err(|e| e.to_string())?;
            file.sync_all().map_err(|e| e.to_string())?;
            Ok::<_, String>((export, size, hex(&hasher.finalize())))
        })();
        // The spool is published under the lock, so a session that ended meanwhile (its
        // entry is gone, the BEGIN was abandoned) leaves no file behind.
        let mut s = registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (written, s.get_mut(&task_id)) {
            (Ok(done), Some(sp)) => {
                sp.size = done.1;
                sp.last_used = Instant::now();
                Ok(done)
            }
            (Ok(_), None) => {
                let _ = std::fs::remove_file(&p);
                Err("the backup was ended while it was exported".to_string())
            }
            (Err(e), _) => {
                let _ = std::fs::remove_file(&p);
                Err(e)
            }
        }
    })
    .await
    .map_err(|e| format!("backup task: {e}"))
    .and_then(|r| r);
    let (export, size, sha) = match result {
        Ok(x) => x,
        Err(e) => {
            if let Ok(mut s) = backups.spools.lock() {
                s.remove(&id);
            }
            let _ = std::fs::remove_file(&path);
            tracing::error!(error = %e, "backup export failed");
            return Err(internal(format!("backup failed: {e}")));
        }
    };
    tracing::info!(
        backup_id = %id,
        base_offset = export.base_offset,
        wal_end = export.wal_end,
        body_bytes = size,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "backup exported"
    );
    let created_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let counts = serde_json::to_value(&export.counts)
        .map_err(|e| internal(format!("encoding the backup counts: {e}")))?;
    Ok((
        BackupBeginResult {
            backup_id: id,
            format_version: rstmdb_backup::FORMAT_VERSION,
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at,
            base_offset: export.base_offset,
            wal_end: export.wal_end,
            counts,
            body_bytes: size,
            body_sha256: sha,
        },
        None,
    ))
}

/// BACKUP_READ.
pub async fn read(backups: &Backups, p: BackupReadParams) -> Result<BackupReadResult, ErrorObject> {
    let (path, size, cipher) = {
        let mut s = backups
            .spools
            .lock()
            .map_err(|_| internal("backup registry lock poisoned"))?;
        let sp = s.get_mut(&p.backup_id).ok_or_else(|| {
            ErrorObject::new(
                ErrorCode::NotFound,
                format!("no spooled backup {:?} (ended or expired)", p.backup_id),
            )
        })?;
        sp.last_used = Instant::now();
        (sp.path.clone(), sp.size, sp.cipher.clone())
    };
    if p.offset > size {
        return Err(bad_request(format!(
            "offset {} is past the end of the backup ({size} bytes)",
            p.offset
        )));
    }
    let want = p
        .max_bytes
        .unwrap_or(MAX_READ_BYTES)
        .clamp(1, MAX_READ_BYTES);
    let n = want.min(size - p.offset);
    let offset = p.offset;
    let data = tokio::task::spawn_blocking(move || read_sealed(&path, &cipher, size, offset, n))
        .await
        .map_err(|e| internal(format!("backup read task: {e}")))?
        .map_err(|e| internal(format!("reading the backup spool: {e}")))?;
    let next = offset + data.len() as u64;
    Ok(BackupReadResult {
        data: base64::engine::general_purpose::STANDARD.encode(&data),
        offset,
        next_offset: next,
        eof: next == size,
    })
}

/// BACKUP_END.
pub fn end(backups: &Backups, backup_id: &str) -> Result<BackupEndResult, ErrorObject> {
    let removed = match backups.spools.lock() {
        Ok(mut s) => s.remove(backup_id),
        Err(_) => return Err(internal("backup registry lock poisoned")),
    };
    if let Some(sp) = &removed {
        let _ = std::fs::remove_file(&sp.path);
    }
    Ok(BackupEndResult {
        removed: removed.is_some(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spool(dir: &Path, body: &[u8]) -> (PathBuf, Arc<Cipher>) {
        let cipher = Arc::new(Cipher::new(&EncryptionKey::generate().unwrap()));
        let path = dir.join("s.body");
        let mut w = SealedWriter::new(private_file(&path).unwrap(), cipher.clone());
        // Uneven pieces, as the export writes record lines.
        for piece in body.chunks(1000) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap();
        (path, cipher)
    }

    #[test]
    fn every_range_reads_back_and_the_file_is_chunks_plus_overhead() {
        let dir = tempfile::tempdir().unwrap();
        let c = SPOOL_CHUNK;
        for size in [0, 1, c - 1, c, c + 1, 3 * c + 17] {
            let body: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let (path, cipher) = spool(dir.path(), &body);
            let chunks = size.div_ceil(c);
            let on_disk = std::fs::metadata(&path).unwrap().len();
            assert_eq!(on_disk, size + chunks * SEAL_OVERHEAD as u64);
            for (off, n) in [(0, size), (0, 1), (c - 1, 2), (c, c), (size / 2, size)] {
                if off > size {
                    continue;
                }
                let n = n.min(size - off);
                let got = read_sealed(&path, &cipher, size, off, n).unwrap();
                assert_eq!(
                    got,
                    &body[off as usize..(off + n) as usize],
                    "{size}: {off}+{n}"
                );
            }
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn a_changed_or_swapped_chunk_or_another_key_fails() {
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * SPOOL_CHUNK;
        let body = vec![7u8; size as usize];
        let (path, cipher) = spool(dir.path(), &body);
        let sealed = std::fs::read(&path).unwrap();
        let other = Cipher::new(&EncryptionKey::generate().unwrap());
        assert!(read_sealed(&path, &other, size, 0, 1).is_err());

        let mut flipped = sealed.clone();
        flipped[100] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(read_sealed(&path, &cipher, size, 0, 1).is_err());

        // Same length chunks, swapped: the index in the associated data catches it.
        let half = sealed.len() / 2;
        let mut swapped = sealed[half..].to_vec();
        swapped.extend_from_slice(&sealed[..half]);
        std::fs::write(&path, &swapped).unwrap();
        let e = read_sealed(&path, &cipher, size, 0, 1).unwrap_err();
        assert!(e.contains("chunk 0"), "{e}");

        std::fs::write(&path, &sealed[..half]).unwrap();
        assert!(read_sealed(&path, &cipher, size, SPOOL_CHUNK, 1).is_err());
        std::fs::write(&path, &sealed).unwrap();
        assert_eq!(read_sealed(&path, &cipher, size, 0, size).unwrap(), body);
    }
}
