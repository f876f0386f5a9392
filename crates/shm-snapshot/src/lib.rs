//! Crash-consistent, durable, incremental snapshots of a shared-memory region.
//!
//! A snapshot file is a log: a fixed header followed by checksummed records.
//! Page records of generation `g` become state only when the commit record of
//! `g` follows them and the log up to that record is intact; a restore
//! replays the log up to the last valid commit record. See
//! [`protocol`] (`docs/protocol/shm-snapshot.md` in the source repository)
//! for the byte layout and the durability argument.
//!
//! # The parts
//! * The **file format** (this crate's root): [`SnapshotWriter`] appends
//!   snapshots and compacts the log, [`restore`] and [`restore_with`] read it
//!   back (refusing or salvaging damage), [`inspect`] describes a file.
//! * The **live commit protocol** ([`live`]): the program ([`live::Client`])
//!   commits consistent states into a memfd; a host ([`live::Host`]) reads
//!   exactly one committed state, or only the pages changed since one, without
//!   ever stopping the program. [`track`] finds the pages the program wrote.
//!   **Durable commits**: [`live::Client::wait_durable`] waits (on a futex)
//!   until the host has fdatasynced a generation into FILE, asking it for a
//!   snapshot at once; one fdatasync covers every generation committed
//!   meanwhile (group commit). See its example.
//! * The **snapshot host** ([`host`]): keeps a memfd's state durable in a
//!   snapshot file and restores it on a cold start, with the policy around
//!   it (intervals, write-rate limit, lag, compaction, damage, the exit
//!   snapshot). A program can host its own snapshots with
//!   [`host::SnapshotHost`]; the `shm-restore` binary runs it for a child
//!   process.
//!
//! When to use it, and when something else: use this crate when a program's
//! in-memory state must survive a reboot (or the loss of the memfd) and come
//! back exactly as one consistent commit, written to disk incrementally
//! without pausing the program. Not for: state that only has to outlive a crash of the program, not a
//! reboot (keep the memfd in systemd's fd store with `shm-fd`, no file
//! needed); or a program that cannot say when its state is consistent (a
//! snapshot holds exactly one commit).
//!
//! # Features
//! * `shm-restore`: builds the `shm-restore` binary (command line, fd store,
//!   child process), on top of [`host`]; enables `replica`. The library
//!   itself needs no feature.
//! * `replica`: the `replica` module and `HostConfig::replica`: every
//!   durable snapshot shipped to S3-compatible object storage (or a local
//!   directory) through `object_store`, and FILE restored from it on
//!   another machine (the [replication protocol][replication],
//!   `docs/protocol/replication.md` in the source repository).
//! * `fault-injection`: SIGKILL at named crash points (`SHM_CRASH_AT`), for
//!   tests.
//! * `tokio`: [`live::Client::wait_durable_async`][wait_durable_async].
//!
//! # The client/host model
//! The program whose state is kept is the **client**: it maps a live memfd
//! with [`live::Client::open`], edits its state in the work area
//! ([`live::Client::work`]) and, whenever the state is consistent, commits it
//! ([`live::Client::commit`] with the byte ranges it changed, or
//! [`live::Client::commit_tracked`] after [`live::Client::track`]). A commit
//! never waits for the host and never touches a file; its copy runs on
//! every core by default ([`live::Client::set_copy_threads`]). The **host** —
//! [`host::SnapshotHost`] in the program's supervisor or in the program
//! itself, or the `shm-restore` binary that runs the program as its child —
//! reads committed states out of the memfd and writes them into the snapshot
//! file, FILE, and restores FILE into a new memfd on a cold start. A commit is
//! durable once the host has fdatasynced it: a client that must know waits
//! with [`live::Client::wait_durable`].
//!
//! # Examples
//! Commit named byte ranges (the memfd comes from a host; normally the
//! client is another process that inherited it):
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shm_snapshot::host::{HostConfig, SnapshotHost};
//! use shm_snapshot::live::Client;
//!
//! let dir = std::env::temp_dir().join(format!("lib-doc-commit-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let config = HostConfig { create: true, size: 8192, ..HostConfig::new(dir.join("s.snap")) };
//! let host = SnapshotHost::open(config, None)?;
//!
//! let client = Client::open(host.memfd())?;
//! client.work().write_bytes(0, b"counter=1")?;
//! let g = client.commit(&[0..9]);
//! assert_eq!(g, 1);
//! assert_eq!(client.generation(), 1);
//! # drop(client);
//! # drop(host);
//! std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! Let the kernel find the written pages (userfaultfd write-protection,
//! Linux 6.7 or later); on an older kernel or in a sandbox that refuses it,
//! fall back to named ranges:
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shm_snapshot::host::{HostConfig, SnapshotHost};
//! use shm_snapshot::live::Client;
//! use shm_snapshot::track::TrackErrorKind;
//!
//! let dir = std::env::temp_dir().join(format!("lib-doc-track-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let config = HostConfig { create: true, size: 8192, ..HostConfig::new(dir.join("s.snap")) };
//! let host = SnapshotHost::open(config, None)?;
//! let mut client = Client::open(host.memfd())?;
//!
//! match client.track() {
//!     Ok(()) => {
//!         client.work().write_bytes(4096, b"tracked")?;
//!         let done = client.commit_tracked()?;
//!         assert_eq!(done.generation, 1);
//!         assert_eq!(done.bytes, 4096); // the one written page
//!     }
//!     Err(e) if e.kind() == TrackErrorKind::Unsupported => {
//!         client.work().write_bytes(4096, b"tracked")?;
//!         assert_eq!(client.commit(&[4096..4103]), 1);
//!     }
//!     Err(e) => return Err(e.into()),
//! }
//! # drop(client);
//! # drop(host);
//! std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! A state committed by a client, kept in FILE by the host, restored from FILE:
//! see the [`host`] module's example; a durable commit: see
//! [`live::Client::wait_durable`].
//!
// The replication protocol's page and the async wait exist only with their
// features; a build without them links to the docs.rs pages (built with every
// feature).
#![cfg_attr(feature = "replica", doc = "[replication]: replica::replication")]
#![cfg_attr(
    not(feature = "replica"),
    doc = "[replication]: https://docs.rs/shm-snapshot/latest/shm_snapshot/replica/replication/index.html"
)]
#![cfg_attr(
    feature = "tokio",
    doc = "[wait_durable_async]: live::Client::wait_durable_async"
)]
#![cfg_attr(
    not(feature = "tokio"),
    doc = "[wait_durable_async]: https://docs.rs/shm-snapshot/latest/shm_snapshot/live/struct.Client.html#method.wait_durable_async"
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The shared-memory protocol of this crate: the text of `docs/protocol/shm-snapshot.md` in the
/// source repository (the crate's `PROTOCOL.md` links to it, and the packaged
/// crate carries a copy), included here so it is readable with the API docs.
#[doc = ""]
// Rustdoc targets for the document's reference links: the first definition of
// a label wins, so these take the place of the repository-relative ones at
// its end.
#[doc = "[segment-header]: https://docs.rs/shm-segment/latest/shm_segment/protocol/index.html#segment-layout-crate-shm-segment"]
#[doc = ""]
// The text is Markdown written for a repository browser: `x[i]` there is not
// an intra-doc link, and identifiers are not always in backticks.
#[allow(rustdoc::broken_intra_doc_links, clippy::doc_markdown)]
#[doc = include_str!("../PROTOCOL.md")]
pub mod protocol {}

mod error;
mod format;
pub mod host;
pub mod live;
#[cfg(feature = "replica")]
#[cfg_attr(docsrs, doc(cfg(feature = "replica")))]
pub mod replica;
mod storage;
pub mod track;

pub use error::{ErrorKind, SnapshotError};
pub use format::{
    COMMIT_LEN, Damage, FileInfo, HEADER_LEN, Header, MAGIC, MIN_VERSION, OnDamage, PageIndex,
    RECORD_LEN, RestoreOptions, Restored, Salvage, Snapshot, SnapshotWriter, VERSION,
    compact_temp_path, create_temp_beside, inspect, read_header, remove_stale_compaction, restore,
    restore_with, restore_with_progress,
};
pub use storage::{FileStorage, MemStorage, Storage};

/// The operations a [`MemStorage`] records.
pub mod storage_ops {
    pub use crate::storage::Op;
}
