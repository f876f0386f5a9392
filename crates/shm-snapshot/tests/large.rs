//! Logs larger than one read chunk, torn tails that overwrote committed
//! pages, and files and regions beyond 4 GiB (sparse: only a few pages are
//! ever touched, so memory and disk use stay small).
#![allow(clippy::cast_possible_truncation)]

use std::fs::OpenOptions;

mod common;

use shm_snapshot::{FileStorage, MemStorage, SnapshotWriter, Storage, inspect, restore};

const PS: usize = 4096;

/// The newest committed state (checked to be `len` bytes) and its generation.
fn restore_vec<S: Storage>(s: &S, len: usize) -> (Vec<u8>, u64) {
    let (v, g) = common::restore_vec(s).unwrap();
    assert_eq!(v.len(), len);
    (v, g)
}

fn stamp(v: &mut [u8], page: usize, g: u64) {
    for (i, b) in v[page * PS..(page + 1) * PS].iter_mut().enumerate() {
        *b = ((g as usize * 131 + page * 7 + i) % 251) as u8 + 1;
    }
}

/// A log of several MiB (records straddle the 1 MiB read chunks), then a
/// snapshot cut short: its pages, already applied during the single pass,
/// must be put back to their committed content, or to zeros for pages no
/// committed generation wrote.
#[test]
fn torn_tail_over_committed_pages_is_put_back() {
    let pages = 600;
    let len = pages * PS + 100; // a short last page
    let mut w = SnapshotWriter::create(MemStorage::default(), PS as u32, len as u64).unwrap();
    let mut state = vec![0u8; len];
    // Generation 1: pages 0..400; 2: every third; 3: a few.
    for p in 0..400 {
        stamp(&mut state, p, 1);
    }
    w.snapshot(&state).unwrap();
    for p in (0..400).step_by(3) {
        stamp(&mut state, p, 2);
    }
    w.snapshot(&state).unwrap();
    for p in [1, 2, 399] {
        stamp(&mut state, p, 3);
    }
    state[len - 1] = 9;
    w.snapshot(&state).unwrap();
    assert!(w.len() > 2 << 20, "the log must span several read chunks");
    let committed = state.clone();
    assert_eq!(restore_vec(w.storage(), len), (committed.clone(), 3));
    // Generation 4 rewrites committed pages and pages never written before.
    for p in (0..pages).step_by(2) {
        stamp(&mut state, p, 4);
    }
    state[len - 1] = 7;
    w.snapshot(&state).unwrap();
    assert_eq!(restore_vec(w.storage(), len), (state.clone(), 4));
    let full = w.storage().data.clone();
    // Cut off the commit record: generation 4 is uncommitted.
    let torn = MemStorage::with_data(full[..full.len() - 32].to_vec());
    assert_eq!(restore_vec(&torn, len), (committed.clone(), 3));
    // A corrupt byte in the last page record of generation 4.
    let mut bad = full.clone();
    let n = bad.len();
    bad[n - 40] ^= 0xff;
    assert_eq!(
        restore_vec(&MemStorage::with_data(bad), len),
        (committed.clone(), 3)
    );
    // Every possible cut inside generation 4's records, at record steps.
    let g3_end = inspect(&torn).unwrap().valid_end as usize;
    for cut in (g3_end..full.len()).step_by(4096 + 32 + 17) {
        let s = MemStorage::with_data(full[..cut].to_vec());
        assert_eq!(restore_vec(&s, len), (committed.clone(), 3), "cut at {cut}");
    }
}

fn temp_file(name: &str) -> (std::path::PathBuf, std::fs::File) {
    let path = std::env::temp_dir().join(shm_testkit::unique_name(name));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    (path, f)
}

/// An all-zero file of 5 GiB (`truncate -s 5G FILE`) is a fresh state of that
/// size, recognised without reading its holes; the writer takes it over.
#[test]
fn all_zero_five_gib_file_is_a_fresh_state() {
    let size = 5u64 << 30;
    let (path, f) = temp_file("zero5g");
    f.set_len(size).unwrap();
    let st = FileStorage(f);
    let info = inspect(&st).unwrap();
    assert!(info.all_zero, "{info:?}");
    assert_eq!((info.region_size, info.generation), (size, 0));
    let mut applied = 0;
    restore(&st, |_, _| applied += 1).unwrap();
    assert_eq!(applied, 0);
    // Taking it over writes a header for a 5 GiB region (the state is not
    // read: the file holds generation 0, all zeros).
    let w = SnapshotWriter::open(st).unwrap();
    assert_eq!(w.generation(), 0);
    let info = inspect(w.storage()).unwrap();
    assert!(!info.all_zero);
    assert_eq!(info.region_size, size);
    std::fs::remove_file(&path).unwrap();
}

/// A region of 4 GiB + 3 pages in a sparse file: pages below, at and beyond
/// the 4 GiB boundary round-trip through two incremental snapshots, a reopen
/// and a third snapshot.
#[test]
fn region_beyond_four_gib_round_trips() {
    let len = (4usize << 30) + 3 * PS;
    let (path, f) = temp_file("snap4g");
    let mut w = SnapshotWriter::create(FileStorage(f), PS as u32, len as u64).unwrap();
    // Never touched as a whole: untouched pages stay unallocated zero pages.
    let mut state = vec![0u8; len];
    let four = 1usize << 20; // page index of the 4 GiB boundary
    let touched = [0, four / 2, four - 1, four, four + 1, four + 2];
    for (k, &p) in touched.iter().enumerate() {
        stamp(&mut state, p, k as u64 + 1);
    }
    w.snapshot(&state).unwrap();
    // Generation 2: only pages beyond 4 GiB change.
    stamp(&mut state, four + 1, 10);
    stamp(&mut state, four + 2, 11);
    w.snapshot(&state).unwrap();
    assert_eq!(
        w.last_bytes_written,
        2 * (PS as u64 + shm_snapshot::RECORD_LEN) + shm_snapshot::COMMIT_LEN
    );
    let check = |w: &SnapshotWriter<FileStorage>, state: &[u8], generation: u64| {
        let mut seen = Vec::new();
        let mut out = vec![0u8; len];
        let r = restore(w.storage(), |off, b| {
            seen.push(off);
            let o = usize::try_from(off).unwrap();
            out[o..o + b.len()].copy_from_slice(b);
        })
        .unwrap();
        assert_eq!(r.info.generation, generation);
        assert_eq!(r.info.region_size, len as u64);
        for &p in &touched {
            assert!(
                out[p * PS..(p + 1) * PS] == state[p * PS..(p + 1) * PS],
                "page {p} (offset {}) differs after restore",
                p * PS
            );
        }
        // Nothing but the written pages was applied, at their 64-bit offsets.
        assert!(seen.iter().all(|o| touched.contains(&(*o as usize / PS))));
        assert!(seen.contains(&((four as u64 + 2) * PS as u64)));
        out
    };
    check(&w, &state, 2);
    // Reopen at generation 2 and continue.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    drop(w);
    let mut w = SnapshotWriter::open(FileStorage(f)).unwrap();
    assert_eq!(w.generation(), 2);
    stamp(&mut state, four, 12);
    w.snapshot(&state).unwrap();
    assert_eq!(
        w.last_bytes_written,
        (PS as u64 + shm_snapshot::RECORD_LEN) + shm_snapshot::COMMIT_LEN
    );
    check(&w, &state, 3);
    // Compaction reads each page back from its 64-bit file offset.
    let before = w.len();
    w.compact_file(&path).unwrap();
    assert!(w.len() < before, "{} !< {before}", w.len());
    check(&w, &state, 3);
    // The log holds only the written pages.
    assert!(std::fs::metadata(&path).unwrap().len() < 64 * PS as u64);
    std::fs::remove_file(&path).unwrap();
}
