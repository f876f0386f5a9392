use std::io::{self, BufRead, BufReader};
use std::process::{ChildStdout, Command, ExitStatus};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// The environment variable that tells a re-run test binary which role to play.
pub const ROLE_ENV: &str = "SHM_TESTKIT_ROLE";

/// The role this process was started in by [`role_command`], if any.
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// A command that re-runs the current test binary, running only `test_name`,
/// with [`ROLE_ENV`] set to `role`.
///
/// # Panics
/// If the path of the current executable cannot be found.
pub fn role_command(test_name: &str, role: &str) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role);
    cmd
}

/// Starts `cmd` (a `Command` or `&mut Command`) and returns a handle that
/// SIGKILLs and reaps it on drop.
pub fn spawn(mut cmd: impl std::borrow::BorrowMut<Command>) -> io::Result<Child> {
    let cmd = cmd.borrow_mut();
    let name = cmd.get_program().to_string_lossy().into_owned();
    let inner = cmd.spawn()?;
    Ok(Child {
        inner: Some(inner),
        name,
    })
}

/// A child process that is SIGKILLed and reaped when the handle drops.
#[derive(Debug)]
pub struct Child {
    inner: Option<std::process::Child>,
    /// The program it runs, for messages.
    name: String,
}

impl Child {
    fn get(&self) -> &std::process::Child {
        self.inner.as_ref().expect("child already reaped")
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.get().id()
    }

    /// The underlying `std` handle, e.g. to take its stdout pipe.
    pub fn inner_mut(&mut self) -> &mut std::process::Child {
        self.inner.as_mut().expect("child already reaped")
    }

    /// The lines the child writes to its stdout (spawned with
    /// `Stdio::piped()`), taking the pipe from the handle.
    ///
    /// # Panics
    /// If its stdout is not piped or was taken already.
    pub fn stdout_lines(&mut self) -> Lines {
        let out = self.inner_mut().stdout.take().expect("a piped stdout");
        Lines(BufReader::new(out).lines())
    }

    /// Sends `signal` to the child.
    pub fn kill(&self, signal: Signal) -> io::Result<()> {
        let pid = Pid::from_raw(self.pid().cast_signed()).expect("pid is positive");
        rustix::process::kill_process(pid, signal).map_err(io::Error::from)
    }

    /// SIGKILLs the child and waits for it.
    pub fn sigkill_and_wait(&mut self) -> io::Result<ExitStatus> {
        let _ = self.kill(Signal::KILL);
        self.inner_mut().wait()
    }

    /// Waits for the child to exit, polling, for at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.inner_mut().try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the child to exit (bounded by `timeout`) and returns its
    /// status, whatever it is: the caller checks it.
    ///
    /// # Panics
    /// If the child is still running after `timeout`.
    pub fn wait_status(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_timeout(timeout) {
            Ok(Some(status)) => status,
            Ok(None) => panic!("child {} still running after {timeout:?}", self.pid()),
            Err(e) => panic!("waiting for child {}: {e}", self.pid()),
        }
    }

    /// Waits for the child to exit (bounded by `timeout`) and checks that it
    /// exited with status 0.
    ///
    /// # Panics
    /// If the child is still running after `timeout`, or exited any other
    /// way (the panic names the child and its status).
    pub fn wait_success(&mut self, timeout: Duration) {
        let status = self.wait_status(timeout);
        assert!(
            status.success(),
            "child {} ({}) did not exit 0: {status}",
            self.pid(),
            self.name
        );
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut child) = self.inner.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// The lines of a child's stdout ([`Child::stdout_lines`]); they end at the
/// end of the output or at the first line that is not UTF-8.
#[derive(Debug)]
pub struct Lines(io::Lines<BufReader<ChildStdout>>);

impl Iterator for Lines {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        self.0.next()?.ok()
    }
}

impl Lines {
    /// Reads on to the first line that contains `needle` (libtest may have
    /// printed the test's name before it on the same line) and returns it;
    /// the lines after it stay to be read.
    ///
    /// # Panics
    /// If the output ends first.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("the output ended before a line with {needle:?}"))
    }
}

/// Runs `program args` to completion with no `LISTEN_*` variables (so it
/// gets no fds from this test's environment) and returns its exit code and
/// its stdout followed by its stderr: for checking what a binary says and
/// how it exits.
///
/// # Panics
/// If the program cannot be started.
#[must_use]
pub fn run_without_fds(program: &str, args: &[&str]) -> (Option<i32>, String) {
    let (status, text) = output_text(
        Command::new(program)
            .args(args)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES"),
    );
    (status.code(), text)
}

/// Runs `cmd` to completion: its exit status, and its stdout followed by
/// its stderr (lossily decoded).
///
/// # Panics
/// If the program cannot be started.
pub fn output_text(cmd: &mut Command) -> (ExitStatus, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cmd.get_program().to_string_lossy()));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status, text)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn role_child_runs_and_reports() {
        if let Some(role) = super::role() {
            assert_eq!(role, "exit7");
            std::process::exit(7);
        }
        let mut sut = super::spawn(super::role_command(
            "child::tests::role_child_runs_and_reports",
            "exit7",
        ))
        .unwrap();
        let status = sut.wait_status(Duration::from_secs(30));
        assert_eq!(status.code(), Some(7));
    }

    #[test]
    fn wait_success_accepts_exit_0_and_refuses_anything_else() {
        super::spawn(std::process::Command::new("true"))
            .unwrap()
            .wait_success(Duration::from_secs(30));
        let refused = std::panic::catch_unwind(|| {
            super::spawn(std::process::Command::new("false"))
                .unwrap()
                .wait_success(Duration::from_secs(30));
        });
        let msg = *refused
            .expect_err("exit status 1 is refused")
            .downcast::<String>()
            .unwrap();
        assert!(msg.contains("did not exit 0: exit status: 1"), "{msg}");
    }

    #[test]
    fn stdout_lines_wait_for_a_line_and_keep_the_rest() {
        let mut cmd = std::process::Command::new("printf");
        cmd.arg("a\\nready: 1\\nb\\n")
            .stdout(std::process::Stdio::piped());
        let mut sut = super::spawn(cmd).unwrap();
        let mut lines = sut.stdout_lines();
        assert_eq!(lines.wait_for("ready"), "ready: 1");
        assert_eq!(lines.collect::<Vec<_>>(), ["b"]);
        let ended = std::panic::catch_unwind(move || {
            let mut cmd = std::process::Command::new("true");
            cmd.stdout(std::process::Stdio::piped());
            super::spawn(cmd).unwrap().stdout_lines().wait_for("ready")
        });
        assert!(ended.is_err(), "no such line: a panic");
    }

    #[test]
    fn drop_kills_child() {
        let sut = super::spawn(std::process::Command::new("sleep").arg("60")).unwrap();
        let pid = sut.pid();
        drop(sut);
        // After drop the child was killed and reaped: signalling it fails.
        let err = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid.cast_signed()).unwrap(),
            rustix::process::Signal::CONT,
        );
        assert!(err.is_err());
    }
}
