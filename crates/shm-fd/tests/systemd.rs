//! The fd store of a real systemd user manager (`shm_testkit::systemd`).
//!
//! `oneshot_flow_of_the_docs` runs the command blocks of `docs/systemd.md`
//! as written (they install `docs/systemd.oneshot.template` with `envsubst`)
//! and checks the table that `primes` prints grows by 1000 verified primes a
//! run. `fd_store_of_a_real_user_manager` uses one manager for its scenarios,
//! each with its own transient unit. Both fail (do not skip) under `CI=true`
//! when no manager can be started.

use std::sync::atomic::Ordering; // atomics-ok: a word of the shared region
use std::time::Duration;

use shm_fd::listen::ListenFds;
use shm_segment::Segment;
use shm_testkit::systemd::{DocFlow, UserManager, numbers_after};
use shm_testkit::{Watchdog, role, unique_name};

const SHM_FD: &str = env!("CARGO_BIN_EXE_shm-fd");
const TEST: &str = "fd_store_of_a_real_user_manager";

/// The service's program: bump the counter in the `state` region, print it.
fn program(mode: &str) {
    // Under `shm-fd -- sh -c '...'` the region was handed to our ancestor.
    let mut fds = ListenFds::from_env_inherited().expect("valid LISTEN_*");
    let fd = fds.take("state").expect("a region named state");
    let seg = Segment::adopt(fd).size(64).open_or_create().unwrap();
    // Relaxed: the count is the only data, and one run at a time bumps it
    // (the runs are ordered by the service manager's exit and restart).
    let n = seg
        .payload()
        .atomic_u64(0)
        .unwrap()
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    println!("COUNT {n}");
    if mode == "hang" {
        std::thread::sleep(Duration::from_secs(300));
    }
}

fn counts(log: &std::path::Path) -> Vec<u64> {
    numbers_after(&std::fs::read_to_string(log).unwrap_or_default(), "COUNT ")
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
        self.sd.stop_quietly(&self.unit);
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

    // 2. Without FileDescriptorStoreMax= every start is fresh, and shm-fd says why.
    {
        let mut s = Scenario::new(&mut sd, "nostore");
        s.start(&["Type=oneshot", "RemainAfterExit=yes"], &[], "exit0");
        s.wait_counts(1);
        s.sd.restart(&s.unit);
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
            s.sd.kill(&s.unit, "SIGKILL");
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

/// `(total, largest)` of each `generated N more primes, total T, largest P` line.
fn tables(journal: &str) -> Vec<(u64, u64)> {
    journal
        .lines()
        .filter_map(|l| {
            let rest = l.split_once("more primes, total ")?.1;
            let (total, largest) = rest.split_once(", largest ")?;
            Some((total.trim().parse().ok()?, largest.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn oneshot_flow_of_the_docs() {
    let Some(sd) = UserManager::start() else {
        return;
    };
    let docs = DocFlow::new(&sd, "docs/systemd.md");
    let unit = "shmfd-primes.service";
    // The block builds the release binaries (minutes on a cold cache) first.
    docs.run("Oneshot: install and run once");
    let _w = Watchdog::new(Duration::from_secs(400));
    sd.installed_unit(unit);
    for run in 1..=4 {
        if run > 1 {
            docs.run("Oneshot: run it again");
        }
        // Generously: a loaded 2-core machine once took more than 10 s.
        sd.wait_journal(unit, Duration::from_secs(60), &format!("run {run}"), |j| {
            tables(j).len() >= run
        });
    }
    let journal = sd.journal(unit);
    let t = tables(&journal);
    let totals: Vec<u64> = t.iter().map(|&(total, _)| total).collect();
    assert_eq!(
        totals,
        vec![1000, 2000, 3000, 4000],
        "each run continues the table:\n{journal}"
    );
    let primes = shm_testkit::first_primes(4000);
    for &(total, largest) in &t {
        assert_eq!(
            largest,
            primes[total as usize - 1],
            "the table of {total} primes ends with a wrong prime:\n{journal}"
        );
    }
    assert_eq!(journal.matches("created region").count(), 1, "{journal}");
    assert_eq!(journal.matches("reusing region").count(), 3, "{journal}");
    sd.stop(unit);
}
