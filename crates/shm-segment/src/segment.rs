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

use core::sync::atomic::Ordering; // atomics-ok: header words in shared memory
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::header::{
    DATA_OFFSET, FLAG_LAST_OUT_UNLINKS, FLAG_LEAKED, FLAG_UNLINKED, HEADER_LEN, HeaderFault,
    HeaderInfo, Layout, MAGIC, RawHeader, STATE_EMPTY, STATE_INITIALISING,
};
use crate::mapping::{Access, MapError, Mapping};
use crate::memfd::{self, MemfdError, ValidateError};
use crate::region::Region;

const SHM_DIR: &str = "/dev/shm";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a segment could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// The name is empty, too long, or holds `/` or NUL.
    #[error("invalid segment name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `create` found an object of that name.
    #[error("segment {name:?} already exists")]
    AlreadyExists {
        /// The name.
        name: String,
    },
    /// `open` found no object of that name (or only a stale one, which it removed).
    #[error("segment {name:?} does not exist")]
    NotFound {
        /// The name.
        name: String,
    },
    /// The object's header was not initialised within the open timeout.
    #[error("segment {name} is not initialised")]
    NotInitialized {
        /// The name (or `memfd:NAME`).
        name: String,
    },
    /// The header was written by another format version.
    #[error("segment {name} has format version {found}, this library reads {expected}")]
    VersionMismatch {
        /// The name.
        name: String,
        /// Version found.
        found: u32,
        /// Version supported.
        expected: u32,
    },
    /// The payload holds another type than the one asked for.
    #[error("segment {name} holds {found}, expected {expected}")]
    LayoutMismatch {
        /// The name.
        name: String,
        /// Layout asked for.
        expected: Layout,
        /// Layout found.
        found: Layout,
    },
    /// The object is smaller than needed.
    #[error("segment {name} holds {have} payload bytes, {need} are needed")]
    TooSmall {
        /// The name.
        name: String,
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// The header is not a valid outlive header.
    #[error("segment {name} is corrupt: {what}")]
    Corrupt {
        /// The name.
        name: String,
        /// What check failed.
        what: &'static str,
    },
    /// The object's permission bits differ from the requested mode.
    #[error("segment {name:?} has mode {mode:#o}, expected {expected:#o}")]
    Permissions {
        /// The name.
        name: String,
        /// Mode found.
        mode: u32,
        /// Mode requested.
        expected: u32,
    },
    /// The object belongs to another user.
    #[error("segment {name:?} belongs to uid {uid}, not to us")]
    ForeignOwner {
        /// The name.
        name: String,
        /// Its owner.
        uid: u32,
    },
    /// Mapping failed.
    #[error("segment {name}: cannot map: {source}")]
    Map {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: MapError,
    },
    /// The object was shrunk under its mapping by another process (named
    /// segments cannot be sealed): what this process read from it since is
    /// zeros, not data, and what it wrote is lost. The object is reclaimed by
    /// the next `open_or_create` once no process is attached.
    #[error(
        "segment {name} was truncated by another process (its /dev/shm object shrank): its data is lost"
    )]
    Truncated {
        /// The name.
        name: String,
    },
    /// [`Segment::remove`] found live processes attached to the object.
    #[error(
        "segment {name} is in use by a live process: not removed (force removal unlinks it anyway)"
    )]
    InUse {
        /// The name.
        name: String,
    },
    /// Creating or sealing a memfd failed.
    #[error(transparent)]
    Memfd(#[from] MemfdError),
    /// An inherited fd is not an acceptable memfd.
    #[error(transparent)]
    Validate(#[from] ValidateError),
    /// A system call failed.
    #[error("segment {name}: {op}: {source}")]
    Io {
        /// The name.
        name: String,
        /// The call, with the path it was made on where there is one.
        op: String,
        /// The OS error.
        #[source]
        source: Errno,
    },
}

enum Source {
    Named(String),
    Memfd(String),
    Fd(OwnedFd),
}

/// Configures how a [`Segment`] is created or opened.
///
/// Returned by [`Segment::builder`], [`Segment::memfd`] and [`Segment::adopt`].
#[must_use]
pub struct SegmentBuilder {
    source: Source,
    size: u64,
    layout: Layout,
    mode: u32,
    last_out_unlinks: bool,
    persistent: bool,
    timeout: Duration,
    access: Access,
}

impl core::fmt::Debug for SegmentBuilder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SegmentBuilder")
            .field("name", &self.display_name())
            .field("size", &self.size)
            .field("layout", &self.layout)
            .field("mode", &format_args!("{:#o}", self.mode))
            .finish_non_exhaustive()
    }
}

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

fn shm_path(name: &str) -> String {
    format!("{SHM_DIR}/{name}")
}

fn check_name(name: &str) -> Result<(), SegmentError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 250 {
        "longer than 250 bytes"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else if name == "." || name == ".." {
        "is a directory name"
    } else {
        return Ok(());
    };
    Err(SegmentError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// `SegmentError::Io` for `op` on `name`.
fn io_err(name: &str, op: impl Into<String>) -> impl FnOnce(Errno) -> SegmentError {
    let (name, op) = (name.to_owned(), op.into());
    move |source| SegmentError::Io { name, op, source }
}

/// What the first bytes of a named object say, read with `pread` (no mapping,
/// so nothing can fault however small the file is).
struct Probe {
    /// File size.
    size: u64,
    /// Whether it starts with the outlive magic.
    magic: bool,
    /// The header's `data_len`, if the file holds it.
    data_len: Option<u64>,
}

impl Probe {
    fn read(fd: BorrowedFd<'_>, name: &str) -> Result<Probe, SegmentError> {
        let size = rustix::fs::fstat(fd)
            .map_err(io_err(name, format!("fstat {}", shm_path(name))))?
            .st_size;
        let size = u64::try_from(size).unwrap_or(0);
        let mut head = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < head.len() {
            match rustix::io::pread(fd, &mut head[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::INTR) => {}
                Err(source) => {
                    return Err(io_err(name, format!("pread {}", shm_path(name)))(source));
                }
            }
        }
        let word = |off: usize| {
            (got >= off + 8)
                .then(|| u64::from_ne_bytes(head[off..off + 8].try_into().unwrap_or([0; 8])))
        };
        Ok(Probe {
            size,
            magic: word(core::mem::offset_of!(RawHeader, magic)) == Some(MAGIC),
            data_len: word(core::mem::offset_of!(RawHeader, data_len)),
        })
    }

    /// An outlive object that no longer holds its header page and payload, or
    /// an empty file: someone shrank it, and its data is gone.
    fn shrunk(&self) -> bool {
        self.size == 0
            || (self.magic
                && (self.size <= DATA_OFFSET as u64
                    || self
                        .data_len
                        .is_some_and(|len| len > self.size - DATA_OFFSET as u64)))
    }

    /// Whether the file is recognisably an outlive segment (or empty).
    fn ours(&self) -> bool {
        self.size == 0 || self.magic
    }
}

/// [`Segment::remove`] and [`Segment::force_remove`].
fn remove_named(name: &str, force: bool) -> Result<bool, SegmentError> {
    check_name(name)?;
    let path = shm_path(name);
    let open = |flags: OFlags| {
        rustix::fs::open(
            path.as_str(),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    // Read-write to set the unlinked flag; read-only is enough to remove.
    let (fd, writable) = match open(OFlags::RDWR) {
        Ok(fd) => (fd, true),
        Err(Errno::ACCESS) => (
            open(OFlags::RDONLY).map_err(io_err(name, format!("open {path}")))?,
            false,
        ),
        Err(Errno::NOENT) => return Ok(false),
        Err(source) => return Err(io_err(name, format!("open {path}"))(source)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(io_err(name, format!("fstat {path}")))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(SegmentError::Corrupt {
            name: name.to_owned(),
            what: "not a regular file: never removed",
        });
    }
    if stat.st_uid != rustix::process::geteuid().as_raw() {
        return Err(SegmentError::ForeignOwner {
            name: name.to_owned(),
            uid: stat.st_uid,
        });
    }
    let probe = Probe::read(fd.as_fd(), name)?;
    if !probe.ours() {
        return Err(SegmentError::Corrupt {
            name: name.to_owned(),
            what: "not an outlive segment: never removed",
        });
    }
    // Exclusive: no process is attached, and none can attach until the name
    // is gone (openers wait for a shared lock, then find the name unlinked).
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) if force => {}
        Err(Errno::WOULDBLOCK) => {
            return Err(SegmentError::InUse {
                name: name.to_owned(),
            });
        }
        Err(source) => return Err(io_err(name, format!("flock {path}"))(source)),
    }
    // Attached processes (force) learn that newcomers get another object.
    let header = (writable && probe.magic && probe.size >= DATA_OFFSET as u64)
        .then(|| Mapping::map_guarded(fd.as_fd(), 0, DATA_OFFSET, Access::ReadWrite).ok())
        .flatten();
    unlink_if_ours(name, fd.as_fd(), || {
        if let Some(h) = header
            .as_ref()
            .and_then(|m| m.region().get::<RawHeader>(0).ok())
        {
            // Relaxed: flags are advisory bits about the name (see `Segment::flags`).
            h.flags.fetch_or(FLAG_UNLINKED, Ordering::Relaxed);
        }
    })
    .map_err(io_err(name, format!("unlink {path}")))
}

fn same_inode(a: &rustix::fs::Stat, b: &rustix::fs::Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Whether `name` still refers to the object open as `fd`.
fn is_linked(name: &str, fd: BorrowedFd<'_>) -> bool {
    match (
        rustix::fs::stat(shm_path(name).as_str()),
        rustix::fs::fstat(fd),
    ) {
        (Ok(by_name), Ok(ours)) => same_inode(&by_name, &ours),
        _ => false,
    }
}

/// Unlinks `name` if it still refers to `fd`'s object, serialised against every
/// other unlinker by an exclusive `flock` on `/dev/shm` (released by the
/// kernel even if we are killed). `before` runs just before the unlink.
fn unlink_if_ours(name: &str, fd: BorrowedFd<'_>, before: impl FnOnce()) -> Result<bool, Errno> {
    let dir = rustix::fs::open(
        SHM_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::fs::flock(&dir, FlockOperation::LockExclusive)?;
    if !is_linked(name, fd) {
        return Ok(false);
    }
    before();
    crate::crash_point!("segment.before_unlink");
    rustix::fs::unlinkat(rustix::fs::CWD, shm_path(name).as_str(), AtFlags::empty())?;
    Ok(true)
    // `dir` closes here, releasing the directory lock.
}

impl SegmentBuilder {
    fn new(source: Source) -> SegmentBuilder {
        SegmentBuilder {
            source,
            size: 0,
            layout: Layout::BYTES,
            mode: 0o600,
            last_out_unlinks: false,
            persistent: false,
            timeout: DEFAULT_TIMEOUT,
            access: Access::ReadWrite,
        }
    }

    fn display_name(&self) -> String {
        match &self.source {
            Source::Named(n) => n.clone(),
            Source::Memfd(n) => format!("memfd:{n}"),
            Source::Fd(fd) => match memfd::memfd_name(fd.as_fd()) {
                Ok(Ok(n)) => format!("memfd:{n}"),
                _ => "inherited fd".to_owned(),
            },
        }
    }

    /// Payload size in bytes (at least the size of the layout's type).
    pub fn size(mut self, bytes: usize) -> SegmentBuilder {
        self.size = bytes as u64;
        self
    }

    /// The payload holds a `T`: its size, alignment and type fingerprint are
    /// recorded at creation and checked at open.
    pub fn layout<T>(self) -> SegmentBuilder {
        self.with_layout(Layout::of::<T>())
    }

    /// Like [`layout`](Self::layout) with an explicit [`Layout`].
    pub fn with_layout(mut self, layout: Layout) -> SegmentBuilder {
        self.layout = layout;
        self
    }

    /// Permission bits for a named object (default 0600). `open` refuses an
    /// object whose bits differ.
    pub fn mode(mut self, mode: u32) -> SegmentBuilder {
        self.mode = mode & 0o777;
        self
    }

    /// The last process to detach unlinks the name (recorded in the header at
    /// creation, so every participant follows the creator's choice).
    pub fn last_out_unlinks(mut self, on: bool) -> SegmentBuilder {
        self.last_out_unlinks = on;
        self
    }

    /// Create the named object already leaked: it outlives every process
    /// (nobody unlinks it on drop and it is never reclaimed as stale) until
    /// [`Segment::remove`] or [`Segment::own`]. For state that must survive
    /// all its users being killed, like a board of latest values.
    pub fn persistent(mut self, on: bool) -> SegmentBuilder {
        self.persistent = on;
        self
    }

    /// How long `open` waits for a busy or initialising object (default 2 s).
    pub fn open_timeout(mut self, timeout: Duration) -> SegmentBuilder {
        self.timeout = timeout;
        self
    }

    /// Map read-only (`open` only): for hosts that must never write the region.
    pub fn read_only(mut self) -> SegmentBuilder {
        self.access = Access::ReadOnly;
        self
    }

    fn payload_len(&self) -> u64 {
        self.size.max(self.layout.size).max(1)
    }

    fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.last_out_unlinks {
            flags |= FLAG_LAST_OUT_UNLINKS;
        }
        if self.persistent {
            flags |= FLAG_LEAKED;
        }
        flags
    }

    /// Creates the object with a zeroed payload; fails if it exists.
    pub fn create(self) -> Result<Segment, SegmentError> {
        self.create_with(|_| {})
    }

    /// Creates the object, runs `init` on the zeroed payload, then publishes it.
    /// Fails with [`SegmentError::AlreadyExists`] if it exists.
    pub fn create_with(self, mut init: impl FnMut(Region<'_>)) -> Result<Segment, SegmentError> {
        match self.source {
            Source::Named(ref name) => {
                check_name(name)?;
                let name = name.clone();
                self.create_named(&name, &mut init)
            }
            Source::Memfd(ref name) => {
                let fd = memfd::create(
                    name,
                    DATA_OFFSET as u64 + self.payload_len(),
                    memfd::FIXED_SIZE,
                )?;
                let name = format!("memfd:{name}");
                self.init_in_place(fd, &name, &mut init, STATE_EMPTY)
            }
            Source::Fd(_) => {
                let (fd, name) = self.adopted()?;
                self.init_in_place(fd, &name, &mut init, STATE_EMPTY)
            }
        }
    }

    /// Opens an existing, initialised object and checks its layout and size.
    pub fn open(self) -> Result<Segment, SegmentError> {
        match self.source {
            Source::Named(ref name) => {
                check_name(name)?;
                let name = name.clone();
                self.open_named(&name)?
                    .ok_or(SegmentError::NotFound { name })
            }
            Source::Memfd(ref name) => Err(SegmentError::NotFound {
                name: format!("memfd:{name}"),
            }),
            Source::Fd(_) => {
                let (fd, name) = self.adopted()?;
                self.open_fd(fd, &name)
            }
        }
    }

    /// Opens the object if it exists (and is not stale), creates it otherwise.
    /// [`Segment::created`] tells which happened.
    pub fn open_or_create(self) -> Result<Segment, SegmentError> {
        self.open_or_create_with(|_| {})
    }

    /// [`open_or_create`](Self::open_or_create), running `init` if it creates.
    ///
    /// `init` may run more than once if a concurrent creator wins the race
    /// after it started (each run is on a fresh, zeroed payload).
    pub fn open_or_create_with(
        self,
        mut init: impl FnMut(Region<'_>),
    ) -> Result<Segment, SegmentError> {
        match self.source {
            Source::Named(ref name) => {
                check_name(name)?;
                let name = name.clone();
                let deadline = Instant::now() + self.timeout;
                loop {
                    if let Some(seg) = self.open_named(&name)? {
                        return Ok(seg);
                    }
                    match self.create_named(&name, &mut init) {
                        Err(SegmentError::AlreadyExists { .. }) if Instant::now() < deadline => {}
                        other => return other,
                    }
                }
            }
            Source::Memfd(_) => self.create_with(init),
            Source::Fd(_) => {
                let (fd, name) = self.adopted()?;
                let deadline = Instant::now() + self.timeout;
                loop {
                    match self.wait_ready(&fd, &name)? {
                        Ok(()) => return self.open_fd(fd, &name),
                        Err(state) => {
                            let mine = fd.try_clone().map_err(|e| SegmentError::Io {
                                name: name.clone(),
                                op: "dup".to_owned(),
                                source: Errno::from_io_error(&e).unwrap_or(Errno::BADF),
                            })?;
                            // Another process may claim the header between our
                            // look and our claim: then wait for it and open.
                            match self.init_in_place(mine, &name, &mut init, state) {
                                Err(SegmentError::AlreadyExists { .. })
                                    if Instant::now() < deadline => {}
                                other => return other,
                            }
                        }
                    }
                }
            }
        }
    }

    /// Takes the adopted fd out of the builder after validating it as a memfd.
    fn adopted(&self) -> Result<(OwnedFd, String), SegmentError> {
        let Source::Fd(fd) = &self.source else {
            unreachable!("only called for adopted fds")
        };
        let name = self.display_name();
        let fd = fd.try_clone().map_err(|e| SegmentError::Io {
            name: name.clone(),
            op: "dup".to_owned(),
            source: Errno::from_io_error(&e).unwrap_or(Errno::BADF),
        })?;
        let need = DATA_OFFSET as u64 + self.payload_len();
        let info = memfd::validate(fd.as_fd(), &memfd::Requirements::min_size(need))?;
        if !info.seals.contains(memfd::FIXED_SIZE) {
            memfd::add_seals(fd.as_fd(), memfd::FIXED_SIZE)?;
        }
        Ok((fd, name))
    }

    fn map(fd: BorrowedFd<'_>, name: &str, access: Access) -> Result<(Mapping, u64), SegmentError> {
        let len = rustix::fs::fstat(fd)
            .map_err(io_err(name, "fstat"))?
            .st_size;
        let len = u64::try_from(len).unwrap_or(0);
        if len < DATA_OFFSET as u64 + 1 {
            return Err(SegmentError::Corrupt {
                name: name.to_owned(),
                what: "object smaller than a header page",
            });
        }
        // A file sealed against shrinking (a memfd) cannot be truncated under
        // us; anything else (a /dev/shm object) is guarded against SIGBUS.
        let sealed = memfd::seals(fd).is_ok_and(|s| s.contains(memfd::Seals::SHRINK));
        let map = if sealed {
            Mapping::map(fd, 0, len as usize, access)
        } else {
            Mapping::map_guarded(fd, 0, len as usize, access)
        }
        .map_err(|source| SegmentError::Map {
            name: name.to_owned(),
            source,
        })?;
        Ok((map, len))
    }

    /// Validates a header and this builder's expectations against it.
    fn validate(
        &self,
        map: &Mapping,
        file_len: u64,
        name: &str,
    ) -> Result<HeaderInfo, SegmentError> {
        let info =
            RawHeader::check(&map.region(), file_len).map_err(|fault| fault_error(fault, name))?;
        if self.layout != Layout::BYTES && info.layout != self.layout {
            return Err(SegmentError::LayoutMismatch {
                name: name.to_owned(),
                expected: self.layout,
                found: info.layout,
            });
        }
        if info.data_len < self.payload_len() {
            return Err(SegmentError::TooSmall {
                name: name.to_owned(),
                need: self.payload_len(),
                have: info.data_len,
            });
        }
        Ok(info)
    }

    /// Initialises `fd` in place: claims the header (`expect` is the state we
    /// may take over), writes it, runs `init`, publishes.
    fn init_in_place(
        &self,
        fd: OwnedFd,
        name: &str,
        init: &mut dyn FnMut(Region<'_>),
        expect: u32,
    ) -> Result<Segment, SegmentError> {
        let (map, file_len) = Self::map(fd.as_fd(), name, Access::ReadWrite)?;
        let header = map
            .region()
            .get::<RawHeader>(0)
            .expect("INVARIANT: mapping holds a header page");
        // Relaxed on both paths: the claim only excludes other initialisers;
        // what we write is published by `publish` (Release).
        let claimed = header
            .state
            .compare_exchange(
                expect,
                STATE_INITIALISING,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .or_else(|_| {
                header.state.compare_exchange(
                    STATE_EMPTY,
                    STATE_INITIALISING,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
            });
        if claimed.is_err() {
            return Err(SegmentError::AlreadyExists {
                name: name.to_owned(),
            });
        }
        // The payload is the rest of the object (an adopted memfd may be larger than asked).
        let data_len = file_len - DATA_OFFSET as u64;
        header.write_fields(data_len, self.layout, self.flags());
        let payload = map
            .region()
            .sub(DATA_OFFSET, data_len as usize)
            .expect("INVARIANT: fits the mapping");
        if expect != STATE_EMPTY {
            // Taking over an interrupted initialisation: start from zeros again.
            payload
                .zero(0, payload.len())
                .expect("INVARIANT: whole payload");
        }
        crate::crash_point!("segment.before_init");
        init(payload);
        crate::crash_point!("segment.before_publish");
        header.publish();
        let info = self.validate(&map, file_len, name)?;
        Ok(Segment {
            map,
            fd,
            info,
            name: None,
            owner: false,
            created: true,
        })
    }

    /// Waits (bounded) for an adopted memfd's header to become ready.
    /// `Ok(Ok(()))`: ready. `Ok(Err(state))`: empty, or initialising past the timeout.
    fn wait_ready(&self, fd: &OwnedFd, name: &str) -> Result<Result<(), u32>, SegmentError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let (map, file_len) = Self::map(fd.as_fd(), name, Access::ReadOnly)?;
            match RawHeader::check(&map.region(), file_len) {
                Ok(_) => return Ok(Ok(())),
                Err(HeaderFault::Empty) => return Ok(Err(STATE_EMPTY)),
                Err(HeaderFault::Initialising) if Instant::now() >= deadline => {
                    return Ok(Err(STATE_INITIALISING));
                }
                Err(HeaderFault::Initialising) => std::thread::sleep(Duration::from_millis(1)),
                Err(fault) => return Err(fault_error(fault, name)),
            }
        }
    }

    fn open_fd(&self, fd: OwnedFd, name: &str) -> Result<Segment, SegmentError> {
        if let Ok(Err(_)) = self.wait_ready(&fd, name) {
            return Err(SegmentError::NotInitialized {
                name: name.to_owned(),
            });
        }
        let (map, file_len) = Self::map(fd.as_fd(), name, self.access)?;
        let info = self.validate(&map, file_len, name)?;
        Ok(Segment {
            map,
            fd,
            info,
            name: None,
            owner: false,
            created: false,
        })
    }

    fn create_named(
        &self,
        name: &str,
        init: &mut dyn FnMut(Region<'_>),
    ) -> Result<Segment, SegmentError> {
        let io = |op: &'static str| io_err(name, op);
        let mode = Mode::from_raw_mode(self.mode);
        let fd = rustix::fs::open(
            SHM_DIR,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            mode,
        )
        .map_err(io("open O_TMPFILE in /dev/shm"))?;
        // The umask may have cleared bits we were asked for.
        rustix::fs::fchmod(&fd, mode).map_err(io("fchmod"))?;
        rustix::fs::ftruncate(&fd, DATA_OFFSET as u64 + self.payload_len())
            .map_err(io("ftruncate"))?;
        let mut seg = self.init_in_place(fd, name, init, STATE_EMPTY)?;
        // Our liveness lock, taken before the name exists, so the object is
        // never visible without a live holder while we are alive.
        rustix::fs::flock(&seg.fd, FlockOperation::LockShared).map_err(io("flock"))?;
        crate::crash_point!("segment.before_link");
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&seg.fd));
        match rustix::fs::linkat(
            rustix::fs::CWD,
            proc_path.as_str(),
            rustix::fs::CWD,
            shm_path(name).as_str(),
            AtFlags::SYMLINK_FOLLOW,
        ) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                return Err(SegmentError::AlreadyExists {
                    name: name.to_owned(),
                });
            }
            Err(source) => {
                return Err(io_err(name, format!("linkat {}", shm_path(name)))(source));
            }
        }
        seg.name = Some(name.to_owned());
        seg.owner = !self.persistent;
        Ok(seg)
    }

    /// Opens a named object. `Ok(None)`: it does not exist, or it was stale
    /// and has been removed.
    fn open_named(&self, name: &str) -> Result<Option<Segment>, SegmentError> {
        let io = |op: &'static str| io_err(name, format!("{op} {}", shm_path(name)));
        let deadline = Instant::now() + self.timeout;
        loop {
            let oflags = match self.access {
                Access::ReadOnly => OFlags::RDONLY,
                Access::ReadWrite => OFlags::RDWR,
            };
            let fd = match rustix::fs::open(
                shm_path(name).as_str(),
                oflags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(None),
                Err(source) => return Err(io("open")(source)),
            };
            let stat = rustix::fs::fstat(&fd).map_err(io("fstat"))?;
            if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                return Err(SegmentError::Corrupt {
                    name: name.to_owned(),
                    what: "not a regular file",
                });
            }
            if stat.st_uid != rustix::process::geteuid().as_raw() {
                return Err(SegmentError::ForeignOwner {
                    name: name.to_owned(),
                    uid: stat.st_uid,
                });
            }
            let mode = stat.st_mode & 0o777;
            if mode != self.mode {
                return Err(SegmentError::Permissions {
                    name: name.to_owned(),
                    mode,
                    expected: self.mode,
                });
            }
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    // Nobody is attached. A leaked object is kept; anything else
                    // of ours is stale (its users were killed) and is reclaimed.
                    if Self::reclaim_if_stale(name, &fd)? {
                        return Ok(None);
                    }
                    rustix::fs::flock(&fd, FlockOperation::LockShared).map_err(io("flock"))?;
                }
                Err(Errno::WOULDBLOCK) => {
                    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared) {
                        Ok(()) => {}
                        Err(Errno::WOULDBLOCK) => {
                            // Someone holds it exclusively: a reclaimer or the last one out, briefly.
                            if Instant::now() >= deadline {
                                return Err(SegmentError::NotInitialized {
                                    name: name.to_owned(),
                                });
                            }
                            std::thread::sleep(Duration::from_micros(200));
                            continue;
                        }
                        Err(source) => return Err(io("flock")(source)),
                    }
                }
                Err(source) => return Err(io("flock")(source)),
            }
            // Locked; make sure the name still refers to this object (it may
            // have been unlinked between our open and our lock).
            if !is_linked(name, fd.as_fd()) {
                continue;
            }
            if Probe::read(fd.as_fd(), name)?.shrunk() {
                // Processes are attached (else it was reclaimed above): it is
                // reclaimed once they have all gone, which may be about to
                // happen (they fail on their next access), so wait a while.
                if Instant::now() >= deadline {
                    return Err(SegmentError::Truncated {
                        name: name.to_owned(),
                    });
                }
                drop(fd);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let (map, file_len) = Self::map(fd.as_fd(), name, self.access)?;
            let info = self.validate(&map, file_len, name);
            // Shrunk between the probe and the header check: whatever the
            // check said, it read zeros.
            if map.is_truncated() {
                return Err(SegmentError::Truncated {
                    name: name.to_owned(),
                });
            }
            let info = info?;
            return Ok(Some(Segment {
                map,
                fd,
                info,
                name: Some(name.to_owned()),
                owner: false,
                created: false,
            }));
        }
    }

    /// With the exclusive lock held on `fd`: removes the object if it is one of
    /// ours and not leaked, or if it was shrunk (an outlive object cut below its
    /// header page or payload, or an empty file: its data is gone, leaked or
    /// not). Returns whether it was removed. A foreign or unreadable object is
    /// never removed: it gives an error instead.
    fn reclaim_if_stale(name: &str, fd: &OwnedFd) -> Result<bool, SegmentError> {
        if Probe::read(fd.as_fd(), name)?.shrunk() {
            let _ = unlink_if_ours(name, fd.as_fd(), || {});
            return Ok(true);
        }
        let (map, file_len) = Self::map(fd.as_fd(), name, Access::ReadOnly)?;
        match RawHeader::check(&map.region(), file_len) {
            Ok(info) if info.flags & FLAG_LEAKED != 0 => return Ok(false),
            Ok(_) | Err(HeaderFault::Initialising) => {}
            Err(fault) => return Err(fault_error(fault, name)),
        }
        drop(map);
        let _ = unlink_if_ours(name, fd.as_fd(), || {});
        Ok(true)
    }
}

fn fault_error(fault: HeaderFault, name: &str) -> SegmentError {
    let name = name.to_owned();
    match fault {
        HeaderFault::Empty | HeaderFault::Initialising => SegmentError::NotInitialized { name },
        HeaderFault::Corrupt(what) => SegmentError::Corrupt { name, what },
        HeaderFault::Version(found) => SegmentError::VersionMismatch {
            name,
            found,
            expected: crate::header::FORMAT_VERSION,
        },
    }
}
