//! The `shm-bench` binary: rows to results files, results to the README table.

use std::path::Path;
use std::process::Command;

use shm_bench::{Better, Config, Harness};

fn shm_bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shm-bench"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn collect_then_readme_then_check_round_trips() {
    let dir = std::env::temp_dir().join(format!("shm-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rows = dir.join("rows.jsonl");
    let config = Config {
        quick: true,
        reps: 3,
        max_foreign: 1e9,
        retries: 0,
        json: Some(rows.clone()),
        words: vec![],
    };
    let mut h = Harness::with_config("cli", config);
    let r = h.reps(
        "ns",
        Better::Lower,
        &mut [("a", &mut || 1.0), ("b", &mut || 4.0)],
    );
    h.row(&r, "case one", "a", "b");

    let out = shm_bench(&[
        "collect",
        s(&rows),
        s(&dir),
        "abc1234",
        "2026-01-01T00:00:00Z",
    ]);
    assert!(out.status.success(), "{out:?}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["commit"], "abc1234");
    assert_eq!(results["quick"], true);
    assert!(results["machine"]["nproc"].as_u64().unwrap() >= 1);
    assert_eq!(results["rows"].as_array().unwrap().len(), 1);
    let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
    assert!(
        md.contains(
            "| `cli` case one: a 1.00 ns (lower is better) | 0.25x [0.25-0.25] | b 4.00 ns |"
        ),
        "{md}"
    );

    let readme = dir.join("README.md");
    std::fs::write(
        &readme,
        "# x\n<!-- bench-table:begin -->\nold\n<!-- bench-table:end -->\nafter\n",
    )
    .unwrap();
    let results = dir.join("results.json");
    let check = shm_bench(&["readme", "--check", s(&results), s(&readme)]);
    assert!(!check.status.success(), "a stale table passed --check");
    assert!(
        shm_bench(&["readme", s(&results), s(&readme)])
            .status
            .success()
    );
    let text = std::fs::read_to_string(&readme).unwrap();
    assert!(
        text.contains(&md) && text.ends_with("<!-- bench-table:end -->\nafter\n"),
        "{text}"
    );
    assert!(
        shm_bench(&["readme", "--check", s(&results), s(&readme)])
            .status
            .success()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_usage_exits_2_and_bad_rows_fail() {
    assert_eq!(shm_bench(&["nonsense"]).status.code(), Some(2));
    let dir = std::env::temp_dir().join(format!("shm-bench-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rows = dir.join("rows.jsonl");
    std::fs::write(&rows, "{\"bench\": 1}\n").unwrap();
    let out = shm_bench(&["collect", s(&rows), s(&dir), "c", "d"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a row"));
    std::fs::remove_dir_all(&dir).unwrap();
}
