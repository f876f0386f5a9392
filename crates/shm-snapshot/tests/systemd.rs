//! The service flow of `docs/systemd.service.template` under a real systemd
//! user manager (`shm_testkit::systemd`): `shm-restore FILE -- primes-snapshot`
//! with `FileDescriptorStoreMax=` and `Restart=on-abnormal`, starting from an
//! all-zero FILE (`truncate -s`).
//!
//! SIGKILL of the program, then of the host: systemd restarts the service warm
//! from the fd store and no committed prime is lost. `stop` then `start`: a
//! cold restore from FILE with exactly the last durable count. Finally the
//! file's content is checked: exactly the first N primes.
//!
//! This test fails (it never skips) when no user manager can be started.
#![cfg(feature = "shm-restore")]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shm_snapshot::{FileStorage, restore};
use shm_testkit::systemd::UserManager;
use shm_testkit::{Watchdog, unique_name};

/// Primes per commit of `primes-snapshot`.
const CHUNK: u64 = 1000;
/// The state region: room for about 500 000 primes, far more than the test makes.
const REGION: u64 = 4 << 20;
const CONTROL: u64 = 4096;

/// Builds `primes-snapshot` (another package) for this test.
fn primes_snapshot() -> PathBuf {
    shm_testkit::build_bins(&["-p", "primes-snapshot"]).join("primes-snapshot")
}

/// Every number following `key` on the lines of `text`, in order.
fn numbers_after(text: &str, key: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split_once(key).map(|(_, r)| r))
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..=n.isqrt()).all(|d| !n.is_multiple_of(d))
}

/// The unit from the template, with this build's binaries and a log file.
fn unit_text(restore_bin: &Path, primes: &Path, file: &Path, log: &Path) -> String {
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/systemd.service.template"),
    )
    .unwrap();
    assert!(template.contains("FileDescriptorStoreMax="), "{template}");
    assert!(template.contains("Restart=on-abnormal"), "{template}");
    let mut unit = String::new();
    for line in template.lines() {
        if line.starts_with("ExecStart=") {
            // A short interval and a modest rate keep the test quick.
            writeln!(
                unit,
                "ExecStart={} --interval 0.05 {} -- {} 5000",
                restore_bin.display(),
                file.display(),
                primes.display()
            )
            .unwrap();
            writeln!(unit, "StandardOutput=append:{}", log.display()).unwrap();
            writeln!(unit, "StandardError=append:{}", log.display()).unwrap();
        } else {
            unit.push_str(line);
            unit.push('\n');
        }
    }
    unit
}

struct Service<'a> {
    sd: &'a UserManager,
    unit: String,
    log: PathBuf,
}

impl Service<'_> {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `probe(log)` holds.
    fn wait(&self, what: &str, probe: impl Fn(&str) -> bool) {
        self.sd
            .wait_until(Duration::from_secs(60), what, || probe(&self.log()));
    }

    fn starts(&self) -> Vec<u64> {
        numbers_after(&self.log(), "Recovering ")
    }

    /// The count of the newest commit the program reported.
    fn last_committed(&self) -> u64 {
        self.log()
            .lines()
            .filter(|l| l.starts_with("committed generation "))
            .filter_map(|l| numbers_after(l, ": ").pop())
            .next_back()
            .unwrap_or(0)
    }

    /// The primes count of the newest generation `shm-restore` reported durable.
    fn last_durable(&self) -> u64 {
        numbers_after(&self.log(), "durable generation ")
            .last()
            .map_or(0, |g| g * CHUNK)
    }

    fn main_pid(&self) -> u32 {
        self.sd.property(&self.unit, "MainPID").parse().unwrap()
    }

    /// Waits for a new start after `before` starts, and checks it lost nothing.
    fn expect_restart(&self, before: usize, at_least: u64, how: &str) -> u64 {
        self.wait(&format!("a restart after {how}"), |l| {
            numbers_after(l, "Recovering ").len() > before
        });
        let recovered = self.starts()[before];
        assert!(
            recovered >= at_least,
            "{how}: recovered {recovered} primes < {at_least} committed before\n{}",
            self.log()
        );
        recovered
    }
}

impl Drop for Service<'_> {
    fn drop(&mut self) {
        let _ = self
            .sd
            .command("systemctl")
            .args(["--user", "stop", &self.unit])
            .output();
    }
}

/// The file's newest generation holds exactly the first `durable` primes.
fn check_file(file: &Path, durable: u64, log: &str) {
    let mut image = vec![0u8; usize::try_from(CONTROL + REGION).unwrap()];
    let r = restore(
        &FileStorage(std::fs::File::open(file).unwrap()),
        |off, b| {
            let o = usize::try_from(off).unwrap();
            image[o..o + b.len()].copy_from_slice(b);
        },
    )
    .unwrap();
    assert!(r.info.generation > 0, "{:?}", r.info);
    let word = |i: usize| {
        let o = usize::try_from(CONTROL).unwrap() + 8 * i;
        u64::from_le_bytes(image[o..o + 8].try_into().unwrap())
    };
    let count = word(0);
    assert_eq!(count, durable, "{log}");
    let mut p = 1;
    for i in 1..=usize::try_from(count).unwrap() {
        p += 1;
        while !is_prime(p) {
            p += 1;
        }
        assert_eq!(word(i), p, "entry {i} of the file's table");
    }
}

#[test]
fn service_restarts_warm_from_the_fd_store_and_cold_from_the_file() {
    let _w = Watchdog::new(Duration::from_secs(240));
    let restore_bin = PathBuf::from(env!("CARGO_BIN_EXE_shm-restore"));
    let primes = primes_snapshot();
    let sd = UserManager::start()
        .expect("this test needs a systemd user manager (root, /lib/systemd/systemd)");
    let name = unique_name("primes-snap");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fprimes-snapshot");
    // The seed's `truncate -s SIZE FILE`: all zeros, a fresh state of that size.
    std::fs::File::create(&file)
        .unwrap()
        .set_len(CONTROL + REGION)
        .unwrap();
    let unit = format!("{name}.service");
    let svc = Service {
        sd: &sd,
        unit: unit.clone(),
        log: dir.join("log"),
    };
    std::fs::write(
        sd.unit_dir().join(&unit),
        unit_text(&restore_bin, &primes, &file, &svc.log),
    )
    .unwrap();
    sd.systemctl(&["daemon-reload"]);
    sd.systemctl(&["start", &unit]);

    // Start: fresh from the all-zero file; let a few generations become durable.
    svc.wait("the first durable generations", |l| {
        numbers_after(l, "durable generation ")
            .last()
            .is_some_and(|&g| g >= 3)
    });
    assert_eq!(svc.starts(), vec![0], "{}", svc.log());

    // SIGKILL of the program alone: the host snapshots, dies by the same
    // signal, and systemd restarts the service with the memfd from the store.
    let committed = svc.last_committed();
    let host = svc.main_pid();
    let children = std::fs::read_to_string(format!("/proc/{host}/task/{host}/children")).unwrap();
    let program: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let program = rustix::process::Pid::from_raw(program).unwrap();
    rustix::process::kill_process(program, rustix::process::Signal::KILL).unwrap();
    let n1 = svc.expect_restart(1, committed, "SIGKILL of the program");
    assert!(
        svc.log().contains("warm start from the inherited memfd"),
        "{}",
        svc.log()
    );

    // SIGKILL of the host alone: systemd kills the rest of the unit and
    // restarts it; the memfd in the store still holds every commit.
    svc.wait("a commit after the first restart", |_| {
        svc.last_committed() > n1
    });
    let committed = svc.last_committed();
    sd.systemctl(&["kill", "--kill-whom=main", "-s", "SIGKILL", &unit]);
    svc.expect_restart(2, committed, "SIGKILL of the host");
    assert_eq!(
        svc.log()
            .matches("warm start from the inherited memfd")
            .count(),
        2,
        "{}",
        svc.log()
    );

    // stop empties the store (systemd < 254, and by default after); the host
    // takes a last snapshot at its exit. start: cold restore from FILE.
    svc.wait("a durable generation after the second restart", |_| {
        svc.last_durable() > committed
    });
    sd.systemctl(&["stop", &unit]);
    let durable = svc.last_durable();
    sd.systemctl(&["start", &unit]);
    let n3 = svc.expect_restart(3, durable, "stop and start");
    assert_eq!(
        n3,
        durable,
        "the cold start must restore exactly the last durable generation\n{}",
        svc.log()
    );
    assert!(
        svc.log().contains("cold start: restored generation"),
        "{}",
        svc.log()
    );
    sd.systemctl(&["stop", &unit]);
    let log = svc.log();
    assert!(!log.contains("corrupt"), "{log}");

    // The file holds exactly the first N primes, N the last durable count.
    check_file(&file, svc.last_durable(), &log);
    drop(svc);
    drop(sd);
    std::fs::remove_dir_all(&dir).unwrap();
}
