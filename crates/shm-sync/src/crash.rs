//! Named SIGKILL points for crash tests.
//!
//! A library marks the steps between which a crash matters with
//! [`crash_point!`](crate::crash_point)`("area.step")`. A test then starts a
//! real process with [`CRASH_ENV`] (`SHM_CRASH_AT`) naming one point, the
//! process kills itself with `SIGKILL` there, and the test checks what the
//! crash left behind (`status.signal() == Some(9)` tells it the point fired).
//!
//! # Cost
//!
//! The macro expands to `cfg(feature = "fault-injection")` code, and that cfg
//! is evaluated in the crate that *uses* the macro. A crate built without its
//! own `fault-injection` feature has nothing at its call sites: no call, no
//! load, not even the point's name in the binary. With the feature, each
//! point costs one load of a flag that is set once per process (the
//! environment is read once, on the first point reached); only a process
//! started with [`CRASH_ENV`] set goes further and compares names.
//!
//! # Using it in a crate
//!
//! ```toml
//! [features]
//! # Named SIGKILL points for crash tests (see shm_sync::crash_point!).
//! fault-injection = ["shm-sync/fault-injection"]
//!
//! [dependencies]
//! shm-sync = { workspace = true }
//! ```
//!
//! The crate's `fault-injection` feature must enable this crate's feature of
//! the same name, which holds the code that reads the environment and sends
//! the signal. A crate that uses the macro must declare a `fault-injection`
//! feature (else `unexpected_cfgs` warns at every point).
//!
//! # `SHM_CRASH_AT`
//!
//! A comma-separated list of point names, each optionally suffixed with `@N`
//! to fire at the N-th time the point is reached (counted per process; `@1`
//! is the default). `SHM_CRASH_AT=a,b@3` kills the process at the first `a`
//! or at the third `b`, whichever comes first.

/// The environment variable that arms crash points (see the [module docs](self)).
pub const CRASH_ENV: &str = "SHM_CRASH_AT";

/// Marks a named crash point.
///
/// Expands to nothing unless the *calling* crate is built with its own
/// `fault-injection` feature, which must enable `shm-sync/fault-injection`.
/// Then, when [`CRASH_ENV`](crate::crash::CRASH_ENV) (`SHM_CRASH_AT`) names
/// this point, the process kills itself here with `SIGKILL`. See the
/// [`crash`](crate::crash) module for the syntax of the variable.
///
/// # Examples
/// ```
/// // In a library whose `fault-injection` feature enables `shm-sync/fault-injection`:
/// use shm_sync::crash_point;
///
/// fn commit() {
///     // ... the first half of the update ...
///     crash_point!("store.between_halves");
///     // ... the second half ...
/// }
/// # commit();
/// ```
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {{
        #[cfg(feature = "fault-injection")]
        $crate::crash::hit($name);
    }};
}

#[cfg(feature = "fault-injection")]
pub use armed::hit;

#[cfg(feature = "fault-injection")]
mod armed {
    // Process-local counters, never in shared memory and never modelled by loom.
    use core::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    use super::CRASH_ENV;

    /// One entry of [`CRASH_ENV`]: fire at the `nth` time `name` is reached.
    #[derive(Debug)]
    struct Armed {
        name: String,
        nth: u64,
        /// Times `name` was reached so far.
        hits: AtomicU64,
    }

    /// The parsed [`CRASH_ENV`], read once per process; empty when unset.
    #[inline]
    fn armed() -> &'static [Armed] {
        static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();
        ARMED.get_or_init(|| std::env::var(CRASH_ENV).map_or_else(|_| Vec::new(), |v| parse(&v)))
    }

    /// `a,b@3` → `[(a, 1), (b, 3)]`; an unparsable count counts as 1.
    fn parse(spec: &str) -> Vec<Armed> {
        spec.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let (name, nth) = match item.split_once('@') {
                    Some((name, n)) => (name, n.trim().parse().unwrap_or(1)),
                    None => (item, 1),
                };
                Armed {
                    name: name.trim().to_owned(),
                    nth,
                    hits: AtomicU64::new(0),
                }
            })
            .collect()
    }

    /// Called by [`crash_point!`](crate::crash_point) (not meant to be called
    /// directly): kills this process with `SIGKILL` if [`CRASH_ENV`] names
    /// `name` and this is the chosen hit.
    #[doc(hidden)]
    #[inline]
    pub fn hit(name: &str) {
        let armed = armed();
        if !armed.is_empty() {
            hit_armed(armed, name);
        }
    }

    #[cold]
    #[inline(never)]
    fn hit_armed(armed: &[Armed], name: &str) {
        for a in armed.iter().filter(|a| a.name == name) {
            // Relaxed: a per-point counter; the read-modify-write alone makes
            // each hit count once, whatever thread reaches the point.
            if a.hits.fetch_add(1, Ordering::Relaxed) + 1 == a.nth {
                kill_self();
            }
        }
    }

    fn kill_self() -> ! {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught or ignored, so the signal ends us before
        // `kill` returns; if sending it failed, die anyway.
        std::process::abort()
    }

    #[cfg(test)]
    mod tests {
        use super::parse;

        #[test]
        fn parse_reads_names_and_counts() {
            let sut = parse(" a , b@3,,c@x ");
            let got: Vec<(&str, u64)> = sut.iter().map(|a| (a.name.as_str(), a.nth)).collect();
            assert_eq!(got, [("a", 1), ("b", 3), ("c", 1)]);
        }
    }
}
