//! Runs the real `server` and `client` binaries: a clean run, and SIGKILL of
//! either side (neither may wedge the other).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use shm_testkit::{Child, Watchdog, spawn, unique_name};

fn socket() -> String {
    std::env::temp_dir()
        .join(format!("{}.sock", unique_name("ring-sum")))
        .display()
        .to_string()
}

/// Starts a binary with stdout lines forwarded to a channel.
fn start(bin: &str, args: &[&str]) -> (Child, Receiver<String>) {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = spawn(cmd).unwrap();
    let out = child.inner_mut().stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_for(lines: &Receiver<String>, prefix: &str) -> String {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no {prefix:?} line: {e}"));
        if line.starts_with(prefix) {
            return line;
        }
    }
}

fn final_sum(line: &str) -> (f64, u64) {
    // "Final sum: S (N values)"
    let rest = line.strip_prefix("Final sum: ").unwrap();
    let (s, n) = rest.split_once(" (").unwrap();
    (
        s.parse().unwrap(),
        n.split_whitespace().next().unwrap().parse().unwrap(),
    )
}

fn wait_for_socket(path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::path::Path::new(path).exists() {
        assert!(Instant::now() < deadline, "server never created {path}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn client_batches_are_summed_and_server_exits() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let sock = socket();
    let (mut server, out) = start(env!("CARGO_BIN_EXE_server"), &["--socket", &sock]);
    wait_for_socket(&sock);
    let (mut client, _client_out) = start(
        env!("CARGO_BIN_EXE_client"),
        &["--socket", &sock, "--batches", "5", "--interval-ms", "0"],
    );
    client.wait_success(Duration::from_secs(30));
    let (sum, n) = final_sum(&wait_for(&out, "Final sum: "));
    assert_eq!(n, 100_000 * (1 + 2 + 3 + 4 + 5));
    assert!((sum - 5.0).abs() < 1e-6, "sum {sum}");
    server.wait_success(Duration::from_secs(10));
    assert!(!std::path::Path::new(&sock).exists(), "socket file removed");
}

#[test]
fn killing_the_client_ends_the_server_with_its_final_sum() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let sock = socket();
    let (mut server, out) = start(env!("CARGO_BIN_EXE_server"), &["--socket", &sock]);
    wait_for_socket(&sock);
    let (mut client, client_out) = start(
        env!("CARGO_BIN_EXE_client"),
        &["--socket", &sock, "--interval-ms", "5"],
    );
    wait_for(&client_out, "Sending 300000");
    client.sigkill_and_wait().unwrap();
    let (sum, n) = final_sum(&wait_for(&out, "Final sum: "));
    assert!(sum >= 3.0 - 1e-6 && n >= 600_000, "sum {sum} of {n}");
    server.wait_success(Duration::from_secs(10));
}

#[test]
fn killing_the_server_does_not_wedge_the_client_and_a_new_server_takes_over() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let sock = socket();
    let (mut server, _server_out) = start(env!("CARGO_BIN_EXE_server"), &["--socket", &sock]);
    wait_for_socket(&sock);
    // Without --reconnect the client exits with an error.
    let (mut plain, plain_out) = start(
        env!("CARGO_BIN_EXE_client"),
        &["--socket", &sock, "--interval-ms", "5"],
    );
    // Connected and sending: losing the server now is losing it mid-run.
    wait_for(&plain_out, "Sending ");
    server.sigkill_and_wait().unwrap();
    let status = plain.wait_status(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "client reports the lost server");
    drop(plain_out);

    // With --reconnect it waits for the next server and carries on.
    let (mut server, out) = start(env!("CARGO_BIN_EXE_server"), &["--socket", &sock]);
    wait_for_socket(&sock);
    let (mut client, client_out) = start(
        env!("CARGO_BIN_EXE_client"),
        &["--socket", &sock, "--interval-ms", "5", "--reconnect"],
    );
    wait_for(&client_out, "Sending 200000");
    server.sigkill_and_wait().unwrap();
    let (mut server, out2) = start(env!("CARGO_BIN_EXE_server"), &["--socket", &sock]);
    wait_for(&out2, "Sum: ");
    client.sigkill_and_wait().unwrap();
    let (sum, _) = final_sum(&wait_for(&out2, "Final sum: "));
    assert!(sum > 0.0);
    server.wait_success(Duration::from_secs(10));
    drop(out);
}
