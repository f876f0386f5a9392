//! The trusted calls: plain `memcpy` slot copies ([`Producer::trust_peer`],
//! [`Consumer::trust_peer`]) and the zero-copy calls that hand out plain
//! slices over shared slots ([`Producer::send_trusted`],
//! [`Consumer::receive_trusted`]).
//!
//! # Safety
//!
//! Both touch slots that the ring protocol gives to the caller's side (free
//! slots for the producer, published and unreleased ones for the consumer)
//! with plain, non-atomic accesses; no other process touches them if it
//! follows the protocol. A peer that breaks it and writes (or, for slots we
//! write, reads) them at the same time makes those accesses a data race:
//! undefined behaviour in this process, which no check of ours can prevent,
//! because the peer is outside our control. The functions are `unsafe`
//! because that is an assumption about the peer which the type system
//! cannot check: the caller promises that the peer process follows the
//! protocol. The default copies (word-atomic) need no such promise.
#![allow(unsafe_code)]

use crate::core::RingError;
use crate::endpoint::{Consumer, Element, Producer};

impl<T: Element> Producer<T> {
    /// Copies elements into the slots with plain `memcpy` from now on,
    /// instead of the default word-atomic copies: every copying call
    /// (`try_send`, `send*`, the slices, [`SlotsMut`](crate::SlotsMut), the
    /// byte stream and the async end built on this producer). Faster for
    /// large elements (vector-wide copies), and sound only with a peer that
    /// keeps to the protocol.
    ///
    /// # Safety
    /// The peer process follows the protocol: the consumer never reads or
    /// writes slots that are free (not yet published by this producer),
    /// whoever it is and however long this producer lives; and nothing else
    /// (another process, or this one through another mapping of the memfd)
    /// writes them either. A hostile or buggy consumer that does makes our
    /// copies a data race, which is undefined behaviour in this process.
    /// For peers you do not control (another uid, a sandboxed process), keep
    /// the default copies.
    ///
    /// # Examples
    /// ```
    /// let (mut tx, mut rx) = shm_ring::channel::<[u64; 64]>(16)?;
    /// // SAFETY: both ends are in this process, and the consumer is an
    /// // shm-ring Consumer, which follows the protocol.
    /// unsafe { tx.trust_peer() };
    /// tx.send([7; 64])?;
    /// assert_eq!(rx.recv()?, [7; 64]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn trust_peer(&mut self) {
        // SAFETY: the caller's promise is the storage's precondition, forwarded.
        unsafe { self.raw.storage_mut().trust_peer() };
    }

    /// Whether [`Producer::trust_peer`] was called (copies are plain `memcpy`).
    pub fn trusts_peer(&self) -> bool {
        self.raw.storage().trusts_peer()
    }

    /// Zero-copy batch with a plain `&mut [T]` over the free slots, as
    /// shmem-ipc's `send_trusted`: `fill` returns how many to publish. The run
    /// is chosen as for [`Producer::send_with`].
    ///
    /// # Safety
    /// The consumer must be trusted to follow the protocol: it must not write
    /// the free slots while `fill` runs (a hostile peer doing so would be a
    /// data race on memory we hold a `&mut` to). Use [`Producer::send_with`]
    /// for untrusted peers.
    ///
    /// # Panics
    /// If `fill` returns more than the slice's length.
    pub unsafe fn send_trusted<F: FnOnce(&mut [T]) -> usize>(
        &mut self,
        fill: F,
    ) -> Result<usize, RingError> {
        let (first, len) = self.lend_free()?;
        // SAFETY: the run is reserved (free, owned by us under the protocol),
        // in bounds, T matches the slot size and is FromBytes; trust in the
        // peer is the caller's precondition, forwarded.
        let slots =
            unsafe { crate::storage::slots_mut::<T>(self.raw.storage(), first, len as usize) };
        let n = fill(slots);
        assert!(
            n as u64 <= len,
            "send_trusted: {n} slots published, {len} lent"
        );
        self.lent_published(n)
    }
}

impl<T: Element> Consumer<T> {
    /// Copies elements out of the slots with plain `memcpy` from now on,
    /// instead of the default word-atomic copies: every copying call
    /// (`try_recv`, `recv*`, the slices, [`Slots`](crate::Slots), the byte
    /// stream and the async end built on this consumer). Faster for large
    /// elements, and sound only with a peer that keeps to the protocol.
    ///
    /// # Safety
    /// The peer process follows the protocol: the producer never writes
    /// slots that it has published and this consumer has not released,
    /// whoever it is and however long this consumer lives; and nothing else
    /// (another process, or this one through another mapping of the memfd)
    /// writes them either. A hostile or
    /// buggy producer that does makes our copies a data race, which is
    /// undefined behaviour in this process. For peers you do not control,
    /// keep the default copies, which make such a peer's writes an
    /// inconsistent element at worst.
    ///
    /// # Examples
    /// ```
    /// let (mut tx, mut rx) = shm_ring::channel::<[u64; 64]>(16)?;
    /// // SAFETY: both ends are in this process, and the producer is an
    /// // shm-ring Producer, which follows the protocol.
    /// unsafe { rx.trust_peer() };
    /// tx.send([7; 64])?;
    /// assert_eq!(rx.recv()?, [7; 64]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn trust_peer(&mut self) {
        // SAFETY: the caller's promise is the storage's precondition, forwarded.
        unsafe { self.raw.storage_mut().trust_peer() };
    }

    /// Whether [`Consumer::trust_peer`] was called (copies are plain `memcpy`).
    pub fn trusts_peer(&self) -> bool {
        self.raw.storage().trusts_peer()
    }

    /// Zero-copy batch with a plain `&[T]` over the ready elements, as
    /// shmem-ipc's `receive_trusted`: `take` returns how many to release. The
    /// run is chosen as for [`Consumer::recv_with`].
    ///
    /// # Safety
    /// The producer must be trusted not to write published slots until they
    /// are released (a hostile peer doing so would be a data race on memory we
    /// hold a `&` to). Use [`Consumer::recv_with`] or the copying calls for untrusted peers.
    ///
    /// # Panics
    /// If `take` returns more than the slice's length.
    pub unsafe fn receive_trusted<F: FnOnce(&[T]) -> usize>(
        &mut self,
        take: F,
    ) -> Result<usize, RingError> {
        let (first, len) = self.lend_ready()?;
        // SAFETY: the run is published and not released (ours under the
        // protocol), in bounds, T matches the slot size and is FromBytes;
        // trust in the peer is the caller's precondition, forwarded.
        let slots: &[T] =
            unsafe { crate::storage::slots_mut::<T>(self.raw.storage(), first, len as usize) };
        let n = take(slots);
        assert!(n as u64 <= len, "receive_trusted: {n} released, {len} lent");
        self.lent_released(n)
    }
}
