//! Concurrency primitives for outlive's shared-memory data structures.
//!
//! Every lock-free algorithm in the workspace names its atomics, fences, cells
//! and spin hints through this crate and never through `core::sync::atomic`
//! directly. Under `RUSTFLAGS="--cfg shm_loom"` the same names resolve to
//! [loom]'s model-checked versions, so one source serves both the real
//! cross-process build and the loom models (heap-backed storage only: loom's
//! atomics cannot live in a memory-mapped file).
//!
//! `ci/check-atomics.sh` enforces that no other crate imports
//! `core::sync::atomic` or `std::sync::atomic`.
//!
//! It is also the one home of the copies between private buffers and
//! shared memory that another process may write ([`copy`]): word-atomic,
//! or wide (AVX loads and stores, `rep movsb`) on x86-64, never a data race.
//!
//! It also holds the workspace's one fault-injection facility,
//! [`crash_point!`]: named points where a test makes the process SIGKILL
//! itself, compiled to nothing unless the crate that marks them enables its
//! `fault-injection` feature (see [`crash`]).
//!
//! When to use it, and when something else: depend on it to write a
//! lock-free protocol in this workspace that the loom models must check, or
//! to mark crash points. It holds no data structure of its own: programs use
//! `shm-segment`, `shm-ring`, `shm-mailbox` or `shm-snapshot`, and code
//! without a loom model can use `core::sync::atomic` directly.
//!
//! # Features
//!
//! - `fault-injection`: the code behind [`crash_point!`] (it reads
//!   `SHM_CRASH_AT` and sends the signal). Enabled by the `fault-injection`
//!   feature of each crate that marks crash points; never needed otherwise.
//!
//! [loom]: https://docs.rs/loom

pub mod copy;
pub mod crash;

/// Atomic integers and fences.
pub mod atomic {
    #[cfg(not(shm_loom))]
    pub use core::sync::atomic::{
        AtomicBool, AtomicI32, AtomicI64, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize,
        Ordering, fence,
    };
    #[cfg(shm_loom)]
    pub use loom::sync::atomic::{
        AtomicBool, AtomicI32, AtomicI64, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize,
        Ordering, fence,
    };
}

/// Spin-loop hints.
pub mod hint {
    /// Tells the CPU we are busy-waiting; under loom, yields to the model's scheduler
    /// so that spin loops terminate.
    #[inline]
    pub fn spin_loop() {
        #[cfg(not(shm_loom))]
        core::hint::spin_loop();
        #[cfg(shm_loom)]
        loom::thread::yield_now();
    }
}

/// Threads (loom's under `shm_loom`).
pub mod thread {
    #[cfg(shm_loom)]
    pub use loom::thread::{JoinHandle, spawn, yield_now};
    #[cfg(not(shm_loom))]
    pub use std::thread::{JoinHandle, spawn, yield_now};
}

/// Shared ownership (loom's `Arc` under `shm_loom`, so leaks are checked),
/// and the mutex and condition variable that model a futex on heap words.
pub mod sync {
    #[cfg(shm_loom)]
    pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
    #[cfg(not(shm_loom))]
    pub use std::sync::{Arc, Condvar, Mutex, MutexGuard};
}

/// Runs `f` as a loom model, or once as a plain closure outside loom.
///
/// Lets a test body be written once and run both under `cargo test` and under
/// `RUSTFLAGS="--cfg shm_loom"`.
pub fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    #[cfg(shm_loom)]
    loom::model(f);
    #[cfg(not(shm_loom))]
    f();
}

#[cfg(test)]
mod tests {
    use super::atomic::{AtomicU64, Ordering};

    #[test]
    fn model_runs_body_at_least_once() {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        super::model(|| {
            let sut = AtomicU64::new(1);
            sut.fetch_add(1, Ordering::Relaxed);
            assert_eq!(sut.load(Ordering::Relaxed), 2);
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(RUNS.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    }
}
