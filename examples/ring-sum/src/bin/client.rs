//! Sends batches of f64 to a ring-sum server through shared memory.
//!
//! Batch k holds `100000 * k` copies of `1 / (100000 * k)`, so each batch adds
//! about 1.0 to the server's sum. Values are written straight into the ring's
//! slots (zero-copy, like the original example's `send_trusted`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use shm_ring::{Connector, Producer, RingError};

#[derive(Parser, Debug)]
#[command(
    name = "client",
    version,
    about = "Send batches of f64 values to a ring-sum server"
)]
struct Args {
    /// Unix socket of the server.
    #[arg(long, default_value = ring_sum::DEFAULT_SOCKET)]
    socket: String,
    /// Stop after this many batches (default: run until killed).
    #[arg(long)]
    batches: Option<u64>,
    /// Pause between batches (e.g. 1s, 5ms, 0.5).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = shm_fd::cli::parse_duration)]
    interval: Duration,
    /// The pause in milliseconds (the first spelling of --interval).
    #[arg(long, value_name = "MS", conflicts_with = "interval", hide = true)]
    interval_ms: Option<u64>,
    /// If the server goes away, wait for it to come back and carry on.
    #[arg(long)]
    reconnect: bool,
    #[command(flatten)]
    log: shm_fd::cli::Verbosity,
}

fn connect(args: &Args) -> Result<Producer<f64>> {
    let deadline = Instant::now() + Duration::from_secs(if args.reconnect { 3600 } else { 0 });
    loop {
        match Connector::new(&args.socket).connect_producer::<f64>() {
            Ok(tx) => return Ok(tx),
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the server ({e})");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot connect to {}", args.socket)),
        }
    }
}

/// Sends one batch of `n` copies of `item`, writing into the ring's slots directly.
fn send_batch(tx: &mut Producer<f64>, n: u64, item: f64) -> Result<(), RingError> {
    let mut left = n as usize;
    while left > 0 {
        tx.wait_writable(1, None)?;
        left -= tx.send_with(|mut slots| {
            let k = slots.len().min(left);
            for i in 0..k {
                slots.set(i, &item);
            }
            k
        })?;
    }
    Ok(())
}

/// Sleeps `d`, returning early with `Disconnected` if the server goes away.
fn pause(tx: &Producer<f64>, d: Duration) -> Result<(), RingError> {
    let end = Instant::now() + d;
    loop {
        if tx.peer_gone() {
            return Err(RingError::Disconnected);
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.log.init("client");
    let mut tx = connect(&args)?;
    let mut batch = 1u64;
    while args.batches.is_none_or(|b| batch <= b) {
        let n = 100_000 * batch;
        #[allow(clippy::cast_precision_loss, reason = "n stays far below 2^52")]
        let n_f = n as f64;
        let item = 1.0 / n_f;
        let sent = pause(&tx, Duration::ZERO).and_then(|()| send_batch(&mut tx, n, item));
        match sent {
            Ok(()) => {
                println!("Sending {n} items of {item}, in total {}", n_f * item);
                batch += 1;
            }
            Err(RingError::Disconnected) if args.reconnect => {
                eprintln!("the server went away; reconnecting");
                tx = connect(&args)?;
                continue;
            }
            Err(RingError::Disconnected) => bail!("the server went away"),
            Err(e) => return Err(e).context("sending"),
        }
        if args.batches.is_none_or(|b| batch <= b) {
            match pause(&tx, pause_between(&args)) {
                Err(RingError::Disconnected) if !args.reconnect => bail!("the server went away"),
                _ => {}
            }
        }
    }
    Ok(())
}

/// The pause between batches, from either spelling.
fn pause_between(args: &Args) -> Duration {
    args.interval_ms
        .map_or(args.interval, Duration::from_millis)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pauses_take_a_duration_or_the_old_milliseconds() {
        use clap::Parser;
        use std::time::Duration;
        let pause = |extra: &[&str]| {
            let args = super::Args::try_parse_from([&["client"][..], extra].concat())
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(super::pause_between(&args))
        };
        let ms = Duration::from_millis;
        assert_eq!(pause(&[]), Ok(ms(1000)));
        assert_eq!(pause(&["--interval", "5ms"]), Ok(ms(5)));
        assert_eq!(pause(&["--interval", "0.25"]), Ok(ms(250)));
        assert_eq!(pause(&["--interval-ms", "5"]), Ok(ms(5)));
        assert!(pause(&["--interval", "soon"]).is_err());
        assert!(pause(&["--interval", "1s", "--interval-ms", "5"]).is_err());
    }
}
