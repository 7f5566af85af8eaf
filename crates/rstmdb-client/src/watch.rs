//! Watch subscriptions as [`futures::Stream`]s that survive reconnects.
//!
//! A stream remembers the WAL offset of the last event it yielded. When its subscription is
//! lost — the connection broke (and the client has a reconnect policy), or the consumer fell
//! so far behind that the client dropped the subscription — it subscribes again with
//! `from_offset` = that offset + 1. The server replays from the WAL with no gap and no
//! duplicate (decisions.md, "Watching"), so the consumer sees every event exactly once.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::BoxStream;
use rstmdb_protocol::{
    Command, Event, UnwatchParams, WatchAllParams, WatchAllResult, WatchInstanceParams,
    WatchInstanceResult,
};
use tokio::sync::mpsc;

use crate::client::{Client, decode};
use crate::connection::{Connection, SubscriptionSink};
use crate::error::{Error, Result};

// The watch ops live here, not in `client.rs`, so that `watch` builds on `client` and not
// the other way round.
impl Client {
    /// WATCH_INSTANCE: a stream of the instance's transitions. Set `from_offset` to replay
    /// from the WAL first.
    pub async fn watch_instance(&self, params: WatchInstanceParams) -> Result<WatchStream> {
        WatchStream::start(self.clone(), WatchTarget::Instance(params)).await
    }

    /// WATCH_ALL: a stream of every transition matching the filters.
    pub async fn watch_all(&self, params: WatchAllParams) -> Result<WatchStream> {
        WatchStream::start(self.clone(), WatchTarget::All(params)).await
    }
}

/// What a stream subscribes to.
#[derive(Debug, Clone)]
pub(crate) enum WatchTarget {
    Instance(WatchInstanceParams),
    All(WatchAllParams),
}

impl WatchTarget {
    fn command(&self, from_offset: Option<u64>) -> Command {
        match self {
            WatchTarget::Instance(p) => Command::WatchInstance(WatchInstanceParams {
                from_offset,
                ..p.clone()
            }),
            WatchTarget::All(p) => Command::WatchAll(WatchAllParams {
                from_offset,
                ..p.clone()
            }),
        }
    }

    fn initial_from(&self) -> Option<u64> {
        match self {
            WatchTarget::Instance(p) => p.from_offset,
            WatchTarget::All(p) => p.from_offset,
        }
    }
}

/// What the server said when the stream (first) subscribed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchStart {
    /// The subscription id (changes when the stream resubscribes; see
    /// [`WatchStream::subscription_id`]).
    pub subscription_id: String,
    /// WATCH_INSTANCE: the instance's state when subscribing; WATCH_ALL: `None`.
    pub current_state: Option<String>,
    /// WATCH_INSTANCE: the instance's last offset; WATCH_ALL: the last offset written.
    pub wal_offset: u64,
}

/// The subscription currently feeding the stream.
#[derive(Debug)]
struct Current {
    conn: Arc<Connection>,
    subscription_id: String,
    /// Set once the consumer unwatched: the stream must not resubscribe.
    stopped: bool,
}

type Shared = Arc<Mutex<Current>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Current> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A subscription's events, in WAL order. Yields `Err` once when it ends on a failure
/// (connection lost without a reconnect policy, resubscription refused), then `None`.
///
/// Dropping the stream unwatches in the background.
pub struct WatchStream {
    start: WatchStart,
    shared: Shared,
    inner: BoxStream<'static, Result<Event>>,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

struct State {
    client: Client,
    target: WatchTarget,
    shared: Shared,
    rx: mpsc::Receiver<Event>,
    lagged: Arc<AtomicBool>,
    /// `from_offset` for the next subscription.
    resume_from: u64,
    finished: bool,
}

impl WatchStream {
    pub(crate) async fn start(client: Client, target: WatchTarget) -> Result<WatchStream> {
        let (conn, start, rx, lagged) = subscribe(&client, &target, target.initial_from()).await?;
        let resume_from = target
            .initial_from()
            .unwrap_or(start.wal_offset.saturating_add(1));
        let shared = Arc::new(Mutex::new(Current {
            conn,
            subscription_id: start.subscription_id.clone(),
            stopped: false,
        }));
        let state = State {
            client,
            target,
            shared: shared.clone(),
            rx,
            lagged,
            resume_from,
            finished: false,
        };
        let inner = Box::pin(futures::stream::unfold(state, |mut st| async move {
            next_event(&mut st).await.map(|item| (item, st))
        }));
        Ok(WatchStream {
            start,
            shared,
            inner,
        })
    }

    /// The server's answer to the first subscription.
    pub fn start_info(&self) -> &WatchStart {
        &self.start
    }

    /// The id of the subscription currently feeding this stream.
    pub fn subscription_id(&self) -> String {
        lock(&self.shared).subscription_id.clone()
    }

    /// Sends UNWATCH and ends the stream (events already queued are dropped). Returns
    /// whether the server still had the subscription.
    pub async fn unwatch(&mut self) -> Result<bool> {
        let (conn, id) = {
            let mut cur = lock(&self.shared);
            cur.stopped = true;
            (cur.conn.clone(), cur.subscription_id.clone())
        };
        conn.forget_subscription(&id);
        let value = conn
            .call(Command::Unwatch(UnwatchParams {
                subscription_id: id,
            }))
            .await?;
        let result: rstmdb_protocol::UnwatchResult = decode("UNWATCH", value)?;
        Ok(result.removed)
    }
}

impl Stream for WatchStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let (conn, id, stopped) = {
            let mut cur = lock(&self.shared);
            let was = cur.stopped;
            cur.stopped = true;
            (cur.conn.clone(), cur.subscription_id.clone(), was)
        };
        conn.forget_subscription(&id);
        if stopped || conn.is_closed() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = conn
                    .call(Command::Unwatch(UnwatchParams {
                        subscription_id: id,
                    }))
                    .await;
            });
        }
    }
}

async fn subscribe(
    client: &Client,
    target: &WatchTarget,
    from_offset: Option<u64>,
) -> Result<(
    Arc<Connection>,
    WatchStart,
    mpsc::Receiver<Event>,
    Arc<AtomicBool>,
)> {
    let conn = client.connection().await?;
    let (tx, rx) = mpsc::channel(conn.event_buffer());
    let lagged = Arc::new(AtomicBool::new(false));
    let sink = SubscriptionSink {
        tx,
        lagged: lagged.clone(),
    };
    let (conn, value) = client.subscribe(target.command(from_offset), sink).await?;
    let start = match target {
        WatchTarget::Instance(_) => {
            let r: WatchInstanceResult = decode("WATCH_INSTANCE", value)?;
            WatchStart {
                subscription_id: r.subscription_id,
                current_state: Some(r.current_state),
                wal_offset: r.current_wal_offset,
            }
        }
        WatchTarget::All(_) => {
            let r: WatchAllResult = decode("WATCH_ALL", value)?;
            WatchStart {
                subscription_id: r.subscription_id,
                current_state: None,
                wal_offset: r.wal_offset,
            }
        }
    };
    Ok((conn, start, rx, lagged))
}

async fn next_event(st: &mut State) -> Option<Result<Event>> {
    loop {
        if st.finished {
            return None;
        }
        if let Some(event) = st.rx.recv().await {
            st.resume_from = event.wal_offset.saturating_add(1);
            return Some(Ok(event));
        }
        // The subscription's queue closed: find out why.
        let (conn, old_id, stopped) = {
            let cur = lock(&st.shared);
            (cur.conn.clone(), cur.subscription_id.clone(), cur.stopped)
        };
        let lagged = st.lagged.load(Ordering::Acquire);
        if stopped || (!lagged && !conn.is_closed()) {
            // Unwatched by the consumer (or ended by the server): a normal end.
            st.finished = true;
            return None;
        }
        if lagged {
            // The server still feeds the old subscription; stop it before replacing it.
            let _ = conn
                .call(Command::Unwatch(UnwatchParams {
                    subscription_id: old_id,
                }))
                .await;
        } else if st.client.config().reconnect.is_none() {
            st.finished = true;
            return Some(Err(Error::ConnectionClosed));
        }
        match subscribe(&st.client, &st.target, Some(st.resume_from)).await {
            Ok((conn, start, rx, lagged)) => {
                tracing::debug!(
                    subscription = %start.subscription_id,
                    from_offset = st.resume_from,
                    "watch resubscribed"
                );
                let mut cur = lock(&st.shared);
                cur.conn = conn;
                cur.subscription_id = start.subscription_id;
                st.rx = rx;
                st.lagged = lagged;
            }
            Err(e) => {
                st.finished = true;
                return Some(Err(e));
            }
        }
    }
}
