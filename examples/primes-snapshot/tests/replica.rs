//! The whole machine lost: `primes-snapshot` runs under `shm-restore
//! --replica` against a real S3-compatible store (`SeaweedFS`), everything is
//! SIGKILLed and FILE deleted (the memfd died with the processes); a
//! restore from the store alone, into a fresh directory, holds exactly the
//! first N primes, at a generation no older than the last one the host
//! reported replicated.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shm_testkit::s3::S3Server;

mod common;
use common::{CHUNK, host_command, numbers_after, shm_restore};

/// The newest image of a snapshot file (4096-byte prefix, then the state)
/// and the program generation its commit carries as its tag.
fn image(file: &Path) -> (Vec<u8>, u64) {
    let st = shm_snapshot::FileStorage(std::fs::File::open(file).unwrap());
    let info = shm_snapshot::inspect(&st).unwrap();
    assert_eq!(info.valid_end, info.file_len, "{info:?}");
    let mut image = vec![0u8; usize::try_from(info.region_size).unwrap()];
    let r = shm_snapshot::restore(&st, |off, b| {
        let o = usize::try_from(off).unwrap();
        image[o..o + b.len()].copy_from_slice(b);
    })
    .unwrap();
    (image, r.info.tag)
}

#[test]
fn whole_machine_lost_restores_every_replicated_prime() {
    let Some(s3) = S3Server::start("machine") else {
        return;
    };
    // Built before the watchdog starts: a first build takes minutes.
    let bin = shm_restore();
    let _w = shm_testkit::Watchdog::new(Duration::from_secs(300));
    let url = s3.url("primes");
    let dir = std::env::temp_dir().join(shm_testkit::unique_name("primes-replica"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("primes.snap");
    let err = dir.join("err");
    let mut cmd = host_command(
        &bin,
        &[
            "--create",
            "--size",
            "4MiB",
            "--interval",
            "0.05",
            "--replica",
            &url,
        ],
        &file,
        &["20000"],
    );
    s3.configure(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let log = || std::fs::read_to_string(&err).unwrap_or_default();
    while numbers_after(&log(), "replicated generation ").len() < 10 {
        assert!(Instant::now() < deadline, "nothing replicated:\n{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The machine dies: host and program at once, then its disk.
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process_group(pid, rustix::process::Signal::KILL).unwrap();
    child.wait().unwrap();
    let text = log();
    let replicated = numbers_after(&text, "replicated generation ")
        .into_iter()
        .max()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let fresh = std::env::temp_dir().join(shm_testkit::unique_name("primes-replica-new"));
    std::fs::create_dir_all(&fresh).unwrap();
    let restored = fresh.join("primes.snap");
    let mut cmd = Command::new(&bin);
    s3.configure(&mut cmd);
    let out = cmd
        .args(["restore", "--from", &url])
        .arg(&restored)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!said.contains("skipped"), "{said}");

    let (image, generation) = image(&restored);
    let word = |i: usize| u64::from_le_bytes(image[i..i + 8].try_into().unwrap());
    let state = 4096;
    let count = word(state);
    assert!(
        generation >= replicated,
        "restored generation {generation} < replicated {replicated}\n{said}\n{text}"
    );
    assert_eq!(count, generation * CHUNK);
    let primes = shm_testkit::first_primes(usize::try_from(count).unwrap());
    for (i, p) in primes.iter().enumerate() {
        assert_eq!(word(state + 8 * (i + 1)), *p, "prime {}", i + 1);
    }
    println!("restored {count} primes at generation {generation} (replicated {replicated})");
    std::fs::remove_dir_all(&fresh).unwrap();
}
