//! WATCH_INSTANCE / WATCH_ALL: subscribing, and forwarding a subscription's events to the
//! connection once its WATCH response is written (so the response always comes first).

use super::{Outgoing, Pending, Session, ready, respond};
use crate::auth::{Principal, glob_match};
use crate::error::bad_request;
use crate::handlers::to_value;
use crate::metrics::{Closure, SubKind, SubscriptionGuard};
use crate::shared::Shared;
use rstmdb_protocol::{
    ErrorCode, ErrorObject, Event, WatchAllParams, WatchAllResult, WatchInstanceParams,
    WatchInstanceResult,
};
use rstmdb_storage::{ChangeEvent, ChangeStream, WatchError};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A subscription whose event forwarding starts once its WATCH response is written, so that
/// the response always precedes the subscription's events.
pub(super) struct PendingWatch {
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

pub(super) enum Target {
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
            let result = WatchInstanceResult {
                subscription_id: sub.clone(),
                instance_id: inst.id,
                current_state: inst.state,
                current_wal_offset: inst.last_wal_offset,
            };
            Ok((
                to_value(&result)?,
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
            let result = WatchAllResult {
                subscription_id: sub.clone(),
                wal_offset: db.last_offset(),
            };
            Ok((
                to_value(&result)?,
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

impl Session {
    /// WATCH_INSTANCE / WATCH_ALL. The subscription id is reserved now (so the per-connection
    /// limit and a pipelined UNWATCH see it); the subscription itself is made once every
    /// earlier request has finished, so it sees the client's own earlier writes.
    pub(super) fn watch(
        &mut self,
        id: Option<String>,
        target: Target,
        principal: Arc<Principal>,
    ) -> Pending {
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

    pub(super) fn start_forwarding(&mut self, w: PendingWatch) {
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
