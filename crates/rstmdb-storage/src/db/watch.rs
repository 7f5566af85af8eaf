//! Watch streams: committed changes replayed from the WAL from a given offset, then live
//! from the apply stage's broadcast, with no gap and no duplicate.

use super::Database;
use crate::entry::WalEntry;
use crate::state::{self, ChangeEvent};
use crate::wal::WalReader;
use rstmdb_core::{Error, Result};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast;

impl Database {
    /// Committed APPLY_EVENTs, in WAL order: first those at and after `from` still in the WAL,
    /// then live ones, with no gap and no duplicate. `None` = live only.
    pub fn watch(&self, from: Option<u64>) -> Result<ChangeStream> {
        // Subscribe before reading the published end: every event after that end is
        // broadcast after this point, so it reaches the receiver.
        let rx = self.inner.events.subscribe();
        let until = self.inner.reader.published_seq();
        let earliest = self.inner.reader.earliest_seq().unwrap_or(until + 1);
        let replay_from = match from {
            None => until + 1,
            // 0: from the oldest record still in the log (as WAL_READ).
            Some(0) => earliest,
            Some(f) => {
                if f < earliest && f <= until {
                    return Err(Error::bad_request(
                        "from_offset",
                        format!(
                            "offset {f} is older than the earliest retained WAL offset {earliest}"
                        ),
                    ));
                }
                f.max(1)
            }
        };
        Ok(ChangeStream {
            reader: self.inner.reader.clone(),
            rx,
            backlog: VecDeque::new(),
            next_from: replay_from,
            replay_until: until,
            min_offset: replay_from,
        })
    }
}

/// A stream of committed changes; see [`Database::watch`].
pub struct ChangeStream {
    reader: WalReader,
    rx: broadcast::Receiver<Arc<ChangeEvent>>,
    backlog: VecDeque<Arc<ChangeEvent>>,
    /// Next WAL offset to replay; replay is over once it passes `replay_until`.
    next_from: u64,
    replay_until: u64,
    /// Nothing before this offset is delivered (a `from` past the end of the log).
    min_offset: u64,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream")
            .field("next_from", &self.next_from)
            .field("replay_until", &self.replay_until)
            .finish_non_exhaustive()
    }
}

/// Why a change stream ended.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WatchError {
    /// The subscriber fell more than the queue depth behind; events were dropped.
    #[error("subscriber fell behind by {0} events")]
    Lagged(u64),
    /// The database closed.
    #[error("database closed")]
    Closed,
    #[error("reading the WAL for replay: {0}")]
    Wal(String),
    /// Records the stream still had to replay were removed by a checkpoint.
    #[error("events from offset {from} on were compacted away (earliest retained: {earliest})")]
    Compacted { from: u64, earliest: u64 },
}

impl ChangeStream {
    /// The end of the log as published now: an event's distance from it is how far this
    /// subscriber lags.
    pub fn head(&self) -> u64 {
        self.reader.published_seq()
    }

    /// The next committed change.
    pub async fn next(&mut self) -> std::result::Result<Arc<ChangeEvent>, WatchError> {
        loop {
            if let Some(ev) = self.backlog.pop_front() {
                return Ok(ev);
            }
            if self.next_from <= self.replay_until {
                let recs = self
                    .reader
                    .read(self.next_from, 256, 4 * 1024 * 1024)
                    .map_err(|e| WatchError::Wal(e.to_string()))?;
                // A checkpoint may have removed what we were about to replay: say so rather
                // than skip it (a gap left by the log itself starts a segment and is fine).
                if recs.first().is_some_and(|r| r.seq > self.next_from)
                    && let Some(earliest) = self.reader.earliest_seq()
                    && earliest > self.next_from
                {
                    return Err(WatchError::Compacted {
                        from: self.next_from,
                        earliest,
                    });
                }
                let mut progressed = false;
                for r in recs {
                    if r.seq > self.replay_until {
                        break;
                    }
                    progressed = true;
                    self.next_from = r.seq + 1;
                    if let Ok(entry) = WalEntry::from_bytes(&r.payload) {
                        state::events_of(&entry, r.seq, &mut self.backlog);
                    }
                }
                if !progressed {
                    self.next_from = self.replay_until + 1;
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(ev) if ev.wal_offset > self.replay_until && ev.wal_offset >= self.min_offset => {
                    return Ok(ev);
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(WatchError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(WatchError::Closed),
            }
        }
    }
}
