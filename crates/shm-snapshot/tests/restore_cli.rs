//! `shm-restore` end to end with a program that commits nonstop: write-rate
//! limit and lag reporting, compaction of a growing log (with a stale
//! temporary file from a killed host cleaned up at start), option errors.
#![cfg(feature = "shm-restore")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shm_snapshot::live::Client;
use shm_snapshot::{FileStorage, compact_temp_path, inspect, restore};
use shm_testkit::{ROLE_ENV, Watchdog, role, unique_name};

const SHM_RESTORE: &str = env!("CARGO_BIN_EXE_shm-restore");
const REGION: usize = 64 << 10;

/// The program under `shm-restore`: every commit sets every word of the
/// state to the generation it commits, so any restored state names itself.
fn committer() {
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
        println!("committed {g}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

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
    for p in 0..pages {
        raw.region().write(4096 + 8 * p, &u64::MAX).unwrap();
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
    let image = file_image(file);
    let word = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
    let g = word(0);
    assert_eq!(word(4096), g, "state word 0");
    for o in (4096 + 8..image.len()).step_by(8) {
        assert_eq!(word(o), 1, "word at {o} of generation {g}");
    }
    g
}

struct Run {
    child: Child,
    err: PathBuf,
}

impl Run {
    fn start(test: &str, file: &Path, opts: &[&str]) -> Run {
        Self::start_as("committer", test, file, opts)
    }

    fn start_as(role: &str, test: &str, file: &Path, opts: &[&str]) -> Run {
        Self::launch(Command::new(SHM_RESTORE), role, test, file, opts)
    }

    /// `cmd` (`shm-restore`, or a supervisor's command line ending in it)
    /// with `opts FILE -- <this test as ROLE>`.
    fn launch(mut cmd: Command, role: &str, test: &str, file: &Path, opts: &[&str]) -> Run {
        let err = file.with_extension("err");
        let exe = std::env::current_exe().unwrap();
        let child = cmd
            .args(opts)
            .arg(file)
            .arg("--")
            .arg(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Run { child, err }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn wait_for(&self, what: &str) {
        self.wait_count(what, 1);
    }

    /// Waits until stderr holds `what` at least `n` times.
    fn wait_count(&self, what: &str, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.stderr().matches(what).count() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "no {what:?} in:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (forwarded to the program), then the whole stderr.
    fn stop(mut self) -> String {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.child.wait().unwrap();
        let text = self.stderr();
        let _ = std::fs::remove_file(&self.err);
        text
    }
}

/// The file's newest state: its generation, checked word by word.
fn check_file(file: &Path) -> u64 {
    let image = file_image(file);
    let word = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
    let g = word(0);
    for o in (4096..image.len()).step_by(8) {
        assert_eq!(word(o), g, "word at {o} of generation {g}");
    }
    g
}

/// FILE's newest image (generation prefix, then the state); FILE must have
/// no torn tail.
fn file_image(file: &Path) -> Vec<u8> {
    let st = FileStorage(std::fs::File::open(file).unwrap());
    let info = inspect(&st).unwrap();
    assert_eq!(info.valid_end, info.file_len, "{info:?}");
    let mut image = vec![0u8; usize::try_from(info.region_size).unwrap()];
    restore(&st, |off, b| {
        let o = usize::try_from(off).unwrap();
        image[o..o + b.len()].copy_from_slice(b);
    })
    .unwrap();
    image
}

fn numbers_after(text: &str, key: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split_once(key).map(|(_, r)| r))
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique_name(name));
    std::fs::create_dir_all(&d).unwrap();
    d
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
    let run = Run::start(
        "write_rate_limit_and_lag_report",
        &file,
        &[
            "--create",
            "--size",
            &REGION.to_string(),
            "--interval",
            "0.02",
            "--max-write-rate",
            "1",
            "--lag-warn",
            "0.1",
        ],
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
    let run = Run::start(
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
    let last = *numbers_after(&text, "durable generation ").last().unwrap();
    assert_eq!(check_file(&file), last, "{text}");
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
    let run = Run::start_as(
        "scribbler",
        "garbage_stamps_skip_snapshots_and_never_corrupt_the_file",
        &file,
        &[
            "--create",
            "--size",
            &REGION.to_string(),
            "--interval",
            "0.05",
            "--lag-warn",
            "0.2",
        ],
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
    .arg(SHM_RESTORE);
    let run = Run::launch(
        sup,
        "sparse",
        "supervised_warm_start_rewrites_a_file_from_another_history",
        &file,
        &[
            "--create",
            "--size",
            &REGION.to_string(),
            "--interval",
            "0.05",
        ],
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
        let mut image = vec![0xEEu8; usize::try_from(len).unwrap()];
        image[..8].copy_from_slice(&1u64.to_le_bytes());
        w.snapshot(&image).unwrap();
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
    let last = *numbers_after(&text, "durable generation ").last().unwrap();
    assert_eq!(check_sparse_file(&file), last, "{text}");
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
    let run = Run::start(
        "log_is_compacted_and_stale_temp_removed",
        &file,
        &[
            "--create",
            "--size",
            &REGION.to_string(),
            "--interval",
            "0.02",
            "--compact-at",
            "2",
        ],
    );
    run.wait_for("removed stale");
    // Every snapshot writes the whole state: a compaction every few snapshots.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while run.stderr().matches("compacted ").count() < 3 {
        assert!(std::time::Instant::now() < deadline, "{}", run.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = run.stop();
    assert!(!tmp.exists(), "temporary file left behind");
    let image = (REGION + 4096) as u64;
    let len = std::fs::metadata(&file).unwrap().len();
    // At most the threshold plus one full snapshot past it.
    assert!(len <= 3 * image + image / 50, "log of {len} bytes");
    let last = *numbers_after(&text, "durable generation ").last().unwrap();
    assert_eq!(check_file(&file), last, "{text}");
    assert!(text.contains("compactions"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_options_are_refused_by_name() {
    for (opt, val) in [
        ("--max-write-rate", "0"),
        ("--max-write-rate", "fast"),
        ("--compact-at", "1"),
        ("--interval", "0"),
        ("--lag-warn=-1", ""),
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
    image[0] = 1; // the program's commit generation 1
    w.snapshot(&image).unwrap();
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
    w.snapshot(&[3u8; 100]).unwrap();
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
