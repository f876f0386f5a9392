//! A ring whose control pages (the segment header, the ring's config block,
//! head and tail counters, parked flags) a hostile peer overwrites, before and between our operations:
//! opening, every non-blocking send and receive, and the blocking ones (with
//! short timeouts) give a result or a typed error, never a panic or a fault,
//! never report more than asked for, and the blocking ones return by their
//! deadline (plus slack), whatever the flags and counters say.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shm_ring::{Consumer, ElemLayout, Producer, RingError, RingFds, layout};
use shm_segment::{Access, Mapping};

/// Far above any timeout used here and scheduling noise, far below a hang.
const SLACK: Duration = Duration::from_secs(2);

/// One blocking call chosen by `op`, with a timeout chosen by `t` (short, so
/// a run stays fast; zero parks with an already expired deadline).
fn blocking(tx: &mut Producer<u64>, rx: &mut Consumer<u64>, op: u8, t: u8) {
    let timeout = Duration::from_micros([0, 20, 200][usize::from(t % 3)]);
    let spin = if t & 0x80 != 0 {
        Duration::from_micros(5)
    } else {
        Duration::ZERO
    };
    tx.set_spin(spin);
    rx.set_spin(spin);
    let start = Instant::now();
    let result: Result<(), RingError> = match op % 8 {
        0 => rx.recv_timeout(Some(timeout)).map(drop),
        1 => tx.send_timeout(7, Some(timeout)).map_err(|e| e.error),
        2 => {
            let mut out = [0u64; 8];
            rx.recv_slice(&mut out, Some(timeout))
                .map(|n| assert!(n <= out.len()))
        }
        3 => tx
            .send_slice(&[3; 8], Some(timeout))
            .map(|n| assert!(n <= 8)),
        4 => tx.send_all(&[4; 20], Some(timeout)),
        5 => rx.wait_readable(Some(timeout)).map(|n| assert!(n <= 16)),
        6 => tx
            .wait_writable(usize::from(op >> 3), Some(timeout))
            .map(|n| assert!(n <= 16)),
        _ => {
            let mut out = [0u64; 16];
            rx.recv_slice(&mut out, Some(timeout))
                .map(|n| assert!(n <= out.len()))
        }
    };
    let took = start.elapsed();
    // `send_all` may wait once per partial batch; each wait has the same deadline.
    assert!(
        took < timeout + SLACK,
        "blocking call {op} took {took:?} with a {timeout:?} timeout"
    );
    // No peer socket, and the eventfds are ours: nothing else may go wrong.
    if let Err(e) = result {
        assert!(
            matches!(e, RingError::Timeout | RingError::Corrupt(_)),
            "unexpected error from blocking call {op}: {e}"
        );
    }
}

/// The segment header page and the payload's first page (config block, lines).
const CONTROL: usize = layout::PAYLOAD_OFFSET + layout::SLOTS;

/// Writes `(offset: u16, value: u64)` records (10 bytes each) into the control pages.
fn scribble(map: &Mapping, records: &[u8]) {
    let region = map.region();
    for rec in records.chunks_exact(10) {
        let off = usize::from(u16::from_le_bytes([rec[0], rec[1]])) % (CONTROL / 8) * 8;
        let v = u64::from_le_bytes(rec[2..10].try_into().unwrap());
        // Small values too: plausible counters, capacities, flags.
        let v = if rec[0] & 0x80 != 0 { v % 256 } else { v };
        let _ = region.write(off, &v);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (before, between) = rest.split_at((usize::from(split) * 10).min(rest.len()));
    let Ok(ring) = RingFds::create("fuzz", 16, ElemLayout::of::<u64>()) else {
        return;
    };
    let Ok(map) = Mapping::map(
        rustix::fd::AsFd::as_fd(&ring.memfd),
        0,
        CONTROL,
        Access::ReadWrite,
    ) else {
        return;
    };
    // Some honest traffic first, so counters are not all zero.
    if let (Ok(mut tx), Ok(mut rx)) = (
        Producer::<u64>::open(&ring, None),
        Consumer::<u64>::open(&ring, None),
    ) {
        let _ = tx.try_send_slice(&[1, 2, 3, 4, 5]);
        let mut out = [0u64; 3];
        let _ = rx.try_recv_slice(&mut out);
    }
    scribble(&map, before);
    let tx = Producer::<u64>::open(&ring, None);
    let rx = Consumer::<u64>::open(&ring, None);
    let (Ok(mut tx), Ok(mut rx)) = (tx, rx) else {
        return;
    };
    let mut out = [0u64; 8];
    for chunk in between.chunks(40) {
        if let Ok(n) = tx.try_send_slice(&[9; 8]) {
            assert!(n <= 8);
        }
        scribble(&map, chunk);
        if let Ok(n) = rx.try_recv_slice(&mut out) {
            assert!(n <= out.len());
        }
        let _ = rx.try_recv();
        let _ = tx.try_send(7);
        if let [op, t, ..] = *chunk {
            blocking(&mut tx, &mut rx, op, t);
        }
    }
});
