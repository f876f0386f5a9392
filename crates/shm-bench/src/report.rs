//! Result rows: the human line, the JSON line, and the markdown table.

use serde_json::{Value, json};

use crate::harness::Better;
use crate::stats::Summary;

/// One reported comparison: a component's figure next to a baseline's, as
/// the median and range of per-repetition ratios.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The bench program (`shm-ring`, `peers`, ...).
    pub bench: String,
    /// What is measured.
    pub case: String,
    /// The unit of the figures.
    pub unit: String,
    /// Whether bigger figures are better.
    pub better: Better,
    /// The measured component's name.
    pub component: String,
    /// The component's figures.
    pub component_summary: Summary,
    /// The baseline's name.
    pub baseline: String,
    /// The baseline's median figure.
    pub baseline_median: f64,
    /// component / baseline, per repetition.
    pub ratio: Summary,
    /// Repetitions kept.
    pub reps: usize,
    /// Repetitions the load gate discarded.
    pub discarded: usize,
    /// Whether a repetition was kept although loaded.
    pub loaded: bool,
    /// Whether the row comes from a quick run.
    pub quick: bool,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    // NaN is written as null.
    match v.get(key)? {
        Value::Null => Some(f64::NAN),
        x => x.as_f64(),
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    Some(v.get(key)?.as_str()?.to_owned())
}

fn count(v: &Value, key: &str) -> Option<usize> {
    usize::try_from(v.get(key)?.as_u64()?).ok()
}

impl Row {
    /// The row as one line of JSON.
    pub fn to_json(&self) -> Value {
        let better = match self.better {
            Better::Higher => "higher",
            Better::Lower => "lower",
        };
        json!({
            "bench": self.bench, "case": self.case, "unit": self.unit, "better": better,
            "component": self.component,
            "component_median": self.component_summary.median,
            "component_min": self.component_summary.min,
            "component_max": self.component_summary.max,
            "baseline": self.baseline, "baseline_median": self.baseline_median,
            "ratio_median": self.ratio.median, "ratio_min": self.ratio.min, "ratio_max": self.ratio.max,
            "reps": self.reps, "discarded": self.discarded, "loaded": self.loaded, "quick": self.quick,
        })
    }

    /// Parses a row written by [`Row::to_json`]; `None` when a field is missing.
    pub fn from_value(v: &Value) -> Option<Row> {
        Some(Row {
            bench: text(v, "bench")?,
            case: text(v, "case")?,
            unit: text(v, "unit")?,
            better: if text(v, "better")? == "lower" {
                Better::Lower
            } else {
                Better::Higher
            },
            component: text(v, "component")?,
            component_summary: Summary {
                median: num(v, "component_median")?,
                min: num(v, "component_min")?,
                max: num(v, "component_max")?,
            },
            baseline: text(v, "baseline")?,
            baseline_median: num(v, "baseline_median")?,
            ratio: Summary {
                median: num(v, "ratio_median")?,
                min: num(v, "ratio_min")?,
                max: num(v, "ratio_max")?,
            },
            reps: count(v, "reps")?,
            discarded: count(v, "discarded")?,
            loaded: v.get("loaded")?.as_bool()?,
            quick: v.get("quick").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// Parses one JSON line.
    pub fn from_json(line: &str) -> Option<Row> {
        Row::from_value(&serde_json::from_str(line).ok()?)
    }

    /// The row for a terminal.
    pub fn human(&self) -> String {
        let c = &self.component_summary;
        let dir = match self.better {
            Better::Higher => "higher is better",
            Better::Lower => "lower is better",
        };
        format!(
            "{:<44} {} {} {} [{}-{}] vs {} {} | ratio {:.2}x [{:.2}-{:.2}] ({dir}) | {} reps, {} discarded{}",
            self.case,
            self.component,
            fmt(c.median),
            self.unit,
            fmt(c.min),
            fmt(c.max),
            self.baseline,
            fmt(self.baseline_median),
            self.ratio.median,
            self.ratio.min,
            self.ratio.max,
            self.reps,
            self.discarded,
            if self.loaded { ", loaded" } else { "" }
        )
    }

    /// The row's line in the markdown table: row, median ratio [min-max], baseline.
    pub fn markdown(&self) -> String {
        let dir = match self.better {
            Better::Higher => "higher",
            Better::Lower => "lower",
        };
        format!(
            "| `{}` {}: {} {} {} ({dir} is better){} | {:.2}x [{:.2}-{:.2}] | {} {} {} |",
            self.bench,
            self.case,
            self.component,
            fmt(self.component_summary.median),
            self.unit,
            if self.loaded { ", loaded" } else { "" },
            self.ratio.median,
            self.ratio.min,
            self.ratio.max,
            self.baseline,
            fmt(self.baseline_median),
            self.unit,
        )
    }
}

/// A figure with three significant digits or so.
fn fmt(x: f64) -> String {
    if x.abs() >= 100.0 || x == 0.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The markdown table of `rows`.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut out =
        String::from("| row | median ratio [min-max] | baseline |\n| --- | --- | --- |\n");
    for r in rows {
        out.push_str(&r.markdown());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sut() -> Row {
        Row {
            bench: "b".into(),
            case: "c".into(),
            unit: "ns".into(),
            better: Better::Lower,
            component: "x".into(),
            component_summary: Summary {
                median: 12.5,
                min: 10.0,
                max: 15.0,
            },
            baseline: "y".into(),
            baseline_median: 25.0,
            ratio: Summary {
                median: 0.5,
                min: 0.4,
                max: 0.6,
            },
            reps: 7,
            discarded: 1,
            loaded: true,
            quick: false,
        }
    }

    #[test]
    fn json_round_trips() {
        let row = sut();
        assert_eq!(Row::from_json(&row.to_json().to_string()), Some(row));
    }

    #[test]
    fn from_json_rejects_missing_fields() {
        assert_eq!(Row::from_json(r#"{"bench":"b"}"#), None);
        assert_eq!(Row::from_json("not json"), None);
    }

    #[test]
    fn markdown_shows_ratio_range_and_baseline() {
        let line = sut().markdown();
        assert_eq!(
            line,
            "| `b` c: x 12.5 ns (lower is better), loaded | 0.50x [0.40-0.60] | y 25.0 ns |"
        );
    }
}
