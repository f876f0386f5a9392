//! Mailbox costs next to baselines measured in the same run, as ratios.
//!
//! `cargo bench -p shm-mailbox`. Every figure is the median of 7 repetitions.

#![allow(
    clippy::cast_precision_loss,
    reason = "timings as f64 are precise enough for a report"
)]

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering}; // atomics-ok: benchmark baselines
use std::time::Instant;

use shm_mailbox::{Config, Mailbox};

const REPS: usize = 7;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Nanoseconds per call of `f`, median over repetitions of `iters` calls.
fn ns_per(iters: u64, mut f: impl FnMut()) -> f64 {
    median(
        (0..REPS)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..iters {
                    f();
                }
                t.elapsed().as_nanos() as f64 / iters as f64
            })
            .collect(),
    )
}

/// One-way latency of a cache line bouncing between two threads.
fn ping_pong_ns() -> f64 {
    let flag = AtomicU64::new(0);
    let rounds = 200_000u64;
    let per = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..rounds {
                while flag.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                flag.store(2 * i + 2, Ordering::Release);
            }
        });
        let t = Instant::now();
        for i in 0..rounds {
            flag.store(2 * i + 1, Ordering::Release);
            while flag.load(Ordering::Acquire) != 2 * i + 2 {
                std::hint::spin_loop();
            }
        }
        t.elapsed().as_nanos() as f64 / rounds as f64
    });
    per / 2.0
}

fn main() {
    let name = format!("outlive-bench-mailbox-{}", std::process::id());
    let mb = Mailbox::open_or_create(
        &name,
        Config {
            readers: 4,
            slot_bytes: 64,
        },
    )
    .expect("create mailbox");
    let msg = [7u8; 64];
    let mut buf = [0u8; 64];

    let mutex = Mutex::new([0u8; 64]);
    let mutex_write = ns_per(1_000_000, || *mutex.lock().unwrap() = black_box(msg));
    let mutex_read = ns_per(1_000_000, || buf = *mutex.lock().unwrap());

    let mut writer = mb.writer().expect("writer");
    let publish = ns_per(1_000_000, || {
        writer.publish(black_box(&msg)).unwrap();
    });
    let mut reader = mb.reader(0).expect("reader");
    let read = ns_per(1_000_000, || {
        black_box(reader.read(&mut buf).unwrap());
    });

    // Contended: a reader thread reads continuously while we publish.
    let stop = AtomicBool::new(false);
    let contended = std::thread::scope(|s| {
        s.spawn(|| {
            let mut r = mb.reader(1).expect("reader 1");
            let mut b = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                black_box(r.read(&mut b).unwrap());
            }
        });
        let x = ns_per(200_000, || {
            writer.publish(black_box(&msg)).unwrap();
        });
        stop.store(true, Ordering::Relaxed);
        x
    });
    let pp = ping_pong_ns();
    drop(reader);
    drop(writer);
    drop(mb);
    let _ = Mailbox::remove(&name);

    println!("shm-mailbox, 64-byte messages, median of {REPS} (ns per operation)");
    println!("{:<44} {:>10} {:>12}", "operation", "ns", "ratio");
    println!(
        "{:<44} {:>10.1} {:>12}",
        "baseline: Mutex<[u8; 64]> write", mutex_write, "1.00x"
    );
    println!(
        "{:<44} {:>10.1} {:>11.2}x",
        "mailbox publish (uncontended)",
        publish,
        publish / mutex_write
    );
    println!(
        "{:<44} {:>10.1} {:>12}",
        "baseline: Mutex<[u8; 64]> read", mutex_read, "1.00x"
    );
    println!(
        "{:<44} {:>10.1} {:>11.2}x",
        "mailbox read (uncontended)",
        read,
        read / mutex_read
    );
    println!(
        "{:<44} {:>10.1} {:>12}",
        "baseline: cache-line ping-pong, one way", pp, "1.00x"
    );
    println!(
        "{:<44} {:>10.1} {:>11.2}x",
        "mailbox publish, reader thread reading",
        contended,
        contended / pp
    );
}
