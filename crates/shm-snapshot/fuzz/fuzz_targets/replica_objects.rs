//! A replica store holding bases and log segments cut from a real log, their
//! names' generation ranges chosen by the fuzzer and their bytes patched or
//! cut by it, next to an object that only looks like one of ours: listing
//! works, and a restore fails with a typed error or rebuilds a file that
//! restores exactly the state of the file generation it reports (the case
//! is `tests/common/replica_case.rs`, which the `replica_objects` test also
//! runs).
#![no_main]

#[path = "../../tests/common/replica_case.rs"]
mod replica_case;

use std::sync::atomic::{AtomicU64, Ordering}; // atomics-ok: a counter of this process

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static N: AtomicU64 = AtomicU64::new(0);
    // Relaxed: a name for this case's directory, nothing else.
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("replica-objects-fuzz-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    replica_case::run(&dir, data);
    std::fs::remove_dir_all(&dir).expect("scratch directory");
});
