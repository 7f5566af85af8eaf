//! Copying a log into another directory under another key: the WAL half of `rstmdb rekey`.
//!
//! Every segment keeps its name and every record its seq and term (so its version); only the payload envelope changes
//! (decrypted with the old key or read as plaintext, sealed with the new key or written as
//! plaintext). The source is only read, under its directory lock; the copy is fsynced, file by
//! file, then its directory.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use super::error::WalError;
use super::format::{Expect, encode_record, encode_sealed_record};
use super::segment::{
    ensure_dir, list_segments, lock_dir, scan_records, segment_file_name, sync_dir,
};
use crate::crypto::Cipher;

const COPY_BUFFER_BYTES: usize = 1024 * 1024;

/// What [`rewrite`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewriteReport {
    pub segments: u64,
    pub records: u64,
}

/// Copies the log in `src` into `dst` (which must hold no segments), reading records with
/// `from` and writing them with `to` (`None`: plaintext). Any record that is not valid under
/// `from` — corrupt, torn, or under another key — stops the copy with an error: run it on a
/// log that opened cleanly.
pub fn rewrite(
    src: &Path,
    dst: &Path,
    from: Option<Arc<Cipher>>,
    to: Option<Arc<Cipher>>,
) -> Result<RewriteReport, WalError> {
    let _lock = lock_dir(src)?;
    ensure_dir(dst)?;
    if !list_segments(dst)?.is_empty() {
        return Err(WalError::InvalidArgument {
            reason: format!("{} already holds WAL segments", dst.display()),
        });
    }
    let expect = Expect::of(from.as_ref());
    let mut report = RewriteReport::default();
    for seg in list_segments(src)? {
        let input = File::open(&seg.path).map_err(|e| WalError::io("opening", &seg.path, e))?;
        let out_path = dst.join(segment_file_name(seg.first_seq));
        let out_file = File::create_new(&out_path)
            .map_err(|e| WalError::io("creating WAL segment", &out_path, e))?;
        let mut out = BufWriter::with_capacity(COPY_BUFFER_BYTES, out_file);
        let mut failure: Option<WalError> = None;
        let mut buf = Vec::new();
        let mut offset = 0u64;
        let scan = scan_records(
            BufReader::with_capacity(COPY_BUFFER_BYTES, input),
            seg.len,
            seg.first_seq,
            &expect,
            |header, payload| {
                if failure.is_some() {
                    return;
                }
                let at = offset;
                offset += header.record_len();
                let plain = match expect.open(header, payload.to_vec()) {
                    Ok(p) => p,
                    Err(reason) => {
                        failure = Some(WalError::Encryption {
                            segment: seg.path.clone(),
                            file_offset: at,
                            seq: header.seq,
                            reason,
                        });
                        return;
                    }
                };
                buf.clear();
                match &to {
                    Some(c) => {
                        if let Err(e) =
                            encode_sealed_record(&mut buf, header.seq, header.term, c, &plain)
                        {
                            failure = Some(WalError::Io {
                                context: format!("encrypting WAL record {}", header.seq),
                                source: std::io::Error::other(e),
                            });
                            return;
                        }
                    }
                    None => encode_record(&mut buf, header.seq, header.term, 0, &plain),
                }
                if let Err(e) = out.write_all(&buf) {
                    failure = Some(WalError::io("writing WAL segment", &out_path, e));
                }
            },
        )
        .map_err(|e| WalError::io("reading WAL segment", &seg.path, e))?;
        if let Some(f) = failure {
            return Err(f);
        }
        if let Some(bad) = scan.invalid {
            return Err(bad.into_error(&seg.path));
        }
        let file = out
            .into_inner()
            .map_err(|e| WalError::io("writing WAL segment", &out_path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| WalError::io("syncing WAL segment", &out_path, e))?;
        report.segments += 1;
        report.records += scan.records;
    }
    sync_dir(dst).map_err(|e| WalError::io("syncing directory", dst, e))?;
    Ok(report)
}
