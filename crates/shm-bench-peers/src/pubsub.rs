//! shm-ring next to iceoryx2 publish-subscribe: streaming and one-way latency.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering}; // atomics-ok: process-local stop flags
use std::sync::{Barrier, Mutex};
use std::time::Instant;

use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory as PubSub;
use shm_bench::{Better, Harness, percentile};

use crate::ring::{RING_BYTES, recv_copy, recv_in_place, send_copy, send_in_place};

/// Message sizes: 8 B to 1 MiB.
const SIZES: [usize; 5] = [8, 64, 4096, 64 << 10, 1 << 20];

/// The four contenders, as measure names.
const RING: &str = "shm-ring";
const RING_IN_PLACE: &str = "shm-ring, in place";
const ICE: &str = "iceoryx2";
const ICE_LOAN: &str = "iceoryx2, loan";

/// A service name no other run or group uses.
pub(crate) fn unique_name(tag: &str) -> ServiceName {
    static NEXT: Mutex<u64> = Mutex::new(0);
    let mut next = NEXT.lock().unwrap();
    *next += 1;
    let name = format!("outlive-bench/{}/{tag}/{next}", std::process::id());
    name.as_str().try_into().unwrap()
}

/// A node of this process (one per thread: ports stay on their thread).
pub(crate) fn node() -> Node<ipc::Service> {
    NodeBuilder::new().create::<ipc::Service>().unwrap()
}

/// Runs `producer` on CPU 0 and `consumer` on CPU 1; both set up, meet at
/// the barrier, then run; returns the consumer's figure.
fn pair(producer: impl FnOnce(&Barrier) + Send, consumer: impl FnOnce(&Barrier) -> f64) -> f64 {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let b = &barrier;
        let t = s.spawn(move || {
            shm_bench::pin(0);
            producer(b);
        });
        shm_bench::pin(1);
        let x = consumer(b);
        t.join().unwrap();
        x
    })
}

/// `size`-byte messages per second through shm-ring.
fn ring_stream(size: usize, msgs: usize, in_place: bool) -> f64 {
    let (mut tx, mut rx) = shm_ring::channel::<u8>(RING_BYTES as u64).unwrap();
    pair(
        move |b| {
            let src = vec![0x5a; size];
            b.wait();
            for i in 0..msgs {
                if in_place {
                    send_in_place(&mut tx, size, i as u8);
                } else {
                    send_copy(&mut tx, &src);
                }
            }
        },
        move |b| {
            let mut buf = vec![0; size];
            b.wait();
            let t = Instant::now();
            for _ in 0..msgs {
                if in_place {
                    recv_in_place(&mut rx, &mut buf);
                } else {
                    recv_copy(&mut rx, &mut buf);
                }
            }
            black_box(&buf);
            msgs as f64 / t.elapsed().as_secs_f64()
        },
    )
}

/// A publisher of `size`-byte slices that waits while the subscriber's buffer is full.
fn publisher(
    service: &PubSub<ipc::Service, [u8], ()>,
    size: usize,
) -> Publisher<ipc::Service, [u8], ()> {
    service
        .publisher_builder()
        .initial_max_slice_len(size)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .unwrap()
}

/// Sends one message: copied from `src`, or (`loan`) written in place.
fn ice_send(p: &Publisher<ipc::Service, [u8], ()>, src: &[u8], loan: bool, byte: u8) {
    let sample = loop {
        if let Ok(s) = p.loan_slice_uninit(src.len()) {
            break s;
        }
        std::hint::spin_loop();
    };
    let sample = if loan {
        sample.write_from_fn(|_| byte)
    } else {
        sample.write_from_slice(src)
    };
    sample.send().unwrap();
}

/// Receives one message, copying it out; spins while there is none.
fn ice_recv(s: &Subscriber<ipc::Service, [u8], ()>, buf: &mut [u8]) {
    loop {
        if let Some(sample) = s.receive().unwrap() {
            buf.copy_from_slice(sample.payload());
            return;
        }
        std::hint::spin_loop();
    }
}

fn open(node: &Node<ipc::Service>, name: &ServiceName) -> PubSub<ipc::Service, [u8], ()> {
    node.service_builder(name)
        .publish_subscribe::<[u8]>()
        .open()
        .unwrap()
}

fn create(
    node: &Node<ipc::Service>,
    name: &ServiceName,
    buffer: usize,
) -> PubSub<ipc::Service, [u8], ()> {
    node.service_builder(name)
        .publish_subscribe::<[u8]>()
        .subscriber_max_buffer_size(buffer)
        .history_size(0)
        .enable_safe_overflow(false)
        .create()
        .unwrap()
}

/// `size`-byte messages per second through iceoryx2.
///
/// The publisher sends until the subscriber has received `msgs`, and the
/// subscriber drains until the publisher stops, so a message iceoryx2 drops
/// (none should be, with `RetryUntilDelivered`) cannot hang the run.
fn ice_stream(size: usize, msgs: usize, loan: bool) -> f64 {
    let name = unique_name("stream");
    let main = node();
    let buffer = (RING_BYTES / size).clamp(2, 256);
    let _service = create(&main, &name, buffer);
    let name = &name;
    let (done, stopped) = (AtomicBool::new(false), AtomicBool::new(false));
    let (done, stopped) = (&done, &stopped);
    pair(
        move |b| {
            let node = node();
            let p = publisher(&open(&node, name), size);
            let src = vec![0x5a; size];
            b.wait();
            p.update_connections().unwrap();
            b.wait();
            let mut i = 0usize;
            // Relaxed: flags only; the barrier and the join order the data.
            while !done.load(Ordering::Relaxed) {
                ice_send(&p, &src, loan, i as u8);
                i += 1;
            }
            stopped.store(true, Ordering::Relaxed);
        },
        move |b| {
            let node = node();
            let s = open(&node, name)
                .subscriber_builder()
                .buffer_size(buffer)
                .create()
                .unwrap();
            let mut buf = vec![0; size];
            b.wait();
            b.wait();
            let t = Instant::now();
            for _ in 0..msgs {
                ice_recv(&s, &mut buf);
            }
            let rate = msgs as f64 / t.elapsed().as_secs_f64();
            done.store(true, Ordering::Relaxed);
            while !stopped.load(Ordering::Relaxed) {
                while s.receive().unwrap().is_some() {}
            }
            black_box(&buf);
            rate
        },
    )
}

/// Median one-way latency in ns of `n` round trips of `size` bytes through shm-ring.
fn ring_latency(size: usize, n: usize, in_place: bool) -> f64 {
    let (mut tx1, mut rx1) = shm_ring::channel::<u8>(RING_BYTES as u64).unwrap();
    let (mut tx2, mut rx2) = shm_ring::channel::<u8>(RING_BYTES as u64).unwrap();
    let send = move |tx: &mut shm_ring::Producer<u8>, src: &[u8]| {
        if in_place {
            send_in_place(tx, src.len(), 1);
        } else {
            send_copy(tx, src);
        }
    };
    let recv = move |rx: &mut shm_ring::Consumer<u8>, buf: &mut [u8]| {
        if in_place {
            recv_in_place(rx, buf);
        } else {
            recv_copy(rx, buf);
        }
    };
    pair(
        move |b| {
            let (src, mut buf) = (vec![0x5a; size], vec![0; size]);
            b.wait();
            for _ in 0..n {
                recv(&mut rx1, &mut buf);
                send(&mut tx2, &src);
            }
        },
        move |b| {
            let (src, mut buf) = (vec![0x5a; size], vec![0; size]);
            let mut samples = Vec::with_capacity(n);
            b.wait();
            for _ in 0..n {
                let t = Instant::now();
                send(&mut tx1, &src);
                recv(&mut rx2, &mut buf);
                samples.push(t.elapsed().as_nanos() as f64 / 2.0);
            }
            percentile(&mut samples, 0.5).unwrap_or(f64::NAN)
        },
    )
}

/// Median one-way latency in ns of `n` round trips of `size` bytes through iceoryx2.
fn ice_latency(size: usize, n: usize, loan: bool) -> f64 {
    let (ping, pong) = (unique_name("ping"), unique_name("pong"));
    let main = node();
    let _services = (create(&main, &ping, 2), create(&main, &pong, 2));
    let (ping, pong) = (&ping, &pong);
    pair(
        move |b| {
            let node = node();
            let s = open(&node, ping).subscriber_builder().create().unwrap();
            let p = publisher(&open(&node, pong), size);
            let (src, mut buf) = (vec![0x5a; size], vec![0; size]);
            b.wait();
            p.update_connections().unwrap();
            b.wait();
            for _ in 0..n {
                ice_recv(&s, &mut buf);
                ice_send(&p, &src, loan, 1);
            }
        },
        move |b| {
            let node = node();
            let p = publisher(&open(&node, ping), size);
            let s = open(&node, pong).subscriber_builder().create().unwrap();
            let (src, mut buf) = (vec![0x5a; size], vec![0; size]);
            let mut samples = Vec::with_capacity(n);
            b.wait();
            p.update_connections().unwrap();
            b.wait();
            for _ in 0..n {
                let t = Instant::now();
                ice_send(&p, &src, loan, 1);
                ice_recv(&s, &mut buf);
                samples.push(t.elapsed().as_nanos() as f64 / 2.0);
            }
            percentile(&mut samples, 0.5).unwrap_or(f64::NAN)
        },
    )
}

/// A readable size: 8 B, 4 KiB, 1 MiB.
pub(crate) fn label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// The streaming and latency groups.
pub(crate) fn run(h: &mut Harness) {
    for size in SIZES {
        if h.group("stream") {
            let total = h.pick(256usize << 20, 8 << 20);
            let msgs = (total / size).clamp(h.pick(256, 16), h.pick(2_000_000, 20_000));
            let r = h.reps(
                "msgs/s",
                Better::Higher,
                &mut [
                    (RING, &mut || ring_stream(size, msgs, false)),
                    (RING_IN_PLACE, &mut || ring_stream(size, msgs, true)),
                    (ICE, &mut || ice_stream(size, msgs, false)),
                    (ICE_LOAN, &mut || ice_stream(size, msgs, true)),
                ],
            );
            let case = format!("{} messages, streaming", label(size));
            h.row(&r, &case, RING, ICE);
            h.row(&r, &case, RING_IN_PLACE, ICE_LOAN);
        }
        if h.group("latency") {
            let n = if size >= 64 << 10 {
                h.pick(1_000, 50)
            } else {
                h.pick(10_000, 500)
            };
            let r = h.reps(
                "ns",
                Better::Lower,
                &mut [
                    (RING, &mut || ring_latency(size, n, false)),
                    (RING_IN_PLACE, &mut || ring_latency(size, n, true)),
                    (ICE, &mut || ice_latency(size, n, false)),
                    (ICE_LOAN, &mut || ice_latency(size, n, true)),
                ],
            );
            let case = format!("{} messages, one-way latency p50, busy-poll", label(size));
            h.row(&r, &case, RING, ICE);
            h.row(&r, &case, RING_IN_PLACE, ICE_LOAN);
        }
    }
}
