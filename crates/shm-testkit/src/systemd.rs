//! A real `systemd --user` manager for tests, in a private mount namespace.
//!
//! Follows the recipe that works on machines without systemd as PID 1 (as
//! root): `unshare -m` a shell that confines itself to a cgroup subtree of its
//! own (so the manager never adopts other processes), mounts a private tmpfs
//! on `/run/systemd` with the "booted with systemd" marker, points
//! `XDG_RUNTIME_DIR`/`XDG_CONFIG_HOME` at fresh directories and starts
//! `systemd --user`. `systemctl` and `systemd-run` run inside the same
//! namespace through `nsenter`. Dropping the [`UserManager`] stops the units,
//! kills the manager and removes the cgroup subtree.
//!
//! When the manager cannot start, [`UserManager::start`] returns `None` after
//! printing why, unless `CI=true`, where it panics: CI must fail, not skip.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = r#"
set -eu
CG=outlive-systemd-$$
DIRS=""
for d in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
  [ -f "${d}cgroup.procs" ] || continue
  mkdir "$d$CG" 2>/dev/null || continue
  if echo $$ > "$d$CG/cgroup.procs" 2>/dev/null; then DIRS="$DIRS $d$CG"; else rmdir "$d$CG"; fi
done
SD=
cleanup() {
  [ -n "$SD" ] && kill "$SD" 2>/dev/null && wait "$SD" 2>/dev/null || true
  for d in $DIRS; do
    for p in $(cat "$d/cgroup.procs" 2>/dev/null) $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null); do
      [ "$p" = "$$" ] || kill -9 "$p" 2>/dev/null || true
    done
    echo $$ > "$(dirname "$d")/cgroup.procs" 2>/dev/null || true
    sleep 0.1
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -rf "$XDG_RUNTIME_DIR" "$XDG_CONFIG_HOME"
}
trap cleanup EXIT
trap 'exit 0' TERM INT
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/system
export XDG_RUNTIME_DIR=$(mktemp -d); chmod 700 "$XDG_RUNTIME_DIR"
export XDG_CONFIG_HOME=$(mktemp -d); mkdir -p "$XDG_CONFIG_HOME/systemd/user"
/lib/systemd/systemd --user --log-level=warning &
SD=$!
for i in $(seq 200); do
  state=$(systemctl --user is-system-running 2>/dev/null || true)
  case "$state" in running|degraded) break ;; esac
  kill -0 "$SD" 2>/dev/null || { echo "FAILED systemd --user exited"; exit 1; }
  sleep 0.05
done
case "$state" in running|degraded) ;; *) echo "FAILED manager state: $state"; exit 1 ;; esac
echo "READY $$ $XDG_RUNTIME_DIR $XDG_CONFIG_HOME"
# Live until told to stop (SIGTERM) or our parent closes stdin.
while read -r _; do :; done
"#;

/// A running `systemd --user` in a private mount namespace.
#[derive(Debug)]
pub struct UserManager {
    shell: Child,
    ns_pid: u32,
    runtime_dir: PathBuf,
    config_home: PathBuf,
    units: Vec<String>,
}

impl UserManager {
    /// Starts a user manager, or explains why it cannot (`None`; a panic when `CI=true`).
    pub fn start() -> Option<UserManager> {
        match UserManager::try_start() {
            Ok(m) => Some(m),
            Err(why) => {
                assert_ne!(
                    std::env::var("CI").as_deref(),
                    Ok("true"),
                    "CI=true and no systemd user manager could be started: {why}"
                );
                eprintln!("NOTICE: skipping a real-systemd test: {why}");
                None
            }
        }
    }

    fn try_start() -> Result<UserManager, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("these tests need root (unshare -m, cgroups, mounts)".into());
        }
        if !Path::new("/lib/systemd/systemd").exists() {
            return Err("systemd is not installed (/lib/systemd/systemd)".into());
        }
        let mut shell = Command::new("unshare")
            .args(["-m", "--propagation", "private", "bash", "-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        let out = shell.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            let _ = shell.kill();
            "systemd --user did not come up within 30 s".to_owned()
        })?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["READY", pid, rt, cfg] = parts.as_slice() {
            return Ok(UserManager {
                ns_pid: pid.parse().map_err(|_| format!("bad pid in {line:?}"))?,
                runtime_dir: PathBuf::from(rt),
                config_home: PathBuf::from(cfg),
                shell,
                units: Vec::new(),
            });
        }
        let _ = shell.kill();
        let _ = shell.wait();
        Err(format!("manager failed: {line}"))
    }

    /// A command that runs `program` inside the manager's namespace and environment.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.ns_pid.to_string(), "-m", "--", program])
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("XDG_CONFIG_HOME", &self.config_home)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID");
        cmd
    }

    /// Runs `systemctl --user ARGS`, returning its stdout; panics with its
    /// output if it fails (bounded by `systemctl`'s own timeouts).
    pub fn systemctl(&self, args: &[&str]) -> String {
        let out = self
            .command("systemctl")
            .arg("--user")
            .args(args)
            .output()
            .expect("run systemctl");
        assert!(
            out.status.success(),
            "systemctl --user {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl --user show -p PROPERTY --value UNIT`.
    pub fn property(&self, unit: &str, property: &str) -> String {
        self.systemctl(&["show", "-p", property, "--value", unit])
            .trim()
            .to_owned()
    }

    /// Starts a transient unit with `systemd-run --user --unit=NAME PROPS... -- ARGV...`.
    /// The unit is stopped when the manager drops.
    pub fn run(&mut self, unit: &str, properties: &[&str], argv: &[&str]) {
        let mut cmd = self.command("systemd-run");
        cmd.args(["--user", "--quiet", &format!("--unit={unit}")]);
        for p in properties {
            cmd.args(["-p", p]);
        }
        cmd.arg("--").args(argv);
        let out = cmd.output().expect("run systemd-run");
        self.units.push(unit.to_owned());
        assert!(
            out.status.success(),
            "systemd-run {unit} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until `probe()` is true, polling, for at most `timeout`.
    pub fn wait_until(&self, timeout: Duration, what: &str, mut probe: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !probe() {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The manager's config directory for unit files (`$XDG_CONFIG_HOME/systemd/user`).
    pub fn unit_dir(&self) -> PathBuf {
        self.config_home.join("systemd/user")
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        for unit in std::mem::take(&mut self.units) {
            let _ = self
                .command("systemctl")
                .args(["--user", "stop", &unit])
                .output();
        }
        // Closing stdin ends the script's read loop; its EXIT trap cleans up.
        drop(self.shell.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.shell.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}
