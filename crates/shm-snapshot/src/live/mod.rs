//! The client/host commit protocol on the live memfd.
//!
//! Layout of the memfd (all little-endian, see `docs/protocol/shm-snapshot.md`):
//! one 4096-byte control page (`magic` at 0, `region_size` at 8, the commit
//! sequence `seq` at 16), then the page-generation table (one `u64` per
//! 4096-byte page of the state: the commit that last changed it), then the
//! work area (`region_size` bytes, rounded up to 4096), then the committed
//! copy (same size).
//!
//! The client edits the work area freely and calls [`Client::commit`] at a
//! consistent point: it makes `seq` odd, stamps the dirty pages with the new
//! generation, copies them from the work area into the committed copy and
//! makes `seq` even again. That is wait-free (no loop waits for anyone). The
//! host maps the memfd read-only. [`Host::copy`] copies the whole committed
//! copy seqlock-style (kept only if `seq` was even and unchanged across it);
//! [`Host::copy_changed`] copies only the pages stamped after a generation the
//! host already has, and keeps each page only if its stamp did not move past
//! the target generation while it was copied. Either way a copy is exactly
//! one committed state.
//!
//! Instead of naming the dirty ranges, a client can let the kernel find them:
//! [`Client::track`] starts write-protect tracking of the work area
//! ([`crate::track`]) and [`Client::commit_tracked`] copies exactly the pages
//! written since the previous commit, with the same seqlock protocol.

mod client;
mod host;
mod layout;

pub use client::{Client, TrackedCommit};
pub use host::{COPY_PASSES, Changed, Host};
pub use layout::{CONTROL_LEN, Initializer, LIVE_MAGIC, PAGE, initialize, memfd_size};
