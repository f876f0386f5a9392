//! Files of format version 1 (commit records without a tag, the program's
//! generation in image page 0), written here byte by byte from the format's
//! description in `docs/protocol/shm-snapshot.md`, not by the library: they
//! restore, a writer continues them, a compaction upgrades them to version 2
//! with the right tag, and a host started on one serves the program's
//! generation from the prefix and carries it into the upgraded FILE.
#![allow(clippy::cast_possible_truncation, clippy::single_range_in_vec_init)]

mod common;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use shm_snapshot::host::{HostConfig, Inspection, SnapshotHost};
use shm_snapshot::live::Client;
use shm_snapshot::{MemStorage, SnapshotWriter, Storage, VERSION, inspect};
use shm_testkit::unique_name;

const PAGE: usize = 4096;

/// A 32-byte record header (docs/protocol/shm-snapshot.md, "Snapshot file").
fn record(kind: u32, generation: u64, index: u64, payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(32 + payload.len());
    r.extend_from_slice(&0x5245_4331u32.to_le_bytes());
    r.extend_from_slice(&kind.to_le_bytes());
    r.extend_from_slice(&generation.to_le_bytes());
    r.extend_from_slice(&index.to_le_bytes());
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&r[..28]), payload);
    r.extend_from_slice(&crc.to_le_bytes());
    r.extend_from_slice(payload);
    r
}

/// A version 1 log of a `region`-byte image: one snapshot per element of
/// `snapshots`, each a list of (page index, page bytes).
fn v1_log(region: u64, snapshots: &[Vec<(u64, Vec<u8>)>]) -> Vec<u8> {
    let mut h = [0u8; 64];
    h[0..8].copy_from_slice(b"OUTLSNP1");
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[12..16].copy_from_slice(&(PAGE as u32).to_le_bytes());
    h[16..24].copy_from_slice(&region.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    let mut log = h.to_vec();
    for (g, pages) in (1u64..).zip(snapshots) {
        for (i, bytes) in pages {
            log.extend(record(1, g, *i, bytes));
        }
        log.extend(record(2, g, pages.len() as u64, &[]));
    }
    log
}

fn page(fill: u8) -> Vec<u8> {
    vec![fill; PAGE]
}

#[test]
fn version_1_restores_continues_and_compacts_into_version_2() {
    let snaps = vec![vec![(0, page(1)), (1, page(2))], vec![(1, page(3))]];
    let mut st = MemStorage::default();
    st.write_at(0, &v1_log(2 * PAGE as u64, &snaps)).unwrap();

    let info = inspect(&st).unwrap();
    assert_eq!((info.version, info.generation, info.tag), (1, 2, 0));
    let (state, g) = common::restore_vec(&st).unwrap();
    assert_eq!(g, 2);
    assert_eq!(state, [page(1), page(3)].concat());

    // A writer continues it as version 1: its commits store no tag.
    let mut w = SnapshotWriter::open(st.clone()).unwrap();
    assert_eq!(w.version(), 1);
    let mut tx = w.begin();
    tx.page(0, &page(4)).unwrap();
    assert_eq!(tx.commit_tagged(77).unwrap(), 3);
    assert_eq!(w.tag(), 77, "kept in memory for the compaction");
    let info = inspect(w.storage()).unwrap();
    assert_eq!((info.version, info.generation, info.tag), (1, 3, 0));

    // A compaction writes version 2, carrying the tag and the state.
    let compacted = w.compact_into(MemStorage::default()).unwrap();
    let info = inspect(&compacted).unwrap();
    assert_eq!((info.version, info.generation, info.tag), (VERSION, 3, 77));
    assert_eq!(
        common::restore_vec(&compacted).unwrap(),
        ([page(4), page(3)].concat(), 3)
    );
    // Continued, it stores tags in its commit records.
    let mut w = SnapshotWriter::open(compacted).unwrap();
    assert_eq!(w.version(), VERSION);
    let tx = w.begin();
    assert_eq!(tx.commit_tagged(78).unwrap(), 4);
    let info = inspect(w.storage()).unwrap();
    assert_eq!((info.generation, info.tag), (4, 78));
}

#[test]
fn a_commit_without_a_tag_carries_the_previous_one() {
    let mut w = SnapshotWriter::create(MemStorage::default(), 4096, 4096).unwrap();
    let tx = w.begin();
    tx.commit_tagged(5).unwrap();
    w.snapshot(&page(9)).unwrap();
    let info = inspect(w.storage()).unwrap();
    assert_eq!((info.version, info.generation, info.tag), (VERSION, 2, 5));
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(what));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A host's FILE in version 1: `state_pages` pages of state after the
/// 4096-byte prefix, whose first 8 bytes are the program's generation.
fn host_v1_file(path: &Path, state_pages: u64, program_generations: &[u64]) {
    let snaps: Vec<_> = program_generations
        .iter()
        .map(|&g| {
            let mut prefix = vec![0u8; PAGE];
            prefix[..8].copy_from_slice(&g.to_le_bytes());
            vec![(0, prefix), (1 + g % state_pages, page(g as u8))]
        })
        .collect();
    std::fs::write(path, v1_log((1 + state_pages) * PAGE as u64, &snaps)).unwrap();
}

#[test]
fn a_host_serves_a_version_1_file_and_upgrades_it_at_its_compaction() {
    let dir = temp_dir("format-v1-host");
    let file = dir.join("state.snap");
    let pages = 4;
    host_v1_file(&file, pages, &[5, 9, 12]);
    let i = Inspection::of(&file).unwrap();
    assert_eq!((i.info.version, i.info.generation), (1, 3));
    assert_eq!(i.program_generation, 12, "from the image prefix");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shm-restore"))
        .args(["inspect", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["format_version"], 1, "{json}");
    assert_eq!(json["program_generation"], 12, "{json}");

    let config = HostConfig {
        compact_min: 0,
        ..HostConfig::new(&file)
    };
    let mut sut = SnapshotHost::open(config, None).unwrap();
    assert_eq!(sut.persisted(), 12);
    let memfd = sut.memfd().try_clone_to_owned().unwrap();
    let client = Client::open(memfd.as_fd()).unwrap();
    assert_eq!(client.generation(), 12);
    client.work().write(0, &0xAAu64).unwrap();
    assert_eq!(client.commit(&[0..8]), 13);
    sut.tick();
    assert_eq!(sut.persisted(), 13);
    let i = Inspection::of(&file).unwrap();
    assert_eq!(i.info.version, 1, "continued in place until a compaction");
    assert_eq!(i.program_generation, 13);

    // Enough commits to pass the compaction limit (2x the image).
    let mut g = 13;
    while Inspection::of(&file).unwrap().info.version == 1 {
        for o in (0..pages * 4096).step_by(4096) {
            client.work().write(o as usize, &g).unwrap();
        }
        g = client.commit(&[0..(pages * 4096) as usize]);
        sut.tick();
        assert_eq!(sut.persisted(), g);
        assert!(g < 40, "no compaction after {g} generations");
    }
    let i = Inspection::of(&file).unwrap();
    assert_eq!((i.info.version, i.info.tag), (VERSION, g));
    assert_eq!(i.program_generation, g, "the tag, not the stale prefix");
    // Version 2 snapshots no longer write the prefix page.
    let before = i.info.valid_end;
    client.work().write(8, &1u64).unwrap();
    let g = client.commit(&[8..16]);
    sut.tick();
    let i = Inspection::of(&file).unwrap();
    assert_eq!(i.program_generation, g);
    assert_eq!(
        i.info.valid_end - before,
        (32 + 4096) + (32 + 8),
        "one page record and a tagged commit record"
    );
    let finished = sut.finish();
    assert_eq!(finished.persisted, g);
    drop(client);
    // A cold start reads the program generation from the tag.
    let sut = SnapshotHost::open(HostConfig::new(&file), None).unwrap();
    assert_eq!(sut.persisted(), g);
    let client = Client::open(sut.memfd()).unwrap();
    assert_eq!(client.work().read::<u64>(8).unwrap(), 1);
    drop(client);
    drop(sut);
    std::fs::remove_dir_all(&dir).unwrap();
}
