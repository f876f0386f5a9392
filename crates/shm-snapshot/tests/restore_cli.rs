//! `shm-restore` end to end with a program that commits nonstop: write-rate
//! limit and lag reporting, compaction of a growing log (with a stale
//! temporary file from a killed host cleaned up at start), option errors.
#![cfg(feature = "shm-restore")]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cli::{
    REGION, Run, SHM_RESTORE, check_file, committer, file_image, numbers_after, temp_dir,
    uninherited, wait_text,
};
use shm_snapshot::live::Client;
use shm_snapshot::{FileStorage, compact_temp_path, inspect};
use shm_testkit::{Watchdog, role, unique_name};

/// A hostile program: it sets every page stamp in the memfd to `u64::MAX`
/// through its own writable mapping, then commits normally. No copy of the
/// host can then be shown consistent.
fn scribbler() {
    let mut fds = shm_fd::listen::ListenFds::from_env_inherited().expect("valid LISTEN_*");
    let fd = fds.take("state").expect("a memfd named state");
    let fd = std::os::fd::AsFd::as_fd(&fd);
    let client = Client::open(fd).expect("a snapshot memfd");
    let len = usize::try_from(rustix::fs::fstat(fd).unwrap().st_size).unwrap();
    let raw = shm_segment::Mapping::map(fd, 0, len, shm_segment::Access::ReadWrite).unwrap();
    let pages = client.work().len().div_ceil(4096);
    // The stamp table: after the segment header page and the control page.
    for p in 0..pages {
        raw.region().write(2 * 4096 + 8 * p, &u64::MAX).unwrap();
    }
    println!("scribbled");
    loop {
        let g = client.generation() + 1;
        client.work().write(0, &g).unwrap();
        client.commit(std::slice::from_ref(&(0..8)));
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A program that changes little: its first commit sets every word of the
/// state to 1, each later commit `g` only word 0 (to `g`). A snapshot that
/// trusted stale pages of FILE would show in any other word.
fn sparse_committer() {
    let mut fds = shm_fd::listen::ListenFds::from_env_inherited().expect("valid LISTEN_*");
    let fd = fds.take("state").expect("a memfd named state");
    let client = Client::open(std::os::fd::AsFd::as_fd(&fd)).expect("a snapshot memfd");
    let work = client.work();
    if client.generation() == 0 {
        for w in 0..work.len() / 8 {
            work.write(w * 8, &1u64).unwrap();
        }
        client.commit(std::slice::from_ref(&(0..work.len())));
    }
    loop {
        let g = client.generation() + 1;
        work.write(0, &g).unwrap();
        client.commit(std::slice::from_ref(&(0..8)));
        println!("committed {g}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// FILE's state as the sparse committer leaves it: word 0 of the state is
/// the generation, every other word 1. Returns the generation.
fn check_sparse_file(file: &Path) -> u64 {
    let (image, g) = file_image(file);
    let word = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
    assert_eq!(word(4096), g, "state word 0");
    for o in (4096 + 8..image.len()).step_by(8) {
        assert_eq!(word(o), 1, "word at {o} of generation {g}");
    }
    g
}

/// `shm-restore OPTS FILE -- <the test fn named test, as the committer>`.
fn start(test: &str, file: &Path, opts: &[impl AsRef<OsStr>]) -> Run {
    start_as("committer", test, file, opts)
}

/// As [`start`], with the program in `role`.
fn start_as(role: &str, test: &str, file: &Path, opts: &[impl AsRef<OsStr>]) -> Run {
    let mut cmd = Command::new(SHM_RESTORE);
    cmd.args(opts);
    Run::spawn(cmd, role, test, file, &file.with_extension("err"), &[])
}

/// The options of a run that creates FILE with a state of [`REGION`]
/// bytes and snapshots every `interval` seconds, then `more`.
fn fresh(interval: &str, more: &[&str]) -> Vec<String> {
    let size = REGION.to_string();
    [
        &["--create", "--size", &size, "--interval", interval][..],
        more,
    ]
    .concat()
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// The last durable generation a run's log reports.
fn last_durable(text: &str) -> u64 {
    *numbers_after(text, "durable generation ")
        .last()
        .unwrap_or_else(|| panic!("no durable generation in:\n{text}"))
}

/// With a write rate of 1 byte a second, the first snapshot (32 bytes or
/// more) holds off every periodic one for half a minute: the file falls
/// behind, the lag is logged, and the snapshot at exit still catches up.
#[test]
fn write_rate_limit_and_lag_report() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("snap-rate");
    let file = dir.join("state.snap");
    let run = start(
        "write_rate_limit_and_lag_report",
        &file,
        &fresh("0.02", &["--max-write-rate", "1", "--lag-warn", "0.1"]),
    );
    run.wait_for("lag: the file is");
    let text = run.stop();
    // One snapshot at start, none while rate-limited, one at exit, unless
    // SIGTERM caught the program inside a commit: then no committed state is
    // whole in the memfd until a client finishes that commit, and the exit
    // snapshot is skipped (and says so).
    let durable = numbers_after(&text, "durable generation ");
    let skipped = text.contains("snapshot skipped");
    assert_eq!(durable.len(), if skipped { 1 } else { 2 }, "{text}");
    let lags = numbers_after(&text, "lag: the file is ");
    assert!(!lags.is_empty() && lags.iter().all(|&g| g > 0), "{text}");
    let exit = text
        .lines()
        .find(|l| l.contains("at exit: file at generation"))
        .unwrap_or_else(|| panic!("no exit summary in:\n{text}"));
    assert_eq!(exit.contains("(0 behind)"), !skipped, "{exit}");
    assert!(!exit.contains("largest lag 0 generations"), "{exit}");
    // The file holds the last durable state, exactly one committed state.
    assert_eq!(check_file(&file), *durable.last().unwrap(), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A log past `--compact-at` times the image is rewritten in place; the
/// compacted file restores the same generation and keeps growing from there.
/// A stale temporary file (a host killed mid-compaction) goes at start.
/// A 64 MiB state rewritten whole at every commit: the host streams the
/// changed pages into the file and keeps no copy of the state, so its
/// private memory stays far below the state's size (a host with a state-sized
/// buffer would hold 64 MiB at least).
#[test]
fn host_keeps_no_copy_of_a_large_state() {
    const BIG: usize = 64 << 20;
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("snap-memory");
    let file = dir.join("state.snap");
    let run = start(
        "host_keeps_no_copy_of_a_large_state",
        &file,
        &[
            "--create",
            "--size",
            &BIG.to_string(),
            "--interval",
            "0.2",
            "--compact-at",
            "0",
        ],
    );
    run.wait_for("durable generation ");
    let text = run.stop();
    let kb = numbers_after(&text, "host private memory at exit: ");
    assert_eq!(kb.len(), 1, "{text}");
    eprintln!("host private memory at exit: {} kB", kb[0]);
    assert!(
        kb[0] < 16 << 10,
        "host holds {} kB for a 64 MiB state:\n{text}",
        kb[0]
    );
    assert_eq!(check_file(&file), last_durable(&text), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Garbage page stamps from a hostile program: every snapshot of the host
/// conflicts and is reported as skipped (and the lag grows); nothing torn or
/// invented reaches FILE, which keeps its last good generation, and the host
/// still exits with the program.
#[test]
fn garbage_stamps_skip_snapshots_and_never_corrupt_the_file() {
    if role().is_some() {
        return scribbler();
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("snap-hostile");
    let file = dir.join("state.snap");
    let run = start_as(
        "scribbler",
        "garbage_stamps_skip_snapshots_and_never_corrupt_the_file",
        &file,
        &fresh("0.05", &["--lag-warn", "0.2"]),
    );
    run.wait_for("lag: the file is");
    let text = run.stop();
    assert!(text.contains("snapshot skipped"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    // While the program runs, nothing is written. (If SIGTERM caught it inside
    // a commit, the exit snapshot compares every page with FILE instead of
    // trusting stamps, and may write that one state.)
    let durable = numbers_after(&text, "durable generation ");
    let died_in_commit = durable.len() == 1;
    assert!(durable.is_empty() || died_in_commit, "{text}");
    let st = FileStorage(std::fs::File::open(&file).unwrap());
    let info = inspect(&st).unwrap();
    assert_eq!(info.valid_end, info.file_len, "{info:?}");
    assert_eq!(info.generation, u64::from(died_in_commit), "{info:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `shm-restore` under `shm-fd --supervise` (no systemd): the supervisor's
/// fresh all-zero region is replaced by a snapshot memfd, which the
/// supervisor then keeps. FILE is swapped for a valid file of another
/// history (every word 0xEE..., an older generation) and the host is
/// SIGKILLed: the restarted host takes the memfd warm, compares every page
/// with the foreign FILE, and after that FILE holds exactly the program's
/// state again, not a mix with the other history's pages.
#[test]
fn supervised_warm_start_rewrites_a_file_from_another_history() {
    if role().is_some() {
        return sparse_committer();
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let shm_fd = shm_testkit::build_bins(&["-p", "shm-fd", "--bin", "shm-fd"]).join("shm-fd");
    let dir = temp_dir("snap-supervised");
    let file = dir.join("state.snap");
    let mut sup = Command::new(shm_fd);
    sup.args([
        "--supervise",
        "--restart=always",
        "--restart-delay=100ms",
        "--",
    ])
    .arg(SHM_RESTORE)
    .args(fresh("0.05", &[]));
    let run = Run::spawn(
        sup,
        "sparse",
        "supervised_warm_start_rewrites_a_file_from_another_history",
        &file,
        &file.with_extension("err"),
        &[],
    );
    let log = || run.stderr();
    let wait = |what: &str, n: usize| run.wait_count(what, n);
    wait("durable generation ", 3);
    assert!(log().contains("is all zeros (a fresh region"), "{}", log());
    // Another history: a valid file of the same size at generation 1.
    let other = dir.join("other.snap");
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&other)
            .unwrap();
        let len = REGION as u64 + 4096;
        let mut w = shm_snapshot::SnapshotWriter::create(FileStorage(f), 4096, len).unwrap();
        let image = vec![0xEEu8; usize::try_from(len).unwrap()];
        w.snapshot_tagged(&image, 1).unwrap();
    }
    std::fs::rename(&other, &file).unwrap();
    let host = log()
        .lines()
        .filter_map(|l| l.split_once(" as pid ").map(|(_, r)| r))
        .filter_map(|r| r.split_whitespace().next()?.parse::<i32>().ok())
        .next_back()
        .unwrap();
    let host = rustix::process::Pid::from_raw(host).unwrap();
    rustix::process::kill_process(host, rustix::process::Signal::KILL).unwrap();
    wait("warm start from the inherited memfd", 1);
    let before = log().matches("durable generation ").count();
    wait("durable generation ", before + 2);
    let text = run.stop();
    assert_eq!(check_sparse_file(&file), last_durable(&text), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn log_is_compacted_and_stale_temp_removed() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("snap-compact");
    let file = dir.join("state.snap");
    let tmp = compact_temp_path(&file);
    std::fs::write(&tmp, b"left by a killed host").unwrap();
    let run = start(
        "log_is_compacted_and_stale_temp_removed",
        &file,
        &fresh("0.02", &["--compact-at", "3", "--compact-min", "0"]),
    );
    run.wait_for("removed stale");
    // Every snapshot writes the whole state: a compaction every few snapshots.
    run.wait_count("compacted ", 3);
    let text = run.stop();
    assert!(!tmp.exists(), "temporary file left behind");
    let image = (REGION + 4096) as u64;
    // Each compaction came once the log had outgrown 3 images (the default
    // is 2), at most one full snapshot past them:
    // "compacted FILE: BEFORE -> AFTER bytes".
    let compacted = numbers_after(&text, "state.snap: ");
    assert!(compacted.len() >= 3, "{text}");
    for b in compacted {
        assert!(
            b > 3 * image && b <= 4 * image + image / 50,
            "compacted at {b} bytes: {text}"
        );
    }
    let len = std::fs::metadata(&file).unwrap().len();
    assert!(len <= 4 * image + image / 50, "log of {len} bytes");
    assert_eq!(check_file(&file), last_durable(&text), "{text}");
    assert!(text.contains("compactions"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_options_are_refused_by_name() {
    for (opt, val) in [
        ("--max-write-rate", "0"),
        ("--max-write-rate", "fast"),
        ("--compact-at", "1"),
        ("--lag-warn=-1", ""),
        ("--name", "bad:name"),
        ("--name=", ""),
    ] {
        let opts: &[&str] = if val.is_empty() { &[opt] } else { &[opt, val] };
        let out = Command::new(SHM_RESTORE)
            .args(opts)
            .args(["--create", "/nonexistent/dir/f", "--", "true"])
            .env_remove("LISTEN_FDS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{opt} {val}: {err}");
        let name = opt.split('=').next().unwrap();
        assert!(err.contains(name), "{opt} {val}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Restoring a large file shows a progress bar on a terminal (a pty from
/// `script`), and only plain lines otherwise.
#[test]
fn progress_bar_on_a_terminal_only() {
    use shm_snapshot::SnapshotWriter;
    let dir = temp_dir("snap-progress");
    let file = dir.join("big.snap");
    let image_len = 64usize << 20;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&file)
        .unwrap();
    let mut w = SnapshotWriter::create(FileStorage(f), 4096, image_len as u64).unwrap();
    let mut image = vec![7u8; image_len];
    image[..4096].fill(0);
    w.snapshot_tagged(&image, 1).unwrap(); // the program's commit generation 1
    drop(w);
    let cmd = format!("{SHM_RESTORE} {} -- true", file.display());
    let tty = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env_remove("LISTEN_FDS")
        .env("TERM", "xterm")
        .output()
        .expect("script(1) from util-linux");
    let tty_text = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{tty_text}");
    assert!(tty_text.contains("shm-restore: restoring"), "{tty_text}");
    assert!(
        tty_text.contains("cold start: restored generation 1"),
        "{tty_text}"
    );
    let plain = Command::new(SHM_RESTORE)
        .arg(&file)
        .args(["--", "true"])
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap();
    let plain_text = String::from_utf8_lossy(&plain.stderr);
    assert!(plain.status.success(), "{plain_text}");
    assert!(!plain_text.contains("restoring"), "{plain_text}");
    assert!(plain_text.contains("shm-restore: reading "), "{plain_text}");
    assert!(!plain_text.contains('\x1b'), "{plain_text}");
    assert!(
        plain_text.contains("cold start: restored generation 1"),
        "{plain_text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A valid snapshot file with a tiny page size and an image too small for a
/// state: `inspect` describes it, a run refuses it by name; neither panics.
#[test]
fn tiny_pages_and_tiny_images_are_described_not_panicked_on() {
    use shm_snapshot::{MemStorage, SnapshotWriter};
    let dir = temp_dir("snap-tiny");
    let file = dir.join("tiny.snap");
    let mut w = SnapshotWriter::create(MemStorage::default(), 4, 100).unwrap();
    w.snapshot_tagged(&[3u8; 100], 217_020_518_514_230_019)
        .unwrap();
    std::fs::write(&file, &w.storage().data).unwrap();
    let out = Command::new(SHM_RESTORE)
        .arg("inspect")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("page size: 4"), "{text}");
    assert!(text.contains("too small"), "{text}");
    assert!(
        text.contains("committed generation of the program: 217020518514230019"),
        "{text}"
    );
    let out = Command::new(SHM_RESTORE)
        .arg(&file)
        .args(["--", "true"])
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&file.display().to_string()) && err.contains("too small"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Anyone who can write FILE's directory plants symlinks where compaction
/// writes its temporary file (the old fixed name, and many guesses of the
/// random ones): the host never opens them, the victim keeps its bytes, and
/// FILE (created 0600, then set to 0640 by its owner) keeps its mode across
/// compactions.
#[test]
fn compaction_never_follows_a_planted_symlink_and_keeps_the_mode() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("snap-symlink-attack");
    let file = dir.join("state.snap");
    let victim = dir.join("victim");
    std::fs::write(&victim, b"secret").unwrap();
    let run = start(
        "compaction_never_follows_a_planted_symlink_and_keeps_the_mode",
        &file,
        &fresh("0.02", &["--compact-at", "1.5", "--compact-min", "0"]),
    );
    run.wait_for("durable generation");
    assert_eq!(mode_of(&file), 0o600, "a new FILE is private");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("state.snap.compact.tmp")).unwrap();
    for i in 0..64u64 {
        let name = format!("state.snap.compact.{i:016x}.tmp");
        std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
    }
    run.wait_count("compacted ", 3);
    let text = run.stop();
    assert_eq!(std::fs::read(&victim).unwrap(), b"secret", "{text}");
    assert_eq!(mode_of(&file), 0o640, "compaction changed FILE's mode");
    assert!(
        !std::fs::symlink_metadata(&file)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(check_file(&file), last_durable(&text), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A reader that holds FILE open (through `FileStorage::open`) while its
/// host compacts again and again keeps the log it opened: each compaction
/// reuses the log the one before replaced, except one a reader still holds,
/// so the held log, once replaced, never changes again.
#[test]
fn a_reader_holding_file_keeps_the_log_it_opened() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("snap-held-reader");
    let file = dir.join("state.snap");
    let run = start(
        "a_reader_holding_file_keeps_the_log_it_opened",
        &file,
        &fresh("0.01", &["--compact-at", "1.5", "--compact-min", "0"]),
    );
    run.wait_for("compacted ");
    let reader = FileStorage::open(&file, false).unwrap();
    let opened = run.stderr().matches("compacted ").count();
    // One compaction replaces the held log; the next would reuse it.
    run.wait_count("compacted ", opened + 2);
    let first = inspect(&reader).unwrap();
    run.wait_count("compacted ", opened + 6);
    let second = inspect(&reader).unwrap();
    let text = run.stop();
    assert!(first.damage.is_none() && first.commits > 0, "{first:?}");
    assert_eq!(first, second, "the held log changed: {text}");
    assert_eq!(check_file(&file), last_durable(&text), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// FILE given as a symlink: the host works on its target, so compaction
/// replaces the real file and the link keeps pointing at the newest state.
#[test]
fn a_symlinked_file_is_resolved_once() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("snap-symlinked");
    std::fs::create_dir_all(dir.join("real")).unwrap();
    let real = dir.join("real/state.snap");
    let link = dir.join("link.snap");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let run = start(
        "a_symlinked_file_is_resolved_once",
        &real,
        &["--create", "--size", &REGION.to_string()],
    );
    run.wait_for("durable generation");
    run.stop();
    let run = start(
        "a_symlinked_file_is_resolved_once",
        &link,
        &[
            "--interval",
            "0.02",
            "--compact-at",
            "1.5",
            "--compact-min",
            "0",
        ],
    );
    run.wait_count("compacted ", 2);
    let text = run.stop();
    assert!(text.contains("is a symlink: working on"), "{text}");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(check_file(&real), last_durable(&text), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A file of many snapshots, one byte flipped in the first one's records.
fn damaged_file(test: &str, dir: &Path) -> (PathBuf, u64, Vec<u8>) {
    let file = dir.join("state.snap");
    let run = start(test, &file, &fresh("0.02", &["--compact-at", "0"]));
    run.wait_count("durable generation", 8);
    let text = run.stop();
    let last = last_durable(&text);
    let mut bytes = std::fs::read(&file).unwrap();
    // The header (64), the first record's header (32), then its payload.
    bytes[64 + 32 + 100] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    (file, last, bytes)
}

fn shm_restore(args: &[&str], file: &Path, program: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(SHM_RESTORE);
    cmd.args(args).arg(file).arg("--").args(program);
    let out = uninherited(&mut cmd).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("panicked"), "{text}");
    (out.status.success(), text)
}

/// One flipped bit in an old record: a start refuses FILE and changes
/// nothing; `inspect` names the damage; `--salvage` restores the newest
/// generation into a new FILE and keeps the original aside, byte for byte.
#[test]
fn damage_in_the_middle_is_refused_then_salvaged() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("snap-damaged");
    let (file, last, bytes) = damaged_file("damage_in_the_middle_is_refused_then_salvaged", &dir);
    let (ok, text) = shm_restore(&[], &file, &["true"]);
    assert!(!ok, "{text}");
    assert!(text.contains("damaged records at bytes"), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "a refused FILE changed"
    );
    let out = Command::new(SHM_RESTORE)
        .arg("inspect")
        .arg(&file)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("DAMAGED"), "{shown}");
    assert!(
        shown.contains("generation 0 is the newest before the damage"),
        "{shown}"
    );
    let (ok, text) = shm_restore(&["--salvage"], &file, &["true"]);
    assert!(ok, "{text}");
    assert!(text.contains("salvaged file generation"), "{text}");
    // The committer rewrites every word at each commit: nothing comes from
    // before the damage, and FILE holds exactly the last durable state.
    assert!(text.contains("; 0 state pages"), "{text}");
    assert_eq!(check_file(&file), last, "{text}");
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("state.snap.damaged."))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        bytes,
        "the original changed"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--accept-generation G` restores exactly the generation before the
/// damage into a new FILE; one after the damage is refused.
#[test]
fn damage_accepts_the_generation_before_it() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("snap-accept");
    let (file, _, bytes) = damaged_file("damage_accepts_the_generation_before_it", &dir);
    let info = inspect(&FileStorage(std::fs::File::open(&file).unwrap())).unwrap();
    let d = info.damage.expect("damage");
    let after = d.newest_after.to_string();
    let (ok, text) = shm_restore(&["--accept-generation", &after], &file, &["true"]);
    assert!(!ok, "{text}");
    assert!(text.contains("lies after the damage"), "{text}");
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    let before = d.last_before.to_string();
    let (ok, text) = shm_restore(&["--accept-generation", &before], &file, &["true"]);
    assert!(ok, "{text}");
    assert!(text.contains("the original is kept as"), "{text}");
    assert_eq!(
        check_file(&file),
        0,
        "the generation before the damage: {text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Stray 8-byte writes to the live commit sequence (what any same-uid
/// process can do through /proc/HOST/fd): out of range, or back to 0. The
/// host refuses to persist from then on and says so; FILE keeps its last
/// good generation and restores cold.
#[test]
fn stray_sequence_writes_never_reach_the_file() {
    use std::os::unix::fs::FileExt;
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("snap-seq");
    for (k, (bad, says)) in [(1u64 << 63, "out of range"), (0, "went backwards")]
        .into_iter()
        .enumerate()
    {
        let file = dir.join(format!("state{k}.snap"));
        let run = start(
            "stray_sequence_writes_never_reach_the_file",
            &file,
            &fresh("0.02", &[]),
        );
        run.wait_count("durable generation", 3);
        let memfd = std::fs::OpenOptions::new()
            .write(true)
            .open(memfd_of(run.child.id()))
            .unwrap();
        // Again and again: a commit under way may store over one write.
        for _ in 0..20 {
            // `seq`: payload offset 128, after the segment header page.
            memfd.write_all_at(&bad.to_le_bytes(), 4096 + 128).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        wait_text(|| run.stderr(), says, 1);
        let text = run.stop();
        let durable = numbers_after(&text, "durable generation ");
        let last = *durable.last().unwrap();
        assert!(last < 1 << 40, "{text}");
        assert!(text.contains("not persisted"), "{text}");
        // FILE restores cold, at the last good generation.
        assert_eq!(check_file(&file), last, "{text}");
        let (ok, text) = shm_restore(&[], &file, &["true"]);
        assert!(ok, "{text}");
        assert!(
            text.contains(&format!("restored generation {last}")),
            "{text}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `inspect` of a FIFO, a directory or /dev/null: a clear error at once
/// (opening a FIFO used to wait for a writer forever).
#[test]
fn inspect_refuses_what_is_not_a_regular_file() {
    let _w = Watchdog::new(Duration::from_secs(30));
    let dir = temp_dir("snap-fifo");
    let fifo = dir.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    for (p, says) in [
        (fifo.as_path(), "is a FIFO"),
        (dir.as_path(), "is a directory"),
        (Path::new("/dev/null"), "is a character device"),
    ] {
        let out = Command::new(SHM_RESTORE)
            .arg("inspect")
            .arg(p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(says), "{p:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// FILE on a filesystem with room for the growing log but not for a
/// compacted copy beside it: the first compaction fails on a full disk, and
/// the host backs off instead of rewriting the image after every snapshot;
/// snapshots go on while there is room, and FILE stays restorable.
#[test]
fn compaction_backs_off_on_a_full_disk() {
    if role().is_some() {
        return sparse_committer();
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("snap-full");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=160k", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        std::fs::remove_dir(&dir).unwrap();
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs under CI"
        );
        eprintln!("compaction_backs_off_on_a_full_disk: cannot mount a tmpfs here (not root?)");
        return;
    }
    let file = dir.join("state.snap");
    let err = std::env::temp_dir().join(unique_name("snap-full-err"));
    let mut cmd = Command::new(SHM_RESTORE);
    cmd.args(fresh(
        "0.02",
        &["--compact-at", "1.5", "--compact-min", "0"],
    ));
    // The log (stderr) must not live on the full filesystem.
    let run = Run::spawn(
        cmd,
        "sparse_committer",
        "compaction_backs_off_on_a_full_disk",
        &file,
        &err,
        &[],
    );
    run.wait_for("next attempt in");
    // Snapshots go on past the failed compaction until the disk is full.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = run.stderr();
        let after = text.split("next attempt in").nth(1).unwrap_or("");
        let disk_full = text.contains("No space left");
        if after.matches("durable generation").count() >= 3
            || (disk_full && after.contains("write"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = run.stop();
    let _ = std::fs::remove_file(&err);
    let tries = text.matches("compaction:").count();
    let snapshots_after = text
        .split("next attempt in")
        .nth(1)
        .unwrap_or("")
        .matches("durable generation")
        .count();
    let file_ok = inspect(&FileStorage(std::fs::File::open(&file).unwrap()));
    let _ = Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(tries, 1, "compaction retried on a full disk:\n{text}");
    assert!(snapshots_after >= 1, "{text}");
    let info = file_ok.unwrap();
    assert_eq!(info.valid_end, info.file_len, "{info:?}");
}

/// A snapshot file as `shm-restore` writes it: one snapshot per entry of
/// `generations`, each a state whose every byte is the generation's low byte
/// (the commit's tag is the program's generation).
fn written_file(file: &Path, generations: &[u64]) {
    use shm_snapshot::SnapshotWriter;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(file)
        .unwrap();
    let mut w = SnapshotWriter::create(FileStorage(f), 4096, 4096 + REGION as u64).unwrap();
    for &g in generations {
        let mut image = vec![g as u8; 4096 + REGION];
        image[..4096].fill(0);
        w.snapshot_tagged(&image, g).unwrap();
    }
}

fn inspect_json(file: &Path) -> serde_json::Value {
    let out = Command::new(SHM_RESTORE)
        .args(["inspect", "--json"])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A FILE cut inside its first snapshot has a valid header and no complete
/// commit: the run says so and what it ignored (it used to log only
/// "restored generation 0", as for a healthy fresh file). A FILE whose
/// newest snapshot is torn says which generation it restored and how many
/// bytes it ignored. `inspect --json` reports both.
#[test]
fn a_start_says_what_it_ignored_in_file() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let dir = temp_dir("snap-cut");
    let cut = dir.join("cut.snap");
    written_file(&cut, &[1]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(100)
        .unwrap();
    let j = inspect_json(&cut);
    assert_eq!(j["commits"], 0, "{j}");
    assert_eq!(j["valid_bytes"], 64, "{j}");
    assert_eq!(j["ignored_tail_bytes"], 36, "{j}");
    assert_eq!(j["damage"], serde_json::Value::Null, "{j}");
    let (ok, text) = shm_restore(&[], &cut, &["true"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("no complete commit found: the 36 bytes after the header were ignored"),
        "{text}"
    );
    assert!(text.contains("restored generation 0"), "{text}");

    let torn = dir.join("torn.snap");
    written_file(&torn, &[1, 2]);
    let len = std::fs::metadata(&torn).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&torn)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let j = inspect_json(&torn);
    assert_eq!(
        (&j["file_generation"], &j["commits"]),
        (&1.into(), &1.into())
    );
    assert_eq!(j["program_generation"], 1, "{j}");
    let tail = j["ignored_tail_bytes"].as_u64().unwrap();
    assert!(tail > 0, "{j}");
    assert_eq!(j["valid_bytes"].as_u64().unwrap() + tail, len - 10, "{j}");
    let (ok, text) = shm_restore(&[], &torn, &["true"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "ignored a torn tail of {tail} bytes after file generation 1"
        )),
        "{text}"
    );
    assert!(text.contains("restored generation 1"), "{text}");
    assert!(!text.contains("no complete commit"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `inspect --json` of a damaged FILE: the damage as the library finds it.
#[test]
fn inspect_json_reports_damage() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = temp_dir("snap-json");
    let (file, _, _) = damaged_file("inspect_json_reports_damage", &dir);
    let info = inspect(&FileStorage(std::fs::File::open(&file).unwrap())).unwrap();
    let d = info.damage.clone().expect("damage");
    let j = inspect_json(&file);
    assert_eq!(j["schema"], 1, "{j}");
    assert_eq!(j["file_generation"], info.generation, "{j}");
    assert_eq!(j["commits"], info.commits, "{j}");
    assert_eq!(j["valid_bytes"], info.valid_end, "{j}");
    assert_eq!(j["file_len"], info.file_len, "{j}");
    assert_eq!(j["state_size"], REGION, "{j}");
    assert_eq!(j["ignored_tail_bytes"], 0, "{j}");
    assert_eq!(j["damage"]["last_before"], d.last_before, "{j}");
    assert_eq!(j["damage"]["newest_after"], d.newest_after, "{j}");
    let ranges: Vec<(u64, u64)> = j["damage"]["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["start"].as_u64().unwrap(), r["end"].as_u64().unwrap()))
        .collect();
    let want: Vec<(u64, u64)> = d.ranges.iter().map(|r| (r.start, r.end)).collect();
    assert_eq!(ranges, want, "{j}");
    // The program's generation as of the newest generation before the damage.
    assert_eq!(j["program_generation"], 0, "{j}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The direct children of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// With the default interval (1 s), a program and its host SIGKILLed half a
/// second after the program's first commit: the first snapshot was taken as
/// soon as that commit was made, so a cold restore recovers it (the first
/// snapshot used to come a whole interval after start: nothing was saved).
#[test]
fn first_snapshot_follows_the_first_commit() {
    if role().is_some() {
        return committer();
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let dir = temp_dir("snap-first");
    let file = dir.join("state.snap");
    let mut run = start(
        "first_snapshot_follows_the_first_commit",
        &file,
        &["--create", "--size", &REGION.to_string()],
    );
    let host = run.child.id();
    // The live commit sequence (byte 16 of the memfd) is twice the generation.
    let memfd = memfd_of(host);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let b = std::fs::read(&memfd).unwrap_or_default();
        if b.len() >= 24 && u64::from_le_bytes(b[16..24].try_into().unwrap()) >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", run.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    let program = children_of(host);
    for pid in std::iter::once(host).chain(program) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    run.child.wait().unwrap();
    let logged = run.stderr();
    let (ok, text) = shm_restore(&[], &file, &["true"]);
    assert!(ok, "{text}");
    let restored = numbers_after(&text, "restored generation ");
    assert!(
        restored.first().is_some_and(|&g| g >= 1),
        "{text}\nthe killed run:\n{logged}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The host's memfd, once it has one.
fn memfd_of(pid: u32) -> PathBuf {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                std::fs::read_link(p).is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:state"))
            });
        if let Some(p) = found {
            return p;
        }
        assert!(std::time::Instant::now() < deadline, "no memfd in {pid}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Command-line conventions: sizes and durations in every spelling of the
/// one parser (old ones included), `--version`, usage errors exit 2 (no
/// COMMAND, no FILE, an unknown option, `inspect` without FILE), `-q` and
/// `RUST_LOG` quiet the informational lines.
#[test]
fn options_follow_the_conventions() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let dir = temp_dir("snap-opts");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(SHM_RESTORE);
        uninherited(&mut cmd)
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied());
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!text.contains("panicked"), "{text}");
        (out.status.code(), text)
    };
    for (k, opts) in [
        &["--size", "1M", "--interval", "100ms", "--lag-warn", "2s"][..],
        &["--size", "1MiB", "--interval", "0.1", "--lag-warn", "2"],
        &[
            "--size",
            "1048576",
            "--interval",
            "1",
            "--max-write-rate",
            "10MiB",
        ],
        &[
            "--size",
            "1024K",
            "--interval",
            "1min",
            "--max-write-rate",
            "10M",
        ],
    ]
    .iter()
    .enumerate()
    {
        let file = dir.join(format!("{k}.snap"));
        let f = file.to_str().unwrap();
        let (code, text) = run(&[&["--create"], *opts, &[f, "--", "true"]].concat(), &[]);
        assert_eq!(code, Some(0), "{opts:?}: {text}");
        assert!(
            text.contains("starting a fresh state of 1048576 bytes"),
            "{opts:?}: {text}"
        );
    }
    let (code, text) = run(&["--version"], &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("shm-restore "), "{text}");
    let f = dir.join("q.snap");
    let f = f.to_str().unwrap();
    for (args, what) in [
        (&[][..], "nothing"),
        (&[f], "no COMMAND"),
        (&[f, "--"], "an empty COMMAND"),
        (&["--bogus", f, "--", "true"], "an unknown option"),
        (
            &["--size", "lots", "--create", f, "--", "true"],
            "a bad size",
        ),
        (&["inspect"], "inspect without FILE"),
    ] {
        let (code, text) = run(args, &[]);
        assert_eq!(code, Some(2), "{what}: {text}");
    }
    let (code, text) = run(&["-q", "--create", f, "--", "true"], &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("starting a fresh state"), "{text}");
    let (code, text) = run(&[f, "--", "true"], &[("RUST_LOG", "warn")]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("restored generation"), "{text}");
    let (code, text) = run(&[f, "--", "true"], &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("shm-restore: cold start: restored generation 0"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
