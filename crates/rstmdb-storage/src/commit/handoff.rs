//! How the log stage hands its messages to the apply stage (inline on its own thread, or on
//! the apply stage's thread), and the apply thread itself.

use super::apply::ApplyStage;
use super::{ApplyMsg, Poison};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Groups of at most this many records are applied on the log stage's thread when the apply
/// thread has nothing queued: for them the wake-up of a second thread (and, under
/// `every_write`, the wake-up for `Durable`) costs more than the overlap with the next sync
/// saves (measured: one connection's durable APPLY 273–304 → 223–227 µs of server CPU).
/// Larger groups go to the apply thread, which applies them while the log stage writes and
/// syncs the next (keeping the inline path for every group cost 20 % of the durable
/// throughput at 64 connections).
pub(super) const INLINE_GROUP_RECORDS: usize = 8;

/// How the log stage hands what it wrote to the apply stage: on the apply stage's thread,
/// or, when that is idle and the work is small, on its own (see [`INLINE_GROUP_RECORDS`]).
/// Either way one message at a time under `stage`'s lock, in the order the log stage made
/// them: a message is handled inline only when none sent to the thread is still unhandled.
pub(super) struct ApplyHandoff {
    pub(super) stage: Arc<Mutex<ApplyStage>>,
    pub(super) tx: std::sync::mpsc::SyncSender<ApplyMsg>,
    /// Messages sent to the apply thread and not yet handled by it.
    pub(super) queued: Arc<AtomicU64>,
    pub(super) poison: Arc<Poison>,
}

/// Handles `msg` holding the stage's lock. A panic in the apply code is caught, so that it
/// takes down neither the log stage (inline) nor the apply thread's draining of what follows:
/// the state may be half-written, so the stage is poisoned and every later write refused.
/// `false` when the stage cannot be used (its lock was poisoned by an earlier panic).
fn handle_guarded(stage: &Mutex<ApplyStage>, poison: &Poison, msg: ApplyMsg) -> bool {
    let Ok(mut stage) = stage.lock() else {
        poison.set("the apply stage failed earlier; refusing writes until restart".into());
        return false;
    };
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.handle(msg)));
    if handled.is_err() {
        tracing::error!("the apply stage panicked; refusing writes until restart");
        poison.set("the apply stage panicked; refusing writes until restart".into());
    }
    true
}

impl ApplyHandoff {
    /// Hands `msg` over (inline if `small` and nothing is queued); gives it back if the apply
    /// stage is gone.
    pub(super) fn hand(&mut self, msg: ApplyMsg, small: bool) -> Result<(), ApplyMsg> {
        if small && self.queued.load(Ordering::Acquire) == 0 {
            if self.stage.is_poisoned() {
                self.poison
                    .set("the apply stage failed earlier; refusing writes until restart".into());
                return Err(msg);
            }
            handle_guarded(&self.stage, &self.poison, msg);
            return Ok(());
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(msg).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }
}

/// The apply stage's own thread: run it with [`ApplyThread::run`].
pub(crate) struct ApplyThread {
    pub(super) stage: Arc<Mutex<ApplyStage>>,
    pub(super) rx: std::sync::mpsc::Receiver<ApplyMsg>,
    pub(super) queued: Arc<AtomicU64>,
    pub(super) poison: Arc<Poison>,
}

impl ApplyThread {
    /// Handles what the log stage sends, in order, until the log stage stops.
    pub fn run(self) {
        for msg in self.rx {
            let usable = handle_guarded(&self.stage, &self.poison, msg);
            self.queued.fetch_sub(1, Ordering::AcqRel);
            if !usable {
                return;
            }
        }
        if let Ok(stage) = self.stage.lock() {
            tracing::debug!(high_water = stage.high_water, "apply stage stopped");
        }
    }
}
