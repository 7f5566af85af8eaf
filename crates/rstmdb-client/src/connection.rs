//! One RCP connection: a writer task, a reader task, and the tables that match what the
//! reader sees to who is waiting for it.
//!
//! Requests are pipelined: a caller registers its id, queues the encoded frame for the
//! writer task and waits; the reader task hands each response to the caller with the same
//! id and each event to the subscription it names. Queuing whole frames for one writer task
//! keeps a frame from being half-written when a caller gives up (timeout, dropped future).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rstmdb_protocol::{
    AuthParams, Command, Event, FrameCodec, HelloParams, HelloResult, InboundCodec,
    PROTOCOL_VERSION, Request, ResponseBody, ServerMessage,
};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::config::{ClientConfig, WRITE_QUEUE_DEPTH};
use crate::error::{Error, Result};

/// Any byte stream we can run RCP over (TCP or TLS over TCP).
trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

/// Where a subscription's events go.
#[derive(Debug, Clone)]
pub(crate) struct SubscriptionSink {
    pub(crate) tx: mpsc::Sender<Event>,
    /// Set by the reader when the queue was full and the subscription was dropped.
    pub(crate) lagged: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Pending {
    tx: oneshot::Sender<Result<Value>>,
    /// For WATCH_* requests: registered under the subscription id as soon as the successful
    /// response is read, before any later message, so no event can arrive unrouted.
    watch: Option<SubscriptionSink>,
}

#[derive(Debug, Default)]
struct Tables {
    pending: HashMap<String, Pending>,
    subscriptions: HashMap<String, SubscriptionSink>,
    /// Why the connection is unusable, once it is.
    closed: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    tables: Mutex<Tables>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A poisoned lock only means another task panicked while holding it; the tables
        // themselves are always left consistent, so keep going.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection dead: every waiting caller fails, every stream ends.
    fn close(&self, reason: String) {
        let (pending, subscriptions) = {
            let mut t = self.lock();
            if t.closed.is_none() {
                t.closed = Some(reason);
            }
            (
                std::mem::take(&mut t.pending),
                std::mem::take(&mut t.subscriptions),
            )
        };
        for (_, p) in pending {
            let _ = p.tx.send(Err(Error::ConnectionClosed));
        }
        drop(subscriptions);
    }
}

/// An open, handshaken connection.
#[derive(Debug)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
    outbox: mpsc::Sender<Bytes>,
    next_id: AtomicU64,
    request_timeout: Duration,
    event_buffer: usize,
    hello: HelloResult,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer task ends by itself when `outbox` is dropped; the reader would wait
        // for the server forever.
        self.reader.abort();
        self.shared.close("client dropped the connection".into());
    }
}

impl Connection {
    /// TCP connect, optional TLS handshake, HELLO, and AUTH when a token is configured, all
    /// within `connect_timeout`.
    pub(crate) async fn open(config: &ClientConfig) -> Result<Connection> {
        match tokio::time::timeout(config.connect_timeout, Self::open_inner(config)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(config.connect_timeout)),
        }
    }

    async fn open_inner(config: &ClientConfig) -> Result<Connection> {
        // Read every TLS file before touching the network: a typo is reported as such.
        let tls = match &config.tls {
            Some(opts) => Some((opts.client_config()?, opts.server_name_for(config.host())?)),
            None => None,
        };
        let tcp = TcpStream::connect(&config.addr)
            .await
            .map_err(|source| Error::Connect {
                addr: config.addr.clone(),
                source,
            })?;
        tcp.set_nodelay(true)?;
        let transport: Box<dyn Transport> = match tls {
            None => Box::new(tcp),
            Some((tls_config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config));
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(Error::TlsHandshake)?;
                Box::new(stream)
            }
        };
        let mut conn = Self::start(transport, config);

        let hello = conn
            .call(Command::Hello(HelloParams {
                protocol_version: PROTOCOL_VERSION,
                client_name: Some(config.client_name.clone()),
                wire_modes: vec![config.wire_mode.as_str().to_owned()],
                features: config.features.clone(),
            }))
            .await?;
        conn.hello = serde_json::from_value(hello)
            .map_err(|e| Error::Protocol(format!("unexpected HELLO result: {e}")))?;
        if let Some(token) = &config.token {
            conn.call(Command::Auth(AuthParams {
                method: "bearer".into(),
                token: token.clone(),
            }))
            .await?;
        }
        Ok(conn)
    }

    fn start(transport: Box<dyn Transport>, config: &ClientConfig) -> Connection {
        let (read_half, write_half) = tokio::io::split(transport);
        let shared = Arc::new(Shared::default());
        let (outbox, inbox) = mpsc::channel(WRITE_QUEUE_DEPTH);
        tokio::spawn(write_loop(
            FramedWrite::new(write_half, FrameCodec::new()),
            inbox,
            shared.clone(),
        ));
        let reader = tokio::spawn(read_loop(
            FramedRead::new(read_half, InboundCodec::new()),
            shared.clone(),
        ));
        Connection {
            shared,
            outbox,
            next_id: AtomicU64::new(1),
            request_timeout: config.request_timeout,
            event_buffer: config.event_buffer.max(1),
            hello: HelloResult {
                protocol_version: PROTOCOL_VERSION,
                wire_mode: config.wire_mode,
                server_name: String::new(),
                server_version: String::new(),
                features: Vec::new(),
            },
            reader,
        }
    }

    /// The server's HELLO answer.
    pub(crate) fn hello(&self) -> &HelloResult {
        &self.hello
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    pub(crate) fn event_buffer(&self) -> usize {
        self.event_buffer
    }

    fn fresh_id(&self) -> String {
        self.next_id.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Sends a typed command and waits for its result.
    pub(crate) async fn call(&self, command: Command) -> Result<Value> {
        self.call_with(command, None).await
    }

    /// Same, registering `watch` as the destination of the new subscription's events.
    pub(crate) async fn call_with(
        &self,
        command: Command,
        watch: Option<SubscriptionSink>,
    ) -> Result<Value> {
        let id = self.fresh_id();
        let payload = Request::new(id.clone(), command)
            .to_json_bytes()
            .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        self.send(id, payload, watch).await
    }

    /// Sends `op` with untyped `params` (the server validates them) and waits.
    pub(crate) async fn call_raw(&self, op: &str, params: Value) -> Result<Value> {
        let id = self.fresh_id();
        let envelope = serde_json::json!({"type": "request", "id": id, "op": op, "params": params});
        let payload = serde_json::to_vec(&envelope)
            .map(Bytes::from)
            .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        self.send(id, payload, None).await
    }

    async fn send(
        &self,
        id: String,
        payload: Bytes,
        watch: Option<SubscriptionSink>,
    ) -> Result<Value> {
        let (tx, rx) = oneshot::channel();
        {
            let mut t = self.shared.lock();
            if t.closed.is_some() {
                return Err(Error::ConnectionClosed);
            }
            t.pending.insert(id.clone(), Pending { tx, watch });
        }
        if self.outbox.send(payload).await.is_err() {
            self.shared.lock().pending.remove(&id);
            return Err(Error::ConnectionClosed);
        }
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::ConnectionClosed),
            Err(_) => {
                self.shared.lock().pending.remove(&id);
                Err(Error::Timeout(self.request_timeout))
            }
        }
    }

    /// Stops routing events of `subscription_id` (after UNWATCH, or when a stream is dropped).
    pub(crate) fn forget_subscription(&self, subscription_id: &str) {
        self.shared.lock().subscriptions.remove(subscription_id);
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut sink: FramedWrite<W, FrameCodec>,
    mut inbox: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    while let Some(payload) = inbox.recv().await {
        if let Err(e) = sink.send(payload).await {
            tracing::debug!(error = %e, "write failed; closing the connection");
            shared.close(format!("write failed: {e}"));
            return;
        }
    }
    // Every sender is gone: the client dropped the connection. Close our half politely.
    let _ = SinkExt::<Bytes>::close(&mut sink).await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut source: FramedRead<R, InboundCodec>,
    shared: Arc<Shared>,
) {
    let reason = loop {
        let inbound = match source.next().await {
            None => break "server closed the connection".to_owned(),
            Some(Err(e)) => break format!("read failed: {e}"),
            Some(Ok(inbound)) => inbound,
        };
        match ServerMessage::from_json_bytes(&inbound.payload) {
            Ok(ServerMessage::Response(response)) => {
                let Some(id) = response.id else {
                    // The server could not read our request at all; it closes next.
                    break match response.body {
                        ResponseBody::Err(e) => format!("server rejected a request: {e}"),
                        ResponseBody::Ok(_) | ResponseBody::OkRaw(_) => {
                            "response without id".to_owned()
                        }
                    };
                };
                deliver(&shared, &id, response.body);
            }
            Ok(ServerMessage::Event(event)) => route(&shared, event),
            Err(e) => break format!("unreadable server message: {e}"),
        }
    };
    tracing::debug!(reason = %reason, "connection closed");
    shared.close(reason);
}

fn deliver(shared: &Shared, id: &str, body: ResponseBody) {
    let mut t = shared.lock();
    let Some(pending) = t.pending.remove(id) else {
        // The caller gave up (timeout) before the answer came.
        return;
    };
    let result = match body.into_result() {
        Ok(result) => {
            if let Some(sink) = pending.watch
                && let Some(sub) = result.get("subscription_id").and_then(Value::as_str)
            {
                t.subscriptions.insert(sub.to_owned(), sink);
            }
            Ok(result)
        }
        Err(e) => Err(Error::from(e)),
    };
    drop(t);
    let _ = pending.tx.send(result);
}

fn route(shared: &Shared, event: Event) {
    let mut t = shared.lock();
    let Some(sink) = t.subscriptions.get(&event.subscription_id) else {
        // Unwatched (events may still be in flight) or never ours.
        return;
    };
    match sink.tx.try_send(event) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(event)) => {
            // Blocking here would stall every response on this connection behind one slow
            // consumer; dropping the subscription lets its stream resubscribe from the last
            // offset it saw instead, so nothing is lost.
            tracing::warn!(subscription = %event.subscription_id, "watch consumer lagging; resubscribing");
            sink.lagged.store(true, Ordering::Release);
            t.subscriptions.remove(&event.subscription_id);
        }
        Err(mpsc::error::TrySendError::Closed(event)) => {
            t.subscriptions.remove(&event.subscription_id);
        }
    }
}
