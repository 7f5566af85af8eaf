//! `rstmdb cluster init`: turns a single node's data directory into a one-voter cluster,
//! keeping every offset. The records the single node wrote are committed by definition (it
//! was the whole database), so they become raft entries of term 0 as they are (version-1
//! WAL records read as term 0); one membership record is appended after them, naming this
//! node the only voter. For raft they count as purged (covered by the state; a joining node
//! gets them in a snapshot); they stay in the WAL for WAL_READ and watches. Started with its `cluster:` section, the node elects itself (term 1)
//! and continues at the next offset; more nodes join through `CLUSTER_ADD_NODE` and a
//! snapshot.

use crate::hardstate::{CommittedFile, HardStateFile};
use crate::log_store::encode_entry;
use crate::types::{Member, NodeId, log_id};
use openraft::{Entry, EntryPayload, Membership};
use rstmdb_storage::replicated::{ApplyRecord, ReplicatedOpen};
use rstmdb_storage::{Database, StorageConfig};
use std::collections::{BTreeMap, BTreeSet};

/// What `init_from_single_node` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// The single node's last record: every offset up to it is kept.
    pub last_offset: u64,
    /// The offset of the membership record written after it.
    pub membership_offset: u64,
}

/// Converts `storage.data_dir` (a single node's, server stopped) into a cluster of one voter,
/// `node_id` at `me`. Refuses a directory with no database or one already in a cluster.
pub fn init_from_single_node(
    storage: StorageConfig,
    node_id: NodeId,
    me: Member,
) -> Result<InitReport, String> {
    let dir = storage.data_dir.clone();
    let raft = crate::raft_dir(&dir);
    if raft.exists() {
        return Err(format!(
            "{} already belongs to a cluster ({} exists)",
            dir.display(),
            raft.display()
        ));
    }
    if !storage.wal_dir().is_dir() {
        return Err(format!(
            "{} holds no database (no {}): a new node needs no init, start it with its cluster: section",
            dir.display(),
            storage.wal_dir().display()
        ));
    }
    // 1. As a single node: recover, checkpoint, flush, release the directory.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    rt.block_on(async {
        let db =
            Database::open(storage.clone()).map_err(|e| format!("opening the database: {e}"))?;
        db.close()
            .await
            .map_err(|e| format!("closing the database: {e}"))
    })?;
    // 2. As a replica: everything in the log is committed.
    let (db, log, apply) = Database::open_replicated(
        storage,
        ReplicatedOpen {
            committed: u64::MAX,
        },
    )
    .map_err(|e| format!("reopening as a replica: {e}"))?;
    let last_offset = log.next_seq().map_err(|e| e.to_string())?.saturating_sub(1);
    let at = last_offset + 1;
    let membership = Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(node_id, me)]),
    );
    let entry = Entry {
        log_id: log_id(0, at),
        payload: EntryPayload::Membership(membership),
    };
    let payload = encode_entry(&entry)?;
    log.append(&[(at, 0, payload.as_slice())])
        .map_err(|e| format!("appending the membership record: {e}"))?;
    let answers = apply.apply(vec![ApplyRecord {
        seq: at,
        term: 0,
        payload,
    }]);
    if let Some(e) = answers.iter().find_map(|a| a.error.clone()) {
        return Err(format!("applying the membership record: {e}"));
    }
    apply.flush_state()?;
    // Raft reads its log from the entry after the purge point: the single node's records are
    // covered by the state (a joining node gets them in a snapshot), so they count as purged
    // for raft while they stay in the WAL for WAL_READ and watches.
    let mut hard = HardStateFile::open(&raft).map_err(|e| e.to_string())?;
    hard.save(crate::hardstate::HardState {
        vote: None,
        purged: Some(log_id(0, last_offset)),
        entry0: None,
    })
    .map_err(|e| e.to_string())?;
    CommittedFile::open(&raft)
        .and_then(|c| c.save(at, 0))
        .map_err(|e| e.to_string())?;
    drop((db, log, apply));
    Ok(InitReport {
        last_offset,
        membership_offset: at,
    })
}
