//! The repetition runner: alternating runs, a load gate per repetition, rows.

use std::io::Write;
use std::time::Instant;

use crate::load::LoadSample;
use crate::report::Row;
use crate::stats::{Summary, ratios};

/// Settings from the command line and the environment.
///
/// - `--quick`: short runs, 3 repetitions unless `OUTLIVE_BENCH_REPS` says otherwise;
/// - other arguments not starting with `-`: run only the groups whose names contain one;
/// - `OUTLIVE_BENCH_REPS`: repetitions (default 7, quick 3);
/// - `OUTLIVE_BENCH_MAX_FOREIGN`: the load gate's limit, in percent of the
///   CPU time available during a repetition (default 5);
/// - `OUTLIVE_BENCH_RETRIES`: how often one repetition is repeated when
///   loaded (default 3, quick 1) before it is kept and its row marked "loaded";
/// - `OUTLIVE_BENCH_JSON`: a file to append each row to, as one JSON line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Short runs for checking that the bench works.
    pub quick: bool,
    /// Repetitions per group.
    pub reps: usize,
    /// The load gate's limit, as a fraction of wall time × CPUs.
    pub max_foreign: f64,
    /// Repeats of one loaded repetition before it is kept anyway.
    pub retries: usize,
    /// Where rows go as JSON lines.
    pub json: Option<std::path::PathBuf>,
    /// Group filters from the command line.
    pub words: Vec<String>,
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.trim().parse().ok()
}

impl Config {
    /// Reads the process's arguments and environment.
    pub fn from_env() -> Config {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        Config {
            quick,
            reps: env_num("OUTLIVE_BENCH_REPS")
                .unwrap_or(if quick { 3 } else { 7 })
                .max(1),
            max_foreign: env_num::<f64>("OUTLIVE_BENCH_MAX_FOREIGN").unwrap_or(5.0) / 100.0,
            retries: env_num("OUTLIVE_BENCH_RETRIES").unwrap_or(if quick { 1 } else { 3 }),
            json: std::env::var_os("OUTLIVE_BENCH_JSON")
                .filter(|p| !p.is_empty())
                .map(Into::into),
            words: args.into_iter().filter(|a| !a.starts_with('-')).collect(),
        }
    }
}

/// Whether a bigger or a smaller figure is better (throughput or time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Rates: ratios above 1 favour the component.
    Higher,
    /// Times: ratios below 1 favour the component.
    Lower,
}

/// The figures of one group of measures, one per repetition each, and how
/// the load gate treated them.
#[derive(Debug, Clone)]
pub struct Reps {
    unit: &'static str,
    better: Better,
    names: Vec<&'static str>,
    values: Vec<Vec<f64>>,
    /// Repetitions thrown away because of foreign load (then repeated).
    pub discarded: usize,
    /// Repetitions kept although loaded (the retry bound was hit).
    pub loaded: usize,
}

impl Reps {
    /// The figures of the measure called `name`, one per repetition.
    ///
    /// # Panics
    ///
    /// When the group has no measure of that name (a bench bug).
    pub fn values(&self, name: &str) -> &[f64] {
        let i = self.names.iter().position(|n| *n == name);
        &self.values[i.unwrap_or_else(|| panic!("no measure {name:?} in {:?}", self.names))]
    }

    /// The median and range of the measure called `name`.
    ///
    /// # Panics
    ///
    /// As [`Reps::values`].
    pub fn summary(&self, name: &str) -> Summary {
        Summary::of(self.values(name)).unwrap_or(Summary {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        })
    }
}

/// One measure of a group: a name and a function returning its figure.
pub type Measure<'a> = (&'static str, &'a mut dyn FnMut() -> f64);

/// Runs groups of measures, repetition by repetition, and reports rows.
#[derive(Debug)]
pub struct Harness {
    bench: &'static str,
    config: Config,
    started: Instant,
    rows: usize,
    discarded: usize,
    loaded: usize,
    gate_missing: bool,
    children: Vec<u32>,
}

impl Harness {
    /// A harness for the bench called `bench`, set up by [`Config::from_env`].
    pub fn new(bench: &'static str) -> Harness {
        Harness::with_config(bench, Config::from_env())
    }

    /// A harness with explicit settings.
    pub fn with_config(bench: &'static str, config: Config) -> Harness {
        println!(
            "{bench}: {} repetitions per group{}; load gate {:.0} % foreign CPU, {} retries",
            config.reps,
            if config.quick { " (quick)" } else { "" },
            config.max_foreign * 100.0,
            config.retries
        );
        Harness {
            bench,
            config,
            started: Instant::now(),
            rows: 0,
            discarded: 0,
            loaded: 0,
            gate_missing: false,
            children: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counts the CPU time of the live child process `pid` as the bench's
    /// own in the load gate (a reaped child counts anyway), until [`Harness::forget_child`].
    pub fn watch_child(&mut self, pid: u32) {
        self.children.push(pid);
    }

    /// Stops counting `pid` (call before reaping it: its time then counts as a reaped child's).
    pub fn forget_child(&mut self, pid: u32) {
        self.children.retain(|&p| p != pid);
    }

    /// Whether this is a quick run.
    pub fn quick(&self) -> bool {
        self.config.quick
    }

    /// `full` normally, `quick` in a quick run.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.config.quick { quick } else { full }
    }

    /// Whether the group called `name` is to run (no filter words, or one
    /// of them is part of `name`).
    pub fn group(&self, name: &str) -> bool {
        self.config.words.is_empty() || self.config.words.iter().any(|w| name.contains(w.as_str()))
    }

    /// Runs every measure once to warm up, then the configured number of
    /// repetitions, each running all measures once, in order on even
    /// repetitions and in reverse order on odd ones. A repetition during
    /// which other processes took more CPU time than the gate allows is
    /// thrown away and run again, at most `retries` times; then it is kept
    /// and counted as loaded.
    pub fn reps(
        &mut self,
        unit: &'static str,
        better: Better,
        measures: &mut [Measure<'_>],
    ) -> Reps {
        let names: Vec<&'static str> = measures.iter().map(|(name, _)| *name).collect();
        self.reps_joint(unit, better, &names, &mut |rep| {
            let n = measures.len();
            let mut got = vec![0.0; n];
            for k in 0..n {
                let i = if rep.is_multiple_of(2) { k } else { n - 1 - k };
                got[i] = (measures[i].1)();
            }
            got
        })
    }

    /// Like [`Harness::reps`], for measures taken together by one function
    /// that already interleaves them (say, a loop timing the component and
    /// its baseline in turn each round): `run(rep)` returns one figure per
    /// name, in the order of `names`. One call warms up.
    ///
    /// # Panics
    ///
    /// When `run` returns a different number of figures than `names` has.
    pub fn reps_joint(
        &mut self,
        unit: &'static str,
        better: Better,
        names: &[&'static str],
        run: &mut dyn FnMut(usize) -> Vec<f64>,
    ) -> Reps {
        run(0);
        let mut out = Reps {
            unit,
            better,
            names: names.to_vec(),
            values: vec![Vec::with_capacity(self.config.reps); names.len()],
            discarded: 0,
            loaded: 0,
        };
        for rep in 0..self.config.reps {
            let got = self.one_rep(rep, run, &mut out);
            assert_eq!(got.len(), names.len(), "one figure per measure");
            for (v, x) in out.values.iter_mut().zip(got) {
                v.push(x);
            }
        }
        self.discarded += out.discarded;
        self.loaded += out.loaded;
        out
    }

    fn one_rep(
        &mut self,
        rep: usize,
        run: &mut dyn FnMut(usize) -> Vec<f64>,
        out: &mut Reps,
    ) -> Vec<f64> {
        let mut tries = 0;
        loop {
            let before = LoadSample::with_children(&self.children);
            let got = run(rep);
            let Some(load) = before.until(&LoadSample::with_children(&self.children)) else {
                self.gate_missing = true;
                return got;
            };
            if !load.exceeds(self.config.max_foreign) {
                return got;
            }
            if tries == self.config.retries {
                out.loaded += 1;
                return got;
            }
            tries += 1;
            out.discarded += 1;
        }
    }

    /// Reports `component` against `baseline` (both measures of `reps`):
    /// prints the row and appends it to the JSON file if one is set.
    ///
    /// # Panics
    ///
    /// When either name is not a measure of `reps` (a bench bug).
    pub fn row(&mut self, reps: &Reps, case: &str, component: &str, baseline: &str) -> Row {
        let ratio = ratios(reps.values(component), reps.values(baseline));
        let row = Row {
            bench: self.bench.to_owned(),
            case: case.to_owned(),
            unit: reps.unit.to_owned(),
            better: reps.better,
            component: component.to_owned(),
            component_summary: reps.summary(component),
            baseline: baseline.to_owned(),
            baseline_median: reps.summary(baseline).median,
            ratio: Summary::of(&ratio).unwrap_or(Summary {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            }),
            reps: self.config.reps,
            discarded: reps.discarded,
            loaded: reps.loaded > 0,
            quick: self.config.quick,
        };
        println!("{}", row.human());
        self.append_json(&row);
        self.rows += 1;
        row
    }

    fn append_json(&self, row: &Row) {
        let Some(path) = &self.config.json else {
            return;
        };
        let line = format!("{}\n", row.to_json());
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = res {
            eprintln!("cannot append to {}: {e}", path.display());
        }
    }

    /// Prints the totals: rows, time, and what the load gate discarded.
    pub fn finish(self) {
        println!(
            "\n{}: {} rows in {:.0} s; load gate: {} repetitions discarded, {} kept while loaded{}",
            self.bench,
            self.rows,
            self.started.elapsed().as_secs_f64(),
            self.discarded,
            self.loaded,
            if self.gate_missing {
                " (/proc/stat unreadable: gate off)"
            } else {
                ""
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(reps: usize) -> Config {
        Config {
            quick: true,
            reps,
            max_foreign: 1e9,
            retries: 0,
            json: None,
            words: vec![],
        }
    }

    #[test]
    fn reps_alternate_the_order_every_repetition() {
        let order = std::cell::RefCell::new(Vec::new());
        let mut sut = Harness::with_config("t", config(4));
        let (mut a, mut b) = (
            || {
                order.borrow_mut().push('a');
                1.0
            },
            || {
                order.borrow_mut().push('b');
                2.0
            },
        );
        let r = sut.reps("x", Better::Higher, &mut [("a", &mut a), ("b", &mut b)]);
        // Warm-up, then ab, ba, ab, ba.
        assert_eq!(order.borrow().iter().collect::<String>(), "ababbaabba");
        assert_eq!(r.values("a"), &[1.0; 4]);
    }

    #[test]
    fn row_takes_the_ratio_per_repetition() {
        let mut sut = Harness::with_config("t", config(3));
        let (mut i, mut j) = (0.0, 0.0);
        let mut ours = || {
            i += 1.0;
            i * 10.0
        };
        let mut base = || {
            j += 1.0;
            j
        };
        let r = sut.reps(
            "x",
            Better::Higher,
            &mut [("ours", &mut ours), ("base", &mut base)],
        );
        // After the warm-up: 20/2, 30/3, 40/4: every ratio is 10, although the medians are 30 and 3.
        let row = sut.row(&r, "case", "ours", "base");
        assert_eq!(
            (row.ratio.min, row.ratio.median, row.ratio.max),
            (10.0, 10.0, 10.0)
        );
        assert_eq!(
            (row.component_summary.median, row.baseline_median),
            (30.0, 3.0)
        );
    }

    #[test]
    fn loaded_repetitions_are_retried_then_kept() {
        let mut c = config(2);
        c.max_foreign = -1e12; // every repetition counts as loaded
        c.retries = 2;
        let mut sut = Harness::with_config("t", c);
        let mut calls = 0;
        let mut f = || {
            calls += 1;
            1.0
        };
        let r = sut.reps("x", Better::Lower, &mut [("f", &mut f)]);
        assert_eq!((r.discarded, r.loaded), (4, 2));
        assert_eq!(calls, 1 + 2 * 3);
    }

    #[test]
    fn rows_append_json_lines() {
        let path =
            std::env::temp_dir().join(format!("shm-bench-test-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut c = config(1);
        c.json = Some(path.clone());
        let mut sut = Harness::with_config("t", c);
        let r = sut.reps(
            "ns",
            Better::Lower,
            &mut [("a", &mut || 2.0), ("b", &mut || 4.0)],
        );
        sut.row(&r, "one", "a", "b");
        sut.row(&r, "two", "b", "a");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let rows: Vec<Row> = text.lines().map(|l| Row::from_json(l).unwrap()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].ratio.median, rows[1].ratio.median), (0.5, 2.0));
        assert_eq!(rows[1].case, "two");
    }
}
