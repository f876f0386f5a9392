//! Where a ring's counters and slots live: the heap (tests, loom models) or a
//! shared mapping of a memfd segment.
//!
//! # Safety
//!
//! [`MapStorage`] owns the [`Segment`] (and so the mapping) its pointers point
//! into, so they stay valid for its whole life. The counter lines at
//! [`PRODUCER_LINE`] and [`CONSUMER_LINE`] and the flags at
//! [`PRODUCER_PARKED`] and [`CONSUMER_PARKED`] (payload offsets) are made
//! only of atomics (padding aside), lie inside the mapping (its length is
//! checked at construction) and are 128-aligned (the payload is
//! page-aligned); any bit pattern is a valid atomic, so shared
//! `&ProducerLine`, `&ConsumerLine` and `&ParkFlag` are sound even while
//! another process writes them.
//!
//! Slot bytes are only ever copied, never referenced (except by the `unsafe`
//! zero-copy calls of `trusted.rs`), and only within `[SLOTS, SLOTS +
//! capacity * elem_size)` of the payload (checked on every copy). The ring
//! protocol gives the producer exclusive use of free slots and the consumer
//! of full ones, with Release / Acquire on the counters ordering the copies,
//! and each end has one live holder at a time (the claims of `claim.rs`), so
//! within this process no two copies touch the same bytes at once. A peer
//! process is another matter: nothing stops it from breaking the protocol
//! and writing the slots we are copying, and a plain `memcpy` racing with
//! such writes is a data race, which is undefined behaviour, not merely
//! "garbage". So by default every slot copy goes through
//! [`shm_sync::copy`] (`Relaxed` atomic accesses in the language's model:
//! word-atomic below `shm_sync::copy::WIDE_MIN` bytes, a byte-wise `rep
//! movsb` from there on x86-64): a hostile peer can make what we copy out
//! inconsistent, even torn within a word, never undefined. Slot types are
//! valid for every bit pattern (`FromBytes`), so any bytes are a valid
//! element, which callers validate as they would any untrusted input; no
//! count or length travels in a slot (the counters are separate atomics),
//! so nothing here needs a word read whole. Plain `memcpy` is
//! used only after [`MapStorage::trust_peer`], an `unsafe fn` whose caller
//! promises that the peer process follows the protocol (see
//! `Producer::trust_peer` / `Consumer::trust_peer`). The file is sealed
//! against shrinking, so no access can fault. `MapStorage` is private: only
//! [`crate::Producer`] and [`crate::Consumer`], which hold the claims, copy
//! through it.
//!
//! [`HeapStorage`] is public and `Sync`, and its `write`/`read` are safe
//! methods anyone may call from any thread, so its slots are atomics (one
//! byte each; one word each under loom) copied with Relaxed loads and stores:
//! callers that break the protocol read garbage, never race.

#![allow(unsafe_code)]

#[cfg(not(shm_loom))]
use shm_sync::atomic::AtomicU8;
use shm_sync::atomic::{AtomicU32, AtomicU64};

#[cfg(not(shm_loom))]
use crate::layout::{
    CONSUMER_LINE, CONSUMER_PARKED, PAYLOAD_OFFSET, PRODUCER_LINE, PRODUCER_PARKED, SLOTS,
};
#[cfg(not(shm_loom))]
use shm_segment::{Mapping, Segment};

/// Words in [`ProducerLine::inline`]: elements up to this many bytes also travel in the producer's line.
pub const INLINE_WORDS: usize = 6;
/// Largest element, in bytes, that [`ProducerLine::inline`] can carry.
pub const INLINE_BYTES: usize = INLINE_WORDS * 8;

/// The producer's counter and a copy of the last single element it published,
/// together in the first 64 bytes of a 128-byte line written only by the producer.
///
/// The copy lets a consumer that polls `tail` get a small element in the same
/// cache-line transfer that tells it the element is there, instead of fetching
/// the slot's line afterwards. The slot is written too and stays authoritative.
#[derive(Debug)]
#[repr(C, align(128))]
pub struct ProducerLine {
    /// Number of elements ever published (monotonic). Slot of element `n` is `n % capacity`.
    pub tail: AtomicU64,
    /// `n + 1` while [`ProducerLine::inline`] holds element `n`; 0 while it is being
    /// rewritten (or holds nothing).
    pub inline_seq: AtomicU64,
    /// The bytes of element `inline_seq - 1`, zero-padded to whole words.
    pub inline: [AtomicU64; INLINE_WORDS],
}

/// The consumer's counter, alone on its 128-byte line: written only by the consumer.
#[derive(Debug)]
#[repr(C, align(128))]
pub struct ConsumerLine {
    /// Number of elements ever consumed (monotonic).
    pub head: AtomicU64,
}

/// A side's parking flag, on its own line so that reading it after every
/// commit stays a cache hit until the owner actually parks.
#[derive(Debug)]
#[repr(C, align(128))]
pub struct ParkFlag {
    /// 1 while the owner is (about to be) blocked on its eventfd, else 0.
    pub parked: AtomicU32,
}

#[cfg(not(shm_loom))]
const _: () = {
    assert!(size_of::<ProducerLine>() == 128 && align_of::<ProducerLine>() == 128);
    assert!(size_of::<ConsumerLine>() == 128 && align_of::<ConsumerLine>() == 128);
    assert!(size_of::<ParkFlag>() == 128 && align_of::<ParkFlag>() == 128);
    assert!(core::mem::offset_of!(ProducerLine, tail) == 0);
    assert!(core::mem::offset_of!(ProducerLine, inline_seq) == 8);
    assert!(core::mem::offset_of!(ProducerLine, inline) == 16);
    assert!(core::mem::offset_of!(ProducerLine, inline) + INLINE_BYTES <= 64);
    assert!(core::mem::offset_of!(ConsumerLine, head) == 0);
    assert!(core::mem::offset_of!(ParkFlag, parked) == 0);
    assert!(PRODUCER_LINE + 128 <= CONSUMER_LINE && CONSUMER_LINE + 128 <= PRODUCER_PARKED);
    assert!(PRODUCER_PARKED + 128 <= CONSUMER_PARKED && CONSUMER_PARKED + 128 <= SLOTS);
    assert!(PRODUCER_LINE.is_multiple_of(128) && PAYLOAD_OFFSET.is_multiple_of(4096));
};

/// Storage for one ring: two counter lines and `capacity` slots of `elem_size` bytes.
///
/// Implementations check the bounds of every copy themselves (a violation is a
/// bug in the caller and panics). The methods are safe, so an implementation
/// must stay sound whoever calls them, from any number of threads (for
/// instance two [`RawProducer`](crate::raw::RawProducer)s attached to one
/// storage): [`HeapStorage`] copies through atomics for that reason. The ring
/// algorithm relies on an implementation for correctness, never for soundness.
pub trait Storage {
    /// The producer's line.
    fn producer(&self) -> &ProducerLine;
    /// The consumer's line.
    fn consumer(&self) -> &ConsumerLine;
    /// The producer's parking flag.
    fn producer_parked(&self) -> &ParkFlag;
    /// The consumer's parking flag.
    fn consumer_parked(&self) -> &ParkFlag;
    /// Number of slots (a power of two).
    fn capacity(&self) -> u64;
    /// Bytes per slot.
    fn elem_size(&self) -> usize;
    /// Copies `src` (a whole number of elements) into slots from `slot` on, without wrapping.
    fn write(&self, slot: u64, src: &[u8]);
    /// Copies slots from `slot` on (without wrapping) into `dst` (a whole number of elements).
    fn read(&self, slot: u64, dst: &mut [u8]);
    /// Hints that `slot` will be read soon (no memory access in the language's sense).
    fn prefetch(&self, _slot: u64) {}
}

#[inline]
fn slot_range(slot: u64, bytes: usize, capacity: u64, elem: usize) -> usize {
    let start = (slot as usize).checked_mul(elem);
    let end = start.and_then(|s| s.checked_add(bytes));
    match end {
        Some(end)
            if slot < capacity && end <= capacity as usize * elem && bytes.is_multiple_of(elem) =>
        {
            start.unwrap_or(0)
        }
        _ => panic!("slot copy out of range: slot {slot}, {bytes} bytes, capacity {capacity}"),
    }
}

/// Heap-backed storage for unit tests and loom models (one process only).
///
/// Under `--cfg shm_loom` the slots are loom `AtomicU64` words (the element size
/// must then be a multiple of 8), so loom checks that the counters' orderings
/// publish the slot contents.
#[derive(Debug)]
pub struct HeapStorage {
    producer: ProducerLine,
    consumer: ConsumerLine,
    producer_parked: ParkFlag,
    consumer_parked: ParkFlag,
    capacity: u64,
    elem_size: usize,
    #[cfg(shm_loom)]
    words: Vec<AtomicU64>,
    #[cfg(not(shm_loom))]
    bytes: Box<[AtomicU8]>,
}

impl HeapStorage {
    /// Storage for `capacity` (a power of two) elements of `elem_size` bytes, counters at 0.
    ///
    /// # Panics
    /// If `capacity` is not a power of two or `elem_size` is 0 (or, under loom, not a multiple of 8).
    pub fn new(capacity: u64, elem_size: usize) -> HeapStorage {
        HeapStorage::starting_at(capacity, elem_size, 0, 0)
    }

    /// Like [`HeapStorage::new`] with the counters preset (for wrap-around tests).
    ///
    /// # Panics
    /// As for [`HeapStorage::new`].
    pub fn starting_at(capacity: u64, elem_size: usize, head: u64, tail: u64) -> HeapStorage {
        assert!(capacity.is_power_of_two() && elem_size > 0);
        let len = capacity as usize * elem_size;
        HeapStorage {
            producer: ProducerLine {
                tail: AtomicU64::new(tail),
                inline_seq: AtomicU64::new(0),
                inline: core::array::from_fn(|_| AtomicU64::new(0)),
            },
            consumer: ConsumerLine {
                head: AtomicU64::new(head),
            },
            producer_parked: ParkFlag {
                parked: AtomicU32::new(0),
            },
            consumer_parked: ParkFlag {
                parked: AtomicU32::new(0),
            },
            capacity,
            elem_size,
            #[cfg(shm_loom)]
            words: {
                assert!(elem_size.is_multiple_of(8));
                (0..len / 8).map(|_| AtomicU64::new(0)).collect()
            },
            #[cfg(not(shm_loom))]
            bytes: (0..len).map(|_| AtomicU8::new(0)).collect(),
        }
    }
}

impl Storage for HeapStorage {
    fn producer(&self) -> &ProducerLine {
        &self.producer
    }
    fn consumer(&self) -> &ConsumerLine {
        &self.consumer
    }
    fn producer_parked(&self) -> &ParkFlag {
        &self.producer_parked
    }
    fn consumer_parked(&self) -> &ParkFlag {
        &self.consumer_parked
    }
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn elem_size(&self) -> usize {
        self.elem_size
    }

    #[cfg(not(shm_loom))]
    fn write(&self, slot: u64, src: &[u8]) {
        let start = slot_range(slot, src.len(), self.capacity, self.elem_size);
        for (cell, byte) in self.bytes[start..start + src.len()].iter().zip(src) {
            // Relaxed: the slot is published by the Release store of `tail`
            // (or of `inline_seq`), which pairs with the reader's Acquire load.
            cell.store(*byte, shm_sync::atomic::Ordering::Relaxed);
        }
    }

    #[cfg(not(shm_loom))]
    fn read(&self, slot: u64, dst: &mut [u8]) {
        let start = slot_range(slot, dst.len(), self.capacity, self.elem_size);
        let cells = &self.bytes[start..start + dst.len()];
        for (byte, cell) in dst.iter_mut().zip(cells) {
            // Relaxed: ordered after the Acquire load of `tail` that showed
            // this slot full (pairs with the producer's Release store).
            *byte = cell.load(shm_sync::atomic::Ordering::Relaxed);
        }
    }

    #[cfg(shm_loom)]
    fn write(&self, slot: u64, src: &[u8]) {
        let start = slot_range(slot, src.len(), self.capacity, self.elem_size) / 8;
        for (i, chunk) in src.chunks_exact(8).enumerate() {
            let word = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
            // Relaxed: the slot is published by the Release store of `tail`.
            self.words[start + i].store(word, shm_sync::atomic::Ordering::Relaxed);
        }
    }

    #[cfg(shm_loom)]
    fn read(&self, slot: u64, dst: &mut [u8]) {
        let start = slot_range(slot, dst.len(), self.capacity, self.elem_size) / 8;
        for (i, chunk) in dst.chunks_exact_mut(8).enumerate() {
            // Relaxed: ordered after the Acquire load of `tail` that showed this slot full.
            let word = self.words[start + i].load(shm_sync::atomic::Ordering::Relaxed);
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
    }
}

/// Storage in a shared mapping of a ring memfd whose segment header and
/// config block have been validated.
#[cfg(not(shm_loom))]
#[derive(Debug)]
pub(crate) struct MapStorage {
    segment: Segment,
    capacity: u64,
    elem_size: usize,
    /// Slot copies are plain `memcpy` (set only by the `unsafe` [`MapStorage::trust_peer`]).
    trusted: bool,
}

#[cfg(not(shm_loom))]
impl MapStorage {
    /// Wraps a validated ring segment; copies are word-atomic.
    ///
    /// # Panics
    /// If the mapping is smaller than `PAYLOAD_OFFSET + SLOTS + capacity *
    /// elem_size` or `capacity` is not a power of two (callers validate the
    /// config block first).
    pub(crate) fn new(segment: Segment, capacity: u64, elem_size: usize) -> MapStorage {
        let need = (capacity as usize)
            .checked_mul(elem_size)
            .and_then(|d| d.checked_add(PAYLOAD_OFFSET + SLOTS));
        assert!(capacity.is_power_of_two() && need.is_some_and(|n| n <= segment.mapping().len()));
        MapStorage {
            segment,
            capacity,
            elem_size,
            trusted: false,
        }
    }

    /// Copies slots with plain `memcpy` from now on.
    ///
    /// # Safety
    /// The peer process follows the ring protocol: it never writes the slots
    /// this side may be copying (free slots for a producer, published and
    /// unreleased ones for a consumer), and never reads the free slots a
    /// producer is filling; nor does anything else, in this process or
    /// another, through another mapping. Otherwise a copy races with those
    /// accesses, which is undefined behaviour.
    pub(crate) unsafe fn trust_peer(&mut self) {
        self.trusted = true;
    }

    /// Whether [`MapStorage::trust_peer`] was called.
    pub(crate) fn trusts_peer(&self) -> bool {
        self.trusted
    }

    /// Start of the payload (the config block).
    #[inline]
    fn payload_ptr(&self) -> *mut u8 {
        self.segment.mapping().as_ptr().wrapping_add(PAYLOAD_OFFSET)
    }

    /// Start of slot 0.
    #[inline]
    pub(crate) fn slots_ptr(&self) -> *mut u8 {
        self.payload_ptr().wrapping_add(SLOTS)
    }

    /// The whole mapping (hostile tests).
    pub(crate) fn mapping(&self) -> &Mapping {
        self.segment.mapping()
    }
}

#[cfg(not(shm_loom))]
#[allow(
    clippy::cast_ptr_alignment,
    reason = "the payload is page-aligned and every line offset is a multiple of 128 (const-asserted)"
)]
impl MapStorage {
    /// The shared line of type `L` at payload offset `offset`.
    ///
    /// # Safety
    /// `offset` must be one of the line offsets of this module, holding an
    /// `L` (all-atomic, 128-aligned: see the module's `# Safety`).
    #[inline]
    unsafe fn line<L>(&self, offset: usize) -> &L {
        let ptr = self.payload_ptr().wrapping_add(offset).cast::<L>();
        // SAFETY: by the caller's contract the pointer is inside the mapping,
        // aligned and points at an all-atomic `L`; valid for as long as `self`
        // owns the mapping.
        unsafe { &*ptr }
    }
}

#[cfg(not(shm_loom))]
impl Storage for MapStorage {
    #[inline]
    fn producer(&self) -> &ProducerLine {
        // SAFETY: PRODUCER_LINE holds the producer's line.
        unsafe { self.line(PRODUCER_LINE) }
    }

    #[inline]
    fn consumer(&self) -> &ConsumerLine {
        // SAFETY: CONSUMER_LINE holds the consumer's line.
        unsafe { self.line(CONSUMER_LINE) }
    }

    #[inline]
    fn producer_parked(&self) -> &ParkFlag {
        // SAFETY: PRODUCER_PARKED holds the producer's park flag.
        unsafe { self.line(PRODUCER_PARKED) }
    }

    #[inline]
    fn consumer_parked(&self) -> &ParkFlag {
        // SAFETY: CONSUMER_PARKED holds the consumer's park flag.
        unsafe { self.line(CONSUMER_PARKED) }
    }

    #[inline]
    fn capacity(&self) -> u64 {
        self.capacity
    }

    #[inline]
    fn elem_size(&self) -> usize {
        self.elem_size
    }

    #[inline]
    fn write(&self, slot: u64, src: &[u8]) {
        let start = slot_range(slot, src.len(), self.capacity, self.elem_size);
        let dst = self.slots_ptr().wrapping_add(start);
        if self.trusted {
            // SAFETY:
            // - `dst .. + src.len()` is inside the mapping (slot_range checked
            //   it against capacity * elem_size, `new` checked the mapping);
            // - no reference to the shared bytes exists, and nothing else
            //   accesses them during the copy: this process by the protocol
            //   and the claims, the peer by the promise of `trust_peer`'s caller.
            unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        } else {
            // SAFETY:
            // - in bounds as above, and `src` is a private slice, which
            //   cannot overlap the slots (no reference into them exists);
            // - this process accesses slot bytes only through these atomic
            //   copies (or the trusted calls, whose callers vouch for
            //   exclusive access);
            // - no other copy of this process touches these bytes meanwhile:
            //   the protocol and the claims (see the module docs).
            unsafe { shm_sync::copy::store(dst, src) };
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn prefetch(&self, slot: u64) {
        let offset = (slot & (self.capacity - 1)) as usize * self.elem_size;
        let ptr = self.slots_ptr().wrapping_add(offset);
        // SAFETY: SSE is part of the x86_64 baseline, which is all `_mm_prefetch`
        // requires; a prefetch is a hint that never faults, even on a bad
        // address, and performs no memory access in the language's sense.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(ptr.cast());
        }
    }

    #[inline]
    fn read(&self, slot: u64, dst: &mut [u8]) {
        let start = slot_range(slot, dst.len(), self.capacity, self.elem_size);
        let src = self.slots_ptr().wrapping_add(start);
        if self.trusted {
            // SAFETY: as in `write`, copying the other way into a private buffer.
            unsafe { core::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        } else {
            // SAFETY: as in `write`.
            unsafe { shm_sync::copy::load(src, dst) };
        }
    }
}

/// Hands out `&mut [T]` / `&[T]` over slots for the trusted zero-copy API.
///
/// # Safety
/// `slot + len <= capacity`; `T` must be `size_of::<T>() == elem_size` and valid
/// for every bit pattern; the caller must hold the slots under the ring
/// protocol and trust the peer not to touch them until they are committed.
#[cfg(not(shm_loom))]
#[allow(
    clippy::mut_from_ref,
    reason = "the slots are shared memory, exclusive to the caller by the ring protocol, not by borrowing"
)]
pub(crate) unsafe fn slots_mut<T>(storage: &MapStorage, slot: u64, len: usize) -> &mut [T] {
    let start = slot_range(
        slot,
        len * storage.elem_size,
        storage.capacity,
        storage.elem_size,
    );
    // SAFETY: in bounds (checked); `slots_ptr()` is page-aligned and `start` a
    // multiple of size_of::<T>(), so aligned for T; exclusivity and validity are
    // the caller's preconditions, forwarded.
    unsafe {
        core::slice::from_raw_parts_mut(storage.slots_ptr().wrapping_add(start).cast::<T>(), len)
    }
}

/// Forwards [`Storage`] through each pointer type given (over a storage
/// type `S`), so that the ring can hold its storage borrowed or shared.
macro_rules! forward_storage {
    ($($ptr:ty),* $(,)?) => {$(
        impl<S: Storage + ?Sized> Storage for $ptr {
            fn producer(&self) -> &ProducerLine {
                (**self).producer()
            }
            fn consumer(&self) -> &ConsumerLine {
                (**self).consumer()
            }
            fn producer_parked(&self) -> &ParkFlag {
                (**self).producer_parked()
            }
            fn consumer_parked(&self) -> &ParkFlag {
                (**self).consumer_parked()
            }
            fn capacity(&self) -> u64 {
                (**self).capacity()
            }
            fn elem_size(&self) -> usize {
                (**self).elem_size()
            }
            fn write(&self, slot: u64, src: &[u8]) {
                (**self).write(slot, src);
            }
            fn read(&self, slot: u64, dst: &mut [u8]) {
                (**self).read(slot, dst);
            }
            fn prefetch(&self, slot: u64) {
                (**self).prefetch(slot);
            }
        }
    )*};
}

forward_storage!(&S, shm_sync::sync::Arc<S>);

#[cfg(all(test, not(shm_loom)))]
mod tests {
    use super::{HeapStorage, Storage};

    /// Safe code may copy into and out of one slot from several threads at
    /// once (two producers attached to one storage do): the copies are atomic
    /// per byte, so a reader sees garbage at worst, each byte from some writer.
    /// A plain `copy_nonoverlapping` here is a data race (`Miri` and `ThreadSanitizer` report it).
    #[test]
    fn concurrent_copies_into_one_slot_are_race_free() {
        let storage = HeapStorage::new(2, 64);
        std::thread::scope(|s| {
            for fill in [0x11u8, 0x22] {
                let storage = &storage;
                s.spawn(move || {
                    for _ in 0..2_000 {
                        storage.write(0, &[fill; 64]);
                    }
                });
            }
            let mut out = [0u8; 64];
            for _ in 0..2_000 {
                storage.read(0, &mut out);
                assert!(out.iter().all(|b| [0, 0x11, 0x22].contains(b)), "{out:?}");
            }
        });
    }
}
