//! shm-ring's side of the publish-subscribe comparison: a byte ring moving
//! `size`-byte messages, copied (the default word-atomic copies) or written
//! in place (`send_trusted`, plain memory).
// `send_trusted` / `receive_trusted` are unsafe: the caller vouches for the peer.
#![allow(unsafe_code)]

use std::hint::black_box;

/// The ring's slot area: 4 MiB, as in shm-ring's own bench.
pub(crate) const RING_BYTES: usize = 4 << 20;

/// Sends one `size`-byte message, copying it in; spins while the ring is full.
pub(crate) fn send_copy(tx: &mut shm_ring::Producer<u8>, mut msg: &[u8]) {
    while !msg.is_empty() {
        let n = tx.try_send_slice(msg).unwrap();
        if n == 0 {
            std::hint::spin_loop();
        }
        msg = &msg[n..];
    }
}

/// Receives one `buf.len()`-byte message, copying it out; spins while empty.
pub(crate) fn recv_copy(rx: &mut shm_ring::Consumer<u8>, buf: &mut [u8]) {
    let mut got = 0;
    while got < buf.len() {
        let n = rx.try_recv_slice(&mut buf[got..]).unwrap();
        if n == 0 {
            std::hint::spin_loop();
        }
        got += n;
    }
}

/// Writes one `size`-byte message straight into the slots (filled with
/// `byte`), as a producer building it in place would; spins while the ring
/// has no contiguous run of `size` free bytes.
pub(crate) fn send_in_place(tx: &mut shm_ring::Producer<u8>, size: usize, byte: u8) {
    loop {
        // SAFETY: `send_trusted` requires a peer that follows the protocol:
        // - the only consumer is a shm-ring Consumer in this process, which
        //   never touches free slots.
        let n = unsafe {
            tx.send_trusted(|slots| {
                if slots.len() < size {
                    return 0;
                }
                slots[..size].fill(byte);
                size
            })
        }
        .unwrap();
        if n > 0 {
            return;
        }
        std::hint::spin_loop();
    }
}

/// Receives one `buf.len()`-byte message from a ring written in place,
/// copying it out once.
pub(crate) fn recv_in_place(rx: &mut shm_ring::Consumer<u8>, buf: &mut [u8]) {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: `receive_trusted` requires a peer that follows the protocol:
        // - the only producer is a shm-ring Producer in this process, which
        //   never touches published slots.
        let n = unsafe {
            rx.receive_trusted(|ready| {
                let n = ready.len().min(buf.len() - got);
                buf[got..got + n].copy_from_slice(&ready[..n]);
                n
            })
        }
        .unwrap();
        if n == 0 {
            std::hint::spin_loop();
        }
        got += n;
    }
    black_box(&buf);
}
