//! Arbitrary bytes as a snapshot file: `inspect`, `restore`,
//! `SnapshotWriter::open` and compaction of what it opened give a result or a
//! typed error, never a panic; `restore` only ever writes inside the region
//! the header declares, and a compacted copy restores to the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_snapshot::{
    ErrorKind, MemStorage, OnDamage, RestoreOptions, SnapshotWriter, inspect, restore,
    restore_with,
};

/// Regions larger than this are not materialised (the header may claim anything).
const MAX_REGION: u64 = 1 << 20;

fn state_of(s: &MemStorage, region: u64) -> Option<Vec<u8>> {
    let mut v = vec![0u8; usize::try_from(region).ok()?];
    restore(s, |off, b| {
        let o = usize::try_from(off).unwrap();
        v[o..o + b.len()].copy_from_slice(b);
    })
    .ok()?;
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let storage = MemStorage::with_data(data.to_vec());
    let Ok(info) = inspect(&storage) else {
        // An invalid file must be refused by restore too.
        assert!(restore(&storage, |_, _| {}).is_err());
        return;
    };
    assert!(info.valid_end <= info.file_len);
    let region = info.region_size;
    let inside = |off: u64, bytes: &[u8]| {
        let end = off.checked_add(bytes.len() as u64).expect("offset overflow");
        assert!(end <= region, "restore wrote {off}+{} past the region {region}", bytes.len());
    };
    if let Some(d) = &info.damage {
        // Damage: refused by default and by the writer (never cut), the
        // generation before it restores, and salvage stays in the region.
        let e = restore(&storage, inside).expect_err("damage restored");
        assert_eq!(e.kind(), ErrorKind::Damaged);
        assert_eq!(
            SnapshotWriter::open(storage.clone()).expect_err("damage opened").kind(),
            ErrorKind::Damaged
        );
        let until = RestoreOptions { until: Some(d.last_before), ..RestoreOptions::default() };
        let r = restore_with(&storage, until, inside, |_, _| {}).expect("the generation before");
        assert_eq!(r.info.generation, d.last_before);
        let salvage = RestoreOptions { on_damage: OnDamage::Salvage, ..RestoreOptions::default() };
        let r = restore_with(&storage, salvage, inside, |_, _| {}).expect("salvage");
        assert_eq!(r.info.generation, d.newest_after);
        assert!(d.newest_after > d.last_before);
        return;
    }
    let restored = restore(&storage, inside);
    let restored = restored.expect("inspect accepted the file, restore refused it");
    assert_eq!(restored.info.generation, info.generation);
    // The writer's index holds only pages with records, whatever the header claims.
    let Ok(w) = SnapshotWriter::open(storage.clone()) else {
        return;
    };
    if region <= MAX_REGION && w.generation() > 0 && !info.all_zero {
        let before = state_of(&storage, region).expect("restored once already");
        let c = w.compact_into(MemStorage::default()).expect("compaction of a valid log");
        assert_eq!(state_of(&c, region), Some(before), "compaction changed the state");
    }
});
