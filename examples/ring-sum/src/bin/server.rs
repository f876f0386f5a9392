//! Sums the f64s that a client sends over an shm-ring and prints the sum as it grows.
//!
//! Waits for a client on a Unix socket, hands it the producer end of a ring in
//! a sealed memfd, and sums what arrives. When the client hangs up (exits or
//! is killed) the server prints the final sum and exits, or with
//! `--keep-serving` waits for the next client, which resumes on the same ring.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use shm_ring::{ElemLayout, Listener, RingError, RingFds};

#[derive(Parser, Debug)]
#[command(
    name = "server",
    version,
    about = "Sum the f64 values a ring-sum client sends through shared memory"
)]
struct Args {
    /// Unix socket to listen on.
    #[arg(long, default_value = ring_sum::DEFAULT_SOCKET)]
    socket: String,
    /// Ring capacity in f64s (rounded up to a power of two).
    #[arg(long, default_value_t = 500_000)]
    capacity: u64,
    /// After a client hangs up, wait for the next one instead of exiting.
    #[arg(long)]
    keep_serving: bool,
    #[command(flatten)]
    log: shm_fd::cli::Verbosity,
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.log.init("server");
    let listener = Listener::bind(&args.socket)
        .with_context(|| format!("cannot listen on {}", args.socket))?;
    let capacity = args.capacity.max(1).next_power_of_two();
    let ring = RingFds::create("ring-sum", capacity, ElemLayout::of::<f64>())
        .context("cannot create the ring")?;
    eprintln!("listening on {} (ring of {capacity} f64s)", args.socket);
    let mut rx: Option<shm_ring::Consumer<f64>> = None;
    let mut sum = 0.0f64;
    let mut count = 0u64;
    loop {
        let link = match listener.accept(&ring, shm_ring::Role::Producer, ElemLayout::of::<f64>()) {
            Ok(link) => link,
            Err(e) => {
                eprintln!("refused a client: {e}");
                continue;
            }
        };
        eprintln!("client pid {} connected", link.pid());
        let rx = match &mut rx {
            Some(rx) => {
                rx.set_peer(Some(link));
                rx
            }
            None => rx.insert(
                shm_ring::Consumer::open(&ring, Some(link)).context("cannot open the ring")?,
            ),
        };
        serve(rx, &mut sum, &mut count)?;
        println!("Final sum: {sum} ({count} values)");
        if !args.keep_serving {
            return Ok(());
        }
    }
}

/// Sums until the client hangs up, printing `Sum: S` at most every 50 ms while values arrive.
fn serve(rx: &mut shm_ring::Consumer<f64>, sum: &mut f64, count: &mut u64) -> Result<()> {
    let mut buf = vec![0.0f64; 1 << 16];
    let mut printed = *count;
    let mut last_print = Instant::now();
    loop {
        match rx.recv_slice(&mut buf, Some(Duration::from_millis(50))) {
            Ok(n) => {
                *sum += buf[..n].iter().sum::<f64>();
                *count += n as u64;
            }
            Err(RingError::Timeout) => {}
            Err(RingError::Disconnected) => {
                if *count != printed {
                    println!("Sum: {sum}");
                }
                eprintln!("client hung up");
                return Ok(());
            }
            Err(e) => return Err(e).context("receiving"),
        }
        if *count != printed && last_print.elapsed() >= Duration::from_millis(50) {
            println!("Sum: {sum}");
            printed = *count;
            last_print = Instant::now();
        }
    }
}
