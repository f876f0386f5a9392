//! In-process tests of the public API: typed, batch, zero-copy, byte-stream,
//! blocking, async, and wrap-around properties against a model.
#![cfg(not(shm_loom))]
// The trusted zero-copy calls are unsafe; this test exercises them.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use shm_ring::layout::{self, LayoutError};
use shm_ring::raw::{HeapStorage, RawConsumer, RawProducer, Storage};
use shm_ring::{ElemLayout, OpenError, RingError, RingFds, TrySendError, channel};

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
    let size = layout::total_size(8, ElemLayout::of::<u64>()).unwrap();
    for (size, seals) in [
        (0, memfd::FIXED_SIZE),
        (size, memfd::Seals::empty()),
        (100, memfd::FIXED_SIZE),
        (4096 + 64, memfd::FIXED_SIZE),
        (size + 1, memfd::FIXED_SIZE),
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

/// A copy of `good`'s memfd (segment header, config block, lines, slots) in
/// a new sealed memfd of `size` bytes, after `edit` has changed the bytes.
fn tampered(good: &RingFds, size: u64, edit: impl FnOnce(&mut Vec<u8>)) -> RingFds {
    use shm_segment::memfd;
    let len = rustix::fs::fstat(&good.memfd).unwrap().st_size as usize;
    let mut bytes = vec![0u8; len];
    let got = rustix::io::pread(&good.memfd, &mut bytes, 0).unwrap();
    assert_eq!(got, len);
    edit(&mut bytes);
    bytes.resize(size as usize, 0);
    let fd = memfd::create("tampered", 0, memfd::Seals::empty()).unwrap();
    assert_eq!(rustix::io::write(&fd, &bytes).unwrap(), bytes.len());
    memfd::add_seals(rustix::fd::AsFd::as_fd(&fd), shm_ring::RING_SEALS).unwrap();
    RingFds {
        memfd: fd,
        ..good.try_clone().unwrap()
    }
}

/// The first bytes of a ring memfd of layout version 2: its own header.
fn legacy_header(version: u32) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(b"SHMRING\0");
    header.extend_from_slice(&0x0102_0304u32.to_ne_bytes());
    header.extend_from_slice(&version.to_ne_bytes());
    header.extend_from_slice(&8u64.to_ne_bytes()); // capacity
    header.extend_from_slice(&8u32.to_ne_bytes()); // elem_size
    header.extend_from_slice(&8u32.to_ne_bytes()); // elem_align
    header.extend_from_slice(&4096u64.to_ne_bytes()); // data_offset
    header.extend_from_slice(&(4096u64 + 64).to_ne_bytes()); // total_size
    header
}

/// A memfd laid out by an older build (its own `SHMRING` header at offset 0)
/// is refused with an error that names both layout versions, not as a
/// corrupt segment.
#[test]
fn a_memfd_of_the_old_layout_is_refused_clearly() {
    let good = RingFds::create("t", 8, ElemLayout::of::<u64>()).unwrap();
    for version in [1, 2] {
        let old = tampered(&good, 4096 + 64, |bytes| {
            bytes.fill(0);
            let header = legacy_header(version);
            bytes[..header.len()].copy_from_slice(&header);
        });
        let sut = shm_ring::Consumer::<u64>::open(&old, None).unwrap_err();
        assert!(
            matches!(
                sut,
                OpenError::Layout(LayoutError::Legacy { found }) if found == version
            ),
            "{sut:?}"
        );
        let message = sut.to_string();
        assert!(
            message.contains(&format!("layout version {version}"))
                && message.contains(&format!("layout version {}", layout::VERSION)),
            "{message}"
        );
        assert!(shm_ring::Producer::<u64>::open(&old, None).is_err());
    }
}

/// Every config block field that disagrees with this build, with the other
/// fields or with the file is named in the error; a segment that is not a
/// ring (another payload) is refused as such.
#[test]
fn a_wrong_config_block_is_refused_clearly() {
    use core::mem::offset_of;
    use shm_ring::layout::RingConfig;
    let elem = ElemLayout::of::<u64>();
    let good = RingFds::create("t", 8, elem).unwrap();
    let size = layout::total_size(8, elem).unwrap();
    let at = |field: usize| layout::PAYLOAD_OFFSET + layout::CONFIG + field;
    let put = |bytes: &mut Vec<u8>, field: usize, value: u64| {
        bytes[at(field)..at(field) + 8].copy_from_slice(&value.to_ne_bytes());
    };
    let cases: [(usize, u64, &str); 9] = [
        (offset_of!(RingConfig, producer_line), 0, "producer_line"),
        (offset_of!(RingConfig, consumer_line), 128, "consumer_line"),
        (
            offset_of!(RingConfig, producer_parked),
            512,
            "producer_parked",
        ),
        (
            offset_of!(RingConfig, consumer_parked),
            384,
            "consumer_parked",
        ),
        (offset_of!(RingConfig, producer_claim), 0, "producer_claim"),
        (offset_of!(RingConfig, consumer_claim), 1, "consumer_claim"),
        (offset_of!(RingConfig, slots), 640, "slots"),
        (offset_of!(RingConfig, slots_len), 128, "slots_len"),
        (offset_of!(RingConfig, capacity), 4, "slots_len"),
    ];
    for (field, value, name) in cases {
        let fds = tampered(&good, size, |b| put(b, field, value));
        match shm_ring::Consumer::<u64>::open(&fds, None) {
            Err(OpenError::Layout(LayoutError::Field { field, .. })) => assert_eq!(field, name),
            other => panic!("{name}: {other:?}"),
        }
    }
    // A smaller ring's geometry, consistent in itself, in a file of the old size.
    let fds = tampered(&good, size, |b| {
        put(b, offset_of!(RingConfig, capacity), 4);
        put(b, offset_of!(RingConfig, slots_len), 32);
    });
    let sut = shm_ring::Consumer::<u64>::open(&fds, None).unwrap_err();
    assert_eq!(
        sut.to_string(),
        "ring config field payload size is 4160, expected 4128"
    );
    let fds = tampered(&good, size, |b| {
        put(b, offset_of!(RingConfig, version), 2);
    });
    let sut = shm_ring::Consumer::<u64>::open(&fds, None).unwrap_err();
    assert!(
        matches!(sut, OpenError::Layout(LayoutError::Version { found: 2 })),
        "{sut:?}"
    );
    assert_eq!(
        sut.to_string(),
        "ring layout version 2, this build speaks 3"
    );
    let fds = tampered(&good, size, |b| put(b, offset_of!(RingConfig, capacity), 3));
    assert!(matches!(
        shm_ring::Consumer::<u64>::open(&fds, None),
        Err(OpenError::Layout(LayoutError::Capacity(3)))
    ));
    // A valid segment whose payload is something else (here: zeros).
    let fds = tampered(&good, size, |b| {
        b[layout::PAYLOAD_OFFSET..].fill(0);
    });
    assert!(matches!(
        shm_ring::Consumer::<u64>::open(&fds, None),
        Err(OpenError::Layout(LayoutError::NotARing))
    ));
    // A segment header that was never published is the segment layer's to report.
    let fds = tampered(&good, size, |b| b[..4096].fill(0));
    assert!(matches!(
        shm_ring::Consumer::<u64>::open(&fds, None),
        Err(OpenError::Segment(
            shm_segment::SegmentError::NotInitialized { .. }
        ))
    ));
    // And the untouched copy opens: the refusals above are the edits' doing.
    let fds = tampered(&good, size, |_| {});
    let mut rx = shm_ring::Consumer::<u64>::open(&fds, None).unwrap();
    assert_eq!(rx.try_recv().unwrap(), None);
}

/// The trusted copies (`trust_peer`: plain memcpy) move the same data as the
/// default word-atomic ones, for single elements, slices, lent runs and the
/// byte stream, including at unaligned byte offsets.
#[test]
fn trusted_copies_round_trip_like_the_default_ones() {
    for trusted in [false, true] {
        let (mut tx, mut rx) = channel::<[u32; 5]>(8).unwrap();
        if trusted {
            // SAFETY: both ends are this test's own, which follow the protocol.
            unsafe { tx.trust_peer() };
            // SAFETY: as above.
            unsafe { rx.trust_peer() };
        }
        assert_eq!((tx.trusts_peer(), rx.trusts_peer()), (trusted, trusted));
        let items: Vec<[u32; 5]> = (0..20u32).map(|i| [i, i + 1, i + 2, i + 3, !i]).collect();
        let mut got = Vec::new();
        let mut sent = 0;
        while got.len() < items.len() {
            match sent % 3 {
                0 => sent += tx.try_send_slice(&items[sent..]).unwrap(),
                1 => {
                    if tx.try_send(items[sent]).is_ok() {
                        sent += 1;
                    }
                }
                _ => {
                    sent += tx
                        .send_with(|mut slots| {
                            let n = slots.len().min(items.len() - sent);
                            slots.copy_from_slice(0, &items[sent..sent + n]);
                            n
                        })
                        .unwrap();
                }
            }
            let mut out = [[0u32; 5]; 3];
            let n = rx.try_recv_slice(&mut out).unwrap();
            got.extend_from_slice(&out[..n]);
            if let Some(v) = rx.try_recv().unwrap() {
                got.push(v);
            }
        }
        assert_eq!(got, items, "trusted {trusted}");

        let (mut tx, mut rx) = channel::<u8>(64).unwrap();
        if trusted {
            // SAFETY: as above.
            unsafe { tx.trust_peer() };
            // SAFETY: as above.
            unsafe { rx.trust_peer() };
        }
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 13 % 251) as u8).collect();
        let mut out = Vec::new();
        let mut buf = [0u8; 23];
        let mut rest = &data[..];
        while out.len() < data.len() {
            let n = tx.try_send_slice(&rest[..rest.len().min(37)]).unwrap();
            rest = &rest[n..];
            let n = rx.read(&mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, data, "trusted {trusted}");
    }
}

/// A peer that breaks the protocol and rewrites slots while we copy them in
/// and out costs inconsistent elements, never a crash. The peer here is a
/// thread writing through the very addresses our two ends copy at (each
/// end's own mapping), which another process writing the same pages amounts
/// to, and which lets `ThreadSanitizer` see both sides: the default copies
/// are atomic, so it reports nothing, while the plain `memcpy` of
/// `trust_peer` is reported as the data race it is.
#[test]
fn a_peer_rewriting_slots_under_our_copies_gets_inconsistent_data_not_a_crash() {
    use shm_segment::Region;
    use shm_sync::atomic::{AtomicBool, Ordering};
    let elem = ElemLayout::of::<[u64; 32]>();
    let fds = RingFds::create("hostile-slots", 4, elem).unwrap();
    let mut tx = shm_ring::Producer::<[u64; 32]>::open(&fds, None).unwrap();
    let mut rx = shm_ring::Consumer::<[u64; 32]>::open(&fds, None).unwrap();
    let len = layout::total_size(4, elem).unwrap() as usize;
    assert_eq!(tx.mapping_for_tests().len(), len);
    assert_eq!(rx.mapping_for_tests().len(), len);
    // SAFETY: each mapping is owned by its end, which outlives the scope
    // below; the ends access slot bytes only atomically (what this test is
    // about), and the lines are atomics.
    let regions = [tx.mapping_for_tests(), rx.mapping_for_tests()]
        .map(|m| unsafe { Region::from_raw_parts(m.as_ptr(), len, true) });
    let slots = layout::PAYLOAD_OFFSET + layout::SLOTS;
    let stop = AtomicBool::new(false);
    let (mut mixed, mut rounds) = (0u32, 0u32);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut fill = 0u64;
            // Relaxed: a stop flag; nothing is published with it.
            while !stop.load(Ordering::Relaxed) {
                fill = fill.wrapping_add(1);
                let region = regions[(fill % 2) as usize];
                for off in (slots..len).step_by(8) {
                    region.write(off, &fill).unwrap();
                }
            }
        });
        let end = Instant::now() + Duration::from_millis(300);
        while Instant::now() < end || rounds < 100 {
            let _ = tx.try_send_slice(&[[7u64; 32]; 4]).unwrap();
            let mut out = [[0u64; 32]; 4];
            let n = rx.try_recv_slice(&mut out).unwrap();
            for v in &out[..n] {
                if v.iter().any(|w| *w != v[0]) {
                    mixed += 1;
                }
            }
            rounds += 1;
        }
        // Relaxed: see above.
        stop.store(true, Ordering::Relaxed);
    });
    eprintln!("{rounds} rounds, {mixed} elements mixed from several writes");
    // The ring itself still works once the peer stops.
    let mut out = [[0u64; 32]; 4];
    while rx.try_recv_slice(&mut out).unwrap() > 0 {}
    tx.try_send([9; 32]).unwrap();
    assert_eq!(rx.try_recv().unwrap(), Some([9; 32]));
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
    /// Whatever bytes sit in the segment header page and the ring's control
    /// page and whatever the file's size, opening gives a typed error or a
    /// usable ring, never a panic or SIGBUS. Half the cases start from a
    /// valid ring, so the edits reach the config block's checks.
    #[test]
    fn arbitrary_control_pages_never_panic(
        patch in proptest::collection::vec(any::<u8>(), 0..700),
        at in 0usize..8192,
        extra in 0u64..20_000,
        from_valid in any::<bool>(),
        legacy in any::<bool>(),
    ) {
        let good = RingFds::create("fuzz", 8, ElemLayout::of::<u64>()).unwrap();
        let size = 4096 + extra;
        let fds = tampered(&good, size, |bytes| {
            if !from_valid {
                bytes.fill(0);
            }
            if legacy {
                let header = legacy_header(2);
                bytes[..header.len()].copy_from_slice(&header);
            }
            let end = (at + patch.len()).min(bytes.len());
            if at < end {
                bytes[at..end].copy_from_slice(&patch[..end - at]);
            }
        });
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
