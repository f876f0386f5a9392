//! `primes` follows the command-line conventions: `--help` and `--version`
//! answer without a memfd (`primes --help` used to fail with "no memfd named
//! state"), an unknown option is a usage error, and without a region it says
//! how to run it.

const PRIMES: &str = env!("CARGO_BIN_EXE_primes");

fn run(args: &[&str]) -> (Option<i32>, String) {
    shm_testkit::run_without_fds(PRIMES, args)
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
