//! Keeping shared-memory state across restarts with systemd's File Descriptor
//! Store, or without systemd.
//!
//! - [`listen`]: adopt the fds a service manager hands over (`LISTEN_PID`,
//!   `LISTEN_FDS`, `LISTEN_FDNAMES`), exactly once, by name.
//! - [`notify`]: `READY=1`, `STATUS=`, `FDSTORE=1` (+ `FDNAME=`, `FDPOLL=0`, the
//!   fds) and `FDSTOREREMOVE=1` to `$NOTIFY_SOCKET` (path, `@abstract`, `vsock:`).
//! - [`state`]: create, size and seal a memfd state region, and validate one
//!   received from the store, using `shm-segment`.
//! - [`exec`]: hand fds to a program at 3, 4, ... with `LISTEN_*` set, by
//!   `exec` (same pid) or as a supervised child (correct `LISTEN_PID`, dies
//!   with its parent).
//! - [`child`]: run such a child, forwarding signals to it, SIGKILLing it
//!   after a stop timeout, and waiting for it without polling on a timer.
//! - `cli` (feature `cli`, off by default): the one size and duration parser
//!   and the logging setup (`-q`/`-v`, `RUST_LOG`) of every outlive binary,
//!   on `clap`, `parse-size`, `humantime` and `tracing-subscriber`. The
//!   library itself needs none of them.
//!
//! Examples that run: [`exec::spawn_with_fds`] hands a file to `sh` at fd 3,
//! [`supervise::run`] restarts a failing `sh` with its stored memfd (both
//! from a program that is its own trampoline, as the `shm-fd` binary is),
//! and the `cli` helpers (`cli::Verbosity`, `cli::parse_size`,
//! `cli::parse_duration`) parse a binary's arguments.
//!
//! The `shm-fd` binary wraps a program with all of this; `shm-fd --supervise`
//! is a small supervisor that speaks the same protocol when there is no
//! systemd (containers, development machines). See `docs/systemd.md`. It
//! needs the `cli` feature: `cargo install shm-fd --features cli`.
//!
//! When to use it, and when something else: use this crate when a service's
//! state lives in a memfd that must survive the service being restarted
//! (a crash, an upgrade, `systemctl restart`) but not a reboot: the service
//! manager, or `shm-fd --supervise`, holds the fd meanwhile, and the
//! restarted service maps the same memory again. For state that must also
//! survive a reboot, add `shm-snapshot` (a snapshot file); to share the
//! memory between processes that are running, use `shm-segment`; to stream
//! data between them, `shm-ring`.
//!
//! # Example: a program that keeps its state in a stored memfd
//! ```no_run
//! // Not run as a test: the memfd comes back from the service manager's fd
//! // store as an inherited fd (LISTEN_FDS) and is stored there through
//! // $NOTIFY_SOCKET; it means something only under systemd or
//! // `shm-fd --supervise` (docs/systemd.md).
//! use shm_fd::{listen::ListenFds, notify, state};
//! use std::os::fd::AsFd;
//!
//! let mut fds = ListenFds::from_env()?;
//! let memfd = match fds.take("state") {
//!     Some(fd) => {
//!         state::validate(fd.as_fd(), "state", 1 << 20)?;
//!         fd
//!     }
//!     None => {
//!         let fd = state::create("state", 1 << 20)?;
//!         notify::store_fd("state", fd.as_fd())?;
//!         fd
//!     }
//! };
//! # drop(memfd);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The shared-memory protocol of this crate: the text of `docs/protocol/shm-fd.md` in the
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

pub mod child;
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod cli;
pub mod exec;
pub mod listen;
pub mod notify;
pub mod state;
pub mod supervise;
mod sys;
