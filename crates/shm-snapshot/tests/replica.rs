//! Replication to a real S3-compatible store (`SeaweedFS`, from
//! `shm_testkit::s3`): `shm-restore --replica` runs a program that commits
//! nonstop, and `shm-restore restore --from` brings FILE back from the
//! store alone. Round trip, a store down at start or stopped mid-run,
//! corrupt and truncated objects, a SIGKILL mid-upload, and epochs that
//! never mix.
#![cfg(feature = "shm-restore")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{REGION, Run, SHM_RESTORE, check_file, committer, file_image, temp_dir};
use common::replica::{
    Case, UPLOADED, assert_no_gap, file_generation, last_number_after, newest_epoch, uploads,
};
use shm_testkit::s3::S3Server;
use shm_testkit::{Watchdog, role};

/// Compactions (`--compact-at 4`) make new bases; the replica restores
/// FILE byte for byte, and `--generation` restores an older generation exactly.
#[test]
fn round_trip_restores_file_byte_for_byte() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let Some(case) = Case::new(S3Server::start("roundtrip"), "replica-rt", "rt") else {
        return;
    };
    let (dir, file) = (&case.dir, &case.file);
    let host = case.host(
        "round_trip_restores_file_byte_for_byte",
        &["--compact-at", "4", "--compact-min", "0"],
    );
    host.wait_count(UPLOADED, 40);
    let err = host.stop();
    assert!(err.contains("compacted"), "{err}");
    let replicated = last_number_after(&err, "at exit: replicated generation ").unwrap();
    let g = check_file(file);
    assert_eq!(replicated, g, "{err}");

    let list = case.listing();
    let (_, bases, segs) = newest_epoch(&list);
    assert!(bases.len() >= 2, "compactions made new bases: {list}");
    assert!(bases.len() <= 2, "older bases are pruned (keep 2): {list}");
    assert_no_gap(&list, file_generation(file));

    // Into a fresh directory, as on another machine.
    std::fs::create_dir(dir.join("fresh")).unwrap();
    let out = case.assert_restores_file("fresh/state.snap");
    assert!(!out.contains("skipped"), "{out}");
    assert_eq!(
        std::fs::read(dir.join("fresh/state.snap")).unwrap(),
        std::fs::read(file).unwrap()
    );

    // An older generation: the first segment after the oldest base kept.
    let base = *bases.iter().min().unwrap();
    let (first, _, _) = *segs
        .iter()
        .find(|s| s.0 > base)
        .expect("a segment after the base");
    let older = dir.join("older.snap");
    let (ok, out) = case.restore(&older, &["--generation", &first.to_string()]);
    assert!(ok, "{out}");
    assert_eq!(file_generation(&older), first);
    assert!(check_file(&older) < g);
    // The same generation by time: the newest state durable at or before
    // the time of that segment (times are whole milliseconds).
    let e = list["epochs"].as_array().unwrap().last().unwrap();
    let seg = e["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["first"].as_u64() == Some(first))
        .unwrap();
    let at = format!("{:.4}", seg["time"].as_f64().unwrap() + 0.0002);
    let by_time = dir.join("time.snap");
    let (ok, out) = case.restore(&by_time, &["--time", &at]);
    assert!(ok, "{out}");
    assert_eq!(
        file_generation(&by_time),
        seg["last"].as_u64().unwrap(),
        "{out}"
    );
    check_file(&by_time);
    // A generation no epoch holds any more (pruned or never written).
    let (ok, out) = case.restore(&older, &["--generation", "999999999"]);
    assert!(!ok, "{out}");
    case.finish();
}

/// The store is down (not up yet, or stopped mid-run) under `host`: after
/// a failed upload, snapshots go on meanwhile (`while_down` checks the log
/// then), and once the store is back, replication catches up with no gap.
fn catches_up_without_gaps(case: &mut Case, host: Run, while_down: impl FnOnce(&Run)) {
    host.wait_count("upload failed", 1);
    // The host and the program go on while the store is down.
    let before = host.stderr().matches("durable generation").count();
    host.wait_count("durable generation", before + 30);
    while_down(&host);
    let replicated = uploads(&host.stderr());
    let t = Instant::now();
    case.s3.restart();
    host.wait_count("uploads succeed again", 1);
    println!(
        "caught up {:.1}s after the store came back",
        t.elapsed().as_secs_f64()
    );
    host.wait_count(UPLOADED, replicated + 5);
    let err = host.stop();
    let g = check_file(&case.file);
    assert_eq!(
        last_number_after(&err, "at exit: replicated generation "),
        Some(g),
        "{err}"
    );
    assert_no_gap(&case.listing(), file_generation(&case.file));
    case.assert_restores_file("restored.snap");
}

/// The store is down when the host starts, and comes up later.
#[test]
fn store_down_at_start_catches_up_without_gaps() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let s3 = S3Server::start_later("downatstart");
    let Some(mut case) = Case::new(s3, "replica-down", "down") else {
        return;
    };
    let host = case.host("store_down_at_start_catches_up_without_gaps", &[]);
    catches_up_without_gaps(&mut case, host, |host| {
        assert_eq!(uploads(&host.stderr()), 0);
    });
    case.finish();
}

/// The store stops mid-run and comes back: no stall, no gap.
#[test]
fn store_stopped_mid_run_catches_up_without_gaps() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let Some(mut case) = Case::new(S3Server::start("midrun"), "replica-mid", "mid") else {
        return;
    };
    let host = case.host("store_stopped_mid_run_catches_up_without_gaps", &[]);
    host.wait_count(UPLOADED, 10);
    case.s3.stop();
    catches_up_without_gaps(&mut case, host, |_| {});
    case.finish();
}

/// A segment overwritten with garbage, then one cut short: restore stops
/// before it, restores the last consistent generation and names it.
#[test]
fn corrupt_or_truncated_segment_falls_back_to_last_consistent_generation() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let Some(case) = Case::new(S3Server::start("corrupt"), "replica-corrupt", "c") else {
        return;
    };
    let host = case.host(
        "corrupt_or_truncated_segment_falls_back_to_last_consistent_generation",
        &[],
    );
    host.wait_count(UPLOADED, 12);
    host.stop();
    let (_, bases, segs) = newest_epoch(&case.listing());
    assert_eq!(bases.len(), 1);
    let segs: Vec<_> = segs.into_iter().filter(|s| s.0 > bases[0]).collect();
    assert!(segs.len() >= 6, "{segs:?}");
    let victim = &segs[segs.len() / 2];
    let key = format!("c/{}", victim.2);
    let original = case.s3.get_object(&key).unwrap();

    for (what, bytes) in [
        ("garbage", vec![0x5a; original.len()]),
        ("truncated", original[..original.len() / 2].to_vec()),
    ] {
        case.s3.put_object(&key, &bytes).unwrap();
        let fresh = case.dir.join("restored.snap");
        let (ok, out) = case.restore(&fresh, &[]);
        assert!(ok, "{what}: {out}");
        assert_eq!(file_generation(&fresh), victim.0 - 1, "{what}: {out}");
        check_file(&fresh);
        assert!(
            out.contains(&format!("skipped {}: corrupt or truncated", victim.2)),
            "{what}: {out}"
        );
        assert!(
            out.contains("follows a corrupt or truncated object"),
            "{what}: {out}"
        );
    }
    // Repaired: everything again.
    case.s3.put_object(&key, &original).unwrap();
    let out = case.assert_restores_file("repaired.snap");
    assert!(!out.contains("skipped"), "{out}");
    case.finish();
}

/// Two host runs on one FILE are two epochs; restore uses the newest one
/// that has a complete base, and never stitches objects of two epochs.
#[test]
fn epochs_never_mix() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let Some(case) = Case::new(S3Server::start("epochs"), "replica-epochs", "e") else {
        return;
    };
    let first = case.host("epochs_never_mix", &[]);
    first.wait_count(UPLOADED, 5);
    first.stop();
    let first_image = file_image(&case.file);
    let first_gen = file_generation(&case.file);
    let second = case.host("epochs_never_mix", &[]);
    second.wait_count(UPLOADED, 5);
    second.stop();
    let list = case.listing();
    let epochs = list["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2, "{list}");
    assert_no_gap(&list, file_generation(&case.file));
    case.assert_restores_file("restored.snap");

    // The newest epoch loses its base (a host killed before the base was
    // complete): its segments alone are useless, and the older epoch is
    // restored whole, not continued with the newer epoch's segments.
    let (epoch, bases, _) = newest_epoch(&list);
    let base_key = epochs[1]["bases"][0]["key"].as_str().unwrap().to_owned();
    assert!(base_key.starts_with(&epoch) && bases.len() == 1);
    case.s3.delete_object(&format!("e/{base_key}")).unwrap();
    let fresh = case.dir.join("restored.snap");
    let (ok, out) = case.restore(&fresh, &[]);
    assert!(ok, "{out}");
    assert_eq!(file_generation(&fresh), first_gen, "{out}");
    assert_eq!(file_image(&fresh), first_image);
    case.finish();
}

/// SIGKILL of the host while a large base is uploaded in parts: whatever
/// the store holds afterwards restores to a consistent state (or to
/// nothing), never to a torn one.
#[test]
fn sigkill_mid_upload_leaves_nothing_misread() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(300));
    let Some(case) = Case::new(S3Server::start("sigkill"), "replica-kill", "k") else {
        return;
    };
    // 24 MiB of state: a base of three 8 MiB parts.
    let big = (24 << 20).to_string();
    let mut seed = u64::from(std::process::id());
    for round in 0..4 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let host = case.host(
            "sigkill_mid_upload_leaves_nothing_misread",
            &["--size", &big],
        );
        // The first snapshot starts the epoch's base upload at once.
        host.wait_count("durable generation", 1);
        std::thread::sleep(Duration::from_millis((seed >> 33) % 400));
        let err = host.kill();
        let fresh = case.dir.join(format!("restored-{round}.snap"));
        let (ok, out) = case.restore(&fresh, &[]);
        if ok {
            let g = check_file(&fresh);
            println!("round {round}: restored generation {g}");
        } else {
            assert!(
                out.contains("no restorable state"),
                "round {round}: {out}\n{err}"
            );
        }
    }
    case.finish();
}

/// The program of the replicated-wait tests (role `waiter`): commits a
/// generation (every word of the state set to it) and waits to see it
/// replicated, then restores the store's newest state itself, at once,
/// and reports each step as a line of the file `REPORT`. `PLAN=rounds`:
/// ten such rounds. `PLAN=outage`: one round, then (once `REPORT.down`
/// exists: the test stopped the store) a commit whose wait must time out,
/// then (once `REPORT.up` exists) the same wait again, which must succeed.
fn replicated_waiter() {
    use shm_snapshot::live::{Level, WaitError};
    let mut fds = shm_fd::listen::ListenFds::from_env_inherited().expect("valid LISTEN_*");
    let fd = fds.take("state").expect("a memfd named state");
    let client =
        shm_snapshot::live::Client::open(std::os::fd::AsFd::as_fd(&fd)).expect("a snapshot memfd");
    let report = PathBuf::from(std::env::var("REPORT").unwrap());
    let url = std::env::var("REPLICA_URL").unwrap();
    let say = |line: String| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&report)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    };
    let commit = || {
        let g = client.generation() + 1;
        let work = client.work();
        for w in 0..work.len() / 8 {
            work.write(w * 8, &g).unwrap();
        }
        client.commit(std::slice::from_ref(&(0..work.len())))
    };
    // Restores the store's newest state now; its program generation.
    let restored = |round: u64| {
        let dest = report.with_extension(format!("restored{round}"));
        let got =
            shm_snapshot::replica::restore(&url, &dest, shm_snapshot::replica::Target::Newest)
                .map(|r| r.generation);
        let _ = std::fs::remove_file(&dest);
        got
    };
    let wait_file = |suffix: &str| {
        let f = report.with_extension(suffix);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !f.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let round = |g: u64, timeout: Duration| match client.wait_replicated(g, timeout) {
        Ok(r) => match restored(g) {
            Ok(got) if got >= g && r >= g => say(format!("ok {g} replicated {r} restored {got}")),
            other => say(format!(
                "FAIL {g}: wait gave {r}, the store restores {other:?}"
            )),
        },
        Err(e) => say(format!("FAIL {g}: {e}")),
    };
    match std::env::var("PLAN").as_deref() {
        Ok("rounds") => {
            for _ in 0..10 {
                round(commit(), Duration::from_secs(60));
            }
        }
        Ok("outage") => {
            round(commit(), Duration::from_secs(60));
            say("stop the store".into());
            wait_file("down");
            let g = commit();
            let t = Instant::now();
            match client.wait_durable_level(g, Level::Replicated, Duration::from_secs(2)) {
                Err(WaitError::Timeout {
                    requested,
                    level: Level::Replicated,
                    reached,
                }) if requested == g && reached < g => say(format!(
                    "timeout {g} after {} ms (replicated {reached}, durable {})",
                    t.elapsed().as_millis(),
                    client.durable_generation()
                )),
                other => say(format!("FAIL {g} while the store is down: {other:?}")),
            }
            say("start the store".into());
            wait_file("up");
            round(g, Duration::from_secs(60));
        }
        other => say(format!("FAIL unknown plan {other:?}")),
    }
    say("done".into());
    // Stay until the host is stopped.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Waits (120 s deadline) until the report file has a line `what`.
fn wait_report(report: &Path, host: &Run, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(report).unwrap_or_default();
        if text.lines().any(|l| l == what) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {what:?} in the report:\n{text}\nhost:\n{}",
            host.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A host over [`replicated_waiter`] following `plan`, with a snapshot a
/// second (so that each wait's request is what makes the host snapshot and
/// ship at once); the host and the report file.
fn waiter_host(case: &Case, test: &str, plan: &str) -> (Run, PathBuf) {
    let report = case.dir.join("report");
    let host = case.host_role(
        test,
        &["--interval", "1"],
        "waiter",
        &[
            ("REPORT", report.to_str().unwrap()),
            ("REPLICA_URL", &case.url),
            ("PLAN", plan),
        ],
    );
    (host, report)
}

/// Asserts that a waiter's report has no failure and `rounds` successful
/// rounds.
fn assert_rounds(text: &str, rounds: usize, host_log: &str) {
    assert!(!text.contains("FAIL"), "{text}\n{host_log}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        rounds,
        "{text}"
    );
}

/// `Client::wait_replicated(G)` returns only once a restore from the store
/// alone gives `G` or later: the program restores right after each wait.
#[test]
fn wait_replicated_returns_once_a_restore_from_the_store_has_it() {
    match role().as_deref() {
        Some("waiter") => return replicated_waiter(),
        Some(_) => return committer(),
        None => {}
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let Some(case) = Case::new(S3Server::start("waitrepl"), "replica-wait", "w") else {
        return;
    };
    let (host, report) = waiter_host(
        &case,
        "wait_replicated_returns_once_a_restore_from_the_store_has_it",
        "rounds",
    );
    let text = wait_report(&report, &host, "done");
    let err = host.stop();
    assert_rounds(&text, 10, &err);
    case.finish();
}

/// The store goes down: a replicated wait ends with `Timeout` when its
/// timeout passes (no hang, no false success); the store comes back: the
/// same wait succeeds, and the store restores the generation.
#[test]
fn wait_replicated_times_out_while_the_store_is_down_then_succeeds() {
    match role().as_deref() {
        Some("waiter") => return replicated_waiter(),
        Some(_) => return committer(),
        None => {}
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let s3 = S3Server::start("waitdown");
    let Some(mut case) = Case::new(s3, "replica-waitdown", "wd") else {
        return;
    };
    let (host, report) = waiter_host(
        &case,
        "wait_replicated_times_out_while_the_store_is_down_then_succeeds",
        "outage",
    );
    wait_report(&report, &host, "stop the store");
    case.s3.stop();
    std::fs::write(report.with_extension("down"), b"").unwrap();
    wait_report(&report, &host, "start the store");
    case.s3.restart();
    std::fs::write(report.with_extension("up"), b"").unwrap();
    let text = wait_report(&report, &host, "done");
    let err = host.stop();
    assert!(text.lines().any(|l| l.starts_with("timeout ")), "{text}");
    assert_rounds(&text, 2, &err);
    case.finish();
}

/// A restore downloads its objects several at a time (each written at its
/// place in the file): one of a base and hundreds of segments, in a local
/// directory store, is still FILE byte for byte, and so is an older
/// generation cut from the middle of the chain.
#[test]
fn restore_of_many_segments_is_exact() {
    use shm_snapshot::host::{HostConfig, SnapshotHost};
    use shm_snapshot::live::Client;
    use shm_snapshot::replica::{ReplicaConfig, Target};
    const SEGMENTS: u64 = 300;
    let _w = Watchdog::new(Duration::from_secs(240));
    let dir = temp_dir("replica-many");
    let file = dir.join("state.snap");
    let url = format!("file://{}", dir.join("store").display());
    let config = HostConfig {
        create: true,
        size: REGION as u64,
        compact_at: 0.0,
        replica: Some(ReplicaConfig::new(&url)),
        ..HostConfig::new(&file)
    };
    let mut host = SnapshotHost::open(config, None).unwrap();
    let client = Client::open(host.memfd()).unwrap();
    let pages = REGION / 4096;
    for g in 1..=SEGMENTS {
        // A different page and length each time: segments of varied sizes.
        let page = usize::try_from(g).unwrap() * 7 % pages * 4096;
        let len = 8 + usize::try_from(g).unwrap() % 4000;
        commit_replicated(&mut host, &client, g, page..page + len);
    }
    drop(client);
    let done = host.finish();
    assert_eq!(done.replicated.unwrap().generation, SEGMENTS);
    let epochs = shm_snapshot::replica::list(&url).unwrap();
    assert_eq!(epochs.len(), 1);
    // The first generation is the epoch's base.
    assert!(
        epochs[0].segments.len() >= usize::try_from(SEGMENTS - 1).unwrap(),
        "{} segments",
        epochs[0].segments.len()
    );
    let fresh = dir.join("fresh.snap");
    let got = shm_snapshot::replica::restore(&url, &fresh, Target::Newest).unwrap();
    assert!(
        got.skipped.is_empty(),
        "{} skipped, first {:?}",
        got.skipped.len(),
        got.skipped.first()
    );
    assert_eq!(got.objects, epochs[0].segments.len() + 1);
    assert_eq!(
        std::fs::read(&fresh).unwrap(),
        std::fs::read(&file).unwrap()
    );
    // An older generation from the middle of the chain: a prefix of FILE.
    let middle = epochs[0].segments[epochs[0].segments.len() / 2].last;
    let older = dir.join("older.snap");
    let got = shm_snapshot::replica::restore(&url, &older, Target::Generation(middle)).unwrap();
    assert_eq!(got.file_generation, middle);
    let (a, b) = (
        std::fs::read(&older).unwrap(),
        std::fs::read(&file).unwrap(),
    );
    assert!(a.len() < b.len() && b.starts_with(&a));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Commits generation `g` (the bytes `range` filled with a value of `g`),
/// snapshots it, and waits until its upload completed: one object per
/// generation.
fn commit_replicated(
    host: &mut shm_snapshot::host::SnapshotHost,
    client: &shm_snapshot::live::Client,
    g: u64,
    range: std::ops::Range<usize>,
) {
    let fill = u8::try_from(g % 251).unwrap();
    client
        .work()
        .write_bytes(range.start, &vec![fill; range.len()])
        .unwrap();
    assert_eq!(client.commit(std::slice::from_ref(&range)), g);
    host.snapshot_now().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while host.replicated_generation() < g {
        assert!(Instant::now() < deadline, "generation {g} not uploaded");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A `file://` replica of a host that compacted FILE several times (so its
/// epoch holds several bases, and segments that continue older ones):
/// (the test's directory, FILE, the URL, the epoch's directory).
fn compacted_file_replica(tag: &str) -> (PathBuf, PathBuf, String, PathBuf) {
    use shm_snapshot::host::{HostConfig, SnapshotHost};
    use shm_snapshot::live::Client;
    use shm_snapshot::replica::ReplicaConfig;
    let dir = temp_dir(tag);
    let file = dir.join("state.snap");
    let url = format!("file://{}", dir.join("store").display());
    let config = HostConfig {
        create: true,
        size: REGION as u64,
        compact_at: 1.5,
        compact_min: 0,
        replica: Some(ReplicaConfig {
            keep_bases: 100,
            ..ReplicaConfig::new(&url)
        }),
        ..HostConfig::new(&file)
    };
    let mut host = SnapshotHost::open(config, None).unwrap();
    let client = Client::open(host.memfd()).unwrap();
    for g in 1..=40u64 {
        // A quarter of the state each time: FILE passes 1.5 images (and is
        // compacted, a new base) every few snapshots.
        let at = usize::try_from(g % 4).unwrap() * REGION / 4;
        commit_replicated(&mut host, &client, g, at..at + REGION / 4);
    }
    drop(client);
    let done = host.finish();
    assert_eq!(done.replicated.unwrap().generation, 40);
    let epochs = shm_snapshot::replica::list(&url).unwrap();
    assert_eq!(epochs.len(), 1);
    assert!(epochs[0].bases.len() >= 3, "{:?}", epochs[0].bases);
    let epoch = dir.join("store").join(&epochs[0].id);
    (dir, file, url, epoch)
}

/// docs/protocol/replication.md, "Restoring by hand": its command block,
/// run as written with bash in the epoch's directory, builds the same file
/// as `shm-restore restore` (which checks every checksum), and skips the
/// segments that continue older bases.
#[test]
fn restore_by_hand_as_documented() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let (dir, file, url, epoch) = compacted_file_replica("replica-by-hand");
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol/replication.md");
    let block = shm_testkit::systemd::doc_block(&doc, "Restoring by hand");
    let by_hand = dir.join("by-hand.snap");
    let (status, out) = shm_testkit::output_text(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &block])
            .current_dir(&epoch)
            .env("FILE", &by_hand),
    );
    assert!(status.success(), "{out}");
    let tool = dir.join("tool.snap");
    let got =
        shm_snapshot::replica::restore(&url, &tool, shm_snapshot::replica::Target::Newest).unwrap();
    assert!(got.skipped.is_empty(), "{:?}", got.skipped);
    assert!(
        out.contains(&format!("up to {}", got.file_generation)),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&by_hand).unwrap(),
        std::fs::read(&tool).unwrap()
    );
    assert_eq!(file_image(&by_hand), file_image(&file));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `shm-restore inspect --replica URL FILE` (and `replicas`) say how far the
/// replica is behind FILE: nothing once it caught up; the generations of
/// the missing newest segments, and the time they span, once those are gone.
#[test]
fn inspect_reports_how_far_the_replica_is_behind() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let (dir, file, url, epoch) = compacted_file_replica("replica-behind");
    let inspect = |json: bool| {
        let mut cmd = Command::new(SHM_RESTORE);
        cmd.arg("inspect");
        if json {
            cmd.arg("--json");
        }
        let (status, out) = shm_testkit::output_text(cmd.args(["--replica", &url]).arg(&file));
        assert!(status.success(), "{out}");
        out
    };
    let caught_up: serde_json::Value = serde_json::from_str(&inspect(true)).unwrap();
    let r = &caught_up["replica"];
    assert_eq!(r["file_generation"], caught_up["file_generation"], "{r}");
    assert_eq!(r["behind_generations"], 0, "{r}");
    assert_eq!(r["behind_seconds"], 0.0, "{r}");
    assert!(inspect(false).contains("replica lag: none"));
    // The objects of the newest 5 file generations lost (never uploaded):
    // a restore reaches 5 generations less (the fixture uploaded every
    // generation, so the older chain is complete up to there).
    let newest = caught_up["file_generation"].as_u64().unwrap();
    let expect = 5;
    let epochs = shm_snapshot::replica::list(&url).unwrap();
    for o in epochs[0].bases.iter().chain(&epochs[0].segments) {
        if o.last > newest - expect {
            let name = o.key.rsplit('/').next().unwrap();
            std::fs::remove_file(epoch.join(name)).unwrap();
        }
    }
    let behind: serde_json::Value = serde_json::from_str(&inspect(true)).unwrap();
    let r = &behind["replica"];
    assert_eq!(r["behind_generations"], expect, "{r}");
    assert!(r["behind_seconds"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        inspect(false).contains(&format!("replica lag: {expect} file generations")),
        "{}",
        inspect(false)
    );
    // `replicas` shows where a restore ends.
    let (status, out) =
        shm_testkit::output_text(Command::new(SHM_RESTORE).args(["replicas", "--json", &url]));
    assert!(status.success(), "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        list["epochs"][0]["newest"]["last"],
        behind["file_generation"].as_u64().unwrap() - expect,
        "{list}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The uploader continues a chain only on the very log it started on. A
/// writer reuses the inode of a log that a compaction replaced
/// (`SnapshotWriter::compact_file`), so a notice can name the chain's inode
/// again, holding a new log that is longer than the chain and further on:
/// that is a new base, not a segment of the old chain, and the store
/// restores the new log's generation exactly.
#[test]
fn a_reused_inode_starts_a_new_base() {
    use shm_snapshot::replica::{Notice, ReplicaConfig, Replicator, Target};
    use shm_snapshot::{FileStorage, SnapshotWriter};
    use std::os::unix::fs::MetadataExt;
    const LEN: usize = 16 * 4096;
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("replica-reuse");
    let file = dir.join("state.snap");
    let url = format!("file://{}", dir.join("store").display());
    std::fs::File::create_new(&file).unwrap();
    let mut w =
        SnapshotWriter::create(FileStorage::open(&file, true).unwrap(), 4096, LEN as u64).unwrap();
    w.set_reserve(0);
    let state = |g: u64| vec![u8::try_from(g).unwrap(); LEN];
    let up = Replicator::start(ReplicaConfig::new(&url)).unwrap();
    let notify = |w: &SnapshotWriter<FileStorage>| {
        let g = w.generation();
        let f = std::fs::File::open(&file).unwrap();
        up.notify(Notice::new(f, w.len(), g, g));
        let deadline = Instant::now() + Duration::from_secs(30);
        while up.replicated().file_generation < g {
            assert!(Instant::now() < deadline, "generation {g} not uploaded");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let ino = || std::fs::metadata(&file).unwrap().ino();
    w.snapshot(&state(1)).unwrap();
    w.snapshot(&state(2)).unwrap();
    notify(&w);
    let (first, chain_end) = (ino(), w.len());
    w.compact_file(&file).unwrap();
    w.snapshot(&state(3)).unwrap();
    w.compact_file(&file).unwrap();
    assert_eq!(ino(), first, "the first log's inode was not reused");
    for g in 4..=6 {
        w.snapshot(&state(g)).unwrap();
    }
    assert!(w.len() > chain_end, "{} <= {chain_end}", w.len());
    notify(&w);
    let done = up.finish(Duration::from_secs(10));
    assert_eq!(done.bases, 2, "{done:?}");
    let fresh = dir.join("fresh.snap");
    let got = shm_snapshot::replica::restore(&url, &fresh, Target::Newest).unwrap();
    assert!(got.skipped.is_empty(), "{:?}", got.skipped);
    assert_eq!(got.file_generation, 6);
    let (v, g) = common::restore_vec(&FileStorage::open(&fresh, false).unwrap()).unwrap();
    assert!(g == 6 && v == state(6), "restored generation {g}");
    std::fs::remove_dir_all(&dir).unwrap();
}
