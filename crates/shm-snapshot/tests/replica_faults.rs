//! Store faults under `shm-restore --replica`, against a real S3-compatible
//! store (`SeaweedFS`, from `shm_testkit::s3`): a store that stalls, one
//! that is full, the replica-lag warning during an outage, a corrupt base,
//! and a SIGKILL of the host while a multipart upload is in progress. In
//! each, the program and the local snapshots go on, and what the store
//! holds afterwards restores to a consistent state (or, reported, to none).
#![cfg(feature = "shm-restore")]

mod common;

use std::time::{Duration, Instant};

use common::cli::{Run, check_file, committer, numbers_after, wait_text};
use common::replica::{
    Case, UPLOADED, assert_no_gap, file_generation, last_number_after, newest_epoch, uploads,
};
use shm_snapshot::live::Client;
use shm_testkit::s3::{FULL, S3Server};
use shm_testkit::{Watchdog, role};

/// The host's warning that the store is behind FILE.
const BEHIND: &str = "replica behind FILE";

/// The program of the slow-store test (role `durable_waiter`): commits as
/// [`committer`] does (every word set to the generation), waits for each
/// commit to be durable in FILE (the local level: never the store), and
/// reports each wait on stderr (the host's log).
fn durable_waiter() {
    let mut fds = shm_fd::listen::ListenFds::from_env_inherited().expect("valid LISTEN_*");
    let fd = fds.take("state").expect("a memfd named state");
    let client = Client::open(std::os::fd::AsFd::as_fd(&fd)).expect("a snapshot memfd");
    let work = client.work();
    loop {
        let g = client.generation() + 1;
        for w in 0..work.len() / 8 {
            work.write(w * 8, &g).unwrap();
        }
        client.commit(std::slice::from_ref(&(0..work.len())));
        match client.wait_durable(g, Duration::from_secs(50)) {
            Ok(_) => eprintln!("program: durable {g}"),
            Err(e) => eprintln!("program: FAIL wait_durable({g}): {e}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The host's log after its first `mark` bytes.
fn since(host: &Run, mark: usize) -> String {
    host.stderr().get(mark..).unwrap_or_default().to_owned()
}

/// The generations behind in each replica-lag warning of `text`, and
/// whether it said that uploads are failing.
fn lag_warnings(text: &str) -> Vec<(u64, bool)> {
    text.lines()
        .filter(|l| l.contains(BEHIND))
        .map(|l| {
            let behind = l
                .split_once(" behind)")
                .and_then(|(a, _)| a.rsplit_once('(')?.1.parse().ok())
                .unwrap_or_else(|| panic!("no generation count in {l:?}"));
            (behind, l.contains("uploads are failing"))
        })
        .collect()
}

/// Waits (60 s deadline) until `done()`; `what` and `log()` explain a failure.
fn wait_until(what: &str, log: impl Fn() -> String, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never {what}:\n{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the host once the store has replicated `more` generations past
/// what its log says now, and checks the end state: the store caught up
/// with FILE at exit, with no gap in the generation sequence, and restores
/// FILE. Returns the host's whole log.
fn stop_caught_up(case: &Case, host: Run, more: usize) -> String {
    let replicated = uploads(&host.stderr());
    host.wait_count(UPLOADED, replicated + more);
    let err = host.stop();
    let g = check_file(&case.file);
    assert_eq!(
        last_number_after(&err, "at exit: replicated generation "),
        Some(g),
        "{err}"
    );
    assert_no_gap(&case.listing(), file_generation(&case.file));
    case.assert_restores_file("restored.snap");
    err
}

/// The store stalls (SIGSTOP: it accepts connections and answers nothing)
/// for as long as it takes the program to commit and see dozens of its
/// commits durable: the host and the program never wait for the store.
/// Nothing is replicated meanwhile; the lag warning grows; once the store
/// answers again, the uploader skips ahead (one segment spans the
/// generations of the stall) and the chain has no gap.
#[test]
fn slow_store_never_stalls_the_program_and_the_uploader_skips_ahead() {
    match role().as_deref() {
        Some("durable_waiter") => return durable_waiter(),
        Some(_) => return committer(),
        None => {}
    }
    let _w = Watchdog::new(Duration::from_secs(150));
    let Some(mut case) = Case::new(S3Server::start("slow"), "replica-slow", "slow") else {
        return;
    };
    let host = case.host_role(
        "slow_store_never_stalls_the_program_and_the_uploader_skips_ahead",
        &["--lag-warn", "0.5"],
        "durable_waiter",
        &[],
    );
    host.wait_count(UPLOADED, 10);
    let mark = host.stderr().len();
    case.s3.pause();
    // Only progress that does not need the store can end these waits.
    wait_text(|| since(&host, mark), "durable generation", 40);
    wait_text(|| since(&host, mark), "program: durable", 40);
    wait_until(
        "a replica-lag warning 20 generations behind while the store is stalled",
        || since(&host, mark),
        || lag_warnings(&since(&host, mark)).iter().any(|w| w.0 >= 20),
    );
    let stalled = since(&host, mark);
    case.s3.resume();
    // At most the upload whose answer was already on its way completed.
    assert!(
        uploads(&stalled) <= 1,
        "uploads completed while the store was stopped:\n{stalled}"
    );
    let snapshots = stalled.matches("durable generation").count();

    let err = stop_caught_up(&case, host, 3);
    assert!(!err.contains("FAIL"), "{err}");
    let (_, _, segs) = newest_epoch(&case.listing());
    let widest = segs.iter().map(|s| s.1 - s.0 + 1).max().unwrap_or(0);
    assert!(
        widest as usize >= snapshots / 2,
        "{snapshots} snapshots while the store was stalled, the widest segment holds {widest} generations: {segs:?}"
    );
    assert!(
        (segs.len() as u64) < file_generation(&case.file),
        "one segment per snapshot: {segs:?}"
    );
    // The stall is the largest lag reported at exit.
    let largest = numbers_after(&err, "largest replication lag ");
    assert!(largest.last().is_some_and(|&n| n >= 20), "{err}");
    case.finish();
}

/// A store that fills up and then refuses writes (a single volume of 1 MB:
/// HTTP 500, "no writable volumes"): the program and the local snapshots
/// go on, the failures and the lag are reported; once the store has room
/// again (restarted with room for more volumes), replication catches up
/// with no gap.
#[test]
fn full_store_never_stalls_snapshots_and_catches_up_once_it_has_room() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(150));
    let s3 = S3Server::start_with("full", FULL);
    let Some(mut case) = Case::new(s3, "replica-full", "full") else {
        return;
    };
    let host = case.host(
        "full_store_never_stalls_snapshots_and_catches_up_once_it_has_room",
        &["--lag-warn", "0.5"],
    );
    // 64 KiB segments: the store is full after some 16 of them.
    host.wait_count("upload failed", 1);
    let mark = host.stderr().len();
    wait_text(|| since(&host, mark), "durable generation", 30);
    wait_until(
        "a replica-lag warning saying that uploads are failing",
        || since(&host, mark),
        || lag_warnings(&since(&host, mark)).iter().any(|w| w.1),
    );
    let log = host.stderr();
    let failed = log
        .lines()
        .find(|l| l.contains("upload failed"))
        .unwrap()
        .to_owned();
    // The store answered, and refused: not a connection failure.
    assert!(failed.contains("500"), "{failed}");
    assert!(uploads(&log) > 0, "{log}");

    case.s3.set_args(&[]);
    case.s3.restart();
    host.wait_count("uploads succeed again", 1);
    stop_caught_up(&case, host, 5);
    case.finish();
}

/// With a small `--lag-warn`, the host warns that the store is behind FILE
/// while the store is down, saying that uploads are failing (and did not
/// before the outage); replication then catches up with no gap.
#[test]
fn replica_lag_warning_fires_during_an_outage() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(150));
    let Some(mut case) = Case::new(S3Server::start("lagwarn"), "replica-lag", "lag") else {
        return;
    };
    let host = case.host(
        "replica_lag_warning_fires_during_an_outage",
        &["--lag-warn", "0.3"],
    );
    host.wait_count(UPLOADED, 5);
    let before = host.stderr();
    assert!(
        !lag_warnings(&before).iter().any(|w| w.1),
        "a failure warning before the outage:\n{before}"
    );
    let mark = before.len();
    case.s3.stop();
    wait_until(
        "a replica-lag warning saying that uploads are failing",
        || since(&host, mark),
        || {
            lag_warnings(&since(&host, mark))
                .iter()
                .any(|w| w.1 && w.0 > 0)
        },
    );
    let line = since(&host, mark)
        .lines()
        .find(|l| l.contains(BEHIND) && l.contains("uploads are failing"))
        .unwrap()
        .to_owned();
    let replicated = numbers_after(&line, "replicated generation ")[0];
    let durable = numbers_after(&line, ", durable ")[0];
    assert!(replicated < durable, "{line}");
    case.s3.restart();
    host.wait_count("uploads succeed again", 1);
    stop_caught_up(&case, host, 5);
    case.finish();
}

/// The newest base is overwritten with garbage, then cut short: restore
/// skips it (and says so), falls back to the older base and its chain, and
/// restores a consistent state; with every base damaged it fails, naming
/// the bases it skipped.
#[test]
fn corrupt_base_falls_back_to_an_older_base() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(150));
    let Some(case) = Case::new(S3Server::start("corruptbase"), "replica-cbase", "cb") else {
        return;
    };
    let host = case.host(
        "corrupt_base_falls_back_to_an_older_base",
        &["--compact-at", "4", "--compact-min", "0"],
    );
    host.wait_count("replica: base at file generation", 3);
    host.wait_count(UPLOADED, 30);
    host.stop();
    let list = case.listing();
    let e = list["epochs"].as_array().unwrap().last().unwrap().clone();
    let bases: Vec<(u64, String)> = e["bases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["last"].as_u64().unwrap(),
                b["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(bases.len(), 2, "two bases kept: {list}");
    let (older, newer) = (bases.iter().min().unwrap(), bases.iter().max().unwrap());
    assert!(older.0 < newer.0, "{list}");
    let key = |k: &str| format!("cb/{k}");
    let original = case.s3.get_object(&key(&newer.1)).unwrap();
    let file_gen = file_generation(&case.file);

    for (what, bytes) in [
        ("garbage", vec![0xa5; original.len()]),
        ("truncated", original[..original.len() / 2].to_vec()),
    ] {
        case.s3.put_object(&key(&newer.1), &bytes).unwrap();
        let fresh = case.dir.join(format!("restored-{what}.snap"));
        let (ok, out) = case.restore(&fresh, &[]);
        assert!(ok, "{what}: {out}");
        assert!(
            out.contains(&format!("skipped {}", newer.1)),
            "{what}: {out}"
        );
        assert!(out.contains(&format!("base {}", older.0)), "{what}: {out}");
        let g = file_generation(&fresh);
        assert!(older.0 <= g && g <= file_gen, "{what}: {g}: {out}");
        check_file(&fresh);
    }

    // Every base damaged: nothing to restore, and the output says why.
    let old_original = case.s3.get_object(&key(&older.1)).unwrap();
    case.s3
        .put_object(&key(&older.1), &vec![0xa5; old_original.len()])
        .unwrap();
    let (ok, out) = case.restore(&case.dir.join("none.snap"), &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("no restorable state"), "{out}");
    for (_, k) in [older, newer] {
        assert!(out.contains(&format!("skipped {k}")), "{out}");
    }
    assert!(!case.dir.join("none.snap").exists());

    // Repaired: FILE again, nothing skipped.
    case.s3.put_object(&key(&older.1), &old_original).unwrap();
    case.s3.put_object(&key(&newer.1), &original).unwrap();
    let out = case.assert_restores_file("repaired.snap");
    assert!(!out.contains("skipped"), "{out}");
    case.finish();
}

/// SIGKILL of the host while the store lists the base's multipart upload
/// as in progress: the upload stays incomplete (abandoned: no object), the
/// prefix holds nothing a restore reads, and restore says there is no
/// restorable state. Rounds whose upload completed before the kill check
/// that the store restores a consistent state instead.
#[test]
fn sigkill_during_a_multipart_upload_leaves_no_object() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(150));
    let Some(mut case) = Case::new(S3Server::start("killmp"), "replica-killmp", "x") else {
        return;
    };
    // 24 MiB of state: a base of three 8 MiB parts.
    let big = (24 << 20).to_string();
    let mut mid_upload = 0;
    for round in 0..4 {
        let prefix = format!("mp{round}");
        case.url = case.s3.url(&prefix);
        let host = case.host(
            "sigkill_during_a_multipart_upload_leaves_no_object",
            &["--size", &big],
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let seen = loop {
            let in_progress = case.s3.multipart_uploads().unwrap();
            if let Some(k) = in_progress.into_iter().find(|k| k.starts_with(&prefix)) {
                break Some(k);
            }
            if uploads(&host.stderr()) > 0 {
                break None;
            }
            assert!(Instant::now() < deadline, "no upload:\n{}", host.stderr());
            std::thread::sleep(Duration::from_millis(2));
        };
        let err = host.kill();
        let fresh = case.dir.join(format!("restored-{round}.snap"));
        let (ok, out) = case.restore(&fresh, &[]);
        let abandoned = seen.filter(|k| case.s3.multipart_uploads().unwrap().contains(k));
        if let Some(key) = abandoned {
            mid_upload += 1;
            println!("round {round}: killed during the multipart upload of {key}");
            assert!(!ok, "round {round}: {out}\n{err}");
            assert!(out.contains("no restorable state"), "round {round}: {out}");
            let list = case.listing();
            for e in list["epochs"].as_array().unwrap() {
                assert!(
                    e["bases"].as_array().unwrap().is_empty()
                        && e["segments"].as_array().unwrap().is_empty(),
                    "round {round}: objects after a kill during the first base: {list}"
                );
            }
            case.s3.get_object(&key).unwrap_err();
        } else {
            // The base completed first: whatever is stored restores whole.
            println!("round {round}: the base upload completed before the kill");
            if ok {
                check_file(&fresh);
            } else {
                assert!(out.contains("no restorable state"), "round {round}: {out}");
            }
        }
        if mid_upload >= 2 {
            break;
        }
    }
    assert!(
        mid_upload >= 1,
        "no round killed the host during a multipart upload"
    );
    case.finish();
}
