//! # Protocol
//!
//! One writer, `N` readers, `N + 2` slots, a published word, one hazard word
//! per reader. This is Michael's hazard-pointer scheme (M. M. Michael, "Hazard
//! Pointers: Safe Memory Reclamation for Lock-Free Objects", IEEE TPDS 2004)
//! applied to slot indices instead of pointers, with the slot count chosen so
//! the writer can never run out.
//!
//! Shared words and who writes them:
//! - `published` (writer): `seq << 16 | slot`, the newest complete message; 0 = none.
//! - `hazard[r]` (reader `r`; cleared by a writer only for a dead reader, by
//!   compare-and-swap on the exact word): `epoch << 16 | slot + 1` while reader
//!   `r` copies `slot`; 0 otherwise.
//! - `slot[s].{seq, len, data}` (writer): written only while `s` is neither
//!   published nor named by any hazard.
//!
//! Writer: SeqCst fence, then pick a slot that is not the published one and
//! not in any hazard word (Acquire loads); write `data`, `len`, `seq`
//! (Relaxed); store `published` (Release). Reader: load `published`
//! (Acquire); store the hazard (Relaxed); SeqCst fence; load `published`
//! again (Acquire); if it changed, retry; else copy the slot and clear the
//! hazard (Release). Every other clear of a hazard (a reader attaching to
//! its index or dropping its handle) is a Release store too; a writer clears
//! a dead reader's hazard with a compare-and-swap whose atomicity, not its
//! ordering, is what matters (Relaxed).
//!
//! The two SeqCst fences are the only SeqCst accesses: the hazard check is a
//! store-load (Dekker) pattern, the writer storing `published` then loading
//! the hazards, the reader storing its hazard then loading `published`, and
//! only a total order over the two fences rules out both loads missing the
//! other side's store.
//!
//! Why a held slot is never overwritten: the writer overwrites slot `s` only
//! after a scan that found no hazard for it, and `s` was not current then, so
//! the writer had already published a newer word before its fence `Fw`. Take
//! reader `r`'s fence `Fr` between its hazard store for `s` and its validating
//! load. The SeqCst fences are totally ordered. If `Fr` comes first, the scan
//! (after `Fw`) sees `r`'s hazard (or its later Release clear, after which `r`
//! has finished copying): contradiction. If `Fw` comes first, the validating
//! load (after `Fr`) sees the newer `published` (sequence numbers never
//! repeat), so `r` retries instead of copying. Why a free slot always exists: at most `N` hazards and
//! the published slot are busy, and there are `N + 2` slots.
//!
//! Crashes: a writer killed between any two steps wrote only a slot nobody
//! may read, so `published` still names the last complete message (the loom
//! model stops the writer after every step). A restarted writer continues from
//! `published`. A reader killed while holding a slot pins at most that one
//! slot; it clears its hazard when it restarts with the same index, and a
//! writer clears it earlier if the reader's liveness lock is free (dead).

use shm_sync::atomic::{AtomicU64, Ordering, fence};

use crate::layout::{
    R_EPOCH, R_HAZARD, S_DATA, S_LEN, S_SEQ, Shape, W_PUBLISHED, hazard, hazard_slot, pack, unpack,
};

/// Shared state that fails validation: a hostile or broken peer wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("mailbox is corrupt: {0}")]
pub struct Corrupt(pub &'static str);

/// A message that was read: its sequence number and length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// Sequence number, 1 for the first message ever published; increases by one per publish.
    pub seq: u64,
    /// Length in bytes.
    pub len: usize,
}

/// The mailbox's words with their validated shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Words<'a> {
    w: &'a [AtomicU64],
    pub(crate) shape: Shape,
}

impl<'a> Words<'a> {
    /// `w` must hold at least `shape.total_words()` words (checked).
    pub(crate) fn new(w: &'a [AtomicU64], shape: Shape) -> Option<Words<'a>> {
        (w.len() >= shape.total_words()).then_some(Words { w, shape })
    }

    pub(crate) fn at(&self, i: usize) -> &'a AtomicU64 {
        &self.w[i]
    }

    /// The first `n` data words of `slot` (`n` at most the slot's words).
    pub(crate) fn data(&self, slot: usize, n: usize) -> &'a [AtomicU64] {
        let start = self.shape.slot(slot, S_DATA);
        &self.w[start..start + n]
    }

    pub(crate) fn published(&self) -> &'a AtomicU64 {
        self.at(W_PUBLISHED)
    }

    pub(crate) fn hazard(&self, r: usize) -> &'a AtomicU64 {
        self.at(self.shape.reader(r, R_HAZARD))
    }

    /// Starts reader `r`'s tenure: a fresh epoch, and any hold a previous
    /// holder of the index left behind released. Returns the epoch.
    pub(crate) fn attach_reader(&self, r: usize) -> u64 {
        // Relaxed: the epoch only has to differ from earlier tenures' (it
        // makes a reaping writer's compare-and-swap fail); the index is held
        // exclusively by this process (liveness lock), so no one races us.
        let epoch = (self
            .at(self.shape.reader(r, R_EPOCH))
            .fetch_add(1, Ordering::Relaxed)
            + 1)
            & ((1 << 48) - 1);
        // SYNC: Release, pairs with the Acquire loads of the writer's hazard
        // scan (`free_slot`). The previous holder of the index has let go of
        // it (it died, or cleared its hazard before unlocking); together with
        // the liveness lock passed on to us, this orders its last copy before
        // any reuse of the slot by a writer that sees the 0. No SeqCst: a
        // clear is not part of the store-load pattern (see the module docs).
        self.hazard(r).store(0, Ordering::Release);
        epoch
    }

    /// Clears reader `r`'s hazard if it is still exactly `seen` (the reader is dead).
    pub(crate) fn reap(&self, r: usize, seen: u64) -> bool {
        // Relaxed on success and failure: the exchange's atomicity is what
        // matters. It clears only the exact word `seen`, so the hazard of a
        // new tenant of the index (another epoch) is never lost. The reader
        // that stored `seen` is gone (its liveness lock is free), so there is
        // no copy of its to order before our reuse of the slot, and our own
        // next scan sees the 0 (same thread, same word). On failure we only
        // learn that the word moved on.
        self.hazard(r)
            .compare_exchange(seen, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// The writer's view of the last complete message: reads it without a hazard
/// (only the writer ever changes slots, and it is us).
pub(crate) fn last(words: &Words<'_>, out: &mut [u8]) -> Result<Option<Message>, Corrupt> {
    // SYNC: Acquire, pairs with the previous writer's store of `published`.
    let p = words.published().load(Ordering::Acquire);
    if p == 0 {
        return Ok(None);
    }
    copy_slot(words, p, out).map(Some)
}

/// Copies the slot named by published word `p` into `out`.
fn copy_slot(words: &Words<'_>, p: u64, out: &mut [u8]) -> Result<Message, Corrupt> {
    let (seq, slot) = unpack(p);
    if slot >= words.shape.slots {
        return Err(Corrupt("published slot out of range"));
    }
    // Relaxed: ordered after the Acquire load of `published` that named this slot.
    let len = words
        .at(words.shape.slot(slot, S_LEN))
        .load(Ordering::Relaxed);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > words.shape.slot_bytes() {
        return Err(Corrupt("message length exceeds the slot"));
    }
    if words
        .at(words.shape.slot(slot, S_SEQ))
        .load(Ordering::Relaxed)
        != seq
    {
        return Err(Corrupt("slot sequence differs from the published one"));
    }
    let n = len.min(out.len());
    // Relaxed loads, ordered as above. `len` and `seq` were loaded as whole
    // words above; the copy itself can tear (at any byte) only if a peer
    // breaks the hazard protocol: inconsistent then, never undefined.
    crate::raw::copy_out(words.data(slot, n.div_ceil(8)), &mut out[..n]);
    Ok(Message { seq, len })
}

/// Reads the newest message as reader `r` (with tenure `epoch`) into `out`.
pub(crate) fn read(
    words: &Words<'_>,
    r: usize,
    epoch: u64,
    out: &mut [u8],
) -> Result<Option<Message>, Corrupt> {
    loop {
        // SYNC: Acquire, pairs with the writer's Release store of `published`:
        // the slot's contents are visible once we have seen the word naming it.
        let p = words.published().load(Ordering::Acquire);
        if p == 0 {
            return Ok(None);
        }
        let (_, slot) = unpack(p);
        if slot >= words.shape.slots {
            return Err(Corrupt("published slot out of range"));
        }
        // Relaxed: ordered before the validating load by the fence below.
        words
            .hazard(r)
            .store(hazard(epoch, slot), Ordering::Relaxed);
        // SYNC: SeqCst fence, pairs with the writer's SeqCst fence in
        // `free_slot`, between its store of `published` and its hazard
        // loads. A store-load (Dekker) pattern, so it needs the total order
        // of SeqCst fences: either the scan sees our hazard store above, or
        // the load below sees the newer `published` and we retry.
        fence(Ordering::SeqCst);
        // Acquire: as for the first load.
        if words.published().load(Ordering::Acquire) != p {
            continue;
        }
        let result = copy_slot(words, p, out);
        // SYNC: Release, pairs with the Acquire loads of the writer's hazard
        // scan: our copy is complete before the writer can see the slot as free.
        words.hazard(r).store(0, Ordering::Release);
        return result.map(Some);
    }
}

/// Publishes `data` (at most the slot size). With `stop_after = Some(k)` the
/// writer stops after `k` steps, as if killed there (loom crash models): the
/// steps are choosing the slot, each chunk of data ([`COPY_CHUNK`] bytes:
/// one word under loom), and the `len` + `seq` words;
/// the store of `published` follows them. Production calls pass `None` and
/// run the very same code to its end. Returns the new sequence number, or
/// `None` if stopped.
pub(crate) fn publish(
    words: &Words<'_>,
    data: &[u8],
    stop_after: Option<usize>,
) -> Result<Option<u64>, Corrupt> {
    let shape = words.shape;
    if data.len() > shape.slot_bytes() {
        return Err(Corrupt("message larger than the slot"));
    }
    let mut steps = 0usize;
    // One step done; true if the writer is to stop here.
    let mut stop = || {
        steps += 1;
        stop_after.is_some_and(|k| steps > k)
    };
    // SYNC: Acquire, pairs with a previous (possibly killed) writer's store of `published`.
    let cur = words.published().load(Ordering::Acquire);
    let (seq, cur_slot) = unpack(cur);
    if cur != 0 && cur_slot >= shape.slots {
        return Err(Corrupt("published slot out of range"));
    }
    let slot = free_slot(words, (cur != 0).then_some(cur_slot))?;
    if stop() {
        return Ok(None);
    }
    if !copy_in(words.data(slot, data.len().div_ceil(8)), data, &mut stop) {
        return Ok(None);
    }
    let next = seq + 1;
    // Relaxed: published by the Release store of `published` below.
    words
        .at(shape.slot(slot, S_LEN))
        .store(data.len() as u64, Ordering::Relaxed);
    words
        .at(shape.slot(slot, S_SEQ))
        .store(next, Ordering::Relaxed);
    if stop() {
        return Ok(None);
    }
    // SYNC: Release, pairs with readers' Acquire loads of `published`:
    // publishes the slot's contents. Our next scan's fence follows it.
    words.published().store(pack(next, slot), Ordering::Release);
    Ok(Some(next))
}

/// A slot that is neither `current` nor held by any reader.
fn free_slot(words: &Words<'_>, current: Option<usize>) -> Result<usize, Corrupt> {
    let shape = words.shape;
    // A stack bitmap of busy slots (at most MAX_READERS + 2 of them): no allocation per publish.
    let mut busy = [0u64; (crate::layout::MAX_READERS + 2).div_ceil(64)];
    let mut mark = |s: usize| {
        if s < shape.slots {
            busy[s / 64] |= 1 << (s % 64);
        }
    };
    if let Some(c) = current {
        mark(c);
    }
    // SYNC: SeqCst fence, pairs with the reader's SeqCst fence in `read`,
    // between its hazard store and its validating load of `published`. A
    // store-load (Dekker) pattern, so it needs the total order of SeqCst
    // fences (see the module docs). It follows our store of the `published`
    // word that made every older slot non-current.
    fence(Ordering::SeqCst);
    for r in 0..shape.readers {
        // SYNC: Acquire, pairs with a reader's Release clear of its hazard:
        // a slot seen free was completely copied.
        if let Some(s) = hazard_slot(words.hazard(r).load(Ordering::Acquire)) {
            mark(s);
        }
    }
    (0..shape.slots)
        .find(|s| busy[s / 64] & (1 << (s % 64)) == 0)
        .ok_or(Corrupt("no free slot: hazard words are corrupt"))
}

/// Bytes of a message the writer copies into its slot between two steps
/// (the `mailbox.writer_mid_slot` crash point, and a stop of the loom crash
/// models): one word under loom, so the models stop the writer after every
/// word; 4 KiB otherwise, so that a large message takes a few wide copies.
pub const COPY_CHUNK: usize = if cfg!(shm_loom) { 8 } else { 4096 };

/// Stores `data` into `dst` (`data.len().div_ceil(8)` words), in memory
/// order (little-endian words), the last word zero-padded, in chunks of
/// [`COPY_CHUNK`] bytes. After each chunk: the `mailbox.writer_mid_slot`
/// crash point, then `stop()`; returns false as soon as `stop()` does (the
/// rest of the message is not written, as if the writer had been killed).
#[inline]
fn copy_in(dst: &[AtomicU64], data: &[u8], mut stop: impl FnMut() -> bool) -> bool {
    for (i, chunk) in data.chunks(COPY_CHUNK).enumerate() {
        let first = i * COPY_CHUNK / 8;
        // Relaxed stores: published by the Release store of `published` in `publish`.
        crate::raw::copy_in(&dst[first..first + chunk.len().div_ceil(8)], chunk);
        crate::crash_point!("mailbox.writer_mid_slot");
        if stop() {
            return false;
        }
    }
    true
}

/// The byte layout and protocol of the mailbox: the text of
/// `docs/protocol/shm-mailbox.md` in the source repository (the crate's
/// `PROTOCOL.md` links to it, and the packaged crate carries a copy), included
/// here so it is readable with the API docs.
#[doc = ""]
// Rustdoc targets for the document's reference links: the first definition of
// a label wins, so these take the place of the repository-relative ones at
// its end.
#[doc = "[segment-header]: https://docs.rs/shm-segment/latest/shm_segment/protocol/index.html#segment-layout-crate-shm-segment"]
#[doc = "[sigbus-guard]: https://docs.rs/shm-segment/latest/shm_segment/protocol/index.html#truncation-of-named-objects-the-sigbus-guard"]
#[doc = "[type-fingerprint]: https://docs.rs/shm-segment/latest/shm_segment/protocol/index.html#type-fingerprint-type_size-type_align-type_id"]
#[doc = ""]
// The text is Markdown written for a repository browser: `x[i]` there is not
// an intra-doc link, and identifiers are not always in backticks.
#[allow(rustdoc::broken_intra_doc_links, clippy::doc_markdown)]
#[doc = include_str!("../PROTOCOL.md")]
pub mod document {}
