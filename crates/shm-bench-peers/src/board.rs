//! shm-mailbox next to iceoryx2's blackboard and mmap-sync: latest-value
//! sharing with one writer publishing nonstop and 1, 2 or 4 readers.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering}; // atomics-ok: benchmark counters and stop flag
use std::time::{Duration, Instant};

use iceoryx2::prelude::*;
use shm_bench::{Better, Harness};
use shm_mailbox::{Config, Mailbox};

use crate::mmapsync;
use crate::pubsub::{label, node, unique_name};

/// Reads per reader per second and publishes per second.
struct Rates {
    reads: f64,
    publishes: f64,
}

/// Runs `publish` on one thread and `read(i)` on `readers` threads, each in
/// a loop until `span` has passed; counts the calls.
fn race(
    readers: usize,
    span: Duration,
    publish: &(dyn Fn(&dyn Fn() -> bool) -> u64 + Sync),
    read: &(dyn Fn(usize, &dyn Fn() -> bool) -> u64 + Sync),
) -> Rates {
    let stop = AtomicBool::new(false);
    let (reads, publishes) = (AtomicU64::new(0), AtomicU64::new(0));
    // Relaxed: a flag checked in a loop; it publishes no data.
    let go = || !stop.load(Ordering::Relaxed);
    let t = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| publishes.store(publish(&go), Ordering::Relaxed));
        for i in 0..readers {
            let (go, reads) = (&go, &reads);
            s.spawn(move || reads.fetch_add(read(i, go), Ordering::Relaxed));
        }
        std::thread::sleep(span);
        stop.store(true, Ordering::Relaxed);
    });
    // Relaxed: the scope's joins ordered the threads' stores before these loads.
    let secs = t.elapsed().as_secs_f64();
    Rates {
        reads: reads.load(Ordering::Relaxed) as f64 / readers as f64 / secs,
        publishes: publishes.load(Ordering::Relaxed) as f64 / secs,
    }
}

/// Counts calls of `f` while `go()`.
fn count(go: &dyn Fn() -> bool, mut f: impl FnMut()) -> u64 {
    let mut n = 0;
    while go() {
        f();
        n += 1;
    }
    n
}

fn mailbox<const N: usize>(readers: usize, span: Duration) -> Rates {
    let name = format!("outlive-bench-peers-{}-{N}-{readers}", std::process::id());
    let mb = Mailbox::open_or_create(
        &name,
        Config {
            readers,
            slot_bytes: N,
        },
    )
    .unwrap();
    let writer = std::sync::Mutex::new(mb.writer().unwrap());
    let msg = [7u8; N];
    let rates = race(
        readers,
        span,
        &|go| {
            let mut w = writer.lock().unwrap();
            count(go, || {
                w.publish(&msg).unwrap();
            })
        },
        &|i, go| {
            let mut r = mb.reader(i).unwrap();
            let mut buf = vec![0u8; N];
            count(go, || {
                black_box(r.read(&mut buf).unwrap());
            })
        },
    );
    drop(writer);
    drop(mb);
    let _ = Mailbox::remove(&name);
    rates
}

fn blackboard<const N: usize>(readers: usize, span: Duration) -> Rates {
    let name = unique_name("board");
    let main = node();
    let _service = main
        .service_builder(&name)
        .blackboard_creator::<u64>()
        .max_readers(readers)
        .max_nodes(readers + 4)
        .add::<[u8; N]>(0, [0u8; N])
        .create()
        .unwrap();
    let name = &name;
    let open = |n: &Node<ipc::Service>| {
        n.service_builder(name)
            .blackboard_opener::<u64>()
            .open()
            .unwrap()
    };
    race(
        readers,
        span,
        &|go| {
            let node = node();
            let service = open(&node);
            let writer = service.writer_builder().create().unwrap();
            let entry = writer.entry::<[u8; N]>(&0).unwrap();
            let msg = [7u8; N];
            count(go, || entry.update_with_copy(black_box(msg)))
        },
        &|_, go| {
            let node = node();
            let service = open(&node);
            let reader = service.reader_builder().create().unwrap();
            let entry = reader.entry::<[u8; N]>(&0).unwrap();
            // `get` copies the value out, as the mailbox's `read` does.
            count(go, || {
                black_box(entry.get());
            })
        },
    )
}

fn mmap_sync<const N: usize>(readers: usize, span: Duration) -> Rates {
    let store = mmapsync::Store::new(&format!("{N}-{readers}"));
    let value = mmapsync::Value {
        bytes: vec![7u8; N],
    };
    let writer = std::sync::Mutex::new(store.writer());
    writer.lock().unwrap().publish(&value);
    race(
        readers,
        span,
        &|go| {
            let mut w = writer.lock().unwrap();
            count(go, || w.publish(&value))
        },
        &|_, go| {
            let mut r = store.reader();
            let mut buf = vec![0u8; N];
            count(go, || r.read(&mut buf))
        },
    )
}

fn one_size<const N: usize>(h: &mut Harness) {
    let span = h.pick(Duration::from_millis(500), Duration::from_millis(100));
    for readers in [1usize, 2, 4] {
        let names = [
            "shm-mailbox reads",
            "iceoryx2 blackboard reads",
            "mmap-sync reads",
            "shm-mailbox publishes",
            "iceoryx2 blackboard publishes",
            "mmap-sync publishes",
        ];
        let mut run = |rep: usize| {
            let mut rates = [0.0; 6];
            let mut order = [0, 1, 2];
            if rep % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let r = match i {
                    0 => mailbox::<N>(readers, span),
                    1 => blackboard::<N>(readers, span),
                    _ => mmap_sync::<N>(readers, span),
                };
                (rates[i], rates[i + 3]) = (r.reads / 1e6, r.publishes / 1e6);
            }
            rates.to_vec()
        };
        let r = h.reps_joint("M/s", Better::Higher, &names, &mut run);
        let case = format!(
            "{} value, {readers} reader(s) reading nonstop, one writer publishing nonstop",
            label(N)
        );
        h.row(&r, &format!("{case}: reads per reader"), names[0], names[1]);
        h.row(&r, &format!("{case}: reads per reader"), names[0], names[2]);
        h.row(&r, &format!("{case}: publishes"), names[3], names[4]);
        h.row(&r, &format!("{case}: publishes"), names[3], names[5]);
    }
}

/// The latest-value groups: 64 B, 4 KiB, 64 KiB.
pub(crate) fn run(h: &mut Harness) {
    one_size::<64>(h);
    one_size::<4096>(h);
    one_size::<65536>(h);
}
