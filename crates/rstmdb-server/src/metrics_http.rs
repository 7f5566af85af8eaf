//! The Prometheus exporter: renders [`Metrics`] (and the storage engine's own histograms and
//! gauges, read at scrape time) in the text exposition format (version 0.0.4) when
//! `/metrics` is scraped (with the `rstmdb_raft_*` families of `raft_metrics` on a cluster
//! member); `/healthz`, `/readyz` and, on a cluster member, `/leader` for supervisors and
//! load balancers.
//!
//! The HTTP side is deliberately tiny: GET-style requests only, head ≤ 8 KiB, 5 s to send
//! it, one response per connection.

use crate::metrics::{CLOSURES, Metrics, SUB_KINDS};
use rstmdb_cluster::ClusterNode;
use rstmdb_protocol::{ErrorCode, Op};
use rstmdb_storage::Database;
use rstmdb_storage::stats::HistogramSnapshot;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

struct Text(String);

impl Text {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "{name} {v}");
    }

    fn labelled(&mut self, name: &str, label: &str, value: &str, v: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{name}{{{label}=\"{value}\"}} {v}");
    }

    /// A histogram of µs (`scale` 1e-6, rendered in seconds) or plain counts (`scale` 1).
    fn histogram(&mut self, name: &str, labels: &str, h: &HistogramSnapshot, scale: f64) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in h.bounds.iter().zip(&h.cumulative) {
            let le = *b as f64 * scale;
            let _ = writeln!(self.0, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {c}");
        }
        let _ = writeln!(
            self.0,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            h.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(self.0, "{name}_sum{braces} {}", h.sum as f64 * scale);
        let _ = writeln!(self.0, "{name}_count{braces} {}", h.count);
    }
}

/// The whole `/metrics` body.
pub async fn render(m: &Metrics, db: &Database) -> String {
    let mut t = Text(String::with_capacity(16 * 1024));
    t.one(
        "rstmdb_connections_total",
        "counter",
        "Total number of connections accepted",
        m.connections_total.load(Relaxed),
    );
    t.one(
        "rstmdb_connections_active",
        "gauge",
        "Number of currently active connections",
        m.connections_active.load(Relaxed).max(0),
    );
    t.one(
        "rstmdb_request_ordering_entries",
        "gauge",
        "Requests held by the connections' ordering bookkeeping (at most those in flight)",
        m.ordering_entries.load(Relaxed).max(0),
    );
    t.head(
        "rstmdb_requests_total",
        "counter",
        "Total requests by operation",
    );
    for (op, c) in Op::ALL.iter().zip(&m.requests) {
        t.labelled(
            "rstmdb_requests_total",
            "operation",
            op.as_str(),
            c.load(Relaxed),
        );
    }
    t.head(
        "rstmdb_errors_total",
        "counter",
        "Total errors by error code",
    );
    for (code, c) in ErrorCode::ALL.iter().zip(&m.errors) {
        t.labelled(
            "rstmdb_errors_total",
            "code",
            code.as_str(),
            c.load(Relaxed),
        );
    }
    t.head(
        "rstmdb_request_duration_seconds",
        "histogram",
        "Request duration in seconds by operation",
    );
    for (op, h) in Op::ALL.iter().zip(&m.durations) {
        t.histogram(
            "rstmdb_request_duration_seconds",
            &format!("operation=\"{}\"", op.as_str()),
            &h.snapshot(),
            1e-6,
        );
    }
    t.head(
        "rstmdb_subscriptions_active",
        "gauge",
        "Active watch subscriptions by type",
    );
    for (k, g) in SUB_KINDS.iter().zip(&m.subscriptions_active) {
        t.labelled(
            "rstmdb_subscriptions_active",
            "type",
            k,
            g.load(Relaxed).max(0),
        );
    }
    t.head(
        "rstmdb_events_forwarded_total",
        "counter",
        "Total events forwarded to subscribers by type",
    );
    for (k, c) in SUB_KINDS.iter().zip(&m.events_forwarded) {
        t.labelled("rstmdb_events_forwarded_total", "type", k, c.load(Relaxed));
    }
    t.head(
        "rstmdb_subscription_lag_offsets",
        "histogram",
        "WAL offsets between the end of the log and each event as it is forwarded to a subscriber",
    );
    t.histogram(
        "rstmdb_subscription_lag_offsets",
        "",
        &m.subscription_lag.snapshot(),
        1.0,
    );
    t.head(
        "rstmdb_subscription_closures_total",
        "counter",
        "Subscribers disconnected for falling behind, by reason",
    );
    for (r, c) in CLOSURES.iter().zip(&m.closures) {
        t.labelled(
            "rstmdb_subscription_closures_total",
            "reason",
            r,
            c.load(Relaxed),
        );
    }
    t.one(
        "rstmdb_auth_failures_total",
        "counter",
        "Failed AUTH attempts",
        m.auth_failures.load(Relaxed),
    );
    t.one(
        "rstmdb_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or timed out",
        m.tls_handshake_failures.load(Relaxed),
    );
    t.one(
        "rstmdb_peer_tls_handshake_failures_total",
        "counter",
        "Cluster peer link TLS handshakes that failed or timed out, incoming and outgoing",
        m.peer_tls_handshake_failures.load(Relaxed),
    );
    t.one(
        "rstmdb_audit_dropped_total",
        "counter",
        "Audit records dropped because the audit log writer was audit.queue_depth behind",
        m.audit_dropped.load(Relaxed),
    );
    t.head(
        "rstmdb_reloads_total",
        "counter",
        "SIGHUP reloads of TLS and auth material by result",
    );
    t.labelled(
        "rstmdb_reloads_total",
        "result",
        "ok",
        m.reloads_ok.load(Relaxed),
    );
    t.labelled(
        "rstmdb_reloads_total",
        "result",
        "failed",
        m.reloads_failed.load(Relaxed),
    );

    let instances = db
        .list_instances(&rstmdb_storage::ListQuery {
            limit: 0,
            ..Default::default()
        })
        .map(|p| p.total)
        .unwrap_or(0);
    let machines: usize = db
        .list_machines()
        .map(|l| l.iter().map(|(_, v)| v.len()).sum())
        .unwrap_or(0);
    t.one(
        "rstmdb_instances_total",
        "gauge",
        "Total number of state machine instances",
        instances,
    );
    t.one(
        "rstmdb_machines_total",
        "gauge",
        "Total number of registered state machines",
        machines,
    );
    if let Ok(w) = db.wal_stats().await {
        t.one(
            "rstmdb_wal_entries",
            "gauge",
            "Number of entries in the WAL",
            w.entry_count,
        );
        t.one(
            "rstmdb_wal_segments",
            "gauge",
            "Number of WAL segments",
            w.segment_count,
        );
        t.one(
            "rstmdb_wal_size_bytes",
            "gauge",
            "Total size of WAL on disk in bytes",
            w.total_size_bytes,
        );
        t.one(
            "rstmdb_wal_bytes_written_total",
            "counter",
            "Total bytes written to WAL",
            w.bytes_written,
        );
        t.one(
            "rstmdb_wal_bytes_read_total",
            "counter",
            "Total bytes read from WAL",
            w.bytes_read,
        );
        t.one(
            "rstmdb_wal_writes_total",
            "counter",
            "Total WAL write operations",
            w.writes,
        );
        t.one(
            "rstmdb_wal_reads_total",
            "counter",
            "Total WAL read operations",
            w.reads,
        );
        t.one(
            "rstmdb_wal_fsyncs_total",
            "counter",
            "Total WAL fsync operations",
            w.fsyncs,
        );
        t.one(
            "rstmdb_wal_archive_failures_total",
            "counter",
            "WAL segments a checkpoint could not copy to storage.wal_archive_dir (kept)",
            w.archive_failures,
        );
        t.one(
            "rstmdb_wal_latest_offset",
            "gauge",
            "Offset of the newest WAL record",
            w.latest_offset,
        );
        t.one(
            "rstmdb_checkpoint_offset",
            "gauge",
            "WAL offset of the last checkpoint",
            w.checkpoint_offset,
        );
    }
    let cs = db.commit_stats();
    t.head(
        "rstmdb_group_commit_size",
        "histogram",
        "WAL records written and synced together per group commit",
    );
    t.histogram(
        "rstmdb_group_commit_size",
        "",
        &cs.group_size.snapshot(),
        1.0,
    );
    t.head(
        "rstmdb_wal_fsync_duration_seconds",
        "histogram",
        "Duration of WAL fdatasync calls",
    );
    t.histogram(
        "rstmdb_wal_fsync_duration_seconds",
        "",
        &cs.fsync_micros.snapshot(),
        1e-6,
    );
    t.head(
        "rstmdb_checkpoint_duration_seconds",
        "histogram",
        "Duration of checkpoints (state flush and WAL trim)",
    );
    t.histogram(
        "rstmdb_checkpoint_duration_seconds",
        "",
        &cs.checkpoint_micros.snapshot(),
        1e-6,
    );
    t.one(
        "rstmdb_recovery_duration_seconds",
        "gauge",
        "Time the last startup took to open the database and replay the WAL",
        cs.recovery_micros.load(Relaxed) as f64 * 1e-6,
    );
    t.one(
        "rstmdb_recovery_replayed_records",
        "gauge",
        "WAL records replayed at the last startup",
        cs.recovery_records.load(Relaxed),
    );
    let ic = db.instance_cache_stats();
    t.one(
        "rstmdb_instance_cache_hits_total",
        "counter",
        "Instance lookups answered from the decoded-instance cache",
        ic.hits,
    );
    t.one(
        "rstmdb_instance_cache_misses_total",
        "counter",
        "Instance lookups that read the state store (unknown ids included)",
        ic.misses,
    );
    let lookups = ic.hits + ic.misses;
    t.one(
        "rstmdb_instance_cache_hit_ratio",
        "gauge",
        "Share of instance lookups since startup answered from the cache (0 before any)",
        if lookups == 0 {
            0.0
        } else {
            ic.hits as f64 / lookups as f64
        },
    );
    t.one(
        "rstmdb_instance_cache_entries",
        "gauge",
        "Instances held in the decoded-instance cache",
        ic.entries,
    );
    t.one(
        "rstmdb_instance_cache_bytes",
        "gauge",
        "Estimated memory held by the decoded-instance cache (bounded by storage.instance_cache_mb)",
        ic.weight_bytes,
    );
    process_metrics(&mut t);
    t.0
}

/// The standard `process_*` families from /proc (Linux); absent elsewhere.
fn process_metrics(t: &mut Text) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the parenthesised command name; utime/stime are fields 14/15, threads 20,
    // starttime 22, vsize 23 (1-based, man 5 proc).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    // USER_HZ is 100 on every Linux ABI rstmdb builds for.
    const TICKS: f64 = 100.0;
    if let (Some(u), Some(s)) = (field(14), field(15)) {
        t.one(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (u + s) as f64 / TICKS,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        t.one(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count(),
        );
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits")
        && let Some(max) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok())
    {
        t.one(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    if let Some(v) = field(23) {
        t.one(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            v,
        );
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kb) = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    {
        t.one(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            kb * 1024,
        );
    }
    if let (Some(start), Ok(pstat)) = (field(22), std::fs::read_to_string("/proc/stat"))
        && let Some(btime) = pstat
            .lines()
            .find(|l| l.starts_with("btime "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    {
        t.one(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            btime as f64 + start as f64 / TICKS,
        );
    }
    if let Some(n) = field(20) {
        t.one(
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            n,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

const MAX_HEAD_BYTES: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more wait in the accept queue.
const MAX_CONCURRENT_SCRAPES: usize = 16;

/// Serves `/metrics`, `/health`, `/healthz`, `/readyz`, `/leader` and `/` until the task is
/// dropped. `cluster` is the raft node when the server is a cluster member.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    db: Database,
    cluster: Option<Arc<ClusterNode>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SCRAPES));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let db = db.clone();
        let cluster = cluster.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics, &db, cluster.as_deref()).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
            drop(permit);
        });
    }
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    metrics: &Metrics,
    db: &Database,
    cluster: Option<&ClusterNode>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > MAX_HEAD_BYTES {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let (status, ctype, body) = match path {
        "/metrics" => (
            "200 OK",
            Some("text/plain; version=0.0.4; charset=utf-8"),
            {
                let mut body = render(metrics, db).await;
                if let Some(node) = cluster {
                    body.push_str(&crate::raft_metrics::render(node).await);
                }
                body
            },
        ),
        "/health" | "/healthz" => ("200 OK", None, "OK".to_string()),
        "/readyz" => {
            if !metrics.ready.load(Relaxed) {
                ("503 Service Unavailable", None, "shutting down".to_string())
            } else if cluster.is_some_and(|n| !n.is_ready()) {
                (
                    "503 Service Unavailable",
                    None,
                    "no leader known yet, or still applying what was committed before the restart"
                        .to_string(),
                )
            } else {
                ("200 OK", None, "ready".to_string())
            }
        }
        "/leader" => match cluster {
            Some(n) if n.is_leader() => ("200 OK", None, "leader".to_string()),
            Some(_) => ("503 Service Unavailable", None, "not the leader".to_string()),
            None => (
                "503 Service Unavailable",
                None,
                "not a cluster member".to_string(),
            ),
        },
        "/" => (
            "200 OK",
            Some("text/html; charset=utf-8"),
            "<html><head><title>rstmdb</title></head><body><h1>rstmdb</h1><p><a href=\"/metrics\">metrics</a></p></body></html>".to_string(),
        ),
        _ => ("404 Not Found", None, "Not Found".to_string()),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(c) = ctype {
        out.push_str(&format!("Content-Type: {c}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}
