//! [`SegmentBuilder`]: the options of a segment, and creating, opening or
//! adopting one (memfds and adopted fds here; named objects in `named`).

use core::sync::atomic::Ordering; // atomics-ok: header words in shared memory
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::error::{fault_error, io_err};
use super::named::check_name;
use super::{Segment, SegmentError};
use crate::header::{
    DATA_OFFSET, FLAG_LAST_OUT_UNLINKS, FLAG_LEAKED, HeaderFault, HeaderInfo, Layout, RawHeader,
    STATE_EMPTY, STATE_INITIALISING,
};
use crate::mapping::{Access, Mapping};
use crate::memfd;
use crate::region::Region;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) enum Source {
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
    pub(super) mode: u32,
    last_out_unlinks: bool,
    pub(super) persistent: bool,
    pub(super) timeout: Duration,
    pub(super) access: Access,
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

impl SegmentBuilder {
    pub(super) fn new(source: Source) -> SegmentBuilder {
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

    pub(super) fn payload_len(&self) -> u64 {
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

    pub(super) fn map(
        fd: BorrowedFd<'_>,
        name: &str,
        access: Access,
    ) -> Result<(Mapping, u64), SegmentError> {
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
    pub(super) fn validate(
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
    pub(super) fn init_in_place(
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
}
