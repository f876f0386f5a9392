//! `primes` follows the command-line conventions: `--help` and `--version`
//! answer without a memfd (`primes --help` used to fail with "no memfd named
//! state"), an unknown option is a usage error, and without a region it says
//! how to run it.

use std::process::Command;

const PRIMES: &str = env!("CARGO_BIN_EXE_primes");

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(PRIMES)
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
    assert!(text.contains("Usage: primes"), "{text}");
    assert!(text.contains("shm-fd"), "{text}");
    let (code, text) = run(&["--version"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("primes "), "{text}");
    let (code, text) = run(&["--bogus"]);
    assert_eq!(code, Some(2), "{text}");
    let (code, text) = run(&[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no memfd named \"state\""), "{text}");
}
