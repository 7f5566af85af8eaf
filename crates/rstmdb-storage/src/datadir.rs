//! What a data directory holds below the engine, shared by `db` (open), `rekey` and `backup`
//! (restore), which is why it sits below all three: opening its state store, the encryption
//! marker the store records, and the directories an interrupted `rekey` leaves behind.

use crate::crypto::Cipher;
use crate::error::OpenError;
use crate::state::keys;
use crate::store;
use std::path::Path;
use std::time::{Duration, Instant};

/// Directory a rekey builds the new files in.
pub(crate) const STAGING_DIR: &str = "rekey.tmp";
/// Directory the old files are moved into during the swap.
pub(crate) const OLD_DIR: &str = "rekey.old";

/// How long `open` waits for another holder of the state store's lock to let go: sled's
/// I/O threads release it a moment after the last handle of a closed database (or a killed
/// process) is gone. A directory really in use elsewhere still fails after this.
const STATE_LOCK_WAIT: Duration = Duration::from_secs(3);

pub(crate) fn open_state(dir: &Path, cache_capacity_mb: u64) -> Result<sled::Db, OpenError> {
    let deadline = Instant::now() + STATE_LOCK_WAIT;
    loop {
        let result = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity_mb.saturating_mul(1024 * 1024))
            // Flushed only at checkpoints: the WAL is what makes a write durable.
            .flush_every_ms(None)
            .open();
        match result {
            Ok(db) => return Ok(db),
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(OpenError::State {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Refuses to open a data directory that a rekey is in the middle of.
pub(crate) fn refuse_interrupted(data_dir: &Path) -> Result<(), OpenError> {
    for name in [STAGING_DIR, OLD_DIR] {
        let path = data_dir.join(name);
        if path.exists() {
            return Err(OpenError::Encryption(format!(
                "{} is left from an interrupted `rstmdb rekey`: run the same `rstmdb rekey` \
                 command again to finish it before starting the server",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Compares the state store's encryption marker with the configured key. A store without a
/// marker that holds data predates the marker and is plaintext; an empty one is new, and
/// `true` says its marker is still to be written.
pub(crate) fn check_encryption_marker(
    db: &sled::Db,
    cipher: Option<&Cipher>,
    data_dir: &Path,
) -> Result<bool, OpenError> {
    let state = |source| OpenError::State {
        path: data_dir.join("state"),
        source,
    };
    let want = cipher.map(|c| c.key_id().to_string());
    let found = match db.get(keys::ENCRYPTION).map_err(state)? {
        Some(v) => store::parse_marker(&v).map_err(OpenError::CorruptState)?,
        None if db.iter().next().is_some() => None,
        None => return Ok(true),
    };
    let dir = data_dir.display();
    match (found, want) {
        (found, want) if found == want => Ok(false),
        (None, Some(want)) => Err(OpenError::Encryption(format!(
            "data directory {dir} is not encrypted but an encryption key is configured (key id \
             {want}); encrypt it with `rstmdb rekey --data-dir {dir} --new-key-file <key>` \
             (offline), or remove storage.encryption.key_file"
        ))),
        (Some(found), None) => Err(OpenError::Encryption(format!(
            "data directory {dir} is encrypted (key id {found}) but no encryption key is \
             configured: set storage.encryption.key_file"
        ))),
        (Some(found), Some(want)) => Err(OpenError::Encryption(format!(
            "data directory {dir} is encrypted with a different key (key id {found}; the \
             configured key file holds key id {want})"
        ))),
        (None, None) => Ok(false),
    }
}

/// Records the encryption setting in a new state store (see [`check_encryption_marker`]),
/// durably. Called only once the log has accepted the key (or its absence): a new state store
/// next to an existing log must not record a setting the log contradicts.
pub(crate) fn write_encryption_marker(
    db: &sled::Db,
    cipher: Option<&Cipher>,
    state_dir: &Path,
) -> Result<(), OpenError> {
    let state = |source| OpenError::State {
        path: state_dir.to_path_buf(),
        source,
    };
    db.insert(keys::ENCRYPTION, store::marker(cipher).as_bytes())
        .map_err(state)?;
    db.flush().map_err(state)?;
    Ok(())
}
