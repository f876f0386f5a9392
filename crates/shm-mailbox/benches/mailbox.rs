//! Mailbox costs next to baselines measured in the same run, as ratios.
//!
//! `cargo bench -p shm-mailbox`. Every figure is the median of 7 repetitions.
//! A second table compares the mailbox with a seqlock (the usual latest-value
//! baseline, which lets readers retry instead of holding a slot) for 64 B and
//! 4 KiB messages: uncontended publish and read, and per-read latency
//! percentiles while another thread publishes nonstop.

#![allow(
    clippy::cast_precision_loss,
    reason = "timings as f64 are precise enough for a report"
)]

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence}; // atomics-ok: benchmark baselines
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
    print_first_table(mutex_write, publish, mutex_read, read, pp, contended);
    for size in [64, 4096] {
        sized(size);
    }
}

/// A seqlock over `AtomicU64` words: the baseline for latest-value sharing.
struct SeqLock {
    seq: AtomicU64,
    words: Vec<AtomicU64>,
}

impl SeqLock {
    fn new(bytes: usize) -> SeqLock {
        SeqLock {
            seq: AtomicU64::new(0),
            words: (0..bytes / 8).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn write(&self, data: &[u8]) {
        // Relaxed: only this thread writes `seq`.
        let s = self.seq.load(Ordering::Relaxed);
        // SYNC: Relaxed store then Release fence: readers that see a word
        // written below also see the odd `seq` (pairs with their Acquire fence).
        self.seq.store(s + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (w, c) in self.words.iter().zip(data.chunks_exact(8)) {
            // Relaxed: ordered by the fence above and the Release store below.
            w.store(u64::from_le_bytes(c.try_into().unwrap()), Ordering::Relaxed);
        }
        // SYNC: Release, pairs with the readers' Acquire load of `seq`.
        self.seq.store(s + 2, Ordering::Release);
    }

    fn read(&self, out: &mut [u8]) -> u64 {
        loop {
            // SYNC: Acquire, pairs with the writer's final Release store.
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            for (w, c) in self.words.iter().zip(out.chunks_exact_mut(8)) {
                // Relaxed: validated by the sequence re-check below.
                c.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            // SYNC: Acquire fence, pairs with the writer's Release fence.
            fence(Ordering::Acquire);
            // Relaxed: ordered by the fence above.
            if self.seq.load(Ordering::Relaxed) == s1 {
                return s1;
            }
        }
    }
}

/// Percentiles (p50, p99) of single-read latencies, in ns, while `publish`
/// runs nonstop on another thread.
fn read_latency(mut read: impl FnMut() + Send, publish: impl Fn(&AtomicBool) + Sync) -> (f64, f64) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| publish(&stop));
        // Let the publisher get going.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut lat: Vec<f64> = Vec::with_capacity(200_000);
        for _ in 0..200_000 {
            let t = Instant::now();
            read();
            lat.push(t.elapsed().as_nanos() as f64);
        }
        stop.store(true, Ordering::Relaxed);
        lat.sort_by(f64::total_cmp);
        (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
    })
}

fn sized(size: usize) {
    let name = format!("outlive-bench-mailbox-{}-{size}", std::process::id());
    let mb = Mailbox::open_or_create(
        &name,
        Config {
            readers: 2,
            slot_bytes: size,
        },
    )
    .expect("create mailbox");
    let msg = vec![7u8; size];
    let mut buf = vec![0u8; size];
    let iters = if size > 64 { 100_000 } else { 1_000_000 };

    let sl = SeqLock::new(size);
    let sl_write = ns_per(iters, || sl.write(black_box(&msg)));
    let sl_read = ns_per(iters, || {
        black_box(sl.read(&mut buf));
    });
    let mut writer = mb.writer().expect("writer");
    let publish = ns_per(iters, || {
        writer.publish(black_box(&msg)).unwrap();
    });
    let mut reader = mb.reader(0).expect("reader");
    let read = ns_per(iters, || {
        black_box(reader.read(&mut buf).unwrap());
    });
    let timer = median(
        (0..REPS)
            .map(|_| {
                let t = Instant::now();
                black_box(Instant::now());
                t.elapsed().as_nanos() as f64
            })
            .collect(),
    );
    let (sl50, sl99) = read_latency(
        || {
            black_box(sl.read(&mut buf));
        },
        |stop| {
            while !stop.load(Ordering::Relaxed) {
                sl.write(&msg);
            }
        },
    );
    let writer = std::sync::Mutex::new(writer);
    let mut buf2 = vec![0u8; size];
    let (mb50, mb99) = read_latency(
        || {
            black_box(reader.read(&mut buf2).unwrap());
        },
        |stop| {
            let mut w = writer.lock().unwrap();
            while !stop.load(Ordering::Relaxed) {
                w.publish(&msg).unwrap();
            }
        },
    );
    drop(reader);
    drop(writer);
    drop(mb);
    let _ = Mailbox::remove(&name);

    println!();
    println!("{size}-byte messages vs a seqlock (ns; latencies include ~{timer:.0} ns of timer)");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "operation", "seqlock", "mailbox", "ratio"
    );
    for (what, a, b) in [
        ("publish, uncontended (median)", sl_write, publish),
        ("read, uncontended (median)", sl_read, read),
        ("read during nonstop publish, p50", sl50, mb50),
        ("read during nonstop publish, p99", sl99, mb99),
    ] {
        println!("{what:<44} {a:>10.1} {b:>10.1} {:>9.2}x", b / a);
    }
}

fn print_first_table(
    mutex_write: f64,
    publish: f64,
    mutex_read: f64,
    read: f64,
    pp: f64,
    contended: f64,
) {
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
