//! `primes-snapshot` follows the command-line conventions: `--help` and
//! `--version` answer without a memfd, a rate that is not a number is a usage
//! error (exit 2), and without a region it says how to run it.

const PRIMES_SNAPSHOT: &str = env!("CARGO_BIN_EXE_primes-snapshot");

fn run(args: &[&str]) -> (Option<i32>, String) {
    shm_testkit::run_without_fds(PRIMES_SNAPSHOT, args)
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
