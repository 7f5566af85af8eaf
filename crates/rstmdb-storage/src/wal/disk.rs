//! Every file-system call of the writer that changes the log goes through [`Disk`], which
//! counts it and can be told to fail it ([`FaultPlan`]) so tests can exercise the error paths:
//! a full disk in the middle of a write, a failing fsync, a failing truncate or removal.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::WalError;
use super::segment::sync_dir;
use super::shared::IoStats;

/// Faults to inject into the writer's next file-system calls. For tests of the error paths
/// (see [`super::Wal::set_fault`]); the default plan injects nothing. Each fault fires once
/// per count and is then used up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// A segment write stores only its first `n` bytes, then fails as a full disk would.
    pub fail_write_after_bytes: Option<usize>,
    /// How many segment writes succeed before the one that fails (0: the next one fails).
    pub writes_before_failure: u32,
    /// The next `n` fsync / fdatasync calls (segment files and the directory) fail.
    pub failing_syncs: u32,
    /// The next `n` truncations of a segment file fail.
    pub failing_truncates: u32,
    /// The next `n` removals of a segment file (by [`super::Wal::truncate_from`]) fail.
    pub failing_removes: u32,
    /// Every fdatasync of a segment first sleeps this long (a slow disk). Unlike the other
    /// faults it stays in force until the plan is replaced.
    pub sync_delay: Option<std::time::Duration>,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

#[derive(Debug)]
pub(crate) struct Disk {
    dir: PathBuf,
    faults: FaultPlan,
    stats: Arc<IoStats>,
}

impl Disk {
    pub fn new(dir: PathBuf, stats: Arc<IoStats>) -> Self {
        Disk {
            dir,
            faults: FaultPlan::default(),
            stats,
        }
    }

    pub fn set_faults(&mut self, plan: FaultPlan) {
        self.faults = plan;
    }

    /// Appends `buf` to `file` with one `write_all`.
    pub fn write(&mut self, file: &mut File, path: &Path, buf: &[u8]) -> Result<(), WalError> {
        let err = |e| WalError::io("writing WAL segment", path, e);
        if self.faults.fail_write_after_bytes.is_some() && self.faults.writes_before_failure > 0 {
            self.faults.writes_before_failure -= 1;
        } else if let Some(n) = self.faults.fail_write_after_bytes.take() {
            let n = n.min(buf.len());
            file.write_all(&buf[..n]).map_err(err)?;
            IoStats::add(&self.stats.bytes_written, n as u64);
            return Err(err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "injected fault: write stopped after {n} of {} bytes",
                    buf.len()
                ),
            )));
        }
        file.write_all(buf).map_err(err)?;
        IoStats::add(&self.stats.writes, 1);
        IoStats::add(&self.stats.bytes_written, buf.len() as u64);
        Ok(())
    }

    /// fdatasync `file`.
    pub fn sync_data(&mut self, file: &File, path: &Path) -> Result<(), WalError> {
        IoStats::add(&self.stats.fsyncs, 1);
        if let Some(d) = self.faults.sync_delay {
            std::thread::sleep(d);
        }
        let result = if self.faults.failing_syncs > 0 {
            self.faults.failing_syncs -= 1;
            Err(injected("fdatasync"))
        } else {
            file.sync_data()
        };
        result.map_err(|e| WalError::io("fdatasync of WAL segment", path, e))
    }

    /// fsync the WAL directory (new, renamed or removed segment names become durable).
    pub fn sync_dir(&mut self) -> Result<(), WalError> {
        IoStats::add(&self.stats.fsyncs, 1);
        let result = if self.faults.failing_syncs > 0 {
            self.faults.failing_syncs -= 1;
            Err(injected("directory fsync"))
        } else {
            sync_dir(&self.dir)
        };
        result.map_err(|e| WalError::io("fsync of WAL directory", &self.dir, e))
    }

    /// Cuts `file` to `len` bytes.
    pub fn truncate(&mut self, file: &File, path: &Path, len: u64) -> Result<(), WalError> {
        let result = if self.faults.failing_truncates > 0 {
            self.faults.failing_truncates -= 1;
            Err(injected("truncate"))
        } else {
            file.set_len(len)
        };
        result.map_err(|e| WalError::io(&format!("truncating to {len} bytes WAL segment"), path, e))
    }

    /// Removes the segment file `path`.
    pub fn remove_file(&mut self, path: &Path) -> Result<(), WalError> {
        let result = if self.faults.failing_removes > 0 {
            self.faults.failing_removes -= 1;
            Err(injected("remove"))
        } else {
            std::fs::remove_file(path)
        };
        result.map_err(|e| WalError::io("removing WAL segment", path, e))
    }
}
