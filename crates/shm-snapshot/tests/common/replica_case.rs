//! One case of hostile replica contents, shared by the `replica_objects`
//! fuzz target and the `replica_objects` test: a store holding bases and
//! log segments cut from a real log, with the generation ranges in their
//! names chosen by the input and their bytes patched by it, and an object
//! that only looks like one of ours. Listing must work; a restore must
//! either fail with a typed error or rebuild a file that restores exactly
//! the state of the file generation it reports: never a panic, never a mix
//! of two generations.

use std::path::Path;

use shm_snapshot::replica::{self, Kind, ObjectName, Target};
use shm_snapshot::{FileStorage, MemStorage, SnapshotWriter};

const PAGE: usize = 4096;
const PAGES: usize = 4;
/// The epoch every object of a case belongs to.
pub(crate) const EPOCH: &str = "0001764745200000-1a2b3c4d";

/// The state of file generation `g`: each generation rewrites some pages.
pub(crate) fn state(g: u64) -> Vec<u8> {
    let mut v = vec![0u8; PAGE * PAGES];
    for k in 1..=g {
        for p in 0..PAGES {
            if !(k as usize + p).is_multiple_of(3) {
                v[p * PAGE..(p + 1) * PAGE].fill((k as u8).wrapping_mul(37).wrapping_add(p as u8));
            }
        }
    }
    v
}

/// A log of `gens` generations and the end offset of each (index 0: the header).
pub(crate) fn log(gens: u64) -> (Vec<u8>, Vec<usize>) {
    let mut w = SnapshotWriter::create(MemStorage::default(), PAGE as u32, (PAGE * PAGES) as u64)
        .expect("create");
    let mut ends = vec![w.storage().data.len()];
    for g in 1..=gens {
        w.snapshot(&state(g)).expect("snapshot");
        ends.push(w.storage().data.len());
    }
    (w.storage().data.clone(), ends)
}

/// Writes the object `name` of the case's epoch with `bytes` under `store`.
pub(crate) fn put(store: &Path, name: &str, bytes: &[u8]) {
    let dir = store.join(EPOCH);
    std::fs::create_dir_all(&dir).expect("epoch directory");
    std::fs::write(dir.join(name), bytes).expect("object");
}

/// Restores `store` (a `file://` replica) into `dest` and checks what came
/// back; returns the file generation restored, if any.
pub(crate) fn check_restore(store: &Path, dest: &Path, target: Target) -> Option<u64> {
    let url = format!("file://{}", store.display());
    let _ = std::fs::remove_file(dest);
    let r = replica::restore(&url, dest, target).ok()?;
    let storage = FileStorage::open(dest, false).expect("the restored file");
    let mut image = vec![0u8; PAGE * PAGES];
    let got = shm_snapshot::restore(&storage, |off, b| {
        let off = usize::try_from(off).unwrap();
        image[off..off + b.len()].copy_from_slice(b);
    })
    .expect("a restored file restores");
    assert_eq!(
        got.info.generation, r.file_generation,
        "reported generation"
    );
    assert!(
        image == state(r.file_generation),
        "file generation {} restores another state",
        r.file_generation
    );
    Some(r.file_generation)
}

/// Runs one case from arbitrary bytes in the empty directory `dir`.
pub(crate) fn run(dir: &Path, data: &[u8]) {
    let Some((&gens, rest)) = data.split_first() else {
        return;
    };
    let gens = u64::from(gens % 5 + 1);
    let (log, ends) = log(gens);
    let store = dir.join("store");
    // Objects: 3 bytes each (kind and a generation, another generation, a
    // time), then patches of 4 bytes (object, offset, value).
    let (&count, rest) = rest.split_first().unwrap_or((&0, &[]));
    let count = usize::from(count % 6) + 1;
    let (specs, patches) = rest.split_at((count * 3).min(rest.len()));
    let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
    for s in specs.chunks_exact(3) {
        let a = u64::from(s[0] >> 1) % (gens + 1);
        let b = u64::from(s[1]) % (gens + 1);
        let time_ms = u64::from(s[2]);
        let (kind, bytes) = if s[0] & 1 == 0 {
            (Kind::Base { generation: a }, &log[..ends[a as usize]])
        } else {
            let (first, last) = (a.min(b).max(1), a.max(b).max(1));
            (
                Kind::Segment { first, last },
                &log[ends[first as usize - 1]..ends[last as usize]],
            )
        };
        let name = ObjectName { kind, time_ms }.name();
        objects.push((name, bytes.to_vec()));
    }
    for p in patches.chunks_exact(4) {
        if objects.is_empty() {
            break;
        }
        let n = objects.len();
        let obj = &mut objects[usize::from(p[0]) % n].1;
        if obj.is_empty() {
            continue;
        }
        let off = usize::from(u16::from_le_bytes([p[1], p[2]])) % obj.len();
        if p[3] == 0 {
            // A cut: the object ends here.
            obj.truncate(off);
        } else {
            obj[off] ^= p[3];
        }
    }
    for (name, bytes) in &objects {
        put(&store, name, bytes);
    }
    // Not one of our names: ignored by the listing, never read.
    put(&store, "base-1-2.snap", b"not a snapshot");
    let url = format!("file://{}", store.display());
    let epochs = replica::list(&url).expect("listing a local store");
    assert!(
        epochs.len() <= 1,
        "one epoch written, {} listed",
        epochs.len()
    );
    let dest = dir.join("restored.snap");
    check_restore(&store, &dest, Target::Newest);
    for g in 0..=gens {
        if let Some(got) = check_restore(&store, &dest, Target::Generation(g)) {
            assert_eq!(got, g, "asked for file generation {g}");
        }
    }
}
