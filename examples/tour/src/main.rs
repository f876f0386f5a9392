//! A guided tour of outlive, in under a minute, with no systemd needed.
//!
//! `cargo run --release --bin tour` builds the programs it runs, then shows:
//! 1. state in a memfd surviving SIGKILL under `shm-fd --supervise`;
//! 2. `primes-snapshot` under `shm-restore`, both killed, restored cold from disk;
//! 3. `shm-ring` moving data between two processes, next to a pipe;
//! 4. the N-process board with kills and restarts, and no torn message;
//! 5. (when `systemctl --user` answers) the fd store of a real systemd.
//!
//! It ends with a summary table; with `--plain` (or when stdout is not a
//! terminal) it prints plain lines, no colour, no live progress. The exit
//! status is non-zero if any part failed.

mod parts;
mod proc;
mod ui;

use std::time::Instant;

use clap::Parser;

/// Command-line options.
#[derive(Debug, Parser)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent command-line switches"
)]
#[command(version, about = "A guided tour of outlive")]
struct Args {
    /// Plain output: no colour, no live progress.
    #[arg(long)]
    plain: bool,
    /// Do not build the programs first (they must exist next to the tour).
    #[arg(long)]
    no_build: bool,
    /// Skip the systemd part even if a user manager answers.
    #[arg(long)]
    no_systemd: bool,
    /// Build and run the programs in this cargo target directory (default: the tour's own).
    #[arg(long, value_name = "DIR")]
    target_dir: Option<std::path::PathBuf>,
    /// Smaller transfers and shorter runs (the test suite uses it in debug builds).
    #[arg(long)]
    quick: bool,
    /// Run only the parts whose names contain this (supervise, snapshot, ring, board, systemd).
    #[arg(long)]
    only: Option<String>,
    /// Internal: a helper role of the tour itself (used by the ring part).
    #[arg(long, hide = true)]
    role: Option<String>,
    /// Arguments of the helper role.
    #[arg(hide = true)]
    rest: Vec<String>,
    #[command(flatten)]
    log: shm_fd::cli::Verbosity,
}

/// One line of the summary.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) part: &'static str,
    pub(crate) shown: String,
    pub(crate) figure: String,
    pub(crate) ok: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init("tour");
    if let Some(role) = &args.role {
        return parts::run_role(role, &args.rest);
    }
    let ui = ui::Ui::detect(args.plain);
    let start = Instant::now();
    println!(
        "{}",
        ui.bold("outlive: in-memory state that outlives the process")
    );
    let bins = ui.progress("building the programs the tour runs", || {
        proc::Bins::locate(!args.no_build, args.target_dir.as_deref())
    })?;
    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    let mut outcomes = Vec::new();
    let cx = parts::Ctx {
        ui,
        bins: &bins,
        quick: args.quick,
    };
    for (name, part) in parts::ALL {
        if !wanted(name) || (*name == "systemd" && args.no_systemd) {
            continue;
        }
        let outcome = match part(cx) {
            Ok(Some(o)) => o,
            Ok(None) => continue,
            Err(e) => Outcome {
                part: name,
                shown: format!("error: {e:#}"),
                figure: String::new(),
                ok: false,
            },
        };
        if outcome.ok {
            ui.ok(&outcome.shown);
        } else {
            ui.fail(&outcome.shown);
        }
        outcomes.push(outcome);
    }
    summary(ui, &outcomes, start);
    if outcomes.iter().all(|o| o.ok) {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

fn summary(ui: ui::Ui, outcomes: &[Outcome], start: Instant) {
    ui.title("summary");
    let w = outcomes
        .iter()
        .map(|o| o.shown.len())
        .max()
        .unwrap_or(0)
        .min(70);
    println!(
        "   {:<10} {:<w$}  {:<6} figure",
        "part", "what was shown", "result"
    );
    for o in outcomes {
        let result = if o.ok { "ok" } else { "FAIL" };
        println!(
            "   {:<10} {:<w$}  {:<6} {}",
            o.part, o.shown, result, o.figure
        );
    }
    let passed = outcomes.iter().filter(|o| o.ok).count();
    println!("   ({:.1}s in all)", start.elapsed().as_secs_f64());
    println!("tour: {passed} passed, {} failed", outcomes.len() - passed);
}
