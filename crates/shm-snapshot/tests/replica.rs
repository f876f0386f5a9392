//! Replication to a real S3-compatible store (`SeaweedFS`, from
//! `shm_testkit::s3`): `shm-restore --replica` runs a program that commits
//! nonstop, and `shm-restore restore --from` brings FILE back from the
//! store alone. Round trip, a store down at start or stopped mid-run,
//! corrupt and truncated objects, a SIGKILL mid-upload, and epochs that
//! never mix.
#![cfg(feature = "shm-restore")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shm_snapshot::{FileStorage, inspect, restore};
use shm_testkit::s3::S3Server;
use shm_testkit::{ROLE_ENV, Watchdog, role, unique_name};

const SHM_RESTORE: &str = env!("CARGO_BIN_EXE_shm-restore");
const REGION: usize = 64 << 10;

/// The program under `shm-restore`: every commit sets every word of the
/// state to the generation it commits, so any restored state names itself.
fn committer() {
    let mut fds = shm_fd::listen::ListenFds::from_env_inherited().expect("valid LISTEN_*");
    let fd = fds.take("state").expect("a memfd named state");
    let client =
        shm_snapshot::live::Client::open(std::os::fd::AsFd::as_fd(&fd)).expect("a snapshot memfd");
    let work = client.work();
    let pause = std::env::var("COMMIT_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    loop {
        let g = client.generation() + 1;
        for w in 0..work.len() / 8 {
            work.write(w * 8, &g).unwrap();
        }
        client.commit(std::slice::from_ref(&(0..work.len())));
        std::thread::sleep(Duration::from_millis(pause));
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique_name(tag));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `shm-restore OPTS --replica URL FILE -- <this test as committer>`.
struct Host {
    child: Child,
    err: PathBuf,
}

impl Host {
    fn start(s3: &S3Server, test: &str, url: &str, file: &Path, opts: &[&str]) -> Host {
        Self::start_role(s3, test, url, file, opts, "committer", &[])
    }

    /// With the program in `role` and extra environment `env`.
    fn start_role(
        s3: &S3Server,
        test: &str,
        url: &str,
        file: &Path,
        opts: &[&str],
        role: &str,
        env: &[(&str, &str)],
    ) -> Host {
        let err = file.with_extension(format!("err{}", std::process::id()));
        let mut cmd = Command::new(SHM_RESTORE);
        s3.configure(&mut cmd);
        cmd.arg("--create");
        if !opts.contains(&"--interval") {
            cmd.args(["--interval", "0.02"]);
        }
        if !opts.contains(&"--compact-at") {
            cmd.args(["--compact-at", "0"]);
        }
        if !opts.contains(&"--size") {
            cmd.args(["--size", &REGION.to_string()]);
        }
        cmd.args(opts)
            .args(["--replica", url])
            .arg(file)
            .arg("--")
            .arg(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .envs(env.iter().copied())
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap());
        Host {
            child: cmd.spawn().unwrap(),
            err,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until stderr holds `what` at least `n` times (60 s deadline).
    fn wait_count(&self, what: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.stderr().matches(what).count() < n {
            assert!(
                Instant::now() < deadline,
                "no {n} × {what:?} in:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (forwarded to the program; the host drains its uploads), then stderr.
    fn stop(mut self) -> String {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.child.wait().unwrap();
        self.stderr()
    }

    fn kill(mut self) -> String {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        self.child.wait().unwrap();
        self.stderr()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `shm-restore restore --from URL FILE EXTRA...`: (success, stdout+stderr).
fn restore_cli(s3: &S3Server, url: &str, file: &Path, extra: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(SHM_RESTORE);
    s3.configure(&mut cmd);
    let out = cmd
        .args(["restore", "--from", url])
        .arg(file)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `shm-restore replicas --json URL`.
fn listing(s3: &S3Server, url: &str) -> serde_json::Value {
    let mut cmd = Command::new(SHM_RESTORE);
    s3.configure(&mut cmd);
    let out = cmd.args(["replicas", "--json", url]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The newest epoch's base generations and segment (first, last) pairs.
fn newest_epoch(list: &serde_json::Value) -> (String, Vec<u64>, Vec<(u64, u64, String)>) {
    let e = list["epochs"].as_array().unwrap().last().expect("an epoch");
    let bases = e["bases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["last"].as_u64().unwrap())
        .collect();
    let segs = e["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["first"].as_u64().unwrap(),
                s["last"].as_u64().unwrap(),
                s["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (e["epoch"].as_str().unwrap().to_owned(), bases, segs)
}

/// Asserts that the newest epoch's chain from its newest base is
/// consecutive up to `until`.
fn assert_no_gap(list: &serde_json::Value, until: u64) {
    let (epoch, bases, segs) = newest_epoch(list);
    let base = *bases.iter().max().expect("a base");
    let mut next = base + 1;
    for (first, last, _) in segs.iter().filter(|s| s.0 > base) {
        assert_eq!(*first, next, "gap in epoch {epoch}: {segs:?}");
        next = last + 1;
    }
    assert_eq!(
        next - 1,
        until,
        "epoch {epoch} ends at {}, FILE at {until}",
        next - 1
    );
}

/// FILE's newest image (the 4096-byte prefix, then the state) and the
/// program's generation (its commit's tag).
fn file_image(file: &Path) -> (Vec<u8>, u64) {
    let st = FileStorage(std::fs::File::open(file).unwrap());
    let info = inspect(&st).unwrap();
    assert_eq!(info.valid_end, info.file_len, "{info:?}");
    let mut image = vec![0u8; usize::try_from(info.region_size).unwrap()];
    let r = restore(&st, |off, b| {
        let o = usize::try_from(off).unwrap();
        image[o..o + b.len()].copy_from_slice(b);
    })
    .unwrap();
    assert_eq!(r.info.version, shm_snapshot::VERSION);
    (image, r.info.tag)
}

/// The file's state: every word equals the program generation; returns it.
fn check_file(file: &Path) -> u64 {
    let (image, g) = file_image(file);
    let word = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
    for o in (4096..image.len()).step_by(8) {
        assert_eq!(word(o), g, "word at {o} of generation {g}");
    }
    g
}

fn file_generation(file: &Path) -> u64 {
    inspect(&FileStorage(std::fs::File::open(file).unwrap()))
        .unwrap()
        .generation
}

fn last_number_after(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.split_once(key).map(|(_, r)| r))
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .next_back()
}

/// Compactions (`--compact-at 4`) make new bases; the replica restores
/// FILE byte for byte, and `--generation` restores an older generation exactly.
#[test]
fn round_trip_restores_file_byte_for_byte() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let Some(s3) = S3Server::start("roundtrip") else {
        return;
    };
    let dir = temp_dir("replica-rt");
    let file = dir.join("state.snap");
    let url = s3.url("rt");
    let host = Host::start(
        &s3,
        "round_trip_restores_file_byte_for_byte",
        &url,
        &file,
        &["--compact-at", "4", "--compact-min", "0"],
    );
    host.wait_count("replicated generation", 40);
    let err = host.stop();
    assert!(err.contains("compacted"), "{err}");
    let replicated = last_number_after(&err, "at exit: replicated generation ").unwrap();
    let g = check_file(&file);
    assert_eq!(replicated, g, "{err}");

    let list = listing(&s3, &url);
    let (_, bases, segs) = newest_epoch(&list);
    assert!(bases.len() >= 2, "compactions made new bases: {list}");
    assert!(bases.len() <= 2, "older bases are pruned (keep 2): {list}");
    assert_no_gap(&list, file_generation(&file));

    // Into a fresh directory, as on another machine.
    std::fs::create_dir(dir.join("fresh")).unwrap();
    let fresh = dir.join("fresh").join("state.snap");
    let (ok, out) = restore_cli(&s3, &url, &fresh, &[]);
    assert!(ok, "{out}");
    assert!(!out.contains("skipped"), "{out}");
    assert_eq!(file_image(&fresh), file_image(&file));
    assert_eq!(
        std::fs::read(&fresh).unwrap(),
        std::fs::read(&file).unwrap()
    );

    // An older generation: the first segment after the oldest base kept.
    let base = *bases.iter().min().unwrap();
    let (first, _, _) = *segs
        .iter()
        .find(|s| s.0 > base)
        .expect("a segment after the base");
    let older = dir.join("older.snap");
    let (ok, out) = restore_cli(&s3, &url, &older, &["--generation", &first.to_string()]);
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
    let (ok, out) = restore_cli(&s3, &url, &by_time, &["--time", &at]);
    assert!(ok, "{out}");
    assert_eq!(
        file_generation(&by_time),
        seg["last"].as_u64().unwrap(),
        "{out}"
    );
    check_file(&by_time);
    // A generation no epoch holds any more (pruned or never written).
    let (ok, out) = restore_cli(&s3, &url, &older, &["--generation", "999999999"]);
    assert!(!ok, "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The store is down when the host starts, and comes up later: snapshots
/// go on meanwhile, and replication then catches up with no gap.
#[test]
fn store_down_at_start_catches_up_without_gaps() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let Some(mut s3) = S3Server::start_later("downatstart") else {
        return;
    };
    let dir = temp_dir("replica-down");
    let file = dir.join("state.snap");
    let url = s3.url("down");
    let host = Host::start(
        &s3,
        "store_down_at_start_catches_up_without_gaps",
        &url,
        &file,
        &[],
    );
    host.wait_count("upload failed", 1);
    // The host and the program go on while the store is down.
    let before = host.stderr().matches("durable generation").count();
    host.wait_count("durable generation", before + 30);
    assert!(!host.stderr().contains("replicated generation"));
    let t = Instant::now();
    s3.restart();
    host.wait_count("uploads succeed again", 1);
    println!(
        "caught up {:.1}s after the store came up",
        t.elapsed().as_secs_f64()
    );
    host.wait_count("replicated generation", 5);
    let err = host.stop();
    let g = check_file(&file);
    assert_eq!(
        last_number_after(&err, "at exit: replicated generation "),
        Some(g),
        "{err}"
    );
    assert_no_gap(&listing(&s3, &url), file_generation(&file));
    let fresh = dir.join("restored.snap");
    let (ok, out) = restore_cli(&s3, &url, &fresh, &[]);
    assert!(ok, "{out}");
    assert_eq!(file_image(&fresh), file_image(&file));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The store stops mid-run and comes back: no stall, no gap.
#[test]
fn store_stopped_mid_run_catches_up_without_gaps() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let Some(mut s3) = S3Server::start("midrun") else {
        return;
    };
    let dir = temp_dir("replica-mid");
    let file = dir.join("state.snap");
    let url = s3.url("mid");
    let host = Host::start(
        &s3,
        "store_stopped_mid_run_catches_up_without_gaps",
        &url,
        &file,
        &[],
    );
    host.wait_count("replicated generation", 10);
    s3.stop();
    host.wait_count("upload failed", 1);
    let before = host.stderr().matches("durable generation").count();
    host.wait_count("durable generation", before + 30);
    let t = Instant::now();
    s3.restart();
    host.wait_count("uploads succeed again", 1);
    println!(
        "caught up {:.1}s after the store came back",
        t.elapsed().as_secs_f64()
    );
    let err = host.stop();
    let g = check_file(&file);
    assert_eq!(
        last_number_after(&err, "at exit: replicated generation "),
        Some(g),
        "{err}"
    );
    assert_no_gap(&listing(&s3, &url), file_generation(&file));
    let fresh = dir.join("restored.snap");
    let (ok, out) = restore_cli(&s3, &url, &fresh, &[]);
    assert!(ok, "{out}");
    assert_eq!(file_image(&fresh), file_image(&file));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A segment overwritten with garbage, then one cut short: restore stops
/// before it, restores the last consistent generation and names it.
#[test]
fn corrupt_or_truncated_segment_falls_back_to_last_consistent_generation() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let Some(s3) = S3Server::start("corrupt") else {
        return;
    };
    let dir = temp_dir("replica-corrupt");
    let file = dir.join("state.snap");
    let url = s3.url("c");
    let host = Host::start(
        &s3,
        "corrupt_or_truncated_segment_falls_back_to_last_consistent_generation",
        &url,
        &file,
        &[],
    );
    host.wait_count("replicated generation", 12);
    host.stop();
    let (_, bases, segs) = newest_epoch(&listing(&s3, &url));
    assert_eq!(bases.len(), 1);
    let segs: Vec<_> = segs.into_iter().filter(|s| s.0 > bases[0]).collect();
    assert!(segs.len() >= 6, "{segs:?}");
    let victim = &segs[segs.len() / 2];
    let key = format!("c/{}", victim.2);
    let original = s3.get_object(&key).unwrap();

    for (what, bytes) in [
        ("garbage", vec![0x5a; original.len()]),
        ("truncated", original[..original.len() / 2].to_vec()),
    ] {
        s3.put_object(&key, &bytes).unwrap();
        let fresh = dir.join("restored.snap");
        let (ok, out) = restore_cli(&s3, &url, &fresh, &[]);
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
    s3.put_object(&key, &original).unwrap();
    let fresh = dir.join("repaired.snap");
    let (ok, out) = restore_cli(&s3, &url, &fresh, &[]);
    assert!(ok && !out.contains("skipped"), "{out}");
    assert_eq!(file_image(&fresh), file_image(&file));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two host runs on one FILE are two epochs; restore uses the newest one
/// that has a complete base, and never stitches objects of two epochs.
#[test]
fn epochs_never_mix() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let Some(s3) = S3Server::start("epochs") else {
        return;
    };
    let dir = temp_dir("replica-epochs");
    let file = dir.join("state.snap");
    let url = s3.url("e");
    let first = Host::start(&s3, "epochs_never_mix", &url, &file, &[]);
    first.wait_count("replicated generation", 5);
    first.stop();
    let first_image = file_image(&file);
    let first_gen = file_generation(&file);
    let second = Host::start(&s3, "epochs_never_mix", &url, &file, &[]);
    second.wait_count("replicated generation", 5);
    second.stop();
    let list = listing(&s3, &url);
    let epochs = list["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2, "{list}");
    assert_no_gap(&list, file_generation(&file));

    let fresh = dir.join("restored.snap");
    let (ok, out) = restore_cli(&s3, &url, &fresh, &[]);
    assert!(ok, "{out}");
    assert_eq!(file_image(&fresh), file_image(&file));

    // The newest epoch loses its base (a host killed before the base was
    // complete): its segments alone are useless, and the older epoch is
    // restored whole, not continued with the newer epoch's segments.
    let (epoch, bases, _) = newest_epoch(&list);
    let base_key = epochs[1]["bases"][0]["key"].as_str().unwrap().to_owned();
    assert!(base_key.starts_with(&epoch) && bases.len() == 1);
    s3.delete_object(&format!("e/{base_key}")).unwrap();
    let (ok, out) = restore_cli(&s3, &url, &fresh, &[]);
    assert!(ok, "{out}");
    assert_eq!(file_generation(&fresh), first_gen, "{out}");
    assert_eq!(file_image(&fresh), first_image);
    std::fs::remove_dir_all(&dir).unwrap();
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
    let Some(s3) = S3Server::start("sigkill") else {
        return;
    };
    let dir = temp_dir("replica-kill");
    let file = dir.join("state.snap");
    let url = s3.url("k");
    // 24 MiB of state: a base of three 8 MiB parts.
    let big = (24 << 20).to_string();
    let mut seed = u64::from(std::process::id());
    for round in 0..4 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let host = Host::start(
            &s3,
            "sigkill_mid_upload_leaves_nothing_misread",
            &url,
            &file,
            &["--size", &big],
        );
        // The first snapshot starts the epoch's base upload at once.
        host.wait_count("durable generation", 1);
        std::thread::sleep(Duration::from_millis((seed >> 33) % 400));
        let err = host.kill();
        let fresh = dir.join(format!("restored-{round}.snap"));
        let (ok, out) = restore_cli(&s3, &url, &fresh, &[]);
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
    std::fs::remove_dir_all(&dir).unwrap();
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
fn wait_report(report: &Path, host: &Host, what: &str) -> String {
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

/// `Client::wait_replicated(G)` returns only once a restore from the store
/// alone gives `G` or later: the program restores right after each wait.
/// Snapshots are a second apart, so each wait's request is what makes the
/// host snapshot and ship at once.
#[test]
fn wait_replicated_returns_once_a_restore_from_the_store_has_it() {
    match role().as_deref() {
        Some("waiter") => return replicated_waiter(),
        Some(_) => return committer(),
        None => {}
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let Some(s3) = S3Server::start("waitrepl") else {
        return;
    };
    let dir = temp_dir("replica-wait");
    let (file, report) = (dir.join("state.snap"), dir.join("report"));
    let url = s3.url("w");
    let host = Host::start_role(
        &s3,
        "wait_replicated_returns_once_a_restore_from_the_store_has_it",
        &url,
        &file,
        &["--interval", "1"],
        "waiter",
        &[
            ("REPORT", report.to_str().unwrap()),
            ("REPLICA_URL", &url),
            ("PLAN", "rounds"),
        ],
    );
    let text = wait_report(&report, &host, "done");
    host.stop();
    assert!(!text.contains("FAIL"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        10,
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
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
    let Some(mut s3) = S3Server::start("waitdown") else {
        return;
    };
    let dir = temp_dir("replica-waitdown");
    let (file, report) = (dir.join("state.snap"), dir.join("report"));
    let url = s3.url("wd");
    let host = Host::start_role(
        &s3,
        "wait_replicated_times_out_while_the_store_is_down_then_succeeds",
        &url,
        &file,
        &["--interval", "1"],
        "waiter",
        &[
            ("REPORT", report.to_str().unwrap()),
            ("REPLICA_URL", &url),
            ("PLAN", "outage"),
        ],
    );
    wait_report(&report, &host, "stop the store");
    s3.stop();
    std::fs::write(report.with_extension("down"), b"").unwrap();
    wait_report(&report, &host, "start the store");
    s3.restart();
    std::fs::write(report.with_extension("up"), b"").unwrap();
    let text = wait_report(&report, &host, "done");
    let err = host.stop();
    assert!(!text.contains("FAIL"), "{text}\n{err}");
    assert!(text.lines().any(|l| l.starts_with("timeout ")), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        2,
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
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
        client
            .work()
            .write_bytes(page, &vec![u8::try_from(g % 251).unwrap(); len])
            .unwrap();
        assert_eq!(client.commit(std::slice::from_ref(&(page..page + len))), g);
        host.snapshot_now().unwrap();
        // One segment per generation: wait for each upload.
        let deadline = Instant::now() + Duration::from_secs(30);
        while host.replicated_generation() < g {
            assert!(Instant::now() < deadline, "generation {g} not uploaded");
            std::thread::sleep(Duration::from_millis(1));
        }
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
