//! The load gate: how much CPU time other processes took during a repetition.
//!
//! `/proc/stat` gives the busy time of all CPUs (user, nice, system, irq,
//! softirq and steal jiffies); this process's own CPU time is
//! `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)` plus its reaped children's
//! (`cutime + cstime` in `/proc/self/stat`). Foreign CPU time is the busy time
//! less our own: other programs, or a hypervisor stealing the vCPUs.
//!
//! # References
//!
//! - [proc_stat(5)](https://man7.org/linux/man-pages/man5/proc_stat.5.html)
//! - [proc_pid_stat(5)](https://man7.org/linux/man-pages/man5/proc_pid_stat.5.html)

use std::time::{Duration, Instant};

/// The busy time of all CPUs together, from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBusy {
    /// user + nice + system + irq + softirq + steal, in clock ticks, all CPUs.
    pub busy_ticks: u64,
    /// How many `cpuN` lines the file has.
    pub cpus: usize,
}

/// Parses `/proc/stat`; `None` when the aggregate `cpu` line is missing or malformed.
///
/// # Examples
///
/// ```
/// let stat = "cpu  10 1 5 100 3 2 1 4 0 0\ncpu0 5 0 2 50 1 1 0 2 0 0\ncpu1 5 1 3 50 2 1 1 2 0 0\n";
/// let busy = shm_bench::load::parse_proc_stat(stat).unwrap();
/// assert_eq!((busy.busy_ticks, busy.cpus), (10 + 1 + 5 + 2 + 1 + 4, 2));
/// ```
pub fn parse_proc_stat(text: &str) -> Option<CpuBusy> {
    let mut busy = None;
    let mut cpus = 0;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        match fields.next() {
            Some("cpu") => busy = busy_of(fields),
            Some(name) if name.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    Some(CpuBusy {
        busy_ticks: busy?,
        cpus: cpus.max(1),
    })
}

/// user + nice + system + irq + softirq + steal of one `cpu` line's numbers.
fn busy_of<'a>(fields: impl Iterator<Item = &'a str>) -> Option<u64> {
    let n: Vec<u64> = fields
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if n.len() < 7 {
        return None;
    }
    // user nice system idle iowait irq softirq [steal]: idle and iowait are not busy.
    let steal = n.get(7).copied().unwrap_or(0);
    [n[0], n[1], n[2], n[5], n[6], steal]
        .into_iter()
        .try_fold(0u64, u64::checked_add)
}

/// The numeric fields of a `/proc/PID/stat` line from field 3 (state) on;
/// `None` without the closing parenthesis of the command name.
fn stat_fields(text: &str) -> Option<Vec<&str>> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_ascii_whitespace().collect())
}

/// The sum of `/proc/PID/stat` fields `a` and `b` (numbered as in `proc_pid_stat(5)`).
fn sum_fields(text: &str, a: usize, b: usize) -> Option<u64> {
    let fields = stat_fields(text)?;
    // Field 3 (state) is fields[0].
    let x: u64 = fields.get(a - 3)?.parse().ok()?;
    let y: u64 = fields.get(b - 3)?.parse().ok()?;
    x.checked_add(y)
}

/// Parses `/proc/self/stat`: the CPU time of reaped children (`cutime +
/// cstime`), in clock ticks; `None` when malformed.
///
/// # Examples
///
/// ```
/// let stat = "42 (a) b) S 1 42 42 0 -1 0 0 0 0 0 7 3 11 13 20 0";
/// assert_eq!(shm_bench::load::parse_children_ticks(stat), Some(24));
/// ```
pub fn parse_children_ticks(text: &str) -> Option<u64> {
    sum_fields(text, 16, 17)
}

/// Parses `/proc/PID/stat`: the process's own CPU time (`utime + stime`),
/// in clock ticks; `None` when malformed.
///
/// # Examples
///
/// ```
/// let stat = "42 (a) b) S 1 42 42 0 -1 0 0 0 0 0 7 3 11 13 20 0";
/// assert_eq!(shm_bench::load::parse_process_ticks(stat), Some(10));
/// ```
pub fn parse_process_ticks(text: &str) -> Option<u64> {
    sum_fields(text, 14, 15)
}

/// A reading of the machine's and this process's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct LoadSample {
    at: Instant,
    machine: Option<CpuBusy>,
    own: Duration,
}

/// What happened between two [`LoadSample`]s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Wall time between the samples.
    pub wall: Duration,
    /// CPU time of other processes (and steal), in seconds; may be slightly
    /// negative from tick rounding.
    pub foreign_secs: f64,
    /// CPUs counted in `/proc/stat`.
    pub cpus: usize,
}

impl Load {
    /// Foreign CPU time as a fraction of the CPU time available (wall time × CPUs).
    pub fn fraction(&self) -> f64 {
        self.foreign_secs / (self.wall.as_secs_f64() * self.cpus as f64).max(1e-9)
    }

    /// Whether foreign CPU time exceeds `max_fraction` of the available CPU
    /// time, allowing one clock tick per CPU for the rounding of `/proc/stat`.
    pub fn exceeds(&self, max_fraction: f64) -> bool {
        let slack = self.cpus as f64 / ticks_per_second();
        self.foreign_secs > max_fraction * self.wall.as_secs_f64() * self.cpus as f64 + slack
    }
}

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// This process's CPU time, its reaped children's, and that of the live
/// processes `pids` (children the bench started and has not reaped yet).
fn own_cpu(pids: &[u32]) -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    let own = Duration::new(t.tv_sec as u64, t.tv_nsec as u32);
    let read = |path: &str, parse: fn(&str) -> Option<u64>| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| parse(&s))
            .unwrap_or(0)
    };
    let mut ticks = read("/proc/self/stat", parse_children_ticks);
    for pid in pids {
        ticks += read(&format!("/proc/{pid}/stat"), parse_process_ticks);
    }
    own + Duration::from_secs_f64(ticks as f64 / ticks_per_second())
}

impl LoadSample {
    /// Reads the clocks now; the machine's part is missing when `/proc/stat`
    /// cannot be read or parsed.
    pub fn now() -> LoadSample {
        LoadSample::with_children(&[])
    }

    /// As [`LoadSample::now`], counting the CPU time of the live processes
    /// `pids` as this process's own.
    pub fn with_children(pids: &[u32]) -> LoadSample {
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_proc_stat(&s));
        LoadSample {
            at: Instant::now(),
            machine,
            own: own_cpu(pids),
        }
    }

    /// The load from `self` to `later`; `None` without `/proc/stat`.
    pub fn until(&self, later: &LoadSample) -> Option<Load> {
        let (a, b) = (self.machine?, later.machine?);
        let busy = b.busy_ticks.saturating_sub(a.busy_ticks) as f64 / ticks_per_second();
        let own = later.own.saturating_sub(self.own).as_secs_f64();
        Some(Load {
            wall: later.at.duration_since(self.at),
            foreign_secs: busy - own,
            cpus: b.cpus,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_proc_stat_sums_busy_fields_and_counts_cpus() {
        let sut = "cpu  100 2 30 900 50 4 5 6 7 8\ncpu0 1 1 1 1 1 1 1 1\ncpu1 1 1 1 1 1 1 1 1\nintr 5\nctxt 9\n";
        let busy = parse_proc_stat(sut).unwrap();
        assert_eq!(
            busy,
            CpuBusy {
                busy_ticks: 100 + 2 + 30 + 4 + 5 + 6,
                cpus: 2
            }
        );
    }

    #[test]
    fn parse_proc_stat_without_steal_column() {
        let busy = parse_proc_stat("cpu 1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\n").unwrap();
        assert_eq!(busy.busy_ticks, 1 + 2 + 3 + 6 + 7);
    }

    #[test]
    fn parse_proc_stat_rejects_malformed_input() {
        assert_eq!(parse_proc_stat(""), None);
        assert_eq!(parse_proc_stat("cpu 1 2 x 4 5 6 7 8"), None);
        assert_eq!(parse_proc_stat("cpu 1 2 3"), None);
        assert_eq!(
            parse_proc_stat(&format!("cpu {} {} 0 0 0 0 0 0", u64::MAX, u64::MAX)),
            None
        );
    }

    #[test]
    fn parse_proc_stat_reads_this_machine() {
        let text = std::fs::read_to_string("/proc/stat").unwrap();
        let busy = parse_proc_stat(&text).unwrap();
        assert!(busy.cpus >= 1);
    }

    #[test]
    fn parse_children_ticks_handles_parentheses_in_the_name() {
        let sut = "7 (x) (y z) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16";
        assert_eq!(parse_children_ticks(sut), Some(13 + 14));
        assert_eq!(parse_children_ticks("7 (x) R 1 2"), None);
        assert_eq!(parse_children_ticks("no parenthesis"), None);
        assert_eq!(parse_process_ticks(sut), Some(11 + 12));
    }

    #[test]
    fn own_cpu_time_counts_a_busy_loop_as_ours() {
        let before = LoadSample::now();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Spin until this process has used 50 ms of CPU (other tests share the CPUs).
        while own_cpu(&[]) < before.own + Duration::from_millis(50) {
            assert!(Instant::now() < deadline, "no CPU time counted in 10 s");
            std::hint::spin_loop();
        }
        let sut = before.until(&LoadSample::now()).unwrap();
        // Our own time is not foreign: at most the CPU time we did not use, plus tick rounding.
        let rounding = 2.0 * sut.cpus as f64 / ticks_per_second();
        let unused = sut.wall.as_secs_f64() * sut.cpus as f64 - 0.05;
        assert!(sut.foreign_secs <= unused + rounding, "{sut:?}");
    }

    #[test]
    fn a_watched_child_counts_as_own() {
        /// Kills and reaps the child on every return, a failed assertion included.
        struct Spinner(std::process::Child);
        impl Drop for Spinner {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let sut = Spinner(
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap(),
        );
        let pid = sut.0.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The difference is the child's CPU time (it is not reaped): wait for 100 ms of it.
        let childs_cpu = || own_cpu(&[pid]).saturating_sub(own_cpu(&[]));
        while childs_cpu() < Duration::from_millis(100) {
            assert!(
                Instant::now() < deadline,
                "the child's CPU time is not counted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn exceeds_compares_with_the_available_cpu_time() {
        let sut = Load {
            wall: Duration::from_secs(1),
            foreign_secs: 0.5,
            cpus: 2,
        };
        assert!((sut.fraction() - 0.25).abs() < 1e-12);
        assert!(sut.exceeds(0.05));
        assert!(!sut.exceeds(0.3));
    }

    proptest! {
        #[test]
        fn parse_proc_stat_never_panics(s in "\\PC*") {
            let _ = parse_proc_stat(&s);
        }

        #[test]
        fn parse_proc_stat_never_panics_on_cpu_lines(s in "(cpu[0-9]? ?[0-9 x-]{0,40}\n){0,4}") {
            let _ = parse_proc_stat(&s);
        }

        #[test]
        fn parse_children_ticks_never_panics(s in "[0-9 ()a-z]{0,80}") {
            let _ = parse_children_ticks(&s);
            let _ = parse_process_ticks(&s);
        }
    }
}
