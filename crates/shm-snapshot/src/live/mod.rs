//! The client/host commit protocol on the live memfd.
//!
//! The memfd is an `shm-segment` segment (see `docs/PROTOCOL.md` for its
//! header; all little-endian, see `docs/protocol/shm-snapshot.md`). Its
//! payload starts with a 4096-byte control page: a config block with the
//! geometry (magic, layout version, page size, page count, state size, and
//! the offsets of the parts below), then the commit sequence `seq`, then
//! reserved words. Then come the page-stamp table (one `u64` per 4096-byte
//! page of the state: the commit that last changed it), the work area
//! (`region_size` bytes, rounded up to 4096) and the committed copy (same
//! size). The layout and its validation are in `layout.rs`, the client's
//! steps in `client.rs`, the host's in `host.rs`; both are generic over
//! where the words live (`words.rs`: the memfd's mapping, or heap words for
//! the loom models, which thereby check this very code).
//!
//! The client edits the work area freely and calls [`Client::commit`] at a
//! consistent point: it makes `seq` odd, stamps the dirty pages with the new
//! generation, copies them from the work area into the committed copy and
//! makes `seq` even again. It never waits for the host; the copy may be
//! spread over the client's own helper threads
//! ([`Client::set_copy_threads`], `copier.rs`), and on one thread the commit
//! is wait-free (no loop waits for anyone). The host maps the memfd read-only. [`Host::copy`] copies the whole committed
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
mod copier;
mod durable;
mod host;
mod layout;
mod waiter;
mod words;

pub use client::{Client, TrackedCommit};
pub use durable::{Level, Publisher, ReplicatedPublisher, WaitError, Waker};
pub(crate) use host::PageSink;
pub use host::{COPY_PASSES, Changed, Host};
pub use layout::{
    CLIENT_LOCK_BYTE, CONTROL_LEN, HOST_LOCK_BYTE, Initializer, LIVE_MAGIC, LIVE_VERSION, PAGE,
    initialize, memfd_size,
};
pub use waiter::Waiter;

/// The real commit and copy code on heap words, for the loom models
/// (`tests/loom.rs`; only with `--cfg shm_loom`). Each call runs
/// [`Client::commit`]'s and [`Host::copy`]'s or [`Host::copy_changed`]'s
/// code, generic over the storage, with an optional negative control that
/// skips the one fence under test.
#[cfg(shm_loom)]
pub mod model {
    use std::ops::Range;

    pub use super::Changed;
    use super::client::RawClient;
    use super::copier::{self, Copier};
    use super::host::RawHost;
    use super::layout::{Geometry, SEQ_OFF};
    use super::words::HeapWords;

    /// Whether the fence under test runs (the protocol) or is skipped (a
    /// negative control, which the model must catch).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Fence {
        /// The protocol as written.
        Kept,
        /// The control: the client's Release fence between stamps and copy,
        /// or the host's Acquire fence before its re-check, is skipped.
        Skipped,
    }

    /// A live payload on the heap: `pages` pages of `page` bytes each (a
    /// power of two, at least 8) of state, at generation 0 and all zero.
    /// The control page shrinks to the words up to `seq`, which stays at its
    /// offset; everything else is the memfd's layout.
    #[derive(Debug)]
    pub struct HeapLive {
        words: std::sync::Arc<HeapWords>,
        geo: Geometry,
        /// One copy helper thread (`Client::set_copy_threads(2)`), if any.
        copier: Option<Copier<std::sync::Arc<HeapWords>>>,
    }

    impl HeapLive {
        /// A payload of `pages` pages of `page` bytes, all zero, at generation 0.
        ///
        /// # Panics
        /// If `page` is not a power of two of at least 8 bytes.
        #[must_use]
        pub fn new(pages: usize, page: usize) -> HeapLive {
            let geo = Geometry::build((pages * page) as u64, page as u64, SEQ_OFF as u64 + 8)
                .expect("a small power-of-two page");
            HeapLive {
                words: std::sync::Arc::new(HeapWords::new(geo.len)),
                geo,
                copier: None,
            }
        }

        /// [`HeapLive::new`] whose commits copy on two threads, as a client
        /// with `set_copy_threads(2)` and `set_copy_part_min(page)`: the
        /// committing thread and one helper thread, started here, whose
        /// Release fence before its copy runs or is skipped as `fence` says.
        #[must_use]
        pub fn with_helper(pages: usize, page: usize, fence: Fence) -> HeapLive {
            let mut live = HeapLive::new(pages, page);
            live.copier = Some(Copier::build(
                live.words.clone(),
                live.geo,
                1,
                fence == Fence::Skipped,
            ));
            live
        }

        /// The program edits its state: writes `bytes` at `offset` of the
        /// work area (Relaxed; only the client's thread may call it).
        pub fn edit(&self, offset: usize, bytes: &[u8]) {
            self.words.write(self.geo.work + offset, bytes);
        }

        /// `Client::commit(dirty)`; returns the new generation. With a
        /// helper, a commit of at least two pages is split into one-page
        /// chunks that the two threads claim.
        pub fn commit(&self, dirty: &[Range<usize>], fence: Fence) -> u64 {
            let mut client = RawClient::new(&*self.words, self.geo);
            client.skip_fence = fence == Fence::Skipped;
            let threads = copier::clipped_bytes(dirty, self.geo.region) / self.geo.page;
            match &self.copier {
                Some(c) => client.publish_on(dirty, |d, lead| c.copy(d, threads, lead)),
                None => client.publish(dirty),
            }
        }

        /// `Host::copy(dst, tries)`.
        pub fn copy(&self, dst: &mut [u8], tries: usize, fence: Fence) -> Option<u64> {
            self.host(fence).copy(dst, tries)
        }

        /// `Host::copy_changed(since, visit)`.
        ///
        /// # Errors
        /// The first error of `visit`.
        pub fn copy_changed<E>(
            &self,
            since: u64,
            visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
            fence: Fence,
        ) -> Result<Changed, E> {
            self.host(fence).copy_changed(since, visit)
        }

        fn host(&self, fence: Fence) -> RawHost<&HeapWords> {
            let mut host = RawHost::new(&*self.words, self.geo);
            host.skip_fence = fence == Fence::Skipped;
            host
        }
    }
}

/// The real durable-commit handshake on heap words, for the loom models
/// (`tests/loom.rs`; only with `--cfg shm_loom`): [`Client::wait_durable`]'s
/// (and [`Client::wait_replicated`]'s: the same routine on the other
/// published word) request and wait steps, and the host's publish and its
/// sleep on `requests`, with the futex modelled by a mutex and a condition
/// variable (untimed: a lost wake-up is a deadlock loom reports).
#[cfg(shm_loom)]
pub mod durable_model {
    pub use super::Level;
    use super::durable::{RawDurable, WaitSpin};
    use super::words::HeapControl;

    /// Whether the host bumps the futex word after storing the value (the
    /// protocol) or skips it (a negative control loom must catch).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Bump {
        /// The protocol as written.
        Kept,
        /// The control: only the store and the wake, no bump.
        Skipped,
    }

    /// The control words of one memfd, on the heap.
    #[derive(Debug, Default)]
    pub struct HeapDurable(HeapControl);

    impl HeapDurable {
        fn raw(&self, bump: Bump) -> RawDurable<&HeapControl> {
            let mut raw = RawDurable::new(&self.0);
            raw.skip_bump = bump == Bump::Skipped;
            raw
        }

        /// A client asks for `generation` and waits until it is durable;
        /// returns the durable generation.
        pub fn request_and_wait(&self, generation: u64) -> u64 {
            self.request_and_wait_level(generation, Level::Durable)
        }

        /// A client asks for `generation` at `level` and waits until it
        /// reaches it; returns the generation published at that level.
        pub fn request_and_wait_level(&self, generation: u64, level: Level) -> u64 {
            let raw = self.raw(Bump::Kept);
            let spin = WaitSpin::new();
            // Polling on (it is off by default), so the model runs it.
            spin.set_cap(std::time::Duration::from_secs(1));
            let _waiting = spin.enter();
            raw.request(generation, level);
            // `Client::wait_durable_level`'s poll (one round under loom).
            if level == Level::Durable
                && let Some(d) = spin.poll(&raw, level.word(), generation)
            {
                return d;
            }
            loop {
                if let Some(d) = raw.wait_step(level.word(), generation, None) {
                    return d;
                }
            }
        }

        /// The host sleeps until some client wants at least `generation`
        /// (`SnapshotHost::wait_for_work`'s order: `requests`, then
        /// `wanted`, then the sleep), then publishes it.
        pub fn serve(&self, generation: u64, bump: Bump) {
            let raw = self.raw(bump);
            loop {
                let seen = raw.requests();
                if raw.wanted() >= generation {
                    break;
                }
                // `SnapshotHost::wait_for_work`'s poll (one round under
                // loom), then the sleep.
                if raw.poll_requests(seen, std::time::Instant::now()) {
                    continue;
                }
                raw.sleep(seen, None);
            }
            raw.publish(Level::Durable.word(), generation);
        }

        /// The host publishes `generation` at `level` without waiting for
        /// a request (the uploader after an upload, for
        /// [`Level::Replicated`]).
        pub fn publish_level(&self, generation: u64, level: Level, bump: Bump) {
            self.raw(bump).publish(level.word(), generation);
        }

        /// The host publishes `generation` without waiting for a request.
        pub fn publish(&self, generation: u64, bump: Bump) {
            self.publish_level(generation, Level::Durable, bump);
        }

        /// The durable generation.
        pub fn durable(&self) -> u64 {
            self.raw(Bump::Kept).durable()
        }

        /// The generation published at `level`.
        pub fn published(&self, level: Level) -> u64 {
            self.raw(Bump::Kept).published(level.word())
        }

        /// The highest generation a client waits to see replicated.
        pub fn wanted_replicated(&self) -> u64 {
            self.raw(Bump::Kept).wanted_replicated()
        }
    }
}

/// The generic protocol code on heap words, outside loom: what the loom
/// models drive, checked here in plain runs too.
#[cfg(test)]
mod tests {
    use shm_sync::atomic::Ordering;

    use super::Changed;
    use super::client::RawClient;
    use super::host::RawHost;
    use super::layout::{Geometry, SEQ_OFF};
    use super::words::{HeapWords, Words, WordsMut};

    /// Four 16-byte pages, the control words up to `seq`.
    fn heap() -> (HeapWords, Geometry) {
        let geo = Geometry::build(64, 16, SEQ_OFF as u64 + 8).unwrap();
        (HeapWords::new(geo.len), geo)
    }

    fn visited(host: &RawHost<&HeapWords>, since: u64) -> (Changed, Vec<(u64, Vec<u8>)>) {
        let mut seen = Vec::new();
        let r = host.copy_changed(since, |p, b| {
            seen.push((p, b.to_vec()));
            Ok::<(), ()>(())
        });
        (r.unwrap(), seen)
    }

    #[test]
    fn durable_handshake_on_heap_words() {
        use super::durable::RawDurable;
        use super::durable::{DURABLE, Level, REPLICATED};
        use super::words::HeapControl;
        let ctl = HeapControl::default();
        let raw = RawDurable::new(&ctl);
        assert_eq!(raw.durable(), 0);
        let seen = raw.requests();
        raw.request(3, Level::Durable);
        assert_eq!(raw.requests(), seen + 1);
        assert_eq!(raw.wanted(), 3);
        assert_eq!(raw.wanted_replicated(), 0);
        raw.request(2, Level::Replicated);
        assert_eq!(raw.wanted(), 3, "fetch_max keeps the highest");
        assert_eq!(raw.wanted_replicated(), 2);
        raw.publish(DURABLE, 3);
        assert_eq!(raw.wait_step(DURABLE, 3, None), Some(3));
        assert_eq!(raw.wait_step(DURABLE, 1, None), Some(3));
        // The replicated word is its own: untouched by the durable publish.
        assert_eq!(raw.published(REPLICATED), 0);
        raw.publish(REPLICATED, 2);
        assert_eq!(raw.wait_step(REPLICATED, 2, None), Some(2));
        assert_eq!(raw.durable(), 3);
        assert!(!raw.replica_on());
        raw.set_replica(true);
        assert!(raw.replica_on());
        // Wake on commit only in that mode.
        let before = raw.requests();
        raw.after_commit();
        assert_eq!(raw.requests(), before);
        raw.set_wake_on_commit(true);
        raw.after_commit();
        assert_eq!(raw.requests(), before + 1);
    }

    #[test]
    fn heap_words_copy_bytes_at_any_alignment() {
        let sut = HeapWords::new(64);
        sut.write(3, b"0123456789abcdef");
        let mut out = [0u8; 16];
        sut.read(3, &mut out);
        assert_eq!(&out, b"0123456789abcdef");
        sut.copy(3, 35, 16);
        assert!(sut.same(0, 32, 24));
        sut.write(40, b"x");
        assert!(!sut.same(0, 32, 24));
    }

    #[test]
    fn commit_publishes_the_dirty_pages_and_nothing_else() {
        let (words, geo) = heap();
        let (client, host) = (RawClient::new(&words, geo), RawHost::new(&words, geo));
        words.write(geo.work + 20, b"abc");
        assert_eq!(client.publish(std::slice::from_ref(&(20..23))), 1);
        words.write(geo.work + 50, b"uncommitted");
        let mut buf = [0u8; 64];
        assert_eq!(host.copy(&mut buf, 1), Some(1));
        assert_eq!(&buf[20..23], b"abc");
        assert!(buf[50..61].iter().all(|&b| b == 0));
        let mut page1 = [0u8; 16];
        page1[4..7].copy_from_slice(b"abc");
        assert_eq!(
            visited(&host, 0),
            (Changed::Complete(1), vec![(1, page1.to_vec())])
        );
        assert_eq!(visited(&host, 1), (Changed::Nothing, vec![]));
        assert_eq!(client.generation(), 1);
    }

    #[test]
    fn recovery_finishes_the_commit_a_client_died_in() {
        let (words, geo) = heap();
        let (client, host) = (RawClient::new(&words, geo), RawHost::new(&words, geo));
        // A client killed inside commit 1: `seq` odd, both dirty pages
        // stamped, page 0 copied, page 1 not yet.
        words.write(geo.work, &[1; 32]);
        words.store(SEQ_OFF, 1, Ordering::Relaxed);
        words.fill(geo.stamps, 2, 1);
        words.copy(geo.work, geo.committed, 16);
        assert!(host.died_in_commit());
        client.recover().unwrap();
        assert_eq!(words.load(SEQ_OFF), 2);
        let (changed, seen) = visited(&host, 0);
        assert_eq!(changed, Changed::Complete(1));
        assert_eq!(seen, vec![(0, vec![1; 16]), (1, vec![1; 16])]);
        // Uncommitted edits of a client that died outside a commit are discarded.
        words.write(geo.work + 40, b"lost");
        client.recover().unwrap();
        assert!(words.same(geo.work, geo.committed, 64));
    }
}
