//! shm-ring against its baselines, measured in the same run, as ratios.
//!
//! `cargo bench -p shm-ring --bench ring [-- --quick] [GROUP...]` (groups:
//! `64b`, `stream`, `latency`, `blocking`). Two threads pinned to CPUs 0 and 1
//! play producer and consumer (the ring's memory is a memfd mapping either
//! way, so threads see the same cache traffic as processes). The shm-bench
//! harness runs shm-ring and its baselines alternately, repetition by
//! repetition, and reports the median and range of the per-repetition
//! ratios, so a change in the machine's load hits both sides of a ratio alike. The copying rows
//! come twice: with the default word-atomic slot copies and with both ends
//! trusting each other (`trust_peer`: plain `memcpy`); the untrusted rows
//! also give the trusted figure as a baseline, so the cost of the atomic
//! copies reads off as a ratio. The byte-stream rows also compare with the
//! cross-core copy floor (`floor_stream`: the same messages through a bare
//! two-thread slot array in private memory, `memcpy` in and out, one
//! Release/Acquire count each way), which tells the cost of moving the cache
//! lines between the cores (floor / `memcpy`) from the ring's own (ring / floor).
// shmem-ipc's raw API hands out raw pointers; copying through them needs unsafe.
#![allow(unsafe_code)]
#![allow(clippy::cast_precision_loss, clippy::missing_panics_doc)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shm_bench::{Better, Harness};

use shm_ring::channel;
use shm_sync::atomic::{AtomicU64, Ordering};
use support::AlignedBuf;

mod support;

const BATCH: usize = 256;

static QUICK: OnceLock<bool> = OnceLock::new();

/// `full` normally, `quick` with `--quick`.
fn sized(full: usize, quick: usize) -> usize {
    if *QUICK.get().unwrap_or(&false) {
        quick
    } else {
        full
    }
}

fn pin(cpu: usize) {
    shm_bench::pin(cpu);
}

/// Runs `producer` on CPU 0 and `consumer` on CPU 1; returns the wall time.
fn pair<P: FnOnce() + Send>(producer: P, consumer: impl FnOnce()) -> Duration {
    std::thread::scope(|s| {
        let start = Instant::now();
        let t = s.spawn(move || {
            pin(0);
            producer();
        });
        pin(1);
        consumer();
        t.join().unwrap();
        start.elapsed()
    })
}

/// How the ring's ends copy slots.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Copies {
    /// The default: word-atomic copies (`Relaxed` `AtomicU64` per word).
    Untrusted,
    /// `trust_peer` on both ends: plain `memcpy`.
    Trusted,
}

/// A channel whose ends copy as `copies` says.
fn channel_with<T: shm_ring::Element>(
    capacity: u64,
    copies: Copies,
) -> (shm_ring::Producer<T>, shm_ring::Consumer<T>) {
    let (mut tx, mut rx) = channel::<T>(capacity).unwrap();
    if copies == Copies::Trusted {
        // SAFETY: both ends are shm-ring ends in this process, which follow the protocol.
        unsafe { tx.trust_peer() };
        // SAFETY: as above.
        unsafe { rx.trust_peer() };
    }
    (tx, rx)
}

// ---------- 64-byte messages ----------

type Msg = [u8; 64];

/// Messages per run of the 64-byte groups.
fn msgs_total() -> usize {
    sized(4 << 20, 1 << 18)
}

fn ring_64(copies: Copies) -> f64 {
    let (mut tx, mut rx) = channel_with::<Msg>(1 << 14, copies);
    let batch = vec![[7u8; 64]; BATCH];
    let t = pair(
        move || {
            let mut sent = 0;
            while sent < msgs_total() {
                let n = tx
                    .try_send_slice(&batch[..BATCH.min(msgs_total() - sent)])
                    .unwrap();
                if n == 0 {
                    std::hint::spin_loop();
                }
                sent += n;
            }
        },
        move || {
            let mut buf = vec![[0u8; 64]; BATCH];
            let mut got = 0;
            while got < msgs_total() {
                let n = rx.try_recv_slice(&mut buf).unwrap();
                if n == 0 {
                    std::hint::spin_loop();
                }
                got += n;
            }
            black_box(&buf);
        },
    );
    msgs_total() as f64 / t.as_secs_f64()
}

/// 64-byte messages sent and received one per call.
fn ring_64_single(copies: Copies) -> f64 {
    let (mut tx, mut rx) = channel_with::<Msg>(1 << 14, copies);
    let msgs = msgs_total() / 4;
    let t = pair(
        move || {
            let mut v = [7u8; 64];
            for i in 0..msgs {
                v[0] = i as u8;
                while tx.try_send(v).is_err() {
                    std::hint::spin_loop();
                }
            }
        },
        move || {
            let mut got = 0;
            let mut x = 0u8;
            while got < msgs {
                match rx.try_recv().unwrap() {
                    Some(v) => {
                        x ^= v[0];
                        got += 1;
                    }
                    None => std::hint::spin_loop(),
                }
            }
            black_box(x);
        },
    );
    msgs as f64 / t.as_secs_f64()
}

fn shmem_ipc_64_single() -> f64 {
    use shmem_ipc::sharedring::{Receiver, Sender};
    let mut tx = Sender::<Msg>::new(1 << 14).unwrap();
    let memfd = tx.memfd().as_file().try_clone().unwrap();
    let (e, f) = (
        tx.empty_signal().try_clone().unwrap(),
        tx.full_signal().try_clone().unwrap(),
    );
    let mut rx = Receiver::<Msg>::open(1 << 14, memfd, e, f).unwrap();
    let msgs = msgs_total() / 4;
    let t = pair(
        move || {
            let mut v = [7u8; 64];
            let mut sent = 0;
            while sent < msgs {
                v[0] = sent as u8;
                tx.send_raw(|p, count| {
                    if count == 0 {
                        return 0;
                    }
                    // SAFETY: shmem-ipc lends `count >= 1` writable slots at `p`.
                    unsafe { p.write(v) };
                    sent += 1;
                    1
                })
                .unwrap();
            }
        },
        move || {
            let mut got = 0;
            let mut x = 0u8;
            while got < msgs {
                rx.receive_raw(|p, count| {
                    if count == 0 {
                        return 0;
                    }
                    // SAFETY: shmem-ipc lends `count >= 1` readable slots at `p`.
                    x ^= unsafe { p.read() }[0];
                    got += 1;
                    1
                })
                .unwrap();
            }
            black_box(x);
        },
    );
    msgs as f64 / t.as_secs_f64()
}

fn shmem_ipc_64() -> f64 {
    use shmem_ipc::sharedring::{Receiver, Sender};
    let mut tx = Sender::<Msg>::new(1 << 14).unwrap();
    let memfd = tx.memfd().as_file().try_clone().unwrap();
    let (e, f) = (
        tx.empty_signal().try_clone().unwrap(),
        tx.full_signal().try_clone().unwrap(),
    );
    let mut rx = Receiver::<Msg>::open(1 << 14, memfd, e, f).unwrap();
    let batch = vec![[7u8; 64]; BATCH];
    let t = pair(
        move || {
            let mut sent = 0;
            while sent < msgs_total() {
                let mut n = 0;
                tx.send_raw(|p, count| {
                    n = count.min(BATCH).min(msgs_total() - sent);
                    // SAFETY: shmem-ipc lends `count` writable slots at `p`; we copy n <= count.
                    unsafe { std::ptr::copy_nonoverlapping(batch.as_ptr(), p, n) };
                    n
                })
                .unwrap();
                if n == 0 {
                    std::hint::spin_loop();
                }
                sent += n;
            }
        },
        move || {
            let mut buf = vec![[0u8; 64]; BATCH];
            let mut got = 0;
            while got < msgs_total() {
                let mut n = 0;
                rx.receive_raw(|p, count| {
                    n = count.min(BATCH);
                    // SAFETY: shmem-ipc lends `count` readable slots at `p`; we copy n <= count.
                    unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n) };
                    n
                })
                .unwrap();
                if n == 0 {
                    std::hint::spin_loop();
                }
                got += n;
            }
            black_box(&buf);
        },
    );
    msgs_total() as f64 / t.as_secs_f64()
}

// ---------- byte streams ----------

/// Moves `total` bytes in `chunk`-byte writes; returns bytes per second.
fn stream(
    total: usize,
    chunk: usize,
    mut w: impl FnMut(&[u8]) + Send,
    mut r: impl FnMut(&mut [u8]) -> usize,
) -> f64 {
    let t = pair(
        move || {
            let mut src = AlignedBuf::new(chunk);
            src.as_mut_slice().fill(0x5a);
            for _ in 0..total / chunk {
                w(src.as_slice());
            }
        },
        move || {
            let mut dst = AlignedBuf::new(chunk);
            let mut got = 0;
            while got < total {
                got += r(dst.as_mut_slice());
            }
            black_box(dst.as_slice());
        },
    );
    total as f64 / t.as_secs_f64()
}

/// Slot area of the byte-stream ring (`RING_BYTES` overrides; 4 MiB by default).
fn ring_bytes() -> u64 {
    std::env::var("RING_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4 << 20)
}

fn ring_stream(total: usize, chunk: usize, copies: Copies) -> f64 {
    let (mut tx, mut rx) = channel_with::<u8>(ring_bytes(), copies);
    stream(
        total,
        chunk,
        move |mut buf| {
            while !buf.is_empty() {
                let n = tx.try_send_slice(buf).unwrap();
                if n == 0 {
                    std::hint::spin_loop();
                }
                buf = &buf[n..];
            }
        },
        move |buf| {
            let n = rx.try_recv_slice(buf).unwrap();
            if n == 0 {
                std::hint::spin_loop();
            }
            n
        },
    )
}

/// The zero-copy calls, as a bulk sender would use them: the producer writes
/// each message straight into the slots (`send_trusted`), the consumer copies
/// it out once (`receive_trusted`).
fn ring_stream_in_place(total: usize, chunk: usize) -> f64 {
    let (mut tx, mut rx) = channel::<u8>(ring_bytes()).unwrap();
    let mut seq = 0u8;
    stream(
        total,
        chunk,
        move |_| {
            loop {
                // SAFETY: both ends are in this process and follow the protocol:
                // the consumer never touches free slots.
                let n = unsafe {
                    tx.send_trusted(|slots| {
                        if slots.len() < chunk {
                            return 0;
                        }
                        slots[..chunk].fill(seq);
                        chunk
                    })
                }
                .unwrap();
                if n > 0 {
                    seq = seq.wrapping_add(1);
                    return;
                }
                std::hint::spin_loop();
            }
        },
        move |buf| {
            // SAFETY: as above; the producer never touches published slots.
            let n = unsafe {
                rx.receive_trusted(|ready| {
                    let n = ready.len().min(buf.len());
                    buf[..n].copy_from_slice(&ready[..n]);
                    n
                })
            }
            .unwrap();
            if n == 0 {
                std::hint::spin_loop();
            }
            n
        },
    )
}

fn fd_stream(total: usize, chunk: usize, w: OwnedFd, r: OwnedFd) -> f64 {
    let mut w = std::fs::File::from(w);
    let mut r = std::fs::File::from(r);
    stream(
        total,
        chunk,
        move |buf| w.write_all(buf).unwrap(),
        move |buf| r.read(buf).unwrap(),
    )
}

fn pipe_stream(total: usize, chunk: usize) -> f64 {
    let (r, w) = rustix::pipe::pipe().unwrap();
    let _ = rustix::pipe::fcntl_setpipe_size(&w, 1 << 20);
    fd_stream(total, chunk, w, r)
}

fn unix_stream(total: usize, chunk: usize) -> f64 {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    fd_stream(total, chunk, a.into(), b.into())
}

/// One thread copying `chunk`-byte messages round a `dest`-byte buffer.
fn memcpy_bw(total: usize, chunk: usize, dest: usize) -> f64 {
    let mut src = AlignedBuf::new(chunk);
    src.as_mut_slice().fill(0x5a);
    let mut dst = AlignedBuf::new(dest);
    pin(0);
    let start = Instant::now();
    let mut off = 0;
    for _ in 0..total / chunk {
        dst.as_mut_slice()[off..off + chunk].copy_from_slice(black_box(src.as_slice()));
        off = (off + chunk) % dest;
    }
    black_box(dst.as_slice());
    total as f64 / start.elapsed().as_secs_f64()
}

/// One page of words, page-aligned: the slots of [`floor_stream`] (aligned
/// as the ring's slots and the `memcpy` buffers are).
#[repr(C, align(4096))]
struct WordPage([AtomicU64; 512]);

/// The cross-core copy floor: the least any two-thread design can do to move
/// `chunk`-byte messages from CPU 0 to CPU 1 with a copy in and a copy out.
/// Same slot area as the ring's row (`ring_bytes() / chunk` slots), private
/// memory, one message per publication as the row sends and receives them:
/// the producer copies a message into the next free slot and stores its count
/// with Release, the consumer copies it out and stores its own count back.
/// Each side caches the other's count, as the ring does; nothing is checked
/// and nobody parks. The copies are plain `memcpy`, the one the `memcpy`
/// rows time, so floor / `memcpy` is the cost of the transfer between the
/// cores alone (word-by-word `Relaxed` copies would add a narrower copy to
/// it); that is sound because the counts hand each slot to one side at a
/// time, so no access races.
fn floor_stream(total: usize, chunk: usize) -> f64 {
    let slots = (ring_bytes() as usize / chunk).max(1);
    let pages: Vec<WordPage> = (0..(slots * chunk).div_ceil(4096))
        .map(|_| WordPage(std::array::from_fn(|_| AtomicU64::new(0))))
        .collect();
    let (pages, tail, head) = (
        &pages[..],
        &Line(AtomicU64::new(0)),
        &Line(AtomicU64::new(0)),
    );
    let (mut sent, mut seen_head, mut got, mut seen_tail) = (0u64, 0u64, 0u64, 0u64);
    let slot = move |n: u64| {
        pages
            .as_ptr()
            .cast::<u8>()
            .wrapping_add((n % slots as u64) as usize * chunk)
    };
    stream(
        total,
        chunk,
        move |src| {
            let src = &src[..chunk];
            while sent - seen_head == slots as u64 {
                std::hint::spin_loop();
                // SYNC: Acquire, pairs with the consumer's Release store of
                // `head`: its copy out of the slot happens before ours in.
                seen_head = head.0.load(Ordering::Acquire);
            }
            // SAFETY:
            // - the slot's `chunk` bytes lie inside `pages` (`sent % slots < slots`),
            //   are words behind `UnsafeCell` (so writable through a shared
            //   reference) and do not overlap the private `src`;
            // - no other access races: the consumer read this slot last and
            //   released it (the Acquire above), and reads it again only after
            //   the Release store of `tail` below.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), slot(sent).cast_mut(), chunk) };
            sent += 1;
            // SYNC: Release, pairs with the consumer's Acquire load of
            // `tail`; publishes the copy in.
            tail.0.store(sent, Ordering::Release);
        },
        move |dst| {
            let dst = &mut dst[..chunk];
            if got == seen_tail {
                // SYNC: Acquire, pairs with the producer's Release store of `tail`.
                seen_tail = tail.0.load(Ordering::Acquire);
                if got == seen_tail {
                    std::hint::spin_loop();
                    return 0;
                }
            }
            // SAFETY: in bounds and non-overlapping as for the producer; the
            // producer wrote this slot before its Release store of `tail` (the
            // Acquire above) and writes it again only after the Release store
            // of `head` below.
            unsafe { std::ptr::copy_nonoverlapping(slot(got), dst.as_mut_ptr(), chunk) };
            got += 1;
            // SYNC: Release, pairs with the producer's Acquire load of `head`;
            // orders the copy out before the slot's reuse.
            head.0.store(got, Ordering::Release);
            chunk
        },
    )
}

// ---------- latency ----------

#[repr(C, align(128))]
struct Line(AtomicU64);

fn samples() -> usize {
    sized(20_000, 2_000)
}
const TRIPS: u64 = 8;

/// Median one-way latency in ns from `SAMPLES` timings of `TRIPS` round trips.
fn one_way(mut ping: impl FnMut(u64) + Send, mut pong: impl FnMut(u64)) -> f64 {
    let n = samples();
    let rounds = n as u64 * TRIPS;
    let mut samples = Vec::with_capacity(n);
    let samples_ref = &mut samples;
    pair(
        move || {
            let mut i = 1;
            for _ in 0..n {
                let t = Instant::now();
                for _ in 0..TRIPS {
                    ping(i);
                    i += 1;
                }
                samples_ref.push(t.elapsed().as_nanos() as f64 / (2 * TRIPS) as f64);
            }
        },
        move || {
            for i in 1..=rounds {
                pong(i);
            }
        },
    );
    shm_bench::percentile(&mut samples, 0.5).unwrap_or(f64::NAN)
}

fn floor_latency() -> f64 {
    let (a, b) = (Line(AtomicU64::new(0)), Line(AtomicU64::new(0)));
    let (a, b) = (&a, &b);
    one_way(
        |i| {
            // Relaxed: only the value matters; no other data is published.
            a.0.store(i, Ordering::Relaxed);
            while b.0.load(Ordering::Relaxed) != i {
                std::hint::spin_loop();
            }
        },
        |i| {
            while a.0.load(Ordering::Relaxed) != i {
                std::hint::spin_loop();
            }
            b.0.store(i, Ordering::Relaxed);
        },
    )
}

fn ring_latency() -> f64 {
    let (mut tx1, mut rx1) = channel::<u64>(1024).unwrap();
    let (mut tx2, mut rx2) = channel::<u64>(1024).unwrap();
    one_way(
        move |i| {
            tx1.try_send(i).unwrap();
            while rx2.try_recv().unwrap().is_none() {
                std::hint::spin_loop();
            }
        },
        move |i| {
            while rx1.try_recv().unwrap().is_none() {
                std::hint::spin_loop();
            }
            tx2.try_send(i).unwrap();
        },
    )
}

// ---------- blocking round trips ----------

fn rtts() -> usize {
    sized(2000, 200)
}

/// Median round trip in us.
fn round_trip(mut ping: impl FnMut() + Send, mut pong: impl FnMut()) -> f64 {
    let n = rtts();
    let mut samples = Vec::with_capacity(n);
    let samples_ref = &mut samples;
    pair(
        move || {
            for _ in 0..n {
                let t = Instant::now();
                ping();
                samples_ref.push(t.elapsed().as_nanos() as f64 / 1000.0);
            }
        },
        move || {
            for _ in 0..n {
                pong();
            }
        },
    );
    shm_bench::percentile(&mut samples, 0.5).unwrap_or(f64::NAN)
}

fn eventfd_rtt() -> f64 {
    let e1 = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let e2 = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let (e1, e2) = (&e1, &e2);
    let post = |fd: &OwnedFd| rustix::io::write(fd.as_fd(), &1u64.to_ne_bytes()).unwrap();
    let wait = |fd: &OwnedFd| rustix::io::read(fd.as_fd(), &mut [0u8; 8]).unwrap();
    round_trip(
        move || {
            post(e1);
            wait(e2);
        },
        move || {
            wait(e1);
            post(e2);
        },
    )
}

fn ring_rtt(spin: Duration) -> f64 {
    let (mut tx1, mut rx1) = channel::<u64>(64).unwrap();
    let (mut tx2, mut rx2) = channel::<u64>(64).unwrap();
    for s in [&mut rx1, &mut rx2] {
        s.set_spin(spin);
    }
    round_trip(
        move || {
            tx1.send(1).unwrap();
            rx2.recv().unwrap();
        },
        move || {
            rx1.recv().unwrap();
            tx2.send(2).unwrap();
        },
    )
}

// ---------- report ----------

fn bench_64(h: &mut Harness) {
    let r = h.reps(
        "M/s",
        Better::Higher,
        &mut [
            ("shm-ring", &mut || ring_64_single(Copies::Untrusted) / 1e6),
            ("shm-ring, trusted", &mut || {
                ring_64_single(Copies::Trusted) / 1e6
            }),
            ("shmem-ipc", &mut || shmem_ipc_64_single() / 1e6),
        ],
    );
    h.row(
        &r,
        "64 B msgs, one per call (try_send)",
        "shm-ring",
        "shmem-ipc",
    );
    let case = "64 B msgs, one per call, trusted";
    h.row(&r, case, "shm-ring, trusted", "shmem-ipc");
    let total = msgs_total() * 64;
    let r = h.reps(
        "M/s",
        Better::Higher,
        &mut [
            ("shm-ring", &mut || ring_64(Copies::Untrusted) / 1e6),
            ("shm-ring, trusted", &mut || ring_64(Copies::Trusted) / 1e6),
            ("shmem-ipc", &mut || shmem_ipc_64() / 1e6),
            ("pipe", &mut || pipe_stream(total, BATCH * 64) / 64e6),
            ("unix socket", &mut || unix_stream(total, BATCH * 64) / 64e6),
        ],
    );
    let case = "64 B msgs, batches of 256 (slices)";
    for base in ["shmem-ipc", "pipe", "unix socket", "shm-ring, trusted"] {
        h.row(&r, case, "shm-ring", base);
    }
    let case = "64 B msgs, batches of 256, trusted";
    for base in ["shmem-ipc", "pipe"] {
        h.row(&r, case, "shm-ring, trusted", base);
    }
}

fn bench_streams(h: &mut Harness) {
    let memcpy = "memcpy, ring-sized dest";
    let hot_memcpy = "memcpy, 1 MiB dest";
    let floor = "cross-core copy floor";
    for (chunk, size) in [(4096usize, "4 KiB"), (65536, "64 KiB")] {
        let total = sized(1 << 30, 32 << 20);
        let r = h.reps(
            "GB/s",
            Better::Higher,
            &mut [
                ("shm-ring", &mut || {
                    ring_stream(total, chunk, Copies::Untrusted) / 1e9
                }),
                ("shm-ring, trusted", &mut || {
                    ring_stream(total, chunk, Copies::Trusted) / 1e9
                }),
                ("shm-ring, in place", &mut || {
                    ring_stream_in_place(total, chunk) / 1e9
                }),
                (memcpy, &mut || {
                    memcpy_bw(total, chunk, ring_bytes() as usize) / 1e9
                }),
                (hot_memcpy, &mut || memcpy_bw(total, chunk, 1 << 20) / 1e9),
                (floor, &mut || floor_stream(total, chunk) / 1e9),
                ("pipe", &mut || pipe_stream(total / 2, chunk) / 1e9),
                ("unix socket", &mut || unix_stream(total / 2, chunk) / 1e9),
            ],
        );
        let case = format!("{size} msgs, copy in/out (slices)");
        for base in [
            memcpy,
            hot_memcpy,
            floor,
            "pipe",
            "unix socket",
            "shm-ring, trusted",
        ] {
            h.row(&r, &case, "shm-ring", base);
        }
        let case = format!("{size} msgs, copy in/out, trusted");
        for base in [memcpy, hot_memcpy, floor, "pipe"] {
            h.row(&r, &case, "shm-ring, trusted", base);
        }
        let case = format!("{size} msgs, in place (trusted)");
        h.row(&r, &case, "shm-ring, in place", memcpy);
        h.row(&r, &case, "shm-ring, in place", floor);
        let case = format!("{size} msgs, copy in/out, two threads");
        h.row(&r, &case, floor, memcpy);
    }
}

fn bench_latency(h: &mut Harness) {
    let r = h.reps(
        "ns",
        Better::Lower,
        &mut [
            ("cache-line ping-pong", &mut floor_latency),
            ("shm-ring", &mut ring_latency),
        ],
    );
    let case = "one-way latency p50, busy-poll";
    h.row(&r, case, "shm-ring", "cache-line ping-pong");
}

fn bench_blocking(h: &mut Harness) {
    let r = h.reps(
        "us",
        Better::Lower,
        &mut [
            ("raw eventfd", &mut eventfd_rtt),
            ("shm-ring, spin 0", &mut || ring_rtt(Duration::ZERO)),
            ("shm-ring, spin 20 us", &mut || {
                ring_rtt(shm_ring::DEFAULT_SPIN)
            }),
        ],
    );
    let case = "blocking round trip p50";
    h.row(&r, case, "shm-ring, spin 0", "raw eventfd");
    h.row(&r, case, "shm-ring, spin 20 us", "raw eventfd");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut h = Harness::new("shm-ring");
    QUICK.get_or_init(|| h.quick());
    println!(
        "producer on CPU 0, consumer on CPU 1; byte-stream ring of {} KiB",
        ring_bytes() >> 10
    );
    println!(
        "copy in/out: try_send_slice copies each message in, try_recv_slice copies it out,\n\
         word-atomically (the default, safe with a hostile peer); \"trusted\": both ends called\n\
         the unsafe trust_peer, so the same calls copy with plain memcpy;\n\
         in place: send_trusted writes it straight into the slots, receive_trusted copies it out once\n"
    );
    if h.group("64b") {
        bench_64(&mut h);
    }
    if h.group("stream") {
        bench_streams(&mut h);
    }
    if h.group("latency") {
        bench_latency(&mut h);
    }
    if h.group("blocking") {
        bench_blocking(&mut h);
    }
    h.finish();
}
