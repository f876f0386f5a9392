//! The fd store of a real systemd user manager (`shm_testkit::systemd`).
//!
//! One manager for the whole file; each scenario uses its own unit. Fails (does
//! not skip) under `CI=true` when no manager can be started.

use std::sync::atomic::Ordering; // atomics-ok: a word of the shared region
use std::time::Duration;

use shm_fd::listen::ListenFds;
use shm_segment::Segment;
use shm_testkit::systemd::UserManager;
use shm_testkit::{Watchdog, role, unique_name};

const SHM_FD: &str = env!("CARGO_BIN_EXE_shm-fd");
const TEST: &str = "fd_store_of_a_real_user_manager";

/// The service's program: bump the counter in the `state` region, print it.
fn program(mode: &str) {
    // Under `shm-fd -- sh -c '...'` the region was handed to our ancestor.
    let mut fds = ListenFds::from_env_inherited().expect("valid LISTEN_*");
    let fd = fds.take("state").expect("a region named state");
    let seg = Segment::adopt(fd).size(64).open_or_create().unwrap();
    let n = seg
        .payload()
        .atomic_u64(0)
        .unwrap()
        .fetch_add(1, Ordering::SeqCst)
        + 1;
    println!("COUNT {n}");
    if mode == "hang" {
        std::thread::sleep(Duration::from_secs(300));
    }
}

fn counts(log: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split("COUNT ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

struct Scenario<'a> {
    sd: &'a mut UserManager,
    unit: String,
    log: std::path::PathBuf,
}

impl<'a> Scenario<'a> {
    fn new(sd: &'a mut UserManager, name: &str) -> Scenario<'a> {
        let unit = format!("{}.service", unique_name(name));
        let log = std::env::temp_dir().join(format!("{unit}.log"));
        Scenario { sd, unit, log }
    }

    /// Starts the unit running `shm-fd [shm_fd_opts] -- <this test binary as MODE>`.
    fn start(&mut self, props: &[&str], shm_fd_opts: &[&str], mode: &str) {
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap();
        let out = format!("StandardOutput=append:{}", self.log.display());
        let err = format!("StandardError=append:{}", self.log.display());
        let env = format!("Environment={}={mode}", shm_testkit::ROLE_ENV);
        let mut all_props = vec![out.as_str(), err.as_str(), env.as_str()];
        all_props.extend_from_slice(props);
        let mut argv = vec![SHM_FD];
        argv.extend_from_slice(shm_fd_opts);
        argv.extend_from_slice(&[
            "--",
            exe,
            TEST,
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ]);
        self.sd.run(&self.unit.clone(), &all_props, &argv);
    }

    fn wait_counts(&self, n: usize) -> Vec<u64> {
        self.sd.wait_until(
            Duration::from_secs(30),
            &format!("{n} runs of {}", self.unit),
            || counts(&self.log).len() >= n,
        );
        counts(&self.log)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Scenario<'_> {
    fn drop(&mut self) {
        let _ = self
            .sd
            .command("systemctl")
            .args(["--user", "stop", &self.unit])
            .output();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[test]
fn fd_store_of_a_real_user_manager() {
    if let Some(mode) = role() {
        return program(&mode);
    }
    let _w = Watchdog::new(Duration::from_secs(240));
    let Some(mut sd) = UserManager::start() else {
        return;
    };

    // 1. A oneshot unit with a store accumulates state across restarts.
    {
        let mut s = Scenario::new(&mut sd, "oneshot");
        s.start(
            &[
                "Type=oneshot",
                "RemainAfterExit=yes",
                "FileDescriptorStoreMax=4",
            ],
            &[],
            "exit0",
        );
        s.wait_counts(1);
        s.sd.systemctl(&["restart", &s.unit]);
        s.wait_counts(2);
        s.sd.systemctl(&["restart", &s.unit]);
        assert_eq!(s.wait_counts(3), vec![1, 2, 3], "{}", s.log_text());
        assert!(s.log_text().contains("reusing region"), "{}", s.log_text());
    }

    // 2. Without FileDescriptorStoreMax= every start is fresh, and shm-fd says why.
    {
        let mut s = Scenario::new(&mut sd, "nostore");
        s.start(&["Type=oneshot", "RemainAfterExit=yes"], &[], "exit0");
        s.wait_counts(1);
        s.sd.systemctl(&["restart", &s.unit]);
        assert_eq!(s.wait_counts(2), vec![1, 1], "{}", s.log_text());
        assert!(
            s.log_text().contains("FileDescriptorStoreMax="),
            "shm-fd must explain: {}",
            s.log_text()
        );
    }

    // 3. A service SIGKILLed with Restart=on-abnormal comes back with its memfd.
    {
        let mut s = Scenario::new(&mut sd, "sigkill");
        s.start(
            &[
                "Type=simple",
                "FileDescriptorStoreMax=4",
                "Restart=on-abnormal",
                "RestartSec=100ms",
            ],
            &[],
            "hang",
        );
        s.wait_counts(1);
        for n in 2..=3 {
            s.sd.systemctl(&["kill", "-s", "SIGKILL", &s.unit]);
            s.wait_counts(n);
        }
        assert_eq!(counts(&s.log), vec![1, 2, 3], "{}", s.log_text());
    }

    // 4. Type=notify starts with --ready (systemd-run returns once the unit is up).
    {
        let mut s = Scenario::new(&mut sd, "notify");
        s.start(
            &[
                "Type=notify",
                "FileDescriptorStoreMax=4",
                "TimeoutStartSec=20",
            ],
            &["--ready"],
            "hang",
        );
        assert_eq!(
            s.sd.property(&s.unit, "ActiveState"),
            "active",
            "{}",
            s.log_text()
        );
        s.wait_counts(1);
    }
}
