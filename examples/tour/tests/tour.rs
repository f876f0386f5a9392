//! The tour, run the way a script or CI would run it: not on a terminal.

use std::process::Command;
use std::time::Duration;

use shm_testkit::Watchdog;

const TOUR: &str = env!("CARGO_BIN_EXE_tour");

/// The rows of the summary table: (part, result).
fn summary_rows(out: &str) -> Vec<(String, String)> {
    let table = out.split("== summary ==").nth(1).unwrap_or_default();
    table
        .lines()
        .skip(2) // the blank line after the title, and the header
        .take_while(|l| l.starts_with("   ") && !l.trim_start().starts_with('('))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let result = words
                .iter()
                .find(|w| **w == "ok" || **w == "FAIL")?
                .to_string();
            Some((words.first()?.to_string(), result))
        })
        .collect()
}

#[test]
fn tour_runs_every_part_and_reports_them_in_its_summary() {
    let _w = Watchdog::new(Duration::from_secs(300));
    // `--quick` in debug builds: the same steps with smaller transfers.
    let mut cmd = Command::new(TOUR);
    cmd.args(["--plain", "--no-systemd", "--target-dir"])
        .arg(shm_testkit::nested_target_dir().0);
    if cfg!(debug_assertions) {
        cmd.arg("--quick");
    }
    let out = cmd.output().expect("running the tour");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tour failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("tour: 4 passed, 0 failed"),
        "no final line:\n{stdout}"
    );
    let rows = summary_rows(&stdout);
    let parts: Vec<&str> = rows.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        parts,
        ["supervise", "snapshot", "ring", "board"],
        "{stdout}"
    );
    assert!(rows.iter().all(|(_, r)| r == "ok"), "{stdout}");
    // What each part claims is backed by what the programs printed.
    for needle in [
        "killed by signal 9; restarting",
        "cold start: restored generation",
        "Recovering ",
        "checksums right",
        "0 torn or corrupt",
        "ready (continuing from",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?}:\n{stdout}");
    }
    assert!(
        !stdout.contains('\x1b'),
        "plain output must have no escape codes"
    );
}

#[test]
fn tour_without_its_programs_says_how_to_build_them() {
    let dir = std::env::temp_dir().join(format!("outlive-tour-alone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lonely = dir.join("tour");
    std::fs::copy(TOUR, &lonely).unwrap();
    let out = Command::new(&lonely)
        .args(["--plain", "--no-build"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is missing; build the programs first: cargo build --release"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_helper_role_is_an_error() {
    // An unknown helper role is an error, with a non-zero exit status.
    let out = Command::new(TOUR)
        .args(["--role", "no-such-role"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role no-such-role"));
}

/// With a user manager answering `systemctl --user`, the tour adds its
/// systemd part: a oneshot unit whose fd store keeps the memfd across restarts.
#[test]
fn tour_runs_its_systemd_part_when_a_user_manager_answers() {
    let _w = Watchdog::new(Duration::from_secs(300));
    let Some(sd) = shm_testkit::systemd::UserManager::start() else {
        return;
    };
    let out = sd
        .command(TOUR)
        .args(["--plain", "--only", "systemd", "--target-dir"])
        .arg(shm_testkit::nested_target_dir().0)
        .output()
        .expect("running the tour");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tour failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("a real user manager answers here"),
        "{stdout}"
    );
    assert!(stdout.contains("tour: 1 passed, 0 failed"), "{stdout}");
    assert_eq!(
        summary_rows(&stdout),
        [("systemd".to_owned(), "ok".to_owned())],
        "{stdout}"
    );
}
