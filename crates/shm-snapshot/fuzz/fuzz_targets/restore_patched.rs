//! A valid file of several generations, then damaged by the fuzzer (bytes
//! overwritten, the file cut short): `restore` must yield exactly one of the
//! committed states (all zeros counts as the state before the first commit)
//! or a typed error, never a mix of two generations, and reports the tag
//! that generation's commit carried.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_snapshot::{ErrorKind, MemStorage, OnDamage, RestoreOptions, SnapshotWriter, restore_with};

const PAGE: usize = 4096;
const PAGES: usize = 6;

/// The state of generation `g`: each generation rewrites a different subset of pages.
fn state(g: u8) -> Vec<u8> {
    let mut v = vec![0u8; PAGE * PAGES];
    for k in 1..=g {
        for p in 0..PAGES {
            if (usize::from(k) + p) % 3 != 0 {
                v[p * PAGE..(p + 1) * PAGE].fill(k.wrapping_mul(37).wrapping_add(p as u8));
            }
        }
    }
    v
}

/// The tag generation `g` is committed with (0 before the first commit).
fn tag(g: u64) -> u64 {
    if g == 0 { 0 } else { 0xA000 + g }
}

fuzz_target!(|data: &[u8]| {
    let Some((&gens, rest)) = data.split_first() else { return };
    let gens = gens % 5 + 1;
    let mut w = SnapshotWriter::create(MemStorage::default(), PAGE as u32, (PAGE * PAGES) as u64)
        .expect("create");
    let states: Vec<Vec<u8>> = (0..=gens).map(state).collect();
    for (g, s) in (1u64..).zip(&states[1..]) {
        w.snapshot_tagged(s, tag(g)).expect("snapshot");
    }
    let mut bytes = w.storage().data.clone();
    // rest: [cut: u16] then (offset: u16, value: u8) triples.
    let (cut, patches) = match rest {
        [a, b, tail @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), tail),
        _ => (usize::MAX, rest),
    };
    for t in patches.chunks_exact(3) {
        let off = usize::from(u16::from_le_bytes([t[0], t[1]])) * 3 % bytes.len().max(1);
        if let Some(b) = bytes.get_mut(off) {
            *b = t[2];
        }
    }
    if cut < bytes.len() {
        bytes.truncate(cut * 7 % bytes.len().max(1));
    }
    let storage = MemStorage::with_data(bytes);
    let run = |opts: RestoreOptions| {
        let mut image = vec![0u8; PAGE * PAGES];
        restore_with(
            &storage,
            opts,
            |off, b| {
                let off = usize::try_from(off).unwrap();
                image[off..off + b.len()].copy_from_slice(b);
            },
            |_, _| {},
        )
        .map(|r| (image, r))
    };
    let (image, r) = match run(RestoreOptions::default()) {
        Ok(x) => x,
        Err(e) if e.kind() == ErrorKind::Damaged => {
            // Damage (never from a cut alone): the generation before it
            // restores exactly; salvage gives the newest generation after it,
            // except in the pages it names.
            let d = shm_snapshot::inspect(&storage).unwrap().damage.expect("damage");
            let until = RestoreOptions { until: Some(d.last_before), ..RestoreOptions::default() };
            let (image, r) = run(until).expect("the generation before the damage");
            let g = usize::try_from(d.last_before).unwrap();
            assert!(image == states[g], "generation {g} before the damage");
            assert_eq!(r.info.tag, tag(d.last_before), "tag of generation {g}");
            let salvage = RestoreOptions { on_damage: OnDamage::Salvage, ..RestoreOptions::default() };
            let (image, r) = run(salvage).expect("salvage");
            let s = r.salvage.expect("a salvage report");
            let g = usize::try_from(s.generation).unwrap();
            assert!(g <= usize::from(gens), "generation {g} was never written");
            // The newest intact commit up to the salvaged generation.
            assert!(r.info.tag <= tag(s.generation), "tag {} after {g}", r.info.tag);
            for p in 0..PAGES {
                if !s.pages_from_before.iter().any(|r| r.contains(&(p as u64))) {
                    let at = p * PAGE..(p + 1) * PAGE;
                    assert!(image[at.clone()] == states[g][at], "salvaged page {p} of {g}");
                }
            }
            return;
        }
        Err(_) => return,
    };
    let g = usize::try_from(r.info.generation).unwrap();
    assert!(g <= usize::from(gens), "generation {g} was never written");
    assert!(image == states[g], "restored image is not generation {g}");
    assert_eq!(r.info.tag, tag(r.info.generation), "tag of generation {g}");
});
