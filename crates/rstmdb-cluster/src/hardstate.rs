//! The raft state that is not in the WAL: the vote, the purge point, and an entry at index 0
//! (which the WAL, whose offsets start at 1, cannot hold; only openraft's `initialize` and
//! its storage test suite write one).
//!
//! One small file, `raft/hardstate`, with two slots. Each save writes the slot the last save
//! did not use — magic, generation, length, CRC-32C, JSON — with one positioned write and an
//! fdatasync, so a crash mid-write damages at most the slot being written and the other
//! still holds the previous state. Loading takes the valid slot with the higher generation.
//! openraft requires the vote to be durable before it is answered: `save` returns only after
//! the sync.

use crate::types::{NodeId, TypeConfig};
use openraft::{Entry, LogId, Vote};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"RHST";
/// Bytes per slot: the header and the JSON document must fit.
const SLOT_BYTES: u64 = 1 << 20;
const HEADER_BYTES: usize = 4 + 8 + 4 + 4;

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HardState {
    pub vote: Option<Vote<NodeId>>,
    /// Every log entry at or below it is gone (or may be).
    pub purged: Option<LogId<NodeId>>,
    pub entry0: Option<Entry<TypeConfig>>,
}

/// Errors reading or writing the file.
#[derive(Debug, thiserror::Error)]
pub enum HardStateError {
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The open file and the state it holds.
#[derive(Debug)]
pub struct HardStateFile {
    path: PathBuf,
    file: File,
    generation: u64,
    state: HardState,
}

impl HardStateFile {
    /// Opens (or creates, empty) `dir/hardstate`.
    pub fn open(dir: &Path) -> Result<HardStateFile, HardStateError> {
        let path = dir.join("hardstate");
        let existed = path.exists();
        let file = open_rw(dir, &path)?;
        if !existed {
            // The file's name must survive a crash before anything in it matters.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| HardStateError::Io {
                    context: "syncing directory",
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let mut best: Option<(u64, HardState)> = None;
        let mut damaged = 0;
        for slot in 0..2 {
            match read_slot(&file, slot) {
                Ok(Some((generation, state))) => {
                    if best.as_ref().is_none_or(|(g, _)| generation > *g) {
                        best = Some((generation, state));
                    }
                }
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(path = %path.display(), slot, %reason, "damaged hard-state slot ignored (the other slot holds the previous state)");
                    damaged += 1;
                }
            }
        }
        if best.is_none() && damaged > 0 {
            return Err(HardStateError::Corrupt {
                path,
                reason: "both slots are damaged: the vote cannot be recovered; restore this \
                         node from a backup or rejoin it under a new node id"
                    .into(),
            });
        }
        let (generation, state) = best.unwrap_or_default();
        Ok(HardStateFile {
            path,
            file,
            generation,
            state,
        })
    }

    pub fn state(&self) -> &HardState {
        &self.state
    }

    /// Replaces the state; durable when it returns.
    pub fn save(&mut self, state: HardState) -> Result<(), HardStateError> {
        let json = serde_json::to_vec(&state).map_err(|e| HardStateError::Corrupt {
            path: self.path.clone(),
            reason: format!("encoding: {e}"),
        })?;
        if (json.len() + HEADER_BYTES) as u64 > SLOT_BYTES {
            return Err(HardStateError::Corrupt {
                path: self.path.clone(),
                reason: format!("the hard state is {} bytes, over the slot size", json.len()),
            });
        }
        let generation = self.generation + 1;
        let mut buf = Vec::with_capacity(HEADER_BYTES + json.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&generation.to_le_bytes());
        buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[4..16]), &json);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&json);
        let io = |context, source| HardStateError::Io {
            context,
            path: self.path.clone(),
            source,
        };
        self.file
            .write_all_at(&buf, (generation % 2) * SLOT_BYTES)
            .map_err(|e| io("writing", e))?;
        self.file.sync_data().map_err(|e| io("syncing", e))?;
        self.generation = generation;
        self.state = state;
        Ok(())
    }
}

/// The last committed log id this node knew of, in `raft/committed`: written without a sync
/// (openraft saves it often; `save_committed` may be lazy). A lost or torn write only makes
/// recovery replay less of the log itself and leave the rest to raft, which is safe because
/// every record up to a committed index is durable in the WAL before it is acknowledged;
/// the CRC tells a torn write from a value.
#[derive(Debug)]
pub struct CommittedFile {
    path: PathBuf,
    file: File,
}

const COMMITTED_BYTES: usize = 20;

impl CommittedFile {
    pub fn open(dir: &Path) -> Result<CommittedFile, HardStateError> {
        let path = dir.join("committed");
        let file = open_rw(dir, &path)?;
        Ok(CommittedFile { path, file })
    }

    /// The saved `(index, term)`, `None` when never saved or unreadable.
    pub fn load(&self) -> Option<(u64, u64)> {
        let mut buf = [0u8; COMMITTED_BYTES];
        self.file.read_exact_at(&mut buf, 0).ok()?;
        let crc = u32::from_le_bytes(buf[16..20].try_into().ok()?);
        if crc32c::crc32c(&buf[..16]) != crc || buf.iter().all(|b| *b == 0) {
            return None;
        }
        let index = u64::from_le_bytes(buf[0..8].try_into().ok()?);
        let term = u64::from_le_bytes(buf[8..16].try_into().ok()?);
        Some((index, term))
    }

    /// Records `(index, term)` (not synced; see the type's docs).
    pub fn save(&self, index: u64, term: u64) -> Result<(), HardStateError> {
        let mut buf = [0u8; COMMITTED_BYTES];
        buf[0..8].copy_from_slice(&index.to_le_bytes());
        buf[8..16].copy_from_slice(&term.to_le_bytes());
        let crc = crc32c::crc32c(&buf[..16]);
        buf[16..20].copy_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(&buf, 0)
            .map_err(|source| HardStateError::Io {
                context: "writing",
                path: self.path.clone(),
                source,
            })
    }
}

/// Creates `dir` if needed and opens `path` in it for reading and writing (created empty).
fn open_rw(dir: &Path, path: &Path) -> Result<File, HardStateError> {
    std::fs::create_dir_all(dir).map_err(|source| HardStateError::Io {
        context: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| HardStateError::Io {
            context: "opening",
            path: path.to_path_buf(),
            source,
        })
}

/// One slot: `None` when it was never written.
fn read_slot(file: &File, slot: u64) -> Result<Option<(u64, HardState)>, String> {
    let mut header = [0u8; HEADER_BYTES];
    match file.read_exact_at(&mut header, slot * SLOT_BYTES) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(format!("reading: {e}")),
    }
    if header.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    if &header[0..4] != MAGIC {
        return Err("bad magic".into());
    }
    let generation = u64::from_le_bytes(header[4..12].try_into().map_err(|_| "header")?);
    let len = u32::from_le_bytes(header[12..16].try_into().map_err(|_| "header")?) as usize;
    let crc = u32::from_le_bytes(header[16..20].try_into().map_err(|_| "header")?);
    if (len + HEADER_BYTES) as u64 > SLOT_BYTES {
        return Err(format!("length {len} is over the slot size"));
    }
    let mut json = vec![0u8; len];
    file.read_exact_at(&mut json, slot * SLOT_BYTES + HEADER_BYTES as u64)
        .map_err(|e| format!("reading {len} bytes: {e}"))?;
    if crc32c::crc32c_append(crc32c::crc32c(&header[4..16]), &json) != crc {
        return Err("checksum mismatch (torn write?)".into());
    }
    let state = serde_json::from_slice(&json).map_err(|e| format!("undecodable: {e}"))?;
    Ok(Some((generation, state)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use openraft::CommittedLeaderId;

    fn vote(term: u64, node: u64) -> Vote<NodeId> {
        Vote::new(term, node)
    }

    #[test]
    fn saves_survive_reopen_and_alternate_slots() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = HardStateFile::open(dir.path()).unwrap();
        assert_eq!(f.state(), &HardState::default());
        for term in 1..=5 {
            f.save(HardState {
                vote: Some(vote(term, 2)),
                ..HardState::default()
            })
            .unwrap();
        }
        drop(f);
        let f = HardStateFile::open(dir.path()).unwrap();
        assert_eq!(f.state().vote, Some(vote(5, 2)));
    }

    #[test]
    fn a_torn_newest_slot_falls_back_to_the_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = HardStateFile::open(dir.path()).unwrap();
        f.save(HardState {
            vote: Some(vote(3, 1)),
            ..HardState::default()
        })
        .unwrap();
        f.save(HardState {
            vote: Some(vote(4, 1)),
            purged: Some(openraft::LogId::new(CommittedLeaderId::new(4, 0), 9)),
            entry0: None,
        })
        .unwrap();
        drop(f);
        // Generation 2 lives in slot 0: flip a byte of its JSON.
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join("hardstate"))
            .unwrap();
        file.write_all_at(b"X", HEADER_BYTES as u64 + 3).unwrap();
        let f = HardStateFile::open(dir.path()).unwrap();
        assert_eq!(f.state().vote, Some(vote(3, 1)));
        assert_eq!(f.state().purged, None);
    }

    #[test]
    fn committed_round_trips_and_a_torn_value_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let f = CommittedFile::open(dir.path()).unwrap();
        assert_eq!(f.load(), None);
        f.save(41, 3).unwrap();
        f.save(42, 3).unwrap();
        assert_eq!(
            CommittedFile::open(dir.path()).unwrap().load(),
            Some((42, 3))
        );
        let raw = OpenOptions::new()
            .write(true)
            .open(dir.path().join("committed"))
            .unwrap();
        raw.write_all_at(&[9], 2).unwrap();
        assert_eq!(CommittedFile::open(dir.path()).unwrap().load(), None);
    }

    #[test]
    fn both_slots_damaged_is_an_error_not_an_empty_vote() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = HardStateFile::open(dir.path()).unwrap();
        for term in 1..=2 {
            f.save(HardState {
                vote: Some(vote(term, 1)),
                ..HardState::default()
            })
            .unwrap();
        }
        drop(f);
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join("hardstate"))
            .unwrap();
        file.write_all_at(b"X", HEADER_BYTES as u64 + 3).unwrap();
        file.write_all_at(b"X", SLOT_BYTES + HEADER_BYTES as u64 + 3)
            .unwrap();
        let err = HardStateFile::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("both slots are damaged"), "{err}");
    }
}
