//! A ring whose header page (layout fields, head and tail counters, parked
//! flags) a hostile peer overwrites, before and between our operations:
//! opening and every non-blocking send and receive give a result or a typed
//! error, never a panic or a fault, and never report more than asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_ring::{Consumer, ElemLayout, Producer, RingFds};
use shm_segment::{Access, Mapping};

/// Writes `(offset: u16, value: u64)` records (10 bytes each) into the header page.
fn scribble(map: &Mapping, records: &[u8]) {
    let region = map.region();
    for rec in records.chunks_exact(10) {
        let off = usize::from(u16::from_le_bytes([rec[0], rec[1]])) % (4096 / 8) * 8;
        let v = u64::from_le_bytes(rec[2..10].try_into().unwrap());
        // Small values too: plausible counters, capacities, flags.
        let v = if rec[0] & 0x80 != 0 { v % 256 } else { v };
        let _ = region.write(off, &v);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let (before, between) = rest.split_at((usize::from(split) * 10).min(rest.len()));
    let Ok(ring) = RingFds::create("fuzz", 16, ElemLayout::of::<u64>()) else { return };
    let Ok(map) = Mapping::map(
        rustix::fd::AsFd::as_fd(&ring.memfd),
        0,
        4096,
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
    let (Ok(mut tx), Ok(mut rx)) = (tx, rx) else { return };
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
    }
});
