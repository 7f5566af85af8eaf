//! openraft's log storage over our WAL: a raft entry at index `i` is the WAL record at offset
//! `i`, with the entry's term in the record header. A client's change is stored exactly as a
//! single node stores it (one encoded WAL entry); raft's blank and membership entries are
//! stored as the WAL entries `noop` and `membership`.
//!
//! Every append is durable (fdatasync) before openraft is told it is flushed. The vote and
//! the purge point live in [`HardStateFile`]. Purging is logical for now: entries at or
//! below the purge point are never returned, but their segments stay on disk until
//! checkpoints may remove them.

use crate::hardstate::{CommittedFile, HardState, HardStateFile};
use crate::storage_error;
use crate::types::{Member, NodeId, Request, TypeConfig, log_id};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader,
    StorageError, StoredMembership, Vote,
};
use rstmdb_storage::replicated::{
    RaftLog, RecordKind, encode_membership, encode_noop, record_kind,
};
use rstmdb_storage::wal::WalRecord;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

/// The WAL payload of a raft entry.
pub fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, String> {
    match &entry.payload {
        EntryPayload::Blank => Ok(encode_noop()),
        EntryPayload::Normal(Request(json)) => Ok(json.clone().into_bytes()),
        EntryPayload::Membership(m) => {
            let stored = StoredMembership::new(Some(entry.log_id), m.clone());
            let v =
                serde_json::to_value(&stored).map_err(|e| format!("encoding membership: {e}"))?;
            encode_membership(v)
        }
    }
}

/// The raft entry a WAL record holds.
pub fn decode_record(rec: WalRecord) -> Result<Entry<TypeConfig>, String> {
    let id = log_id(rec.term, rec.seq);
    let payload = match record_kind(&rec.payload)? {
        RecordKind::Noop => EntryPayload::Blank,
        RecordKind::Membership(v) => {
            let stored: StoredMembership<NodeId, Member> = serde_json::from_value(v)
                .map_err(|e| format!("membership record at {}: {e}", rec.seq))?;
            EntryPayload::Membership(stored.membership().clone())
        }
        RecordKind::Normal => EntryPayload::Normal(Request(
            String::from_utf8(rec.payload)
                .map_err(|_| format!("record {} is not UTF-8 JSON", rec.seq))?,
        )),
    };
    Ok(Entry {
        log_id: id,
        payload,
    })
}

/// The raft log: our WAL plus the hard-state file. Clones share both.
///
/// Appends are group-committed: `append` puts the entries in an in-memory tail (readable at
/// once, as openraft requires) and queues them for the log writer thread, which writes every
/// queued append with one write and one fdatasync, then reports each flushed in order and
/// drops them from the tail. Vote, truncate and purge first wait for every earlier append
/// (`barrier`), so the log's I/O happens in the order openraft submitted it.
#[derive(Debug, Clone)]
pub struct LogStore {
    log: RaftLog,
    hard: Arc<Mutex<HardStateFile>>,
    committed: Arc<CommittedFile>,
    tail: Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>,
    writer: std::sync::mpsc::Sender<Job>,
}

/// Work for the log writer thread, in submission order.
enum Job {
    Append {
        records: Vec<(u64, u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Answered once every job before it is done.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Append { records, .. } => write!(f, "Append({} records)", records.len()),
            Job::Barrier(_) => write!(f, "Barrier"),
        }
    }
}

/// Most jobs one round of the writer takes.
const MAX_JOBS_PER_ROUND: usize = 4096;

/// The log writer thread: runs until every `LogStore` clone is gone.
fn writer_loop(
    rx: std::sync::mpsc::Receiver<Job>,
    log: RaftLog,
    tail: Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_ROUND {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut jobs = jobs.into_iter().peekable();
        while let Some(job) = jobs.next() {
            match job {
                Job::Barrier(done) => {
                    let _ = done.send(());
                }
                Job::Append { records, callback } => {
                    // This append and every directly following one that continues it.
                    let mut all = records;
                    let mut callbacks = vec![callback];
                    while let Some(Job::Append { records, .. }) = jobs.peek() {
                        let continues = match (all.last(), records.first()) {
                            (Some(last), Some(first)) => first.0 == last.0 + 1,
                            _ => true,
                        };
                        if !continues {
                            break;
                        }
                        if let Some(Job::Append { records, callback }) = jobs.next() {
                            all.extend(records);
                            callbacks.push(callback);
                        }
                    }
                    let refs: Vec<(u64, u64, &[u8])> =
                        all.iter().map(|(s, t, p)| (*s, *t, p.as_slice())).collect();
                    match log.append(&refs) {
                        Ok(()) => {
                            if let Ok(mut tail) = tail.lock() {
                                for (seq, term, _) in &all {
                                    // Only this very entry: a later append after a
                                    // truncate may already hold the same index.
                                    if tail
                                        .get(seq)
                                        .is_some_and(|e| e.log_id == log_id(*term, *seq))
                                    {
                                        tail.remove(seq);
                                    }
                                }
                            }
                            for cb in callbacks {
                                cb.log_io_completed(Ok(()));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, records = all.len(), "raft log append failed");
                            for cb in callbacks {
                                cb.log_io_completed(Err(std::io::Error::other(e.to_string())));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    storage_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    storage_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl LogStore {
    pub fn new(log: RaftLog, hard: HardStateFile, committed: CommittedFile) -> LogStore {
        if let Some(p) = hard.state().purged {
            log.set_purged(p.index);
        }
        let tail = Arc::new(Mutex::new(BTreeMap::new()));
        let (writer, rx) = std::sync::mpsc::channel();
        let (wlog, wtail) = (log.clone(), tail.clone());
        if let Err(e) = std::thread::Builder::new()
            .name("rstmdb-raft-log".into())
            .spawn(move || writer_loop(rx, wlog, wtail))
        {
            // Every append then fails (its job cannot be queued), which stops raft loudly.
            tracing::error!(error = %e, "could not start the raft log writer thread");
        }
        LogStore {
            log,
            hard: Arc::new(Mutex::new(hard)),
            committed: Arc::new(committed),
            tail,
            writer,
        }
    }

    /// Waits until every append queued before it is written (or failed).
    async fn barrier(&self) -> Result<(), StorageError<NodeId>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer
            .send(Job::Barrier(tx))
            .map_err(|_| write_err("the raft log writer stopped"))?;
        rx.await
            .map_err(|_| write_err("the raft log writer stopped"))
    }

    fn hard_state(&self) -> Result<HardState, StorageError<NodeId>> {
        self.hard
            .lock()
            .map(|h| h.state().clone())
            .map_err(|_| read_err("hard-state lock poisoned"))
    }

    /// Runs `f` on the hard state and saves the result (durable), on a blocking thread.
    async fn update_hard<F>(
        &self,
        subject: ErrorSubject<NodeId>,
        f: F,
    ) -> Result<(), StorageError<NodeId>>
    where
        F: FnOnce(&mut HardState) + Send + 'static,
    {
        let hard = self.hard.clone();
        let s2 = subject.clone();
        tokio::task::spawn_blocking(move || {
            let mut h = hard.lock().map_err(|_| {
                storage_error(s2.clone(), ErrorVerb::Write, "hard-state lock poisoned")
            })?;
            let mut state = h.state().clone();
            f(&mut state);
            h.save(state)
                .map_err(|e| storage_error(s2, ErrorVerb::Write, e))
        })
        .await
        .map_err(|e| storage_error(subject, ErrorVerb::Write, e))?
    }

    /// The last entry's log id (the purge point when every entry is purged).
    fn last_log_id(&self, hard: &HardState) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        if let Some(e) = self
            .tail
            .lock()
            .map_err(|_| read_err("log tail lock poisoned"))?
            .values()
            .next_back()
        {
            return Ok(Some(e.log_id));
        }
        let last_seq = self.log.next_seq().map_err(read_err)?.saturating_sub(1);
        let purged_index = hard.purged.map(|p| p.index);
        if last_seq >= 1
            && purged_index.is_none_or(|p| last_seq > p)
            && let Some(term) = self.log.term_of(last_seq).map_err(read_err)?
        {
            return Ok(Some(log_id(term, last_seq)));
        }
        if hard.purged.is_some() {
            return Ok(hard.purged);
        }
        Ok(hard.entry0.as_ref().map(|e| e.log_id))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e,
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&e) => e - 1,
            Bound::Unbounded => u64::MAX,
        };
        if start > end {
            return Ok(Vec::new());
        }
        let hard = self.hard_state()?;
        let mut out = Vec::new();
        if start == 0
            && hard.purged.is_none()
            && let Some(e0) = &hard.entry0
        {
            out.push(e0.clone());
        }
        let from = start
            .max(1)
            .max(hard.purged.map_or(0, |p| p.index.saturating_add(1)));
        if from <= end {
            let log = self.log.clone();
            let max = usize::try_from(end - from)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
                .min(1 << 20);
            let records = tokio::task::spawn_blocking(move || log.read(from, end, max))
                .await
                .map_err(read_err)?
                .map_err(read_err)?;
            let mut from_log = BTreeMap::new();
            for rec in records {
                let e = decode_record(rec).map_err(read_err)?;
                from_log.insert(e.log_id.index, e);
            }
            // Entries not yet written (or just rewritten after a truncate) win.
            let tail = self
                .tail
                .lock()
                .map_err(|_| read_err("log tail lock poisoned"))?;
            for (i, e) in tail.range(from..=end) {
                from_log.insert(*i, e.clone());
            }
            drop(tail);
            // Consecutive from `from`: stop at the first hole.
            for (next, (i, e)) in (from..).zip(from_log) {
                if i != next {
                    break;
                }
                out.push(e);
            }
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let hard = self.hard_state()?;
        Ok(LogState {
            last_purged_log_id: hard.purged,
            last_log_id: self.last_log_id(&hard)?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.barrier().await?;
        self.update_hard(ErrorSubject::Vote, move |h| h.vote = Some(vote))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.hard_state()?.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        match committed {
            Some(c) => self
                .committed
                .save(c.index, c.leader_id.term)
                .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e)),
            None => Ok(()),
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .committed
            .load()
            .map(|(index, term)| log_id(term, index)))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        let mut entry0 = None;
        let purged = self.hard_state()?.purged;
        for e in entries {
            // Already covered by the applied state; never read again. (openraft itself never
            // sends one; its storage suite does, after a purge up to the applied point.)
            if purged.is_some_and(|p| e.log_id.index <= p.index) {
                continue;
            }
            if e.log_id.index == 0 {
                entry0 = Some(e);
                continue;
            }
            let payload = encode_entry(&e).map_err(write_err)?;
            records.push((e.log_id.index, e.log_id.leader_id.term, payload));
            self.tail
                .lock()
                .map_err(|_| write_err("log tail lock poisoned"))?
                .insert(e.log_id.index, e);
        }
        if let Some(e0) = entry0 {
            self.barrier().await?;
            self.update_hard(ErrorSubject::Logs, move |h| h.entry0 = Some(e0))
                .await?;
        }
        self.writer
            .send(Job::Append { records, callback })
            .map_err(|_| write_err("the raft log writer stopped"))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.barrier().await?;
        // Everything queued is written; nothing at or above the cut may be read any more.
        if let Ok(mut tail) = self.tail.lock() {
            tail.retain(|i, _| *i < log_id.index);
        }
        if log_id.index == 0 {
            self.update_hard(ErrorSubject::Logs, |h| h.entry0 = None)
                .await?;
        }
        let from = log_id.index.max(1);
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            if from < log.next_seq()? {
                log.truncate_from(from)?;
            }
            Ok::<(), rstmdb_storage::wal::WalError>(())
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.barrier().await?;
        self.update_hard(ErrorSubject::Logs, move |h| {
            if h.purged.is_none_or(|p| p.index < log_id.index) {
                h.purged = Some(log_id);
            }
            h.entry0 = None;
        })
        .await?;
        self.log.set_purged(log_id.index);
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.skip_to(log_id.index.saturating_add(1)))
            .await
            .map_err(write_err)?
            .map_err(write_err)
    }
}
