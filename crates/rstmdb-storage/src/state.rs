//! The sled-held state and the one function that changes it.
//!
//! Everything lives in one sled tree under short key prefixes, so that a whole commit group
//! (instances, indexes, counters, idempotency records and the high-water mark) is applied
//! atomically, and many groups reach sled with one atomic batch (`crate::store`):
//!
//! | key | value |
//! |---|---|
//! | `i\0<id>` | [`Instance`] (JSON) — live instances and tombstones |
//! | `m\0<name>\0<version u32 BE>` | [`StoredMachine`] (JSON) |
//! | `s\0<machine>\0<state>\0<id>` | empty — live instances by machine and state, in id order |
//! | `c\0<machine>\0<state>` | live instance count, u64 LE |
//! | `d\0<id>` | tombstone index: delete offset, u64 LE (purged at checkpoints) |
//! | `k\0<scope>` | [`IdemRecord`] (JSON) |
//! | `x\0<expires_at BE>\0<scope>` | empty — idempotency expiry index |
//! | `meta\0checkpoint`, `meta\0high_water` | u64 LE |
//! | `meta\0encryption` | `none` or `aes-256-gcm:<key id hex>` |
//!
//! With encryption at rest, the `i`, `m` and `k` values are sealed by `crate::store`.
//!
//! Names and ids never contain `\0` (control characters are rejected by `rstmdb-core`), so
//! the separators are unambiguous.
//!
//! [`plan`] turns one WAL entry at one sequence number into writes. The apply stage calls
//! it for live writes and recovery calls it for replay, so replayed state equals live state
//! by construction. It is idempotent: a change already reflected in the store (an instance
//! whose `last_wal_offset` is at or past the record) is skipped.

use crate::entry::WalEntry;
use rstmdb_core::Instance;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub(crate) mod keys {
    pub const INSTANCE: &[u8] = b"i\0";
    pub const MACHINE: &[u8] = b"m\0";
    pub const BY_STATE: &[u8] = b"s\0";
    pub const COUNT: &[u8] = b"c\0";
    pub const TOMBSTONE: &[u8] = b"d\0";
    pub const IDEM: &[u8] = b"k\0";
    pub const IDEM_EXPIRY: &[u8] = b"x\0";
    pub const CHECKPOINT: &[u8] = b"meta\0checkpoint";
    pub const HIGH_WATER: &[u8] = b"meta\0high_water";
    /// Cluster only: the raft term of the record at `HIGH_WATER`, written with it.
    pub const APPLIED_TERM: &[u8] = b"meta\0applied_term";
    /// Cluster only: the latest membership record applied (the cluster crate's encoding).
    pub const RAFT_MEMBERSHIP: &[u8] = b"meta\0membership";
    /// `none` or `aes-256-gcm:<key id>`: how this store's values are encrypted.
    pub const ENCRYPTION: &[u8] = b"meta\0encryption";

    fn join(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let len = prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>();
        let mut k = Vec::with_capacity(len);
        k.extend_from_slice(prefix);
        for (n, p) in parts.iter().enumerate() {
            if n > 0 {
                k.push(0);
            }
            k.extend_from_slice(p);
        }
        k
    }

    pub fn instance(id: &str) -> Vec<u8> {
        join(INSTANCE, &[id.as_bytes()])
    }

    pub fn machine(name: &str, version: u32) -> Vec<u8> {
        join(MACHINE, &[name.as_bytes(), &version.to_be_bytes()])
    }

    pub fn by_state(machine: &str, state: &str, id: &str) -> Vec<u8> {
        join(
            BY_STATE,
            &[machine.as_bytes(), state.as_bytes(), id.as_bytes()],
        )
    }

    /// Prefix of `by_state` keys for one (machine, state), ending in the separator.
    pub fn by_state_prefix(machine: &str, state: &str) -> Vec<u8> {
        let mut k = join(BY_STATE, &[machine.as_bytes(), state.as_bytes()]);
        k.push(0); // within the capacity `join` reserved
        k
    }

    pub fn count(machine: &str, state: &str) -> Vec<u8> {
        join(COUNT, &[machine.as_bytes(), state.as_bytes()])
    }

    pub fn tombstone(id: &str) -> Vec<u8> {
        join(TOMBSTONE, &[id.as_bytes()])
    }

    pub fn idem(scope: &str) -> Vec<u8> {
        join(IDEM, &[scope.as_bytes()])
    }

    pub fn idem_expiry(expires_at: i64, scope: &str) -> Vec<u8> {
        // Offset so that byte order equals numeric order for negative values too.
        let t = (expires_at as u64) ^ (1 << 63);
        join(IDEM_EXPIRY, &[&t.to_be_bytes(), scope.as_bytes()])
    }

    /// Decodes the expiry time from an `idem_expiry` key.
    pub fn idem_expiry_time(key: &[u8]) -> Option<i64> {
        let raw: [u8; 8] = key
            .get(IDEM_EXPIRY.len()..IDEM_EXPIRY.len() + 8)?
            .try_into()
            .ok()?;
        Some((u64::from_be_bytes(raw) ^ (1 << 63)) as i64)
    }

    /// The scope part of an `idem_expiry` key.
    pub fn idem_expiry_scope(key: &[u8]) -> Option<&[u8]> {
        key.get(IDEM_EXPIRY.len() + 9..)
    }

    /// The `(machine, state)` of a `count` key.
    pub fn split_count(key: &[u8]) -> Option<(String, String)> {
        let rest = key.strip_prefix(COUNT)?;
        let sep = rest.iter().position(|&b| b == 0)?;
        let machine = std::str::from_utf8(&rest[..sep]).ok()?;
        let state = std::str::from_utf8(&rest[sep + 1..]).ok()?;
        Some((machine.to_owned(), state.to_owned()))
    }
}

/// Idempotency scopes (decisions.md): CREATE by key; APPLY and DELETE by instance + key.
pub(crate) mod scope {
    pub fn create(key: &str) -> String {
        format!("c\0{key}")
    }
    pub fn apply(instance_id: &str, key: &str) -> String {
        format!("a\0{instance_id}\0{key}")
    }
    pub fn delete(instance_id: &str, key: &str) -> String {
        format!("d\0{instance_id}\0{key}")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredMachine {
    pub machine: String,
    pub version: u32,
    pub definition: Value,
    pub checksum: String,
    pub wal_offset: u64,
}

/// What an idempotency key remembers: which request it was used for (a fingerprint of the
/// parameters that must match on a retry) and the original result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct IdemRecord {
    pub fingerprint: String,
    pub result: Value,
    pub expires_at: i64,
    pub wal_offset: u64,
    /// The instance life an APPLY or DELETE record belongs to (absent for CREATE records and
    /// records written before it existed). An instance deleted and created again under the
    /// same id is another life: its predecessor's records must not replay on it, neither to
    /// answer a DELETE that never ran nor to hand its old context to a principal allowed
    /// only the new instance's machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Incarnation>,
}

/// Which life of an instance id: its machine and creation time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Incarnation {
    pub machine: String,
    pub created_at: i64,
}

impl Incarnation {
    pub fn of(instance: &Instance) -> Incarnation {
        Incarnation {
            machine: instance.machine.clone(),
            created_at: instance.created_at,
        }
    }
}

impl IdemRecord {
    /// False when the record was made for an earlier life of `instance`'s id.
    pub fn belongs_to(&self, instance: &Instance) -> bool {
        self.instance
            .as_ref()
            .is_none_or(|i| i.machine == instance.machine && i.created_at == instance.created_at)
    }
}

/// Fingerprint of the parameters an idempotent retry must repeat.
pub(crate) fn fingerprint(fields: &Value) -> String {
    let digest = Sha256::digest(rstmdb_core::canonical_string(fields).as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn create_fingerprint(
    machine: &str,
    version: u32,
    initial_ctx: &Map<String, Value>,
) -> String {
    fingerprint(
        &serde_json::json!({"op": "create", "machine": machine, "version": version, "initial_ctx": initial_ctx}),
    )
}

pub(crate) fn apply_fingerprint(event: &str, payload: &Map<String, Value>) -> String {
    fingerprint(&serde_json::json!({"op": "apply", "event": event, "payload": payload}))
}

pub(crate) fn delete_fingerprint() -> String {
    fingerprint(&serde_json::json!({"op": "delete"}))
}

/// A committed APPLY_EVENT, as watchers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub wal_offset: u64,
    pub instance_id: String,
    pub machine: String,
    pub version: u32,
    pub event: String,
    pub from_state: String,
    pub to_state: String,
    pub payload: Map<String, Value>,
    pub ctx: Map<String, Value>,
}

impl ChangeEvent {
    /// The event an `apply_event` entry at `seq` produces (`None` for other entries). Live
    /// commits and WAL replay for watchers both build events here, so they cannot differ.
    pub(crate) fn of_apply(entry: &WalEntry, seq: u64) -> Option<ChangeEvent> {
        match entry {
            WalEntry::ApplyEvent {
                instance_id,
                machine,
                version,
                event,
                from_state,
                to_state,
                payload,
                ctx,
                ..
            } => Some(ChangeEvent {
                wal_offset: seq,
                instance_id: instance_id.clone(),
                machine: machine.clone(),
                version: *version,
                event: event.clone(),
                from_state: from_state.clone(),
                to_state: to_state.clone(),
                payload: payload.clone(),
                ctx: ctx.clone(),
            }),
            _ => None,
        }
    }
}

/// Counts removed by a FLUSH_ALL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlushCounts {
    pub instances_removed: u64,
    pub machines_removed: u64,
}

/// Reads the planner needs that are not in the pending writes: the state store.
pub(crate) trait View {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// Writes planned but not yet in the store: puts (`Some`) and deletes (`None`), the last
/// one per key. A store batch applies them atomically, so their order does not matter;
/// the planner reads through them, so later records of a group (and later sub-entries of
/// a batch) see earlier ones.
pub(crate) type Writes = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// What one WAL record causes besides its writes.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Live-instance count deltas per `count` key.
    pub counts: Vec<(Vec<u8>, i64)>,
    pub new_machines: Vec<StoredMachine>,
    /// Set when the record was a FLUSH_ALL; the apply stage executes it.
    pub flush: bool,
    /// Every instance version written, in order, with the length of its encoding: the apply
    /// stage puts them in the instance cache once the store has them.
    pub instances: Vec<(Instance, usize)>,
}

/// The watch events of the record `entry` at `seq`, appended to `out` (batches in order).
/// Live commits and WAL replay for watchers both build them here, so they cannot differ.
pub(crate) fn events_of(entry: &WalEntry, seq: u64, out: &mut impl Extend<Arc<ChangeEvent>>) {
    match entry {
        WalEntry::Batch { entries } => {
            for e in entries {
                events_of(e, seq, out);
            }
        }
        other => out.extend(ChangeEvent::of_apply(other, seq).map(Arc::new)),
    }
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(v).map_err(|e| format!("encoding state: {e}"))
}

pub(crate) fn decode_instance(bytes: &[u8]) -> Result<Instance, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("corrupt instance record: {e}"))
}

/// Instances as the submitter read them under their locks (`None`: known to be absent).
/// Saves the planner a read and a decode; only valid while those locks are held.
pub(crate) type Hints = Vec<(String, Option<Instance>)>;

/// Plans `entry` at sequence `seq`, adding its writes to `pending` (which holds the
/// writes planned before it that are not in `view` yet). `ttl_ms` is the idempotency
/// retention.
pub(crate) fn plan(
    entry: &WalEntry,
    seq: u64,
    ttl_ms: i64,
    view: &dyn View,
    hints: &[(String, Option<Instance>)],
    pending: &mut Writes,
) -> Result<Plan, String> {
    let mut planner = Planner {
        seq,
        ttl_ms,
        view,
        hints,
        plan: Plan::default(),
        pending,
        touched: HashSet::new(),
    };
    planner.entry(entry)?;
    Ok(planner.plan)
}

struct Planner<'a> {
    seq: u64,
    ttl_ms: i64,
    view: &'a dyn View,
    hints: &'a [(String, Option<Instance>)],
    plan: Plan,
    /// Writes not in the store yet: earlier records of the group and this one's so far.
    pending: &'a mut Writes,
    /// Instances this record already changed: they are at `seq` but must not be skipped.
    touched: HashSet<String>,
}

impl Planner<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.view.get(key),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    fn del(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// Writes an instance version: its encoding to the store, the decoded value to the plan.
    fn put_instance(&mut self, inst: Instance) -> Result<(), String> {
        let bytes = json(&inst)?;
        let len = bytes.len();
        self.put(keys::instance(&inst.id), bytes);
        self.plan.instances.push((inst, len));
        Ok(())
    }

    fn count(&mut self, machine: &str, state: &str, delta: i64) {
        self.plan.counts.push((keys::count(machine, state), delta));
    }

    /// The stored instance, unless this record is already reflected in it (replay after the
    /// store got ahead of the checkpoint).
    fn instance_to_change(&self, id: &str) -> Result<Option<Option<Instance>>, String> {
        let key = keys::instance(id);
        let hint = match self.pending.contains_key(&key) {
            true => None,
            false => self
                .hints
                .iter()
                .find(|(h, _)| h == id)
                .map(|(_, i)| i.clone()),
        };
        let current = match hint {
            Some(known) => known,
            None => match self.get(&key)? {
                Some(bytes) => Some(decode_instance(&bytes)?),
                None => None,
            },
        };
        if let Some(i) = &current
            && i.last_wal_offset >= self.seq
            && !self.touched.contains(id)
        {
            return Ok(None);
        }
        Ok(Some(current))
    }

    fn remember(
        &mut self,
        scope: String,
        fingerprint: String,
        result: Value,
        at_ms: i64,
        instance: Option<Incarnation>,
    ) -> Result<(), String> {
        let expires_at = at_ms.saturating_add(self.ttl_ms);
        let rec = IdemRecord {
            fingerprint,
            result,
            expires_at,
            wal_offset: self.seq,
            instance,
        };
        // A re-used key after expiry replaces the old record; drop its expiry entry.
        if let Some(old) = self.get(&keys::idem(&scope))?
            && let Ok(old) = serde_json::from_slice::<IdemRecord>(&old)
        {
            self.del(keys::idem_expiry(old.expires_at, &scope));
        }
        self.put(keys::idem(&scope), json(&rec)?);
        self.put(keys::idem_expiry(expires_at, &scope), Vec::new());
        Ok(())
    }

    /// Puts the live instance `inst` (a create or a restore) in place of `old`: a tombstone
    /// goes, a live older version (replay over a store that got ahead) leaves its index
    /// entry and count; then the instance, its index entry and its count.
    fn install(&mut self, old: Option<Instance>, inst: Instance) -> Result<(), String> {
        if let Some(old) = old {
            if old.deleted {
                self.del(keys::tombstone(&inst.id));
            } else {
                self.del(keys::by_state(&old.machine, &old.state, &inst.id));
                self.count(&old.machine, &old.state, -1);
            }
        }
        self.put(
            keys::by_state(&inst.machine, &inst.state, &inst.id),
            Vec::new(),
        );
        self.count(&inst.machine, &inst.state, 1);
        self.touched.insert(inst.id.clone());
        self.put_instance(inst)
    }

    fn entry(&mut self, entry: &WalEntry) -> Result<(), String> {
        match entry {
            WalEntry::PutMachine {
                machine,
                version,
                definition_hash,
                definition,
            } => {
                let key = keys::machine(machine, *version);
                if self.get(&key)?.is_none() {
                    let stored = StoredMachine {
                        machine: machine.clone(),
                        version: *version,
                        definition: definition.clone(),
                        checksum: definition_hash.clone(),
                        wal_offset: self.seq,
                    };
                    self.put(key, json(&stored)?);
                    self.plan.new_machines.push(stored);
                }
            }
            WalEntry::CreateInstance {
                instance_id,
                machine,
                version,
                initial_state,
                initial_ctx,
                idempotency_key,
                created_at,
            } => {
                let Some(current) = self.instance_to_change(instance_id)? else {
                    return Ok(());
                };
                self.install(
                    current,
                    Instance {
                        id: instance_id.clone(),
                        machine: machine.clone(),
                        version: *version,
                        state: initial_state.clone(),
                        ctx: initial_ctx.clone(),
                        last_event_id: None,
                        last_wal_offset: self.seq,
                        created_at: *created_at,
                        updated_at: *created_at,
                        deleted: false,
                    },
                )?;
                if let Some(key) = idempotency_key {
                    let result = serde_json::json!({
                        "instance_id": instance_id,
                        "state": initial_state,
                        "wal_offset": self.seq,
                    });
                    let fp = create_fingerprint(machine, *version, initial_ctx);
                    self.remember(scope::create(key), fp, result, *created_at, None)?;
                }
            }
            WalEntry::ApplyEvent {
                instance_id,
                event,
                from_state,
                to_state,
                payload,
                ctx,
                event_id,
                idempotency_key,
                updated_at,
                ..
            } => {
                let Some(Some(old)) = self.instance_to_change(instance_id)? else {
                    return Ok(());
                };
                let mut next = old.clone();
                next.state = to_state.clone();
                next.ctx = ctx.clone();
                next.last_event_id = event_id.clone();
                next.last_wal_offset = self.seq;
                next.updated_at = *updated_at;
                if !old.deleted && old.state != next.state {
                    self.del(keys::by_state(&old.machine, &old.state, instance_id));
                    self.put(
                        keys::by_state(&old.machine, &next.state, instance_id),
                        Vec::new(),
                    );
                    self.count(&old.machine, &old.state, -1);
                    self.count(&old.machine, &next.state, 1);
                }
                self.put_instance(next)?;
                self.touched.insert(instance_id.clone());
                let mut result = serde_json::json!({
                    "from_state": from_state,
                    "to_state": to_state,
                    "ctx": ctx,
                    "wal_offset": self.seq,
                    "applied": true,
                });
                if let (Some(id), Some(obj)) = (event_id, result.as_object_mut()) {
                    obj.insert("event_id".into(), Value::from(id.as_str()));
                }
                if let Some(key) = idempotency_key {
                    let fp = apply_fingerprint(event, payload);
                    self.remember(
                        scope::apply(instance_id, key),
                        fp,
                        result,
                        *updated_at,
                        Some(Incarnation::of(&old)),
                    )?;
                }
            }
            WalEntry::DeleteInstance {
                instance_id,
                idempotency_key,
                updated_at,
            } => {
                let Some(Some(old)) = self.instance_to_change(instance_id)? else {
                    return Ok(());
                };
                if old.deleted {
                    return Ok(());
                }
                let mut next = old.clone();
                next.deleted = true;
                next.updated_at = *updated_at;
                next.last_wal_offset = self.seq;
                self.del(keys::by_state(&old.machine, &old.state, instance_id));
                self.count(&old.machine, &old.state, -1);
                self.put_instance(next)?;
                self.put(
                    keys::tombstone(instance_id),
                    self.seq.to_le_bytes().to_vec(),
                );
                self.touched.insert(instance_id.clone());
                if let Some(key) = idempotency_key {
                    let result = serde_json::json!({
                        "instance_id": instance_id,
                        "deleted": true,
                        "wal_offset": self.seq,
                    });
                    self.remember(
                        scope::delete(instance_id, key),
                        delete_fingerprint(),
                        result,
                        *updated_at,
                        Some(Incarnation::of(&old)),
                    )?;
                }
            }
            WalEntry::RestoreInstance {
                instance_id,
                machine,
                version,
                state,
                ctx,
                last_event_id,
                created_at,
                updated_at,
            } => {
                let Some(current) = self.instance_to_change(instance_id)? else {
                    return Ok(());
                };
                self.install(
                    current,
                    Instance {
                        id: instance_id.clone(),
                        machine: machine.clone(),
                        version: *version,
                        state: state.clone(),
                        ctx: ctx.clone(),
                        last_event_id: last_event_id.clone(),
                        last_wal_offset: self.seq,
                        created_at: *created_at,
                        updated_at: *updated_at,
                        deleted: false,
                    },
                )?;
            }
            WalEntry::Batch { entries } => {
                for e in entries {
                    self.entry(e)?;
                }
            }
            WalEntry::FlushAll { .. } => self.plan.flush = true,
            WalEntry::Noop => {}
            WalEntry::Membership { membership } => {
                let v = json(membership)?;
                self.put(keys::RAFT_MEMBERSHIP.to_vec(), v);
            }
        }
        Ok(())
    }
}

pub(crate) fn encode_u64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

pub(crate) fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}
