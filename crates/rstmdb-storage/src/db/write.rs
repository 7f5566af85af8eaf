//! Instance writes: where a write reads instances from (the cache, sled, or a batch's staged
//! changes over them), idempotency replays, validation into a WAL entry (shared by single
//! ops and batches), and the single-op CREATE_INSTANCE, APPLY_EVENT and DELETE_INSTANCE.

use super::{Database, internal, now_ms, sled_err};
use crate::cache::InstanceCache;
use crate::entry::WalEntry;
use crate::locks::LockTable;
use crate::state::{self, IdemRecord, keys, scope};
use crate::store::Store;
use crate::{
    ApplyEvent, ApplyOutcome, BatchOutput, CreateInstance, CreateOutcome, DeleteInstance,
    DeleteOutcome,
};
use rstmdb_core::{ConflictKind, Error, EventRequest, Instance, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

fn validate_idempotency_key(key: &Option<String>) -> Result<()> {
    if let Some(k) = key {
        rstmdb_core::names::validate_instance_id(k).map_err(|_| {
            Error::bad_request(
                "idempotency_key",
                "must be 1-256 bytes without control characters",
            )
        })?;
    }
    Ok(())
}

/// Where an operation reads instances from: the instance cache, then sled — or a batch's
/// staged changes over them.
pub(super) struct Staged<'a> {
    db: &'a Store,
    cache: &'a InstanceCache,
    /// `None`: the caller holds the lock shard of every id it loads, so a miss may fill the
    /// cache. `Some`: it holds none; a miss fills the cache only if the shard is free.
    locks: Option<&'a LockTable>,
    pub(super) overlay: HashMap<String, Option<Instance>>,
}

impl Staged<'_> {
    pub(super) fn load(&self, id: &str) -> Result<Option<Instance>> {
        if let Some(v) = self.overlay.get(id) {
            return Ok(v.clone());
        }
        Ok(self.load_shared(id)?.map(Arc::unwrap_or_clone))
    }

    /// The committed version of `id` (deleted ones included), ignoring the overlay.
    pub(super) fn load_shared(&self, id: &str) -> Result<Option<Arc<Instance>>> {
        if let Some(inst) = self.cache.get(id) {
            return Ok(Some(inst));
        }
        // Only under the shard may what sled returns go into the cache (see `cache`).
        let shard = self.locks.map(|locks| locks.try_lock(id));
        let fill = shard.as_ref().is_none_or(Option::is_some);
        let Some(bytes) = self.db.get(&keys::instance(id)).map_err(sled_err)? else {
            return Ok(None);
        };
        let inst = Arc::new(state::decode_instance(&bytes).map_err(internal)?);
        if fill {
            self.cache.put(inst.clone(), bytes.len());
        }
        Ok(Some(inst))
    }
}

/// The result of validating one write: the WAL entry to commit (if any) and the outcome,
/// whose `wal_offset` is filled in once the record has a sequence number.
// Short-lived and never stored in bulk.
#[allow(clippy::large_enum_variant)]
pub(super) enum Prepared {
    Write {
        entry: WalEntry,
        outcome: BatchOutput,
        /// The instance after the change.
        staged: Instance,
        /// The instance before it (`None`: absent), as a hint for the apply stage.
        previous: (String, Option<Instance>),
    },
    Done(BatchOutput),
}

pub(super) fn set_offset(out: &mut BatchOutput, seq: u64) {
    match out {
        BatchOutput::Created(c) => c.wal_offset = seq,
        BatchOutput::Applied(a) => a.wal_offset = seq,
        BatchOutput::Deleted(d) => d.wal_offset = seq,
        BatchOutput::Flushed(f) => f.wal_offset = seq,
        BatchOutput::Instance(_) => {}
    }
}

impl Database {
    fn idem_lookup(&self, scope: &str) -> Result<Option<IdemRecord>> {
        let Some(bytes) = self.inner.db.get(&keys::idem(scope)).map_err(sled_err)? else {
            return Ok(None);
        };
        let rec: IdemRecord = serde_json::from_slice(&bytes)
            .map_err(|e| internal(format!("corrupt idempotency record: {e}")))?;
        if rec.expires_at <= now_ms() {
            return Ok(None);
        }
        Ok(Some(rec))
    }

    fn idem_replay<T: for<'de> Deserialize<'de>>(
        rec: IdemRecord,
        fingerprint: &str,
        key: &str,
    ) -> Result<T> {
        if rec.fingerprint != fingerprint {
            return Err(Error::Conflict(ConflictKind::IdempotencyKeyReused {
                key: key.to_owned(),
            }));
        }
        serde_json::from_value(rec.result)
            .map_err(|e| internal(format!("corrupt idempotency result: {e}")))
    }

    pub(super) fn prepare_create(
        &self,
        req: &CreateInstance,
        id: &str,
        staged: &Staged<'_>,
        now: i64,
    ) -> Result<Prepared> {
        validate_idempotency_key(&req.idempotency_key)?;
        let initial_ctx = rstmdb_core::object_param("initial_ctx", req.initial_ctx.clone())?;
        if let Some(key) = &req.idempotency_key
            && let Some(rec) = self.idem_lookup(&scope::create(key))?
        {
            let fp = state::create_fingerprint(&req.machine, req.version, &initial_ctx);
            let out: CreateOutcome = Self::idem_replay(rec, &fp, key)?;
            if req
                .instance_id
                .as_deref()
                .is_some_and(|given| given != out.instance_id)
            {
                return Err(Error::Conflict(ConflictKind::IdempotencyKeyReused {
                    key: key.clone(),
                }));
            }
            return Ok(Prepared::Done(BatchOutput::Created(out)));
        }
        rstmdb_core::names::validate_instance_id(id)?;
        let existing = staged.load(id)?;
        match &existing {
            Some(e) if !e.deleted => {
                return Err(Error::InstanceExists {
                    instance_id: id.to_owned(),
                });
            }
            Some(_) if !self.inner.config.allow_instance_recreate => {
                return Err(Error::InstanceDeleted {
                    instance_id: id.to_owned(),
                });
            }
            _ => {}
        }
        let machine = self.machine(&req.machine, req.version)?;
        let instance = Instance::create(id, &machine, initial_ctx, now, &self.inner.limits)?;
        Ok(Prepared::Write {
            entry: WalEntry::CreateInstance {
                instance_id: id.to_owned(),
                machine: instance.machine.clone(),
                version: instance.version,
                initial_state: instance.state.clone(),
                initial_ctx: instance.ctx.clone(),
                idempotency_key: req.idempotency_key.clone(),
                created_at: now,
            },
            outcome: BatchOutput::Created(CreateOutcome {
                instance_id: id.to_owned(),
                state: instance.state.clone(),
                wal_offset: 0,
            }),
            staged: instance,
            previous: (id.to_owned(), existing),
        })
    }

    pub(super) fn prepare_apply(
        &self,
        req: &ApplyEvent,
        staged: &Staged<'_>,
        now: i64,
    ) -> Result<Prepared> {
        validate_idempotency_key(&req.idempotency_key)?;
        let payload = rstmdb_core::object_param("payload", req.payload.clone())?;
        let not_found = || Error::InstanceNotFound {
            instance_id: req.instance_id.clone(),
        };
        let instance = staged.load(&req.instance_id)?.ok_or_else(not_found)?;
        if instance.deleted {
            return Err(not_found());
        }
        if let Some(key) = &req.idempotency_key
            && let Some(rec) = self.idem_lookup(&scope::apply(&req.instance_id, key))?
            && rec.belongs_to(&instance)
        {
            let fp = state::apply_fingerprint(&req.event, &payload);
            let mut out: ApplyOutcome = Self::idem_replay(rec, &fp, key)?;
            out.applied = false;
            return Ok(Prepared::Done(BatchOutput::Applied(out)));
        }
        let machine = self.machine(&instance.machine, instance.version)?;
        let ev = EventRequest {
            event: &req.event,
            payload: &payload,
            expected_state: req.expected_state.as_deref(),
            expected_wal_offset: req.expected_wal_offset,
            event_id: req.event_id.as_deref(),
        };
        let applied = rstmdb_core::apply_event(&instance, &machine, &ev, now, &self.inner.limits)?;
        Ok(Prepared::Write {
            entry: WalEntry::ApplyEvent {
                instance_id: req.instance_id.clone(),
                machine: instance.machine.clone(),
                version: instance.version,
                event: req.event.clone(),
                from_state: applied.from_state.clone(),
                to_state: applied.to_state.clone(),
                payload,
                ctx: applied.instance.ctx.clone(),
                event_id: req.event_id.clone(),
                idempotency_key: req.idempotency_key.clone(),
                updated_at: now,
            },
            outcome: BatchOutput::Applied(ApplyOutcome {
                from_state: applied.from_state,
                to_state: applied.to_state,
                ctx: applied.instance.ctx.clone(),
                wal_offset: 0,
                applied: true,
                event_id: req.event_id.clone(),
            }),
            staged: applied.instance,
            previous: (req.instance_id.clone(), Some(instance)),
        })
    }

    pub(super) fn prepare_delete(
        &self,
        req: &DeleteInstance,
        staged: &Staged<'_>,
        now: i64,
    ) -> Result<Prepared> {
        validate_idempotency_key(&req.idempotency_key)?;
        let instance = staged
            .load(&req.instance_id)?
            .ok_or_else(|| Error::InstanceNotFound {
                instance_id: req.instance_id.clone(),
            })?;
        if let Some(key) = &req.idempotency_key
            && let Some(rec) = self.idem_lookup(&scope::delete(&req.instance_id, key))?
            && rec.belongs_to(&instance)
        {
            let out: DeleteOutcome = Self::idem_replay(rec, &state::delete_fingerprint(), key)?;
            return Ok(Prepared::Done(BatchOutput::Deleted(out)));
        }
        match rstmdb_core::delete_instance(&instance, now) {
            rstmdb_core::Deletion::AlreadyDeleted { wal_offset } => {
                Ok(Prepared::Done(BatchOutput::Deleted(DeleteOutcome {
                    instance_id: req.instance_id.clone(),
                    wal_offset,
                })))
            }
            rstmdb_core::Deletion::Deleted(next) => Ok(Prepared::Write {
                entry: WalEntry::DeleteInstance {
                    instance_id: req.instance_id.clone(),
                    idempotency_key: req.idempotency_key.clone(),
                    updated_at: now,
                },
                outcome: BatchOutput::Deleted(DeleteOutcome {
                    instance_id: req.instance_id.clone(),
                    wal_offset: 0,
                }),
                staged: next,
                previous: (req.instance_id.clone(), Some(instance)),
            }),
        }
    }

    /// Commits a prepared single write and returns its outcome.
    async fn finish(
        &self,
        prepared: Prepared,
        guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<BatchOutput> {
        match prepared {
            Prepared::Done(out) => Ok(out),
            Prepared::Write {
                entry,
                mut outcome,
                previous,
                ..
            } => {
                let c = self.commit(entry, vec![previous], guards).await?;
                set_offset(&mut outcome, c.seq);
                Ok(outcome)
            }
        }
    }

    /// Reads for a caller holding the lock shards of the ids it loads.
    pub(super) fn staged(&self) -> Staged<'_> {
        Staged {
            db: &self.inner.db,
            cache: &self.inner.cache,
            locks: None,
            overlay: HashMap::new(),
        }
    }

    /// Reads for a caller holding no lock.
    pub(super) fn unlocked(&self) -> Staged<'_> {
        Staged {
            locks: Some(&self.inner.locks),
            ..self.staged()
        }
    }

    pub(super) fn generated_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// CREATE_INSTANCE.
    pub async fn create_instance(&self, req: CreateInstance) -> Result<CreateOutcome> {
        let id = req.instance_id.clone().unwrap_or_else(Self::generated_id);
        let idem_lock = req.idempotency_key.as_ref().map(|k| format!("idem\0{k}"));
        let mut lock_keys = vec![id.as_str()];
        lock_keys.extend(idem_lock.as_deref());
        let guards = self.inner.locks.lock_all(&lock_keys).await;
        self.write_gate()?;
        let prepared = self.prepare_create(&req, &id, &self.staged(), now_ms())?;
        match self.finish(prepared, guards).await? {
            BatchOutput::Created(c) => Ok(c),
            _ => Err(internal("create produced another outcome")),
        }
    }

    /// APPLY_EVENT.
    pub async fn apply_event(&self, req: ApplyEvent) -> Result<ApplyOutcome> {
        let guards = self.inner.locks.lock_all(&[req.instance_id.as_str()]).await;
        self.write_gate()?;
        let prepared = self.prepare_apply(&req, &self.staged(), now_ms())?;
        match self.finish(prepared, guards).await? {
            BatchOutput::Applied(a) => Ok(a),
            _ => Err(internal("apply produced another outcome")),
        }
    }

    /// DELETE_INSTANCE (soft delete; deleting again returns the original offset).
    pub async fn delete_instance(&self, req: DeleteInstance) -> Result<DeleteOutcome> {
        let guards = self.inner.locks.lock_all(&[req.instance_id.as_str()]).await;
        self.write_gate()?;
        let prepared = self.prepare_delete(&req, &self.staged(), now_ms())?;
        match self.finish(prepared, guards).await? {
            BatchOutput::Deleted(d) => Ok(d),
            _ => Err(internal("delete produced another outcome")),
        }
    }
}
