//! Offline repair: cut the log at its first invalid record, keeping the damaged data aside.
//!
//! Order of operations, chosen so that a crash in the middle leaves a log that the next
//! `repair` run handles the same way (the invalid record stays in place until the very end):
//! 1. copy the damaged segment into `damaged/`;
//! 2. move every later segment into `damaged/`, newest first (so what remains is always a
//!    prefix of the log);
//! 3. truncate the damaged segment at the invalid record and fsync it.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::WalError;
use super::format::Expect;
use super::segment::{ListedSegment, list_segments, lock_dir, scan_segment, sync_dir};
use super::shared::IoStats;

/// Sub-directory of the WAL directory that receives damaged data.
const DAMAGED_DIR: &str = "damaged";
/// Bound on the numbered names tried for a copy in `damaged/`.
const MAX_DAMAGED_COPIES: u32 = 10_000;

/// What [`repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    pub dir: PathBuf,
    /// `None` when the log was clean and nothing was changed.
    pub damage: Option<RepairedDamage>,
    /// Segment files left in the log.
    pub segments: usize,
    /// The seq the log now ends at (the next record gets `last_seq + 1`); 0 when empty.
    pub last_seq: u64,
}

/// The first invalid record found and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairedDamage {
    /// Segment holding the first invalid record.
    pub segment: PathBuf,
    pub file_offset: u64,
    /// Seq the record should have had.
    pub seq: Option<u64>,
    pub reason: String,
    /// The damaged segment as it was, in `damaged/`.
    pub saved_as: PathBuf,
    /// True if the segment was cut at `file_offset`; false if it was moved away whole (its
    /// name itself was inconsistent with the segment before it).
    pub truncated: bool,
    /// Later segments moved into `damaged/` (they cannot be replayed past the hole).
    pub moved: Vec<MovedSegment>,
    /// Bytes taken out of the live log (cut off plus moved).
    pub bytes_removed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedSegment {
    pub from: PathBuf,
    pub to: PathBuf,
}

impl RepairReport {
    /// True when the log was clean.
    pub fn is_clean(&self) -> bool {
        self.damage.is_none()
    }
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(d) = &self.damage else {
            return write!(
                f,
                "WAL in {} is clean, nothing to repair ({} segment(s), last seq {})",
                self.dir.display(),
                self.segments,
                self.last_seq
            );
        };
        writeln!(
            f,
            "WAL in {}: invalid record in {} at file offset {}{}: {}",
            self.dir.display(),
            d.segment.display(),
            d.file_offset,
            d.seq.map(|s| format!(" (seq {s})")).unwrap_or_default(),
            d.reason
        )?;
        if d.truncated {
            writeln!(
                f,
                "  saved a copy of the segment as {}",
                d.saved_as.display()
            )?;
            writeln!(
                f,
                "  truncated {} to {} bytes",
                d.segment.display(),
                d.file_offset
            )?;
        } else {
            writeln!(f, "  moved the segment to {}", d.saved_as.display())?;
        }
        if !d.moved.is_empty() {
            writeln!(f, "  moved {} later segment(s) aside:", d.moved.len())?;
            for m in &d.moved {
                writeln!(f, "    {} -> {}", m.from.display(), m.to.display())?;
            }
        }
        write!(
            f,
            "  removed {} bytes from the log, which now ends at seq {} ({} segment(s))",
            d.bytes_removed, self.last_seq, self.segments
        )
    }
}

/// The first problem in the log, in log order.
#[derive(Debug)]
struct Finding {
    /// Index in the listing of the segment that is cut (or moved whole).
    index: usize,
    offset: u64,
    seq: Option<u64>,
    reason: String,
    move_whole: bool,
    /// Where the log ends once the problem is cut away.
    last_seq: u64,
}

/// Offline repair of the WAL in `dir` (the server must not be running: the directory lock is
/// taken). Finds the first invalid record anywhere — a bad record, a torn tail, an empty
/// segment in the middle, a segment whose name overlaps the previous one — copies the segment
/// holding it into `dir/damaged/` (original name plus a `.damaged` suffix), moves every later
/// segment there too, and truncates the original at the bad record. A clean log is left as is.
pub fn repair(dir: &Path) -> Result<RepairReport, WalError> {
    if !dir.is_dir() {
        return Ok(RepairReport {
            dir: dir.to_path_buf(),
            damage: None,
            segments: 0,
            last_seq: 0,
        });
    }
    let _lock = lock_dir(dir)?;
    let stats = Arc::new(IoStats::default());
    let listed = list_segments(dir)?;
    let (finding, clean_last_seq) = find_first_problem(&listed, &stats)?;
    let Some(finding) = finding else {
        return Ok(RepairReport {
            dir: dir.to_path_buf(),
            damage: None,
            segments: listed.len(),
            last_seq: clean_last_seq,
        });
    };
    let Some(bad) = listed.get(finding.index) else {
        return Err(WalError::InvalidArgument {
            reason: "internal: repair finding outside the listing".into(),
        });
    };
    let later = listed.get(finding.index + 1..).unwrap_or_default();

    let damaged_dir = dir.join(DAMAGED_DIR);
    fs::create_dir_all(&damaged_dir)
        .map_err(|e| WalError::io("creating directory", &damaged_dir, e))?;
    let mut bytes_removed = 0u64;

    // 1. Keep the damaged segment as it is.
    let saved_as = damaged_name(&damaged_dir, &bad.path)?;
    if !finding.move_whole {
        fs::copy(&bad.path, &saved_as)
            .map_err(|e| WalError::io("copying damaged WAL segment to", &saved_as, e))?;
        File::open(&saved_as)
            .and_then(|f| f.sync_all())
            .map_err(|e| WalError::io("syncing", &saved_as, e))?;
    }
    // 2. Move later segments aside, newest first.
    let mut moved = Vec::with_capacity(later.len());
    for seg in later.iter().rev() {
        let to = damaged_name(&damaged_dir, &seg.path)?;
        fs::rename(&seg.path, &to)
            .map_err(|e| WalError::io("moving WAL segment into damaged/", &seg.path, e))?;
        bytes_removed += seg.len;
        moved.push(MovedSegment {
            from: seg.path.clone(),
            to,
        });
    }
    moved.reverse();
    // 3. Cut the damaged segment.
    if finding.move_whole {
        fs::rename(&bad.path, &saved_as)
            .map_err(|e| WalError::io("moving WAL segment into damaged/", &bad.path, e))?;
        bytes_removed += bad.len;
    } else {
        let file = OpenOptions::new()
            .write(true)
            .open(&bad.path)
            .map_err(|e| WalError::io("opening WAL segment to truncate it", &bad.path, e))?;
        file.set_len(finding.offset)
            .and_then(|()| file.sync_all())
            .map_err(|e| WalError::io("truncating WAL segment", &bad.path, e))?;
        bytes_removed += bad.len.saturating_sub(finding.offset);
    }
    sync_dir(&damaged_dir).map_err(|e| WalError::io("syncing directory", &damaged_dir, e))?;
    sync_dir(dir).map_err(|e| WalError::io("syncing directory", dir, e))?;

    let segments = finding.index + usize::from(!finding.move_whole);
    let report = RepairReport {
        dir: dir.to_path_buf(),
        damage: Some(RepairedDamage {
            segment: bad.path.clone(),
            file_offset: finding.offset,
            seq: finding.seq,
            reason: finding.reason,
            saved_as,
            truncated: !finding.move_whole,
            moved,
            bytes_removed,
        }),
        segments,
        last_seq: finding.last_seq,
    };
    tracing::warn!(
        segment = %bad.path.display(),
        file_offset = finding.offset,
        bytes_removed,
        moved_segments = later.len(),
        last_seq = report.last_seq,
        "repaired WAL: cut at the first invalid record, damaged data kept in damaged/"
    );
    Ok(report)
}

/// Scans every segment in order. Returns the first problem (if any) and, for a clean log,
/// the seq it ends at.
fn find_first_problem(
    listed: &[ListedSegment],
    stats: &Arc<IoStats>,
) -> Result<(Option<Finding>, u64), WalError> {
    // (first_seq, last_seq) of the previous segment; `last_seq` None when it was empty.
    let mut prev: Option<(u64, Option<u64>)> = None;
    let mut ends_at = 0u64;
    for (index, seg) in listed.iter().enumerate() {
        match prev {
            Some((prev_first, None)) => {
                // An empty segment with later segments: cut "at" its start, which keeps it
                // (empty, as the new last segment) and moves the later ones aside.
                return Ok((
                    Some(Finding {
                        index: index - 1,
                        offset: 0,
                        seq: Some(prev_first),
                        reason: "empty segment followed by a later segment".into(),
                        move_whole: false,
                        last_seq: ends_at,
                    }),
                    0,
                ));
            }
            Some((_, Some(prev_last))) if seg.first_seq <= prev_last => {
                return Ok((
                    Some(Finding {
                        index,
                        offset: 0,
                        seq: Some(seg.first_seq),
                        reason: format!(
                            "segment name says it starts at seq {} but the previous segment \
                             already ends at seq {prev_last}",
                            seg.first_seq
                        ),
                        move_whole: true,
                        last_seq: ends_at,
                    }),
                    0,
                ));
            }
            _ => {}
        }
        let scan = scan_segment(&seg.path, seg.first_seq, stats, &Expect::Any)?;
        let last_here = scan.last_seq.unwrap_or(seg.first_seq - 1);
        if let Some(bad) = scan.invalid {
            return Ok((
                Some(Finding {
                    index,
                    offset: bad.offset,
                    seq: Some(bad.seq),
                    reason: bad.reason,
                    move_whole: false,
                    last_seq: last_here,
                }),
                0,
            ));
        }
        ends_at = last_here;
        prev = Some((seg.first_seq, scan.last_seq));
    }
    Ok((None, ends_at))
}

/// A free name in `damaged_dir` for a copy of `segment`: `<name>.damaged`, then
/// `<name>.damaged.2`, `.3`, ...
fn damaged_name(damaged_dir: &Path, segment: &Path) -> Result<PathBuf, WalError> {
    let name = segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in 1..=MAX_DAMAGED_COPIES {
        let candidate = if n == 1 {
            damaged_dir.join(format!("{name}.damaged"))
        } else {
            damaged_dir.join(format!("{name}.damaged.{n}"))
        };
        if !candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(WalError::InvalidArgument {
        reason: format!(
            "{} already holds {MAX_DAMAGED_COPIES} copies of {name}; clean it up first",
            damaged_dir.display()
        ),
    })
}
