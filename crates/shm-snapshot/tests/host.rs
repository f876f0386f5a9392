//! The library host (`shm_snapshot::host`) driven directly: a client commits
//! into the host's memfd, the host ticks and finishes, and FILE restores the
//! client's last generation; warm starts, damage and stray writes.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use shm_snapshot::host::{HostConfig, HostError, SnapshotHost, StartFrom, StrayWrite};
use shm_snapshot::live::{self, Client};
use shm_snapshot::{ErrorKind, FileStorage};
use shm_testkit::unique_name;

const REGION: u64 = 16 * 4096 + 100;

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(what));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(file: &Path) -> HostConfig {
    HostConfig {
        create: true,
        size: REGION,
        ..HostConfig::new(file)
    }
}

/// FILE's state and the program's generation (its commit's tag).
fn restore_file(file: &Path) -> (Vec<u8>, u64) {
    let st = FileStorage::open(file, false).unwrap();
    let (image, r) = common::restore_opts(&st, shm_snapshot::RestoreOptions::default()).unwrap();
    (image[live::CONTROL_LEN as usize..].to_vec(), r.info.tag)
}

/// Commit `g`: the 8-byte word `g` at a page chosen by `g`, and at offset 0.
fn commit(client: &Client, model: &mut [u8], g: u64) {
    let at = (g as usize * 4096 + 8 * (g as usize % 7)) % (REGION as usize - 8);
    for o in [0, at] {
        client.work().write(o, &g).unwrap();
        model[o..o + 8].copy_from_slice(&g.to_ne_bytes());
    }
    assert_eq!(client.commit(&[0..8, at..at + 8]), g);
}

/// The memfd's commit sequence, overwritten as a stray write would.
fn write_seq(memfd: &OwnedFd, seq: u64) {
    let f = std::fs::File::from(memfd.try_clone().unwrap());
    // `seq` is at payload offset 128, after the 4096-byte segment header
    // (docs/protocol/shm-snapshot.md).
    f.write_all_at(&seq.to_le_bytes(), 4096 + 128).unwrap();
}

/// The program preempted in the middle of commit `g` for `held`: its
/// sequence odd and page 0 stamped `g` (as the client leaves them between
/// its first stores and its last), then the commit completed.
fn preempted_commit(memfd: &OwnedFd, g: u64, held: std::time::Duration) {
    let f = std::fs::File::from(memfd.try_clone().unwrap());
    // The stamps are at payload offset 4096, page 0's first.
    f.write_all_at(&g.to_le_bytes(), 4096 + 4096).unwrap();
    write_seq(memfd, 2 * g - 1);
    std::thread::sleep(held);
    write_seq(memfd, 2 * g);
}

/// A commit that stays under way for a while (the program preempted inside
/// it, as on a loaded machine) delays a snapshot rather than skipping it;
/// a tick whose snapshot was skipped anyway (the commit held longer than
/// the host's retries) is tried again soon, not an interval later.
#[test]
fn a_commit_preempted_midway_is_waited_for_not_skipped() {
    use shm_snapshot::host::Work;
    use std::time::{Duration, Instant};
    let dir = temp_dir("host-preempted");
    let file = dir.join("state.snap");
    let mut sut = SnapshotHost::open(config(&file), None).unwrap();
    let memfd = sut.memfd().try_clone_to_owned().unwrap();
    let client = Client::open(memfd.as_fd()).unwrap();
    let mut model = vec![0u8; REGION as usize];
    commit(&client, &mut model, 1);
    sut.tick();
    assert_eq!(sut.persisted(), 1);
    // Generation 2 is complete; 3 is under way for 60 ms.
    commit(&client, &mut model, 2);
    std::thread::scope(|s| {
        s.spawn(|| preempted_commit(&memfd, 3, Duration::from_millis(60)));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(sut.snapshot_now().unwrap(), Some(3));
    });
    // Generation 4 is complete; 5 is under way for longer than the retries.
    commit(&client, &mut model, 4);
    std::thread::scope(|s| {
        s.spawn(|| preempted_commit(&memfd, 5, Duration::from_millis(800)));
        std::thread::sleep(Duration::from_millis(5));
        sut.tick();
        assert_eq!(sut.persisted(), 3, "the tick was skipped");
        let asked = Instant::now();
        let deadline = asked + Duration::from_secs(30);
        loop {
            let work = sut.wait_for_work(deadline);
            assert_eq!(work, Work::Tick);
            assert!(Instant::now() < deadline, "retried only at the deadline");
            sut.tick();
            if sut.persisted() == 5 {
                break;
            }
        }
    });
    assert_eq!(restore_file(&file).1, 5);
    drop((sut, client));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ticks_and_finish_leave_the_last_generation_in_file() {
    let dir = temp_dir("host-ticks");
    let file = dir.join("state.snap");
    let mut sut = SnapshotHost::open(config(&file), None).unwrap();
    assert!(!sut.wants_snapshot_now(), "nothing committed yet");
    let memfd = sut.memfd().try_clone_to_owned().unwrap();
    let client = Client::open(memfd.as_fd()).unwrap();
    let mut model = vec![0u8; REGION as usize];
    commit(&client, &mut model, 1);
    assert!(sut.wants_snapshot_now(), "the first commit is not on disk");
    sut.tick();
    assert_eq!(sut.persisted(), 1);
    assert!(!sut.wants_snapshot_now(), "only before the first tick");
    // The program commits in another thread while the host ticks: every
    // tick takes a whole commit, whatever the interleaving.
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for g in 2..=200 {
                commit(&client, &mut model, g);
            }
        });
        while !writer.is_finished() {
            sut.tick();
            assert!(sut.refused().is_none());
        }
        writer.join().unwrap();
    });
    sut.tick();
    commit(&client, &mut model, 201);
    drop(client);
    let done = sut.finish();
    assert_eq!((done.persisted, done.live), (201, Some(201)));
    assert!(done.stats.snapshots >= 3, "{:?}", done.stats);
    let (state, generation) = restore_file(&file);
    assert_eq!(generation, 201);
    assert!(state == model, "FILE is not the last committed state");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn warm_start_snapshots_the_inherited_memfd_before_the_program_runs() {
    let dir = temp_dir("host-warm");
    let file = dir.join("state.snap");
    let mut model = vec![0u8; REGION as usize];
    let sut = SnapshotHost::open(config(&file), None).unwrap();
    let kept = sut.memfd().try_clone_to_owned().unwrap(); // as a supervisor keeps it
    let client = Client::open(kept.as_fd()).unwrap();
    commit(&client, &mut model, 1);
    assert_eq!(sut.finish().persisted, 1);
    // The host dies; the program goes on without it.
    for g in 2..=5 {
        commit(&client, &mut model, g);
    }
    drop(client);
    let prepared = SnapshotHost::prepare(config(&file), Some(kept), &mut ()).unwrap();
    assert!(!prepared.created_memfd());
    let sut = prepared.start().unwrap();
    assert_eq!(sut.persisted(), 5, "the first snapshot is taken at start");
    assert_eq!(restore_file(&file), (model.clone(), 5));
    // FILE newer than the memfd: which one is right cannot be told.
    let behind = common::live_memfd("behind", REGION, 3);
    let e = SnapshotHost::open(config(&file), Some(behind)).unwrap_err();
    assert!(
        matches!(
            e,
            HostError::InheritedBehind {
                memfd: 3,
                file: 5,
                ..
            }
        ),
        "{e:?}"
    );
    drop(sut);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_file_is_refused_unchanged_then_salvaged_keeping_it_aside() {
    let dir = temp_dir("host-damaged");
    let file = dir.join("state.snap");
    let mut model = vec![0u8; REGION as usize];
    let mut sut = SnapshotHost::open(config(&file), None).unwrap();
    let client = Client::open(sut.memfd()).unwrap();
    for g in 1..=3 {
        commit(&client, &mut model, g);
        sut.tick();
    }
    drop(client);
    sut.finish();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[200] ^= 1; // a record of generation 1, with intact ones after it
    std::fs::write(&file, &bytes).unwrap();

    let e = SnapshotHost::open(config(&file), None).unwrap_err();
    let HostError::Damaged { source, .. } = &e else {
        panic!("not refused as damaged: {e:?}");
    };
    assert_eq!(source.kind(), ErrorKind::Damaged);
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "FILE changed");

    let salvage = HostConfig {
        start_from: StartFrom::Salvage,
        ..config(&file)
    };
    let sut = SnapshotHost::open(salvage, None).unwrap();
    assert_eq!(sut.persisted(), 3);
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.snap.damaged."))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(dir.join(&aside[0])).unwrap(), bytes);
    assert_eq!(restore_file(&file), (model, 3));
    drop(sut);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stray_sequence_stops_snapshots_for_good_and_file_keeps_its_generation() {
    let dir = temp_dir("host-stray");
    let file = dir.join("state.snap");
    let mut model = vec![0u8; REGION as usize];
    let mut sut = SnapshotHost::open(config(&file), None).unwrap();
    let memfd = sut.memfd().try_clone_to_owned().unwrap();
    let client = Client::open(memfd.as_fd()).unwrap();
    commit(&client, &mut model, 1);
    sut.tick();
    write_seq(&memfd, u64::MAX);
    sut.tick();
    assert!(
        matches!(
            sut.refused(),
            Some(StrayWrite::OutOfRange { seq: u64::MAX })
        ),
        "{:?}",
        sut.refused()
    );
    // A sequence that looks right again is not trusted any more.
    write_seq(&memfd, 2 * 9);
    let e = sut.snapshot_now().unwrap_err();
    assert!(
        matches!(e, HostError::Refused { generation: 1, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("stays at generation 1"), "{e}");
    drop(client);
    assert_eq!(sut.finish().persisted, 1);
    assert_eq!(restore_file(&file), (model, 1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_without_create_is_not_found() {
    let dir = temp_dir("host-missing");
    let file = dir.join("state.snap");
    let e = SnapshotHost::open(HostConfig::new(&file), None).unwrap_err();
    assert!(
        matches!(&e, HostError::NotFound { path } if *path == file),
        "{e:?}"
    );
    assert!(!file.exists());
    let e = SnapshotHost::open(
        HostConfig {
            compact_at: 1.2,
            ..config(&file)
        },
        None,
    )
    .unwrap_err();
    assert!(matches!(e, HostError::CompactAt { .. }), "{e:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The lag summary is the real recovery point: with a snapshot every
/// 300 ms and a commit every 2 ms, FILE trails the newest commit by close to
/// the interval just before each snapshot, and by many generations; the
/// host sees that between snapshots, not only right after one (where it is
/// always nearly caught up).
#[test]
fn lag_summary_is_the_largest_distance_between_commits_and_file() {
    use shm_snapshot::host::Work;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed}; // atomics-ok: test-local stop flag
    use std::time::{Duration, Instant};
    let dir = temp_dir("host-lag");
    let mut host = SnapshotHost::open(config(&dir.join("s.snap")), None).unwrap();
    let client = Client::open(host.memfd()).unwrap();
    let stop = AtomicBool::new(false);
    let interval = Duration::from_millis(300);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut model = vec![0u8; REGION as usize];
            let mut g = 0;
            while !stop.load(Relaxed) {
                g += 1;
                commit(&client, &mut model, g);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let end = Instant::now() + 4 * interval;
        let mut next = Instant::now() + interval;
        while Instant::now() < end {
            match host.wait_for_work(next) {
                Work::Waiters | Work::Commits => host.serve_waiters(),
                Work::Interrupted => {}
                _ => {
                    host.tick();
                    next = Instant::now() + interval;
                }
            }
        }
        stop.store(true, Relaxed);
    });
    let stats = host.stats();
    assert!(stats.snapshots >= 3, "{stats:?}");
    // Commits keep coming, so FILE is at least most of an interval behind
    // just before each periodic snapshot (a loaded machine commits less
    // often, but the time stays).
    assert!(stats.max_lag >= interval / 2, "{stats:?}");
    assert!(stats.max_lag_generations >= 10, "{stats:?}");
    drop(client);
    host.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Commits that rewrite the whole state pass `compact_at` (2x the image) at
/// nearly every snapshot: without a floor each one pays a compaction; with
/// `compact_min` none does until the log reaches it.
#[test]
fn compaction_waits_for_the_log_to_reach_compact_min() {
    let dir = temp_dir("host-compact-min");
    for (compact_min, expect_some) in [(0, true), (1 << 20, false)] {
        let file = dir.join(format!("state-{compact_min}.snap"));
        let mut sut = SnapshotHost::open(
            HostConfig {
                compact_min,
                ..config(&file)
            },
            None,
        )
        .unwrap();
        let memfd = sut.memfd().try_clone_to_owned().unwrap();
        let client = Client::open(memfd.as_fd()).unwrap();
        let mut model = vec![0u8; REGION as usize];
        // Twelve full rewrites of a 68 KiB image: about 820 KiB of log.
        for g in 1..=12u64 {
            model.fill(g as u8);
            client.work().write_bytes(0, &model).unwrap();
            let whole = 0..REGION as usize;
            assert_eq!(client.commit(std::slice::from_ref(&whole)), g);
            sut.snapshot_now().unwrap();
        }
        let compactions = sut.stats().compactions;
        assert_eq!(
            compactions > 0,
            expect_some,
            "compact_min {compact_min}: {compactions} compactions"
        );
        let finished = sut.finish();
        assert_eq!(finished.persisted, 12);
        assert_eq!(restore_file(&file), (model[..].to_vec(), 12));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
