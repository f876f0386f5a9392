//! SIGKILL loops over `shm-restore` running `primes-snapshot`: after every
//! kill (of the host, or of host and program together) the recovered table
//! is exactly the first N primes (the program verifies it at start) and N is
//! at least the count of the last generation `shm-restore` reported durable.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{CHUNK, host_command, last_number_after, shm_restore};

fn inspect_generation(bin: &Path, file: &Path) -> u64 {
    let out = Command::new(bin).arg("inspect").arg(file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    last_number_after(
        &String::from_utf8_lossy(&out.stdout),
        "committed generation of the program: ",
    )
    .unwrap()
}

#[test]
fn random_sigkill_never_loses_durable_primes() {
    let bin = shm_restore();
    let dir = std::env::temp_dir().join(format!("primes-snapshot-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("primes.snap");
    let mut durable = 0u64;
    let mut seed = u64::from(std::process::id());
    let mut started = 0;
    for round in 0..8 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = Duration::from_millis(300 + (seed >> 33) % 600);
        let out = std::fs::File::create(dir.join("out")).unwrap();
        let err = std::fs::File::create(dir.join("err")).unwrap();
        let mut child = host_command(&bin, &["--create", "--interval", "0.05"], &file, &["20000"])
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let pid = rustix::process::Pid::from_child(&child);
        if round % 2 == 0 {
            rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        } else {
            rustix::process::kill_process_group(pid, rustix::process::Signal::KILL).unwrap();
        }
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let out = std::fs::read_to_string(dir.join("out")).unwrap();
        let err = std::fs::read_to_string(dir.join("err")).unwrap();
        // A kill before the program finished checking its table leaves no start line.
        if let Some(recovered) = last_number_after(&out, "Recovering ") {
            started += 1;
            assert!(
                recovered >= durable,
                "round {round}: recovered {recovered} < durable {durable}\n{err}"
            );
        }
        assert!(!err.contains("corrupt"), "{err}");
        if let Some(g) = last_number_after(&err, "durable generation ") {
            durable = durable.max(g * CHUNK);
        }
        // A kill before the host created FILE leaves none (creation is
        // atomic): nothing can have been durable yet.
        if !file.exists() {
            assert_eq!(durable, 0, "round {round}: FILE is gone\n{err}");
            continue;
        }
        let g = inspect_generation(&bin, &file);
        assert!(
            g * CHUNK >= durable,
            "round {round}: file at {g}, durable {durable}"
        );
    }
    assert!(
        started >= 4,
        "only {started} rounds got past the table check"
    );
    assert!(durable > 0, "no snapshot became durable in any round");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--durable` under a host whose interval is far away (10 s): every
/// generation the program prints as durable was made durable by a snapshot
/// its wait asked for, and survives a SIGKILL of host and program together.
#[test]
fn durable_lines_survive_a_sigkill() {
    let bin = shm_restore();
    let dir = std::env::temp_dir().join(format!("primes-snapshot-durable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("primes.snap");
    let out_path = dir.join("out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = host_command(
        &bin,
        &["--create", "--interval", "10"],
        &file,
        &["--durable", "20000"],
    )
    .stdout(Stdio::from(out))
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let start = std::time::Instant::now();
    let durable_lines = || {
        std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with(" durable"))
            .count()
    };
    while durable_lines() < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no durable lines within 60 s (with a 10 s interval, waits must drive snapshots)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Both die at once: the process group.
    let pgid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL).unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&out_path).unwrap();
    let last = text
        .lines()
        .filter(|l| l.ends_with(" durable"))
        .filter_map(|l| last_number_after(l, "committed generation "))
        .next_back()
        .unwrap();
    assert!(last >= 5, "{text}");
    let on_disk = inspect_generation(&bin, &file);
    assert!(on_disk >= last, "FILE holds {on_disk} < durable {last}");
    std::fs::remove_dir_all(&dir).unwrap();
}
