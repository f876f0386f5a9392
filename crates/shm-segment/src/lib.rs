//! Shared-memory segments that are sound across processes.
//!
//! - [`memfd`]: create, size, seal and validate anonymous memory files, the
//!   kind a service manager can keep across restarts.
//! - [`Segment`]: a named POSIX shm object or a memfd with a validated header
//!   (magic, version, layout, init state) and a page-aligned payload.
//!   Named objects are published atomically, owned, reclaimed when stale,
//!   and optionally unlinked by the last process out. Their mappings are
//!   guarded: another process truncating the object makes
//!   [`Segment::is_truncated`] true instead of killing this one with `SIGBUS`.
//! - [`Mapping`] and [`Region`]: the workspace's only `mmap`, and a view of
//!   shared bytes that never hands out plain references to them.
//! - [`ShmBox`] and [`Shared`]: typed `&T` views for types whose every mutable
//!   byte is atomic; plain data is copied with [`Region::read`] / [`Region::write`].
//! - [`shared_struct!`] and [`Layout`]: shared structs whose layout fingerprint
//!   is structural, so separately built programs that declare the same struct
//!   share it, and any other struct is refused with both layouts shown.
//! - [`plain_struct!`] and [`Plain`]: the same structural fingerprint for
//!   plain-data values that are copied rather than viewed in place (the
//!   payloads of `shm-mailbox`'s typed boards).
//! - [`AccessPolicy`]: which users share a named object (owner, group, uids),
//!   set at creation and checked at open.
//! - [`fdpass`]: handing fds (a memfd, eventfds) to another process over a
//!   Unix socket (`SCM_RIGHTS`), without ever losing one silently.
//!
//! When to use it, and when something else: use this crate when processes
//! (possibly of different users, possibly killed at any time, possibly built
//! separately) must share *state* in place: counters, flags, tables of
//! atomics, a region another process snapshots, a memfd a service manager
//! keeps across restarts. It gives you the object, its ownership and
//! reclamation, a validated header, and typed views that stay sound while
//! others write. It does not move messages: for a stream where every item
//! must arrive, use `shm-ring`; for "the newest value wins" between one
//! writer and many readers, use `shm-mailbox` (both build on this crate).
//! For data that never leaves one process, use ordinary memory; for files
//! that must survive a reboot, use files (`shm-snapshot` writes segments to
//! them).
//!
//! Features: `fault-injection` arms the crate's named SIGKILL points
//! (`SHM_CRASH_AT`, see `shm_sync::crash_point!`) for crash tests; without it
//! they compile to nothing.
//!
//! # Example
//! ```
//! use shm_segment::{Segment, ShmBox, shared_struct};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! shared_struct! {
//!     /// Shared between processes.
//!     pub struct Stats { pub requests: AtomicU64 }
//! }
//!
//! let name = format!("doc-lib-{}", std::process::id());
//! let stats: ShmBox<Stats> = ShmBox::new(
//!     Segment::builder(&name).layout::<Stats>().last_out_unlinks(true).open_or_create()?,
//! )?;
//! stats.requests.fetch_add(1, Ordering::Relaxed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![doc(test(attr(deny(warnings))))]

// `shared_struct!` derives zerocopy through `::shm_segment::zerocopy`, which
// must also resolve inside this crate (the header is a shared struct).
extern crate self as shm_segment;

/// The shared-memory protocol of this crate, and the index
/// of every outlive layout: the text of `docs/PROTOCOL.md` in the
/// source repository (the crate's `PROTOCOL.md` links to it, and the packaged
/// crate carries a copy), included here so it is readable with the API docs.
#[doc = ""]
// Rustdoc targets for the document's reference links: the first definition of
// a label wins, so these take the place of the repository-relative ones at
// its end.
#[doc = "[shm-fd]: https://docs.rs/shm-fd/latest/shm_fd/protocol/index.html"]
#[doc = "[shm-mailbox]: https://docs.rs/shm-mailbox/latest/shm_mailbox/protocol/document/index.html"]
#[doc = "[shm-ring]: https://docs.rs/shm-ring/latest/shm_ring/protocol/index.html"]
#[doc = "[shm-snapshot]: https://docs.rs/shm-snapshot/latest/shm_snapshot/protocol/index.html"]
#[doc = ""]
// The text is Markdown written for a repository browser: `x[i]` there is not
// an intra-doc link, and identifiers are not always in backticks.
#[allow(rustdoc::broken_intra_doc_links, clippy::doc_markdown)]
#[doc = include_str!("../PROTOCOL.md")]
pub mod protocol {}

pub mod fdpass;
pub mod header;
pub mod layout;
mod mapping;
pub mod memfd;
pub mod ofd_lock;
mod plain;
mod region;
pub mod segment;
mod shared;
mod shm_box;
mod sigbus;

pub use layout::Layout;
pub use mapping::{Access, MapError, Mapping};
pub use ofd_lock::{OfdLock, is_locked, lock_shared};
pub use plain::Plain;
pub use region::{OutOfBounds, Region};
pub use segment::{AccessPolicy, ObjectAccess, Segment, SegmentBuilder, SegmentError};
pub use shared::Shared;
pub use shm_box::ShmBox;

/// Re-exported so [`shared_struct!`] users and callers name the same version.
pub use zerocopy;

// The crash points of this crate: nothing at the call sites without its
// `fault-injection` feature (see `shm_sync::crash`).
pub(crate) use shm_sync::crash_point;
