//! `shm-bench`: turns the rows the benches wrote into result files and the
//! README's table.
//!
//! ```text
//! shm-bench collect ROWS.jsonl DIR COMMIT DATE   # DIR/results.json and DIR/results.md
//! shm-bench readme RESULTS.json README.md        # rewrite the table between the markers
//! shm-bench readme --check RESULTS.json README.md  # exit 1 if the table differs
//! ```

use std::process::ExitCode;

use serde_json::{Value, json};
use shm_bench::{Row, markdown_table};

const BEGIN: &str = "<!-- bench-table:begin -->";
const END: &str = "<!-- bench-table:end -->";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let res = match refs[..] {
        ["collect", rows, dir, commit, date] => collect(rows, dir, commit, date),
        ["readme", results, file] => readme(results, file, false),
        ["readme", "--check", results, file] => readme(results, file, true),
        ["--version"] => {
            println!("shm-bench {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: shm-bench collect ROWS.jsonl DIR COMMIT DATE | shm-bench readme [--check] RESULTS.json README.md"
            );
            return ExitCode::from(2);
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

fn write(path: &str, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {path}: {e}"))
}

/// The machine the rows were measured on.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    json!({ "cpu": cpu, "kernel": kernel.trim(), "nproc": nproc })
}

fn collect(rows_path: &str, dir: &str, commit: &str, date: &str) -> Result<(), String> {
    let mut rows = Vec::new();
    for (i, line) in read(rows_path)?.lines().enumerate() {
        let row =
            Row::from_json(line).ok_or_else(|| format!("{rows_path}:{}: not a row", i + 1))?;
        rows.push(row);
    }
    let quick = rows.iter().any(|r| r.quick);
    let results = json!({
        "machine": machine(), "date": date, "commit": commit, "quick": quick,
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    });
    let pretty = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    write(&format!("{dir}/results.json"), &(pretty + "\n"))?;
    write(&format!("{dir}/results.md"), &results_md(&results)?)
}

/// The table with a line naming the machine, the date and the commit.
fn results_md(results: &Value) -> Result<String, String> {
    let rows = results["rows"]
        .as_array()
        .ok_or("results have no rows")?
        .iter()
        .map(|v| Row::from_value(v).ok_or("a row is malformed"))
        .collect::<Result<Vec<_>, _>>()?;
    let m = &results["machine"];
    let quick = if results["quick"].as_bool() == Some(true) {
        " Quick run (`--quick`): short measures, 3 repetitions; a check that the pipeline works, not figures to quote."
    } else {
        ""
    };
    Ok(format!(
        "{} ({} CPUs), Linux {}, {}, commit {}. Ratios are component / baseline per repetition (median [min-max]); each row says whether higher or lower is better.{quick}\n\n{}",
        m["cpu"].as_str().unwrap_or("unknown CPU"),
        m["nproc"],
        m["kernel"].as_str().unwrap_or("?"),
        results["date"].as_str().unwrap_or("?"),
        results["commit"].as_str().unwrap_or("?"),
        markdown_table(&rows)
    ))
}

/// `readme` with the text between the markers replaced by `table`.
fn splice(readme: &str, table: &str) -> Result<String, String> {
    let b = readme
        .find(BEGIN)
        .ok_or("README has no bench-table:begin marker")?;
    let e = readme
        .find(END)
        .ok_or("README has no bench-table:end marker")?;
    if e < b {
        return Err("README's bench-table markers are out of order".into());
    }
    Ok(format!("{}{BEGIN}\n{table}{}", &readme[..b], &readme[e..]))
}

fn readme(results_path: &str, readme_path: &str, check: bool) -> Result<(), String> {
    let results: Value =
        serde_json::from_str(&read(results_path)?).map_err(|e| format!("{results_path}: {e}"))?;
    let old = read(readme_path)?;
    let new = splice(&old, &results_md(&results)?)?;
    if !check {
        return write(readme_path, &new);
    }
    if new != old {
        return Err(format!(
            "{readme_path}'s bench table differs from {results_path}: run ci/bench.sh --readme"
        ));
    }
    println!("{readme_path}: bench table matches {results_path}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_between_markers() {
        let readme = format!("a\n{BEGIN}\nold\n{END}\nb\n");
        assert_eq!(
            splice(&readme, "new\n").unwrap(),
            format!("a\n{BEGIN}\nnew\n{END}\nb\n")
        );
        assert!(splice("no markers", "x").is_err());
        assert!(splice(&format!("{END}{BEGIN}"), "x").is_err());
    }
}
