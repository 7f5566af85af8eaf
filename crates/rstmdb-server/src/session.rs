//! One connection: read requests (binary frames or JSON lines, told apart by their first
//! byte), run them, write responses in request order, and interleave watch events.
//!
//! Requests are answered in order: each becomes a future in a `FuturesOrdered`, which yields
//! results in the order they were pushed. They are *executed* as concurrently as is safe
//! ([`Ordering`]): ops on one instance run in order, anything else (lists, machines, batches,
//! watches, WAL reads) waits for every earlier request, and writes to different instances run
//! together so that one connection's pipelined writes share group commits. A client always
//! sees its own earlier writes. HELLO, AUTH, PING, BYE and UNWATCH run synchronously while
//! reading, so a later request always sees their effect (an AUTH pipelined before a GET
//! authenticates that GET); INFO waits for every earlier request, so its `wal_offset` covers
//! the client's own pipelined writes.
//!
//! Limits: `max_inflight_per_connection` requests at once (reading pauses beyond it),
//! `max_subscriptions_per_connection`, `subscription_queue_depth` events buffered (a
//! subscriber that falls further behind is disconnected rather than slowing writers or
//! growing memory), `idle_timeout_secs` without a request while nothing is in flight.

use crate::audit::Record;
use crate::auth::{Principal, glob_match};
use crate::authz;
use crate::error::bad_request;
use crate::handlers::{self, Payload};
use crate::metrics::{Closure, Metrics, SubKind, SubscriptionGuard};
use crate::shared::Shared;
use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use rstmdb_protocol::{
    Command, ErrorCode, ErrorObject, Event, Inbound, InboundCodec, Meta, Op, OutboundCodec,
    Response, WatchAllParams, WatchInstanceParams, WireMode, decode_request,
};
use rstmdb_storage::{ChangeEvent, ChangeStream, WatchError};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

/// Features a client may negotiate in HELLO (the reference set).
pub const FEATURES: [&str; 3] = ["idempotency", "batch", "wal_read"];

/// A response ready to be written, with what writing it implies.
struct Outgoing {
    response: Response,
    /// The wire mode in force when the request was read (HELLO's own response already uses
    /// the new mode).
    mode: WireMode,
    close_after: bool,
    start_watch: Option<PendingWatch>,
    /// A subscription id reserved at dispatch whose WATCH failed: release it.
    failed_watch: Option<String>,
}

type Pending = Pin<Box<dyn Future<Output = Outgoing> + Send>>;

/// Marks one admitted request finished: set when its [`DoneGuard`] drops (the request ran,
/// or its future was dropped), whether or not anything ever waits on it. Bookkeeping can
/// therefore drop finished requests without polling anything.
#[derive(Default)]
struct Completion {
    done: AtomicBool,
    notify: Notify,
}

type Done = Arc<Completion>;

impl Completion {
    fn is_done(&self) -> bool {
        self.done.load(AtomicOrdering::Acquire)
    }

    /// Resolves once the request has finished.
    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a finish between the two is not missed.
            notified.as_mut().enable();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }
}

/// Held by a running request; dropping it marks the request finished.
struct DoneGuard(Done);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.done.store(true, AtomicOrdering::Release);
        self.0.notify.notify_waiters();
    }
}

/// One admitted request, oldest first in [`Ordering::admitted`].
struct Admitted {
    done: Done,
    /// The instance it is registered under in `by_instance`, if any.
    instance: Option<Arc<str>>,
}

/// What a request must wait for before it runs (see the module docs).
///
/// Holds only requests that are in flight: every entry is admitted in request order and
/// released in the same order once it has finished ([`Ordering::release_finished`], called
/// as answers are written), so a connection that lives for days and touches millions of
/// instances keeps at most `max_inflight_per_connection` entries here.
struct Ordering {
    admitted: VecDeque<Admitted>,
    barrier: Option<Done>,
    by_instance: HashMap<Arc<str>, Done>,
    /// `rstmdb_request_ordering_entries`: the sum of `admitted.len()` over the connections.
    gauge: Arc<Metrics>,
}

enum Scope<'a> {
    /// Touches one instance: waits for the last barrier and earlier ops on that instance.
    Instance(&'a str),
    /// Touches nothing an earlier request could affect (a create with a generated id).
    Free,
    /// Waits for everything before it; everything after waits for it.
    Barrier,
}

impl Ordering {
    fn new(gauge: Arc<Metrics>) -> Ordering {
        Ordering {
            admitted: VecDeque::new(),
            barrier: None,
            by_instance: HashMap::new(),
            gauge,
        }
    }

    /// Registers a request; returns what it must wait for and the guard whose drop marks
    /// it done.
    fn admit(&mut self, scope: Scope<'_>) -> (Vec<Done>, DoneGuard) {
        self.release_finished();
        if self.barrier.as_ref().is_some_and(|b| b.is_done()) {
            self.barrier = None;
        }
        let done: Done = Arc::default();
        let mut instance = None;
        let waits = match scope {
            Scope::Instance(id) => {
                let mut w: Vec<Done> = self.barrier.iter().cloned().collect();
                let key: Arc<str> = Arc::from(id);
                if let Some(prev) = self.by_instance.insert(key.clone(), done.clone())
                    && !prev.is_done()
                {
                    w.push(prev);
                }
                instance = Some(key);
                w
            }
            Scope::Free => self.barrier.iter().cloned().collect(),
            Scope::Barrier => {
                let w = self
                    .admitted
                    .iter()
                    .filter(|a| !a.done.is_done())
                    .map(|a| a.done.clone())
                    .collect();
                self.barrier = Some(done.clone());
                w
            }
        };
        self.admitted.push_back(Admitted {
            done: done.clone(),
            instance,
        });
        self.gauge
            .ordering_entries
            .fetch_add(1, AtomicOrdering::Relaxed);
        (waits, DoneGuard(done))
    }

    /// Forgets the oldest requests while they have finished. Answers leave in request
    /// order, so once a request's answer is taken every request admitted before it has
    /// finished too and is dropped here.
    fn release_finished(&mut self) {
        let mut released = 0;
        while self.admitted.front().is_some_and(|a| a.done.is_done()) {
            let Some(a) = self.admitted.pop_front() else {
                break;
            };
            released += 1;
            if let Some(key) = a.instance
                && self
                    .by_instance
                    .get(&key)
                    .is_some_and(|d| Arc::ptr_eq(d, &a.done))
            {
                self.by_instance.remove(&key);
            }
            if self
                .barrier
                .as_ref()
                .is_some_and(|b| Arc::ptr_eq(b, &a.done))
            {
                self.barrier = None;
            }
        }
        if released > 0 {
            self.gauge
                .ordering_entries
                .fetch_sub(released, AtomicOrdering::Relaxed);
        }
        debug_assert!(self.by_instance.len() <= self.admitted.len());
    }

    /// Entries held: admitted requests not yet released, and the instances they name.
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        (self.admitted.len(), self.by_instance.len())
    }
}

impl Drop for Ordering {
    fn drop(&mut self) {
        self.gauge
            .ordering_entries
            .fetch_sub(self.admitted.len() as i64, AtomicOrdering::Relaxed);
    }
}

fn scope_of(cmd: &Command) -> Scope<'_> {
    match cmd {
        Command::CreateInstance(p) => p
            .instance_id
            .as_deref()
            .map_or(Scope::Free, Scope::Instance),
        Command::ApplyEvent(p) => Scope::Instance(&p.instance_id),
        Command::DeleteInstance(p) => Scope::Instance(&p.instance_id),
        Command::GetInstance(p) => Scope::Instance(&p.instance_id),
        _ => Scope::Barrier,
    }
}

/// What data ops run against, borrowed from the shared state.
fn data_ctx(shared: &Shared) -> handlers::Ctx<'_> {
    handlers::Ctx {
        db: &shared.db,
        backups: &shared.backups,
        flush_epoch: &shared.flush_epoch,
    }
}

/// A subscription whose event forwarding starts once its WATCH response is written, so that
/// the response always precedes the subscription's events.
struct PendingWatch {
    id: String,
    /// Counts the subscription as active from its successful WATCH on (before the response
    /// is written, so a client never sees its WATCH answered but not counted) until the
    /// forwarding task ends or the watch is dropped unstarted.
    active: SubscriptionGuard,
    stream: ChangeStream,
    filter: Filter,
    include_ctx: bool,
    /// A principal limited to some machines sees only their events.
    machine_globs: Vec<String>,
}

enum Filter {
    Instance(String),
    All(WatchAllParams),
}

impl Filter {
    fn matches(&self, ev: &ChangeEvent, machine_globs: &[String]) -> bool {
        if !machine_globs.is_empty() && !machine_globs.iter().any(|g| glob_match(g, &ev.machine)) {
            return false;
        }
        fn any(list: &[String], v: &str) -> bool {
            list.is_empty() || list.iter().any(|x| x == v)
        }
        match self {
            Filter::Instance(id) => ev.instance_id == *id,
            Filter::All(p) => {
                any(&p.machines, &ev.machine)
                    && any(&p.from_states, &ev.from_state)
                    && any(&p.to_states, &ev.to_state)
                    && any(&p.events, &ev.event)
            }
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds, for `meta.server_time`.
pub fn rfc3339_now() -> String {
    rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// RFC 3339 UTC timestamp with milliseconds for a time since the Unix epoch.
fn rfc3339(now: std::time::Duration) -> String {
    let secs = now.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Written digit by digit: `format!` here cost ~3 % of the server's CPU per request.
    let mut out = [0u8; 24];
    let fields: [(i64, usize, u8); 7] = [
        (y.clamp(0, 9999), 4, b'-'),
        (m, 2, b'-'),
        (d, 2, b'T'),
        (sod / 3600, 2, b':'),
        ((sod % 3600) / 60, 2, b':'),
        (sod % 60, 2, b'.'),
        (i64::from(now.subsec_millis()), 3, b'Z'),
    ];
    let mut at = 0;
    for (value, width, sep) in fields {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out[at + width] = sep;
        at += width + 1;
    }
    String::from_utf8_lossy(&out[..at]).into_owned()
}

fn meta(wal_offset: Option<u64>) -> Meta {
    Meta {
        server_time: Some(rfc3339_now()),
        wal_offset,
        ..Default::default()
    }
}

fn respond(id: Option<String>, result: Result<(Value, Option<u64>), ErrorObject>) -> Response {
    respond_payload(id, result.map(|(v, off)| (Payload::Value(v), off)))
}

fn respond_payload(
    id: Option<String>,
    result: Result<(Payload, Option<u64>), ErrorObject>,
) -> Response {
    match (result, id) {
        (Ok((Payload::Value(v), off)), Some(id)) => Response::ok(id, v).with_meta(meta(off)),
        (Ok((Payload::Raw(raw), off)), Some(id)) => Response::ok_raw(id, raw).with_meta(meta(off)),
        (Ok((_, off)), None) => {
            // Unreachable (successes always have an id), but never answer without one.
            Response::error(None, bad_request("request without an id")).with_meta(meta(off))
        }
        (Err(e), id) => Response::error(id, e).with_meta(meta(None)),
    }
}

fn ready(out: Outgoing) -> Pending {
    Box::pin(std::future::ready(out))
}

enum Target {
    Instance(WatchInstanceParams),
    All(WatchAllParams),
}

fn subscribe(
    shared: &Shared,
    sub: String,
    target: Target,
    machine_globs: Vec<String>,
) -> Result<(Value, PendingWatch), ErrorObject> {
    let db = &shared.db;
    let wire = |e: rstmdb_core::Error| crate::error::to_wire(&e);
    match target {
        Target::Instance(p) => {
            let inst = db.get_instance(&p.instance_id).map_err(wire)?;
            let stream = db.watch(p.from_offset).map_err(wire)?;
            Ok((
                json!({
                    "subscription_id": sub,
                    "instance_id": inst.id,
                    "current_state": inst.state,
                    "current_wal_offset": inst.last_wal_offset,
                }),
                PendingWatch {
                    id: sub,
                    active: shared.metrics.subscription(SubKind::Instance),
                    stream,
                    filter: Filter::Instance(p.instance_id),
                    include_ctx: p.include_ctx,
                    machine_globs,
                },
            ))
        }
        Target::All(p) => {
            let stream = db.watch(p.from_offset).map_err(wire)?;
            Ok((
                json!({"subscription_id": sub, "wal_offset": db.last_offset()}),
                PendingWatch {
                    id: sub,
                    active: shared.metrics.subscription(SubKind::All),
                    stream,
                    include_ctx: p.include_ctx,
                    filter: Filter::All(p),
                    machine_globs,
                },
            ))
        }
    }
}

/// What the listener knows about a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// Subject CN of a verified client certificate (mTLS).
    pub cert_cn: Option<String>,
}

struct Session {
    peer: SocketAddr,
    shared: Arc<Shared>,
    /// `None` until authenticated (always `Some` when auth is off).
    principal: Option<Arc<Principal>>,
    mode: WireMode,
    /// Subscription id → forwarding task (`None` until its WATCH response is written).
    watches: HashMap<String, Option<JoinHandle<()>>>,
    closing: bool,
    events_tx: mpsc::Sender<Bytes>,
    overflow: Arc<Notify>,
    ordering: Ordering,
}

/// Runs a connection until it closes, the client says BYE, it idles out, or `stop` fires.
pub async fn run<R, W>(
    rd: R,
    wr: W,
    info: ConnInfo,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let net = shared.config.network.clone();
    let peer = info.peer;
    let auth = shared.auth();
    // A verified client certificate listed in auth.cert_identities is an identity of its own;
    // otherwise, with auth off, everyone is the anonymous admin.
    let principal = match info
        .cert_cn
        .as_deref()
        .and_then(|cn| auth.principal_for_cert(cn))
    {
        Some(p) => Some(Arc::new(p)),
        None if !auth.required => Some(Arc::new(Principal::anonymous())),
        None => None,
    };
    let mut reader = FramedRead::new(
        rd,
        InboundCodec::with_max_payload_bytes(net.max_frame_bytes),
    );
    let mut writer = FramedWrite::new(
        wr,
        OutboundCodec::with_max_payload_bytes(net.max_frame_bytes),
    );
    let (events_tx, mut events_rx) = mpsc::channel::<Bytes>(net.subscription_queue_depth);
    let overflow = Arc::new(Notify::new());
    let ordering = Ordering::new(shared.metrics.clone());
    let mut s = Session {
        peer,
        principal,
        shared,
        mode: WireMode::BinaryJson,
        watches: HashMap::new(),
        closing: false,
        events_tx,
        overflow: overflow.clone(),
        ordering,
    };
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    // The wake-up sources live across loop turns: a fresh `changed()`/`notified()`/`sleep`
    // in every select! registered and removed a waiter (on lists shared by all sessions, and
    // in the timer wheel) two or three times per request.
    let mut stop_changed = next_change(stop);
    let mut flush_changed = next_change(s.shared.flush_epoch.subscribe());
    let mut overflowed: Signal = {
        let overflow = overflow.clone();
        Box::pin(async move { overflow.notified().await })
    };
    let idle = std::time::Duration::from_secs(net.idle_timeout_secs);
    // The idle timer is armed once and only moved when it fires early: activity just pushes
    // `deadline` forward.
    let mut deadline = Instant::now() + idle;
    let idle_timer = tokio::time::sleep_until(deadline);
    tokio::pin!(idle_timer);
    let event_burst = (net.subscription_queue_depth / 2).max(1);

    'session: loop {
        if s.closing && pending.is_empty() {
            break;
        }
        let can_read = !s.closing && pending.len() < net.max_inflight_per_connection;
        // Events wait for in-flight responses (so an APPLY's own event follows its response)
        // unless they are piling up.
        let events_allowed = pending.is_empty() || events_rx.len() >= event_burst;
        tokio::select! {
            biased;
            _ = &mut stop_changed, if !s.closing => {
                // Server shutdown (or the server dropped the sender): answer what was read.
                // The finished future is never polled again: `closing` stays set.
                s.closing = true;
            }
            (changed, rx) = &mut flush_changed => {
                if changed.is_ok() {
                    // FLUSH_ALL: what was watched is gone, so are the subscriptions.
                    for (_, task) in s.watches.drain() {
                        if let Some(t) = task {
                            t.abort();
                        }
                    }
                    flush_changed = next_change(rx);
                } else {
                    // The server is going away; stop polling a closed channel.
                    flush_changed = Box::pin(std::future::pending());
                }
            }
            _ = &mut overflowed => {
                tracing::warn!(peer = %s.peer, "subscriber fell behind; closing the connection");
                break;
            }
            Some(first) = pending.next(), if !pending.is_empty() => {
                // Every response that is ready now (a group commit completes many at once)
                // is encoded into the write buffer, then they all go out with one flush.
                let mut next = Some(first);
                let mut read_ahead = 0;
                while let Some(out) = next.take() {
                    let fed = feed(&mut writer, &out.response, out.mode);
                    if !written(fed, &mut overflowed, idle, s.peer, "responses").await {
                        break 'session;
                    }
                    if let Some(w) = out.start_watch {
                        s.start_forwarding(w);
                    }
                    if let Some(sub) = out.failed_watch {
                        s.watches.remove(&sub);
                    }
                    if out.close_after {
                        break 'session; // flushed below
                    }
                    next = pending.next().now_or_never().flatten();
                    // Pipelined requests already received are read before flushing, so their
                    // answers share the write too: only while the reader's buffer holds bytes
                    // (with nothing buffered, asking the socket would cost a syscall per
                    // answer; a partial frame costs one read attempt), and at most
                    // READ_AHEAD_MAX per flush, so a client streaming requests whose answers
                    // are ready at once cannot keep events, shutdown and the flush waiting.
                    while next.is_none()
                        && !s.closing
                        && pending.len() < net.max_inflight_per_connection
                        && read_ahead < READ_AHEAD_MAX
                        && !reader.read_buffer().is_empty()
                    {
                        read_ahead += 1;
                        let Some(item) = reader.next().now_or_never() else { break };
                        s.on_read(item, &mut pending);
                        next = pending.next().now_or_never().flatten();
                    }
                }
                // The answered requests leave the ordering bookkeeping now, whether or not a
                // later request ever waited on them.
                s.ordering.release_finished();
                let flush = SinkExt::<Bytes>::flush(&mut writer);
                if !written(flush, &mut overflowed, idle, s.peer, "responses").await {
                    break;
                }
                // Time spent on requests is not idle time: the clock restarts once the
                // connection has nothing in flight (a long BACKUP_BEGIN is not cut off).
                deadline = Instant::now() + idle;
            }
            Some(ev) = events_rx.recv(), if events_allowed => {
                writer.encoder_mut().set_mode(s.mode);
                if !written(writer.send(ev), &mut overflowed, idle, s.peer, "events").await {
                    break;
                }
            }
            item = reader.next(), if can_read => {
                s.on_read(item, &mut pending);
                deadline = Instant::now() + idle;
            }
            () = &mut idle_timer, if !s.closing && pending.is_empty() => {
                if Instant::now() >= deadline {
                    tracing::debug!(peer = %s.peer, "idle timeout");
                    break;
                }
                idle_timer.as_mut().reset(deadline);
            }
        }
    }
    // Bounded: a peer that stopped reading must not hold the task and its connection slot.
    let _ = tokio::time::timeout(
        idle.min(FINAL_FLUSH_TIMEOUT),
        SinkExt::<Bytes>::flush(&mut writer),
    )
    .await;
    for (_, task) in s.watches.drain() {
        if let Some(t) = task {
            t.abort();
        }
    }
    tracing::debug!(peer = %s.peer, "client disconnected");
}

/// A one-shot wake-up the session loop keeps across turns (see `run`).
type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The next change of a watch channel, handing the receiver back for the one after.
type Changed<T> =
    Pin<Box<dyn Future<Output = (Result<(), watch::error::RecvError>, watch::Receiver<T>)> + Send>>;

fn next_change<T: Send + Sync + 'static>(mut rx: watch::Receiver<T>) -> Changed<T> {
    Box::pin(async move {
        let r = rx.changed().await;
        (r, rx)
    })
}

/// Runs a write of `what` (responses, events); `false` means the connection must close, and
/// why is logged: the write failed, a subscriber of this connection fell behind, or the write
/// made no progress for `idle` (a peer that stops reading fills its TCP window and parks it).
/// A write that finishes at once (the usual case: the buffer has room) never touches the timer.
async fn written<F, E>(
    op: F,
    overflowed: &mut Signal,
    idle: std::time::Duration,
    peer: SocketAddr,
    what: &str,
) -> bool
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut op = std::pin::pin!(op);
    let result = match op.as_mut().now_or_never() {
        Some(r) => r,
        None => tokio::select! {
            biased;
            r = op => r,
            _ = overflowed => {
                tracing::warn!(peer = %peer, "subscriber fell behind; closing the connection");
                return false;
            }
            _ = tokio::time::sleep(idle) => {
                tracing::warn!(peer = %peer, "client stopped reading {what}; closing the connection");
                return false;
            }
        },
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(peer = %peer, error = %e, "writing {what} failed");
            false
        }
    }
}

/// Requests read from the buffer before one flush of answers (see the session loop).
const READ_AHEAD_MAX: usize = 64;

/// How long the answers left at the close (e.g. BYE's) may take to reach a slow reader.
const FINAL_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Encodes `response` into the write buffer (written out by the caller's flush, or earlier
/// when the buffer fills).
async fn feed<W: AsyncWrite + Unpin>(
    writer: &mut FramedWrite<W, OutboundCodec>,
    response: &Response,
    mode: WireMode,
) -> std::io::Result<()> {
    let bytes = match response.to_json_bytes() {
        Ok(b) => b,
        Err(e) => {
            let fallback = Response::error(
                response.id.clone(),
                ErrorObject::new(ErrorCode::InternalError, format!("encoding response: {e}")),
            );
            fallback.to_json_bytes().map_err(std::io::Error::other)?
        }
    };
    writer.encoder_mut().set_mode(mode);
    match writer.feed(bytes).await {
        Ok(()) => Ok(()),
        Err(rstmdb_protocol::FrameError::PayloadTooLarge { len, max }) => {
            // Never drop a response: say why instead (WAL_READ pages stop well before this).
            let e = Response::error(
                response.id.clone(),
                ErrorObject::new(
                    ErrorCode::InternalError,
                    format!("response of {len} bytes exceeds the frame limit of {max}"),
                ),
            );
            let b = e.to_json_bytes().map_err(std::io::Error::other)?;
            writer.feed(b).await.map_err(std::io::Error::other)
        }
        Err(e) => Err(std::io::Error::other(e)),
    }
}

impl Session {
    /// Runs `work` once every earlier request on the connection has finished; later
    /// requests wait for it (a barrier in [`Ordering`]).
    fn after_earlier(
        &mut self,
        work: impl FnOnce(Arc<Shared>) -> Outgoing + Send + 'static,
    ) -> Pending {
        let (waits, done) = self.ordering.admit(Scope::Barrier);
        let shared = self.shared.clone();
        Box::pin(async move {
            for w in waits {
                w.wait().await;
            }
            let out = work(shared);
            drop(done);
            out
        })
    }

    fn out(
        &self,
        id: Option<String>,
        result: Result<(Value, Option<u64>), ErrorObject>,
    ) -> Outgoing {
        Outgoing {
            response: respond(id, result),
            mode: self.mode,
            close_after: false,
            start_watch: None,
            failed_watch: None,
        }
    }

    /// Runs one request; with the audit log or metrics on, its outcome is recorded when it
    /// completes.
    /// Takes one item from the reader: a request to run, the end of the stream, or a framing
    /// error (after which nothing can be trusted: what was read before it is answered, then
    /// the connection closes).
    fn on_read<E: std::fmt::Display>(
        &mut self,
        item: Option<Result<Inbound, E>>,
        pending: &mut FuturesOrdered<Pending>,
    ) {
        match item {
            // Half-close: answer everything already read, then close.
            None => self.closing = true,
            Some(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "framing error; closing");
                self.closing = true;
            }
            Some(Ok(inbound)) => pending.push_back(self.dispatch(inbound)),
        }
    }

    fn dispatch(&mut self, inbound: Inbound) -> Pending {
        let decoded = decode_request(&inbound.payload);
        let audit = self.shared.audit.clone();
        let metrics_on = self.shared.config.metrics.enabled;
        if audit.is_none() && !metrics_on {
            return self.dispatch_inner(decoded, inbound.payload);
        }
        let start = std::time::Instant::now();
        let op = decoded.as_ref().ok().map(|r| r.command.op());
        let fields = match (&audit, &decoded) {
            (Some(_), Ok(r)) => AuditFields::of(&r.command),
            _ => AuditFields::default(),
        };
        let pending = self.dispatch_inner(decoded, inbound.payload);
        let identity = self.principal.as_ref().map(|p| p.name.clone());
        let client_addr = self.peer.to_string();
        let metrics = metrics_on.then(|| self.shared.metrics.clone());
        let shared = self.shared.clone();
        Box::pin(async move {
            let out = pending.await;
            let error = match &out.response.body {
                rstmdb_protocol::ResponseBody::Ok(_) | rstmdb_protocol::ResponseBody::OkRaw(_) => {
                    None
                }
                rstmdb_protocol::ResponseBody::Err(e) => Some(e.code),
            };
            let elapsed = start.elapsed();
            if let Some(m) = metrics {
                m.request(op, elapsed, error);
            }
            if let Some(audit) = audit {
                // Instance ops name no machine; the audit trail should (one state-store
                // read, only with the audit log on). Gone instances leave it null.
                let machine = fields.machine.or_else(|| {
                    let id = fields.instance_id.as_deref()?;
                    shared.db.get_instance(id).ok().map(|i| i.machine)
                });
                audit.record(Record {
                    timestamp: rfc3339_now(),
                    client_addr,
                    identity,
                    op: fields.op,
                    instance_id: fields.instance_id,
                    machine,
                    event: fields.event,
                    status: if error.is_some() { "error" } else { "ok" },
                    error_code: error.map(ErrorCode::as_str),
                    duration_ms: elapsed.as_secs_f64() * 1000.0,
                });
            }
            out
        })
    }

    fn dispatch_inner(
        &mut self,
        decoded: Result<rstmdb_protocol::Request, rstmdb_protocol::RequestError>,
        payload: Bytes,
    ) -> Pending {
        let req = match decoded {
            Ok(r) => r,
            Err(e) => {
                let close = e.closes_connection();
                if close {
                    self.closing = true;
                }
                return ready(Outgoing {
                    response: e.to_response().with_meta(meta(None)),
                    mode: self.mode,
                    close_after: close,
                    start_watch: None,
                    failed_watch: None,
                });
            }
        };
        if req.command.op() == Op::Auth {
            // Best effort: the request bytes holding the token are wiped once decoded (the
            // decoded token is wiped after hashing, in `Auth::check`).
            if let Ok(mut buf) = payload.try_into_mut() {
                zeroize::Zeroize::zeroize(buf.as_mut());
            }
        }
        let id = Some(req.id);
        let op = req.command.op();
        tracing::trace!(peer = %self.peer, ?op, "request");
        let exempt = matches!(op, Op::Hello | Op::Auth | Op::Ping | Op::Bye);
        let principal = match &self.principal {
            Some(p) => p.clone(),
            None if exempt => Arc::new(Principal::anonymous()),
            None => {
                return ready(self.out(
                    id,
                    Err(ErrorObject::new(
                        ErrorCode::Unauthorized,
                        "authentication required",
                    )),
                ));
            }
        };
        if !exempt && let Err(e) = authz::check_command(&principal, &req.command) {
            return ready(self.out(id, Err(e)));
        }
        if handlers::is_data_op(op) {
            let (waits, done) = self.ordering.admit(scope_of(&req.command));
            let shared = self.shared.clone();
            let mode = self.mode;
            return Box::pin(async move {
                for w in waits {
                    w.wait().await;
                }
                let result = match authz::check_instances(&shared.db, &principal, &req.command) {
                    Ok(()) => handlers::execute_payload(data_ctx(&shared), req.command)
                        .await
                        .map(|(mut p, off)| {
                            if let Payload::Value(v) = &mut p {
                                authz::filter_result(&principal, op, v);
                            }
                            (p, off)
                        }),
                    Err(e) => Err(e),
                };
                drop(done);
                Outgoing {
                    response: respond_payload(id, result),
                    mode,
                    close_after: false,
                    start_watch: None,
                    failed_watch: None,
                }
            });
        }
        match req.command {
            Command::Hello(p) => {
                if p.protocol_version != rstmdb_protocol::PROTOCOL_VERSION {
                    let e = ErrorObject::new(
                        ErrorCode::UnsupportedProtocol,
                        format!("unsupported protocol version: {}", p.protocol_version),
                    )
                    .with_detail("supported", json!([rstmdb_protocol::PROTOCOL_VERSION]));
                    return ready(self.out(id, Err(e)));
                }
                self.mode = WireMode::negotiate(&p.wire_modes);
                let features: Vec<&str> = FEATURES
                    .iter()
                    .copied()
                    .filter(|f| p.features.iter().any(|r| r == f))
                    .collect();
                ready(self.out(
                    id,
                    Ok((
                        json!({
                            "protocol_version": rstmdb_protocol::PROTOCOL_VERSION,
                            "wire_mode": self.mode.as_str(),
                            "server_name": "rstmdb",
                            "server_version": env!("CARGO_PKG_VERSION"),
                            "features": features,
                        }),
                        None,
                    )),
                ))
            }
            Command::Auth(mut p) => {
                let r = if p.method != "bearer" {
                    Err(ErrorObject::new(
                        ErrorCode::AuthFailed,
                        format!(
                            "authentication failed: unsupported auth method: {}",
                            p.method
                        ),
                    ))
                } else if let Some(wait) = self.shared.auth_throttle.blocked(self.peer.ip()) {
                    Err(ErrorObject::new(
                        ErrorCode::RateLimited,
                        format!(
                            "too many failed authentication attempts from this address; retry in {} s",
                            wait.as_secs().max(1)
                        ),
                    )
                    .with_detail("retry_after_ms", json!(wait.as_millis() as u64)))
                } else {
                    match self.shared.auth().check(&mut p.token) {
                        Ok(principal) => {
                            self.principal = Some(Arc::new(principal));
                            self.shared.auth_throttle.record_success(self.peer.ip());
                            Ok((json!({"authenticated": true}), None))
                        }
                        Err(why) => {
                            tracing::info!(peer = %self.peer, reason = why, "authentication failed");
                            self.shared
                                .metrics
                                .auth_failures
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            self.shared.auth_throttle.record_failure(self.peer.ip());
                            Err(ErrorObject::new(
                                ErrorCode::AuthFailed,
                                format!("authentication failed: {why}"),
                            ))
                        }
                    }
                };
                ready(self.out(id, r))
            }
            Command::Ping => ready(self.out(id, Ok((json!({"pong": true}), None)))),
            Command::Bye => {
                self.closing = true;
                let mut o = self.out(id, Ok((json!({"goodbye": true}), None)));
                o.close_after = true;
                ready(o)
            }
            Command::Info => {
                // Ordered after every earlier request, so `wal_offset` covers the client's
                // own pipelined writes.
                let mode = self.mode;
                self.after_earlier(move |shared| {
                    let cfg = &shared.config;
                    let info = json!({
                        "server_name": "rstmdb",
                        "server_version": env!("CARGO_PKG_VERSION"),
                        "protocol_version": rstmdb_protocol::PROTOCOL_VERSION,
                        "features": FEATURES,
                        "max_frame_bytes": cfg.network.max_frame_bytes,
                        "max_batch_ops": cfg.storage.max_batch_ops,
                        "wal_offset": shared.db.last_offset(),
                    });
                    Outgoing {
                        response: respond(id, Ok((info, None))),
                        mode,
                        close_after: false,
                        start_watch: None,
                        failed_watch: None,
                    }
                })
            }
            Command::WatchInstance(p) => self.watch(id, Target::Instance(p), principal),
            Command::WatchAll(p) => self.watch(id, Target::All(p), principal),
            Command::Unwatch(p) => {
                let removed = match self.watches.remove(&p.subscription_id) {
                    Some(task) => {
                        if let Some(t) = task {
                            t.abort();
                        }
                        true
                    }
                    None => false,
                };
                ready(self.out(
                    id,
                    Ok((
                        json!({"subscription_id": p.subscription_id, "removed": removed}),
                        None,
                    )),
                ))
            }
            other => ready(self.out(
                id,
                Err(bad_request(format!(
                    "{} cannot be handled here",
                    other.op().as_str()
                ))),
            )),
        }
    }

    /// WATCH_INSTANCE / WATCH_ALL. The subscription id is reserved now (so the per-connection
    /// limit and a pipelined UNWATCH see it); the subscription itself is made once every
    /// earlier request has finished, so it sees the client's own earlier writes.
    fn watch(&mut self, id: Option<String>, target: Target, principal: Arc<Principal>) -> Pending {
        let max = self.shared.config.network.max_subscriptions_per_connection;
        if self.watches.len() >= max {
            return ready(self.out(
                id,
                Err(bad_request(format!(
                    "too many subscriptions on this connection (limit {max})"
                ))),
            ));
        }
        let sub = format!("sub-{}", uuid::Uuid::now_v7());
        self.watches.insert(sub.clone(), None);
        let mode = self.mode;
        self.after_earlier(move |shared| {
            let checked = match &target {
                Target::Instance(p) if principal.restricted() => shared
                    .db
                    .get_instance(&p.instance_id)
                    .ok()
                    .filter(|i| !principal.allows_machine(&i.machine))
                    .map_or(Ok(()), |i| {
                        Err(ErrorObject::new(
                            ErrorCode::Unauthorized,
                            format!("{} may not access machine {:?}", principal.name, i.machine),
                        ))
                    }),
                _ => Ok(()),
            };
            let r = checked
                .and_then(|()| subscribe(&shared, sub.clone(), target, principal.machines.clone()));
            match r {
                Ok((v, w)) => Outgoing {
                    response: respond(id, Ok((v, None))),
                    mode,
                    close_after: false,
                    start_watch: Some(w),
                    failed_watch: None,
                },
                Err(e) => Outgoing {
                    response: respond(id, Err(e)),
                    mode,
                    close_after: false,
                    start_watch: None,
                    failed_watch: Some(sub),
                },
            }
        })
    }

    fn start_forwarding(&mut self, w: PendingWatch) {
        // UNWATCHed before its response went out: nothing to start.
        let Some(slot) = self.watches.get_mut(&w.id) else {
            return;
        };
        let tx = self.events_tx.clone();
        let overflow = self.overflow.clone();
        let mut flush = self.shared.flush_epoch.subscribe();
        let peer = self.peer;
        let metrics = self.shared.metrics.clone();
        let kind = match w.filter {
            Filter::Instance(_) => SubKind::Instance,
            Filter::All(_) => SubKind::All,
        };
        *slot = Some(tokio::spawn(async move {
            let PendingWatch {
                id,
                // Counted down however the task ends (UNWATCH, disconnect, FLUSH_ALL, abort).
                active: _active,
                mut stream,
                filter,
                include_ctx,
                machine_globs,
            } = w;
            loop {
                let next = tokio::select! {
                    r = stream.next() => r,
                    _ = flush.changed() => return,
                };
                match next {
                    Ok(ev) => {
                        if !filter.matches(&ev, &machine_globs) {
                            continue;
                        }
                        let msg = Event {
                            subscription_id: id.clone(),
                            instance_id: ev.instance_id.clone(),
                            machine: ev.machine.clone(),
                            version: ev.version,
                            wal_offset: ev.wal_offset,
                            from_state: ev.from_state.clone(),
                            to_state: ev.to_state.clone(),
                            event: ev.event.clone(),
                            payload: Value::Object(ev.payload.clone()),
                            ctx: include_ctx.then(|| Value::Object(ev.ctx.clone())),
                        };
                        let Ok(bytes) = msg.to_json_bytes() else {
                            continue;
                        };
                        match tx.try_send(bytes) {
                            Ok(()) => metrics
                                .event_forwarded(kind, stream.head().saturating_sub(ev.wal_offset)),
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                metrics.subscriber_closed(Closure::QueueFull);
                                overflow.notify_one();
                                return;
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                    Err(WatchError::Lagged(n)) => {
                        tracing::warn!(%peer, subscription = %id, missed = n, "subscription lagged");
                        metrics.subscriber_closed(Closure::Lagged);
                        overflow.notify_one();
                        return;
                    }
                    Err(WatchError::Closed) => return,
                    Err(e) => {
                        // No end-of-stream message exists in RCP: close the connection, so
                        // the client reconnects and its resume attempt reports the cause.
                        tracing::warn!(%peer, subscription = %id, error = %e, "subscription ended");
                        metrics.subscriber_closed(Closure::Error);
                        overflow.notify_one();
                        return;
                    }
                }
            }
        }));
    }
}

/// The request fields the audit log records: which op, on what. Never a param that could
/// carry a secret or the instance data.
#[derive(Debug, Default)]
struct AuditFields {
    op: Option<&'static str>,
    instance_id: Option<String>,
    machine: Option<String>,
    event: Option<String>,
}

impl AuditFields {
    fn of(cmd: &Command) -> AuditFields {
        let mut f = AuditFields {
            op: Some(cmd.op().as_str()),
            ..Default::default()
        };
        match cmd {
            Command::PutMachine(p) => f.machine = Some(p.machine.clone()),
            Command::GetMachine(p) => f.machine = Some(p.machine.clone()),
            Command::CreateInstance(p) => {
                f.machine = Some(p.machine.clone());
                f.instance_id = p.instance_id.clone();
            }
            Command::GetInstance(p) => f.instance_id = Some(p.instance_id.clone()),
            Command::DeleteInstance(p) => f.instance_id = Some(p.instance_id.clone()),
            Command::SnapshotInstance(p) => f.instance_id = Some(p.instance_id.clone()),
            Command::WatchInstance(p) => f.instance_id = Some(p.instance_id.clone()),
            Command::ApplyEvent(p) => {
                f.instance_id = Some(p.instance_id.clone());
                f.event = Some(p.event.clone());
            }
            Command::ListInstances(p) => f.machine = p.machine.clone(),
            _ => {}
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::{Ordering, Scope, rfc3339};
    use crate::metrics::Metrics;
    use futures::FutureExt;
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    /// The regression of issue 15: requests nobody waited on stayed in the bookkeeping until
    /// the connection closed, and every admit scanned them all.
    #[test]
    fn ordering_forgets_requests_nobody_waited_on() {
        let metrics = Arc::new(Metrics::default());
        let mut o = Ordering::new(metrics.clone());
        for n in 0..200_000u32 {
            let id = format!("fresh-{n}");
            let (waits, done) = o.admit(Scope::Instance(&id));
            assert!(waits.is_empty(), "a fresh instance waits for nothing");
            drop(done);
            o.release_finished();
            assert_eq!(o.sizes(), (0, 0), "after request {n}");
        }
        assert_eq!(metrics.ordering_entries.load(Relaxed), 0);
    }

    #[test]
    fn ordering_holds_at_most_the_requests_in_flight() {
        let metrics = Arc::new(Metrics::default());
        let mut o = Ordering::new(metrics.clone());
        let mut in_flight = std::collections::VecDeque::new();
        for n in 0..20_000u32 {
            // Ten distinct instances in rotation, a barrier every 97th request.
            let id = format!("i-{}", n % 10);
            let scope = if n.is_multiple_of(97) {
                Scope::Barrier
            } else {
                Scope::Instance(&id)
            };
            let (_, done) = o.admit(scope);
            in_flight.push_back(done);
            // Answers leave in order; keep up to 32 in flight.
            while in_flight.len() > 32 {
                drop(in_flight.pop_front());
                o.release_finished();
            }
            let (admitted, instances) = o.sizes();
            assert!(
                admitted <= in_flight.len(),
                "{admitted} > {}",
                in_flight.len()
            );
            assert!(instances <= admitted);
            assert_eq!(metrics.ordering_entries.load(Relaxed), admitted as i64);
        }
        in_flight.clear();
        o.release_finished();
        assert_eq!(o.sizes(), (0, 0));
        drop(o);
        assert_eq!(metrics.ordering_entries.load(Relaxed), 0);
    }

    #[test]
    fn ordering_waits_for_the_same_instance_and_barriers() {
        let mut o = Ordering::new(Arc::new(Metrics::default()));
        let (w1, d1) = o.admit(Scope::Instance("a"));
        assert!(w1.is_empty());
        let (w2, d2) = o.admit(Scope::Instance("b"));
        assert!(w2.is_empty(), "another instance runs concurrently");
        let (w3, d3) = o.admit(Scope::Instance("a"));
        assert_eq!(w3.len(), 1, "a second op on `a` waits for the first");
        let mut wait_a = Box::pin(w3[0].wait());
        assert!(wait_a.as_mut().now_or_never().is_none());
        drop(d1);
        assert!(
            wait_a.as_mut().now_or_never().is_some(),
            "finished → released"
        );
        let (wb, db) = o.admit(Scope::Barrier);
        assert_eq!(
            wb.len(),
            2,
            "the barrier waits for everything unfinished before it"
        );
        let (wf, df) = o.admit(Scope::Free);
        assert_eq!(wf.len(), 1, "later requests wait for the barrier");
        drop((d2, d3, db, df));
        o.release_finished();
        assert_eq!(o.sizes(), (0, 0));
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.789
        assert_eq!(
            rfc3339(Duration::from_millis(951_827_696_789)),
            "2000-02-29T12:34:56.789Z"
        );
        // 2026-11-23T23:59:59.999Z
        assert_eq!(
            rfc3339(Duration::from_millis(1_795_478_399_999)),
            "2026-11-23T23:59:59.999Z"
        );
    }
}
