//! [`Segment`]: a named POSIX shm object or a memfd with a validated header.
//!
//! # Named objects: creation, liveness and reclamation
//!
//! - **Atomic publication.** A named object is created nameless (`O_TMPFILE` in
//!   `/dev/shm`), sized, given its header and initialised payload, locked, and
//!   only then linked under its name with `linkat`, which fails if the name
//!   exists (the `O_EXCL` of linking). An object visible by name is therefore
//!   always fully initialised, and a creator killed before publishing leaves
//!   nothing behind. (`shm_open` is `open("/dev/shm/NAME")` in glibc; we use
//!   the directory directly because `shm_open` cannot create unnamed objects.)
//! - **Liveness.** Every attached handle holds a shared `flock` on its own open
//!   file description. The kernel drops it when the process dies, however it dies.
//! - **Stale objects.** An opener that can take the lock *exclusively* knows no
//!   live process is attached. Unless the object was leaked on purpose
//!   ([`Segment::leak`]), it is stale (its owner was killed) and is unlinked, and
//!   `open_or_create` creates a fresh one: a SIGKILLed program never breaks the
//!   next start.
//! - **Unlinking** (owner drop, last one out, reclamation) happens under an
//!   exclusive `flock` of the `/dev/shm` directory and only after checking that
//!   the name still refers to our inode, so no process ever unlinks an object
//!   it did not mean to.
//! - **Shrunk objects.** A named object cannot be sealed. Its mappings are
//!   registered with a `SIGBUS` handler ([`Mapping::map_guarded`]), so a
//!   process that another one truncated the object under keeps running and
//!   sees [`Segment::is_truncated`]; an opener that finds a shrunk object with
//!   nobody attached reclaims it, leaked or not (its data is gone).
//! - **Removal** ([`Segment::remove`]) applies the same rules: only an
//!   outlive segment of ours with no process attached is unlinked;
//!   [`Segment::force_remove`] also unlinks a live one.
//! - **Divergence is visible.** When the name is unlinked while others are
//!   still attached, the header's `unlinked` flag is set first:
//!   [`Segment::is_unlinked`] tells attached processes that newcomers will see
//!   a different object.
//!
//! The code follows these concepts: this file holds the [`Segment`] handle;
//! `builder.rs` its options and the memfd and adopted-fd paths; `named.rs`
//! the named objects (create, open, reclaim, remove, unlink); `error.rs`
//! [`SegmentError`].

mod builder;
mod error;
mod named;

use core::sync::atomic::Ordering; // atomics-ok: header words in shared memory
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::FlockOperation;

pub use builder::SegmentBuilder;
pub use error::SegmentError;

use crate::header::{
    DATA_OFFSET, FLAG_LAST_OUT_UNLINKS, FLAG_LEAKED, FLAG_UNLINKED, HeaderInfo, Layout, RawHeader,
};
use crate::mapping::Mapping;
use crate::region::Region;
use builder::Source;
use named::{remove_named, unlink_if_ours};

/// A shared-memory object with a validated header and a page-aligned payload.
///
/// See the [module docs](crate::segment) for how named objects are published, kept
/// alive and reclaimed.
///
/// # Examples
/// ```
/// use shm_segment::Segment;
/// let name = format!("doc-seg-{}", std::process::id());
/// let a = Segment::builder(&name).size(64).create()?;
/// a.payload().write_bytes(0, b"hi")?;
/// let b = Segment::builder(&name).size(64).open()?;
/// let mut buf = [0; 2];
/// b.payload().read_bytes(0, &mut buf)?;
/// assert_eq!(&buf, b"hi");
/// drop(a); // the creator owns the name and unlinks it
/// assert!(Segment::builder(&name).size(64).open().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Segment {
    map: Mapping,
    fd: OwnedFd,
    info: HeaderInfo,
    name: Option<String>,
    owner: bool,
    created: bool,
}

impl Segment {
    /// A named POSIX shared-memory object (`/dev/shm/NAME`), mode 0600 by default.
    pub fn builder(name: &str) -> SegmentBuilder {
        SegmentBuilder::new(Source::Named(name.to_owned()))
    }

    /// An anonymous memfd segment (only [`SegmentBuilder::create`] applies).
    pub fn memfd(name: &str) -> SegmentBuilder {
        SegmentBuilder::new(Source::Memfd(name.to_owned()))
    }

    /// Adopts a memfd handed to us (by `LISTEN_FDS`, `SCM_RIGHTS`, ...).
    ///
    /// It is checked to be a memfd large enough for the requested payload,
    /// sealed against shrinking and growing (the seals are added if missing
    /// and still possible). `open` then validates its header; `open_or_create`
    /// initialises an all-zero memfd in place.
    pub fn adopt(fd: OwnedFd) -> SegmentBuilder {
        SegmentBuilder::new(Source::Fd(fd))
    }

    /// Removes the named object `name`, if it exists and no process is
    /// attached to it (for cleanup scripts). Returns whether it was removed.
    ///
    /// Follows the reclamation rules of the module docs: only a regular file
    /// of ours that is an outlive segment (or an empty file, which holds
    /// nothing to lose) is ever unlinked, anything else gives
    /// [`SegmentError::Corrupt`] or [`SegmentError::ForeignOwner`]; an object
    /// with live processes attached gives [`SegmentError::InUse`] (see
    /// [`Segment::force_remove`]); the unlink happens under the `/dev/shm`
    /// lock, only if the name still refers to the object inspected, after
    /// setting its *unlinked* flag.
    pub fn remove(name: &str) -> Result<bool, SegmentError> {
        remove_named(name, false)
    }

    /// Like [`Segment::remove`], but also unlinks an object that live
    /// processes are attached to. They keep their (now nameless) object and
    /// see [`Segment::is_unlinked`]; newcomers get a different object, so
    /// this splits the users of the name in two: for operators who know the
    /// attached processes are going away.
    pub fn force_remove(name: &str) -> Result<bool, SegmentError> {
        remove_named(name, true)
    }

    /// The payload: page-aligned, [`Segment::len`] bytes.
    #[allow(
        clippy::missing_panics_doc,
        reason = "the expect states an invariant checked at open"
    )]
    pub fn payload(&self) -> Region<'_> {
        self.map
            .region()
            .sub(DATA_OFFSET, self.info.data_len as usize)
            .expect("INVARIANT: data_len was checked against the mapping length")
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.info.data_len as usize
    }

    /// Never true: payloads hold at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The payload layout recorded in the header.
    pub fn layout(&self) -> Layout {
        self.info.layout
    }

    /// The underlying file descriptor (for passing to another process).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The mapping of the whole object, header included.
    pub fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// The object's name, for named segments.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether this handle initialised the object.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Whether this handle will unlink the name when dropped.
    pub fn is_owner(&self) -> bool {
        self.owner
    }

    /// The header's initialisation generation (bumped by each initialisation).
    pub fn generation(&self) -> u64 {
        self.info.generation
    }

    fn header(&self) -> Option<&RawHeader> {
        self.map.region().get::<RawHeader>(0).ok()
    }

    fn flags(&self) -> u32 {
        // Relaxed: flags are advisory bits about the name, not a publication.
        self.map
            .region()
            .load_u32(core::mem::offset_of!(RawHeader, flags), Ordering::Relaxed)
            .unwrap_or(0)
    }

    fn set_flag(&self, flag: u32, on: bool) {
        if let Some(h) = self.header() {
            // Relaxed: see `flags`.
            if on {
                h.flags.fetch_or(flag, Ordering::Relaxed);
            } else {
                h.flags.fetch_and(!flag, Ordering::Relaxed);
            }
        }
    }

    /// Whether another process shrank the object under this mapping (see
    /// [`SegmentError::Truncated`]). Views of the payload cannot report it
    /// themselves: check this (or [`Segment::check_mapped`]) after reading,
    /// before trusting what was read.
    pub fn is_truncated(&self) -> bool {
        self.map.is_truncated()
    }

    /// `Err(SegmentError::Truncated)` if [`Segment::is_truncated`].
    pub fn check_mapped(&self) -> Result<(), SegmentError> {
        if self.is_truncated() {
            return Err(SegmentError::Truncated {
                name: self.display_name(),
            });
        }
        Ok(())
    }

    fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| "memfd".to_owned())
    }

    /// Whether the name was unlinked by someone (processes opening the name
    /// now get a different object).
    pub fn is_unlinked(&self) -> bool {
        self.flags() & FLAG_UNLINKED != 0
    }

    /// Keeps the named object after this handle drops, even if no process is
    /// attached: it is marked leaked and is not reclaimed as stale.
    pub fn leak(mut self) {
        if self.name.is_some() {
            self.set_flag(FLAG_LEAKED, true);
        }
        self.owner = false;
    }

    /// Takes ownership: this handle will unlink the name when dropped, and the
    /// object is no longer marked leaked. Calling it on several handles is
    /// harmless: the first drop unlinks, the others find the name gone.
    pub fn own(&mut self) {
        if self.name.is_some() {
            self.set_flag(FLAG_LEAKED, false);
            self.owner = true;
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let Some(name) = self.name.clone() else {
            return;
        };
        let flags = self.flags();
        if flags & FLAG_LEAKED != 0 {
            return;
        }
        let unlink = if flags & FLAG_LAST_OUT_UNLINKS != 0 {
            // Converting our shared lock may drop it first; if another process
            // then gets the exclusive lock, it is the last one out, not us.
            rustix::fs::flock(&self.fd, FlockOperation::NonBlockingLockExclusive).is_ok()
        } else {
            self.owner
        };
        if unlink {
            let _ = unlink_if_ours(&name, self.fd.as_fd(), || {
                self.set_flag(FLAG_UNLINKED, true);
            });
        }
    }
}
