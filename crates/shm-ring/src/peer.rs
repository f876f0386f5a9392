//! [`PeerLink`]: the connected peer of a ring end, shared by the handshake
//! (`conn`), which makes one, and the ends (`endpoint`), which keep its socket.

use std::os::fd::OwnedFd;

/// A connected peer: the socket (kept open as the liveness link) and its credentials.
#[derive(Debug)]
pub struct PeerLink {
    /// The connected Unix socket; its hang-up means the peer is gone.
    pub(crate) socket: OwnedFd,
    /// The peer's pid (`SO_PEERCRED`, at connect time).
    pub(crate) pid: u32,
    /// The peer's uid (`SO_PEERCRED`).
    pub(crate) uid: u32,
}

impl PeerLink {
    /// The peer's pid, as the kernel saw it at connect time.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// The peer's uid.
    pub fn uid(&self) -> u32 {
        self.uid
    }
    pub(crate) fn into_socket(self) -> OwnedFd {
        self.socket
    }
}
