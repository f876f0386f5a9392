//! `sd_notify`: `READY=1`, `STATUS=`, `FDSTORE=1` with fds, `FDSTOREREMOVE=1`.
//!
//! Hand-written instead of using the `sd-notify` crate because that crate
//! (0.5) treats `$NOTIFY_SOCKET` only as a filesystem path (an `@abstract`
//! name becomes a relative path, `vsock:` is not understood), cannot report
//! "not sent" apart from "sent", and needs a second crate for fd passing.
//! The workspace's one `SCM_RIGHTS` routine ([`shm_segment::fdpass`])
//! covers all of it.

use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use shm_segment::fdpass::send_with_fds;

use crate::listen::{FdNameError, validate_fd_name};
use crate::sys::VsockAddr;

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket name (`@name` in the variable).
    Abstract(Vec<u8>),
    /// A vsock address (`vsock:CID:PORT`), as used by VMs.
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
}

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is not a path, `@name` or `vsock:CID:PORT`.
    #[error("NOTIFY_SOCKET={value:?} is not a socket path, @abstract name or vsock:CID:PORT")]
    BadAddress {
        /// The value.
        value: String,
    },
    /// A name for `FDNAME=` that systemd would reject.
    #[error(transparent)]
    BadName(#[from] FdNameError),
    /// Creating, connecting or sending on the socket failed.
    #[error("sending to NOTIFY_SOCKET={addr}: {errno}")]
    Send {
        /// The address, as written in `$NOTIFY_SOCKET`.
        addr: String,
        /// The OS error (part of the message, so not also a `source()`).
        errno: Errno,
    },
}

/// The address as written in `$NOTIFY_SOCKET`: `/path`, `@name` or `vsock:CID:PORT`.
impl std::fmt::Display for NotifyAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifyAddr::Path(p) => write!(f, "{}", p.display()),
            NotifyAddr::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            NotifyAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

impl NotifyAddr {
    /// Parses a `$NOTIFY_SOCKET` value.
    pub fn parse(value: &str) -> Result<NotifyAddr, NotifyError> {
        let bad = || NotifyError::BadAddress {
            value: value.to_owned(),
        };
        if let Some(name) = value.strip_prefix('@') {
            if name.is_empty() || name.len() > 107 {
                return Err(bad());
            }
            return Ok(NotifyAddr::Abstract(name.as_bytes().to_vec()));
        }
        if let Some(rest) = value.strip_prefix("vsock:") {
            let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
            let cid = cid.parse().map_err(|_| bad())?;
            let port = port.parse().map_err(|_| bad())?;
            return Ok(NotifyAddr::Vsock { cid, port });
        }
        if value.starts_with('/') && value.len() <= 107 && !value.contains('\0') {
            return Ok(NotifyAddr::Path(PathBuf::from(value)));
        }
        Err(bad())
    }

    /// The address from `$NOTIFY_SOCKET`, or `None` when it is unset (or empty).
    pub fn from_env() -> Result<Option<NotifyAddr>, NotifyError> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(v) if !v.is_empty() => NotifyAddr::parse(&v).map(Some),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(NotifyError::BadAddress {
                value: v.to_string_lossy().into_owned(),
            }),
        }
    }

    /// Sends `message` (newline-separated `KEY=VALUE` lines) and `fds` (at
    /// most [`shm_segment::fdpass::MAX_FDS`]; more give `EINVAL`).
    pub fn send(&self, message: &str, fds: &[BorrowedFd<'_>]) -> Result<(), NotifyError> {
        let err = |errno| NotifyError::Send {
            addr: self.to_string(),
            errno,
        };
        let sent = match self {
            NotifyAddr::Path(_) | NotifyAddr::Abstract(_) => {
                let addr = match self {
                    NotifyAddr::Abstract(name) => SocketAddrUnix::new_abstract_name(name),
                    NotifyAddr::Path(p) => SocketAddrUnix::new(p.as_path()),
                    NotifyAddr::Vsock { .. } => unreachable!("matched above"),
                }
                .map_err(err)?;
                let sock = rustix::net::socket_with(
                    AddressFamily::UNIX,
                    SocketType::DGRAM,
                    SocketFlags::CLOEXEC,
                    None,
                )
                .map_err(err)?;
                send_with_fds(&sock, message.as_bytes(), fds, Some(&addr)).map_err(err)?
            }
            NotifyAddr::Vsock { cid, port } => {
                // systemd listens for vsock notifications on a SOCK_SEQPACKET socket.
                let sock = rustix::net::socket_with(
                    AddressFamily::VSOCK,
                    SocketType::SEQPACKET,
                    SocketFlags::CLOEXEC,
                    None,
                )
                .map_err(err)?;
                rustix::net::connect(
                    &sock,
                    &VsockAddr {
                        cid: *cid,
                        port: *port,
                    },
                )
                .map_err(err)?;
                send_with_fds(&sock, message.as_bytes(), fds, None).map_err(err)?
            }
        };
        if sent != message.len() {
            return Err(err(Errno::MSGSIZE));
        }
        Ok(())
    }
}

/// Sends `message` and `fds` to `$NOTIFY_SOCKET`.
///
/// Returns `Ok(false)` ("not sent", not an error) when `$NOTIFY_SOCKET` is
/// unset, like `sd_notify`'s 0.
///
/// # Examples
/// ```no_run
/// // Not run as a test: under a service manager ($NOTIFY_SOCKET set) it
/// // would tell the manager that whatever runs the tests is ready.
/// if !shm_fd::notify::notify("READY=1\nSTATUS=serving\n", &[])? {
///     eprintln!("not running under a service manager");
/// }
/// # Ok::<(), shm_fd::notify::NotifyError>(())
/// ```
pub fn notify(message: &str, fds: &[BorrowedFd<'_>]) -> Result<bool, NotifyError> {
    match NotifyAddr::from_env()? {
        None => Ok(false),
        Some(addr) => addr.send(message, fds).map(|()| true),
    }
}

/// `READY=1`: start-up is complete (needed by `Type=notify` units).
pub fn ready() -> Result<bool, NotifyError> {
    notify("READY=1\n", &[])
}

/// `STATUS=...`: a one-line status for `systemctl status`.
pub fn status(text: &str) -> Result<bool, NotifyError> {
    notify(&format!("STATUS={}\n", text.replace('\n', " ")), &[])
}

fn check_name(name: &str) -> Result<(), NotifyError> {
    Ok(validate_fd_name(name)?)
}

/// The message [`store_fd`] sends.
pub fn store_message(name: &str) -> String {
    // FDPOLL=0: a memfd is not pollable; without it systemd would watch the
    // fd for POLLHUP/POLLERR and could drop it.
    format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0\n")
}

/// `FDSTORE=1`: hands `fd` to the service manager's fd store under `name`.
///
/// The store keeps it across restarts of the service and hands it back in
/// `LISTEN_FDS`/`LISTEN_FDNAMES`. systemd drops it silently unless the unit
/// sets `FileDescriptorStoreMax=` above 0.
#[doc(alias = "FDSTORE")]
pub fn store_fd(name: &str, fd: BorrowedFd<'_>) -> Result<bool, NotifyError> {
    check_name(name)?;
    notify(&store_message(name), &[fd])
}

/// `FDSTOREREMOVE=1`: removes every stored fd named `name`.
#[doc(alias = "FDSTOREREMOVE")]
pub fn remove_fd(name: &str) -> Result<bool, NotifyError> {
    check_name(name)?;
    notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_like_systemd() {
        assert_eq!(
            NotifyAddr::parse("/run/x.sock").unwrap(),
            NotifyAddr::Path("/run/x.sock".into())
        );
        assert_eq!(
            NotifyAddr::parse("@sd/notify").unwrap(),
            NotifyAddr::Abstract(b"sd/notify".to_vec())
        );
        assert_eq!(
            NotifyAddr::parse("vsock:2:1234").unwrap(),
            NotifyAddr::Vsock { cid: 2, port: 1234 }
        );
        for bad in [
            "relative",
            "@",
            "vsock:x:1",
            "vsock:1",
            "",
            &format!("/{}", "a".repeat(200)),
        ] {
            assert!(
                matches!(NotifyAddr::parse(bad), Err(NotifyError::BadAddress { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn addresses_display_as_written() {
        for value in ["/run/user/0/systemd/notify", "@sd/notify", "vsock:2:1234"] {
            assert_eq!(NotifyAddr::parse(value).unwrap().to_string(), value);
        }
    }

    #[test]
    fn send_errors_name_the_address_and_the_os_error() {
        let dir = std::env::temp_dir().join(format!("shm-fd-notify-{}", std::process::id()));
        let path = dir.join("no-such.sock");
        let addr = NotifyAddr::parse(path.to_str().unwrap()).unwrap();
        let err = addr.send("READY=1\n", &[]).unwrap_err();
        assert!(
            matches!(
                err,
                NotifyError::Send {
                    errno: Errno::NOENT,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "sending to NOTIFY_SOCKET={}: {}",
                path.display(),
                std::io::Error::from_raw_os_error(libc::ENOENT)
            )
        );
        assert!(err.to_string().contains("(os error 2)"), "{err}");

        // An abstract name nobody listens on: ECONNREFUSED, shown as `@name`.
        let name = format!("@shm-fd-test/{}/nobody", std::process::id());
        let err = NotifyAddr::parse(&name)
            .unwrap()
            .send("READY=1\n", &[])
            .unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("sending to NOTIFY_SOCKET={name}: ")),
            "{shown}"
        );
        assert!(shown.contains("os error"), "{shown}");
    }

    #[test]
    fn messages_arrive_with_their_fds_and_our_credentials() {
        use rustix::fd::AsFd;
        let name = format!("shm-fd-test/{}/fds", std::process::id());
        let rx = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::sockopt::set_socket_passcred(&rx, true).unwrap();
        let addr = SocketAddrUnix::new_abstract_name(name.as_bytes()).unwrap();
        rustix::net::bind(&rx, &addr).unwrap();
        let memfd = crate::state::create("state", 8192).unwrap();
        let sut = NotifyAddr::parse(&format!("@{name}")).unwrap();
        sut.send(&store_message("state"), &[memfd.as_fd(), memfd.as_fd()])
            .unwrap();
        let mut buf = [0u8; 256];
        let got = shm_segment::fdpass::recv_with_fds(&rx, &mut buf, 4).unwrap();
        assert_eq!(&buf[..got.len], store_message("state").as_bytes());
        assert_eq!(got.fds.len(), 2);
        let ino = |fd: BorrowedFd<'_>| rustix::fs::fstat(fd).unwrap().st_ino;
        assert!(
            got.fds
                .iter()
                .all(|fd| ino(fd.as_fd()) == ino(memfd.as_fd()))
        );
        assert_eq!(got.creds.map(|c| c.pid), Some(rustix::process::getpid()));
    }

    #[test]
    fn bad_names_are_refused_before_sending() {
        let err = remove_fd("a:b").unwrap_err();
        assert!(matches!(err, NotifyError::BadName(_)), "{err:?}");
        assert!(err.to_string().contains("\"a:b\""), "{err}");
    }

    #[test]
    fn arbitrary_values_never_panic() {
        use proptest::prelude::*;
        proptest!(|(v in ".{0,130}")| {
            let _ = NotifyAddr::parse(&v);
        });
    }
}
