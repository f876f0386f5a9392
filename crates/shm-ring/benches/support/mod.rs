//! A page-aligned buffer for the benchmark and the bulk-transfer test (kept
//! out of the library: it is a measurement aid, not part of the ring's API).
//!
//! Included by `benches/ring.rs` (`mod support;`) and by
//! `tests/process/main.rs` (`#[path = "../../benches/support/mod.rs"]`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// One page, page-aligned: the unit of [`AlignedBuf`].
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// A page-aligned byte buffer (glibc's memcpy slows down sharply when source
/// and destination sit at some offsets modulo 4 KiB; aligned staging avoids it).
pub(crate) struct AlignedBuf {
    pages: Vec<Page>,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes, starting on a page boundary.
    pub(crate) fn new(len: usize) -> AlignedBuf {
        AlignedBuf {
            pages: vec![Page([0; 4096]); len.div_ceil(4096)],
            len,
        }
    }
    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.pages.as_bytes()[..self.len]
    }
    /// The bytes, mutably.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.pages.as_mut_bytes()[..self.len]
    }
}
