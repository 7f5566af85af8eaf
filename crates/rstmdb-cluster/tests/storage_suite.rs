//! openraft's own storage conformance suite (`openraft::testing::Suite`) against our log
//! store and state machine, each run on a fresh data directory.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use rstmdb_cluster::hardstate::{CommittedFile, HardStateFile};
use rstmdb_cluster::{LogStore, NodeId, StateMachine, TypeConfig, raft_dir};
use rstmdb_storage::replicated::ReplicatedOpen;
use rstmdb_storage::{Database, StorageConfig};

struct Builder;

/// Keeps the directory and the database alive for the length of one test.
#[allow(dead_code)]
struct Held(tempfile::TempDir, Database);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Held> for Builder {
    async fn build(&self) -> Result<(Held, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::error(
                e,
            )))
        })?;
        let config = StorageConfig::new(dir.path());
        let (db, log, apply) = Database::open_replicated(config, ReplicatedOpen::default())
            .map_err(|e| {
                StorageError::from(openraft::StorageIOError::write(openraft::AnyError::error(
                    e,
                )))
            })?;
        let hard = HardStateFile::open(&raft_dir(dir.path())).map_err(|e| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::error(
                e,
            )))
        })?;
        let committed = CommittedFile::open(&raft_dir(dir.path())).map_err(|e| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::error(
                e,
            )))
        })?;
        let store = LogStore::new(log.clone(), hard, committed);
        let sm = StateMachine::new(apply, log);
        Ok((Held(dir, db), store, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), String> {
    Suite::test_all(Builder).map_err(|e| e.to_string())
}
