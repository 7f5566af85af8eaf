//! Readers: bounded reads for WAL_READ and watchers, and a streaming iterator for replay.
//!
//! A reader never returns a record above the published seq (so it never sees a record that is
//! not yet durable and applied, nor half of one being written) — except through
//! `read_unpublished` / `term_of`, which go up to the last record written (whole: the writer
//! records it in the shared table only after its write returned) — and never returns a record
//! whose CRC does not match. It finds its starting point through the sparse index of the
//! segment, scanning segments that open did not read the first time one is needed.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use super::error::WalError;
use super::format::{
    Expect, MAX_PAYLOAD_BYTES_LIMIT, RECORD_HEADER_BYTES, RECORD_HEADER_V2_BYTES, RecordHeader,
};
use super::segment::scan_segment;
use super::shared::{CountingFile, IoStats, ScannedSegment, Shared};

/// Read buffer of a reader: skipping records within it costs no system call.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// How often a reader looks again when the segment it was sent to has just been removed.
const MAX_REOPEN_ATTEMPTS: u32 = 64;
/// Bound on the rounds of locating a seq (each round scans at most one segment).
const MAX_LOCATE_ROUNDS: u32 = 1024;

/// One record: its seq, its term, its flags as stored, and its payload (decrypted when the
/// record is encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub seq: u64,
    /// The raft term it was appended with ([`super::Wal::append_with_terms`]); 0 for a record
    /// written by [`super::Wal::append`] (stored as a version 1 record).
    pub term: u64,
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// A cheap handle for reading the log; clone it freely and use it from any thread.
#[derive(Debug, Clone)]
pub struct WalReader {
    shared: Arc<Shared>,
}

impl WalReader {
    pub(crate) fn new(shared: Arc<Shared>) -> WalReader {
        WalReader { shared }
    }

    /// Records with seq >= `from`, ascending: at most `max_records`, stopping before the total
    /// payload would exceed `max_bytes` (but at least one record if there is one), never above
    /// the published seq. A `from` below the earliest retained record starts at the earliest.
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<WalRecord>, WalError> {
        let mut out = Vec::new();
        if max_records == 0 {
            return Ok(out);
        }
        let mut walk = Walk::new(Arc::clone(&self.shared), from, self.published_seq());
        let mut total = 0usize;
        while out.len() < max_records {
            let Some(header) = walk.peek()? else {
                break;
            };
            let len = header.payload_len as usize;
            if !out.is_empty() && total.saturating_add(len) > max_bytes {
                break;
            }
            let Some(record) = walk.take()? else {
                break;
            };
            out.push(record);
            total += len;
        }
        Ok(out)
    }

    /// Every record with seq >= `from` published when this is called, one at a time (for
    /// recovery replay and catching up watchers; memory use is one record).
    pub fn iter_from(&self, from: u64) -> Result<WalIter, WalError> {
        Ok(WalIter {
            walk: Walk::new(Arc::clone(&self.shared), from, self.published_seq()),
            done: false,
        })
    }

    /// Records with seq in `from..=until_inclusive`, ascending, at most `max_records`,
    /// including records above the published seq: everything [`super::Wal::append`] /
    /// [`super::Wal::append_with_terms`] has returned for, synced or not (for the raft log,
    /// which reads entries before they are committed). Bounded by the last written record. A
    /// `from` below the earliest retained record starts at the earliest; seqs skipped by
    /// `skip_to` are simply absent.
    ///
    /// An unpublished record may be cut by [`super::Wal::truncate_from`] or a failed sync while
    /// it is being read: the read then stops before it rather than failing.
    pub fn read_unpublished(
        &self,
        from: u64,
        until_inclusive: u64,
        max_records: usize,
    ) -> Result<Vec<WalRecord>, WalError> {
        let mut out = Vec::new();
        if max_records == 0 {
            return Ok(out);
        }
        let upper = until_inclusive.min(self.shared.written_seq());
        let mut walk = Walk::new(Arc::clone(&self.shared), from, upper);
        while out.len() < max_records {
            if walk.peek()?.is_none() {
                break;
            }
            let Some(record) = walk.take()? else {
                break;
            };
            out.push(record);
        }
        Ok(out)
    }

    /// The term of record `seq` (0 for a version 1 record), read from its header alone;
    /// `None` when no record `seq` is in the log (beyond its end, below its earliest retained
    /// record, or skipped). Sees unpublished records like [`WalReader::read_unpublished`].
    /// The header's CRC is not checked here (that needs the payload): every segment a reader
    /// reaches was verified at open or when first scanned, and records since were written by
    /// this process.
    pub fn term_of(&self, seq: u64) -> Result<Option<u64>, WalError> {
        if seq == 0 {
            return Ok(None);
        }
        let upper = seq.min(self.shared.written_seq());
        let mut walk = Walk::new(Arc::clone(&self.shared), seq, upper);
        Ok(walk.peek()?.filter(|h| h.seq == seq).map(|h| h.term))
    }

    /// Seq of the last record written, published or not (0 when the log holds none).
    pub fn written_seq(&self) -> u64 {
        self.shared.written_seq()
    }

    /// Seq of the earliest retained record, `None` when the log holds no record.
    pub fn earliest_seq(&self) -> Option<u64> {
        self.shared.earliest_seq()
    }

    /// Highest seq readers may see.
    pub fn published_seq(&self) -> u64 {
        self.shared.published()
    }
}

/// Iterator returned by [`WalReader::iter_from`]. Stops after the first error.
#[derive(Debug)]
pub struct WalIter {
    walk: Walk,
    done: bool,
}

impl WalIter {
    /// The published seq when the iterator was made: it yields nothing above it.
    pub fn until(&self) -> u64 {
        self.walk.upper
    }
}

impl Iterator for WalIter {
    type Item = Result<WalRecord, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match self.walk.peek() {
            Ok(None) => None,
            Ok(Some(_)) => self.walk.take().transpose(),
            Err(e) => Some(Err(e)),
        };
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}

/// A walk over the records in `[want, upper]`, segment after segment.
#[derive(Debug)]
struct Walk {
    shared: Arc<Shared>,
    /// Lowest seq still wanted.
    want: u64,
    upper: u64,
    cursor: Option<Cursor>,
    /// Header of the next record to return, read by `peek`.
    pending: Option<RecordHeader>,
}

impl Walk {
    fn new(shared: Arc<Shared>, from: u64, upper: u64) -> Walk {
        Walk {
            shared,
            want: from.max(1),
            upper,
            cursor: None,
            pending: None,
        }
    }

    /// Header of the next record to return, or `None` when the walk is over.
    fn peek(&mut self) -> Result<Option<RecordHeader>, WalError> {
        if let Some(header) = self.pending {
            return Ok(Some(header));
        }
        loop {
            if self.want > self.upper {
                return Ok(None);
            }
            let Some(cursor) = self.cursor.as_mut() else {
                match open_at(&self.shared, self.want)? {
                    Some(cursor) => self.cursor = Some(cursor),
                    None => return Ok(None),
                }
                continue;
            };
            // Records are contiguous within a segment: never touch bytes past `upper`, which
            // may be a record still being written.
            if cursor.next_seq > self.upper {
                return Ok(None);
            }
            let at = cursor.next_seq;
            match cursor.next_header() {
                Ok(None) => {
                    let first = cursor.first_seq;
                    self.cursor = None;
                    match self.shared.next_segment_after(first) {
                        // Also skips a gap left by `skip_to`.
                        Some(next_first) => self.want = self.want.max(next_first),
                        None => return Ok(None),
                    }
                }
                Ok(Some(header)) if header.seq < self.want => {
                    if let Err(e) = cursor.skip(&header) {
                        return self.stop_or(at, e);
                    }
                }
                Ok(Some(header)) => {
                    self.pending = Some(header);
                    return Ok(Some(header));
                }
                Err(e) => return self.stop_or(at, e),
            }
        }
    }

    /// Reads and checks the record `peek` returned; `None` if it vanished (see `stop_or`).
    fn take(&mut self) -> Result<Option<WalRecord>, WalError> {
        let (Some(header), Some(cursor)) = (self.pending.take(), self.cursor.as_mut()) else {
            return Err(WalError::InvalidArgument {
                reason: "internal: WAL walk taken without a peeked record".into(),
            });
        };
        let at = cursor.next_seq;
        match cursor.read_record(&header, &self.shared.expect) {
            Ok(record) => {
                self.want = record.seq + 1;
                Ok(Some(record))
            }
            Err(e) => self.stop_or(at, e),
        }
    }

    /// A read error at seq `at` is only an error if `at` is still published: a failed sync may
    /// have just dropped the tail under us.
    fn stop_or<T>(&mut self, at: u64, e: WalError) -> Result<Option<T>, WalError> {
        self.cursor = None;
        if self.shared.published() < at {
            self.upper = self.upper.min(at.saturating_sub(1));
            return Ok(None);
        }
        Err(e)
    }
}

/// Where to start reading for a seq.
#[derive(Debug)]
struct Location {
    first_seq: u64,
    path: PathBuf,
    /// Seq of the record at `offset`.
    seq: u64,
    offset: u64,
}

/// A cursor opened at the segment and position where `want` is (or the first record after it).
fn open_at(shared: &Shared, want: u64) -> Result<Option<Cursor>, WalError> {
    for _ in 0..MAX_REOPEN_ATTEMPTS {
        let Some(location) = locate(shared, want)? else {
            return Ok(None);
        };
        match Cursor::open(&location, &shared.stats) {
            Ok(cursor) => return Ok(Some(cursor)),
            // Removed (trimmed) or renamed (skip_to) since we looked: look again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::thread::yield_now(),
            Err(e) => return Err(WalError::io("opening WAL segment", &location.path, e)),
        }
    }
    Err(WalError::Io {
        context: format!("WAL segments kept vanishing while looking for seq {want}"),
        source: io::Error::from(io::ErrorKind::NotFound),
    })
}

/// Finds the segment holding `want` (or the first one after it) and the indexed position to
/// start from, scanning a segment first if open did not.
fn locate(shared: &Shared, want: u64) -> Result<Option<Location>, WalError> {
    for _ in 0..MAX_LOCATE_ROUNDS {
        let (first_seq, path, next_first) = {
            let table = shared.segments();
            let mut i = table
                .partition_point(|m| m.first_seq <= want)
                .saturating_sub(1);
            loop {
                let Some(meta) = table.get(i) else {
                    return Ok(None);
                };
                let next_first = table.get(i + 1).map(|m| m.first_seq);
                let Some(scanned) = &meta.scanned else {
                    break (meta.first_seq, meta.path.clone(), next_first);
                };
                // A segment that ends before `want` (a gap left by skip_to, or empty) sends us
                // to the next one.
                if scanned.last_seq.is_none_or(|last| last < want) && next_first.is_some() {
                    i += 1;
                    continue;
                }
                let (seq, offset) = scanned.index.start_for(meta.first_seq, want);
                return Ok(Some(Location {
                    first_seq: meta.first_seq,
                    path: meta.path.clone(),
                    seq,
                    offset,
                }));
            }
        };
        match scan_sealed(shared, first_seq, &path, next_first) {
            Ok((len, scanned)) => {
                let mut table = shared.segments_mut();
                if let Some(meta) = table
                    .iter_mut()
                    .find(|m| m.first_seq == first_seq && m.path == path && m.scanned.is_none())
                {
                    meta.len = len;
                    meta.scanned = Some(scanned);
                }
            }
            // Removed while we scanned it: the next round sees the new table.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Err(WalError::Io {
        context: format!("could not locate WAL seq {want}: segments keep changing"),
        source: io::Error::from(io::ErrorKind::Interrupted),
    })
}

/// Scans a segment that open only listed. It is sealed, so any invalid record in it is
/// corruption, not a torn tail.
fn scan_sealed(
    shared: &Shared,
    first_seq: u64,
    path: &std::path::Path,
    next_first: Option<u64>,
) -> Result<(u64, ScannedSegment), WalError> {
    let scan = scan_segment(path, first_seq, &shared.stats, &shared.expect)?;
    if let Some(bad) = scan.invalid {
        return Err(bad.into_error(path));
    }
    if let Some(next_first) = next_first {
        match scan.last_seq {
            None => {
                return Err(WalError::corrupt(
                    path,
                    0,
                    Some(first_seq),
                    "empty segment followed by a later segment: its records are missing",
                ));
            }
            Some(last) if last >= next_first => {
                return Err(WalError::corrupt(
                    path,
                    scan.valid_len,
                    Some(last),
                    format!(
                        "segment runs to seq {last}, past the next segment's first seq {next_first}"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    tracing::debug!(segment = %path.display(), records = scan.records, "indexed a WAL segment not read at open");
    Ok((
        scan.valid_len,
        ScannedSegment {
            last_seq: scan.last_seq,
            index: scan.index,
        },
    ))
}

/// Reads records of one segment in order, checking each.
#[derive(Debug)]
struct Cursor {
    reader: BufReader<CountingFile>,
    path: PathBuf,
    first_seq: u64,
    /// File offset of the next record.
    offset: u64,
    /// Seq the next record must have.
    next_seq: u64,
    /// File length as last seen (re-read when a record seems to run past it: the active
    /// segment grows).
    file_len: u64,
}

impl Cursor {
    fn open(location: &Location, stats: &Arc<IoStats>) -> io::Result<Cursor> {
        let mut file = File::open(&location.path)?;
        let file_len = file.metadata()?.len();
        file.seek(SeekFrom::Start(location.offset))?;
        Ok(Cursor {
            reader: BufReader::with_capacity(
                READ_BUFFER_BYTES,
                CountingFile::new(file, Arc::clone(stats)),
            ),
            path: location.path.clone(),
            first_seq: location.first_seq,
            offset: location.offset,
            next_seq: location.seq,
            file_len,
        })
    }

    fn corrupt(&self, reason: impl Into<String>) -> WalError {
        WalError::corrupt(&self.path, self.offset, Some(self.next_seq), reason)
    }

    fn io_err(&self, e: io::Error) -> WalError {
        WalError::io("reading WAL segment", &self.path, e)
    }

    /// Header of the record at the cursor, `None` at the end of the file.
    fn next_header(&mut self) -> Result<Option<RecordHeader>, WalError> {
        let mut raw = [0u8; RECORD_HEADER_BYTES];
        let filled = read_full(&mut self.reader, &mut raw).map_err(|e| self.io_err(e))?;
        if filled == 0 {
            return Ok(None);
        }
        if filled < RECORD_HEADER_BYTES {
            return Err(self.corrupt(format!(
                "partial record header: {filled} of {RECORD_HEADER_BYTES} bytes"
            )));
        }
        let extra = RecordHeader::extra_len(&raw);
        let mut full = [0u8; RECORD_HEADER_V2_BYTES];
        full[..RECORD_HEADER_BYTES].copy_from_slice(&raw);
        let more = read_full(
            &mut self.reader,
            &mut full[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + extra],
        )
        .map_err(|e| self.io_err(e))?;
        if more < extra {
            return Err(self.corrupt(format!(
                "partial record header: {} of {} bytes",
                RECORD_HEADER_BYTES + more,
                RECORD_HEADER_BYTES + extra
            )));
        }
        let header = RecordHeader::decode(&full[..RECORD_HEADER_BYTES + extra]);
        let end = self.offset.saturating_add(header.record_len());
        if end > self.file_len {
            self.file_len = self.reader.get_ref().len().map_err(|e| self.io_err(e))?;
        }
        let available = self
            .file_len
            .saturating_sub(self.offset + header.header_len as u64);
        if let Some(problem) =
            header.shape_problem(available.min(u64::from(MAX_PAYLOAD_BYTES_LIMIT)))
        {
            return Err(self.corrupt(problem));
        }
        if let Some(problem) = header.field_problem(self.next_seq) {
            return Err(self.corrupt(problem));
        }
        Ok(Some(header))
    }

    /// Moves past the record whose header was just read, without reading its payload.
    fn skip(&mut self, header: &RecordHeader) -> Result<(), WalError> {
        self.reader
            .seek_relative(i64::from(header.payload_len))
            .map_err(|e| self.io_err(e))?;
        self.advance(header);
        Ok(())
    }

    /// Reads the payload of the record whose header was just read, checks its CRC and, for an
    /// encrypted record, authenticates and decrypts it.
    fn read_record(
        &mut self,
        header: &RecordHeader,
        expect: &Expect,
    ) -> Result<WalRecord, WalError> {
        let mut payload = vec![0u8; header.payload_len as usize];
        match self.reader.read_exact(&mut payload) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(
                    self.corrupt("partial record: the payload runs past the end of the file")
                );
            }
            Err(e) => return Err(self.io_err(e)),
        }
        if !header.crc_matches(&payload) {
            return Err(self.corrupt("CRC mismatch"));
        }
        let payload = expect
            .open(header, payload)
            .map_err(|reason| WalError::Encryption {
                segment: self.path.clone(),
                file_offset: self.offset,
                seq: header.seq,
                reason,
            })?;
        self.advance(header);
        Ok(WalRecord {
            seq: header.seq,
            term: header.term,
            flags: header.flags,
            payload,
        })
    }

    fn advance(&mut self, header: &RecordHeader) {
        self.offset += header.record_len();
        self.next_seq += 1;
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
