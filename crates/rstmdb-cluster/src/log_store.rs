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
#[derive(Debug, Clone)]
pub struct LogStore {
    log: RaftLog,
    hard: Arc<Mutex<HardStateFile>>,
    committed: Arc<CommittedFile>,
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
        LogStore {
            log,
            hard: Arc::new(Mutex::new(hard)),
            committed: Arc::new(committed),
        }
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
            for rec in records {
                out.push(decode_record(rec).map_err(read_err)?);
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
        }
        if let Some(e0) = entry0 {
            self.update_hard(ErrorSubject::Logs, move |h| h.entry0 = Some(e0))
                .await?;
        }
        let log = self.log.clone();
        let result = tokio::task::spawn_blocking(move || {
            let refs: Vec<(u64, u64, &[u8])> = records
                .iter()
                .map(|(s, t, p)| (*s, *t, p.as_slice()))
                .collect();
            log.append(&refs)
        })
        .await
        .map_err(write_err)?;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(msg.clone())));
                Err(write_err(msg))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
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
