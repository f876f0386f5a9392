//! Test helpers shared by every outlive crate.
//!
//! - [`unique_name`]: names for shm objects, sockets and units that never collide
//!   between tests, processes or runs.
//! - [`role`], [`role_command`], [`spawn`], [`Child`]: a test re-runs its own binary
//!   in a named role to get a real second process; the [`Child`] handle SIGKILLs
//!   and reaps it on drop, so a failing test never leaks processes.
//! - [`crash_point!`]: named SIGKILL points for fault injection, compiled only when
//!   the calling crate's `fault-injection` feature is on.
//! - [`Watchdog`]: aborts a hung test process instead of hanging CI.
//! - [`systemd`]: a real `systemd --user` manager in a private mount namespace.
//! - [`build_bins`]: other packages' binaries, built for a test without
//!   disturbing the binaries of the test run itself.
//!
//! This crate is for tests only (`publish = false`); it panics freely on setup
//! failures, which is what a test wants.

// Test helpers panic on setup failure by design; documenting each is noise.
#![allow(clippy::missing_panics_doc)]

mod bins;
mod child;
mod crash;
mod names;
mod primes;
mod watchdog;

pub use bins::{build_bins, nested_target_dir};
pub use child::{Child, ROLE_ENV, role, role_command, run_without_fds, spawn};
pub use crash::{CRASH_ENV, crash_point_hit};
pub use names::{shm_objects_with_prefix, unique_name};
pub use primes::first_primes;
pub use watchdog::Watchdog;

pub mod systemd;

/// Marks a named crash point.
///
/// Expands to nothing unless the *calling* crate is built with its
/// `fault-injection` feature (which must enable the optional `shm-testkit`
/// dependency). Then, when the environment variable [`CRASH_ENV`]
/// (`SHM_CRASH_AT`) names this point, the process SIGKILLs itself here.
/// `SHM_CRASH_AT=a,b@3` fires at the first hit of `a` or the third hit of `b`.
///
/// ```
/// shm_testkit::crash_point!("segment.after_init");
/// ```
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {{
        #[cfg(feature = "fault-injection")]
        ::shm_testkit::crash_point_hit($name);
    }};
}
