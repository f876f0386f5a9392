//! In-process tests of the public API: typed, batch, zero-copy, byte-stream,
//! blocking, async, and wrap-around properties against a model.
#![cfg(not(shm_loom))]
// The trusted zero-copy calls are unsafe; this test exercises them.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use shm_ring::raw::{HeapStorage, RawConsumer, RawProducer, Storage};
use shm_ring::{ElemLayout, RingError, RingFds, TrySendError, channel};

#[test]
fn full_and_empty_hand_back_the_value() {
    let (mut tx, mut rx) = channel::<u64>(2).unwrap();
    assert_eq!(rx.try_recv().unwrap(), None);
    tx.try_send(1).unwrap();
    tx.try_send(2).unwrap();
    let Err(TrySendError::Full(v)) = tx.try_send(3) else {
        panic!("expected Full")
    };
    assert_eq!(v, 3);
    assert_eq!(rx.try_recv().unwrap(), Some(1));
    tx.try_send(3).unwrap();
    assert_eq!(rx.try_recv().unwrap(), Some(2));
    assert_eq!(rx.try_recv().unwrap(), Some(3));
    assert_eq!(rx.try_recv().unwrap(), None);
    assert_eq!((tx.position(), rx.position()), (3, 3));
}

#[test]
fn blocking_calls_time_out() {
    let (mut tx, mut rx) = channel::<u32>(1).unwrap();
    let start = Instant::now();
    assert!(matches!(
        rx.recv_timeout(Some(Duration::from_millis(30))),
        Err(RingError::Timeout)
    ));
    assert!(start.elapsed() >= Duration::from_millis(30));
    tx.send(1).unwrap();
    let err = tx
        .send_timeout(2, Some(Duration::from_millis(30)))
        .unwrap_err();
    assert!(matches!(err.error, RingError::Timeout));
    assert_eq!(err.value, 2);
}

#[test]
fn blocking_threads_move_a_million_in_order() {
    let (mut tx, mut rx) = channel::<u64>(64).unwrap();
    tx.set_spin(Duration::ZERO); // park at once: exercises the eventfd path hard
    let n = if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    };
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            tx.send(i).unwrap();
        }
    });
    for i in 0..n {
        assert_eq!(rx.recv().unwrap(), i);
    }
    sender.join().unwrap();
}

#[test]
fn slices_and_zero_copy_batches_round_trip() {
    let (mut tx, mut rx) = channel::<u32>(16).unwrap();
    let items: Vec<u32> = (0..1000).collect();
    let sender = std::thread::spawn(move || {
        let mut sent = 0;
        while sent < 500 {
            sent += tx.send_slice(&items[sent..500], None).unwrap();
        }
        let mut next = 500u32;
        while next < 1000 {
            tx.wait_writable(1, None).unwrap();
            let n = tx
                .send_with(|mut slots| {
                    let n = slots.len().min((1000 - next) as usize);
                    for i in 0..n {
                        slots.set(i, &(next + i as u32));
                    }
                    n
                })
                .unwrap();
            next += n as u32;
        }
        tx
    });
    let mut got = Vec::new();
    while got.len() < 1000 {
        rx.wait_readable(None).unwrap();
        if got.len() % 2 == 0 {
            rx.recv_with(|slots| {
                for i in 0..slots.len() {
                    got.push(slots.get(i));
                }
                slots.len()
            })
            .unwrap();
        } else {
            // SAFETY: the producer is this test's own thread, which follows the protocol.
            unsafe {
                rx.receive_trusted(|s| {
                    got.extend_from_slice(s);
                    s.len()
                })
            }
            .unwrap();
        }
    }
    assert_eq!(got, (0..1000).collect::<Vec<u32>>());
    let mut tx = sender.join().unwrap();
    // SAFETY: the consumer is this test's own code, which follows the protocol.
    let n = unsafe {
        tx.send_trusted(|s| {
            s[0] = 7;
            1
        })
    }
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(rx.try_recv().unwrap(), Some(7));
}

/// A zero-copy caller that waits for a run of some length (declining shorter
/// ones) sees the peer's progress on its next call, on both ends.
#[test]
fn zero_copy_callers_that_decline_see_progress() {
    let (mut tx, mut rx) = channel::<u32>(8).unwrap();
    let take4 = |slots: shm_ring::Slots<'_, u32>| if slots.len() >= 4 { 4 } else { 0 };
    tx.send(1).unwrap();
    assert_eq!(rx.recv_with(take4).unwrap(), 0, "one ready, four wanted");
    tx.try_send_slice(&[2, 3, 4]).unwrap();
    assert_eq!(rx.recv_with(take4).unwrap(), 4, "the other three were seen");
    // Producer: it sees four free up to the wrap and declines; once the
    // consumer has emptied the ring it gets the run of six it waits for.
    let put6 = |mut slots: shm_ring::SlotsMut<'_, u32>| {
        if slots.len() < 6 {
            return 0;
        }
        slots.copy_from_slice(0, &[5; 6]);
        6
    };
    assert_eq!(tx.send_with(put6).unwrap(), 0, "four free before the wrap");
    assert_eq!(tx.try_send_slice(&[9; 4]).unwrap(), 4);
    assert_eq!(tx.send_with(put6).unwrap(), 0, "full");
    let mut out = [0u32; 8];
    assert_eq!(rx.try_recv_slice(&mut out).unwrap(), 4);
    assert_eq!(out[..4], [9; 4]);
    assert_eq!(
        tx.send_with(put6).unwrap(),
        6,
        "the consumer's progress was seen"
    );
    assert_eq!(rx.try_recv_slice(&mut out).unwrap(), 6);
    assert_eq!(out[..6], [5; 6]);
}

#[test]
fn byte_stream_carries_a_checksummed_stream() {
    let (mut tx, mut rx) = channel::<u8>(4096).unwrap();
    let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 31 % 251) as u8).collect();
    let expect = data.clone();
    let writer = std::thread::spawn(move || {
        for chunk in data.chunks(1000) {
            tx.write_all(chunk).unwrap();
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 777];
    while got.len() < expect.len() {
        let n = rx.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    writer.join().unwrap();
    assert_eq!(got, expect);
}

#[test]
fn async_ends_exchange_values() {
    use shm_ring::asyncio::{AsyncConsumer, AsyncProducer};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, rx) = channel::<u64>(8).unwrap();
        let mut tx = AsyncProducer::new(tx).unwrap();
        let mut rx = AsyncConsumer::new(rx).unwrap();
        let sender = tokio::spawn(async move {
            for i in 0..20_000u64 {
                tx.send(i).await.unwrap();
            }
        });
        for i in 0..20_000u64 {
            assert_eq!(rx.recv().await.unwrap(), i);
        }
        sender.await.unwrap();
    });
}

#[test]
fn wrong_element_type_is_refused() {
    let fds = RingFds::create("t", 8, ElemLayout::of::<u64>()).unwrap();
    assert!(shm_ring::Consumer::<u32>::open(&fds, None).is_err());
    assert!(shm_ring::Consumer::<u64>::open_tagged(&fds, 5, None).is_err());
    assert!(shm_ring::Consumer::<u64>::open(&fds, None).is_ok());
}

#[test]
fn unsealed_or_short_memfds_are_refused() {
    use shm_segment::memfd;
    let good = RingFds::create("t", 8, ElemLayout::of::<u64>()).unwrap();
    for (size, seals) in [
        (0, memfd::FIXED_SIZE),
        (4096 + 64, memfd::Seals::empty()),
        (100, memfd::FIXED_SIZE),
        (4096 + 65, memfd::FIXED_SIZE),
    ] {
        let fds = RingFds {
            memfd: memfd::create("bad", size, seals).unwrap(),
            ..good.try_clone().unwrap()
        };
        assert!(
            shm_ring::Consumer::<u64>::open(&fds, None).is_err(),
            "size {size} seals {seals:?}"
        );
    }
    let not_eventfd = RingFds {
        data_ready: std::fs::File::open("/dev/null").unwrap().into(),
        ..good.try_clone().unwrap()
    };
    assert!(shm_ring::Consumer::<u64>::open(&not_eventfd, None).is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Send(u8),
    Recv(u8),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![(0u8..20).prop_map(Op::Send), (0u8..20).prop_map(Op::Recv)],
        1..80,
    )
}

/// Runs `ops` against the raw algorithm and a `VecDeque` model; counters start at `start`.
fn check_against_model(capacity: u64, start: u64, ops: &[Op]) {
    let storage = HeapStorage::starting_at(capacity, 8, start, start);
    let mut producer = RawProducer::attach(&storage).unwrap();
    let mut consumer = RawConsumer::attach(&storage).unwrap();
    let mut model = VecDeque::new();
    let mut next = 0u64;
    for op in ops {
        match *op {
            Op::Send(n) => {
                let mut left = u64::from(n);
                while left > 0 {
                    let (slot, run) = producer.reserve(left).unwrap();
                    if run == 0 {
                        break;
                    }
                    assert!(slot + run <= capacity);
                    let vals: Vec<u64> = (next..next + run).collect();
                    producer.write(slot, zerocopy::IntoBytes::as_bytes(&vals[..]));
                    producer.commit(run);
                    model.extend(next..next + run);
                    next += run;
                    left -= run;
                }
                assert!(model.len() as u64 <= capacity);
                if left > 0 {
                    assert_eq!(model.len() as u64, capacity, "stopped early while not full");
                }
            }
            Op::Recv(n) => {
                let mut left = u64::from(n);
                while left > 0 {
                    let (slot, run) = consumer.peek(left).unwrap();
                    if run == 0 {
                        assert!(
                            model.is_empty(),
                            "ring says empty, model holds {}",
                            model.len()
                        );
                        break;
                    }
                    let mut vals = vec![0u64; run as usize];
                    consumer.read(slot, zerocopy::IntoBytes::as_mut_bytes(&mut vals[..]));
                    for v in vals {
                        assert_eq!(Some(v), model.pop_front());
                    }
                    consumer.release(run);
                    left -= run;
                }
            }
        }
        assert_eq!(
            producer.position() - consumer.position(),
            model.len() as u64
        );
        assert_eq!(
            storage
                .producer()
                .tail
                .load(shm_sync::atomic::Ordering::Relaxed),
            start + next
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn wrap_around_matches_model_at_every_capacity(ops in ops(), start in 0u64..1 << 62, low in 0u64..4) {
        for shift in 0..=8 {
            // Start both at an arbitrary counter value, near a slot boundary or not.
            check_against_model(1 << shift, start.wrapping_sub(low), &ops);
        }
    }

    #[test]
    fn typed_channel_wraps_at_every_capacity(ops in ops()) {
        for shift in 0..=6 {
            let (mut tx, mut rx) = channel::<[u8; 3]>(1 << shift).unwrap();
            let mut model = VecDeque::new();
            let mut next = 0u32;
            for op in &ops {
                match *op {
                    // Odd counts go one element per call (the small-element
                    // path through the producer's line), even ones as a slice.
                    Op::Send(n) => {
                        let items: Vec<[u8; 3]> = (0..u32::from(n)).map(|i| { let v = next + i; [v as u8, (v >> 8) as u8, 7] }).collect();
                        let sent = if n % 2 == 1 {
                            items.iter().take_while(|v| tx.try_send(**v).is_ok()).count()
                        } else {
                            tx.try_send_slice(&items).unwrap()
                        };
                        model.extend(items[..sent].iter().copied());
                        next += sent as u32;
                    }
                    Op::Recv(n) => {
                        let mut out = vec![[0u8; 3]; usize::from(n)];
                        let got = if n % 2 == 1 {
                            let mut got = 0;
                            while got < out.len() {
                                match rx.try_recv().unwrap() {
                                    Some(v) => { out[got] = v; got += 1; }
                                    None => break,
                                }
                            }
                            got
                        } else {
                            rx.try_recv_slice(&mut out).unwrap()
                        };
                        for v in &out[..got] {
                            prop_assert_eq!(Some(*v), model.pop_front());
                        }
                        prop_assert!(got == usize::from(n) || model.is_empty());
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever bytes sit in the header page and whatever the file's size, opening
    /// gives a typed error or a usable ring, never a panic or SIGBUS.
    #[test]
    fn arbitrary_header_page_never_panics(page in proptest::collection::vec(any::<u8>(), 0..700), extra in 0u64..20_000, keep_magic in any::<bool>()) {
        use shm_segment::{Access, Mapping, memfd};
        let good = RingFds::create("fuzz", 8, ElemLayout::of::<u64>()).unwrap();
        let size = 4096 + extra;
        let fd = memfd::create("fuzz", size, shm_ring::RING_SEALS).unwrap();
        let map = Mapping::map(rustix::fd::AsFd::as_fd(&fd), 0, 4096, Access::ReadWrite).unwrap();
        let mut bytes = page.clone();
        if keep_magic && bytes.len() >= 16 {
            bytes[..8].copy_from_slice(b"SHMRING\0");
            bytes[8..12].copy_from_slice(&0x0102_0304u32.to_ne_bytes());
        }
        map.region().write_bytes(0, &bytes).unwrap();
        let fds = RingFds { memfd: fd, ..good.try_clone().unwrap() };
        if let Ok(mut rx) = shm_ring::Consumer::<u64>::open(&fds, None) {
            let _ = rx.try_recv();
        }
        if let Ok(mut tx) = shm_ring::Producer::<u64>::open(&fds, None) {
            let _ = tx.try_send(1);
        }
    }
}

/// `Listener::bind` replaces only a stale socket at its path: a regular file
/// or a symlink planted there is refused and left as it was.
#[test]
fn bind_never_removes_what_is_not_a_stale_socket() {
    let dir = std::env::temp_dir().join(shm_testkit::unique_name("ring-bind"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("file.sock");
    std::fs::write(&file, b"keep me").unwrap();
    let e = shm_ring::Listener::bind(&file).unwrap_err();
    assert!(e.to_string().contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    assert!(shm_ring::Listener::bind(&link).is_err());
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // A stale socket (its listener gone) is replaced.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    drop(shm_ring::Listener::bind(&stale).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A server that attaches more fds to its welcome than the three of a ring
/// is malformed: the client refuses it, and closes every fd it was sent.
#[test]
fn a_welcome_with_extra_fds_is_refused_and_every_fd_closed() {
    use std::os::fd::AsFd;
    let dir = std::env::temp_dir().join(shm_testkit::unique_name("ring-extra-fds"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut hello = [0u8; 40];
        stream.read_exact(&mut hello).unwrap();
        // Welcome: magic, version 1, status OK, capacity, pid, reserved.
        let mut welcome = Vec::new();
        welcome.extend_from_slice(b"RINGWLCM");
        welcome.extend_from_slice(&1u32.to_ne_bytes());
        welcome.extend_from_slice(&0u32.to_ne_bytes());
        welcome.extend_from_slice(&1024u64.to_ne_bytes());
        welcome.extend_from_slice(&std::process::id().to_ne_bytes());
        welcome.extend_from_slice(&0u32.to_ne_bytes());
        let fds = [write.as_fd(); 4];
        let sent = shm_segment::fdpass::send_with_fds(&stream, &welcome, &fds, None).unwrap();
        assert_eq!(sent, 32);
        // Our copy closes here; the client's copies are all that is left.
        drop(write);
        stream
    });
    let err = shm_ring::Connector::new(&path)
        .connect(shm_ring::Role::Producer, ElemLayout::of::<u64>())
        .unwrap_err();
    assert!(matches!(err, shm_ring::ConnectError::Malformed), "{err}");
    drop(server.join().unwrap());
    // End of file on the pipe: no write end is open anywhere (none leaked).
    let mut fds = [rustix::event::PollFd::new(
        &read,
        rustix::event::PollFlags::IN,
    )];
    let ten_s = rustix::time::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    assert_eq!(rustix::event::poll(&mut fds, Some(&ten_s)).unwrap(), 1);
    assert_eq!(rustix::io::read(&read, &mut [0u8; 1]).unwrap(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
