//! `primes-snapshot` follows the command-line conventions: `--help` and
//! `--version` answer without a memfd, a rate that is not a number is a usage
//! error (exit 2), and without a region it says how to run it.

use std::process::Command;

const PRIMES_SNAPSHOT: &str = env!("CARGO_BIN_EXE_primes-snapshot");

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(PRIMES_SNAPSHOT)
        .args(args)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn help_version_and_usage_errors() {
    let (code, text) = run(&["--help"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("Usage: primes-snapshot"), "{text}");
    assert!(text.contains("shm-restore"), "{text}");
    let (code, text) = run(&["--version"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("primes-snapshot "), "{text}");
    let (code, text) = run(&["fast"]);
    assert_eq!(code, Some(2), "{text}");
    let (code, text) = run(&["20000"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("run me under shm-restore"), "{text}");
}
