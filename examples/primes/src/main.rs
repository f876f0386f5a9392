//! `primes`: each run extends a table of primes kept in the memfd region
//! `state` (1 MiB) by at most 1000 values and prints one line:
//! `generated N more primes, total T, largest P`. When the region is full it
//! prints the whole table instead.
//!
//! Run it under `shm-fd`, which hands it the region in `LISTEN_FDS` (and keeps
//! it in systemd's fd store or in `shm-fd --supervise`):
//! `./target/release/shm-fd watch -n 0.1 ./target/release/primes`.
//!
//! State layout (payload of an `shm-segment` header, see docs/protocol/shm-fd.md):
//! word 0 is the count `T`, words 1..=T the primes in increasing order. The
//! count is stored after the primes it covers (Release), so a run killed at any
//! moment leaves a valid table; the next run re-checks the table it finds.

use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::sync::atomic::Ordering; // atomics-ok: words of a shared region

use clap::Parser;
use shm_fd::listen::ListenFds;
use shm_segment::Segment;

/// Command-line options: none but the conventions (`--help`, `--version`,
/// `-q`/`-v`); the state comes from `LISTEN_FDS`.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Extend a table of primes kept in the memfd region `state` by up to 1000 values",
    after_help = "Run it under shm-fd, which hands it the region in LISTEN_FDS and keeps it:\n  shm-fd watch -n 0.1 ./target/release/primes\n  shm-fd --supervise --restart=always -- ./target/release/primes"
)]
struct Args {
    #[command(flatten)]
    log: shm_fd::cli::Verbosity,
}

/// Primes added per run.
const PER_RUN: u64 = 1000;
/// The region `shm-fd` creates by default: 1 MiB, one page of it the segment header.
const REGION: usize = 1 << 20;

fn main() -> ExitCode {
    Args::parse().log.init("primes");
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("primes: {e}");
            ExitCode::FAILURE
        }
    }
}

fn take_region() -> Result<OwnedFd, String> {
    // `from_env_inherited`: under `shm-fd watch ...`, LISTEN_PID names `watch`, our ancestor.
    let mut fds = ListenFds::from_env_inherited().map_err(|e| e.to_string())?;
    fds.take("state").ok_or_else(|| {
        "no memfd named \"state\" in LISTEN_FDS: run me under shm-fd, e.g. `shm-fd ./target/release/primes`".to_owned()
    })
}

fn run() -> Result<(), String> {
    let fd = take_region()?;
    let segment = Segment::adopt(fd)
        .size(REGION - shm_segment::header::DATA_OFFSET)
        .open_or_create()
        .map_err(|e| format!("state region: {e}"))?;
    let words = segment
        .payload()
        .atomics_u64(0, segment.len() / 8)
        .map_err(|e| format!("state region: {e}"))?;
    let capacity = words.len() as u64 - 1;
    // Acquire: pairs with the Release store of the count by the previous run.
    let count = words[0].load(Ordering::Acquire);
    if count > capacity {
        return Err(format!(
            "state region is corrupt: count {count} exceeds capacity {capacity}"
        ));
    }
    let table: Vec<u64> = (1..=count)
        .map(|i| words[i as usize].load(Ordering::Relaxed))
        .collect();
    if let Some(bad) = table.windows(2).position(|w| w[1] <= w[0]) {
        return Err(format!(
            "state region is corrupt: entry {} is not above the one before",
            bad + 2
        ));
    }
    if count == capacity {
        println!("table full: {count} primes");
        let line: Vec<String> = table.iter().map(u64::to_string).collect();
        println!("{}", line.join(" "));
        return Ok(());
    }
    let mut primes = table;
    let want = PER_RUN.min(capacity - count);
    let mut candidate = primes.last().map_or(2, |p| p + 1);
    let mut added = 0;
    while added < want {
        if is_prime(candidate, &primes) {
            primes.push(candidate);
            added += 1;
            // Relaxed: published by the Release store of the count below.
            words[primes.len()].store(candidate, Ordering::Relaxed);
        }
        candidate += 1;
    }
    let total = primes.len() as u64;
    // SYNC: Release, pairs with the next run's Acquire load of the count.
    words[0].store(total, Ordering::Release);
    println!(
        "generated {added} more primes, total {total}, largest {}",
        primes.last().copied().unwrap_or(0)
    );
    Ok(())
}

fn is_prime(n: u64, known: &[u64]) -> bool {
    if n < 2 {
        return false;
    }
    for &p in known {
        if p * p > n {
            return true;
        }
        if n.is_multiple_of(p) {
            return false;
        }
    }
    // `known` holds every prime below n, so trial division by it is complete.
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn trial_division_by_known_primes() {
        let mut known = Vec::new();
        for n in 2..100 {
            if super::is_prime(n, &known) {
                known.push(n);
            }
        }
        assert_eq!(known.len(), 25);
        assert_eq!(known.last(), Some(&97));
    }
}
