//! The exec-unit flow of `docs/systemd.md`, run as written under a real
//! systemd user manager (`shm_testkit::systemd`): its command blocks build the
//! release binaries, install `docs/systemd.service.template` with `envsubst`
//! (`shm-restore FILE -- primes-snapshot` with `FileDescriptorStoreMax=` and
//! `Restart=on-abnormal`), make FILE with `truncate -s` and start the unit.
//!
//! `kill -s SIGKILL` (the doc's block): systemd restarts the service warm from
//! the fd store and no committed prime is lost. `stop` then `start` (the doc's
//! block): a cold restore from FILE with exactly the last durable count. Then
//! SIGKILL of `shm-restore` alone, again warm. Finally the file's content is
//! checked: exactly the first N primes. The output is read from the journal,
//! as the doc's `journalctl --user -u` shows it.
//!
//! This test fails (it never skips) when no user manager can be started.
#![cfg(feature = "shm-restore")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use shm_snapshot::{FileStorage, restore};
use shm_testkit::Watchdog;
use shm_testkit::systemd::{DocFlow, UserManager, numbers_after};

/// Primes per commit of `primes-snapshot`.
const CHUNK: u64 = 1000;
const CONTROL: u64 = 4096;

struct Service<'a> {
    sd: &'a UserManager,
    unit: String,
}

impl Service<'_> {
    /// The unit's messages so far, from the journal.
    fn log(&self) -> String {
        self.sd.journal(&self.unit)
    }

    /// Waits until `probe(log)` holds.
    fn wait(&self, what: &str, probe: impl Fn(&str) -> bool) {
        self.sd
            .wait_journal(&self.unit, Duration::from_secs(60), what, probe);
    }

    fn starts(&self) -> Vec<u64> {
        numbers_after(&self.log(), "Recovering ")
    }

    /// The count of the newest commit the program reported.
    fn last_committed(&self) -> u64 {
        self.log()
            .lines()
            .filter(|l| l.contains("committed generation "))
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
        self.sd.stop_quietly(&self.unit);
    }
}

/// The file's newest generation holds exactly the first `durable` primes.
fn check_file(file: &Path, durable: u64, log: &str) {
    let len = std::fs::metadata(file).unwrap().len();
    let mut image = vec![0u8; usize::try_from(len).unwrap()];
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
    let count = usize::try_from(word(0)).unwrap();
    assert_eq!(count as u64, durable, "{log}");
    let primes = shm_testkit::first_primes(count);
    for i in 1..=count {
        assert_eq!(word(i), primes[i - 1], "entry {i} of the file's table");
    }
}

#[test]
fn exec_flow_of_the_docs() {
    let sd = UserManager::start()
        .expect("this test needs a systemd user manager (root, /lib/systemd/systemd)");
    let docs = DocFlow::new(&sd, "docs/systemd.md");
    // The block's `truncate -s` makes an all-zero file only where there is none.
    let file: PathBuf = docs.target_dir().join("fprimes-snapshot");
    let _ = std::fs::remove_file(&file);
    let unit = "shmfd-primes-snapshot.service".to_owned();
    let svc = Service {
        sd: &sd,
        unit: unit.clone(),
    };

    // The block builds the release binaries (minutes on a cold cache) first.
    docs.run("Exec unit: install and start");
    let _w = Watchdog::new(Duration::from_secs(240));
    sd.installed_unit(&unit);
    // Start: fresh from the all-zero file; let a few generations become durable.
    svc.wait("the first durable generations", |l| {
        numbers_after(l, "durable generation ")
            .last()
            .is_some_and(|&g| g >= 3)
    });
    assert_eq!(svc.starts(), vec![0], "{}", svc.log());

    // The doc's SIGKILL: systemd kills the unit and restarts it (Restart=on-abnormal)
    // with the memfd from the store, which holds every commit.
    let committed = svc.last_committed();
    docs.run("Exec unit: a crash, a warm restart");
    let n1 = svc.expect_restart(1, committed, "systemctl kill -s SIGKILL");
    assert!(
        svc.log().contains("warm start from the inherited memfd"),
        "{}",
        svc.log()
    );

    // The doc's stop and start: stop empties the store (systemd < 254, and by
    // default after); the host takes a last snapshot at its exit. start: cold
    // restore from FILE, of exactly the last generation reported durable.
    svc.wait("a durable generation after the restart", |_| {
        svc.last_durable() > n1
    });
    docs.run("Exec unit: stop and start, a cold restore");
    let n2 = svc.expect_restart(2, n1, "stop and start");
    let log = svc.log();
    let before_start = &log[..log.match_indices("Recovering ").nth(2).unwrap().0];
    let durable = numbers_after(before_start, "durable generation ")
        .last()
        .map_or(0, |g| g * CHUNK);
    assert_eq!(
        n2, durable,
        "the cold start must restore exactly the last durable generation\n{log}"
    );
    assert!(log.contains("cold start: restored generation"), "{log}");

    // SIGKILL of shm-restore alone: systemd kills the rest of the unit and
    // restarts it; the memfd in the store still holds every commit.
    svc.wait("a commit after the cold start", |_| {
        svc.last_committed() > n2
    });
    let committed = svc.last_committed();
    sd.kill_main(&unit, "SIGKILL");
    svc.expect_restart(3, committed, "SIGKILL of shm-restore");
    assert_eq!(
        svc.log()
            .matches("warm start from the inherited memfd")
            .count(),
        2,
        "{}",
        svc.log()
    );
    let summaries = |l: &str| l.matches("at exit: file at generation").count();
    let before = summaries(&svc.log());
    sd.stop(&unit);
    // The last lines reach the journal asynchronously: wait for the summary
    // that shm-restore logs after its last snapshot.
    svc.wait("the summary shm-restore logs at exit", |l| {
        summaries(l) > before
    });
    let log = svc.log();
    assert!(!log.contains("corrupt"), "{log}");

    // The file holds exactly the first N primes, N the last durable count.
    check_file(&file, svc.last_durable(), &log);
    drop(svc);
    drop(sd);
    std::fs::remove_file(&file).unwrap();
}
