//! Small measurement helpers, shared by the benchmark and the tour: ring
//! throughput next to a pipe, both between two threads of this process.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// One page, page-aligned: the unit of [`AlignedBuf`].
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// A page-aligned byte buffer (glibc's memcpy slows down sharply when source
/// and destination sit at some offsets modulo 4 KiB; aligned staging avoids it).
pub struct AlignedBuf {
    pages: Vec<Page>,
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl AlignedBuf {
    /// `len` zero bytes, starting on a page boundary.
    pub fn new(len: usize) -> AlignedBuf {
        AlignedBuf {
            pages: vec![Page([0; 4096]); len.div_ceil(4096)],
            len,
        }
    }
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.pages.as_bytes()[..self.len]
    }
    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.pages.as_mut_bytes()[..self.len]
    }
}

/// Bytes per second moved by one run.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Bytes moved.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Throughput {
    /// Bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "a rate, not an exact count")]
        let bytes = self.bytes as f64;
        bytes / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Moves `total` bytes through a byte-stream ring in `chunk`-byte writes from one
/// thread to another (ring of `ring_bytes`, a power of two).
pub fn ring_stream(total: u64, chunk: usize, ring_bytes: u64) -> std::io::Result<Throughput> {
    let (mut tx, mut rx) = crate::channel::<u8>(ring_bytes).map_err(std::io::Error::other)?;
    stream_between_threads(
        total,
        chunk,
        move |buf| tx.write_all(buf),
        move |buf| rx.read(buf),
    )
}

/// The same through a pipe (`pipe2`), for comparison.
pub fn pipe_stream(total: u64, chunk: usize) -> std::io::Result<Throughput> {
    let (r, w) = rustix::pipe::pipe()?;
    let mut w = std::fs::File::from(w);
    let mut r = std::fs::File::from(r);
    stream_between_threads(
        total,
        chunk,
        move |buf| w.write_all(buf),
        move |buf| r.read(buf),
    )
}

fn stream_between_threads(
    total: u64,
    chunk: usize,
    mut write: impl FnMut(&[u8]) -> std::io::Result<()> + Send + 'static,
    mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
) -> std::io::Result<Throughput> {
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = AlignedBuf::new(chunk);
        buf.as_mut_slice().fill(0x5a);
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk as u64) as usize;
            write(&buf.as_slice()[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let mut buf = AlignedBuf::new(chunk);
    let mut got = 0u64;
    while got < total {
        match read(buf.as_mut_slice())? {
            0 => break,
            n => got += n as u64,
        }
    }
    writer
        .join()
        .map_err(|_| std::io::Error::other("writer thread panicked"))??;
    if got != total {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "stream ended early",
        ));
    }
    Ok(Throughput {
        bytes: total,
        elapsed: start.elapsed(),
    })
}
