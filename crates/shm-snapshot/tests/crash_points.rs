//! SIGKILL of a real writer process at each named crash point of the file
//! writer: the file then restores exactly one committed generation, no older
//! than the last one the writer reported durable.
#![cfg(feature = "fault-injection")]

mod common;

use std::fs::OpenOptions;
use std::ops::RangeInclusive;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use shm_snapshot::{FileStorage, SnapshotWriter};

const LEN: usize = 64 * 4096;

fn state(g: u64) -> Vec<u8> {
    // Every generation changes a different number of pages.
    let mut v = vec![0u8; LEN];
    for k in 0..=g {
        let p = usize::try_from(k * 5 % 64).unwrap() * 4096;
        v[p..p + 4096].fill(u8::try_from(k % 250).unwrap() + 1);
    }
    v
}

/// A new writer on `path` (created or emptied) writing 4 KiB batches.
fn new_writer(path: &Path) -> SnapshotWriter<FileStorage> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let mut w = SnapshotWriter::create(FileStorage(f), 4096, LEN as u64).unwrap();
    w.set_write_batch(4096);
    w
}

/// Snapshots the states of `generations`, reporting each durable step.
fn snapshots(w: &mut SnapshotWriter<FileStorage>, generations: RangeInclusive<u64>) {
    for g in generations {
        w.snapshot(&state(g)).unwrap();
        eprintln!("durable {g}");
    }
}

/// Snapshots 1..=6.
fn writer(path: &Path) {
    snapshots(&mut new_writer(path), 1..=6);
}

/// This test binary as `role` of the test fn `test`, writing `path`, with
/// the crash point `point` armed: its exit status and stderr.
fn run_killed_at(test: &str, role: &str, path: &Path, point: &str) -> (ExitStatus, String) {
    let out = shm_testkit::role_command(test, role)
        .env("SNAP_FILE", path)
        .env("SHM_CRASH_AT", point)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status, text)
}

#[test]
fn writer_killed_at_each_crash_point() {
    let dir = std::env::temp_dir();
    if let Some(role) = shm_testkit::role() {
        assert_eq!(role, "writer");
        writer(Path::new(&std::env::var("SNAP_FILE").unwrap()));
        return;
    }
    let _w = shm_testkit::Watchdog::new(std::time::Duration::from_secs(120));
    let mut killed = 0;
    for point in [
        "writer.batch_written@3",
        "writer.batch_written@5",
        "writer.before_sync@2",
        "writer.before_sync@5",
        "writer.after_sync@1",
        "writer.after_sync@4",
    ] {
        let path = dir.join(shm_testkit::unique_name("crash-snap"));
        let (status, text) =
            run_killed_at("writer_killed_at_each_crash_point", "writer", &path, point);
        // The point fired: the writer SIGKILLed itself there.
        if status.signal() == Some(9) {
            killed += 1;
        }
        let durable = text
            .lines()
            .filter_map(|l| l.strip_prefix("durable ")?.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let f = std::fs::File::open(&path).unwrap();
        let (v, g) = common::restore_vec(&FileStorage(f)).unwrap();
        assert!(g >= durable, "{point}: restored {g} < durable {durable}");
        assert!(
            g <= durable + 1,
            "{point}: restored {g} > durable {durable} + 1"
        );
        assert_eq!(
            v,
            if g == 0 { vec![0; LEN] } else { state(g) },
            "{point}: content of generation {g}"
        );
        std::fs::remove_file(&path).unwrap();
    }
    assert_eq!(killed, 6, "not every crash point fired");
}

/// Snapshots 1..=3, compacts, snapshots 4..=5; reports each durable step.
fn compacting_writer(path: &Path) {
    let mut w = new_writer(path);
    snapshots(&mut w, 1..=3);
    w.compact_file(path).unwrap();
    eprintln!("compacted");
    snapshots(&mut w, 4..=5);
}

/// SIGKILL at each step of a compaction (mid-write of the temporary file,
/// after its sync, after the rename, after the directory sync): the file
/// restores exactly the generation last reported durable (or the next, once
/// the killed step is past its sync), the stale temporary file is removed,
/// and a writer reopened on the file continues.
#[test]
fn compaction_killed_at_each_crash_point() {
    let dir = std::env::temp_dir();
    if let Some(role) = shm_testkit::role() {
        assert_eq!(role, "compactor");
        compacting_writer(Path::new(&std::env::var("SNAP_FILE").unwrap()));
        return;
    }
    let _w = shm_testkit::Watchdog::new(std::time::Duration::from_secs(120));
    for point in [
        "compact.batch_written@2",
        "compact.temp_synced@1",
        "compact.renamed@1",
        "compact.dir_synced@1",
    ] {
        let path = dir.join(shm_testkit::unique_name("crash-compact"));
        let (status, text) = run_killed_at(
            "compaction_killed_at_each_crash_point",
            "compactor",
            &path,
            point,
        );
        assert_eq!(
            status.signal(),
            Some(9),
            "{point} did not SIGKILL the compactor: {text}"
        );
        assert!(!text.contains("compacted"), "{point}: {text}");
        let renamed =
            point.starts_with("compact.renamed") || point.starts_with("compact.dir_synced");
        // Before the rename the temporary file is the unfinished image;
        // after it (an exchange of the two names), the old log, kept for
        // the next compaction to reuse.
        let left = temps(&path);
        assert_eq!(left.len(), 1, "{point}: {left:?}");
        if renamed {
            let old = FileStorage(std::fs::File::open(&left[0]).unwrap());
            assert_eq!(shm_snapshot::inspect(&old).unwrap().commits, 3, "{point}");
        }
        let f = std::fs::File::open(&path).unwrap();
        let (v, r) =
            common::restore_opts(&FileStorage(f), shm_snapshot::RestoreOptions::default()).unwrap();
        assert_eq!(r.info.generation, 3, "{point}: {text}");
        assert_eq!(v, state(3), "{point}: content");
        // A compacted file holds one commit; the old log three.
        assert_eq!(r.info.commits, if renamed { 1 } else { 3 }, "{point}");
        assert_eq!(
            shm_snapshot::remove_stale_compaction(&path).unwrap().len(),
            1
        );
        assert!(temps(&path).is_empty());
        // The survivor takes further snapshots.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut w = SnapshotWriter::open(FileStorage(f)).unwrap();
        w.snapshot(&state(4)).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(
            shm_snapshot::inspect(&FileStorage(f)).unwrap().generation,
            4
        );
        std::fs::remove_file(&path).unwrap();
    }
}

/// The compaction temporary files next to `path` (`NAME.compact.*.tmp`).
fn temps(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(&format!("{name}.compact.")) && n.ends_with(".tmp")
        })
        .collect()
}

/// A host killed while it creates FILE (`--create`): before the rename no
/// FILE exists (only a temporary file, removed by the next start), after it
/// FILE is a complete, empty log. Either way the next start works: a killed
/// create never leaves a FILE that later starts refuse as empty or short.
#[test]
fn create_killed_before_and_after_its_rename() {
    use shm_snapshot::host::{HostConfig, SnapshotHost};
    let config = |path: &Path| HostConfig {
        create: true,
        size: 4 * 4096,
        ..HostConfig::new(path)
    };
    if let Some(role) = shm_testkit::role() {
        assert_eq!(role, "creator");
        let path = std::path::PathBuf::from(std::env::var("SNAP_FILE").unwrap());
        SnapshotHost::open(config(&path), None).unwrap();
        return;
    }
    let _w = shm_testkit::Watchdog::new(std::time::Duration::from_secs(60));
    for point in ["create.temp_synced@1", "create.renamed@1"] {
        let dir = std::env::temp_dir().join(shm_testkit::unique_name("crash-create"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.snap");
        let (status, text) = run_killed_at(
            "create_killed_before_and_after_its_rename",
            "creator",
            &path,
            point,
        );
        assert_eq!(
            status.signal(),
            Some(9),
            "{point} did not SIGKILL the creator: {text}"
        );
        let renamed = point.starts_with("create.renamed");
        assert_eq!(path.exists(), renamed, "{point}");
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "{point}: FILE or its temporary file");
        if renamed {
            let f = std::fs::File::open(&path).unwrap();
            assert_eq!(
                shm_snapshot::inspect(&FileStorage(f)).unwrap().generation,
                0
            );
        }
        // The next start (still with create) works and leaves FILE alone.
        let host = SnapshotHost::open(config(&path), None).unwrap();
        drop(host);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.snap"], "{point}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
