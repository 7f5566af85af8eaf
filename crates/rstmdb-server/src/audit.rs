//! The audit log: one JSON line per request (decisions.md lists the fields) and per
//! connection event (TLS handshake failures, connection-limit refusals, SIGHUP reloads),
//! written by a dedicated thread to `audit.path` (appended, created 0600) or stdout.
//!
//! Requests hand their record to the thread through a bounded channel (`audit.queue_depth`)
//! and never wait for it: when the thread is that far behind (a stalled disk or pipe), the
//! record is dropped, counted (`rstmdb_audit_dropped_total`) and a warning logged, so a stuck
//! sink cannot stall the runtime threads that serve requests. SIGHUP reopens the file, so log
//! rotation works with `copytruncate` or a move followed by `systemctl reload`.
//!
//! Lines are always whole: the writer only ever writes complete lines, with one `write_all`
//! per batch. On stdout that `write_all` holds the process-wide stdout lock, the same lock
//! every log line is written under (tracing's writer is `std::io::stdout()`, one `write_all`
//! per event), so an audit line and a log line never share a line.
//!
//! Nothing secret is ever in a record: identities are token names (or certificate CNs),
//! never tokens, and params other than the ids and names a request addresses are not
//! recorded.

use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// One line of the audit log.
#[derive(Debug, Default, Serialize)]
pub struct Record {
    pub timestamp: String,
    pub client_addr: String,
    /// Token name or certificate CN; `null` before authentication.
    pub identity: Option<String>,
    /// The request's op; `null` when the request could not be decoded. Connection events
    /// have their own: `TLS_HANDSHAKE`, `CONNECTION_REFUSED`, `RELOAD`.
    pub op: Option<&'static str>,
    pub instance_id: Option<String>,
    pub machine: Option<String>,
    pub event: Option<String>,
    /// Every instance a BATCH or RESTORE_INSTANCE touched (absent for other ops).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_ids: Option<Vec<String>>,
    /// Every machine a BATCH named (absent for other ops).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machines: Option<Vec<String>>,
    /// The spooled backup of BACKUP_BEGIN/READ/END.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// `ok`, `error`, or `abandoned`: the connection went away (or shutdown gave up on it)
    /// before the request finished, so whether a write took effect is unknown; the WAL says.
    pub status: &'static str,
    pub error_code: Option<&'static str>,
    pub duration_ms: f64,
}

enum Msg {
    /// Boxed: the channel's buffer is allocated up front, so `queue_depth` slots cost a
    /// pointer each rather than a whole record.
    Record(Box<Record>),
    Reopen,
    /// Write what is queued before it, then acknowledge.
    Sync(std::sync::mpsc::Sender<()>),
}

/// A handle to the writer thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
#[error("opening audit.path {path}: {source}")]
pub struct AuditError {
    path: PathBuf,
    source: std::io::Error,
}

fn open(path: &Path) -> Result<std::fs::File, AuditError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|source| AuditError {
        path: path.to_path_buf(),
        source,
    })
}

/// Where the lines go.
enum Sink {
    File(std::fs::File),
    Stdout,
}

impl Sink {
    /// Writes `lines` (whole lines only) with one `write_all`; on stdout under its lock.
    fn write_lines(&mut self, lines: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.write_all(lines),
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(lines)?;
                out.flush()
            }
        }
    }
}

impl AuditLog {
    /// Starts the writer; the file (if any) is opened now so a bad path fails startup.
    /// `queue_depth` records may wait for the writer before further ones are dropped.
    pub fn start(path: Option<PathBuf>, queue_depth: usize) -> Result<AuditLog, AuditError> {
        let sink = match &path {
            Some(p) => Sink::File(open(p)?),
            None => Sink::Stdout,
        };
        let (tx, rx) = sync_channel(queue_depth.max(1));
        std::thread::Builder::new()
            .name("rstmdb-audit".into())
            .spawn(move || writer(rx, path, sink))
            .map_err(|source| AuditError {
                path: PathBuf::from("<audit thread>"),
                source,
            })?;
        Ok(AuditLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues `r` for the writer; never blocks. With the queue full the record is dropped and
    /// counted, and a warning is logged (at the 1st, 2nd, 4th, 8th… drop, so a stalled sink
    /// does not flood the log as well).
    pub fn record(&self, r: Record) {
        match self.tx.try_send(Msg::Record(Box::new(r))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped_total = n,
                        "the audit log writer is behind (stalled sink?); audit records dropped"
                    );
                }
            }
            // The writer is gone: the process is exiting.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// A connection event (no request): `op` names it, `error_code` says what went wrong.
    pub fn connection_event(
        &self,
        timestamp: String,
        client_addr: String,
        op: &'static str,
        error_code: Option<&'static str>,
    ) {
        self.record(Record {
            timestamp,
            client_addr,
            op: Some(op),
            status: if error_code.is_some() { "error" } else { "ok" },
            error_code,
            ..Record::default()
        });
    }

    /// Records dropped because the writer was behind (`rstmdb_audit_dropped_total`).
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    /// Reopens the file (after rotation); the writer logs a failure and keeps the old file.
    /// Never blocks: with the queue full the reopen is skipped and a warning logged.
    pub fn reopen(&self) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Reopen) {
            tracing::warn!("the audit log writer is behind; not reopening the audit log");
        }
    }

    /// Waits (up to 5 s in all) until every record queued so far is written; called at
    /// shutdown.
    pub fn sync(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        let mut msg = Msg::Sync(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
        let _ = ack_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

fn writer(rx: Receiver<Msg>, path: Option<PathBuf>, mut sink: Sink) {
    let mut failed = false;
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut write = |sink: &mut Sink, batch: &mut Vec<u8>| {
        if batch.is_empty() {
            return;
        }
        match sink.write_lines(batch) {
            Ok(()) => failed = false,
            Err(e) => {
                if !failed {
                    tracing::error!(error = %e, "writing the audit log failed");
                }
                failed = true;
            }
        }
        batch.clear();
    };
    while let Ok(first) = rx.recv() {
        // Drain what queued up behind the first message, then write it at once.
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Record(r) => {
                    // A record that fails to encode leaves nothing behind: only whole lines.
                    let len = batch.len();
                    match serde_json::to_writer(&mut batch, &*r) {
                        Ok(()) => batch.push(b'\n'),
                        Err(_) => batch.truncate(len),
                    }
                    if batch.len() >= 1 << 20 {
                        write(&mut sink, &mut batch);
                    }
                }
                Msg::Sync(ack) => {
                    write(&mut sink, &mut batch);
                    let _ = ack.send(());
                }
                Msg::Reopen => {
                    write(&mut sink, &mut batch);
                    if let Some(p) = &path {
                        match open(p) {
                            Ok(f) => {
                                sink = Sink::File(f);
                                tracing::info!(path = %p.display(), "reopened the audit log");
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "reopening the audit log failed; keeping the old file")
                            }
                        }
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        write(&mut sink, &mut batch);
    }
}
