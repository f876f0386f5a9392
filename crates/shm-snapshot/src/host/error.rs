//! The errors of the snapshot host: one enum, each variant naming the file
//! or object involved and carrying the error underneath.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shm_segment::memfd::MemfdError;

use crate::SnapshotError;

/// What the snapshot host could not do.
///
/// `Display` is the whole message (lowercase, no trailing period), naming the
/// file; `source()` is the error underneath.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// [`HostConfig::compact_at`](super::HostConfig::compact_at) is neither 0
    /// nor at least 1.5.
    #[error("compaction factor {factor}: must be 0 (never) or at least 1.5")]
    CompactAt {
        /// The factor given.
        factor: f64,
    },
    /// FILE is a symlink whose target cannot be resolved.
    #[error("{}: resolving the symlink: {source}", .path.display())]
    Resolve {
        /// FILE as given.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// FILE cannot be opened (the message names it), or is not a regular file.
    #[error("{source}")]
    Open {
        /// FILE.
        path: PathBuf,
        /// The error, naming FILE.
        #[source]
        source: SnapshotError,
    },
    /// FILE cannot be read: an I/O error, a foreign or corrupt header, a
    /// generation it does not hold.
    #[error("{}: {source}", .path.display())]
    Read {
        /// FILE.
        path: PathBuf,
        /// The error.
        #[source]
        source: SnapshotError,
    },
    /// An I/O error on FILE outside reading and writing records (duplicating
    /// its descriptor).
    #[error("{}: {source}", .path.display())]
    Io {
        /// FILE.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// FILE holds an image too small for a state (at most the 4096-byte prefix).
    #[error("{}: file of {image_size} bytes is too small for a state", .path.display())]
    TooSmall {
        /// FILE.
        path: PathBuf,
        /// The image size its header gives.
        image_size: u64,
    },
    /// FILE's records are not of the 4096-byte pages the host writes.
    #[error(
        "{}: records of {page_size} bytes, but the host writes {}-byte pages",
        .path.display(),
        crate::live::PAGE
    )]
    PageSize {
        /// FILE.
        path: PathBuf,
        /// The page size its header gives.
        page_size: u32,
    },
    /// FILE does not exist, no memfd was inherited, and
    /// [`HostConfig::create`](super::HostConfig::create) is off.
    #[error("{}: no such file", .path.display())]
    NotFound {
        /// FILE.
        path: PathBuf,
    },
    /// FILE is damaged (intact snapshots follow invalid records), and
    /// [`StartFrom::Newest`](super::StartFrom::Newest) refuses it. Nothing
    /// was changed.
    #[error("{}: {source}; nothing was changed", .path.display())]
    Damaged {
        /// FILE.
        path: PathBuf,
        /// The damage: ranges and generations ([`crate::ErrorKind::Damaged`]).
        #[source]
        source: SnapshotError,
    },
    /// [`StartFrom::Generation`](super::StartFrom::Generation) or
    /// [`StartFrom::Salvage`](super::StartFrom::Salvage) without a FILE to
    /// read.
    #[error("{}: no such file to rebuild from", .path.display())]
    NothingToRebuild {
        /// FILE.
        path: PathBuf,
    },
    /// [`StartFrom::Generation`](super::StartFrom::Generation) restores
    /// into a fresh memfd, but one was inherited (its state is newer).
    #[error(
        "restoring generation {generation} needs a fresh memfd, but a memfd was inherited (its state is newer)"
    )]
    GenerationWithInherited {
        /// The generation asked for.
        generation: u64,
    },
    /// The inherited memfd is not a snapshot memfd, or not a usable one.
    #[error("inherited memfd: {source}")]
    Inherited {
        /// Why it cannot be used.
        #[source]
        source: SnapshotError,
    },
    /// The inherited memfd and FILE hold states of different sizes.
    #[error(
        "inherited memfd holds {memfd} bytes of state but {} holds {file}",
        .path.display()
    )]
    SizeMismatch {
        /// FILE.
        path: PathBuf,
        /// The memfd's state size.
        memfd: u64,
        /// FILE's state size.
        file: u64,
    },
    /// FILE holds a newer generation than the inherited memfd: which one is
    /// right cannot be told.
    #[error(
        "inherited memfd is at generation {memfd} but {} is newer ({file}); refusing to guess",
        .path.display()
    )]
    InheritedBehind {
        /// FILE.
        path: PathBuf,
        /// The memfd's generation.
        memfd: u64,
        /// FILE's generation.
        file: u64,
    },
    /// A new memfd cannot be created.
    #[error("memfd: {source}")]
    CreateMemfd {
        /// The error.
        #[source]
        source: MemfdError,
    },
    /// The host's own memfd cannot be initialized or mapped.
    #[error("memfd: {source}")]
    Memfd {
        /// The error.
        #[source]
        source: SnapshotError,
    },
    /// FILE cannot be created.
    #[error("{}: {source}", .path.display())]
    Create {
        /// FILE.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The new file of a rebuild cannot be created next to FILE.
    #[error("{}: creating a new file next to it: {source}", .path.display())]
    CreateBeside {
        /// FILE.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing snapshot records to a file failed (a full disk included).
    #[error("{}: {source}", .path.display())]
    Write {
        /// The file written: FILE, or the new file of a rebuild.
        path: PathBuf,
        /// The error.
        #[source]
        source: SnapshotError,
    },
    /// Replication cannot start (a bad URL, say).
    #[cfg(feature = "replica")]
    #[cfg_attr(docsrs, doc(cfg(feature = "replica")))]
    #[error("replication: {source}")]
    Replica {
        /// Why.
        #[source]
        source: crate::replica::ReplicaError,
    },
    /// The first snapshot into the new file of a rebuild failed; FILE is
    /// unchanged.
    #[error("writing the new {}: {source}", .path.display())]
    Rebuild {
        /// FILE.
        path: PathBuf,
        /// Why the snapshot failed.
        #[source]
        source: Box<HostError>,
    },
    /// The original FILE cannot be kept aside before a rebuild replaces it.
    #[error(
        "{}: keeping the original as {}: {source}",
        .path.display(),
        .aside.display()
    )]
    KeepAside {
        /// FILE.
        path: PathBuf,
        /// The name tried.
        aside: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Every name for keeping the original FILE aside is taken.
    #[error("{}: no free name to keep the original aside", .path.display())]
    NoAsideName {
        /// FILE.
        path: PathBuf,
    },
    /// The directory holding FILE cannot be synced after FILE was created
    /// or renamed into it: nothing is published as durable.
    #[error("{}: syncing its directory: {source}", .path.display())]
    SyncDir {
        /// FILE.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The new file of a rebuild cannot be renamed over FILE.
    #[error("{}: renaming to {}: {source}", .from.display(), .to.display())]
    Rename {
        /// The new file.
        from: PathBuf,
        /// FILE.
        to: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The memfd's commit sequence was written by something other than the
    /// protocol: no snapshot is taken from it any more, and FILE keeps its
    /// last good generation.
    #[error(
        "{reason}; no snapshot taken, {} stays at generation {generation}",
        .path.display()
    )]
    Refused {
        /// FILE.
        path: PathBuf,
        /// The generation FILE keeps.
        generation: u64,
        /// What was found in the memfd.
        #[source]
        reason: StrayWrite,
    },
    /// Commits kept rewriting the pages being copied: this snapshot was
    /// skipped (the next one will try again).
    #[error("commits rewrote pages being copied {tries} times in a row; snapshot skipped")]
    Conflicts {
        /// The attempts made.
        tries: u32,
    },
    /// Compacting FILE failed; it stays as it was (the log is still appended to).
    #[error(
        "{}: compaction: {source}{}",
        .path.display(),
        RetryIn(*.retry_in)
    )]
    Compact {
        /// FILE.
        path: PathBuf,
        /// The error.
        #[source]
        source: SnapshotError,
        /// On a full disk: the time before compaction is tried again.
        retry_in: Option<Duration>,
    },
}

/// The end of a compaction error's message: when the next attempt comes.
struct RetryIn(Option<Duration>);

impl std::fmt::Display for RetryIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(
                f,
                "; next attempt in {:.0}s at the earliest",
                d.as_secs_f64()
            ),
            None => Ok(()),
        }
    }
}

/// What showed that a memfd's commit sequence was written by something
/// other than the protocol (a stray write into the memfd).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StrayWrite {
    /// The sequence is beyond what any client reaches.
    #[error("the live commit sequence is {seq}, out of range: a stray write to the memfd")]
    OutOfRange {
        /// The value found.
        seq: u64,
    },
    /// The committed generation is behind one already in FILE.
    #[error(
        "the live commit generation went backwards, from {from} to {to}: a stray write to the memfd"
    )]
    Backwards {
        /// The generation FILE holds.
        from: u64,
        /// The generation found.
        to: u64,
    },
    /// Reading the memfd after the program's exit found the sequence out of
    /// range ([`crate::ErrorKind::BadSequence`]).
    #[error("{0}")]
    BadSequence(#[source] Arc<SnapshotError>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_threads_and_chain_their_sources() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<HostError>();
        send_sync::<StrayWrite>();
        let sut = HostError::Compact {
            path: PathBuf::from("/d/f.snap"),
            source: crate::SnapshotError::io("write", std::io::Error::from_raw_os_error(28)),
            retry_in: Some(Duration::from_secs(4)),
        };
        let msg = sut.to_string();
        assert!(msg.starts_with("/d/f.snap: compaction: write: "), "{msg}");
        assert!(
            msg.ends_with("; next attempt in 4s at the earliest"),
            "{msg}"
        );
        assert!(std::error::Error::source(&sut).is_some());
    }
}
