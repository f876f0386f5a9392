//! shm-ring against its baselines, measured in the same run, as ratios.
//!
//! `cargo bench -p shm-ring --bench ring` (about a minute). Two threads pinned
//! to CPUs 0 and 1 play producer and consumer (the ring's memory is a memfd
//! mapping either way, so threads see the same cache traffic as processes).
//! Each figure is the median of several runs; the runs of shm-ring and of the
//! baselines it is compared with alternate, so a change in the machine's load
//! during the benchmark hits both sides of a ratio alike. The copying rows
//! come twice: with the default word-atomic slot copies and with both ends
//! trusting each other (`trust_peer`: plain `memcpy`); the untrusted rows
//! also give the trusted figure as a baseline, so the cost of the atomic
//! copies reads off as a ratio.
// shmem-ipc's raw API hands out raw pointers; copying through them needs unsafe.
#![allow(unsafe_code)]
#![allow(clippy::cast_precision_loss, clippy::missing_panics_doc)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use shm_ring::channel;
use shm_sync::atomic::{AtomicU64, Ordering};
use support::AlignedBuf;

mod support;

const REPS: usize = 5;
const BATCH: usize = 256;

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs each of `fs` once to warm up, then `REPS` rounds of all of them in
/// turn; returns the median of each.
fn reps<const N: usize>(mut fs: [&mut dyn FnMut() -> f64; N]) -> [f64; N] {
    for f in &mut fs {
        f();
    }
    let mut runs: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(REPS));
    for _ in 0..REPS {
        for (f, v) in fs.iter_mut().zip(&mut runs) {
            v.push(f());
        }
    }
    runs.map(median)
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
const MSGS: usize = 4 << 20;

fn ring_64(copies: Copies) -> f64 {
    let (mut tx, mut rx) = channel_with::<Msg>(1 << 14, copies);
    let batch = vec![[7u8; 64]; BATCH];
    let t = pair(
        move || {
            let mut sent = 0;
            while sent < MSGS {
                let n = tx.try_send_slice(&batch[..BATCH.min(MSGS - sent)]).unwrap();
                if n == 0 {
                    std::hint::spin_loop();
                }
                sent += n;
            }
        },
        move || {
            let mut buf = vec![[0u8; 64]; BATCH];
            let mut got = 0;
            while got < MSGS {
                let n = rx.try_recv_slice(&mut buf).unwrap();
                if n == 0 {
                    std::hint::spin_loop();
                }
                got += n;
            }
            black_box(&buf);
        },
    );
    MSGS as f64 / t.as_secs_f64()
}

/// 64-byte messages sent and received one per call.
fn ring_64_single(copies: Copies) -> f64 {
    let (mut tx, mut rx) = channel_with::<Msg>(1 << 14, copies);
    let msgs = MSGS / 4;
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
    let msgs = MSGS / 4;
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
            while sent < MSGS {
                let mut n = 0;
                tx.send_raw(|p, count| {
                    n = count.min(BATCH).min(MSGS - sent);
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
            while got < MSGS {
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
    MSGS as f64 / t.as_secs_f64()
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

// ---------- latency ----------

#[repr(C, align(128))]
struct Line(AtomicU64);

const SAMPLES: usize = 20_000;
const TRIPS: u64 = 8;

/// Median one-way latency in ns from `SAMPLES` timings of `TRIPS` round trips.
fn one_way(mut ping: impl FnMut(u64) + Send, mut pong: impl FnMut(u64)) -> f64 {
    let rounds = SAMPLES as u64 * TRIPS;
    let mut samples = Vec::with_capacity(SAMPLES);
    let samples_ref = &mut samples;
    pair(
        move || {
            let mut i = 1;
            for _ in 0..SAMPLES {
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
    median(samples)
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

const RTTS: usize = 2000;

/// Median round trip in us.
fn round_trip(mut ping: impl FnMut() + Send, mut pong: impl FnMut()) -> f64 {
    let mut samples = Vec::with_capacity(RTTS);
    let samples_ref = &mut samples;
    pair(
        move || {
            for _ in 0..RTTS {
                let t = Instant::now();
                ping();
                samples_ref.push(t.elapsed().as_nanos() as f64 / 1000.0);
            }
        },
        move || {
            for _ in 0..RTTS {
                pong();
            }
        },
    );
    median(samples)
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

struct Row {
    what: String,
    ours: String,
    base: String,
    ratio: f64,
    target: Option<(&'static str, bool)>,
}

fn row(
    what: &str,
    ours: f64,
    base_name: &str,
    base: f64,
    unit: &str,
    higher_better: bool,
    target: Option<f64>,
) -> Row {
    let ratio = ours / base;
    Row {
        what: what.to_owned(),
        ours: format!("{ours:.2} {unit}"),
        base: format!("{base_name} {base:.2} {unit}"),
        ratio,
        target: target.map(|t| {
            let met = if higher_better {
                ratio >= t
            } else {
                ratio <= t
            };
            (
                leak(format!("{} {t}x", if higher_better { ">=" } else { "<=" })),
                met,
            )
        }),
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn bench_64(rows: &mut Vec<Row>) {
    let [ours, trusted, ipc] = reps([
        &mut || ring_64_single(Copies::Untrusted),
        &mut || ring_64_single(Copies::Trusted),
        &mut shmem_ipc_64_single,
    ])
    .map(|r| r / 1e6);
    let what = "64 B msgs, one per call (try_send)";
    rows.push(row(what, ours, "shmem-ipc", ipc, "M/s", true, Some(2.0)));
    let what = "64 B msgs, one per call, trusted";
    rows.push(row(what, trusted, "shmem-ipc", ipc, "M/s", true, Some(2.0)));
    let total = MSGS * 64;
    let [ours, trusted, ipc, pipe, unix] = reps([
        &mut || ring_64(Copies::Untrusted),
        &mut || ring_64(Copies::Trusted),
        &mut shmem_ipc_64,
        &mut || pipe_stream(total, BATCH * 64) / 64.0,
        &mut || unix_stream(total, BATCH * 64) / 64.0,
    ])
    .map(|r| r / 1e6);
    let what = "64 B msgs, batches of 256 (slices)";
    rows.push(row(what, ours, "shmem-ipc", ipc, "M/s", true, Some(2.0)));
    rows.push(row(what, ours, "pipe", pipe, "M/s", true, None));
    rows.push(row(what, ours, "unix socket", unix, "M/s", true, None));
    rows.push(row(what, ours, "ring, trusted", trusted, "M/s", true, None));
    let what = "64 B msgs, batches of 256, trusted";
    rows.push(row(what, trusted, "shmem-ipc", ipc, "M/s", true, Some(2.0)));
    rows.push(row(what, trusted, "pipe", pipe, "M/s", true, None));
}

fn bench_streams(rows: &mut Vec<Row>) {
    for (chunk, size) in [(4096usize, "4 KiB"), (65536, "64 KiB")] {
        let total = 1 << 30;
        let [ours, trusted, in_place, copy, hot, pipe, unix] = reps([
            &mut || ring_stream(total, chunk, Copies::Untrusted),
            &mut || ring_stream(total, chunk, Copies::Trusted),
            &mut || ring_stream_in_place(total, chunk),
            &mut || memcpy_bw(total, chunk, ring_bytes() as usize),
            &mut || memcpy_bw(total, chunk, 1 << 20),
            &mut || pipe_stream(total / 2, chunk),
            &mut || unix_stream(total / 2, chunk),
        ])
        .map(|r| r / 1e9);
        let memcpy = "memcpy, ring-sized dest";
        let hot_memcpy = "memcpy, 1 MiB dest";
        let what = leak(format!("{size} msgs, copy in/out (slices)"));
        rows.push(row(what, ours, memcpy, copy, "GB/s", true, Some(0.6)));
        rows.push(row(what, ours, hot_memcpy, hot, "GB/s", true, None));
        rows.push(row(what, ours, "pipe", pipe, "GB/s", true, None));
        rows.push(row(what, ours, "unix socket", unix, "GB/s", true, None));
        rows.push(row(
            what,
            ours,
            "ring, trusted",
            trusted,
            "GB/s",
            true,
            None,
        ));
        let what = leak(format!("{size} msgs, copy in/out, trusted"));
        rows.push(row(what, trusted, memcpy, copy, "GB/s", true, Some(0.6)));
        rows.push(row(what, trusted, hot_memcpy, hot, "GB/s", true, None));
        rows.push(row(what, trusted, "pipe", pipe, "GB/s", true, None));
        let what = leak(format!("{size} msgs, in place (trusted)"));
        rows.push(row(what, in_place, memcpy, copy, "GB/s", true, Some(0.6)));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench --bench ring -- latency` runs only the groups whose names contain a given word.
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |group: &str| words.is_empty() || words.iter().any(|w| group.contains(w.as_str()));
    let started = Instant::now();
    let mut rows = Vec::new();

    if run("64b") {
        bench_64(&mut rows);
    }
    if run("stream") {
        bench_streams(&mut rows);
    }
    if run("latency") {
        let [floor, ring] = reps([&mut floor_latency, &mut ring_latency]);
        let what = "one-way latency p50, busy-poll";
        rows.push(row(
            what,
            ring,
            "cache-line ping-pong",
            floor,
            "ns",
            false,
            Some(1.5),
        ));
    }
    if run("blocking") {
        let [efd, parked, spun] = reps([
            &mut eventfd_rtt,
            &mut || ring_rtt(Duration::ZERO),
            &mut || ring_rtt(shm_ring::DEFAULT_SPIN),
        ]);
        let what = "blocking round trip p50, spin 0";
        rows.push(row(
            what,
            parked,
            "raw eventfd",
            efd,
            "us",
            false,
            Some(1.1),
        ));
        let what = "blocking round trip p50, spin 20 us";
        rows.push(row(what, spun, "raw eventfd", efd, "us", false, None));
    }

    println!("\nshm-ring benchmark: medians of {REPS} runs, producer on CPU 0, consumer on CPU 1");
    println!(
        "byte-stream ring of {} KiB; memcpy copies the same messages from one hot buffer",
        ring_bytes() >> 10
    );
    println!(
        "copy in/out: try_send_slice copies each message in, try_recv_slice copies it out,\n\
         word-atomically (the default, safe with a hostile peer); \"trusted\": both ends called\n\
         the unsafe trust_peer, so the same calls copy with plain memcpy;\n\
         in place: send_trusted writes it straight into the slots, receive_trusted copies it out once\n"
    );
    println!(
        "{:<38} {:>14}   {:<36} {:>8}   {:<8} met",
        "measure", "shm-ring", "baseline", "ratio", "target"
    );
    for r in &rows {
        let (target, met) = r
            .target
            .map_or(("", ""), |(t, m)| (t, if m { "yes" } else { "NO" }));
        println!(
            "{:<38} {:>14}   {:<36} {:>7.2}x   {:<8} {}",
            r.what, r.ours, r.base, r.ratio, target, met
        );
    }
    println!("\n(total {:.0} s)", started.elapsed().as_secs_f64());
}
