//! FLUSH_ALL, on its own and as part of an atomic batch.

use super::{Database, internal, now_ms};
use crate::entry::WalEntry;
use crate::{BatchFailure, BatchOp, BatchOutput, FlushOutcome};
use rstmdb_core::{Error, Instance, Result};

impl Database {
    /// FLUSH_ALL: removes every machine, instance and idempotency record (written to the
    /// WAL, so it survives restart). Refused unless `allow_flush_all` is set.
    pub async fn flush_all(&self) -> Result<FlushOutcome> {
        self.detached(move |db| async move { db.flush_all_now().await })
            .await?
    }

    /// FLUSH_ALL: removes every machine, instance and idempotency record (written to the
    /// WAL, so it survives restart). Refused unless `allow_flush_all` is set.
    async fn flush_all_now(&self) -> Result<FlushOutcome> {
        self.flush_allowed()?;
        let _machines = self.inner.machine_lock.lock().await;
        // Every instance lock: no write may be between reading an instance and committing
        // while everything disappears (its hint would resurrect a flushed instance).
        let instances = self.inner.locks.lock_every_shard().await;
        self.write_gate()?;
        self.commit_flush(instances).await
    }

    fn flush_allowed(&self) -> Result<()> {
        if self.inner.config.allow_flush_all {
            Ok(())
        } else {
            Err(Error::bad_request(
                "",
                "FLUSH_ALL is disabled; set storage.allow_flush_all: true to enable it",
            ))
        }
    }

    /// Writes a FLUSH_ALL record and forgets every machine. The caller holds the machine
    /// lock and hands over every instance lock shard.
    async fn commit_flush(
        &self,
        instances: Vec<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<FlushOutcome> {
        let c = self
            .commit(
                WalEntry::FlushAll {
                    timestamp: now_ms(),
                },
                Vec::new(),
                instances,
            )
            .await?;
        self.inner
            .machines
            .write()
            .map_err(|_| internal("machine cache lock poisoned"))?
            .clear();
        let counts = c.flushed.unwrap_or_default();
        Ok(FlushOutcome {
            instances_removed: counts.instances_removed,
            machines_removed: counts.machines_removed,
            wal_offset: c.seq,
        })
    }

    /// An atomic batch holding FLUSH_ALL, validated in order like any atomic batch, all or
    /// nothing. A write before the (first) flush would be removed by it in the same instant,
    /// so it is refused rather than acknowledged for something nobody could ever read. After
    /// the flush there is no machine, instance or idempotency record, and a batch cannot put
    /// a machine back, so every op after it fails as on an empty database
    /// (`MACHINE_NOT_FOUND` for a create, `INSTANCE_NOT_FOUND` for the others); a further
    /// FLUSH_ALL finds nothing. What can succeed is GET_INSTANCEs before the flush (read,
    /// then wiped, with no write in between) and the flush itself, written as one FLUSH_ALL
    /// record under the locks the op on its own takes.
    pub(super) async fn atomic_flush_batch(
        &self,
        ops: Vec<BatchOp>,
    ) -> std::result::Result<Vec<BatchOutput>, BatchFailure> {
        enum Planned {
            Read(Instance),
            Flush,
        }
        let first = ops
            .iter()
            .position(|op| matches!(op, BatchOp::FlushAll))
            .unwrap_or(ops.len());
        let _machines = self.inner.machine_lock.lock().await;
        let instances = self.inner.locks.lock_every_shard().await;
        self.write_gate().map_err(BatchFailure::whole)?;
        let staged = self.staged();
        let mut planned = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            let fail = |error: Error| BatchFailure {
                index,
                op: op.name(),
                error,
            };
            let instance_gone = |id: &str| {
                fail(Error::InstanceNotFound {
                    instance_id: id.to_owned(),
                })
            };
            planned.push(match op {
                BatchOp::FlushAll => {
                    self.flush_allowed().map_err(fail)?;
                    Planned::Flush
                }
                BatchOp::Get { instance_id } if index < first => {
                    match staged.load(instance_id).map_err(fail)? {
                        Some(i) if !i.deleted => Planned::Read(i),
                        _ => return Err(instance_gone(instance_id)),
                    }
                }
                _ if index < first => {
                    return Err(fail(Error::bad_request(
                        "",
                        format!(
                            "{} before the FLUSH_ALL at ops[{first}] of an atomic batch would be removed by it; \
                             send it after the batch, or use mode best_effort",
                            op.name()
                        ),
                    )));
                }
                BatchOp::Create(c) => {
                    return Err(fail(Error::MachineNotFound {
                        machine: c.machine.clone(),
                        version: c.version,
                    }));
                }
                BatchOp::Apply(a) => return Err(instance_gone(&a.instance_id)),
                BatchOp::Delete(d) => return Err(instance_gone(&d.instance_id)),
                BatchOp::Get { instance_id } => return Err(instance_gone(instance_id)),
            });
        }
        let flushed = self
            .commit_flush(instances)
            .await
            .map_err(|error| BatchFailure {
                index: first,
                op: "FLUSH_ALL",
                error,
            })?;
        Ok(planned
            .into_iter()
            .enumerate()
            .map(|(index, p)| match p {
                Planned::Read(i) => BatchOutput::Instance(i),
                Planned::Flush if index == first => BatchOutput::Flushed(flushed),
                // A second flush in the same record finds nothing left.
                Planned::Flush => BatchOutput::Flushed(FlushOutcome {
                    wal_offset: flushed.wal_offset,
                    ..FlushOutcome::default()
                }),
            })
            .collect())
    }
}
