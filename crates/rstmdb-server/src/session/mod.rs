//! One connection: read requests (binary frames or JSON lines, told apart by their first
//! byte), run them, write responses in request order, and interleave watch events.
//!
//! Requests are answered in order: each becomes a future in a `FuturesOrdered`, which yields
//! results in the order they were pushed. They are *executed* as concurrently as is safe
//! (`crate::ordering`): ops on one instance run in order, anything else (lists, machines, batches,
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

mod audited;
mod ops;
mod subscriptions;

pub use crate::timefmt::rfc3339_now;
pub use ops::FEATURES;

use crate::auth::{CertMatch, PreAuthCount, PreAuthSlot, Principal};
use crate::authz;
use crate::error::bad_request;
use crate::handlers::{self, Payload};
use crate::ordering::{Ordering, Scope, scope_of};
use crate::registry::{Registration, Registry};
use crate::shared::Shared;
use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use ops::Handling;
use rstmdb_protocol::{
    ErrorCode, ErrorObject, Inbound, InboundCodec, Meta, Op, OutboundCodec, Response, WireMode,
};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use subscriptions::PendingWatch;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

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

/// What data ops run against, borrowed from the shared state.
fn data_ctx(shared: &Shared, backup_owner: u64) -> handlers::Ctx<'_> {
    handlers::Ctx {
        db: &shared.db,
        backups: &shared.backups,
        backup_owner,
        flush_epoch: &shared.flush_epoch,
        cluster: shared.cluster.as_deref(),
    }
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

/// What the listener knows about a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The names of a verified client certificate (mTLS).
    pub cert: Option<crate::tls::PeerIdentity>,
}

struct Session {
    peer: SocketAddr,
    shared: Arc<Shared>,
    /// `None` until authenticated (always `Some` when auth is off).
    principal: Option<Arc<Principal>>,
    /// The principal came from the client certificate: AUTH is refused.
    cert_identified: bool,
    /// The configured token the principal came from (AUTH): a reload that removes it ends
    /// the session, one that changes its grant changes the principal.
    token: Option<crate::auth::TokenId>,
    /// This connection in the server's registry (SESSIONS, END_SESSION).
    registration: Registration,
    mode: WireMode,
    /// Subscription id → forwarding task (`None` until its WATCH response is written).
    watches: HashMap<String, Option<JoinHandle<()>>>,
    closing: bool,
    events_tx: mpsc::Sender<Bytes>,
    overflow: Arc<Notify>,
    ordering: Ordering,
    /// The backups this session began: deleted when it ends (dropped with the session).
    backups: crate::backup::SessionSpools,
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
    // With certificate identities configured, a verified client certificate must match
    // exactly one of them and is then the connection's identity for good (AUTH cannot change
    // it); one that matches none is refused. Otherwise, with auth off, everyone is the
    // anonymous admin.
    let cert_match = match &info.cert {
        Some(id) => auth.cert_match(id),
        None => CertMatch::Off,
    };
    let cert_identified = matches!(cert_match, CertMatch::Principal(_));
    let principal = match cert_match {
        CertMatch::Principal(p) => Some(Arc::new(p)),
        CertMatch::Unlisted | CertMatch::Ambiguous(_) => {
            let id = info.cert.unwrap_or_default();
            tracing::warn!(
                %peer,
                cn = id.cn.as_deref(),
                dns = ?id.dns,
                uris = ?id.uris,
                matched = ?cert_match,
                "client certificate matches no single auth.cert_identities entry; refusing the connection"
            );
            if let Some(a) = &shared.audit {
                a.connection_event(
                    rfc3339_now(),
                    peer.to_string(),
                    "CONNECTION_REFUSED",
                    Some("CERTIFICATE_NOT_LISTED"),
                );
            }
            return;
        }
        CertMatch::Off if !auth.required => Some(Arc::new(Principal::anonymous())),
        CertMatch::Off => None,
    };
    // Before it authenticates (auth.required, no certificate identity) a connection is held
    // to a small frame limit, a deadline, and a count per network: without a credential it
    // can hold neither much memory nor many slots for long.
    let mut preauth = None;
    if principal.is_none() {
        match PreAuthCount::enter(
            &shared.preauth,
            peer.ip(),
            net.max_unauthenticated_per_address,
        ) {
            Some(slot) => preauth = Some(slot),
            None => {
                tracing::warn!(
                    %peer,
                    limit = net.max_unauthenticated_per_address,
                    "too many unauthenticated connections from this network; closing"
                );
                if let Some(a) = &shared.audit {
                    a.connection_event(
                        rfc3339_now(),
                        peer.to_string(),
                        "CONNECTION_REFUSED",
                        Some("UNAUTHENTICATED_LIMIT"),
                    );
                }
                return;
            }
        }
    }
    let registration = Registry::register(
        &shared.sessions,
        peer,
        info.tls,
        rfc3339_now(),
        principal.as_ref().map(|p| p.name.clone()),
    );
    let mut ended: Signal = {
        let end = registration.end.clone();
        Box::pin(async move { end.notified().await })
    };
    let frame_limit = if preauth.is_some() {
        net.max_frame_bytes.min(net.max_frame_bytes_before_auth)
    } else {
        net.max_frame_bytes
    };
    let mut reader = FramedRead::new(rd, InboundCodec::with_max_payload_bytes(frame_limit));
    let mut writer = FramedWrite::new(
        wr,
        OutboundCodec::with_max_payload_bytes(net.max_frame_bytes),
    );
    let (events_tx, mut events_rx) = mpsc::channel::<Bytes>(net.subscription_queue_depth);
    let overflow = Arc::new(Notify::new());
    let ordering = Ordering::new(shared.metrics.clone());
    let mut s = Session {
        peer,
        backups: shared.backups.session(),
        principal,
        cert_identified,
        token: None,
        registration,
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
    let mut auth_changed = next_change(s.shared.auth_epoch.subscribe());
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
    let auth_timer = tokio::time::sleep(std::time::Duration::from_secs(net.auth_timeout_secs));
    tokio::pin!(auth_timer);
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
            (changed, rx) = &mut auth_changed => {
                if changed.is_ok() {
                    s.after_reload();
                    auth_changed = next_change(rx);
                } else {
                    auth_changed = Box::pin(std::future::pending());
                }
            }
            _ = &mut ended, if !s.closing => {
                tracing::info!(peer = %s.peer, "session ended by END_SESSION");
                s.closing = true;
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
                        after_read(&s, &mut reader, &mut preauth, net.max_frame_bytes);
                        debug_assert!(pending.len() <= net.max_inflight_per_connection);
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
                after_read(&s, &mut reader, &mut preauth, net.max_frame_bytes);
                // Reading stops at the in-flight limit: per-connection memory is bounded by it.
                debug_assert!(pending.len() <= net.max_inflight_per_connection);
                deadline = Instant::now() + idle;
            }
            () = &mut auth_timer, if preauth.is_some() && !s.closing => {
                tracing::info!(peer = %s.peer, "no authentication within network.auth_timeout_secs; closing");
                s.closing = true;
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

/// A read buffer with more capacity than this and nothing in it is given back after a read,
/// so one large request does not leave a connection holding its size for the rest of its life.
const READ_BUFFER_KEEP_BYTES: usize = 64 * 1024;

/// Bookkeeping after each read: once the connection has authenticated, it gets the full frame
/// limit and leaves the unauthenticated count; an empty read buffer grown past
/// [`READ_BUFFER_KEEP_BYTES`] is released.
fn after_read<R>(
    s: &Session,
    reader: &mut FramedRead<R, InboundCodec>,
    preauth: &mut Option<PreAuthSlot>,
    max_frame_bytes: usize,
) {
    if preauth.is_some() && s.principal.is_some() {
        *preauth = None;
        *reader.decoder_mut() = InboundCodec::with_max_payload_bytes(max_frame_bytes);
    }
    let buf = reader.read_buffer();
    if buf.is_empty() && buf.capacity() > READ_BUFFER_KEEP_BYTES {
        *reader.read_buffer_mut() = bytes::BytesMut::new();
    }
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
    /// Credentials were reloaded (SIGHUP): a session authenticated by a token that is no
    /// longer configured ends (after answering what it already read); one whose token now has
    /// another grant continues under it. Certificate and anonymous principals are unaffected.
    fn after_reload(&mut self) {
        let Some(token) = &self.token else {
            return;
        };
        match self.shared.auth().principal_for_token(token) {
            Some(p) => {
                self.registration.set_principal(Some(p.name.clone()));
                self.principal = Some(Arc::new(p));
            }
            None => {
                let name = self.principal.as_ref().map(|p| p.name.clone());
                tracing::info!(
                    peer = %self.peer,
                    principal = name.as_deref(),
                    "the token this connection authenticated with was removed by a reload; closing"
                );
                self.principal = None;
                self.token = None;
                self.registration.set_principal(None);
                self.closing = true;
            }
        }
    }

    /// Runs `work` once every earlier request on the connection has finished; later
    /// requests wait for it (a barrier in `Ordering`).
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

    fn dispatch_inner(
        &mut self,
        decoded: Result<rstmdb_protocol::Request, rstmdb_protocol::RequestError>,
        mut payload: bytes::BytesMut,
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
            // The request bytes holding the token are wiped once decoded: the payload owns its
            // range of the read buffer alone. (The decoded token is wiped after hashing, in
            // `Auth::check`; TLS keeps its own plaintext buffer, which we cannot reach.)
            zeroize::Zeroize::zeroize(payload.as_mut());
        }
        let id = Some(req.id);
        let op = req.command.op();
        tracing::trace!(peer = %self.peer, ?op, "request");
        let handling = ops::handling(op);
        let exempt = handling == Handling::Open;
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
        if handling == Handling::Data {
            let (waits, done) = self.ordering.admit(scope_of(&req.command));
            let shared = self.shared.clone();
            let mode = self.mode;
            let owner = self.backups.owner();
            return Box::pin(async move {
                for w in waits {
                    w.wait().await;
                }
                let result = match authz::check_instances(&shared.db, &principal, &req.command) {
                    Ok(()) => handlers::execute(data_ctx(&shared, owner), req.command)
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
        self.session_op(id, req.command, principal)
    }
}
