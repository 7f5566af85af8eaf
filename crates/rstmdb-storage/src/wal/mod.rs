//! The write-ahead log: segment files of checksummed, sequence-numbered records.
//!
//! The byte layout, the torn-tail rules and the durability contract are written down in
//! `docs/wal-format.md`; this module is that document in code.
//!
//! - [`Wal`] is the writer. One thread owns it: [`Wal::append`] writes records (one `write(2)`
//!   per segment touched), [`Wal::sync`] makes them durable, [`Wal::publish`] lets readers see
//!   them. Any failure rolls the files back so a later append never lands after half a record.
//!   For the raft log: [`Wal::append_with_terms`] appends records with their term (record
//!   version 2) at a given seq, and [`Wal::truncate_from`] cuts the unpublished suffix.
//! - [`WalReader`] is a cheap, shareable handle for readers (WAL_READ, watchers, recovery
//!   replay). It never returns a record above the published sequence number — except
//!   [`WalReader::read_unpublished`] and [`WalReader::term_of`], for the raft log — and never
//!   returns a record whose CRC does not match.
//! - [`repair`] is the offline tool behind `rstmdb repair`: it cuts the log at its first invalid
//!   record after saving the damaged data aside.
//!
//! Layout of the code: `format` (record header), `index` (sparse seq → offset index),
//! `segment` (file names, listing, scanning), `shared` (state shared by writer and readers),
//! `disk` (every mutating file-system call, with fault injection), `writer`, `reader`,
//! `repair`, `rewrite` (copying the log under another key, for `rstmdb rekey`), `truncate`
//! (cutting the unpublished suffix, for the raft log).

mod disk;
mod error;
mod format;
mod index;
mod open;
mod reader;
mod repair;
mod retention;
mod rewrite;
pub(crate) mod segment;
mod shared;
mod truncate;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use crate::crypto::{Cipher, SEAL_OVERHEAD};

pub use disk::FaultPlan;
pub use error::WalError;
pub use format::{
    FLAG_ENCRYPTED, MAX_PAYLOAD_BYTES_LIMIT, RECORD_HEADER_BYTES, RECORD_HEADER_V2_BYTES,
    RECORD_MAGIC, RECORD_VERSION, RECORD_VERSION_V2,
};
pub use open::{OpenReport, TornTail};
pub use reader::{WalIter, WalReader, WalRecord};
pub use repair::{MovedSegment, RepairReport, RepairedDamage, repair};
pub use retention::SegmentInfo;
pub use rewrite::{RewriteReport, rewrite};
pub use writer::{Wal, WalPublisher, WalStats};

/// Default size at which the writer starts a new segment: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE_BYTES: u64 = 64 * 1024 * 1024;
/// Default largest payload [`Wal::append`] accepts: 32 MiB.
pub const DEFAULT_MAX_RECORD_BYTES: u32 = 32 * 1024 * 1024;

/// Where the log lives and its size limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// Directory holding the segment files (created if missing).
    pub dir: PathBuf,
    /// A new segment is started before a record that would make the current one larger than
    /// this. A single record larger than this still goes, alone, into a fresh segment.
    pub segment_size_bytes: u64,
    /// Largest payload accepted by [`Wal::append`]. Readers accept anything up to
    /// [`MAX_PAYLOAD_BYTES_LIMIT`], so lowering this never makes old records unreadable.
    /// With encryption it bounds the plaintext; the stored payload is 32 bytes larger.
    pub max_record_bytes: u32,
    /// Encryption at rest: with a cipher every record is written sealed and every record read
    /// must be sealed with this key; without one every record must be plaintext. A mismatch
    /// is [`WalError::Encryption`], never a torn tail.
    pub cipher: Option<Arc<Cipher>>,
    /// When set, a segment is copied here (file and directory fsynced) before a checkpoint
    /// deletes it; a segment whose copy fails is kept. For point-in-time recovery.
    pub archive_dir: Option<PathBuf>,
}

impl WalOptions {
    /// Options for `dir` with the default limits.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalOptions {
            dir: dir.into(),
            segment_size_bytes: DEFAULT_SEGMENT_SIZE_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            cipher: None,
            archive_dir: None,
        }
    }

    fn validate(&self) -> Result<(), WalError> {
        if self.segment_size_bytes == 0 {
            return Err(WalError::InvalidArgument {
                reason: "segment_size_bytes must be at least 1".into(),
            });
        }
        let overhead = if self.cipher.is_some() {
            SEAL_OVERHEAD as u32
        } else {
            0
        };
        if self.max_record_bytes.saturating_add(overhead) > MAX_PAYLOAD_BYTES_LIMIT {
            return Err(WalError::InvalidArgument {
                reason: format!(
                    "max_record_bytes {} exceeds the format limit {MAX_PAYLOAD_BYTES_LIMIT}",
                    self.max_record_bytes
                ),
            });
        }
        Ok(())
    }
}

/// What [`scan_segment_image`] found in a segment image.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageScan {
    /// Records found valid, from the start of the image.
    pub records: u64,
    /// Bytes covered by those records; recovery would cut the file here.
    pub valid_len: u64,
    /// Why the scan stopped before the end of the image, if it did.
    pub invalid: Option<String>,
    /// Whether that stop is certain corruption (CRC fine, a field wrong) rather than a tail
    /// a torn write could leave.
    pub definite: bool,
}

/// Validates an in-memory copy of a segment file whose first record should carry `first_seq`,
/// with the same code recovery runs on the file, and hands every valid record's seq,
/// term (0 for a version 1 record) and payload to `on_record`. Not part of the stable API: it
/// exists so the fuzz targets (`fuzz/`) reach the record decoder without touching the disk.
#[doc(hidden)]
pub fn scan_segment_image(
    image: &[u8],
    first_seq: u64,
    on_record: impl FnMut(u64, u64, &[u8]),
) -> ImageScan {
    let mut on_record = on_record;
    scan_image(image, first_seq, &format::Expect::Any, |seq, h, p| {
        on_record(seq, h.term, p)
    })
}

/// [`scan_segment_image`] for an archived segment that an offline restore replays: with
/// `cipher` every record must be sealed with that key and `on_record` gets it decrypted;
/// without, every record must be plaintext. A record that is not as expected (or does not
/// decrypt) is a definite stop, reported in [`ImageScan::invalid`].
pub(crate) fn scan_archived_segment_image(
    image: &[u8],
    first_seq: u64,
    cipher: Option<&Arc<Cipher>>,
    mut on_record: impl FnMut(u64, &[u8]),
) -> ImageScan {
    let expect = format::Expect::of(cipher);
    let mut failed: Option<(u64, String)> = None;
    let mut scan = scan_image(image, first_seq, &expect, |seq, h, payload| {
        if failed.is_some() {
            return;
        }
        match expect.open(h, payload.to_vec()) {
            Ok(plain) => on_record(seq, &plain),
            Err(why) => failed = Some((seq, why)),
        }
    });
    if let Some((seq, why)) = failed {
        scan.invalid = Some(format!("record {seq} cannot be decrypted: {why}"));
        scan.definite = true;
    }
    scan
}

fn scan_image(
    image: &[u8],
    first_seq: u64,
    expect: &format::Expect,
    mut on_record: impl FnMut(u64, &format::RecordHeader, &[u8]),
) -> ImageScan {
    let scan = match segment::scan_records(image, image.len() as u64, first_seq, expect, |h, p| {
        on_record(h.seq, h, p)
    }) {
        Ok(scan) => scan,
        // Reading a slice of exactly `image.len()` bytes cannot come up short.
        Err(e) => {
            return ImageScan {
                records: 0,
                valid_len: 0,
                invalid: Some(format!("reading the image failed: {e}")),
                definite: true,
            };
        }
    };
    ImageScan {
        records: scan.records,
        valid_len: scan.valid_len,
        definite: scan.invalid.as_ref().is_some_and(|i| i.definite),
        invalid: scan.invalid.map(|i| i.reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T: Send>() {}
    fn send_sync_clone<T: Send + Sync + Clone>() {}

    #[test]
    fn the_writer_moves_between_threads_and_readers_are_shared() {
        send::<Wal>();
        send::<WalIter>();
        send_sync_clone::<WalReader>();
    }

    #[test]
    fn image_scan_sees_what_the_writer_wrote_and_stops_at_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(WalOptions::new(dir.path()), 1).unwrap();
        wal.append(&[b"one", b"two", b"three"]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let segment = segment::list_segments(dir.path()).unwrap().remove(0);
        let image = std::fs::read(&segment.path).unwrap();

        let mut seen = Vec::new();
        let scan = scan_segment_image(&image, 1, |seq, _, payload| {
            seen.push((seq, payload.to_vec()))
        });
        assert_eq!(scan.records, 3);
        assert_eq!(scan.valid_len, image.len() as u64);
        assert_eq!(scan.invalid, None);
        assert_eq!(
            seen,
            vec![
                (1, b"one".to_vec()),
                (2, b"two".to_vec()),
                (3, b"three".to_vec())
            ]
        );

        let torn = &image[..image.len() - 2];
        let scan = scan_segment_image(torn, 1, |_, _, _| {});
        assert_eq!(scan.records, 2);
        assert!(scan.invalid.is_some() && !scan.definite, "{scan:?}");

        let scan = scan_segment_image(&image, 2, |_, _, _| {});
        assert_eq!(scan.records, 0);
        assert!(
            scan.definite,
            "a valid record with the wrong seq is corruption: {scan:?}"
        );
    }

    #[test]
    fn image_scan_reads_v1_and_v2_records_in_one_segment_and_stops_at_a_torn_v2_header() {
        let mut image = Vec::new();
        format::encode_record(&mut image, 1, 0, 0, b"one");
        format::encode_record(&mut image, 2, 7, 0, b"two");
        format::encode_record(&mut image, 3, 0, 0, b"three");
        format::encode_record(&mut image, 4, 8, 0, b"four");
        let mut seen = Vec::new();
        let scan = scan_segment_image(&image, 1, |seq, term, p| seen.push((seq, term, p.to_vec())));
        assert_eq!(scan.records, 4);
        assert_eq!(scan.valid_len, image.len() as u64);
        assert_eq!(
            seen,
            vec![
                (1, 0, b"one".to_vec()),
                (2, 7, b"two".to_vec()),
                (3, 0, b"three".to_vec()),
                (4, 8, b"four".to_vec()),
            ]
        );
        // A v2 header cut after its first 24 bytes is a torn tail, not corruption.
        let whole = image.len();
        format::encode_record(&mut image, 5, 9, 0, b"five");
        let torn = &image[..whole + RECORD_HEADER_BYTES];
        let scan = scan_segment_image(torn, 1, |_, _, _| {});
        assert_eq!(scan.records, 4);
        assert!(!scan.definite, "{scan:?}");
        assert!(
            scan.invalid
                .as_deref()
                .is_some_and(|r| r.contains("partial record header")),
            "{scan:?}"
        );
    }

    #[test]
    fn options_reject_limits_the_format_cannot_honour() {
        let dir = std::env::temp_dir();
        let zero = WalOptions {
            segment_size_bytes: 0,
            ..WalOptions::new(&dir)
        };
        assert!(matches!(
            zero.validate(),
            Err(WalError::InvalidArgument { .. })
        ));
        let huge = WalOptions {
            max_record_bytes: MAX_PAYLOAD_BYTES_LIMIT + 1,
            ..WalOptions::new(&dir)
        };
        assert!(matches!(
            huge.validate(),
            Err(WalError::InvalidArgument { .. })
        ));
        assert!(WalOptions::new(&dir).validate().is_ok());
    }
}
