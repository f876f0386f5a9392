//! Test helpers shared by every outlive crate.
//!
//! - [`unique_name`]: names for shm objects, sockets and units that never collide
//!   between tests, processes or runs.
//! - [`role`], [`role_command`], [`spawn`], [`Child`]: a test re-runs its own binary
//!   in a named role to get a real second process; the [`Child`] handle SIGKILLs
//!   and reaps it on drop, so a failing test never leaks processes.
//! - [`Watchdog`]: aborts a hung test process instead of hanging CI.
//! - [`systemd`]: a real `systemd --user` manager in a private mount namespace.
//! - [`build_bins`]: other packages' binaries, built for a test without
//!   disturbing the binaries of the test run itself.
//! - [`s3`]: a real S3-compatible store (`SeaweedFS`) on loopback ports.
//! - [`users`]: running programs as other users (`setpriv`), for access policies.
//!
//! When to use it, and when something else: use it in this workspace's
//! tests that need a real second process, a real service manager or another
//! user; a test that stays in one process needs none of it. It is not
//! published, so code outside the workspace brings its own helpers.
//!
//! This crate is for tests only (`publish = false`) and is only ever a
//! dev-dependency; it panics freely on setup failures, which is what a test
//! wants. (The crash points that tests arm with `SHM_CRASH_AT` live in the
//! libraries themselves: `shm_sync::crash_point!`.)

// Test helpers panic on setup failure by design; documenting each is noise.
#![allow(clippy::missing_panics_doc)]

mod bins;
mod child;
mod names;
mod primes;
mod watchdog;

pub use bins::{build_bins, nested_target_dir};
pub use child::{Child, Lines, ROLE_ENV, output_text, role, role_command, run_without_fds, spawn};
pub use names::{shm_objects_with_prefix, unique_name};
pub use primes::first_primes;
pub use watchdog::Watchdog;

pub mod s3;
pub mod systemd;
pub mod users;
