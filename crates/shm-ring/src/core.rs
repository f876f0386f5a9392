//! The ring algorithm, generic over [`Storage`] and over how a side blocks ([`Park`]).
//!
//! # Protocol
//!
//! A Lamport single-producer single-consumer ring with free-running counters
//! (as in the Linux `kfifo` and Rigtorp's `SPSCQueue`), each side caching the
//! other's counter:
//!
//! | field             | written by | meaning                                           |
//! |-------------------|------------|---------------------------------------------------|
//! | `tail`            | producer   | elements ever published (slot `tail % capacity`)  |
//! | `head`            | consumer   | elements ever consumed                            |
//! | `producer_parked` | producer   | 1 while the producer waits for space              |
//! | `consumer_parked` | consumer   | 1 while the consumer waits for data               |
//!
//! Each field has its own 128-byte line: the counters are written on every
//! operation, the flags only when a side parks, so reading the peer's flag
//! after each commit is a cache hit in the common case. The producer's line
//! also carries `inline_seq` and `inline`, a seqlock-protected copy of the last
//! element sent on its own (elements up to [`INLINE_BYTES`]): a consumer that
//! polls `tail` gets such an element in the same cache-line transfer instead
//! of fetching the slot's line afterwards ([`RawProducer::commit_one`],
//! [`RawConsumer::read_one`]). The slot always holds the element too.
//!
//! Publication: the producer copies elements into free slots, then stores
//! `tail` with Release; the consumer loads `tail` with Acquire, copies the
//! elements out, then stores `head` with Release; the producer's Acquire load
//! of `head` orders those reads before it reuses the slots.
//!
//! Each side keeps its own counter in a private shadow and never reads it back
//! from shared memory while running, and it checks every value of the peer's
//! counter against the shadow: `head` must satisfy `cached_head <= head <= tail`
//! and `tail` must satisfy `cached_tail <= tail <= head + capacity`. Anything
//! else is [`Corrupt`]. Since every slot index is `counter & (capacity - 1)`,
//! no value a peer writes can move an access outside the slot area.
//!
//! Parking (no lost wake-ups): a side that finds nothing to do stores
//! `parked = 1`, issues a SeqCst fence, and checks the peer's counter again
//! before blocking on its eventfd. The peer stores its counter, issues a SeqCst
//! fence, and then reads `parked`, writing the eventfd only when it is 1. This
//! is the store-buffer (Dekker) pattern: without the fences both sides could
//! read the old value of the other's store (x86 store buffers do exactly that),
//! the waiter would sleep on an empty ring while the peer skipped the wake-up.
//! With a SeqCst fence between each side's store and load, the two fences are
//! totally ordered, and whichever comes second sees the other side's store:
//! either the waiter sees the new counter and does not sleep, or the peer sees
//! `parked = 1` and writes the eventfd (whose counter keeps the wake-up even if
//! it arrives before the waiter blocks). `tests/loom.rs` checks this.
//!
//! The handshake assumes the flags hold what their owners stored. A peer (or
//! any process with the mapping) that clears a `parked` flag makes the waker
//! skip its wake-up, so a park never sleeps unbounded: the OS parker returns
//! after `PARK_RECHECK` (50 ms) without a wake-up, and the waiter re-checks
//! the peer's counter and parks again. A lost flag costs that delay, not a hang.
//!
//! Crashes: a side killed between copying and publishing leaves its counter at
//! the old value, so the copy is simply not there (producer) or is delivered
//! again (consumer). A restarted side re-reads its own counter from shared
//! memory ([`RawProducer::attach`] / [`RawConsumer::attach`]) and resumes there.
//! Counters are single aligned 8-byte stores, so they are never torn.

use std::time::{Duration, Instant};

use shm_sync::atomic::{Ordering, fence};

use crate::storage::{INLINE_BYTES, INLINE_WORDS, Storage};

/// A value read from shared memory broke the ring's invariants: the peer is
/// buggy or hostile, or the memory was overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ring corrupt: {field} is {found}, must lie in {low}..={high}")]
pub struct Corrupt {
    /// The shared field.
    pub field: &'static str,
    /// The value read.
    pub found: u64,
    /// Lowest acceptable value.
    pub low: u64,
    /// Highest acceptable value.
    pub high: u64,
}

/// Why a ring operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The shared counters are inconsistent (a buggy or hostile peer).
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// The peer hung up (its socket closed: it exited or was killed) and nothing is left to read.
    #[error("the peer hung up")]
    Disconnected,
    /// The timeout passed first.
    #[error("timed out")]
    Timeout,
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: rustix::io::Errno,
    },
}

/// How a side blocks until its peer wakes it.
///
/// The wake-up depends on a flag in shared memory that anyone with the
/// mapping can clear, so an implementation for untrusted peers should return
/// `Ok` now and then even when nobody woke it (the OS one does after
/// `PARK_RECHECK`): the wait loop then re-checks the counters and parks
/// again, and a lost wake-up costs a delay instead of a hang.
pub trait Park {
    /// Blocks until woken (possibly spuriously, for instance after a bounded
    /// sleep), the deadline passes ([`RingError::Timeout`]) or the peer is
    /// gone ([`RingError::Disconnected`]).
    fn park(&mut self, deadline: Option<Instant>) -> Result<(), RingError>;
}

/// The producer half of the algorithm.
#[derive(Debug)]
pub struct RawProducer<S: Storage> {
    storage: S,
    /// Private shadow of `producer.tail`: authoritative.
    tail: u64,
    /// Last validated `consumer.head`.
    head: u64,
    capacity: u64,
}

/// The consumer half of the algorithm.
#[derive(Debug)]
pub struct RawConsumer<S: Storage> {
    storage: S,
    /// Private shadow of `consumer.head`: authoritative.
    head: u64,
    /// Last validated `producer.tail`.
    tail: u64,
    capacity: u64,
    /// Whether the producer's line was loaded by the last `refresh` and nothing
    /// was released since: reading its inline copy is then a cache hit.
    fresh: bool,
}

#[inline]
fn check(field: &'static str, found: u64, low: u64, high: u64) -> Result<u64, Corrupt> {
    if (low..=high).contains(&found) {
        Ok(found)
    } else {
        Err(Corrupt {
            field,
            found,
            low,
            high,
        })
    }
}

/// `elem` (at most [`INLINE_BYTES`]) as native-endian words, the last one
/// zero-padded. Whole words are fixed-size copies, so once inlined for a
/// given element size this is a few register moves, not a `memcpy` per word.
#[inline]
fn pack_words(elem: &[u8]) -> [u64; INLINE_WORDS] {
    let mut words = [0u64; INLINE_WORDS];
    let mut chunks = elem.chunks_exact(8);
    for (word, chunk) in words.iter_mut().zip(&mut chunks) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        *word = u64::from_ne_bytes(bytes);
    }
    let rest = chunks.remainder();
    if let (false, Some(word)) = (rest.is_empty(), words.get_mut(elem.len() / 8)) {
        let mut bytes = [0u8; 8];
        bytes[..rest.len()].copy_from_slice(rest);
        *word = u64::from_ne_bytes(bytes);
    }
    words
}

/// The inverse of [`pack_words`]: fills `dst` (at most [`INLINE_BYTES`]) from `words`.
#[inline]
fn unpack_words(words: &[u64; INLINE_WORDS], dst: &mut [u8]) {
    let whole = dst.len() / 8;
    let mut chunks = dst.chunks_exact_mut(8);
    for (chunk, word) in (&mut chunks).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let rest = chunks.into_remainder();
    if let Some(word) = words.get(whole) {
        let len = rest.len();
        rest.copy_from_slice(&word.to_ne_bytes()[..len]);
    }
}

/// Largest counter value a side accepts when it attaches. A ring moving a
/// billion elements a second takes 292 years to get there; the bound keeps
/// every later `counter + n` far from overflowing, whatever a peer wrote.
const MAX_COUNTER: u64 = 1 << 63;

/// Reads both counters when a side (re)attaches and checks
/// `head <= tail <= head + capacity` and `tail <= MAX_COUNTER`.
fn attach_counters<S: Storage>(storage: &S) -> Result<(u64, u64), Corrupt> {
    // SYNC: Acquire, pairs with the Release stores of `head` / `tail` by the
    // current peer or by our own previous incarnation; slots they cover are settled.
    let head = storage.consumer().head.load(Ordering::Acquire);
    // SYNC: as above.
    let tail = storage.producer().tail.load(Ordering::Acquire);
    check("head", head, 0, MAX_COUNTER)?;
    let high = head.saturating_add(storage.capacity()).min(MAX_COUNTER);
    check("tail", tail, head, high)?;
    Ok((head, tail))
}

impl<S: Storage> RawProducer<S> {
    /// Takes the producer side, resuming at the `tail` found in storage.
    ///
    /// Takes no claim: nothing stops a second `attach` on the same storage
    /// (the ring then delivers wrong data; [`Storage`] implementations stay
    /// sound). [`crate::Producer::open`] claims the end first.
    pub fn attach(storage: S) -> Result<RawProducer<S>, Corrupt> {
        let (head, tail) = attach_counters(&storage)?;
        // Relaxed: a stale 1 left by a killed producer only costs the consumer a spurious wake-up.
        storage.producer_parked().parked.store(0, Ordering::Relaxed);
        // Relaxed: a predecessor killed after storing `inline_seq = n + 1` but before
        // `tail = n + 1` left a copy of an element that was never published. This
        // store is ordered before our first Release store of `tail`, so a consumer
        // that sees element `n` from us sees 0 (or our own later value) here.
        storage.producer().inline_seq.store(0, Ordering::Relaxed);
        let capacity = storage.capacity();
        Ok(RawProducer {
            storage,
            tail,
            head,
            capacity,
        })
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage, to change how it copies (`MapStorage::trust_peer`).
    #[cfg(not(shm_loom))]
    pub(crate) fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Elements published so far (the shared `tail`).
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    #[inline]
    fn refresh(&mut self) -> Result<u64, Corrupt> {
        // SYNC: Acquire, pairs with the Release store of `head` in
        // `RawConsumer::release`: the consumer's copies out of the slots it
        // released happen before we overwrite them.
        let head = self.storage.consumer().head.load(Ordering::Acquire);
        self.head = check("head", head, self.head, self.tail)?;
        Ok(self.free_cached())
    }

    #[inline]
    fn free_cached(&self) -> u64 {
        self.capacity - (self.tail - self.head)
    }

    /// Free slots, reloading the consumer's `head` first if the cache says fewer than `want`.
    #[inline]
    pub fn free(&mut self, want: u64) -> Result<u64, Corrupt> {
        let free = self.free_cached();
        if free >= want.min(self.capacity) && free > 0 {
            return Ok(free);
        }
        self.refresh()
    }

    /// The contiguous free run at the tail: `(first_slot, len)` with `len <= want`
    /// (0 when full).
    #[inline]
    pub fn reserve(&mut self, want: u64) -> Result<(u64, u64), Corrupt> {
        self.reserve_cached(want, want)
    }

    /// Like [`RawProducer::reserve`]`(max)`, but reloads the consumer's `head`
    /// only when the cache shows fewer than `reload_below` free slots.
    #[inline]
    pub fn reserve_cached(&mut self, reload_below: u64, max: u64) -> Result<(u64, u64), Corrupt> {
        let free = self.free(reload_below)?;
        let slot = self.tail & (self.capacity - 1);
        Ok((slot, free.min(self.capacity - slot).min(max)))
    }

    /// Copies bytes into slots (see [`Storage::write`]).
    #[inline]
    pub fn write(&self, slot: u64, src: &[u8]) {
        self.storage.write(slot, src);
    }

    /// Publishes `n` reserved elements. Returns true when the consumer is
    /// parked and must be woken (write its eventfd).
    ///
    /// # Panics
    /// If `n` exceeds the free slots last seen (a caller bug).
    #[inline]
    pub fn commit(&mut self, n: u64) -> bool {
        assert!(
            n <= self.free_cached(),
            "commit of {n} elements beyond the free space"
        );
        if n == 0 {
            return false;
        }
        self.tail += n;
        // SYNC: Release, pairs with the Acquire load of `tail` in
        // `RawConsumer::refresh`; publishes the slot writes.
        self.storage
            .producer()
            .tail
            .store(self.tail, Ordering::Release);
        // SYNC: SeqCst fence between our store of `tail` and our load of
        // `consumer.parked`, paired with the SeqCst fence in the consumer's park
        // path between its store of `parked` and its reload of `tail` (module docs).
        fence(Ordering::SeqCst);
        // Relaxed: the fence above orders it; a stale 1 only costs a spurious wake-up.
        self.storage
            .consumer_parked()
            .parked
            .load(Ordering::Relaxed)
            != 0
    }

    /// Publishes one reserved element whose bytes `elem` are already in its slot.
    /// An element of at most [`INLINE_BYTES`] bytes is also copied into the
    /// producer's line (see [`RawConsumer::read_one`]). Returns what [`RawProducer::commit`] returns.
    ///
    /// # Panics
    /// If no slot was free (a caller bug).
    #[inline]
    pub fn commit_one(&mut self, elem: &[u8]) -> bool {
        self.commit_one_marked(elem, true)
    }

    /// [`RawProducer::commit_one`] without step 1 of the seqlock write (the
    /// `inline_seq = 0` mark before the words are rewritten): a deliberately
    /// broken producer, the negative control of the loom model
    /// `inline_copy_is_never_torn`.
    #[cfg(shm_loom)]
    #[doc(hidden)]
    pub fn commit_one_unmarked(&mut self, elem: &[u8]) -> bool {
        self.commit_one_marked(elem, false)
    }

    #[inline]
    fn commit_one_marked(&mut self, elem: &[u8], mark: bool) -> bool {
        if elem.len() <= INLINE_BYTES && self.free_cached() > 0 {
            let line = self.storage.producer();
            let words = pack_words(elem);
            if mark {
                // Relaxed: ordered before the word stores by the Release fence below.
                line.inline_seq.store(0, Ordering::Relaxed);
            }
            // SYNC: Release fence, pairs with the Acquire fence in
            // `RawConsumer::read_one`: a consumer that reads any word stored
            // below sees `inline_seq` 0 (or a later value) when it checks again.
            fence(Ordering::Release);
            for (cell, word) in line.inline.iter().zip(&words[..elem.len().div_ceil(8)]) {
                // Relaxed: published by the Release store of `inline_seq` below.
                cell.store(*word, Ordering::Relaxed);
            }
            // SYNC: Release, pairs with the Acquire load of `inline_seq` in
            // `RawConsumer::read_one`; publishes the words. It precedes the
            // store of `tail` in `commit`, so a consumer that sees the new
            // `tail` and then loads `inline_seq` reads this value or a later one.
            line.inline_seq.store(self.tail + 1, Ordering::Release);
        }
        self.commit(1)
    }

    /// Waits until at least `want.min(capacity)` slots are free: spins for `spin`,
    /// then parks. Returns the free count.
    pub fn wait<P: Park>(
        &mut self,
        want: u64,
        spin: Duration,
        park: &mut P,
        deadline: Option<Instant>,
    ) -> Result<u64, RingError> {
        let want = want.clamp(1, self.capacity);
        wait_loop(self, want, spin, park, deadline)
    }
}

impl<S: Storage> RawConsumer<S> {
    /// Takes the consumer side, resuming at the `head` found in storage.
    ///
    /// Takes no claim: nothing stops a second `attach` on the same storage
    /// (the ring then delivers wrong data; [`Storage`] implementations stay
    /// sound). [`crate::Consumer::open`] claims the end first.
    pub fn attach(storage: S) -> Result<RawConsumer<S>, Corrupt> {
        let (head, tail) = attach_counters(&storage)?;
        // Relaxed: a stale 1 left by a killed consumer only costs a spurious wake-up.
        storage.consumer_parked().parked.store(0, Ordering::Relaxed);
        let capacity = storage.capacity();
        Ok(RawConsumer {
            storage,
            head,
            tail,
            capacity,
            fresh: false,
        })
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage, to change how it copies (`MapStorage::trust_peer`).
    #[cfg(not(shm_loom))]
    pub(crate) fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Elements consumed so far (the shared `head`).
    pub fn position(&self) -> u64 {
        self.head
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    #[inline]
    fn refresh(&mut self) -> Result<u64, Corrupt> {
        // SYNC: Acquire, pairs with the Release store of `tail` in
        // `RawProducer::commit`; makes the published slot contents visible.
        let tail = self.storage.producer().tail.load(Ordering::Acquire);
        let high = self.head.saturating_add(self.capacity);
        self.tail = check("tail", tail, self.tail, high)?;
        self.fresh = true;
        Ok(self.tail - self.head)
    }

    /// Elements ready, reloading the producer's `tail` only if the cache says none.
    #[inline]
    pub fn available(&mut self) -> Result<u64, Corrupt> {
        match self.tail - self.head {
            0 => {
                // Start fetching the next slot's line while `tail` is loaded, so a
                // busy-polling consumer pays one cross-core transfer, not two.
                // Small elements come with `tail` (`read_one`); prefetching their
                // slot would only take the line from the producer, who writes it next.
                if self.storage.elem_size() > INLINE_BYTES {
                    self.storage.prefetch(self.head);
                }
                self.refresh()
            }
            n => Ok(n),
        }
    }

    /// The contiguous run of ready elements at the head: `(first_slot, len)`, `len <= want`.
    #[inline]
    pub fn peek(&mut self, want: u64) -> Result<(u64, u64), Corrupt> {
        let ready = self.available()?;
        let slot = self.head & (self.capacity - 1);
        Ok((slot, ready.min(self.capacity - slot).min(want)))
    }

    /// Like [`RawConsumer::peek`], but reloads the producer's `tail` first
    /// even when the cache shows elements ready.
    pub fn peek_fresh(&mut self, want: u64) -> Result<(u64, u64), Corrupt> {
        let ready = self.refresh()?;
        let slot = self.head & (self.capacity - 1);
        Ok((slot, ready.min(self.capacity - slot).min(want)))
    }

    /// Copies bytes out of slots (see [`Storage::read`]).
    #[inline]
    pub fn read(&self, slot: u64, dst: &mut [u8]) {
        self.storage.read(slot, dst);
    }

    /// Copies the element at the head (which `peek` showed ready) into `dst`,
    /// which must be one element long. Right after `peek` loaded the producer's
    /// line, and when that line carries this element (`inline_seq == head + 1`,
    /// checked before and after copying the words, as a seqlock reader does),
    /// the bytes come from there; otherwise from the slot, which always holds them.
    #[inline]
    pub fn read_one(&self, slot: u64, dst: &mut [u8]) {
        let want = self.head + 1;
        if self.fresh
            && self.tail > self.head
            && dst.len() <= INLINE_BYTES
            && dst.len() == self.storage.elem_size()
        {
            let line = self.storage.producer();
            // SYNC: Acquire, pairs with the Release store of `inline_seq` in
            // `RawProducer::commit_one`; makes the words it covers visible.
            if line.inline_seq.load(Ordering::Acquire) == want {
                let mut words = [0u64; INLINE_WORDS];
                let used = dst.len().div_ceil(8);
                for (word, cell) in words.iter_mut().zip(&line.inline).take(used) {
                    // Relaxed: checked by the second load of `inline_seq` below.
                    *word = cell.load(Ordering::Relaxed);
                }
                // SYNC: Acquire fence, pairs with the Release fence in
                // `RawProducer::commit_one`: if any word came from a later
                // rewrite, the load below sees that rewrite's 0 or a later value.
                fence(Ordering::Acquire);
                // Relaxed: ordered after the word loads by the fence above.
                if line.inline_seq.load(Ordering::Relaxed) == want {
                    unpack_words(&words, dst);
                    return;
                }
            }
        }
        self.storage.read(slot, dst);
    }

    /// Frees `n` consumed elements. Returns true when the producer is parked
    /// and must be woken.
    ///
    /// # Panics
    /// If `n` exceeds the elements last seen ready (a caller bug).
    #[inline]
    pub fn release(&mut self, n: u64) -> bool {
        assert!(
            n <= self.tail - self.head,
            "release of {n} elements beyond the ready ones"
        );
        if n == 0 {
            return false;
        }
        self.fresh = false;
        self.head += n;
        // SYNC: Release, pairs with the Acquire load of `head` in
        // `RawProducer::refresh`; our slot reads happen before the producer reuses them.
        self.storage
            .consumer()
            .head
            .store(self.head, Ordering::Release);
        // SYNC: SeqCst fence between our store of `head` and our load of
        // `producer.parked`, paired with the producer's park-path fence.
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence; a stale 1 only costs a spurious wake-up.
        self.storage
            .producer_parked()
            .parked
            .load(Ordering::Relaxed)
            != 0
    }

    /// Waits until at least one element is ready: spins for `spin`, then parks.
    /// Returns the ready count. Elements published before the peer hung up are
    /// still returned; [`RingError::Disconnected`] comes only once none is left.
    pub fn wait<P: Park>(
        &mut self,
        spin: Duration,
        park: &mut P,
        deadline: Option<Instant>,
    ) -> Result<u64, RingError> {
        wait_loop(self, 1, spin, park, deadline)
    }
}

/// What the shared wait loop needs from each side.
trait Side {
    /// Reloads the peer's counter; returns how much work is possible.
    fn poll_ready(&mut self) -> Result<u64, Corrupt>;
    /// Work possible according to the cache (no shared read).
    fn cached_ready(&self) -> u64;
    /// Stores our `parked` flag.
    fn set_parked(&self, parked: bool);
}

impl<S: Storage> Side for RawProducer<S> {
    fn poll_ready(&mut self) -> Result<u64, Corrupt> {
        self.refresh()
    }
    fn cached_ready(&self) -> u64 {
        self.free_cached()
    }
    fn set_parked(&self, parked: bool) {
        // Relaxed: ordered before the reload of `head` by the SeqCst fence in `wait_loop`.
        self.storage
            .producer_parked()
            .parked
            .store(u32::from(parked), Ordering::Relaxed);
    }
}

impl<S: Storage> Side for RawConsumer<S> {
    fn poll_ready(&mut self) -> Result<u64, Corrupt> {
        self.refresh()
    }
    fn cached_ready(&self) -> u64 {
        self.tail - self.head
    }
    fn set_parked(&self, parked: bool) {
        // Relaxed: ordered before the reload of `tail` by the SeqCst fence in `wait_loop`.
        self.storage
            .consumer_parked()
            .parked
            .store(u32::from(parked), Ordering::Relaxed);
    }
}

fn wait_loop<D: Side, P: Park>(
    side: &mut D,
    want: u64,
    spin: Duration,
    park: &mut P,
    deadline: Option<Instant>,
) -> Result<u64, RingError> {
    if side.cached_ready() >= want {
        return Ok(side.cached_ready());
    }
    loop {
        if let Some(n) = spin_until(side, want, spin)? {
            return Ok(n);
        }
        side.set_parked(true);
        announce_fence();
        let ready = side.poll_ready();
        if !matches!(ready, Ok(n) if n < want) {
            side.set_parked(false);
            return ready.map_err(RingError::from);
        }
        crate::crash_point!("ring.parked");
        let parked = park.park(deadline);
        side.set_parked(false);
        match parked {
            Ok(()) => {}
            Err(RingError::Timeout | RingError::Disconnected) => {
                let n = side.poll_ready()?;
                return if n >= want { Ok(n) } else { parked.map(|()| n) };
            }
            Err(e) => return Err(e),
        }
    }
}

/// The waiter's half of the store-buffer handshake.
fn announce_fence() {
    // SYNC: SeqCst fence between our store of `parked` and our reload of the
    // peer's counter; pairs with the fence in `RawProducer::commit` /
    // `RawConsumer::release` (module docs: one of the two sides must see the
    // other's store).
    fence(Ordering::SeqCst);
}

macro_rules! park_api {
    ($ty:ident, $what:literal) => {
        impl<S: Storage> $ty<S> {
            /// Announces that this side is about to block (`parked = 1`, SeqCst
            /// fence) and checks the peer's counter once more. Returns the work
            /// now possible; if it is 0 the caller may block on its eventfd and
            /// must call `park_end` when it wakes. Otherwise `parked` is already cleared.
            #[doc = $what]
            pub fn park_begin(&mut self) -> Result<u64, Corrupt> {
                self.set_parked(true);
                announce_fence();
                let ready = self.poll_ready();
                if !matches!(ready, Ok(0)) {
                    self.set_parked(false);
                }
                ready
            }

            /// Clears `parked` after blocking.
            pub fn park_end(&self) {
                self.set_parked(false);
            }
        }
    };
}
park_api!(RawProducer, "Work means free slots.");
park_api!(RawConsumer, "Work means ready elements.");

/// Polls the peer's counter for up to `spin`; `Some(n)` once `n >= want`.
fn spin_until<D: Side>(side: &mut D, want: u64, spin: Duration) -> Result<Option<u64>, Corrupt> {
    let n = side.poll_ready()?;
    if n >= want {
        return Ok(Some(n));
    }
    if spin.is_zero() {
        return Ok(None);
    }
    let end = Instant::now() + spin;
    let mut round = 0u32;
    loop {
        for _ in 0..64 {
            shm_sync::hint::spin_loop();
            let n = side.poll_ready()?;
            if n >= want {
                return Ok(Some(n));
            }
        }
        round += 1;
        if round.is_multiple_of(4) && Instant::now() >= end {
            return Ok(None);
        }
    }
}

#[cfg(all(test, not(shm_loom)))]
mod tests {
    use super::*;
    use crate::storage::HeapStorage;

    struct NoPark;
    impl Park for NoPark {
        fn park(&mut self, _: Option<Instant>) -> Result<(), RingError> {
            Err(RingError::Timeout)
        }
    }

    #[test]
    fn corrupt_tail_is_reported() {
        let sut = HeapStorage::new(4, 8);
        sut.producer().tail.store(9, Ordering::Relaxed);
        assert!(matches!(
            RawConsumer::attach(&sut),
            Err(Corrupt {
                field: "tail",
                found: 9,
                ..
            })
        ));
        sut.producer().tail.store(2, Ordering::Relaxed);
        let mut consumer = RawConsumer::attach(&sut).unwrap();
        assert_eq!(consumer.available().unwrap(), 2);
        consumer.release(2);
        sut.producer().tail.store(1, Ordering::Relaxed);
        assert!(matches!(
            consumer.available(),
            Err(Corrupt {
                field: "tail",
                found: 1,
                low: 2,
                high: 6
            })
        ));
    }

    #[test]
    fn counters_near_overflow_are_refused_at_attach() {
        let sut = HeapStorage::starting_at(4, 8, u64::MAX - 1, u64::MAX - 1);
        assert!(matches!(
            RawProducer::attach(&sut),
            Err(Corrupt { field: "head", .. })
        ));
        let sut = HeapStorage::starting_at(4, 8, MAX_COUNTER - 1, MAX_COUNTER + 1);
        assert!(matches!(
            RawConsumer::attach(&sut),
            Err(Corrupt { field: "tail", .. })
        ));
    }

    #[test]
    fn corrupt_head_is_reported() {
        let sut = HeapStorage::new(4, 8);
        let mut producer = RawProducer::attach(&sut).unwrap();
        let (_, n) = producer.reserve(4).unwrap();
        assert_eq!(n, 4);
        producer.commit(4);
        sut.consumer().head.store(5, Ordering::Relaxed);
        assert!(matches!(
            producer.free(1),
            Err(Corrupt {
                field: "head",
                found: 5,
                ..
            })
        ));
    }

    #[test]
    fn single_elements_come_from_the_inline_copy_or_the_slot() {
        let sut = HeapStorage::new(4, 8);
        let mut producer = RawProducer::attach(&sut).unwrap();
        let mut consumer = RawConsumer::attach(&sut).unwrap();
        let (slot, _) = producer.reserve(1).unwrap();
        producer.write(slot, &7u64.to_ne_bytes());
        producer.commit_one(&7u64.to_ne_bytes());
        assert_eq!(sut.producer().inline_seq.load(Ordering::Relaxed), 1);
        // The copy is what the consumer reads: make it differ from the slot to tell.
        sut.producer().inline[0].store(8, Ordering::Relaxed);
        let (slot, n) = consumer.peek(1).unwrap();
        assert_eq!(n, 1);
        let mut got = [0u8; 8];
        consumer.read_one(slot, &mut got);
        assert_eq!(u64::from_ne_bytes(got), 8);
        consumer.release(1);
        // A copy for another element number is ignored: the slot is read.
        let (slot, _) = producer.reserve(1).unwrap();
        producer.write(slot, &9u64.to_ne_bytes());
        producer.commit(1);
        let (slot, _) = consumer.peek(1).unwrap();
        consumer.read_one(slot, &mut got);
        assert_eq!(u64::from_ne_bytes(got), 9);
    }

    #[test]
    fn inline_words_round_trip_every_length() {
        for len in 0..=INLINE_BYTES {
            let elem: Vec<u8> = (1..=len as u8).collect();
            let sut = pack_words(&elem);
            let padded: Vec<u8> = sut.iter().flat_map(|w| w.to_ne_bytes()).collect();
            assert_eq!(&padded[..len], &elem[..], "len {len}");
            assert!(padded[len..].iter().all(|&b| b == 0), "len {len}: padding");
            let mut back = vec![0xffu8; len];
            unpack_words(&sut, &mut back);
            assert_eq!(back, elem, "len {len}");
        }
    }

    #[test]
    fn odd_sized_elements_come_from_the_inline_copy() {
        let sut = HeapStorage::new(4, 13);
        let mut producer = RawProducer::attach(&sut).unwrap();
        let mut consumer = RawConsumer::attach(&sut).unwrap();
        let elem: [u8; 13] = core::array::from_fn(|i| i as u8 + 1);
        let (slot, _) = producer.reserve(1).unwrap();
        producer.write(slot, &[0xee; 13]);
        producer.commit_one(&elem);
        let (slot, n) = consumer.peek(1).unwrap();
        assert_eq!(n, 1);
        let mut got = [0u8; 13];
        consumer.read_one(slot, &mut got);
        assert_eq!(got, elem, "the copy, not the slot");
    }

    #[test]
    fn attach_clears_a_dead_producers_inline_copy() {
        let sut = HeapStorage::new(4, 8);
        // A producer killed after announcing element 0 inline, before publishing it.
        sut.producer().inline[0].store(99, Ordering::Relaxed);
        sut.producer().inline_seq.store(1, Ordering::Relaxed);
        let mut producer = RawProducer::attach(&sut).unwrap();
        let mut consumer = RawConsumer::attach(&sut).unwrap();
        let (slot, _) = producer.reserve(1).unwrap();
        producer.write(slot, &2u64.to_ne_bytes());
        producer.commit(1);
        let (slot, _) = consumer.peek(1).unwrap();
        let mut got = [0u8; 8];
        consumer.read_one(slot, &mut got);
        assert_eq!(u64::from_ne_bytes(got), 2);
    }

    #[test]
    fn wait_times_out_when_empty() {
        let sut = HeapStorage::new(4, 8);
        let mut consumer = RawConsumer::attach(&sut).unwrap();
        let r = consumer.wait(Duration::from_micros(50), &mut NoPark, None);
        assert!(matches!(r, Err(RingError::Timeout)));
        assert_eq!(sut.consumer_parked().parked.load(Ordering::Relaxed), 0);
    }
}
