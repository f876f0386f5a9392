//! The trusted zero-copy calls, which hand out plain slices over shared slots.
//!
//! # Safety
//!
//! The slices cover slots that the ring protocol gives to the caller's side
//! (free slots for the producer, published and unreleased ones for the
//! consumer); no other process touches them if it follows the protocol. The
//! functions are `unsafe` because that is an assumption about the peer which
//! the type system cannot check: the caller promises the peer is trusted.
#![allow(unsafe_code)]

use crate::core::RingError;
use crate::endpoint::{Consumer, Element, Producer};

impl<T: Element> Producer<T> {
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
