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
//! - [`fdpass`]: handing fds (a memfd, eventfds) to another process over a
//!   Unix socket (`SCM_RIGHTS`), without ever losing one silently.
//!
//! When not to use it: for data that never leaves one process, or for
//! structured messages between processes (see `shm-ring` and `shm-mailbox`,
//! which build on this crate).
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

pub mod fdpass;
pub mod header;
mod mapping;
pub mod memfd;
pub mod ofd_lock;
mod region;
pub mod segment;
mod shared;
mod shm_box;
mod sigbus;

pub use header::Layout;
pub use mapping::{Access, MapError, Mapping};
pub use ofd_lock::{OfdLock, is_locked};
pub use region::{OutOfBounds, Region};
pub use segment::{Segment, SegmentBuilder, SegmentError};
pub use shared::Shared;
pub use shm_box::ShmBox;

/// Re-exported so [`shared_struct!`] users and callers name the same version.
pub use zerocopy;

// The crash points of this crate: nothing at the call sites without its
// `fault-injection` feature (see `shm_sync::crash`).
pub(crate) use shm_sync::crash_point;
