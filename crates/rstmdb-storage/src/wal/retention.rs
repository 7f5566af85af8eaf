//! Retention: the segment list, and removing (after archiving, when an archive is configured)
//! segments a checkpoint no longer needs.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::error::WalError;
use super::shared::SegmentMeta;
use super::writer::Wal;

/// One segment file, for retention decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub first_seq: u64,
    /// Highest seq the segment holds, 0 when it holds none. For a segment not read since open
    /// (below `verify_from`) this is the bound derived from the next segment's name.
    pub last_seq: u64,
    pub size_bytes: u64,
}

impl Wal {
    /// The segment files, oldest first (the last one is being appended to).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let table = self.shared.segments();
        table
            .iter()
            .enumerate()
            .map(|(i, m)| SegmentInfo {
                path: m.path.clone(),
                first_seq: m.first_seq,
                last_seq: m
                    .last_seq_bound(table.get(i + 1).map(|n| n.first_seq))
                    .unwrap_or(0),
                size_bytes: m.len,
            })
            .collect()
    }

    /// Deletes whole segments all of whose records have seq < `below`, oldest first, never the
    /// active one, then fsyncs the directory. Returns (segments deleted, bytes deleted).
    /// Readers positioned in a deleted range continue at the earliest remaining seq.
    pub fn remove_segments_below(&mut self, below: u64) -> Result<(u64, u64), WalError> {
        let doomed: Vec<SegmentMeta> = {
            let mut table = self.shared.segments_mut();
            let mut n = 0;
            // `n + 1 < len`: the last segment is the active one and is never removed.
            while n + 1 < table.len() {
                let next_first = table.get(n + 1).map(|m| m.first_seq);
                let removable = table
                    .get(n)
                    .and_then(|m| m.last_seq_bound(next_first))
                    .is_none_or(|last| last < below);
                if !removable {
                    break;
                }
                n += 1;
            }
            // Out of the table first, so no new reader picks them; readers that already
            // opened one keep reading it (unlinking an open file is fine).
            table.drain(..n).collect()
        };
        let mut removed = 0u64;
        let mut bytes = 0u64;
        for (k, meta) in doomed.iter().enumerate() {
            if let Some(archive) = &self.opts.archive_dir
                && let Err(e) = archive_segment(&meta.path, archive)
            {
                // Not archived, so not deleted: this and the newer doomed segments go back.
                self.shared
                    .stats
                    .archive_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(segment = %meta.path.display(), archive = %archive.display(), error = %e, "archiving a WAL segment failed; keeping it");
                let mut table = self.shared.segments_mut();
                let keep = doomed.get(k..).unwrap_or_default();
                table.splice(0..0, keep.iter().cloned());
                break;
            }
            match fs::remove_file(&meta.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let mut table = self.shared.segments_mut();
                    let keep = doomed.get(k..).unwrap_or_default();
                    table.splice(0..0, keep.iter().cloned());
                    return Err(WalError::io("removing WAL segment", &meta.path, e));
                }
            }
            removed += 1;
            bytes += meta.len;
        }
        if removed > 0 {
            self.disk.sync_dir()?;
            tracing::info!(segments = removed, bytes, below, "removed old WAL segments");
        }
        Ok((removed, bytes))
    }
}

/// Copies a sealed segment into `archive` under its own name: to a temporary name, fsync,
/// rename, fsync the directory. An archive copy of the same length is taken as done (a
/// checkpoint that failed after archiving retries).
fn archive_segment(path: &Path, archive: &Path) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("segment path has no file name"))?;
    // The archive holds every record in the log: owner-only, whatever the umask (an existing
    // directory keeps the mode its operator gave it).
    if !archive.is_dir() {
        let mut dir = fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(archive)?;
    }
    let dest = archive.join(name);
    let len = fs::metadata(path)?.len();
    if fs::metadata(&dest).is_ok_and(|m| m.len() == len) {
        return Ok(());
    }
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = archive.join(tmp_name);
    fs::copy(path, &tmp)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    }
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, &dest)?;
    crate::wal::segment::sync_dir(archive)
}
