//! The per-connection ordering scheduler: which earlier requests a request must wait for
//! before it runs. Ops on one instance run in request order, a request that names no
//! instance an earlier one could affect runs at once, and everything else is a barrier
//! (waits for every earlier request; every later one waits for it). The session admits each
//! request as it is read and releases them as their answers are written.

use crate::metrics::Metrics;
use rstmdb_protocol::{Command, Op};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use tokio::sync::Notify;

/// Marks one admitted request finished: set when its [`DoneGuard`] drops (the request ran,
/// or its future was dropped), whether or not anything ever waits on it. Bookkeeping can
/// therefore drop finished requests without polling anything.
#[derive(Default)]
pub(crate) struct Completion {
    done: AtomicBool,
    notify: Notify,
}

pub(crate) type Done = Arc<Completion>;

impl Completion {
    fn is_done(&self) -> bool {
        self.done.load(AtomicOrdering::Acquire)
    }

    /// Resolves once the request has finished.
    pub(crate) async fn wait(&self) {
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
pub(crate) struct DoneGuard(Done);

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
pub(crate) struct Ordering {
    admitted: VecDeque<Admitted>,
    barrier: Option<Done>,
    by_instance: HashMap<Arc<str>, Done>,
    /// `rstmdb_request_ordering_entries`: the sum of `admitted.len()` over the connections.
    gauge: Arc<Metrics>,
}

pub(crate) enum Scope<'a> {
    /// Touches one instance: waits for the last barrier and earlier ops on that instance.
    Instance(&'a str),
    /// Touches nothing an earlier request could affect (a create with a generated id).
    Free,
    /// Waits for everything before it; everything after waits for it.
    Barrier,
}

impl Ordering {
    pub(crate) fn new(gauge: Arc<Metrics>) -> Ordering {
        Ordering {
            admitted: VecDeque::new(),
            barrier: None,
            by_instance: HashMap::new(),
            gauge,
        }
    }

    /// Registers a request; returns what it must wait for and the guard whose drop marks
    /// it done.
    pub(crate) fn admit(&mut self, scope: Scope<'_>) -> (Vec<Done>, DoneGuard) {
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
    pub(crate) fn release_finished(&mut self) {
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

/// How a request is ordered. Only the single-instance ops act on nothing but the instance
/// they name ([`Command::names`]): they wait for that instance (a create with a generated id
/// for nothing). Every other op is a barrier, including SNAPSHOT_INSTANCE (a checkpoint of
/// the whole store) and WATCH_INSTANCE (it must see every earlier write).
pub(crate) fn scope_of(cmd: &Command) -> Scope<'_> {
    match cmd.op() {
        Op::CreateInstance | Op::ApplyEvent | Op::DeleteInstance | Op::GetInstance => {
            let names = cmd.names();
            debug_assert!(
                names.instance.is_none() || names.new_instance.is_none(),
                "a request names an existing instance or a new one, not both"
            );
            names.any_instance().map_or(Scope::Free, Scope::Instance)
        }
        _ => Scope::Barrier,
    }
}

#[cfg(test)]
mod tests {
    use super::{Ordering, Scope};
    use crate::metrics::Metrics;
    use futures::FutureExt;
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;

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
}
