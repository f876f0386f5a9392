//! Mailbox costs next to baselines measured in the same run, as ratios.
//!
//! `cargo bench -p shm-mailbox --bench mailbox [-- --quick] [GROUP...]`
//! (groups: `mutex`, `contended`, `seqlock`). The shm-bench harness runs the
//! mailbox and its baselines alternately, repetition by repetition, and
//! reports the median and range of the per-repetition ratios. 64-byte
//! messages against a `Mutex<[u8; 64]>` copy and a cache-line ping-pong; then
//! 64 B and 4 KiB messages against a seqlock (the usual latest-value
//! baseline, which lets readers retry instead of holding a slot): uncontended
//! publish and read, and per-read latency percentiles while another thread
//! publishes nonstop.

#![allow(
    clippy::cast_precision_loss,
    reason = "timings as f64 are precise enough for a report"
)]

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence}; // atomics-ok: benchmark baselines
use std::time::Instant;

use shm_bench::{Better, Harness, percentile};
use shm_mailbox::{Config, Mailbox};

static QUICK: OnceLock<bool> = OnceLock::new();

/// `full` normally, `quick` with `--quick`.
fn sized(full: u64, quick: u64) -> u64 {
    if *QUICK.get().unwrap_or(&false) {
        quick
    } else {
        full
    }
}

/// Nanoseconds per call of `f`, over `iters` calls.
fn ns_per(iters: u64, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

/// One-way latency of a cache line bouncing between two threads.
fn ping_pong_ns() -> f64 {
    let flag = AtomicU64::new(0);
    let rounds = sized(200_000, 20_000);
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

fn create(name: &str, readers: usize, slot_bytes: usize) -> Mailbox {
    Mailbox::open_or_create(
        name,
        Config {
            readers,
            slot_bytes,
        },
    )
    .expect("create mailbox")
}

fn main() {
    let mut h = Harness::new("shm-mailbox");
    QUICK.get_or_init(|| h.quick());
    if h.group("mutex") || h.group("contended") {
        first_table(&mut h);
    }
    if h.group("seqlock") {
        for size in [64, 4096] {
            against_seqlock(&mut h, size);
        }
    }
    h.finish();
}

/// 64-byte messages: uncontended against a mutex, contended against a ping-pong.
fn first_table(h: &mut Harness) {
    let name = format!("outlive-bench-mailbox-{}", std::process::id());
    let mb = create(&name, 4, 64);
    let msg = [7u8; 64];
    let (mut buf, mut buf2) = ([0u8; 64], [0u8; 64]);
    let mutex = Mutex::new([0u8; 64]);
    let mut writer = mb.writer().expect("writer");
    let mut reader = mb.reader(0).expect("reader");
    let iters = sized(1_000_000, 100_000);
    if h.group("mutex") {
        let r = h.reps(
            "ns",
            Better::Lower,
            &mut [
                ("Mutex<[u8; 64]> write", &mut || {
                    ns_per(iters, || *mutex.lock().unwrap() = black_box(msg))
                }),
                ("mailbox publish", &mut || {
                    ns_per(iters, || {
                        writer.publish(black_box(&msg)).unwrap();
                    })
                }),
                ("Mutex<[u8; 64]> read", &mut || {
                    ns_per(iters, || buf = *mutex.lock().unwrap())
                }),
                ("mailbox read", &mut || {
                    ns_per(iters, || {
                        black_box(reader.read(&mut buf2).unwrap());
                    })
                }),
            ],
        );
        let case = "64 B, uncontended";
        h.row(&r, case, "mailbox publish", "Mutex<[u8; 64]> write");
        h.row(&r, case, "mailbox read", "Mutex<[u8; 64]> read");
    }
    if h.group("contended") {
        let mut contended = || {
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut r = mb.reader(1).expect("reader 1");
                    let mut b = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        black_box(r.read(&mut b).unwrap());
                    }
                });
                let x = ns_per(sized(200_000, 20_000), || {
                    writer.publish(black_box(&msg)).unwrap();
                });
                stop.store(true, Ordering::Relaxed);
                x
            })
        };
        let r = h.reps(
            "ns",
            Better::Lower,
            &mut [
                ("cache-line ping-pong, one way", &mut ping_pong_ns),
                ("mailbox publish, reader thread reading", &mut contended),
            ],
        );
        let case = "64 B publish while a reader thread reads";
        h.row(
            &r,
            case,
            "mailbox publish, reader thread reading",
            "cache-line ping-pong, one way",
        );
    }
    drop(reader);
    drop(writer);
    drop(mb);
    let _ = Mailbox::remove(&name);
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

/// The `p`-th percentile of single-read latencies, in ns, while `publish`
/// runs nonstop on another thread.
fn read_latency(p: f64, mut read: impl FnMut(), publish: impl Fn(&AtomicBool) + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let n = sized(200_000, 20_000) as usize;
    std::thread::scope(|s| {
        s.spawn(|| publish(&stop));
        // Let the publisher get going.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut lat: Vec<f64> = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            read();
            lat.push(t.elapsed().as_nanos() as f64);
        }
        stop.store(true, Ordering::Relaxed);
        percentile(&mut lat, p).unwrap_or(f64::NAN)
    })
}

/// `size`-byte messages against a seqlock.
fn against_seqlock(h: &mut Harness, size: usize) {
    let name = format!("outlive-bench-mailbox-{}-{size}", std::process::id());
    let mb = create(&name, 2, size);
    let msg = vec![7u8; size];
    let (mut b1, mut b2) = (vec![0u8; size], vec![0u8; size]);
    let (mut b3, mut b4) = (vec![0u8; size], vec![0u8; size]);
    let iters = if size > 64 { 100_000 } else { 1_000_000 };
    let iters = sized(iters, iters / 10);
    let sl = SeqLock::new(size);
    let writer = Mutex::new(mb.writer().expect("writer"));
    let reader = Mutex::new(mb.reader(0).expect("reader"));
    let r = h.reps(
        "ns",
        Better::Lower,
        &mut [
            ("seqlock write", &mut || {
                ns_per(iters, || sl.write(black_box(&msg)))
            }),
            ("mailbox publish", &mut || {
                let mut w = writer.lock().unwrap();
                ns_per(iters, || {
                    w.publish(black_box(&msg)).unwrap();
                })
            }),
            ("seqlock read", &mut || {
                ns_per(iters, || {
                    black_box(sl.read(&mut b1));
                })
            }),
            ("mailbox read", &mut || {
                let mut r = reader.lock().unwrap();
                ns_per(iters, || {
                    black_box(r.read(&mut b2).unwrap());
                })
            }),
        ],
    );
    let case = format!("{size} B, uncontended");
    h.row(&r, &case, "mailbox publish", "seqlock write");
    h.row(&r, &case, "mailbox read", "seqlock read");
    let mut timer: Vec<f64> = (0..101)
        .map(|_| {
            let t = Instant::now();
            black_box(Instant::now());
            t.elapsed().as_nanos() as f64
        })
        .collect();
    let timer = percentile(&mut timer, 0.5).unwrap_or(f64::NAN);
    println!("(read latencies below include ~{timer:.0} ns of timer)");
    let seqlock_publish = |stop: &AtomicBool| {
        while !stop.load(Ordering::Relaxed) {
            sl.write(&msg);
        }
    };
    let mailbox_publish = |stop: &AtomicBool| {
        let mut w = writer.lock().unwrap();
        while !stop.load(Ordering::Relaxed) {
            w.publish(&msg).unwrap();
        }
    };
    for (p, label) in [(0.5, "p50"), (0.99, "p99")] {
        let r = h.reps(
            "ns",
            Better::Lower,
            &mut [
                ("seqlock read", &mut || {
                    read_latency(
                        p,
                        || {
                            black_box(sl.read(&mut b3));
                        },
                        seqlock_publish,
                    )
                }),
                ("mailbox read", &mut || {
                    let mut r = reader.lock().unwrap();
                    read_latency(
                        p,
                        || {
                            black_box(r.read(&mut b4).unwrap());
                        },
                        mailbox_publish,
                    )
                }),
            ],
        );
        let case = format!("{size} B read during nonstop publish, {label}");
        h.row(&r, &case, "mailbox read", "seqlock read");
    }
    drop(reader);
    drop(writer);
    drop(mb);
    let _ = Mailbox::remove(&name);
}
