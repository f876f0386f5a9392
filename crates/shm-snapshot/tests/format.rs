//! File format, crash-state replay and bad-file tests.
#![allow(clippy::many_single_char_names, clippy::cast_possible_truncation)]

mod common;

use common::{restore_opts, restore_vec};
use proptest::prelude::*;
use shm_snapshot::storage_ops::Op;
use shm_snapshot::{
    COMMIT_LEN, ErrorKind, FileStorage, MemStorage, OnDamage, RECORD_LEN, RestoreOptions,
    SnapshotWriter, Storage, inspect,
};

const PS: u32 = 256;

/// Generation `g` of the test state: a few pages stamped with `g`, the rest stale.
fn state(g: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for k in 0..=g {
        let page = usize::try_from((k * 7) % (len as u64 / u64::from(PS))).unwrap() * PS as usize;
        for (i, b) in v[page..page + PS as usize].iter_mut().enumerate() {
            *b = u8::try_from((k as usize + i) % 251).unwrap();
        }
    }
    v
}

/// Generation `g` with every page changed (many reorderable writes).
fn full_state(g: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((g as usize * 31 + i) % 251).unwrap())
        .collect()
}

#[test]
fn roundtrip_and_incremental() {
    let len = 16 * PS as usize + 100; // a short last page
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    for g in 1..=10 {
        let s = state(g, len);
        assert_eq!(w.snapshot(&s).unwrap(), g);
        // Only the page(s) changed since the last generation are written.
        assert!(
            w.last_bytes_written <= 2 * (u64::from(PS) + RECORD_LEN) + COMMIT_LEN,
            "{}",
            w.last_bytes_written
        );
        let (v, gen_) = restore_vec(w.storage()).unwrap();
        assert_eq!(gen_, g);
        assert_eq!(v, s);
    }
    // An unchanged state writes only a commit record.
    w.snapshot(&state(10, len)).unwrap();
    assert_eq!(w.last_bytes_written, COMMIT_LEN);
    // Reopen and continue.
    let st = w.storage().clone();
    let (_, g) = restore_vec(&st).unwrap();
    let mut w2 = SnapshotWriter::open(st).unwrap();
    assert_eq!(w2.generation(), g);
    w2.snapshot(&state(12, len)).unwrap();
    assert_eq!(restore_vec(w2.storage()).unwrap(), (state(12, len), g + 1));
}

#[test]
fn compaction_keeps_state_and_generation() {
    let len = 32 * PS as usize;
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    for g in 1..=20 {
        w.snapshot(&state(g, len)).unwrap();
    }
    let c = w.compact_into(MemStorage::default()).unwrap();
    assert!(c.data.len() < w.storage().data.len());
    assert_eq!(restore_vec(&c).unwrap(), (state(20, len), 20));
    let mut w2 = SnapshotWriter::open(c).unwrap();
    w2.snapshot(&state(21, len)).unwrap();
    assert_eq!(restore_vec(w2.storage()).unwrap(), (state(21, len), 21));
}

#[test]
fn a_snapshot_of_selected_pages_keeps_the_others() {
    let len = 16 * PS as usize;
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    w.snapshot(&state(1, len)).unwrap();
    let mut expect = state(1, len);
    let new: Vec<u8> = (0..len).map(|i| (i % 253) as u8 ^ 0xA5).collect();
    let mut tx = w.begin();
    for i in [3u64, 7, 15] {
        let r = i as usize * PS as usize..(i as usize + 1) * PS as usize;
        assert!(tx.page(i, &new[r.clone()]).unwrap(), "page {i} is new");
        expect[r.clone()].copy_from_slice(&new[r]);
    }
    // A page handed with its current bytes is not written again.
    assert!(!tx.page(0, &expect[..PS as usize]).unwrap());
    assert_eq!(tx.pages_written(), 3);
    assert_eq!(tx.commit().unwrap(), 2);
    assert_eq!(restore_vec(w.storage()).unwrap(), (expect.clone(), 2));
    // Dropped without a commit: nothing changes, and the next one appends
    // where it would have.
    let end = w.len();
    let mut tx = w.begin();
    tx.page(1, &new[PS as usize..2 * PS as usize]).unwrap();
    drop(tx);
    assert_eq!(w.len(), end);
    assert_eq!(restore_vec(w.storage()).unwrap(), (expect, 2));
    w.snapshot(&state(3, len)).unwrap();
    assert_eq!(restore_vec(w.storage()).unwrap(), (state(3, len), 3));
}

#[test]
fn a_reopened_writer_compacts_from_its_own_log() {
    let len = 24 * PS as usize;
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    for g in 1..=5 {
        w.snapshot(&state(g, len)).unwrap();
    }
    // Reopened, the writer knows each page's newest record from the scan
    // alone, and compacts from it without being given the state.
    let w = SnapshotWriter::open(w.storage().clone()).unwrap();
    let c = w.compact_into(MemStorage::default()).unwrap();
    assert!(c.data.len() < w.storage().data.len());
    assert_eq!(restore_vec(&c).unwrap(), (state(5, len), 5));
    // A compacted file compacts again to the same state.
    let mut w = SnapshotWriter::open(c).unwrap();
    let c2 = w.compact_into(MemStorage::default()).unwrap();
    assert_eq!(restore_vec(&c2).unwrap(), (state(5, len), 5));
    w.snapshot(&state(6, len)).unwrap();
    assert_eq!(restore_vec(w.storage()).unwrap(), (state(6, len), 6));
}

#[test]
fn compaction_refuses_a_page_that_changed_on_disk() {
    use std::os::unix::fs::FileExt;
    let path = std::env::temp_dir().join(format!("outlive-bitrot-{}.snap", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let other = f.try_clone().unwrap();
    let len = 4 * PS as usize;
    let mut w = SnapshotWriter::create(FileStorage(f), PS, len as u64).unwrap();
    w.snapshot(&state(1, len)).unwrap();
    // Another writer flips a byte of the last page record's payload.
    let at = w.len() - 32 - 100;
    let mut b = [0u8; 1];
    other.read_exact_at(&mut b, at).unwrap();
    other.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    let e = w.compact_into(MemStorage::default()).unwrap_err();
    assert!(e.to_string().contains("changed on disk"), "{e}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn every_truncation_restores_a_committed_generation() {
    let len = 8 * PS as usize;
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    let mut ends = vec![w.len()];
    for g in 1..=6 {
        w.snapshot(&state(g, len)).unwrap();
        ends.push(w.len());
    }
    let full = w.storage().data.clone();
    for cut in 64..=full.len() {
        let s = MemStorage::with_data(full[..cut].to_vec());
        let (v, g) = restore_vec(&s).unwrap();
        let expect_g = ends.iter().rposition(|&e| e <= cut as u64).unwrap() as u64;
        assert_eq!(g, expect_g, "cut at {cut}");
        let expect = if g == 0 { vec![0; len] } else { state(g, len) };
        assert_eq!(v, expect, "cut at {cut}");
        // Writing continues after a torn tail.
        let mut w = SnapshotWriter::open(s).unwrap();
        w.snapshot(&state(9, len)).unwrap();
        assert_eq!(restore_vec(w.storage()).unwrap(), (state(9, len), g + 1));
    }
}

/// One flipped byte anywhere after the header never costs more than the
/// snapshot it lies in: a flip in the last snapshot reads as a torn tail
/// (that generation is lost, as a crash before its sync would lose it); a
/// flip in any earlier one is damage: refused by default, the generation
/// before it restores exactly, salvage restores the newest generation with
/// only the pages it names taken from before the damage, and the writer
/// refuses to continue (cut) the file.
#[test]
fn every_flipped_byte_restores_a_committed_generation_or_errors() {
    let len = 4 * PS as usize;
    let newest = 5;
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    for g in 1..=newest {
        w.snapshot(&state(g, len)).unwrap();
    }
    let full = w.storage().data.clone();
    // Where the last snapshot's records start.
    let mut before = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    for g in 1..newest {
        before.snapshot(&state(g, len)).unwrap();
    }
    let last_start = before.len() as usize;
    let mut damaged = 0;
    for i in 0..full.len() {
        let mut d = full.clone();
        d[i] ^= 0x40;
        let m = MemStorage::with_data(d.clone());
        match restore_vec(&m) {
            Ok((v, g)) => {
                assert!(
                    i >= last_start,
                    "flip at {i} lost generations: restored {g}"
                );
                assert_eq!(g, newest - 1, "flip at {i}");
                assert_eq!(v, state(g, len), "flip at {i}");
            }
            Err(e) if i < 64 => assert_ne!(e.kind(), ErrorKind::Damaged),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Damaged, "flip at {i}: {e}");
                assert!(i < last_start, "flip at {i}");
                damaged += 1;
                let info = inspect(&m).unwrap();
                let dmg = info.damage.clone().expect("inspect reports the damage");
                assert!(
                    dmg.ranges.iter().any(|r| r.contains(&(i as u64))),
                    "{dmg:?} {i}"
                );
                assert_eq!(dmg.newest_after, newest, "flip at {i}");
                // The generation before the damage, exactly.
                let exact = RestoreOptions {
                    until: Some(dmg.last_before),
                    ..RestoreOptions::default()
                };
                let (v, r) = restore_opts(&m, exact).unwrap();
                assert_eq!(r.info.generation, dmg.last_before);
                let want = if dmg.last_before == 0 {
                    vec![0; len]
                } else {
                    state(dmg.last_before, len)
                };
                assert_eq!(v, want, "flip at {i}");
                // A generation after the damage is not restorable exactly.
                let after = RestoreOptions {
                    until: Some(newest),
                    ..RestoreOptions::default()
                };
                assert_eq!(
                    restore_opts(&m, after).unwrap_err().kind(),
                    ErrorKind::NoSuchGeneration
                );
                // Salvage: the newest state, but for the pages it names.
                let salvage = RestoreOptions {
                    on_damage: OnDamage::Salvage,
                    ..RestoreOptions::default()
                };
                let (v, r) = restore_opts(&m, salvage).unwrap();
                let sv = r.salvage.clone().expect("a salvage report");
                assert_eq!(sv.generation, newest);
                let want = state(newest, len);
                for p in 0..len / PS as usize {
                    let named = sv.pages_from_before.iter().any(|r| r.contains(&(p as u64)));
                    let range = p * PS as usize..(p + 1) * PS as usize;
                    if !named {
                        assert_eq!(v[range.clone()], want[range], "flip at {i}, page {p}");
                    }
                }
                // Nothing may cut the damaged file.
                assert_eq!(
                    SnapshotWriter::open(MemStorage::with_data(d.clone()))
                        .unwrap_err()
                        .kind(),
                    ErrorKind::Damaged
                );
                assert_eq!(
                    SnapshotWriter::open_restored(MemStorage::with_data(d), r)
                        .unwrap_err()
                        .kind(),
                    ErrorKind::Damaged
                );
            }
        }
    }
    assert!(damaged > 1000, "{damaged}");
}

/// Replays every crash state POSIX allows at every point of the operation
/// log: everything before the last sync is durable; any subset of the later
/// writes may have reached the disk, and one of them may be torn.
#[test]
fn power_loss_replay() {
    power_loss_replay_with(0);
}

/// The same with zeros reserved after the log (what a file gets,
/// [`SnapshotWriter::set_reserve`]): some snapshots write records over
/// reserved zeros, others grow the file and reserve again.
#[test]
fn power_loss_replay_with_reserved_zeros() {
    // Large enough for zeros to be worth writing after 6-page snapshots
    // (a snapshot reserves only when it is at most a quarter of the reserve).
    power_loss_replay_with(32 * u64::from(PS));
}

/// The same on a reused log ([`SnapshotWriter::compact_onto`], what a file
/// gets from its second compaction on): the compacted image and the
/// snapshots after it overwrite an older log of the same writer, so every
/// write that has not reached the disk leaves that log's records, not
/// zeros, where a new record belongs.
#[test]
fn power_loss_replay_over_a_reused_log() {
    let len = 6 * PS as usize;
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    w.set_write_batch(1);
    w.set_reserve(0);
    for g in 1..=3 {
        w.snapshot(&full_state(g, len)).unwrap();
    }
    // Generations 1..=3 become the older log; the writer goes on in a new one.
    let mut older = w.compact_onto(MemStorage::default()).unwrap();
    older.log.clear();
    let underlay = older.data.clone();
    w.snapshot(&full_state(4, len)).unwrap();
    w.compact_onto(older).unwrap();
    // A file is swapped in only once its image is synced (crashes before
    // that leave the previous log in place): replay from there.
    let synced = w.storage().log.len();
    let start = MemStorage::with_data(w.storage().data.clone());
    assert_eq!(
        start.data.len(),
        underlay.len(),
        "the image overwrote the older log"
    );
    assert_ne!(start.data, underlay);
    assert_eq!(restore_vec(&start).unwrap(), (full_state(4, len), 4));
    let mut acked_at = Vec::new();
    for g in 5..=7 {
        assert_eq!(w.snapshot(&full_state(g, len)).unwrap(), g);
        acked_at.push(w.storage().log.len() - synced);
    }
    assert!(
        w.storage().data.len() > underlay.len(),
        "the log grew past the older one"
    );
    replay(len, start, &w.storage().log[synced..], 4, &acked_at);
}

fn power_loss_replay_with(reserve: u64) {
    let len = 6 * PS as usize;
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    w.set_write_batch(1);
    w.set_reserve(reserve);
    // Each generation is acknowledged (what the host publishes as durable)
    // when `snapshot()` returns: after the first `acked_at[g - 1]` operations.
    let mut acked_at = Vec::new();
    for g in 1..=4 {
        assert_eq!(w.snapshot(&full_state(g, len)).unwrap(), g);
        acked_at.push(w.storage().log.len());
    }
    replay(len, MemStorage::default(), &w.storage().log, 0, &acked_at);
}

/// Replays `log` from `start` (durable before it): at every operation,
/// every subset of the writes since the last sync, one of them perhaps
/// torn, must restore a generation of [`full_state`] no older than the
/// newest acknowledged one, generation `base + k` being acknowledged after
/// the first `acked_at[k - 1]` operations.
fn replay(len: usize, start: MemStorage, log: &[Op], base: u64, acked_at: &[usize]) {
    // The newest generation acknowledged before operation `i` was issued.
    let acknowledged = |i: usize| base + acked_at.iter().filter(|&&at| at <= i).count() as u64;
    let mut durable_gen = 0u64;
    let mut durable = start;
    let mut pending: Vec<Op> = Vec::new();
    let mut states = 0;
    let apply = |m: &mut MemStorage, op: &Op| match op {
        Op::Write(o, b) => {
            m.write_at(*o, b).unwrap();
        }
        Op::SetLen(l) => m.set_len(*l).unwrap(),
        Op::Sync => {}
    };
    for (i, op) in log.iter().enumerate() {
        if *op == Op::Sync {
            for p in pending.drain(..) {
                apply(&mut durable, &p);
            }
            durable_gen = inspect(&durable).map_or(0, |i| i.generation);
            continue;
        }
        pending.push(op.clone());
        let n = pending.len();
        assert!(n <= 12);
        for mask in 0u32..(1 << n) {
            for torn in 0..=n {
                let mut m = durable.clone();
                for (i, p) in pending.iter().enumerate() {
                    if mask & (1 << i) == 0 {
                        continue;
                    }
                    match p {
                        Op::Write(o, b) if i == torn => m.write_at(*o, &b[..b.len() / 2]).unwrap(),
                        p => apply(&mut m, p),
                    }
                }
                states += 1;
                let Ok((v, g)) = restore_vec(&m) else {
                    // Only before the header's first sync may the file be unreadable.
                    assert_eq!(durable.data.len(), 0);
                    continue;
                };
                assert!(g >= durable_gen, "restored {g} < durable {durable_gen}");
                let acked = acknowledged(i);
                assert!(g >= acked, "restored {g} < acknowledged {acked}");
                assert_eq!(
                    v,
                    if g == 0 {
                        vec![0; len]
                    } else {
                        full_state(g, len)
                    }
                );
            }
        }
    }
    assert!(states > 200, "{states}");
}

/// Zeros reserved after the last commit are no records: the newest
/// generation restores, `inspect` counts them as reserved (not as an ignored
/// tail), a cut anywhere inside them changes nothing, `open` cuts them off
/// and dropping the writer trims them.
#[test]
fn reserved_zeros_are_space_not_records() {
    let len = 4 * PS as usize;
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    w.set_reserve(12 * u64::from(PS));
    for g in 1..=3 {
        w.snapshot(&state(g, len)).unwrap();
        let data = &w.storage().data;
        assert!(
            data.len() as u64 > w.len(),
            "generation {g}: nothing reserved"
        );
        let info = inspect(w.storage()).unwrap();
        assert_eq!(info.generation, g);
        assert_eq!(info.valid_end, w.len());
        assert_eq!(info.reserved, data.len() as u64 - w.len());
        assert!(info.damage.is_none());
        for cut in w.len() as usize..=data.len() {
            let m = MemStorage::with_data(data[..cut].to_vec());
            assert_eq!(restore_vec(&m).unwrap(), (state(g, len), g), "cut at {cut}");
        }
    }
    // A non-zero byte in the reserve is a torn tail, not reserved space.
    let mut d = w.storage().data.clone();
    let n = d.len();
    d[n - 1] = 1;
    let info = inspect(&MemStorage::with_data(d)).unwrap();
    assert_eq!((info.generation, info.reserved), (3, 0));
    // Continuing cuts the reserve off first.
    let reopened = SnapshotWriter::open(w.storage().clone()).unwrap();
    assert_eq!(reopened.storage().data.len() as u64, reopened.len());
    // A file reserves 1 MiB by default; dropping the writer trims it.
    let dir = std::env::temp_dir().join(format!("reserve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("f.snap");
    let f = std::fs::File::create_new(&path).unwrap();
    let mut w = SnapshotWriter::create(FileStorage(f), PS, len as u64).unwrap();
    w.snapshot(&state(1, len)).unwrap();
    let end = w.len();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), end + (1 << 20));
    drop(w);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn disk_full_keeps_previous_snapshot() {
    let len = 8 * PS as usize;
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    w.snapshot(&state(1, len)).unwrap();
    let mut st = w.storage().clone();
    st.capacity = Some(st.data.len() as u64 + 100);
    let mut w = SnapshotWriter::open(st).unwrap();
    let e = w.snapshot(&state(5, len)).unwrap_err();
    assert!(e.is_disk_full(), "{e}");
    assert_eq!(w.generation(), 1);
    // The write that failed partway left no bytes behind.
    assert_eq!(w.storage().data.len() as u64, w.len(), "tail not cut");
    assert_eq!(restore_vec(w.storage()).unwrap(), (state(1, len), 1));
}

#[test]
fn bad_files_give_clear_errors() {
    let e = inspect(&MemStorage::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Empty);
    assert_eq!(e.to_string(), "file is empty");
    assert_eq!(
        inspect(&MemStorage::with_data(b"OUTLSNP1xx".to_vec()))
            .unwrap_err()
            .kind(),
        ErrorKind::Truncated
    );
    assert_eq!(
        inspect(&MemStorage::with_data(vec![7u8; 4096]))
            .unwrap_err()
            .kind(),
        ErrorKind::Foreign
    );
    assert_eq!(
        inspect(&MemStorage::with_data(vec![0u8; 10]))
            .unwrap_err()
            .kind(),
        ErrorKind::BadGeometry
    );
    let w = SnapshotWriter::create(MemStorage::default(), PS, 4096).unwrap();
    let mut d = w.storage().data.clone();
    d[20] ^= 1;
    assert_eq!(
        inspect(&MemStorage::with_data(d)).unwrap_err().kind(),
        ErrorKind::CorruptHeader
    );
    // All zeros: a fresh state of the file's size.
    let i = inspect(&MemStorage::with_data(vec![0u8; 1 << 20])).unwrap();
    assert!(i.all_zero);
    assert_eq!(i.region_size, 1 << 20);
    // A state of the wrong size, and pages that do not fit, are refused.
    let mut w = SnapshotWriter::open(w.storage().clone()).unwrap();
    assert_eq!(
        w.snapshot(&[0u8; 10]).unwrap_err().kind(),
        ErrorKind::SizeMismatch
    );
    let pages = w.region_size().div_ceil(u64::from(PS));
    let mut tx = w.begin();
    for (index, len) in [(pages, PS as usize), (0, 10), (0, PS as usize + 1)] {
        assert_eq!(
            tx.page(index, &vec![1u8; len]).unwrap_err().kind(),
            ErrorKind::SizeMismatch
        );
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = restore_vec(&MemStorage::with_data(data));
    }

    #[test]
    fn valid_header_arbitrary_tail_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let w = SnapshotWriter::create(MemStorage::default(), PS, 4 * u64::from(PS)).unwrap();
        let mut d = w.storage().data.clone();
        d.extend_from_slice(&tail);
        let (v, g) = restore_vec(&MemStorage::with_data(d)).unwrap();
        prop_assert_eq!(g, 0);
        prop_assert!(v.iter().all(|&b| b == 0));
    }
}

/// A file of four generations of the `restore_patched` fuzz target's
/// states, with bytes patched at absolute offsets and cut to `cut` bytes,
/// salvaged: every page salvage does not name equals the salvaged
/// generation, and at least one page is named.
fn salvage_names_uncertain_pages(patches: &[(usize, u8)], cut: usize) {
    const PAGE: usize = 4096;
    const PAGES: usize = 6;
    let state = |g: u8| {
        let mut v = vec![0u8; PAGE * PAGES];
        for k in 1..=g {
            for p in 0..PAGES {
                if (usize::from(k) + p) % 3 != 0 {
                    v[p * PAGE..(p + 1) * PAGE].fill(k.wrapping_mul(37).wrapping_add(p as u8));
                }
            }
        }
        v
    };
    let mut w =
        SnapshotWriter::create(MemStorage::default(), PAGE as u32, (PAGE * PAGES) as u64).unwrap();
    for g in 1..=4 {
        w.snapshot(&state(g)).unwrap();
    }
    let mut bytes = w.storage().data.clone();
    for &(at, v) in patches {
        bytes[at] = v;
    }
    bytes.truncate(cut);
    let m = MemStorage::with_data(bytes);
    let salvage = RestoreOptions {
        on_damage: OnDamage::Salvage,
        ..RestoreOptions::default()
    };
    let (image, r) = restore_opts(&m, salvage).unwrap();
    let s = r.salvage.expect("damage, salvaged");
    let want = state(u8::try_from(s.generation).unwrap());
    let mut named = 0;
    for p in 0..PAGES {
        let at = p * PAGE..(p + 1) * PAGE;
        if s.pages_from_before.iter().any(|r| r.contains(&(p as u64))) {
            named += 1;
        } else {
            assert!(
                image[at.clone()] == want[at],
                "page {p} of {}: {s:?}",
                s.generation
            );
        }
    }
    assert!(named > 0, "{s:?}");
}

/// Found by the fuzz target `restore_patched`: a page whose newest intact
/// version lay before a damaged range (its next version inside it) was
/// reported as certain by salvage.
#[test]
fn salvage_names_pages_whose_newest_version_may_be_in_the_damage() {
    salvage_names_uncertain_pages(
        &[(0x6868 * 3 % 66240, 0x68), (0x7a68 * 3 % 66240, 0)],
        0xfd00 * 7 % 66240,
    );
}

/// Found by the fuzz target `restore_patched`: damage after the last intact
/// record of the salvaged generation (its later records) was not counted as
/// damage, so pages whose versions it held were reported as certain.
#[test]
fn salvage_counts_damage_after_the_last_intact_record_of_its_generation() {
    salvage_names_uncertain_pages(
        &[
            (2166, 0x73),
            (22425, 0xd2),
            (26742, 0xad),
            (29430, 0xd2),
            (33126, 0xdd),
        ],
        46590,
    );
}

/// A file read while its writer appends two snapshots over the reserved
/// zeros, the appends landing between any two reads of the reader: never
/// damage, always a committed generation (2, 3 or 4) restored exactly. The
/// same when a starting writer cuts the zeros off during the read.
#[test]
fn appends_during_a_read_are_not_damage() {
    use std::cell::Cell;
    struct Growing {
        before: MemStorage,
        after: MemStorage,
        reads: Cell<usize>,
        switch_at: usize,
    }
    impl Storage for Growing {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let n = self.reads.get();
            self.reads.set(n + 1);
            let s = if n < self.switch_at {
                &self.before
            } else {
                &self.after
            };
            s.read_at(offset, buf)
        }
        fn write_at(&mut self, _: u64, _: &[u8]) -> std::io::Result<()> {
            unreachable!("read only")
        }
        fn len(&self) -> std::io::Result<u64> {
            if self.reads.get() < self.switch_at {
                self.before.len()
            } else {
                self.after.len()
            }
        }
        fn set_len(&mut self, _: u64) -> std::io::Result<()> {
            unreachable!("read only")
        }
        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let len = 8 * PS as usize;
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    w.set_reserve(64 << 10);
    w.set_write_batch(300);
    w.snapshot(&state(1, len)).unwrap();
    w.snapshot(&state(2, len)).unwrap();
    let before = w.storage().clone();
    w.snapshot(&state(3, len)).unwrap();
    w.snapshot(&state(4, len)).unwrap();
    let after = w.storage().clone();
    assert_eq!(
        before.data.len(),
        after.data.len(),
        "both within the reserve"
    );
    let mut seen = std::collections::BTreeSet::new();
    for switch_at in 0..64 {
        let g = Growing {
            before: before.clone(),
            after: after.clone(),
            reads: Cell::new(0),
            switch_at,
        };
        let (v, gen_) =
            restore_vec(&g).unwrap_or_else(|e| panic!("switch at read {switch_at}: {e}"));
        assert!(
            (2..=4).contains(&gen_),
            "switch at read {switch_at}: {gen_}"
        );
        assert_eq!(v, state(gen_, len), "switch at read {switch_at}");
        seen.insert(gen_);
    }
    assert!(seen.contains(&2) && seen.contains(&4), "{seen:?}");
    // A writer starting on the file cuts the reserved zeros off mid-read.
    let mut cut = after.clone();
    cut.set_len(w.len()).unwrap();
    for switch_at in 0..64 {
        let g = Growing {
            before: after.clone(),
            after: cut.clone(),
            reads: Cell::new(0),
            switch_at,
        };
        let r = restore_vec(&g).unwrap_or_else(|e| panic!("cut at read {switch_at}: {e}"));
        assert_eq!(r, (state(4, len), 4), "cut at read {switch_at}");
    }
}

/// Zeros are reserved only when they serve several snapshots of the size
/// that passed them: a snapshot larger than a quarter of the reserve lets
/// the file grow instead of writing each byte twice.
#[test]
fn large_snapshots_grow_the_file_without_reserving() {
    let len = 8 * PS as usize;
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    w.set_reserve(16 * u64::from(PS));
    // Eight pages (more than a quarter of the reserve): no zeros.
    w.snapshot(&full_state(1, len)).unwrap();
    assert_eq!(w.storage().data.len() as u64, w.len());
    // One page: the next snapshot passing the end reserves again.
    let mut s = full_state(1, len);
    s[0] ^= 1;
    w.snapshot(&s).unwrap();
    assert_eq!(w.storage().data.len() as u64, w.len() + 16 * u64::from(PS));
    assert_eq!(inspect(w.storage()).unwrap().reserved, 16 * u64::from(PS));
}

/// A file's compaction reuses the log the compaction before it replaced
/// (the inode comes back, and no block is allocated), unless a reader that
/// opened the file through [`FileStorage::open`] still holds that log: then
/// a new file is written, and the reader goes on reading the complete log
/// it opened. Dropping the writer leaves no temporary file behind.
#[test]
fn compaction_reuses_the_replaced_log_unless_a_reader_holds_it() {
    use std::os::unix::fs::MetadataExt;
    let len = 8 * PS as usize;
    let dir = std::env::temp_dir().join(format!("reuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("f.snap");
    let ino = || std::fs::metadata(&path).unwrap().ino();
    let temps = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != "f.snap")
            .count()
    };
    std::fs::File::create_new(&path).unwrap();
    let mut w =
        SnapshotWriter::create(FileStorage::open(&path, true).unwrap(), PS, len as u64).unwrap();
    w.set_reserve(0);
    let mut inodes = vec![ino()];
    for g in 1..=6 {
        w.snapshot(&full_state(g, len)).unwrap();
        if g == 4 {
            // Holds the log of generations 3 and 4, which the next
            // compaction replaces and the one after would reuse.
            let reader = FileStorage::open(&path, false).unwrap();
            w.compact_file(&path).unwrap();
            inodes.push(ino());
            w.snapshot(&full_state(5, len)).unwrap();
            w.compact_file(&path).unwrap();
            inodes.push(ino());
            let (v, g) = restore_vec(&reader).unwrap();
            assert!(
                (g, v == full_state(4, len)) == (4, true),
                "the reader's log changed under it: generation {g}"
            );
            assert!(inspect(&reader).unwrap().damage.is_none());
            break;
        }
        w.compact_file(&path).unwrap();
        inodes.push(ino());
        assert_eq!(
            temps(),
            1,
            "the replaced log is kept under a temporary name"
        );
        let info = inspect(&FileStorage::open(&path, false).unwrap()).unwrap();
        assert_eq!((info.generation, info.damage), (g, None));
    }
    // Compaction 1 wrote a new file; 2, 3 and 4 each reused the log the
    // one before replaced; 5 found that log (the reader's) held and wrote
    // a new file.
    let [i0, i1, i2, i3, i4, i5] = inodes[..] else {
        panic!("{inodes:?}")
    };
    assert_ne!(i1, i0, "{inodes:?}");
    assert_eq!((i2, i3, i4), (i0, i1, i0), "{inodes:?}");
    assert!(!inodes[..5].contains(&i5), "{inodes:?}");
    w.snapshot(&full_state(6, len)).unwrap();
    let end = w.len();
    assert_eq!(
        restore_vec(&FileStorage::open(&path, false).unwrap()).unwrap(),
        (full_state(6, len), 6)
    );
    drop(w);
    assert_eq!(temps(), 0, "a temporary file was left behind");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `compact_onto` reuses only storage whose records are all older than the
/// writer's generation: a newer log, a damaged one or one of another
/// geometry is refused (its records could continue the image), and the
/// writer goes on with its own log.
#[test]
fn compact_onto_refuses_a_log_it_cannot_reuse() {
    let len = 4 * PS as usize;
    let log = |gens: u64, ps: u32| {
        let mut w = SnapshotWriter::create(MemStorage::default(), ps, len as u64).unwrap();
        for g in 1..=gens {
            w.snapshot(&state(g, len)).unwrap();
        }
        w.storage().clone()
    };
    let mut w = SnapshotWriter::create(MemStorage::default(), PS, len as u64).unwrap();
    for g in 1..=3 {
        w.snapshot(&state(g, len)).unwrap();
    }
    let mut damaged = log(3, PS).data;
    damaged[70] ^= 1;
    for (what, target) in [
        ("newer", log(5, PS)),
        ("as new", log(3, PS)),
        ("other pages", log(1, PS * 2)),
        ("damaged", MemStorage::with_data(damaged)),
    ] {
        let e = w.compact_onto(target).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::SizeMismatch | ErrorKind::CorruptHeader),
            "{what}: {e}"
        );
        assert_eq!(
            restore_vec(w.storage()).unwrap(),
            (state(3, len), 3),
            "{what}"
        );
    }
    // Older, empty and all-zero storage is taken.
    for target in [
        log(2, PS),
        MemStorage::default(),
        MemStorage::with_data(vec![0; 4096]),
    ] {
        w.compact_onto(target).unwrap();
        assert_eq!(restore_vec(w.storage()).unwrap(), (state(3, len), 3));
    }
}
