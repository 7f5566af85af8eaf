//! Prometheus metrics: counters kept with relaxed atomics on the request path. They are
//! rendered and served over HTTP by `metrics_http` (which imports this module, not the
//! other way round).
//!
//! Every metric name and label of the reference is kept (operations.md §5.2) so dashboards
//! keep working; its drifting gauges are fixed (connections and subscriptions are counted
//! down by guards however they end). The format is rendered here rather than through a
//! registry crate: it is a few lines of text per family, and per-request updates stay a
//! couple of uncontended atomic adds with no lock or label hashing.

use rstmdb_protocol::{ErrorCode, Op};
use rstmdb_storage::stats::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Request duration bounds in µs: the reference's 1 ms … 1 s seconds buckets.
/// `rstmdb_subscription_lag_offsets` buckets: WAL offsets between the log's end and an event
/// as it is forwarded.
const LAG_OFFSETS: &[u64] = &[0, 1, 4, 16, 64, 256, 1024, 4096, 16384, 65536];

const REQUEST_MICROS: &[u64] = &[
    1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
];

/// Subscription kinds (label `type`).
#[derive(Debug, Clone, Copy)]
pub enum SubKind {
    Instance = 0,
    All = 1,
}

pub(crate) const SUB_KINDS: [&str; 2] = ["instance", "all"];

/// Why a subscriber was cut off (label `reason`).
#[derive(Debug, Clone, Copy)]
pub enum Closure {
    /// Its connection's event queue was full.
    QueueFull = 0,
    /// It fell behind the engine's change feed.
    Lagged = 1,
    /// The feed failed (e.g. the WAL it resumed from was trimmed).
    Error = 2,
}

pub(crate) const CLOSURES: [&str; 3] = ["queue_full", "lagged", "error"];

#[derive(Debug)]
pub struct Metrics {
    pub(crate) connections_total: AtomicU64,
    pub(crate) connections_active: AtomicI64,
    pub(crate) requests: Vec<AtomicU64>,
    pub(crate) durations: Vec<Histogram>,
    pub(crate) errors: Vec<AtomicU64>,
    pub(crate) subscriptions_active: [AtomicI64; 2],
    pub(crate) events_forwarded: [AtomicU64; 2],
    pub(crate) closures: [AtomicU64; 3],
    pub(crate) subscription_lag: Histogram,
    pub auth_failures: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Failed handshakes on the cluster peer link; the cluster node's own counter
    /// (`ClusterNode::peer_handshake_failures`) in cluster mode.
    pub peer_tls_handshake_failures: Arc<AtomicU64>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Audit records dropped because the audit writer was `audit.queue_depth` behind; the
    /// audit log's own counter (`AuditLog::dropped_counter`) when the log is on.
    pub audit_dropped: Arc<AtomicU64>,
    /// Requests held by the connections' ordering bookkeeping (`session::Ordering`): at most
    /// the requests in flight, whatever a connection did before.
    pub ordering_entries: AtomicI64,
    /// False once shutdown starts: `/readyz` answers 503.
    pub(crate) ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections_total: AtomicU64::new(0),
            connections_active: AtomicI64::new(0),
            requests: Op::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            durations: Op::ALL
                .iter()
                .map(|_| Histogram::new(REQUEST_MICROS))
                .collect(),
            errors: ErrorCode::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            subscriptions_active: Default::default(),
            events_forwarded: Default::default(),
            closures: Default::default(),
            subscription_lag: Histogram::new(LAG_OFFSETS),
            auth_failures: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            peer_tls_handshake_failures: Arc::new(AtomicU64::new(0)),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            audit_dropped: Arc::new(AtomicU64::new(0)),
            ordering_entries: AtomicI64::new(0),
            ready: AtomicBool::new(true),
        }
    }
}

fn op_index(op: Op) -> Option<usize> {
    Op::ALL.iter().position(|o| *o == op)
}

/// Decrements a gauge when dropped.
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a AtomicI64);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Like [`GaugeGuard`] but owning its metrics, for spawned tasks.
#[derive(Debug)]
pub struct SubscriptionGuard {
    metrics: Arc<Metrics>,
    kind: SubKind,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.metrics.subscriptions_active[self.kind as usize].fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    pub fn connection(&self) -> GaugeGuard<'_> {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_active.fetch_add(1, Relaxed);
        GaugeGuard(&self.connections_active)
    }

    /// One request finished: its op (if it could be decoded), how long it took, its error.
    pub fn request(&self, op: Option<Op>, elapsed: Duration, error: Option<ErrorCode>) {
        if let Some(i) = op.and_then(op_index) {
            if let Some(c) = self.requests.get(i) {
                c.fetch_add(1, Relaxed);
            }
            if let Some(h) = self.durations.get(i) {
                h.observe(elapsed.as_micros() as u64);
            }
        }
        if let Some(code) = error
            && let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code)
            && let Some(c) = self.errors.get(i)
        {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn subscription(self: &Arc<Self>, kind: SubKind) -> SubscriptionGuard {
        self.subscriptions_active[kind as usize].fetch_add(1, Relaxed);
        SubscriptionGuard {
            metrics: self.clone(),
            kind,
        }
    }

    /// An event went to a subscriber `lag` WAL offsets behind the end of the log.
    pub fn event_forwarded(&self, kind: SubKind, lag: u64) {
        self.events_forwarded[kind as usize].fetch_add(1, Relaxed);
        self.subscription_lag.observe(lag);
    }

    pub fn subscriber_closed(&self, why: Closure) {
        self.closures[why as usize].fetch_add(1, Relaxed);
    }

    pub fn set_not_ready(&self) {
        self.ready.store(false, Relaxed);
    }
}
