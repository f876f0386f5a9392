//! Receiving inherited file descriptors: `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`.
//!
//! The semantics are those of `sd_listen_fds_with_names(3)`: the fds start at
//! 3 (`SD_LISTEN_FDS_START`); `LISTEN_FDS` counts them; `LISTEN_FDNAMES`, if
//! set, holds exactly one colon-separated name per fd (else every fd is named
//! `unknown`); `LISTEN_PID` must name the receiving process. Unlike
//! `sd_listen_fds`, which silently returns 0 for a `LISTEN_PID` of another
//! process, a mismatch is a typed error here (it usually means a supervisor
//! handed the variables to the wrong process), and every malformed value is
//! an error that names the variable and its value.
//!
//! # Safety
//!
//! Adoption turns inherited fd numbers into `OwnedFd`s (`sys::adopt`). It
//! happens at most once per process (a global flag), only for numbers the
//! parent announced and that are open, so no other owner of those numbers
//! exists in the process.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::os::fd::{OwnedFd, RawFd};

/// The first inherited fd (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// Most fds we accept (systemd's own fd store limit is 4096 per unit by default
/// at most; anything above this is a malformed value, not a real hand-over).
pub const MAX_LISTEN_FDS: usize = 4096;

/// A malformed or inconsistent `LISTEN_*` variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// A variable is not a valid number.
    #[error("{var}={value:?} is not a valid {what}")]
    Malformed {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        what: &'static str,
    },
    /// `LISTEN_PID` names another process.
    #[error("LISTEN_PID={listen_pid} but we are {our_pid}: the fds were meant for another process")]
    PidMismatch {
        /// The value of `LISTEN_PID`.
        listen_pid: u32,
        /// Our pid.
        our_pid: u32,
    },
    /// `LISTEN_FDS` is set without `LISTEN_PID`, or the reverse.
    #[error("{present} is set but {missing} is not")]
    Incomplete {
        /// The variable that is set.
        present: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
    /// `LISTEN_FDS` is larger than any real hand-over.
    #[error("LISTEN_FDS={count} exceeds the limit of {max}")]
    TooMany {
        /// The count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// `LISTEN_FDNAMES` does not hold one name per fd.
    #[error("LISTEN_FDNAMES={names:?} holds {found} names for LISTEN_FDS={count} fds")]
    NameCount {
        /// The value of `LISTEN_FDNAMES`.
        names: String,
        /// Names found.
        found: usize,
        /// Fds announced.
        count: usize,
    },
    /// A name is empty, too long or has characters systemd does not allow.
    #[error("LISTEN_FDNAMES: {0}")]
    BadName(FdNameError),
    /// An announced fd is not open.
    #[error("LISTEN_FDS={count} announces fd {fd}, which is not open")]
    NotOpen {
        /// The fd.
        fd: RawFd,
        /// The count announced.
        count: usize,
    },
    /// The inherited fds were already adopted by an earlier call in this process.
    #[error("the inherited fds were already adopted in this process")]
    AlreadyAdopted,
}

/// The raw values of the three variables, for parsing without touching the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenVars {
    /// `LISTEN_PID`.
    pub pid: Option<String>,
    /// `LISTEN_FDS`.
    pub fds: Option<String>,
    /// `LISTEN_FDNAMES`.
    pub names: Option<String>,
}

impl ListenVars {
    /// Reads the three variables from the environment.
    pub fn from_env() -> ListenVars {
        let get = |k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
        ListenVars {
            pid: get("LISTEN_PID"),
            fds: get("LISTEN_FDS"),
            names: get("LISTEN_FDNAMES"),
        }
    }

    /// Parses the variables into `(fd, name)` pairs, checking `LISTEN_PID`
    /// against `accept_pid` (no fd is touched; see [`ListenFds`] for adoption).
    pub fn parse(
        &self,
        accept_pid: impl Fn(u32) -> bool,
        our_pid: u32,
    ) -> Result<Vec<(RawFd, String)>, ListenError> {
        let (pid, fds) = match (&self.pid, &self.fds) {
            (None, None) => return Ok(Vec::new()),
            (Some(_), None) => {
                return Err(ListenError::Incomplete {
                    present: "LISTEN_PID",
                    missing: "LISTEN_FDS",
                });
            }
            (None, Some(_)) => {
                return Err(ListenError::Incomplete {
                    present: "LISTEN_FDS",
                    missing: "LISTEN_PID",
                });
            }
            (Some(p), Some(f)) => (p, f),
        };
        let listen_pid = parse_number(pid, "LISTEN_PID", "process id")?;
        let listen_pid = u32::try_from(listen_pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ListenError::Malformed {
                var: "LISTEN_PID",
                value: pid.clone(),
                what: "process id",
            })?;
        if !accept_pid(listen_pid) {
            return Err(ListenError::PidMismatch {
                listen_pid,
                our_pid,
            });
        }
        let count = parse_number(fds, "LISTEN_FDS", "fd count")?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count > MAX_LISTEN_FDS {
            return Err(ListenError::TooMany {
                count,
                max: MAX_LISTEN_FDS,
            });
        }
        let names = parse_names(self.names.as_deref(), count)?;
        Ok(names
            .into_iter()
            .enumerate()
            .map(|(i, name)| (LISTEN_FDS_START + i as RawFd, name))
            .collect())
    }
}

/// `LISTEN_FDNAMES` for `count` fds: one name per fd, `:`-separated, each
/// a valid fd name ([`validate_fd_name`]). Unset (or empty with no fds)
/// names every fd "unknown", as systemd does. The one parser of the
/// variable: [`ListenVars::parse`] and the exec trampoline use it.
pub(crate) fn parse_names(names: Option<&str>, count: usize) -> Result<Vec<String>, ListenError> {
    match names {
        None => Ok(vec!["unknown".to_owned(); count]),
        Some("") if count == 0 => Ok(Vec::new()),
        Some(n) => {
            let names: Vec<String> = n.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(ListenError::NameCount {
                    names: n.to_owned(),
                    found: names.len(),
                    count,
                });
            }
            for name in &names {
                validate_fd_name(name).map_err(ListenError::BadName)?;
            }
            Ok(names)
        }
    }
}

fn parse_number(value: &str, var: &'static str, what: &'static str) -> Result<u64, ListenError> {
    // Digits only: no sign, no spaces, no "0x" (systemd's safe_atoi is as strict).
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ListenError::Malformed {
            var,
            value: value.to_owned(),
            what,
        });
    }
    value.parse().map_err(|_| ListenError::Malformed {
        var,
        value: value.to_owned(),
        what,
    })
}

/// Longest fd name systemd accepts, in bytes.
pub const MAX_FD_NAME_LEN: usize = 255;

/// An fd name that systemd would refuse, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid fd name {name:?}: {problem} (an fd name is 1-255 printable ASCII characters without ':')"
)]
#[non_exhaustive]
pub struct FdNameError {
    /// The name.
    pub name: String,
    /// What is wrong with it.
    pub problem: FdNameProblem,
}

/// What is wrong with an fd name (see [`validate_fd_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FdNameProblem {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_FD_NAME_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a `:`, which separates names in `LISTEN_FDNAMES`.
    Colon {
        /// Byte offset of the first colon.
        at: usize,
    },
    /// The name holds a control character, or a character outside ASCII.
    NotPrintable {
        /// Byte offset of the first such byte.
        at: usize,
    },
}

impl std::fmt::Display for FdNameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FdNameProblem::Empty => f.write_str("it is empty"),
            FdNameProblem::TooLong { len } => {
                write!(
                    f,
                    "it is {len} bytes long, at most {MAX_FD_NAME_LEN} are allowed"
                )
            }
            FdNameProblem::Colon { at } => write!(f, "it holds ':' at byte {at}"),
            FdNameProblem::NotPrintable { at } => {
                write!(f, "it holds a control or non-ASCII character at byte {at}")
            }
        }
    }
}

/// Checks `name` against systemd's rules for fd names (`FDNAME=`,
/// `LISTEN_FDNAMES`, `fdname_is_valid`): 1 to 255 bytes of printable ASCII
/// (space included), without `:`.
///
/// Every name this crate accepts or sends passes through here: `--name` of
/// `shm-fd`, `LISTEN_FDNAMES`, [`crate::notify::store_fd`],
/// [`crate::notify::remove_fd`] and the supervisor's `FDNAME=`. Programs that
/// take an fd name from their users should check it with this function too,
/// so a bad name is refused up front instead of being dropped by the service
/// manager.
///
/// # Errors
/// [`FdNameError`], naming the name and the first problem found.
///
/// # Examples
/// ```
/// use shm_fd::listen::{FdNameProblem, validate_fd_name};
/// assert!(validate_fd_name("state").is_ok());
/// let err = validate_fd_name("a:b").unwrap_err();
/// assert_eq!(err.problem, FdNameProblem::Colon { at: 1 });
/// assert!(err.to_string().contains("\"a:b\""));
/// ```
pub fn validate_fd_name(name: &str) -> Result<(), FdNameError> {
    let problem = if name.is_empty() {
        FdNameProblem::Empty
    } else if name.len() > MAX_FD_NAME_LEN {
        FdNameProblem::TooLong { len: name.len() }
    } else if let Some(at) = name.bytes().position(|b| !(0x20..0x7f).contains(&b)) {
        FdNameProblem::NotPrintable { at }
    } else if let Some(at) = name.find(':') {
        FdNameProblem::Colon { at }
    } else {
        return Ok(());
    };
    Err(FdNameError {
        name: name.to_owned(),
        problem,
    })
}

/// Inherited fds, adopted once, looked up by name.
#[derive(Debug, Default)]
pub struct ListenFds {
    fds: Vec<(String, Option<OwnedFd>)>,
}

static ADOPTED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);

impl ListenFds {
    /// Adopts the fds the service manager handed to this process.
    ///
    /// Strict `sd_listen_fds` semantics: `LISTEN_PID` must be our pid. The
    /// variables are left in the environment (removing them is unsafe once
    /// threads run); [`crate::exec`] sets or clears them for every child.
    /// Each fd is checked to be open and gets close-on-exec. May be called
    /// once per process; later calls give [`ListenError::AlreadyAdopted`].
    pub fn from_env() -> Result<ListenFds, ListenError> {
        let me = std::process::id();
        ListenFds::adopt(&ListenVars::from_env(), |pid| pid == me)
    }

    /// Like [`from_env`](Self::from_env), but also accepts fds passed to an
    /// ancestor process (our parent, its parent, ...), which inherited them to
    /// us. This is what a program run by a tool like `watch` under `shm-fd`
    /// needs: `LISTEN_PID` names the wrapper's process, not ours.
    pub fn from_env_inherited() -> Result<ListenFds, ListenError> {
        let me = std::process::id();
        let ancestors = ancestors();
        ListenFds::adopt(&ListenVars::from_env(), |pid| {
            pid == me || ancestors.contains(&pid)
        })
    }

    fn adopt(
        vars: &ListenVars,
        accept_pid: impl Fn(u32) -> bool,
    ) -> Result<ListenFds, ListenError> {
        let parsed = vars.parse(accept_pid, std::process::id())?;
        if parsed.is_empty() {
            return Ok(ListenFds::default());
        }
        let mut adopted = ADOPTED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *adopted {
            return Err(ListenError::AlreadyAdopted);
        }
        for (fd, _) in &parsed {
            if !crate::sys::fd_is_open(*fd) {
                return Err(ListenError::NotOpen {
                    fd: *fd,
                    count: parsed.len(),
                });
            }
        }
        *adopted = true;
        let fds = parsed
            .into_iter()
            .map(|(fd, name)| {
                // SAFETY: `fd` is open (checked above), was handed to this process
                // by its parent per LISTEN_FDS, and is adopted exactly once: the
                // ADOPTED flag, held under its lock, makes this the only adoption
                // in the process.
                let owned = unsafe { crate::sys::adopt(fd) };
                let _ = rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC);
                (name, Some(owned))
            })
            .collect();
        Ok(ListenFds { fds })
    }

    /// Number of fds received.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether no fds were received.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The names of the fds not yet taken, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fds
            .iter()
            .filter(|(_, fd)| fd.is_some())
            .map(|(n, _)| n.as_str())
    }

    /// Takes the first fd named `name` not yet taken.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        self.fds
            .iter_mut()
            .find(|(n, fd)| n == name && fd.is_some())
            .and_then(|(_, fd)| fd.take())
    }

    /// Takes every fd not yet taken, with its name.
    pub fn take_all(&mut self) -> Vec<(String, OwnedFd)> {
        self.fds
            .iter_mut()
            .filter_map(|(n, fd)| fd.take().map(|fd| (n.clone(), fd)))
            .collect()
    }
}

/// Our ancestors' pids, from `/proc/<pid>/stat`, nearest first.
fn ancestors() -> HashSet<u32> {
    let mut out = HashSet::new();
    let mut pid = std::process::id();
    for _ in 0..64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            break;
        };
        // Field 4, after the parenthesised command name (which may hold spaces).
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
        else {
            break;
        };
        if ppid <= 1 || !out.insert(ppid) {
            break;
        }
        pid = ppid;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> ListenVars {
        ListenVars {
            pid: pid.map(Into::into),
            fds: fds.map(Into::into),
            names: names.map(Into::into),
        }
    }

    fn parse(v: &ListenVars) -> Result<Vec<(RawFd, String)>, ListenError> {
        v.parse(|p| p == 42, 42)
    }

    #[test]
    fn unset_means_no_fds() {
        assert_eq!(parse(&vars(None, None, None)), Ok(vec![]));
    }

    #[test]
    fn names_map_to_fds_in_order() {
        let got = parse(&vars(Some("42"), Some("2"), Some("state:log"))).unwrap();
        assert_eq!(got, vec![(3, "state".to_owned()), (4, "log".to_owned())]);
        let got = parse(&vars(Some("42"), Some("2"), None)).unwrap();
        assert_eq!(
            got,
            vec![(3, "unknown".to_owned()), (4, "unknown".to_owned())]
        );
    }

    #[test]
    fn malformed_values_name_the_variable() {
        for (v, var) in [
            (vars(Some("42"), Some("-1"), None), "LISTEN_FDS"),
            (vars(Some("42"), Some(" 1"), None), "LISTEN_FDS"),
            (vars(Some("42"), Some("0x1"), None), "LISTEN_FDS"),
            (vars(Some("x"), Some("1"), None), "LISTEN_PID"),
            (vars(Some("0"), Some("1"), None), "LISTEN_PID"),
            (
                vars(Some("99999999999999999999999"), Some("1"), None),
                "LISTEN_PID",
            ),
        ] {
            let err = parse(&v).unwrap_err();
            assert!(err.to_string().contains(var), "{err} should name {var}");
        }
    }

    #[test]
    fn inconsistent_values_are_refused() {
        assert!(matches!(
            parse(&vars(Some("7"), Some("1"), None)),
            Err(ListenError::PidMismatch {
                listen_pid: 7,
                our_pid: 42
            })
        ));
        assert_eq!(
            parse(&vars(Some("7"), Some("1"), None))
                .unwrap_err()
                .to_string(),
            "LISTEN_PID=7 but we are 42: the fds were meant for another process"
        );
        assert!(matches!(
            parse(&vars(Some("42"), Some("2"), Some("a"))),
            Err(ListenError::NameCount { found: 1, .. })
        ));
        assert!(matches!(
            parse(&vars(Some("42"), Some("1"), Some("a:b"))),
            Err(ListenError::NameCount { .. })
        ));
        assert!(matches!(
            parse(&vars(Some("42"), Some("1"), Some(""))),
            Err(ListenError::BadName(FdNameError {
                problem: FdNameProblem::Empty,
                ..
            }))
        ));
        assert!(matches!(
            parse(&vars(Some("42"), Some("5000"), None)),
            Err(ListenError::TooMany { .. })
        ));
        assert!(matches!(
            parse(&vars(None, Some("1"), None)),
            Err(ListenError::Incomplete { .. })
        ));
        assert!(matches!(
            parse(&vars(Some("42"), None, None)),
            Err(ListenError::Incomplete { .. })
        ));
    }

    #[test]
    fn fd_names_follow_systemd_rules() {
        for good in ["state", "a", "with space", "~!@#$%^&*()", &"x".repeat(255)] {
            assert_eq!(validate_fd_name(good), Ok(()), "{good:?}");
        }
        let long = "x".repeat(256);
        for (bad, problem) in [
            ("", FdNameProblem::Empty),
            (long.as_str(), FdNameProblem::TooLong { len: 256 }),
            ("a:b", FdNameProblem::Colon { at: 1 }),
            ("tab\there", FdNameProblem::NotPrintable { at: 3 }),
            ("nl\n", FdNameProblem::NotPrintable { at: 2 }),
            ("del\x7f", FdNameProblem::NotPrintable { at: 3 }),
            ("caf\u{e9}", FdNameProblem::NotPrintable { at: 3 }),
        ] {
            let err = validate_fd_name(bad).unwrap_err();
            assert_eq!(err.problem, problem, "{bad:?}");
            assert_eq!(err.name, bad);
            let shown = err.to_string();
            assert!(shown.contains(&format!("{bad:?}")), "{shown}");
            assert!(shown.contains(&problem.to_string()), "{shown}");
        }
    }

    #[test]
    fn arbitrary_names_match_fdname_is_valid() {
        use proptest::prelude::*;
        // A small alphabet, so colons, control and non-ASCII characters and the
        // length limit all come up often.
        proptest!(|(name in "[a: ~\\t\\x7f\u{e9}]{0,6}|a{254,257}|a{250}:")| {
            // systemd's fdname_is_valid, written out independently.
            let systemd = !name.is_empty()
                && name.len() <= 255
                && name.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b':');
            prop_assert_eq!(validate_fd_name(&name).is_ok(), systemd);
        });
    }

    #[test]
    fn arbitrary_values_never_panic() {
        use proptest::prelude::*;
        proptest!(|(pid in proptest::option::of(".{0,24}"), fds in proptest::option::of(".{0,8}"), names in proptest::option::of(".{0,40}"))| {
            let v = ListenVars { pid, fds, names };
            if let Ok(list) = v.parse(|_| true, 1) {
                prop_assert!(list.len() <= MAX_LISTEN_FDS);
                for (i, (fd, name)) in list.iter().enumerate() {
                    prop_assert_eq!(*fd, 3 + i as RawFd);
                    prop_assert!(validate_fd_name(name).is_ok());
                }
            }
        });
    }
}
