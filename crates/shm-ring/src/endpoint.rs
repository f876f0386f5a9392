//! [`Producer`] and [`Consumer`]: the typed, blocking and zero-copy API over a mapped ring.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::claim::{self, Claim, End};
use crate::core::{RawConsumer, RawProducer, RingError};
use crate::evloop::Readiness;
use crate::fds::{self, OpenError, Parker, RingFds};
use crate::layout::ElemLayout;
use crate::peer::PeerLink;
use crate::storage::{MapStorage, Storage};

/// Types a ring can carry: plain data valid for every bit pattern, so that
/// whatever a (possibly hostile) peer leaves in a slot is a valid `T`.
pub trait Element: FromBytes + IntoBytes + Immutable + Send {}
impl<T: FromBytes + IntoBytes + Immutable + Send> Element for T {}

/// How long a blocking call spins before it parks, by default.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);

/// A full ring hands the value back; so does a failure.
pub enum TrySendError<T> {
    /// No free slot.
    Full(T),
    /// The ring is unusable ([`RingError::Corrupt`]) or an I/O error occurred while waking the peer
    /// (in which case the value *was* sent; it is handed back only for uniformity).
    Failed(T, RingError),
}

/// A blocking send failed; the value is handed back.
pub struct SendError<T> {
    /// The value that was not sent.
    pub value: T,
    /// Why ([`RingError::Timeout`], [`RingError::Disconnected`], ...).
    pub error: RingError,
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Failed(_, e) => f.debug_tuple("Failed").field(&"..").field(e).finish(),
        }
    }
}
impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("ring is full"),
            TrySendError::Failed(_, e) => write!(f, "send failed: {e}"),
        }
    }
}
impl<T> std::error::Error for TrySendError<T> {}
impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}
impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "send failed: {}", self.error)
    }
}
impl<T> std::error::Error for SendError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A contiguous run of free slots lent to [`Producer::send_with`]; writes copy in.
#[derive(Debug)]
pub struct SlotsMut<'a, T> {
    storage: &'a MapStorage,
    first: u64,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Element> SlotsMut<'_, T> {
    /// Number of slots lent.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no slot is lent.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Writes `value` into slot `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn set(&mut self, i: usize, value: &T) {
        assert!(i < self.len, "slot {i} of {}", self.len);
        self.storage.write(self.first + i as u64, value.as_bytes());
    }
    /// Copies `values` into slots `i..i + values.len()`.
    ///
    /// # Panics
    /// If the range exceeds `len()`.
    pub fn copy_from_slice(&mut self, i: usize, values: &[T]) {
        assert!(
            i.checked_add(values.len())
                .is_some_and(|end| end <= self.len),
            "slots {i}+{} of {}",
            values.len(),
            self.len
        );
        self.storage.write(self.first + i as u64, values.as_bytes());
    }
}

/// A contiguous run of ready elements lent to [`Consumer::recv_with`]; reads copy out.
#[derive(Debug)]
pub struct Slots<'a, T> {
    storage: &'a MapStorage,
    first: u64,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Element> Slots<'_, T> {
    /// Number of elements lent.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no element is lent.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// A copy of element `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn get(&self, i: usize) -> T {
        assert!(i < self.len, "slot {i} of {}", self.len);
        let mut value = T::new_zeroed();
        self.storage
            .read(self.first + i as u64, value.as_mut_bytes());
        value
    }
    /// Copies elements `i..i + out.len()` into `out`.
    ///
    /// # Panics
    /// If the range exceeds `len()`.
    pub fn copy_to_slice(&self, i: usize, out: &mut [T]) {
        assert!(
            i.checked_add(out.len()).is_some_and(|end| end <= self.len),
            "slots {i}+{} of {}",
            out.len(),
            self.len
        );
        self.storage.read(self.first + i as u64, out.as_mut_bytes());
    }
}

/// The sending end of a ring. `Send`, not `Clone`: one producer at a time.
#[derive(Debug)]
pub struct Producer<T> {
    pub(crate) raw: RawProducer<MapStorage>,
    /// The claim, the fds and the spin (the consumer's eventfd is
    /// `data_ready`).
    pub(crate) end: EndFds,
    /// The last zero-copy send published nothing: the next one reloads `head`.
    declined: bool,
    _t: PhantomData<fn(T) -> T>,
}

/// The receiving end of a ring. `Send`, not `Clone`: one consumer at a time.
#[derive(Debug)]
pub struct Consumer<T> {
    pub(crate) raw: RawConsumer<MapStorage>,
    /// The claim, the fds and the spin (the producer's eventfd is
    /// `space_ready`).
    pub(crate) end: EndFds,
    /// The last zero-copy receive released nothing: the next one reloads `tail`.
    declined: bool,
    _t: PhantomData<fn(T) -> T>,
}

/// What either end holds besides its side of the ring: its claim, the
/// peer's eventfd it notifies, its parker (its own eventfd and the peer
/// socket), the readiness fd for event loops, and how long it spins.
#[derive(Debug)]
pub(crate) struct EndFds {
    /// Our claim on this end (released when dropped or when the process dies).
    _claim: Claim,
    /// The peer's eventfd.
    wake: OwnedFd,
    pub(crate) parker: Parker,
    /// The readiness fd for external event loops (`evloop.rs`).
    pub(crate) readiness: Readiness,
    spin: Duration,
}

impl EndFds {
    /// Claims `end` of the ring of `fds` (before the end attaches: attaching
    /// writes the end's line), parking on `own` and notifying `peer_ready`.
    fn open(
        fds: &RingFds,
        end: End,
        own: &OwnedFd,
        peer_ready: &OwnedFd,
        peer: Option<PeerLink>,
    ) -> Result<Self, OpenError> {
        let claim = claim::claim(fds.memfd.as_fd(), end)?;
        let parker = Parker {
            eventfd: dup(own)?,
            peer: peer.map(PeerLink::into_socket),
        };
        Ok(Self {
            _claim: claim,
            wake: dup(peer_ready)?,
            readiness: Readiness::new(&parker)?,
            parker,
            spin: DEFAULT_SPIN,
        })
    }

    /// Wakes the peer.
    fn notify(&self) -> Result<(), RingError> {
        fds::notify(self.wake.as_fd())
    }

    fn set_peer(&mut self, peer: Option<PeerLink>) {
        let peer = peer.map(PeerLink::into_socket);
        self.readiness.set_peer(
            self.parker.peer.as_ref().map(AsFd::as_fd),
            peer.as_ref().map(AsFd::as_fd),
        );
        self.parker.peer = peer;
    }

    fn peer_gone(&self) -> bool {
        self.parker
            .peer
            .as_ref()
            .is_some_and(|p| fds::peer_gone(p.as_fd()))
    }
}

fn layout_of<T>(tag: u64) -> Result<ElemLayout, OpenError> {
    let elem = ElemLayout::of::<T>().with_tag(tag);
    if elem.size == 0 || elem.align > crate::layout::MAX_ELEM_ALIGN {
        return Err(OpenError::ElementType {
            size: elem.size,
            align: elem.align,
        });
    }
    Ok(elem)
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, OpenError> {
    fd.try_clone().map_err(|e| OpenError::Io {
        op: "dup",
        source: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::BADF),
    })
}

/// Creates an in-process ring of at least `capacity` elements and returns both ends.
///
/// The capacity is rounded up to a power of two (1000 gives 1024; see
/// [`layout::round_capacity`](crate::layout::round_capacity)); the ends'
/// `capacity()` tells the actual one. The two ends are linked by a socket
/// pair, as a server and its client are: dropping one is a hang-up for the
/// other, whose blocking and async calls then end with
/// [`RingError::Disconnected`] (a consumer first gets everything sent).
///
/// # Errors
/// [`OpenError::Layout`] for a capacity of 0 ([`LayoutError::ZeroCapacity`](crate::LayoutError::ZeroCapacity)),
/// past 2^63 ([`LayoutError::CapacityOverflow`](crate::LayoutError::CapacityOverflow)) or
/// whose slots would exceed 1 TiB ([`LayoutError::TooLarge`](crate::LayoutError::TooLarge));
/// [`OpenError::ElementType`] for a zero-sized or over-aligned `T`; OS errors.
///
/// # Examples
/// ```
/// let (mut tx, mut rx) = shm_ring::channel::<[u8; 16]>(1000)?;
/// assert_eq!(tx.capacity(), 1024);
/// tx.send([1; 16])?;
/// drop(tx);
/// assert_eq!(rx.recv()?, [1; 16]);
/// assert!(matches!(rx.recv(), Err(shm_ring::RingError::Disconnected)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn channel<T: Element>(capacity: u64) -> Result<(Producer<T>, Consumer<T>), OpenError> {
    let fds = RingFds::create("shm-ring", capacity, layout_of::<T>(0)?)?;
    let (tx_link, rx_link) = in_process_links()?;
    Ok((
        Producer::open(&fds, Some(tx_link))?,
        Consumer::open(&fds, Some(rx_link))?,
    ))
}

/// Two connected sockets standing for the two ends of an in-process channel.
fn in_process_links() -> Result<(PeerLink, PeerLink), OpenError> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|source| OpenError::Io {
        op: "socketpair",
        source,
    })?;
    let link = |socket| PeerLink {
        socket,
        pid: std::process::id(),
        uid: rustix::process::geteuid().as_raw(),
    };
    Ok((link(a), link(b)))
}

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

impl<T: Element> Producer<T> {
    /// Opens the producer end of `fds` (element tag 0), resuming at the shared `tail`.
    ///
    /// The end is claimed first (one producer per ring, see
    /// `docs/protocol/shm-ring.md`): while another live Producer holds it, in
    /// this process or another, this fails with [`OpenError::InUse`]; a dead
    /// holder's claim (its process exited or was killed) is taken over.
    /// `peer` is the socket whose hang-up means the consumer is gone.
    pub fn open(fds: &RingFds, peer: Option<PeerLink>) -> Result<Producer<T>, OpenError> {
        Producer::open_tagged(fds, 0, peer)
    }

    /// Like [`Producer::open`] for a ring whose element layout carries `tag`.
    pub fn open_tagged(
        fds: &RingFds,
        tag: u64,
        peer: Option<PeerLink>,
    ) -> Result<Producer<T>, OpenError> {
        let storage = fds.open_storage(layout_of::<T>(tag)?)?;
        let end = EndFds::open(fds, End::Producer, &fds.space_ready, &fds.data_ready, peer)?;
        Ok(Producer {
            raw: RawProducer::attach(storage)?,
            end,
            declined: false,
            _t: PhantomData,
        })
    }

    /// Elements committed so far over the ring's life (a restarted producer resumes here).
    pub fn position(&self) -> u64 {
        self.raw.position()
    }
    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.raw.capacity()
    }
    /// How long blocking calls spin before parking (default 20 us; zero parks at once).
    pub fn set_spin(&mut self, spin: Duration) {
        self.end.spin = spin;
    }
    /// Replaces the peer socket (a new consumer connected to the same ring).
    /// The [readiness fd](Self::readiness_fd) watches the new one from now on.
    pub fn set_peer(&mut self, peer: Option<PeerLink>) {
        self.end.set_peer(peer);
    }
    /// Whether a peer socket is set and shows a hang-up.
    pub fn peer_gone(&self) -> bool {
        self.end.peer_gone()
    }

    /// Shuts down the sending side of the peer socket: the consumer sees the
    /// hang-up (after draining the ring) as if this end had been dropped.
    #[cfg(feature = "tokio")]
    pub(crate) fn hang_up(&self) -> Result<(), RingError> {
        let Some(peer) = &self.end.parker.peer else {
            return Ok(());
        };
        match rustix::net::shutdown(peer, rustix::net::Shutdown::Write) {
            // Not connected: the consumer is already gone.
            Ok(()) | Err(rustix::io::Errno::NOTCONN) => Ok(()),
            Err(source) => Err(RingError::Io {
                op: "shutdown",
                source,
            }),
        }
    }

    pub(crate) fn committed(&mut self, n: u64) -> Result<(), RingError> {
        crate::crash_point!("ring.before_commit");
        if self.raw.commit(n) {
            self.end.notify()?;
        }
        Ok(())
    }

    /// Sends `value` if a slot is free.
    pub fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        match self.raw.reserve(1) {
            Ok((_, 0)) => Err(TrySendError::Full(value)),
            Ok((slot, _)) => {
                self.raw.write(slot, value.as_bytes());
                crate::crash_point!("ring.before_commit");
                if self.raw.commit_one(value.as_bytes())
                    && let Err(e) = self.end.notify()
                {
                    return Err(TrySendError::Failed(value, e));
                }
                Ok(())
            }
            Err(e) => Err(TrySendError::Failed(value, e.into())),
        }
    }

    /// Sends `value`, blocking while the ring is full.
    pub fn send(&mut self, value: T) -> Result<(), SendError<T>> {
        self.send_timeout(value, None)
    }

    /// Sends `value`, blocking at most `timeout` (forever if `None`) while the ring is full.
    pub fn send_timeout(
        &mut self,
        mut value: T,
        timeout: Option<Duration>,
    ) -> Result<(), SendError<T>> {
        let deadline = deadline(timeout);
        loop {
            match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Failed(value, error)) => return Err(SendError { value, error }),
                Err(TrySendError::Full(v)) => value = v,
            }
            if let Err(error) = self
                .raw
                .wait(1, self.end.spin, &mut self.end.parker, deadline)
            {
                return Err(SendError { value, error });
            }
        }
    }

    /// Copies as many of `items` as fit (possibly 0) and publishes them together.
    pub fn try_send_slice(&mut self, items: &[T]) -> Result<usize, RingError> {
        let mut done = 0;
        while done < items.len() {
            let (slot, n) = self.raw.reserve((items.len() - done) as u64)?;
            if n == 0 {
                break;
            }
            let n = n as usize;
            self.raw.write(slot, items[done..done + n].as_bytes());
            done += n;
            // Publishing the first run before reserving the wrapped one keeps `reserve` simple.
            self.committed(n as u64)?;
        }
        Ok(done)
    }

    /// Sends a prefix of `items`, blocking (at most `timeout`) until at least one fits; returns its length.
    pub fn send_slice(
        &mut self,
        items: &[T],
        timeout: Option<Duration>,
    ) -> Result<usize, RingError> {
        let deadline = deadline(timeout);
        loop {
            let n = self.try_send_slice(items)?;
            if n > 0 || items.is_empty() {
                return Ok(n);
            }
            self.raw
                .wait(1, self.end.spin, &mut self.end.parker, deadline)?;
        }
    }

    /// Sends all of `items`, blocking as needed; on error, `Ok` count is lost but
    /// [`Producer::position`] tells how far it got.
    pub fn send_all(
        &mut self,
        mut items: &[T],
        timeout: Option<Duration>,
    ) -> Result<(), RingError> {
        let deadline = deadline(timeout);
        while !items.is_empty() {
            let n = self.try_send_slice(items)?;
            items = &items[n..];
            if n == 0 {
                self.raw.wait(
                    items.len() as u64,
                    self.end.spin,
                    &mut self.end.parker,
                    deadline,
                )?;
            }
        }
        Ok(())
    }

    /// Zero-copy batch: lends the contiguous free run at the tail (possibly
    /// empty) to `fill`, which writes slots and returns how many to publish.
    ///
    /// The run is what this side last saw free: the consumer's `head` is
    /// reloaded only when that is less than half the ring, or when the
    /// previous zero-copy send published nothing (so a caller waiting for a
    /// run of some length sees the consumer's progress on its next call).
    ///
    /// # Panics
    /// If `fill` returns more than it was lent.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut tx, mut rx) = shm_ring::channel::<u32>(8)?;
    /// // Write straight into the free slots, publishing three of them.
    /// let sent = tx.send_with(|mut slots| {
    ///     let n = slots.len().min(3);
    ///     for i in 0..n {
    ///         slots.set(i, &(10 * i as u32));
    ///     }
    ///     n
    /// })?;
    /// assert_eq!(sent, 3);
    /// assert_eq!(tx.position(), 3);
    /// assert_eq!(rx.try_recv()?, Some(0));
    /// assert_eq!(rx.try_recv()?, Some(10));
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_with<F: FnOnce(SlotsMut<'_, T>) -> usize>(
        &mut self,
        fill: F,
    ) -> Result<usize, RingError> {
        let (first, len) = self.lend_free()?;
        let slots = SlotsMut {
            storage: self.raw.storage(),
            first,
            len: len as usize,
            _t: PhantomData,
        };
        let n = fill(slots);
        assert!(
            n as u64 <= len,
            "send_with: {n} slots published, {len} lent"
        );
        self.lent_published(n)
    }

    /// The run a zero-copy send lends (see [`Producer::send_with`]).
    pub(crate) fn lend_free(&mut self) -> Result<(u64, u64), RingError> {
        let capacity = self.raw.capacity();
        let reload_below = if self.declined {
            capacity
        } else {
            capacity.div_ceil(2)
        };
        Ok(self.raw.reserve_cached(reload_below, capacity)?)
    }

    /// Publishes `n` elements written into a lent run.
    pub(crate) fn lent_published(&mut self, n: usize) -> Result<usize, RingError> {
        self.declined = n == 0;
        self.committed(n as u64)?;
        Ok(n)
    }

    /// Blocks until at least `want` slots are free (capped at the capacity).
    pub fn wait_writable(
        &mut self,
        want: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, RingError> {
        let n = self.raw.wait(
            want as u64,
            self.end.spin,
            &mut self.end.parker,
            deadline(timeout),
        )?;
        Ok(n as usize)
    }

    /// The mapping (for tests that play a hostile peer).
    #[doc(hidden)]
    pub fn mapping_for_tests(&self) -> &shm_segment::Mapping {
        self.raw.storage().mapping()
    }
}

impl<T: Element> Consumer<T> {
    /// Opens the consumer end of `fds` (element tag 0), resuming at the shared `head`.
    ///
    /// The end is claimed first (one consumer per ring, see
    /// `docs/protocol/shm-ring.md`): while another live Consumer holds it, in
    /// this process or another, this fails with [`OpenError::InUse`]; a dead
    /// holder's claim (its process exited or was killed) is taken over.
    /// `peer` is the socket whose hang-up means the producer is gone.
    pub fn open(fds: &RingFds, peer: Option<PeerLink>) -> Result<Consumer<T>, OpenError> {
        Consumer::open_tagged(fds, 0, peer)
    }

    /// Like [`Consumer::open`] for a ring whose element layout carries `tag`.
    pub fn open_tagged(
        fds: &RingFds,
        tag: u64,
        peer: Option<PeerLink>,
    ) -> Result<Consumer<T>, OpenError> {
        let storage = fds.open_storage(layout_of::<T>(tag)?)?;
        let end = EndFds::open(fds, End::Consumer, &fds.data_ready, &fds.space_ready, peer)?;
        Ok(Consumer {
            raw: RawConsumer::attach(storage)?,
            end,
            declined: false,
            _t: PhantomData,
        })
    }

    /// Elements released so far over the ring's life (a restarted consumer resumes here).
    pub fn position(&self) -> u64 {
        self.raw.position()
    }
    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.raw.capacity()
    }
    /// How long blocking calls spin before parking (default 20 us; zero parks at once).
    pub fn set_spin(&mut self, spin: Duration) {
        self.end.spin = spin;
    }
    /// Replaces the peer socket (a new producer connected to the same ring).
    /// The [readiness fd](Self::readiness_fd) watches the new one from now on.
    pub fn set_peer(&mut self, peer: Option<PeerLink>) {
        self.end.set_peer(peer);
    }
    /// Whether a peer socket is set and shows a hang-up.
    pub fn peer_gone(&self) -> bool {
        self.end.peer_gone()
    }

    pub(crate) fn released(&mut self, n: u64) -> Result<(), RingError> {
        if self.raw.release(n) {
            self.end.notify()?;
        }
        Ok(())
    }

    /// The next element, or `None` if the ring is empty.
    pub fn try_recv(&mut self) -> Result<Option<T>, RingError> {
        let (slot, n) = self.raw.peek(1)?;
        if n == 0 {
            return Ok(None);
        }
        let mut value = T::new_zeroed();
        self.raw.read_one(slot, value.as_mut_bytes());
        self.released(1)?;
        Ok(Some(value))
    }

    /// The next element, blocking while the ring is empty.
    pub fn recv(&mut self) -> Result<T, RingError> {
        self.recv_timeout(None)
    }

    /// The next element, blocking at most `timeout` (forever if `None`).
    pub fn recv_timeout(&mut self, timeout: Option<Duration>) -> Result<T, RingError> {
        let deadline = deadline(timeout);
        loop {
            if let Some(v) = self.try_recv()? {
                return Ok(v);
            }
            self.raw
                .wait(self.end.spin, &mut self.end.parker, deadline)?;
        }
    }

    /// Copies up to `out.len()` ready elements into `out` (possibly 0) and releases them.
    pub fn try_recv_slice(&mut self, out: &mut [T]) -> Result<usize, RingError> {
        let mut done = 0;
        while done < out.len() {
            let (slot, n) = self.raw.peek((out.len() - done) as u64)?;
            if n == 0 {
                break;
            }
            let n = n as usize;
            self.raw.read(slot, out[done..done + n].as_mut_bytes());
            done += n;
            self.released(n as u64)?;
        }
        Ok(done)
    }

    /// Receives at least one element into `out`, blocking at most `timeout`; returns the count.
    pub fn recv_slice(
        &mut self,
        out: &mut [T],
        timeout: Option<Duration>,
    ) -> Result<usize, RingError> {
        let deadline = deadline(timeout);
        loop {
            let n = self.try_recv_slice(out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            self.raw
                .wait(self.end.spin, &mut self.end.parker, deadline)?;
        }
    }

    /// Zero-copy batch: lends the contiguous run of ready elements at the head
    /// (possibly empty) to `take`, which returns how many to release.
    ///
    /// The run is what this side last saw ready: the producer's `tail` is
    /// reloaded when that is nothing, or when the previous zero-copy receive
    /// released nothing (so a caller waiting for a run of some length sees
    /// the producer's progress on its next call).
    ///
    /// # Panics
    /// If `take` returns more than it was lent.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut tx, mut rx) = shm_ring::channel::<u32>(8)?;
    /// tx.send_slice(&[1, 2, 3, 4], None)?;
    /// // Read the ready elements in place and release all of them.
    /// let mut sum = 0;
    /// let taken = rx.recv_with(|slots| {
    ///     for i in 0..slots.len() {
    ///         sum += slots.get(i);
    ///     }
    ///     slots.len()
    /// })?;
    /// assert_eq!((taken, sum), (4, 10));
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv_with<F: FnOnce(Slots<'_, T>) -> usize>(
        &mut self,
        take: F,
    ) -> Result<usize, RingError> {
        let (first, len) = self.lend_ready()?;
        let slots = Slots {
            storage: self.raw.storage(),
            first,
            len: len as usize,
            _t: PhantomData,
        };
        let n = take(slots);
        assert!(n as u64 <= len, "recv_with: {n} released, {len} lent");
        self.lent_released(n)
    }

    /// The run a zero-copy receive lends (see [`Consumer::recv_with`]).
    pub(crate) fn lend_ready(&mut self) -> Result<(u64, u64), RingError> {
        let capacity = self.raw.capacity();
        Ok(if self.declined {
            self.raw.peek_fresh(capacity)?
        } else {
            self.raw.peek(capacity)?
        })
    }

    /// Releases `n` elements of a lent run.
    pub(crate) fn lent_released(&mut self, n: usize) -> Result<usize, RingError> {
        self.declined = n == 0;
        self.released(n as u64)?;
        Ok(n)
    }

    /// Blocks until at least one element is ready; returns the ready count.
    pub fn wait_readable(&mut self, timeout: Option<Duration>) -> Result<usize, RingError> {
        let n = self
            .raw
            .wait(self.end.spin, &mut self.end.parker, deadline(timeout))?;
        Ok(n as usize)
    }

    /// The mapping (for tests that play a hostile peer).
    #[doc(hidden)]
    pub fn mapping_for_tests(&self) -> &shm_segment::Mapping {
        self.raw.storage().mapping()
    }
}

/// Byte-stream mode: `write` blocks until at least one byte fits.
impl std::io::Write for Producer<u8> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.send_slice(buf, None).map_err(into_io)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Byte-stream mode: `read` blocks until at least one byte is ready; 0 means the producer hung up.
impl std::io::Read for Consumer<u8> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.recv_slice(buf, None) {
            Err(RingError::Disconnected) => Ok(0),
            r => r.map_err(into_io),
        }
    }
}

pub(crate) fn into_io(e: RingError) -> std::io::Error {
    let kind = match &e {
        RingError::Disconnected => std::io::ErrorKind::BrokenPipe,
        RingError::Timeout => std::io::ErrorKind::TimedOut,
        RingError::Corrupt(_) => std::io::ErrorKind::InvalidData,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, e)
}
