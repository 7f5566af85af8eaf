//! Offline key rotation, and conversion between plaintext and encrypted data directories:
//! what `rstmdb rekey` runs.
//!
//! 1. An interrupted earlier run is finished (its copy was complete) or thrown away (it was
//!    not). See [`rekey`].
//! 2. The database is opened with the old setting and closed: this checks the old key against
//!    the data, replays the log into the state store and checkpoints it.
//! 3. The state store and the WAL are copied into `<data_dir>/rekey.tmp/` with every sealed
//!    value re-encrypted (or decrypted, or encrypted for the first time), fsynced, and
//!    `rekey.tmp/READY` is written and fsynced.
//! 4. The swap: `state` and `wal` are moved into `<data_dir>/rekey.old/`, the copies take
//!    their place, the data directory is fsynced, then `rekey.old/` and `rekey.tmp/` are
//!    deleted.
//!
//! Until `READY` exists the original files are untouched; from then on the new ones are
//! complete. `Database::open` refuses to start while `rekey.tmp/` or `rekey.old/` exists, so a
//! half-swapped directory is never served.

use crate::config::StorageConfig;
use crate::crypto::{Cipher, EncryptionKey, KeyId};
use crate::datadir::{OLD_DIR, STAGING_DIR, open_state};
use crate::db::Database;
use crate::error::OpenError;
use crate::state::keys;
use crate::store;
use crate::wal::{self, WalError};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Written into the staging directory once the copy is complete and durable.
const READY_FILE: &str = "READY";
/// Directories of a data directory that a rekey replaces.
const PARTS: [&str; 2] = ["state", "wal"];
/// Cache of the state stores opened for the copy.
const COPY_CACHE_MB: u64 = 64;

/// Why a rekey stopped. The data directory is left as it was, or (after `READY`) as the next
/// run will finish it.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("state store: {0}")]
    State(String),
    #[error("{0}")]
    Refused(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RekeyError {
    let context = context.into();
    move |source| RekeyError::Io { context, source }
}

/// What a rekey did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyReport {
    pub data_dir: PathBuf,
    /// Key id of the old and the new key (`None`: plaintext).
    pub from: Option<KeyId>,
    pub to: Option<KeyId>,
    /// State store entries copied, and how many of them hold sealed values.
    pub state_entries: u64,
    pub sealed_values: u64,
    pub wal_segments: u64,
    pub wal_records: u64,
    /// True when this run only finished the swap of an interrupted earlier run.
    pub finished_interrupted: bool,
}

impl fmt::Display for RekeyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |k: Option<KeyId>| match k {
            Some(id) => format!("key {id}"),
            None => "plaintext".to_owned(),
        };
        if self.finished_interrupted {
            return write!(
                f,
                "finished an interrupted rekey of {}: the new files are in place",
                self.data_dir.display()
            );
        }
        write!(
            f,
            "rekeyed {} from {} to {}: {} state entries ({} sealed values), {} WAL records in {} \
             segments",
            self.data_dir.display(),
            name(self.from),
            name(self.to),
            self.state_entries,
            self.sealed_values,
            self.wal_records,
            self.wal_segments
        )
    }
}

/// Rewrites the data directory so that it is encrypted with `new` (`None`: plaintext),
/// reading it with `old` (`None`: plaintext). Run it with the server stopped: the WAL
/// directory lock and the state store lock keep a running server and a rekey apart.
///
/// If a previous run was interrupted after its copy was complete, this run only finishes
/// that swap and returns (`finished_interrupted`); if it was interrupted before, its partial
/// copy is deleted and the rekey starts over.
pub async fn rekey(
    data_dir: &Path,
    old: Option<EncryptionKey>,
    new: Option<EncryptionKey>,
) -> Result<RekeyReport, RekeyError> {
    let staging = data_dir.join(STAGING_DIR);
    let mut report = RekeyReport {
        data_dir: data_dir.to_path_buf(),
        from: old.as_ref().map(EncryptionKey::id),
        to: new.as_ref().map(EncryptionKey::id),
        state_entries: 0,
        sealed_values: 0,
        wal_segments: 0,
        wal_records: 0,
        finished_interrupted: false,
    };
    if staging.join(READY_FILE).exists() {
        swap(data_dir)?;
        report.finished_interrupted = true;
        return Ok(report);
    }
    if staging.exists() {
        tracing::warn!(dir = %staging.display(), "removing the incomplete copy of an interrupted rekey");
        std::fs::remove_dir_all(&staging).map_err(io(format!("removing {}", staging.display())))?;
    }
    let old_dir = data_dir.join(OLD_DIR);
    if old_dir.exists() {
        return Err(RekeyError::Refused(format!(
            "{} exists without a complete rekey copy; inspect it by hand",
            old_dir.display()
        )));
    }
    if old == new {
        return Err(RekeyError::Refused(
            "the old and the new key are the same: nothing to do".into(),
        ));
    }
    if !data_dir.join("state").is_dir() {
        return Err(RekeyError::Refused(format!(
            "{} holds no state store: not a data directory",
            data_dir.display()
        )));
    }
    let damaged = data_dir.join("wal").join("damaged");
    if std::fs::read_dir(&damaged).is_ok_and(|mut d| d.next().is_some()) {
        return Err(RekeyError::Refused(format!(
            "{} holds data cut out by `rstmdb repair` under the old key; inspect it and remove \
             it before rekeying",
            damaged.display()
        )));
    }

    // A run whose swap completed but whose cleanup was cut short leaves nothing to tell it
    // from an unfinished one: recognise data that is already in the target setting.
    let target = store::marker(new.as_ref().map(|k| Arc::new(Cipher::new(k))).as_deref());
    if current_marker(&data_dir.join("state"))?.as_deref() == Some(target.as_str()) {
        return Err(RekeyError::Refused(format!(
            "{} is already in the target setting ({target}): nothing to do",
            data_dir.display()
        )));
    }

    // Validate the old key against the data, replay the log, checkpoint.
    let mut config = StorageConfig::new(data_dir);
    config.encryption = old.clone();
    config.cache_capacity_mb = COPY_CACHE_MB;
    let db = Database::open(config)?;
    db.close()
        .await
        .map_err(|e| RekeyError::State(format!("closing the database: {e}")))?;

    let from = old.as_ref().map(|k| Arc::new(Cipher::new(k)));
    let to = new.as_ref().map(|k| Arc::new(Cipher::new(k)));
    std::fs::create_dir_all(&staging).map_err(io(format!("creating {}", staging.display())))?;
    sync_dir(data_dir)?;

    let (entries, sealed) = copy_state(
        &data_dir.join("state"),
        &staging.join("state"),
        from.as_deref(),
        to.as_deref(),
    )?;
    report.state_entries = entries;
    report.sealed_values = sealed;
    let wal = wal::rewrite(&data_dir.join("wal"), &staging.join("wal"), from, to)?;
    report.wal_segments = wal.segments;
    report.wal_records = wal.records;

    let ready = staging.join(READY_FILE);
    std::fs::write(&ready, b"complete\n").map_err(io(format!("writing {}", ready.display())))?;
    std::fs::File::open(&ready)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("syncing {}", ready.display())))?;
    sync_dir(&staging)?;
    swap(data_dir)?;
    tracing::info!(data_dir = %data_dir.display(), entries, sealed, wal_records = wal.records, "rekey complete");
    Ok(report)
}

/// The encryption marker of the state store in `dir`, if it has one.
fn current_marker(dir: &Path) -> Result<Option<String>, RekeyError> {
    let db = open_state(dir, COPY_CACHE_MB)?;
    let value = db
        .get(keys::ENCRYPTION)
        .map_err(|e| RekeyError::State(e.to_string()))?;
    Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Copies every entry of the state store in `src` into a new store in `dst`, re-sealing the
/// sealed values and writing the new encryption marker. Returns (entries, sealed values).
fn copy_state(
    src: &Path,
    dst: &Path,
    from: Option<&Cipher>,
    to: Option<&Cipher>,
) -> Result<(u64, u64), RekeyError> {
    let state = |e: sled::Error| RekeyError::State(e.to_string());
    let source = open_state(src, COPY_CACHE_MB)?;
    let target = open_state(dst, COPY_CACHE_MB)?;
    if target.iter().next().is_some() {
        return Err(RekeyError::Refused(format!(
            "{} is not empty",
            dst.display()
        )));
    }
    let mut entries = 0u64;
    let mut sealed = 0u64;
    for item in source.iter() {
        let (k, v) = item.map_err(state)?;
        if &*k == keys::ENCRYPTION {
            continue;
        }
        let value =
            store::reseal(&k, &v, from, to).map_err(|e| RekeyError::State(e.to_string()))?;
        if store::is_sealed_key(&k) {
            sealed += 1;
        }
        target.insert(k, value).map_err(state)?;
        entries += 1;
    }
    target
        .insert(keys::ENCRYPTION, store::marker(to).as_bytes())
        .map_err(state)?;
    target.flush().map_err(state)?;
    drop(target);
    drop(source);
    sync_dir(dst)?;
    Ok((entries, sealed))
}

/// Moves the complete copy into place (see the module doc); safe to run again after a crash
/// at any point.
fn swap(data_dir: &Path) -> Result<(), RekeyError> {
    let staging = data_dir.join(STAGING_DIR);
    let old = data_dir.join(OLD_DIR);
    std::fs::create_dir_all(&old).map_err(io(format!("creating {}", old.display())))?;
    sync_dir(data_dir)?;
    for part in PARTS {
        let new = staging.join(part);
        if !new.exists() {
            continue; // swapped by the interrupted run
        }
        let current = data_dir.join(part);
        let aside = old.join(part);
        if current.exists() {
            if aside.exists() {
                return Err(RekeyError::Refused(format!(
                    "both {} and {} exist; inspect them by hand",
                    current.display(),
                    aside.display()
                )));
            }
            std::fs::rename(&current, &aside).map_err(io(format!(
                "moving {} to {}",
                current.display(),
                aside.display()
            )))?;
        }
        std::fs::rename(&new, &current).map_err(io(format!(
            "moving {} to {}",
            new.display(),
            current.display()
        )))?;
        sync_dir(data_dir)?;
    }
    std::fs::remove_dir_all(&old).map_err(io(format!("removing {}", old.display())))?;
    sync_dir(data_dir)?;
    std::fs::remove_dir_all(&staging).map_err(io(format!("removing {}", staging.display())))?;
    sync_dir(data_dir)?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), RekeyError> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("syncing directory {}", dir.display())))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
