//! A real `systemd --user` manager for tests, in a private mount namespace.
//!
//! Follows the recipe that works on machines without systemd as PID 1 (as
//! root): `unshare -m` a shell that confines itself to a cgroup subtree of its
//! own (so the manager never adopts other processes), mounts a private tmpfs
//! on `/run/systemd` with the "booted with systemd" marker, starts a
//! `systemd-journald` of its own (volatile storage in a private tmpfs, so
//! `journalctl --user -u UNIT` works as on a real machine), points `HOME`,
//! `XDG_RUNTIME_DIR` and `XDG_CONFIG_HOME` (`$HOME/.config`) at fresh
//! directories and starts `systemd --user`. The subtree is named
//! `outlive-systemd-PID.slice/user@UID.service`, the shape of a real user
//! manager's cgroup, so that journald files the units' output under their
//! user unit. `systemctl`, `journalctl`, `systemd-run` and command blocks of
//! the docs ([`UserManager::script`]) run inside the same namespace through
//! `nsenter`. Dropping the [`UserManager`] stops the units, kills the manager
//! and journald, and removes the cgroup subtree.
//!
//! When the manager cannot start, [`UserManager::start`] returns `None` after
//! printing why, unless `CI=true`, where it panics: CI must fail, not skip.
//!
//! The scenario steps the tests share are here too: units started, restarted,
//! killed and stopped ([`UserManager::run`], [`UserManager::restart`],
//! [`UserManager::kill`], [`UserManager::stop`]), a unit's journal waited on
//! with a deadline ([`UserManager::wait_journal`]), the command blocks of the
//! docs run as written ([`DocFlow`]) and the unit files they install checked
//! ([`UserManager::installed_unit`]), and numbers read from log lines
//! ([`numbers_after`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = r#"
set -eu
TOP=outlive-systemd-$$.slice
CG=$TOP/user@$(id -u).service
DIRS=""
for d in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
  [ -f "${d}cgroup.procs" ] || continue
  mkdir "$d$TOP" 2>/dev/null || continue
  if mkdir "$d$CG" 2>/dev/null && echo $$ > "$d$CG/cgroup.procs" 2>/dev/null; then
    DIRS="$DIRS $d$TOP"
  else
    rmdir "$d$CG" "$d$TOP" 2>/dev/null || true
  fi
done
SD=
JD=
HOMEDIR=
cleanup() {
  [ -n "$SD" ] && kill "$SD" 2>/dev/null && wait "$SD" 2>/dev/null || true
  [ -n "$JD" ] && kill "$JD" 2>/dev/null && wait "$JD" 2>/dev/null || true
  for d in $DIRS; do
    for p in $(cat "$d/cgroup.procs" 2>/dev/null) $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null); do
      [ "$p" = "$$" ] || kill -9 "$p" 2>/dev/null || true
    done
    echo $$ > "$(dirname "$d")/cgroup.procs" 2>/dev/null || true
    sleep 0.1
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -rf "$XDG_RUNTIME_DIR" "$HOMEDIR"
}
trap cleanup EXIT
trap 'exit 0' TERM INT
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/system
export XDG_RUNTIME_DIR=$(mktemp -d); chmod 700 "$XDG_RUNTIME_DIR"
HOMEDIR=$(mktemp -d)
export HOME=$HOMEDIR
export XDG_CONFIG_HOME=$HOME/.config; mkdir -p "$XDG_CONFIG_HOME/systemd/user"
# A journald of our own: volatile, in private tmpfs mounts, importing nothing
# from the kernel and forwarding nothing (this namespace only).
mkdir -p /run/log
mount -t tmpfs tmpfs /run/log
[ -d /var/log/journal ] && mount -t tmpfs tmpfs /var/log/journal
printf '[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\nForwardToKMsg=no\nForwardToConsole=no\nForwardToWall=no\nRateLimitBurst=0\n' \
  > "$XDG_RUNTIME_DIR/journald.conf"
[ -f /etc/systemd/journald.conf ] && mount --bind "$XDG_RUNTIME_DIR/journald.conf" /etc/systemd/journald.conf
if [ -x /lib/systemd/systemd-journald ]; then
  /lib/systemd/systemd-journald >/dev/null 2>&1 &
  JD=$!
  for i in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done
  [ -S /run/systemd/journal/stdout ] || echo "NOTICE: systemd-journald did not start; unit output is lost" >&2
  # journald files root's messages in system.journal, and `journalctl --user`
  # run by root reads only user-0.journal: a hard link lets the docs'
  # `journalctl --user -u UNIT` show them, as for any other user.
  for i in $(seq 100); do
    sj=$(ls /run/log/journal/*/system.journal 2>/dev/null | head -n 1)
    [ -n "$sj" ] && break; sleep 0.05
  done
  [ "$(id -u)" = 0 ] && [ -n "$sj" ] && ln "$sj" "$(dirname "$sj")/user-0.journal"
fi
/lib/systemd/systemd --user --log-level=warning &
SD=$!
for i in $(seq 200); do
  state=$(systemctl --user is-system-running 2>/dev/null || true)
  case "$state" in running|degraded) break ;; esac
  kill -0 "$SD" 2>/dev/null || { echo "FAILED systemd --user exited"; exit 1; }
  sleep 0.05
done
case "$state" in running|degraded) ;; *) echo "FAILED manager state: $state"; exit 1 ;; esac
echo "READY $$ $XDG_RUNTIME_DIR $HOME"
# Live until told to stop (SIGTERM) or our parent closes stdin.
while read -r _; do :; done
"#;

/// A running `systemd --user` in a private mount namespace.
#[derive(Debug)]
pub struct UserManager {
    shell: Child,
    ns_pid: u32,
    runtime_dir: PathBuf,
    home: PathBuf,
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
        if let ["READY", pid, rt, home] = parts.as_slice() {
            return Ok(UserManager {
                ns_pid: pid.parse().map_err(|_| format!("bad pid in {line:?}"))?,
                runtime_dir: PathBuf::from(rt),
                home: PathBuf::from(home),
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
        self.command_in(None, program)
    }

    /// [`UserManager::command`] in the working directory `dir` (`nsenter`
    /// would otherwise start it in `/`).
    fn command_in(&self, dir: Option<&Path>, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.ns_pid.to_string(), "-m"]);
        if let Some(dir) = dir {
            cmd.arg(format!("--wd={}", dir.display()));
        }
        cmd.args(["--", program])
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
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

    /// `systemctl --user restart UNIT`.
    pub fn restart(&self, unit: &str) {
        self.systemctl(&["restart", unit]);
    }

    /// `systemctl --user stop UNIT`.
    pub fn stop(&self, unit: &str) {
        self.systemctl(&["stop", unit]);
    }

    /// `systemctl --user stop UNIT`, whatever the outcome: for the `Drop` of a
    /// scenario, where the unit may be gone already and a panic would hide
    /// the test's own failure.
    pub fn stop_quietly(&self, unit: &str) {
        let _ = self
            .command("systemctl")
            .args(["--user", "stop", unit])
            .output();
    }

    /// Sends `signal` (`SIGKILL`, ...) to every process of `unit`
    /// (`systemctl --user kill -s SIGNAL UNIT`).
    pub fn kill(&self, unit: &str, signal: &str) {
        self.systemctl(&["kill", "-s", signal, unit]);
    }

    /// Sends `signal` to the main process of `unit` only (`--kill-whom=main`).
    pub fn kill_main(&self, unit: &str, signal: &str) {
        self.systemctl(&["kill", "--kill-whom=main", "-s", signal, unit]);
    }

    /// `systemctl --user status UNIT`, for failure messages (never fails).
    pub fn status(&self, unit: &str) -> String {
        self.command("systemctl")
            .args(["--user", "status", unit, "--no-pager"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits until `probe` holds for the journal of `unit` (see
    /// [`UserManager::journal`]), polling, for at most `timeout`, and returns
    /// that journal. journald files a unit's output asynchronously, so a test
    /// waits for the lines it expects rather than reading once. On timeout it
    /// panics with `what`, the journal and the unit's status.
    pub fn wait_journal(
        &self,
        unit: &str,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let journal = self.journal(unit);
            if probe(&journal) {
                return journal;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} in the journal of {unit}:\n\
                 {journal}\n--- status:\n{}",
                self.status(unit)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The unit file `unit` as installed in [`UserManager::unit_dir`]
    /// (by a doc's command block, with `envsubst`); panics if it is missing
    /// or still holds a `${VARIABLE}` that `envsubst` left.
    pub fn installed_unit(&self, unit: &str) -> String {
        let path = self.unit_dir().join(unit);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("unit {unit} is not installed ({}): {e}", path.display()));
        assert!(
            !text.contains("${"),
            "envsubst left a variable in {unit}:\n{text}"
        );
        text
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
        self.home.join(".config/systemd/user")
    }

    /// The manager's `$HOME` (a fresh directory; `~/.config` is its `XDG_CONFIG_HOME`).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Runs `script` with `bash -e -o pipefail` in `dir`, inside the manager's
    /// namespace, as its user would: `HOME` is the manager's, so `~/.config/systemd/user`
    /// is where it reads unit files; `CARGO_HOME` and `RUSTUP_HOME` stay the
    /// caller's (so `cargo` in the script finds its toolchain and registry
    /// offline). `env` adds variables. Returns the combined output; panics
    /// with it when the script fails.
    pub fn script(&self, script: &str, dir: &Path, env: &[(&str, &std::ffi::OsStr)]) -> String {
        let real_home = std::env::var_os("HOME").map(PathBuf::from);
        let mut cmd = self.command_in(Some(dir), "bash");
        cmd.args(["-e", "-o", "pipefail", "-c", script])
            .env("HOME", &self.home);
        for (var, dir) in [("CARGO_HOME", ".cargo"), ("RUSTUP_HOME", ".rustup")] {
            if let Some(v) =
                std::env::var_os(var).or_else(|| Some(real_home.as_ref()?.join(dir).into()))
            {
                cmd.env(var, v);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run bash");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "this script failed ({}):\n{script}\n--- its output:\n{text}",
            out.status
        );
        text
    }

    /// The messages of `unit` in the journal, one a line.
    ///
    /// This is `journalctl --user -u UNIT -o cat`, widened to the entries
    /// journald filed under `_SYSTEMD_UNIT=UNIT`: when a process has exited
    /// before journald reads its cgroup (a short oneshot run, on a loaded
    /// machine), journald falls back to the unit name the service manager
    /// sent with the stream and files it as a system unit's, which `-u` on
    /// the user journal does not match.
    pub fn journal(&self, unit: &str) -> String {
        let user_unit = format!("_SYSTEMD_USER_UNIT={unit}");
        let fallback = format!("_SYSTEMD_UNIT={unit}");
        let out = self
            .command("journalctl")
            .args([
                "--user",
                "-o",
                "cat",
                "--no-pager",
                &user_unit,
                "+",
                &fallback,
            ])
            .output()
            .expect("run journalctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The command blocks of a markdown file of the workspace (`docs/systemd.md`),
/// run as written under a [`UserManager`], as a user of those docs would:
/// from the workspace root, with `SHMFD` set to it (the docs' variable for
/// the checkout) and `CARGO_TARGET_DIR` to the tests' [`nested_target_dir`]
/// (the blocks build the release binaries, minutes on a cold cache, into a
/// directory of the tests' own, and name it in the units they install).
///
/// [`nested_target_dir`]: crate::nested_target_dir
#[derive(Debug)]
pub struct DocFlow<'a> {
    sd: &'a UserManager,
    root: PathBuf,
    doc: PathBuf,
    target: PathBuf,
}

impl<'a> DocFlow<'a> {
    /// The blocks of `doc` (a path relative to the workspace root).
    pub fn new(sd: &'a UserManager, doc: &str) -> DocFlow<'a> {
        let root = workspace_root();
        let (target, _) = crate::nested_target_dir();
        DocFlow {
            sd,
            doc: root.join(doc),
            root,
            target,
        }
    }

    /// The target directory the blocks build into (`CARGO_TARGET_DIR`).
    pub fn target_dir(&self) -> &Path {
        &self.target
    }

    /// Runs the block under `heading` (see [`doc_block`]) and returns its
    /// output, which it also prints for the test's log; panics with the
    /// output if the block fails.
    pub fn run(&self, heading: &str) -> String {
        let env = [
            ("SHMFD", self.root.as_os_str()),
            ("CARGO_TARGET_DIR", self.target.as_os_str()),
        ];
        let out = self
            .sd
            .script(&doc_block(&self.doc, heading), &self.root, &env);
        eprintln!("{out}");
        out
    }
}

/// The workspace's root directory (where `Cargo.toml` names the members).
pub fn workspace_root() -> PathBuf {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    Path::new(root)
        .canonicalize()
        .unwrap_or_else(|e| panic!("workspace root {root}: {e}"))
}

/// Every number that follows `key` on the lines of `text`, in order: the
/// leading digits after the first `key` of each line that holds one
/// (`numbers_after("a 1\nb\na 22x", "a ")` is `[1, 22]`).
pub fn numbers_after(text: &str, key: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split_once(key).map(|(_, r)| r))
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// The command block (the first ```` ```bash ```` block) under the heading
/// `heading` (exact text, any level) of the markdown file at `path`: what a
/// user of those docs runs, for a test to run verbatim.
pub fn doc_block(path: &Path, heading: &str) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = text.lines().skip_while(|l| {
        l.strip_prefix('#')
            .map(|h| h.trim_start_matches('#').trim())
            != Some(heading)
    });
    assert!(
        lines.next().is_some(),
        "{} has no heading {heading:?}",
        path.display()
    );
    let mut block = String::new();
    let mut inside = false;
    for line in lines {
        if !inside && line.starts_with('#') {
            break;
        }
        if !inside && line.trim() == "```bash" {
            inside = true;
        } else if inside && line.trim() == "```" {
            return block;
        } else if inside {
            block.push_str(line);
            block.push('\n');
        }
    }
    panic!(
        "no complete ```bash block under {heading:?} in {}",
        path.display()
    )
}

impl Drop for UserManager {
    fn drop(&mut self) {
        for unit in std::mem::take(&mut self.units) {
            self.stop_quietly(&unit);
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

#[cfg(test)]
mod tests {
    use super::numbers_after;

    #[test]
    fn numbers_after_reads_the_leading_digits_after_the_first_key_of_each_line() {
        let sut = "COUNT 1\nnothing\nCOUNT 22 more, COUNT 5\nCOUNT x\nx COUNT 3\n";
        assert_eq!(numbers_after(sut, "COUNT "), [1, 22, 3]);
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(super::workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }
}
