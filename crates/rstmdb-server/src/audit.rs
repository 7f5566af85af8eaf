//! The audit log: one JSON line per request (decisions.md lists the fields), written by a
//! dedicated thread to `audit.path` (appended, created 0600) or stdout.
//!
//! Requests hand their record to the thread through a bounded channel; when the thread falls
//! that far behind, requests wait for it rather than drop a record. SIGHUP reopens the file,
//! so log rotation works with `copytruncate` or a move followed by `systemctl reload`.
//! Nothing secret is ever in a record: identities are token names (or certificate CNs),
//! never tokens, and params other than instance/machine/event are not recorded.

use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Records buffered between requests and the writer thread.
const QUEUE: usize = 65_536;

/// One line of the audit log.
#[derive(Debug, Serialize)]
pub struct Record {
    pub timestamp: String,
    pub client_addr: String,
    /// Token name or certificate CN; `null` before authentication.
    pub identity: Option<String>,
    /// `null` when the request could not be decoded.
    pub op: Option<&'static str>,
    pub instance_id: Option<String>,
    pub machine: Option<String>,
    pub event: Option<String>,
    /// `ok` or `error`.
    pub status: &'static str,
    pub error_code: Option<&'static str>,
    pub duration_ms: f64,
}

enum Msg {
    Record(Record),
    Reopen,
    /// Flush, then acknowledge.
    Sync(std::sync::mpsc::Sender<()>),
}

/// A handle to the writer thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: SyncSender<Msg>,
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

impl AuditLog {
    /// Starts the writer; the file (if any) is opened now so a bad path fails startup.
    pub fn start(path: Option<PathBuf>) -> Result<AuditLog, AuditError> {
        let out: Box<dyn Write + Send> = match &path {
            Some(p) => Box::new(open(p)?),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("rstmdb-audit".into())
            .spawn(move || writer(rx, path, out))
            .map_err(|source| AuditError {
                path: PathBuf::from("<audit thread>"),
                source,
            })?;
        Ok(AuditLog { tx })
    }

    pub fn record(&self, r: Record) {
        // Blocks only when the writer is QUEUE records behind; a closed channel means the
        // process is exiting.
        let _ = self.tx.send(Msg::Record(r));
    }

    /// Reopens the file (after rotation); the writer logs a failure and keeps the old file.
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Waits (up to 5 s) until every record sent so far is written and flushed; called at
    /// shutdown.
    pub fn sync(&self) {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Sync(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(std::time::Duration::from_secs(5));
        }
    }
}

fn writer(rx: Receiver<Msg>, path: Option<PathBuf>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        // Drain what queued up behind the first message, then flush once.
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Record(r) => {
                    let line = serde_json::to_vec(&r).unwrap_or_default();
                    let res = out.write_all(&line).and_then(|()| out.write_all(b"\n"));
                    if let Err(e) = res {
                        if !failed {
                            tracing::error!(error = %e, "writing the audit log failed");
                        }
                        failed = true;
                    } else {
                        failed = false;
                    }
                }
                Msg::Sync(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
                Msg::Reopen => {
                    if let Some(p) = &path {
                        let _ = out.flush();
                        match open(p) {
                            Ok(f) => {
                                out = std::io::BufWriter::new(Box::new(f));
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
        if let Err(e) = out.flush() {
            if !failed {
                tracing::error!(error = %e, "flushing the audit log failed");
            }
            failed = true;
        }
    }
    let _ = out.flush();
}
