//! rstmdb-storage: the storage engine (the WAL layer first).
pub mod wal;
