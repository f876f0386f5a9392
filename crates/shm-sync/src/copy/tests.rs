//! The copies against a plain copy, at every alignment and at every length
//! up to 300 and around [`WIDE_MIN`], and under a racing writer.

use super::{WIDE_MIN, copy_within, load, load_bytewise, load_words, store, store_words};
use crate::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// Lengths to check: every one up to 300, every one around [`WIDE_MIN`]
/// (both paths), then lengths whose vector blocks leave a tail of 104 and
/// 127 bytes, 4 KiB, and either side of the vector loop's upper limit.
fn lengths() -> Vec<usize> {
    if cfg!(miri) {
        return (0..=20).chain([WIDE_MIN + 9]).collect();
    }
    (0..=300)
        .chain(WIDE_MIN - 16..=WIDE_MIN + 16)
        .chain([1000, 4096, 4096 + 127, 65535, 65536])
        .collect()
}

/// Alignments of the shared side (mod 16) and the private side (mod 8) for a length.
fn offsets(len: usize) -> (usize, usize) {
    if len > WIDE_MIN + 16 || cfg!(miri) {
        (3, 2)
    } else {
        (16, 8)
    }
}

/// A byte pattern that differs from its own shifts, so a copy off by a few
/// bytes is caught.
fn pattern(i: usize, salt: u8) -> u8 {
    ((i % 251) as u8).wrapping_mul(7) ^ salt
}

/// Shared words (8-aligned) with `len` bytes of room after 16 bytes of
/// slack and 16 bytes of guard.
fn shared(len: usize) -> Vec<u64> {
    vec![0u64; (len + 32).div_ceil(8)]
}

fn bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

#[test]
fn store_matches_a_plain_copy_at_every_alignment_and_length() {
    for len in lengths() {
        let (shared_offsets, private_offsets) = offsets(len);
        let mut words = shared(len);
        let private: Vec<u8> = (0..len + 8).map(|i| pattern(i, 0x5a)).collect();
        for so in 0..shared_offsets {
            for po in 0..private_offsets {
                words.fill(0);
                let src = &private[po..po + len];
                let base = words.as_mut_ptr().cast::<u8>();
                // SAFETY: `so + len <= 16 + len` fits `words`, which nothing
                // else references while the copy runs.
                unsafe { store(base.wrapping_add(so), src) };
                let mut expected = vec![0u8; words.len() * 8];
                expected[so..so + len].copy_from_slice(src);
                assert!(
                    bytes(&words) == expected,
                    "store: shared offset {so}, private offset {po}, len {len}"
                );
            }
        }
    }
}

#[test]
fn load_matches_a_plain_copy_at_every_alignment_and_length() {
    // SAFETY: `check_load` passes a pointer valid for `dst.len()` bytes of
    // reads, which nothing else accesses during the copy.
    check_load("load", |src, dst| unsafe { load(src, dst) });
}

#[test]
fn load_bytewise_matches_a_plain_copy_at_every_alignment_and_length() {
    // SAFETY: as above.
    check_load("load_bytewise", |src, dst| unsafe {
        load_bytewise(src, dst);
    });
}

/// Checks `copy` (one of the loads: `src` valid for `dst.len()` bytes of
/// reads, accessed by nothing else) against a plain copy.
fn check_load(name: &str, copy: impl Fn(*const u8, &mut [u8])) {
    for len in lengths() {
        let (shared_offsets, private_offsets) = offsets(len);
        let mut words = shared(len);
        for (i, w) in words.iter_mut().enumerate() {
            *w = u64::from_ne_bytes(core::array::from_fn(|b| pattern(i * 8 + b, 0x33)));
        }
        let plain = bytes(&words);
        let mut private = vec![0u8; len + 16];
        for so in 0..shared_offsets {
            for po in 0..private_offsets {
                private.fill(0xee);
                let base = words.as_ptr().cast::<u8>();
                // `so + len` fits `words`, only read while the copy runs.
                copy(base.wrapping_add(so), &mut private[po..po + len]);
                let ok = private[po..po + len] == plain[so..so + len]
                    && private[..po].iter().all(|b| *b == 0xee)
                    && private[po + len..].iter().all(|b| *b == 0xee);
                assert!(
                    ok,
                    "{name}: shared offset {so}, private offset {po}, len {len}"
                );
            }
        }
    }
}

#[test]
fn word_copies_round_trip_and_pad_the_last_word_with_zeros() {
    for len in lengths() {
        let words: Vec<AtomicU64> = (0..=len.div_ceil(8))
            .map(|_| AtomicU64::new(u64::MAX))
            .collect();
        let src: Vec<u8> = (0..len).map(|i| pattern(i, 0x11)).collect();
        // SAFETY: `words` is private to this test; nothing races with the copies.
        unsafe { store_words(&words, &src) };
        let mut dst = vec![0u8; len];
        // SAFETY: as above.
        unsafe { load_words(&words, &mut dst) };
        assert!(src == dst, "len {len}");
        let stored: Vec<u8> = words
            .iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_ne_bytes())
            .collect();
        let padded = len.div_ceil(8) * 8;
        assert!(
            stored[len..padded].iter().all(|b| *b == 0),
            "padding, len {len}"
        );
        assert!(
            stored[padded..].iter().all(|b| *b == 0xff),
            "after, len {len}"
        );
    }
}

/// Bytes `i` of the racing tests only ever hold `pattern(i, salt)` for one of these salts.
const SALTS: [u8; 4] = [0x00, 0xff, 0x55, 0xaa];

fn is_written(i: usize, byte: u8) -> bool {
    SALTS.iter().any(|s| pattern(i, *s) == byte)
}

/// Rounds of the racing tests (each a full copy).
const ROUNDS: usize = if cfg!(miri) { 3 } else { 2000 };

/// Runs `writer(round)` over and over on another thread until `reader`
/// has run [`ROUNDS`] times.
/// The writer stops when the reader is done, or has panicked.
fn race(writer: impl Fn(usize) + Sync, mut reader: impl FnMut()) {
    /// Raises the stop flag when dropped, so a failed assertion in the
    /// reader ends the scope instead of waiting for the writer forever.
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            // Relaxed: only a stop flag; the scope's join orders the rest.
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut round = 0;
            // Relaxed: see `Stop`.
            while !done.load(Ordering::Relaxed) {
                writer(round);
                round += 1;
            }
        });
        let _stop = Stop(&done);
        for _ in 0..ROUNDS {
            reader();
        }
    });
}

/// Bytes of the racing tests' shared cells.
const RACE_LEN: usize = 4096 + 64;

/// The racing tests' shared cells, holding `pattern(i, 0)`.
fn race_cells() -> Vec<AtomicU8> {
    (0..RACE_LEN)
        .map(|i| AtomicU8::new(pattern(i, 0)))
        .collect()
}

/// Where round `round` of a racing test copies: a start alignment and a
/// length (all at least [`WIDE_MIN`], so on the wide path on x86-64).
fn race_span(round: usize) -> (usize, usize) {
    (round % 8, [RACE_LEN - 8, WIDE_MIN, 4096, 1001][round % 4])
}

/// A wide load racing with byte stores invents no byte: each is one that
/// was written there.
#[test]
#[cfg_attr(
    miri,
    ignore = "Miri takes the word path, whose word loads would race with byte stores of another size"
)]
fn wide_load_racing_a_writer_reads_only_written_bytes() {
    let cells = race_cells();
    let writer = |round: usize| {
        let salt = SALTS[round % SALTS.len()];
        for (i, c) in cells.iter().enumerate() {
            // Relaxed: the reader expects no ordering, only whole bytes.
            c.store(pattern(i, salt), Ordering::Relaxed);
        }
    };
    let mut out = vec![0u8; RACE_LEN];
    let mut round = 0usize;
    race(writer, || {
        let (at, len) = race_span(round);
        round += 1;
        let src = cells.as_ptr().cast::<u8>().wrapping_add(at);
        // SAFETY: `at + len <= RACE_LEN` bytes of `cells`, which this process
        // accesses only through byte atomics, the size of the wide path's.
        unsafe { load(src, &mut out[..len]) };
        for (i, b) in out[..len].iter().enumerate() {
            assert!(is_written(at + i, *b), "byte {} read {b:#x}", at + i);
        }
    });
}

/// A wide store racing with byte loads shows them no invented byte.
#[test]
#[cfg_attr(
    miri,
    ignore = "Miri takes the word path, whose word stores would race with byte loads of another size"
)]
fn wide_store_racing_a_reader_writes_only_its_bytes() {
    let cells = race_cells();
    let sources: Vec<Vec<u8>> = SALTS
        .iter()
        .map(|s| (0..RACE_LEN).map(|i| pattern(i, *s)).collect())
        .collect();
    let writer = |round: usize| {
        let (at, len) = race_span(round);
        let src = &sources[round % SALTS.len()][at..at + len];
        let dst = cells.as_ptr().cast::<u8>().cast_mut().wrapping_add(at);
        // SAFETY: `at + len <= RACE_LEN` bytes of `cells` (atomics, so writable
        // through a shared reference), accessed only through byte atomics.
        unsafe { store(dst, src) };
    };
    race(writer, || {
        for (i, c) in cells.iter().enumerate() {
            // Relaxed: only whole bytes are checked.
            let b = c.load(Ordering::Relaxed);
            assert!(is_written(i, b), "byte {i} holds {b:#x}");
        }
    });
}

/// The word path under a racing writer of words: every word read whole.
#[test]
fn word_load_racing_a_writer_reads_only_written_words() {
    const WORDS: usize = (WIDE_MIN - 8) / 8;
    let word =
        |i: usize, salt: u8| u64::from_ne_bytes(core::array::from_fn(|b| pattern(i * 8 + b, salt)));
    let cells: Vec<AtomicU64> = (0..WORDS).map(|i| AtomicU64::new(word(i, 0))).collect();
    let writer = |round: usize| {
        let salt = SALTS[round % SALTS.len()];
        for (i, c) in cells.iter().enumerate() {
            // Relaxed: the reader expects no ordering, only whole words.
            c.store(word(i, salt), Ordering::Relaxed);
        }
    };
    let mut out = vec![0u8; WORDS * 8];
    race(writer, || {
        let src = cells.as_ptr().cast::<u8>();
        // SAFETY: the bytes of `cells`, which this process accesses only
        // through 8-aligned word atomics, as the word path does at offset 0.
        unsafe { load(src, &mut out) };
        for (i, w) in out.chunks_exact(8).enumerate() {
            let v = u64::from_ne_bytes(w.try_into().unwrap_or_default());
            assert!(
                SALTS.iter().any(|s| word(i, *s) == v),
                "word {i} read {v:#x}"
            );
        }
    });
}

#[test]
fn copy_within_matches_a_plain_copy_at_every_alignment_and_length() {
    for len in lengths() {
        let (from_offsets, to_offsets) = offsets(len);
        // Two areas of one buffer, as a commit copies its work area into
        // its committed one: `len + 32` bytes each.
        let area = (len + 32).next_multiple_of(8);
        for fo in 0..from_offsets {
            for to in 0..to_offsets {
                let mut words: Vec<u64> = (0..2 * area / 8)
                    .map(|i| u64::from_ne_bytes(core::array::from_fn(|b| pattern(i * 8 + b, 0x77))))
                    .collect();
                let before = bytes(&words);
                let base = words.as_mut_ptr().cast::<u8>();
                let (dst, src) = (base.wrapping_add(area + to), base.wrapping_add(fo));
                // SAFETY: `fo + len <= area` and `area + to + len <= 2 *
                // area` lie inside `words`; the ranges are disjoint and
                // nothing else references them while the copy runs.
                unsafe { copy_within(dst, src, len) };
                let mut expected = before.clone();
                expected[area + to..area + to + len].copy_from_slice(&before[fo..fo + len]);
                assert!(
                    bytes(&words) == expected,
                    "copy_within: from offset {fo}, to offset {to}, len {len}"
                );
            }
        }
    }
}
