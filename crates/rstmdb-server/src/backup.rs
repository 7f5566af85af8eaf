//! BACKUP_BEGIN / BACKUP_READ / BACKUP_END: online backups over RCP.
//!
//! BACKUP_BEGIN runs the storage engine's export (consistent while writes continue, see
//! `rstmdb_storage::backup`) into a spool file under `<data_dir>/backup-spool/`, hashing the
//! body as it goes, and answers with the manifest fields. The client then pulls the body with
//! BACKUP_READ (base64, at most [`MAX_READ_BYTES`] per response, far below the frame limit) and
//! wraps it in the backup container itself (so encryption keys never reach the server).
//! BACKUP_END deletes the spool. Spools idle for [`SPOOL_IDLE`] are deleted at the next backup
//! op, and every spool is deleted when the server starts. The WAL pin is held only while the
//! export runs, so a slow client never holds back checkpoints.

use crate::error::bad_request;
use base64::Engine;
use rstmdb_backup::{Record, encode_record, hex};
use rstmdb_protocol::{
    BackupBeginResult, BackupEndResult, BackupReadParams, BackupReadResult, ErrorCode, ErrorObject,
};
use rstmdb_storage::Database;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest BACKUP_READ answer, in body bytes (base64 makes it 4/3 of that on the wire).
pub const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;
/// Backups spooled at once.
pub const MAX_SPOOLS: usize = 4;
/// A spool nobody read for this long is deleted.
pub const SPOOL_IDLE: Duration = Duration::from_secs(15 * 60);

#[derive(Debug)]
struct Spool {
    path: PathBuf,
    size: u64,
    last_used: Instant,
}

/// The spooled backups of one server.
#[derive(Debug)]
pub struct Backups {
    dir: PathBuf,
    spools: Mutex<HashMap<String, Spool>>,
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
            spools: Mutex::new(HashMap::new()),
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

/// BACKUP_BEGIN.
pub async fn begin(
    backups: &Backups,
    db: &Database,
) -> Result<(BackupBeginResult, Option<u64>), ErrorObject> {
    backups.sweep();
    let id = uuid::Uuid::now_v7().to_string();
    let path = backups.dir.join(format!("{id}.body"));
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
            },
        );
    }
    let started = Instant::now();
    let db = db.clone();
    let dir = backups.dir.clone();
    let p = path.clone();
    let result = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let file =
            std::fs::File::create(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut line = Vec::new();
        let export = db
            .backup_export(&mut |r: &Record| {
                line.clear();
                encode_record(r, &mut line).map_err(|e| e.to_string())?;
                hasher.update(&line);
                size += line.len() as u64;
                out.write_all(&line).map_err(|e| e.to_string())
            })
            .map_err(|e| e.to_string())?;
        let file = out.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        Ok::<_, String>((export, size, hex(&hasher.finalize())))
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
    if let Ok(mut s) = backups.spools.lock()
        && let Some(sp) = s.get_mut(&id)
    {
        sp.size = size;
        sp.last_used = Instant::now();
    }
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
    let (path, size) = {
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
        (sp.path.clone(), sp.size)
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
    let n = want.min(size - p.offset) as usize;
    let offset = p.offset;
    let data = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; n];
        f.read_exact(&mut buf).map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    })
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
