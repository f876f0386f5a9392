//! `primes-snapshot`: generates primes continuously into the state region of
//! `shm-restore`, committing after each chunk of `CHUNK` primes.
//!
//! Run: `shm-restore --create primes.snap -- primes-snapshot [PRIMES_PER_SECOND]`.
//! At start it checks the recovered table (it must be exactly the first N
//! primes) and prints `Recovering N existing primes`; then one line per chunk:
//! `committed generation G: N primes`. `shm-restore` prints `durable
//! generation G` once generation G is on disk; since every commit adds exactly
//! `CHUNK` primes, generation G holds `G * CHUNK` primes. With `--durable`
//! it waits after each commit until that generation is durable
//! (`Client::wait_durable`) and ends its line with ` durable`.
//!
//! Work-area layout: word 0 is the count N, words 1..=N the primes.
//!
//! Commits use automatic dirty tracking (`Client::track`, Linux 6.7+) when the
//! kernel offers it, and otherwise name the ranges each chunk wrote.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use shm_fd::listen::ListenFds;
use shm_snapshot::live::Client;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Generate primes continuously into the state region of shm-restore, committing every 1000",
    after_help = "Run it under shm-restore, which hands it the region in LISTEN_FDS and snapshots it:\n  shm-restore --create primes.snap -- ./target/release/primes-snapshot 20000"
)]
struct Args {
    /// Primes generated per second at most.
    #[arg(default_value_t = 20_000.0)]
    primes_per_second: f64,
    /// After each commit, wait until shm-restore has made it durable (its
    /// snapshot's fdatasync returned) and print `durable` on its line.
    #[arg(long)]
    durable: bool,
    #[command(flatten)]
    log: shm_fd::cli::Verbosity,
}

/// Primes per commit.
const CHUNK: u64 = 1000;
/// How long `--durable` waits for each generation.
const DURABLE_WAIT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init("primes-snapshot");
    match run(args.primes_per_second, args.durable) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("primes-snapshot: {e}");
            ExitCode::FAILURE
        }
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn run(rate: f64, durable: bool) -> Result<(), String> {
    let mut fds = ListenFds::from_env_inherited().map_err(|e| e.to_string())?;
    let fd = fds
        .take("state")
        .ok_or("no memfd named \"state\" in LISTEN_FDS: run me under shm-restore")?;
    let mut client =
        Client::open(std::os::fd::AsFd::as_fd(&fd)).map_err(|e| format!("state: {e}"))?;
    let mut tracked = match client.track() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("primes-snapshot: {e}; committing named ranges instead");
            false
        }
    };
    let work = client.work();
    let capacity = (work.len() / 8 - 1) as u64;
    // Relaxed: this process is the only writer; the region was handed over by exec.
    let load = |i: u64| {
        work.load_u64(
            usize::try_from(i * 8).unwrap_or(usize::MAX),
            std::sync::atomic::Ordering::Relaxed, // atomics-ok
        )
    }; // atomics-ok: ordering name only
    let count = load(0).map_err(|e| e.to_string())?;
    if count > capacity {
        return Err(format!(
            "state is corrupt: count {count} exceeds capacity {capacity}"
        ));
    }
    // Verify: exactly the first `count` primes.
    let mut expect = 1u64;
    for i in 1..=count {
        expect += 1;
        while !is_prime(expect) {
            expect += 1;
        }
        let got = load(i).map_err(|e| e.to_string())?;
        if got != expect {
            return Err(format!(
                "state is corrupt: entry {i} is {got}, expected {expect}"
            ));
        }
    }
    println!("Recovering {count} existing primes");
    let mut n = count;
    let mut p = expect;
    let start = Instant::now();
    let base = n;
    while n + CHUNK <= capacity {
        let first = n;
        for _ in 0..CHUNK {
            p += 1;
            while !is_prime(p) {
                p += 1;
            }
            n += 1;
            work.write(usize::try_from(n * 8).unwrap_or(usize::MAX), &p)
                .map_err(|e| e.to_string())?;
        }
        work.write(0, &n).map_err(|e| e.to_string())?;
        let lo = usize::try_from((first + 1) * 8).unwrap_or(0);
        let hi = usize::try_from((n + 1) * 8).unwrap_or(0);
        let g = match tracked.then(|| client.commit_tracked()) {
            Some(Ok(c)) => c.generation,
            Some(Err(e)) => {
                // Nothing was committed: name the ranges from now on.
                eprintln!("primes-snapshot: {e}; committing named ranges instead");
                tracked = false;
                client.commit(&[0..8, lo..hi])
            }
            None => client.commit(&[0..8, lo..hi]),
        };
        if durable {
            match client.wait_durable(g, DURABLE_WAIT) {
                Ok(_) => println!("committed generation {g}: {n} primes, largest {p} durable"),
                Err(e) => {
                    println!("committed generation {g}: {n} primes, largest {p}");
                    eprintln!("primes-snapshot: generation {g}: {e}");
                }
            }
        } else {
            println!("committed generation {g}: {n} primes, largest {p}");
        }
        // Throughput limit.
        #[allow(clippy::cast_precision_loss)]
        let due = Duration::from_secs_f64((n - base) as f64 / rate.max(1.0));
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    println!("table full: {n} primes");
    Ok(())
}
