//! Arbitrary bytes as a snapshot file: `inspect`, `restore` and
//! `SnapshotWriter::open` give a result or a typed error, never a panic, and
//! `restore` only ever writes inside the region the header declares.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_snapshot::{MemStorage, SnapshotWriter, inspect, restore};

/// Regions larger than this are not materialised (the header may claim anything).
const MAX_REGION: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let storage = MemStorage::with_data(data.to_vec());
    let Ok(info) = inspect(&storage) else {
        // An invalid file must be refused by restore too.
        assert!(restore(&storage, |_, _| {}).is_err());
        return;
    };
    assert!(info.valid_end <= info.file_len);
    let region = info.region_size;
    let restored = restore(&storage, |off, bytes| {
        let end = off.checked_add(bytes.len() as u64).expect("offset overflow");
        assert!(end <= region, "restore wrote {off}+{} past the region {region}", bytes.len());
    });
    let restored = restored.expect("inspect accepted the file, restore refused it");
    assert_eq!(restored.info.generation, info.generation);
    if region <= MAX_REGION {
        let state = vec![0u8; usize::try_from(region).unwrap()];
        let _ = SnapshotWriter::open(storage, &state);
    }
});
