//! Crash-consistent, durable, incremental snapshots of a shared-memory region.
//!
//! A snapshot file is a log: a fixed header followed by checksummed records.
//! Page records of generation `g` become state only when the commit record of
//! `g` follows them and the log up to that record is intact; a restore
//! replays the log up to the last valid commit record. See
//! `docs/protocol/shm-snapshot.md` for the byte layout and the durability
//! argument.

mod error;
mod format;
pub mod host;
pub mod live;
mod storage;
pub mod track;

pub use error::{ErrorKind, SnapshotError};
pub use format::{
    Damage, FileInfo, HEADER_LEN, Header, MAGIC, OnDamage, PageIndex, RestoreOptions, Restored,
    Salvage, Snapshot, SnapshotWriter, VERSION, compact_temp_path, create_temp_beside, inspect,
    read_header, remove_stale_compaction, restore, restore_with, restore_with_progress,
};
pub use storage::{FileStorage, MemStorage, Storage};

/// The operations a [`MemStorage`] records.
pub mod storage_ops {
    pub use crate::storage::Op;
}
