//! Replication of a snapshot file to object storage (feature `replica`):
//! every durable snapshot of FILE is shipped, continuously, to an
//! S3-compatible store (or a local directory), and a replica restores FILE
//! on another machine. The object layout and its guarantees are in
//! [`replication`] (`docs/protocol/replication.md` in the source repository).
//!
//! * [`Replicator`]: the uploader, a thread owned by the
//!   [`SnapshotHost`](crate::host::SnapshotHost) (set
//!   [`HostConfig::replica`](crate::host::HostConfig::replica)), fed after
//!   every durable snapshot with a [`Notice`]; it never blocks the host.
//! * [`restore`]: assembles a snapshot file from a replica, verified record
//!   by record, falling back to the last consistent generation.
//! * [`list`]: what a replica holds.
//!
//! URLs: `s3://BUCKET/PREFIX` (endpoint, region and credentials from the
//! standard `AWS_*` environment variables: `AWS_ENDPOINT`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP=true` for a
//! plain-http endpoint, ...), or `file:///DIR` (a local directory, written
//! with the same immutable objects).
//!
//! # Examples
//! Replicate a host's FILE into a directory, then restore it elsewhere:
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use shm_snapshot::host::{HostConfig, SnapshotHost};
//! use shm_snapshot::live::Client;
//! use shm_snapshot::replica::{self, ReplicaConfig, Target};
//!
//! let dir = std::env::temp_dir().join(format!("replica-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let url = format!("file://{}", dir.join("store").display());
//! let config = HostConfig {
//!     create: true,
//!     size: 8192,
//!     replica: Some(ReplicaConfig::new(&url)),
//!     ..HostConfig::new(dir.join("s.snap"))
//! };
//! let mut host = SnapshotHost::open(config, None)?;
//! let client = Client::open(host.memfd())?;
//! client.work().write_bytes(0, b"hello")?;
//! client.commit(&[0..5]);
//! host.tick();
//! drop(client);
//! let done = host.finish(); // waits for the uploads (ReplicaConfig::drain)
//! assert_eq!(done.replicated.map(|r| r.generation), Some(1));
//!
//! let got = replica::restore(&url, &dir.join("restored.snap"), Target::Newest)?;
//! assert_eq!(got.generation, 1);
//! assert!(got.skipped.is_empty());
//! std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

/// The replication protocol: the text of `docs/protocol/replication.md` in the
/// source repository (the crate's `REPLICATION.md` links to it, and the
/// packaged crate carries a copy), included here so it is readable with the
/// API docs: the object layout in the store, the uploader, restore, and what
/// it guarantees.
#[doc = ""]
// Rustdoc targets for the document's reference links: the first definition of
// a label wins, so these take the place of the repository-relative ones at
// its end.
#[doc = "[snapshot-file]: crate::protocol#snapshot-file"]
#[doc = "[replicated-commits]: crate::protocol#replicated-commits-clientwait_replicated"]
#[doc = ""]
// The text is Markdown written for a repository browser: identifiers are not
// always in backticks.
#[allow(rustdoc::broken_intra_doc_links, clippy::doc_markdown)]
#[doc = include_str!("../../REPLICATION.md")]
pub mod replication {}

mod names;
mod restore;
mod store;
mod upload;

use std::time::{Duration, SystemTime};

pub use names::{EpochId, Kind, ObjectName};
pub use restore::{EpochInfo, ObjectInfo, Restored, Skipped, list, restore};
pub use upload::{Notice, Replicated, Replicator};

/// Where and how a host replicates FILE.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// `s3://BUCKET/PREFIX` or `file:///DIR`.
    pub url: String,
    /// Keep the newest this many bases (with the segments after them);
    /// older objects are deleted once a newer base is completely uploaded.
    /// Default: 2.
    pub keep_bases: usize,
    /// Also keep every base younger than this. Default: none.
    pub keep_for: Option<Duration>,
    /// The longest pause between retries of a failed upload (the first is
    /// 100 ms, doubling). Default: 10 s.
    pub retry_max: Duration,
    /// How long [`SnapshotHost::finish`](crate::host::SnapshotHost::finish)
    /// waits for the last uploads. Default: 30 s.
    pub drain: Duration,
}

impl ReplicaConfig {
    /// The defaults, replicating to `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            keep_bases: 2,
            keep_for: None,
            retry_max: Duration::from_secs(10),
            drain: Duration::from_secs(30),
        }
    }
}

/// Which state [`restore`] brings back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// The newest consistent state of the newest epoch.
    Newest,
    /// Exactly this file generation (as `shm-restore inspect` shows it), from
    /// the newest epoch that holds it.
    Generation(u64),
    /// The newest state durable at or before this time, from the newest
    /// epoch that has one (to the granularity of the uploaded objects: each
    /// carries the time its newest generation was durable).
    Time(SystemTime),
}

/// What replication or a restore from a replica could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The URL is not one of the supported forms, or the store cannot be set up.
    #[error("replica URL {url}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// Why.
        reason: String,
    },
    /// An operation on the store failed.
    #[error("object store {what}: {source}")]
    Store {
        /// The operation.
        what: &'static str,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The replica holds no complete base (for the target).
    #[error("no restorable state in {url} for {target}")]
    Nothing {
        /// The URL.
        url: String,
        /// The target, described.
        target: String,
    },
    /// The assembled file is not a readable snapshot log.
    #[error("the restored file is not valid: {source}")]
    Invalid {
        /// Why.
        #[source]
        source: crate::SnapshotError,
    },
}

impl ReplicaError {
    fn store(what: &'static str) -> impl FnOnce(object_store::Error) -> Self {
        move |source| Self::Store { what, source }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// A tokio runtime of one thread for the store's futures.
fn runtime() -> Result<tokio::runtime::Runtime, ReplicaError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ReplicaError::io("starting the tokio runtime"))
}
