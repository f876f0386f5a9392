//! The benchmark harness of outlive's benches (`publish = false`).
//!
//! A figure taken on a shared, noisy machine means something only next to a
//! baseline measured in the same process at the same time. The harness runs
//! a group of measures (the component and its baselines) repetition by
//! repetition, alternating their order, and reports for each comparison the
//! median and range of the per-repetition ratios:
//!
//! - [`Harness::reps`] runs a group; [`Harness::row`] reports one comparison,
//!   printed for a person and appended as a JSON line to the file named by
//!   `OUTLIVE_BENCH_JSON`;
//! - [`load`]: the load gate. A repetition during which other processes took
//!   more than `OUTLIVE_BENCH_MAX_FOREIGN` % (default 5) of the CPU time is
//!   repeated, a bounded number of times;
//!   the CPU time of child processes the bench runs counts as its own once
//!   reaped, or while running when named with [`Harness::watch_child`];
//! - [`Config`]: `--quick`, group filters and the environment variables;
//! - the `shm-bench` binary turns collected rows into `bench/results.json`,
//!   `bench/results.md` and the README's table.
//!
//! Printing is this crate's job: it is a measurement tool, used only as a
//! dev-dependency of benches, never by the libraries.
//!
//! # Examples
//!
//! ```
//! use shm_bench::{Better, Config, Harness};
//!
//! let config = Config { quick: true, reps: 3, max_foreign: 0.05, retries: 1, json: None, words: vec![] };
//! let mut h = Harness::with_config("example", config);
//! let data = vec![1u8; 1 << 16];
//! let mut sum = || {
//!     let t = std::time::Instant::now();
//!     std::hint::black_box(data.iter().map(|&b| u64::from(b)).sum::<u64>());
//!     t.elapsed().as_secs_f64() * 1e9
//! };
//! let mut copy = || {
//!     let t = std::time::Instant::now();
//!     std::hint::black_box(data.clone());
//!     t.elapsed().as_secs_f64() * 1e9
//! };
//! let reps = h.reps("ns", Better::Lower, &mut [("sum", &mut sum), ("clone", &mut copy)]);
//! let row = h.row(&reps, "64 KiB", "sum", "clone");
//! assert_eq!(row.reps, 3);
//! h.finish();
//! ```

#![allow(
    clippy::cast_precision_loss,
    reason = "counts and ticks as f64 are precise enough for a report"
)]

mod harness;
pub mod load;
mod report;
mod stats;

pub use harness::{Better, Config, Harness, Measure, Reps};
pub use report::{Row, markdown_table};
pub use stats::{Summary, percentile, ratios};

/// Pins the calling thread to `cpu` (best effort: ignored where not allowed).
pub fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}
