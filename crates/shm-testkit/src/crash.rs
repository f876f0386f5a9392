use std::collections::HashMap;
use std::sync::Mutex;

/// The environment variable that arms crash points: a comma-separated list of
/// point names, each optionally suffixed with `@N` to fire at the N-th hit.
pub const CRASH_ENV: &str = "SHM_CRASH_AT";

/// Called by [`crash_point!`](crate::crash_point): SIGKILLs this process if
/// [`CRASH_ENV`] names `name` and this is the chosen hit.
pub fn crash_point_hit(name: &str) {
    static HITS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
    let Ok(spec) = std::env::var(CRASH_ENV) else {
        return;
    };
    for item in spec.split(',').map(str::trim) {
        let (point, nth) = match item.split_once('@') {
            Some((p, n)) => (p, n.parse::<u64>().unwrap_or(1)),
            None => (item, 1),
        };
        if point != name {
            continue;
        }
        let mut hits = HITS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = hits
            .get_or_insert_with(HashMap::new)
            .entry(name.to_owned())
            .or_insert(0);
        *count += 1;
        if *count == nth {
            eprintln!("crash point {name} hit (#{nth}): SIGKILL");
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            // SIGKILL cannot be caught; if kill itself failed, stop anyway.
            std::process::abort();
        }
    }
}
