//! Running the workspace's programs: locating them, watching their output, killing them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal};

/// Where the workspace's binaries are: next to the tour's own executable.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    dir: PathBuf,
}

/// The workspace the tour was built from (so it builds from any directory).
const WORKSPACE_MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");

/// The packages (and features) whose binaries the tour runs.
const BUILD_ARGS: &[&str] = &[
    "-p",
    "shm-fd",
    "-p",
    "primes",
    "-p",
    "shm-snapshot",
    "--features",
    "shm-snapshot/shm-restore",
    "-p",
    "primes-snapshot",
    "-p",
    "ring-sum",
    "-p",
    "board",
];

impl Bins {
    /// Finds the binaries the tour runs, building them with cargo first when the
    /// tour itself was started by cargo (`cargo run --release --bin tour`): next
    /// to the tour's own executable, or in `target_dir` (same profile) if given.
    pub(crate) fn locate(build: bool, target_dir: Option<&Path>) -> Result<Bins> {
        let exe = std::env::current_exe().context("cannot find the tour's own executable")?;
        let own_dir = exe.parent().context("executable has no directory")?;
        let profile = own_dir
            .file_name()
            .context("executable directory has no name")?;
        let profile_release = profile == "release";
        let target_dir = match target_dir {
            Some(t) => t.to_path_buf(),
            None => own_dir
                .parent()
                .context("binary directory has no parent")?
                .to_path_buf(),
        };
        let dir = target_dir.join(profile);
        if build && let Some(cargo) = std::env::var_os("CARGO") {
            let mut cmd = Command::new(cargo);
            cmd.arg("build")
                .arg("--quiet")
                .arg("--manifest-path")
                .arg(WORKSPACE_MANIFEST)
                .args(BUILD_ARGS)
                .arg("--target-dir")
                .arg(&target_dir);
            if profile_release {
                cmd.arg("--release");
            }
            let status = cmd.status().context("running cargo build")?;
            if !status.success() {
                bail!("cargo build of the tour's programs failed ({status})");
            }
        }
        let bins = Bins { dir };
        for name in [
            "shm-fd",
            "primes",
            "shm-restore",
            "primes-snapshot",
            "server",
            "client",
            "board",
        ] {
            if !bins.path(name).exists() {
                bail!(
                    "{} is missing; build the programs first: cargo build --release {}",
                    bins.path(name).display(),
                    BUILD_ARGS.join(" ")
                );
            }
        }
        Ok(bins)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(crate) fn command(&self, name: &str) -> Command {
        Command::new(self.path(name))
    }
}

/// A running program whose stdout and stderr lines arrive on a channel.
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) name: String,
    child: Option<Child>,
    lines: Receiver<String>,
    /// Every line seen so far.
    pub(crate) seen: Vec<String>,
}

impl Watched {
    pub(crate) fn spawn(name: &str, mut cmd: Command) -> Result<Watched> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let (tx, rx) = channel();
        let out = child.stdout.take().context("stdout pipe")?;
        let err = child.stderr.take().context("stderr pipe")?;
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Watched {
            name: name.to_owned(),
            child: Some(child),
            lines: rx,
            seen: Vec::new(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for a line satisfying `pred`, returning it; every line read is also
    /// passed to `show`.
    pub(crate) fn wait_for(
        &mut self,
        timeout: Duration,
        mut show: impl FnMut(&str),
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    show(&line);
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("{} printed no expected line within {timeout:?}", self.name)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "{} exited before printing the expected line (last: {:?})",
                        self.name,
                        self.seen.last()
                    )
                }
            }
        }
    }

    /// Reads whatever lines arrive within `for_`.
    pub(crate) fn drain(&mut self, for_: Duration, mut show: impl FnMut(&str)) {
        let deadline = Instant::now() + for_;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            show(&line);
            self.seen.push(line);
        }
    }

    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        signal_pid(self.pid(), signal)
    }

    /// Waits for the program to exit (bounded), collecting its remaining output.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("already reaped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                    self.seen.push(line);
                }
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn signal_pid(pid: u32, signal: Signal) -> Result<()> {
    let pid = Pid::from_raw(i32::try_from(pid)?).context("pid 0")?;
    rustix::process::kill_process(pid, signal).with_context(|| format!("kill -{signal:?} {pid:?}"))
}

/// The direct children of `pid` (from /proc), e.g. the program a supervisor runs.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(Path::new(&path))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}
