//! `shm-restore` end to end, shared by the `restore_cli` and `replica`
//! tests: the program it runs (this test binary in a role), a host process
//! with its log, and what FILE holds afterwards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shm_snapshot::live::Client;
use shm_snapshot::{FileStorage, inspect, restore};
use shm_testkit::{ROLE_ENV, unique_name};

/// The binary under test.
pub(crate) const SHM_RESTORE: &str = env!("CARGO_BIN_EXE_shm-restore");
/// The state size most tests run with.
pub(crate) const REGION: usize = 64 << 10;

/// The program under `shm-restore`: every commit sets every word of the
/// state to the generation it commits, so any restored state names itself.
/// Commits are `COMMIT_PAUSE_MS` apart (5 ms unless set).
pub(crate) fn committer() {
    let mut fds = shm_fd::listen::ListenFds::from_env_inherited().expect("valid LISTEN_*");
    let fd = fds.take("state").expect("a memfd named state");
    let client = Client::open(std::os::fd::AsFd::as_fd(&fd)).expect("a snapshot memfd");
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
        println!("committed {g}");
        std::thread::sleep(Duration::from_millis(pause));
    }
}

/// A new directory under the temporary directory, named after `tag`.
pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique_name(tag));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Removes from `cmd` the socket-activation and notification settings this
/// test process may have inherited, so that `shm-restore` starts as if by
/// hand.
pub(crate) fn uninherited(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
}

/// A running `shm-restore` (or a supervisor of it) over this test binary
/// in a role; its stderr goes to a file. Dropping it kills it.
pub(crate) struct Run {
    pub(crate) child: Child,
    err: PathBuf,
}

impl Run {
    /// `cmd` (`shm-restore OPTS`, or a supervisor's command line ending in
    /// it) with `FILE -- <the test fn named test, as ROLE>` and the extra
    /// environment `env`; stderr into `err`.
    pub(crate) fn spawn(
        mut cmd: Command,
        role: &str,
        test: &str,
        file: &Path,
        err: &Path,
        env: &[(&str, &str)],
    ) -> Run {
        let err = err.to_path_buf();
        cmd.arg(file)
            .arg("--")
            .arg(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .envs(env.iter().copied());
        let child = uninherited(&mut cmd)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Run { child, err }
    }

    /// Its stderr so far.
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until stderr holds `what`.
    pub(crate) fn wait_for(&self, what: &str) {
        self.wait_count(what, 1);
    }

    /// Waits until stderr holds `what` at least `n` times.
    pub(crate) fn wait_count(&self, what: &str, n: usize) {
        wait_text(|| self.stderr(), what, n);
    }

    /// SIGTERM (forwarded to the program; a host drains its uploads), then
    /// the whole stderr.
    pub(crate) fn stop(self) -> String {
        self.end(rustix::process::Signal::TERM)
    }

    /// SIGKILL, then the whole stderr.
    pub(crate) fn kill(self) -> String {
        self.end(rustix::process::Signal::KILL)
    }

    fn end(mut self, signal: rustix::process::Signal) -> String {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).unwrap();
        self.child.wait().unwrap();
        let text = self.stderr();
        let _ = std::fs::remove_file(&self.err);
        text
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (60 s deadline) until `text()` holds `what` at least `n` times.
pub(crate) fn wait_text(text: impl Fn() -> String, what: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while text().matches(what).count() < n {
        assert!(
            Instant::now() < deadline,
            "no {n} × {what:?} in:\n{}",
            text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// FILE's newest image (the 4096-byte prefix, then the state) and the
/// program's generation (its commit's tag); FILE must have no torn tail.
pub(crate) fn file_image(file: &Path) -> (Vec<u8>, u64) {
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

/// FILE's newest state as [`committer`] leaves it: every word equals the
/// program generation (its commit's tag); returns it.
pub(crate) fn check_file(file: &Path) -> u64 {
    let (image, g) = file_image(file);
    let word = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
    for o in (4096..image.len()).step_by(8) {
        assert_eq!(word(o), g, "word at {o} of generation {g}");
    }
    g
}

/// The number right after each `key` in `text`, in order.
pub(crate) fn numbers_after(text: &str, key: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split_once(key).map(|(_, r)| r))
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}
