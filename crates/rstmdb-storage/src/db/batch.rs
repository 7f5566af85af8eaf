//! BATCH: best effort (each op on its own) and atomic (all ops validated against each
//! other's effects, then one WAL record). Atomic batches holding a FLUSH_ALL are in `flush`.

use super::write::{Prepared, set_offset};
use super::{Database, internal, now_ms};
use crate::entry::WalEntry;
use crate::state::{self, scope};
use crate::{BatchFailure, BatchMode, BatchOp, BatchOutput};
use rstmdb_core::{Error, Result};

impl Database {
    /// BATCH. Best effort: every op runs on its own and reports its own result. Atomic: all
    /// ops are validated in order against the effects of the ones before, then written as one
    /// WAL record; on the first failure nothing is written. An atomic batch holding a
    /// FLUSH_ALL follows the rules of [`Database::atomic_flush_batch`].
    pub async fn batch(
        &self,
        mode: BatchMode,
        ops: Vec<BatchOp>,
    ) -> std::result::Result<Vec<Result<BatchOutput>>, BatchFailure> {
        if ops.len() > self.inner.config.max_batch_ops {
            return Err(BatchFailure {
                index: self.inner.config.max_batch_ops,
                op: "BATCH",
                error: Error::bad_request(
                    "ops",
                    format!(
                        "batch size {} exceeds limit {}",
                        ops.len(),
                        self.inner.config.max_batch_ops
                    ),
                ),
            });
        }
        match mode {
            BatchMode::BestEffort => {
                let mut results = Vec::with_capacity(ops.len());
                for op in ops {
                    results.push(self.run_one(op).await);
                }
                Ok(results)
            }
            BatchMode::Atomic => self
                .atomic_batch(ops)
                .await
                .map(|outs| outs.into_iter().map(Ok).collect()),
        }
    }

    async fn run_one(&self, op: BatchOp) -> Result<BatchOutput> {
        match op {
            BatchOp::Create(c) => self.create_instance(c).await.map(BatchOutput::Created),
            BatchOp::Apply(a) => self.apply_event(a).await.map(BatchOutput::Applied),
            BatchOp::Delete(d) => self.delete_instance(d).await.map(BatchOutput::Deleted),
            BatchOp::Get { instance_id } => {
                self.get_instance(&instance_id).map(BatchOutput::Instance)
            }
            BatchOp::FlushAll => self.flush_all().await.map(BatchOutput::Flushed),
        }
    }

    async fn atomic_batch(
        &self,
        ops: Vec<BatchOp>,
    ) -> std::result::Result<Vec<BatchOutput>, BatchFailure> {
        if ops.iter().any(|op| matches!(op, BatchOp::FlushAll)) {
            // Like FLUSH_ALL on its own, it runs to completion in its own task: the machine
            // cache is cleared after the commit.
            return self
                .detached(move |db| async move { db.atomic_flush_batch(ops).await })
                .await
                .map_err(BatchFailure::whole)?;
        }
        // Fix generated ids first so their locks can be taken up front.
        let ids: Vec<String> = ops
            .iter()
            .map(|op| match op {
                BatchOp::Create(c) => c.instance_id.clone().unwrap_or_else(Self::generated_id),
                BatchOp::Apply(a) => a.instance_id.clone(),
                BatchOp::Delete(d) => d.instance_id.clone(),
                BatchOp::Get { instance_id } => instance_id.clone(),
                // Not here (see above); no lock to take.
                BatchOp::FlushAll => String::new(),
            })
            .collect();
        let idem_locks: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                BatchOp::Create(c) => c.idempotency_key.as_ref().map(|k| format!("idem\0{k}")),
                _ => None,
            })
            .collect();
        let mut lock_keys: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !id.is_empty())
            .collect();
        lock_keys.extend(idem_locks.iter().map(String::as_str));
        let guards = self.inner.locks.lock_all(&lock_keys).await;
        // After the locks: the state read below must include every record committed before
        // this node's term (see `Database::write_gate`).
        if ops.iter().any(|op| !matches!(op, BatchOp::Get { .. })) {
            self.write_gate().map_err(BatchFailure::whole)?;
        }

        let now = now_ms();
        let mut staged = self.staged();
        let mut entries = Vec::new();
        let mut hints: state::Hints = Vec::new();
        let mut outcomes = Vec::with_capacity(ops.len());
        // Idempotency records of this batch are not in the store until it commits: a key used
        // twice in one batch could not be told apart, so it is refused.
        let mut scopes = std::collections::HashSet::new();
        for (index, (op, id)) in ops.iter().zip(&ids).enumerate() {
            let fail = |error: Error| BatchFailure {
                index,
                op: op.name(),
                error,
            };
            let scope = match op {
                BatchOp::Create(c) => c.idempotency_key.as_deref().map(scope::create),
                BatchOp::Apply(a) => a.idempotency_key.as_deref().map(|k| scope::apply(id, k)),
                BatchOp::Delete(d) => d.idempotency_key.as_deref().map(|k| scope::delete(id, k)),
                BatchOp::Get { .. } | BatchOp::FlushAll => None,
            };
            if let Some(scope) = scope
                && !scopes.insert(scope)
            {
                return Err(fail(Error::bad_request(
                    "idempotency_key",
                    "the same idempotency key is used twice in one atomic batch",
                )));
            }
            let prepared = match op {
                BatchOp::Create(c) => self.prepare_create(c, id, &staged, now),
                BatchOp::Apply(a) => self.prepare_apply(a, &staged, now),
                BatchOp::Delete(d) => self.prepare_delete(d, &staged, now),
                BatchOp::Get { instance_id } => match staged.load(instance_id) {
                    Ok(Some(i)) if !i.deleted => Ok(Prepared::Done(BatchOutput::Instance(i))),
                    Ok(_) => Err(Error::InstanceNotFound {
                        instance_id: instance_id.clone(),
                    }),
                    Err(e) => Err(e),
                },
                BatchOp::FlushAll => Err(internal("FLUSH_ALL reached the plain atomic batch")),
            }
            .map_err(fail)?;
            match prepared {
                Prepared::Done(out) => outcomes.push((out, false)),
                Prepared::Write {
                    entry,
                    outcome,
                    staged: next,
                    previous,
                } => {
                    // The state before the batch is what the apply stage starts from.
                    if !hints.iter().any(|(h, _)| *h == previous.0) {
                        hints.push(previous);
                    }
                    staged.overlay.insert(id.clone(), Some(next));
                    entries.push(entry);
                    outcomes.push((outcome, true));
                }
            }
        }
        if entries.is_empty() {
            return Ok(outcomes.into_iter().map(|(o, _)| o).collect());
        }
        let commit = self
            .commit(WalEntry::Batch { entries }, hints, guards)
            .await
            .map_err(BatchFailure::whole)?;
        Ok(outcomes
            .into_iter()
            .map(|(mut o, written)| {
                if written {
                    set_offset(&mut o, commit.seq);
                }
                o
            })
            .collect())
    }
}
