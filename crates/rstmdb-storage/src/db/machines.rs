//! The machine registry: every stored machine definition, validated and held in memory
//! (loaded at open, added to by PUT_MACHINE, emptied by FLUSH_ALL).

use super::{Database, internal};
use crate::entry::WalEntry;
use crate::error::OpenError;
use crate::state::{StoredMachine, keys};
use crate::store::StoreError;
use crate::{MachineInfo, PutMachineOutcome};
use rstmdb_core::{Error, Machine, Result};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

impl Database {
    pub(super) fn machine(&self, name: &str, version: u32) -> Result<Arc<Machine>> {
        self.inner
            .machines
            .read()
            .map_err(|_| internal("machine cache lock poisoned"))?
            .get(name)
            .and_then(|versions| versions.get(&version))
            .cloned()
            .ok_or_else(|| Error::MachineNotFound {
                machine: name.to_owned(),
                version,
            })
    }

    /// PUT_MACHINE: validates and stores a new version; an identical re-put is `created:
    /// false`, a different definition for a stored version is `MACHINE_VERSION_EXISTS`.
    pub async fn put_machine(
        &self,
        name: &str,
        version: u32,
        definition: &Value,
    ) -> Result<PutMachineOutcome> {
        let (name, definition) = (name.to_owned(), definition.clone());
        self.detached(
            move |db| async move { db.put_machine_now(&name, version, &definition).await },
        )
        .await?
    }

    /// PUT_MACHINE: validates and stores a new version; an identical re-put is `created:
    /// false`, a different definition for a stored version is `MACHINE_VERSION_EXISTS`.
    async fn put_machine_now(
        &self,
        name: &str,
        version: u32,
        definition: &Value,
    ) -> Result<PutMachineOutcome> {
        let _guard = self.inner.machine_lock.lock().await;
        self.write_gate()?;
        let existing = self.machine(name, version).ok();
        let limit = self.inner.config.max_machine_versions as usize;
        if existing.is_none() && limit > 0 {
            let count = self
                .inner
                .machines
                .read()
                .map_err(|_| internal("machine cache lock poisoned"))?
                .get(name)
                .map_or(0, BTreeMap::len);
            if count >= limit {
                return Err(Error::MachineVersionLimitExceeded {
                    machine: name.to_owned(),
                    count,
                    limit,
                });
            }
        }
        let machine = Machine::new(name, version, definition)?;
        if let Some(stored) = existing {
            if stored.checksum() == machine.checksum() {
                return Ok(PutMachineOutcome {
                    machine: name.to_owned(),
                    version,
                    checksum: stored.checksum().to_owned(),
                    created: false,
                });
            }
            return Err(Error::MachineVersionExists {
                machine: name.to_owned(),
                version,
            });
        }
        self.commit(
            WalEntry::PutMachine {
                machine: name.to_owned(),
                version,
                definition_hash: machine.checksum().to_owned(),
                definition: machine.canonical_json(),
            },
            Vec::new(),
            Vec::new(),
        )
        .await?;
        let checksum = machine.checksum().to_owned();
        self.inner
            .machines
            .write()
            .map_err(|_| internal("machine cache lock poisoned"))?
            .entry(name.to_owned())
            .or_default()
            .insert(version, Arc::new(machine));
        Ok(PutMachineOutcome {
            machine: name.to_owned(),
            version,
            checksum,
            created: true,
        })
    }

    pub fn get_machine(&self, name: &str, version: u32) -> Result<MachineInfo> {
        let m = self.machine(name, version)?;
        Ok(MachineInfo {
            machine: name.to_owned(),
            version,
            definition: m.canonical_json(),
            checksum: m.checksum().to_owned(),
        })
    }

    /// Every machine name (byte order) with its versions (ascending).
    pub fn list_machines(&self) -> Result<Vec<(String, Vec<u32>)>> {
        let machines = self
            .inner
            .machines
            .read()
            .map_err(|_| internal("machine cache lock poisoned"))?;
        let mut out: Vec<(String, Vec<u32>)> = machines
            .iter()
            .map(|(name, versions)| (name.clone(), versions.keys().copied().collect()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub(super) fn load_machines(&self) -> std::result::Result<(), OpenError> {
        let mut map: HashMap<String, BTreeMap<u32, Arc<Machine>>> = HashMap::new();
        for item in self.inner.db.scan_prefix(keys::MACHINE) {
            let (_, v) = item.map_err(|e| match e {
                StoreError::Sled(source) => OpenError::State {
                    path: self.inner.config.state_dir(),
                    source,
                },
                other => OpenError::CorruptState(other.to_string()),
            })?;
            let stored: StoredMachine = serde_json::from_slice(&v)
                .map_err(|e| OpenError::CorruptState(format!("machine record: {e}")))?;
            let m =
                Machine::new(&stored.machine, stored.version, &stored.definition).map_err(|e| {
                    OpenError::CorruptState(format!(
                        "stored machine {} v{} no longer validates: {e}",
                        stored.machine, stored.version
                    ))
                })?;
            map.entry(stored.machine)
                .or_default()
                .insert(stored.version, Arc::new(m));
        }
        if let Ok(mut machines) = self.inner.machines.write() {
            *machines = map;
        }
        Ok(())
    }
}
