//! The snapshot file format: header, page records, commit records.
//!
//! This module holds the header and record encoding and the page index;
//! [`restore`](mod@restore) reads a log (torn tails, damage, salvage), [`writer`]
//! appends to one and compacts it, and [`files`] creates, replaces and
//! cleans up the files a log lives in.

use std::collections::HashMap;

use crate::error::{ErrorKind, SnapshotError};
use crate::storage::Storage;

// Crash points (`SHM_CRASH_AT`) of the `fault-injection` feature; nothing at
// the call sites otherwise (see `shm_sync::crash`). Defined before the
// submodules so that they see it.
macro_rules! crash_point {
    ($name:literal) => {
        shm_sync::crash_point!($name)
    };
}

pub(crate) mod files;
mod restore;
mod writer;

pub use files::{compact_temp_path, create_temp_beside, remove_stale_compaction};
pub use restore::{
    Damage, OnDamage, RestoreOptions, Salvage, inspect, restore, restore_with,
    restore_with_progress,
};
pub use writer::{Snapshot, SnapshotWriter};

/// The first eight bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"OUTLSNP1";
/// The format version this library writes: 2, whose commit records carry
/// an 8-byte tag ([`Snapshot::commit_tagged`]). Version 1 files (commit
/// records without a payload) are read, and appended to, as well; a
/// compaction rewrites them as version 2.
pub const VERSION: u32 = 2;
/// The oldest format version this library reads.
pub const MIN_VERSION: u32 = 1;
/// Length of the file header.
pub const HEADER_LEN: u64 = 64;
/// Length of a record header (a page record's payload follows it).
pub const RECORD_LEN: u64 = 32;
const REC_LEN: u64 = RECORD_LEN;
/// Length of a commit record in a file this library writes: the record
/// header and the 8-byte tag.
pub const COMMIT_LEN: u64 = RECORD_LEN + 8;
const REC_MAGIC: u32 = 0x5245_4331;
const KIND_PAGE: u32 = 1;
const KIND_COMMIT: u32 = 2;
/// Largest base generation accepted in a header: far beyond any real count,
/// and far enough below `u64::MAX` that generation arithmetic never overflows.
const MAX_GENERATION: u64 = 1 << 62;
/// Largest page size accepted in a header.
const MAX_PAGE: u32 = 1 << 24;

/// Parsed header plus what a scan of the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The file's format version ([`MIN_VERSION`]..=[`VERSION`]; [`VERSION`]
    /// for an all-zero file).
    pub version: u32,
    /// Page size of the records.
    pub page_size: u32,
    /// Size of the snapshotted region.
    pub region_size: u64,
    /// Newest valid generation (the header's base generation if no commit follows it).
    pub generation: u64,
    /// The tag of generation [`FileInfo::generation`]: what its commit
    /// record carries ([`Snapshot::commit_tagged`]), or the header's base
    /// tag if no commit follows it. Always 0 in a version 1 file, which
    /// stores no tags. After a salvage, the tag of the newest intact commit
    /// record up to the salvaged generation.
    pub tag: u64,
    /// Number of valid commits found.
    pub commits: u64,
    /// End of the last valid commit record: everything after it is ignored.
    pub valid_end: u64,
    /// The storage length.
    pub file_len: u64,
    /// Bytes after the last valid commit, up to the end, that are space the
    /// writer keeps, not a torn tail: zeros it reserved
    /// ([`SnapshotWriter::set_reserve`]), or the records of an older log
    /// that a compaction reused ([`SnapshotWriter::compact_onto`]), all of
    /// generations up to this log's base (a torn record written over them
    /// counts with them). 0 when anything else follows the last commit.
    pub reserved: u64,
    /// Whether the file was all zeros (a fresh state of `region_size` bytes).
    pub all_zero: bool,
    /// Damage in the middle of the log: invalid records with intact, once
    /// durable snapshots after them. `None` for an intact file and for a
    /// torn tail (what a crash leaves).
    pub damage: Option<Damage>,
}

/// Result of [`restore`].
///
/// # Examples
/// A start that rebuilds its state from a snapshot file and goes on writing
/// the same file:
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shm_snapshot::{MemStorage, SnapshotWriter, restore};
///
/// let mut writer = SnapshotWriter::create(MemStorage::default(), 4096, 8192)?;
/// let mut state = vec![0u8; 8192];
/// state[0] = 1;
/// writer.snapshot(&state)?;
/// state[4096] = 2;
/// writer.snapshot(&state)?;
/// let storage = writer.storage().clone(); // the file, as the next start finds it
/// drop(writer);
///
/// let mut back = vec![0u8; 8192];
/// let restored = restore(&storage, |offset, bytes| {
///     let at = offset as usize;
///     back[at..at + bytes.len()].copy_from_slice(bytes);
/// })?;
/// assert_eq!(back, state);
/// assert_eq!((restored.info.generation, restored.info.commits), (2, 2));
/// assert_eq!(restored.index.len(), 2); // both pages have a stored version
/// assert!(restored.salvage.is_none()); // the file was intact
///
/// // Continue the file from what was restored: the next snapshot is generation 3.
/// let mut writer = SnapshotWriter::open_restored(storage, restored)?;
/// state[1] = 3;
/// assert_eq!(writer.snapshot(&state)?, 3);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Restored {
    /// What the scan found.
    pub info: FileInfo,
    /// Where the newest committed version of each page is (for
    /// [`SnapshotWriter::open_restored`]).
    pub index: PageIndex,
    /// What an [`OnDamage::Salvage`] restore rebuilt, if it had to.
    pub salvage: Option<Salvage>,
    /// Whether the restore stopped before the file's newest generation or
    /// worked around damage: the state is not the file's, so
    /// [`SnapshotWriter::open_restored`] refuses to continue the file.
    partial: bool,
    /// The header's base generation.
    base: u64,
}

/// Per page, the newest committed version in a file: the CRC-32C of its
/// bytes and the file offset of its payload. Pages not listed are all zero.
///
/// A map rather than a table sized by the header's region: its size is
/// bounded by the records actually in the file, whatever a header claims.
#[derive(Debug, Default, Clone)]
pub struct PageIndex {
    pages: HashMap<u64, (u32, u64)>,
}

impl PageIndex {
    /// Pages with a stored version (including stored all-zero pages).
    #[must_use]
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether no page has a stored version.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

fn rd<S: Storage + ?Sized>(s: &S, off: u64, buf: &mut [u8]) -> Result<(), SnapshotError> {
    s.read_at(off, buf)
        .map_err(|e| SnapshotError::io("read", e))
}

fn header_bytes(page_size: u32, region_size: u64, base_generation: u64, base_tag: u64) -> [u8; 64] {
    let mut h = [0u8; 64];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&page_size.to_le_bytes());
    h[16..24].copy_from_slice(&region_size.to_le_bytes());
    h[24..32].copy_from_slice(&base_generation.to_le_bytes());
    h[32..40].copy_from_slice(&base_tag.to_le_bytes());
    let crc = crc32c(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// The CRC-32C (Castagnoli, CRC-32/ISCSI) of `bytes`: the checksum of every
/// header, record and page of the format. From crc-fast, which folds with
/// carry-less multiplies (VPCLMULQDQ where the CPU has it): 4 KiB pages in
/// half the time of the crc32c crate's three streams of `crc32`
/// instructions (23-26 us against 50-51 us per MiB on the benchmark VM).
/// Both compute the same function, so files are unchanged.
#[allow(clippy::cast_possible_truncation)] // a CRC-32: below 2^32
fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// `crc32c(a ‖ bytes)` from `crc` = `crc32c(a)`: for payloads that are not
/// a whole 4 KiB page (a commit's tag, a region's short last page). The
/// crc32c crate's, which continues from a CRC in a few nanoseconds where
/// crc-fast's `checksum_combine` takes about 2 us.
fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

fn record_header(kind: u32, generation: u64, index: u64, payload: &[u8]) -> [u8; 32] {
    record_header_hashed(kind, generation, index, payload, None)
}

/// [`record_header`] for a payload whose `crc32c` the caller already has:
/// for a 4 KiB page the record checksum is then derived from it
/// ([`PageCrc`]) instead of reading the page a second time.
fn record_header_hashed(
    kind: u32,
    generation: u64,
    index: u64,
    payload: &[u8],
    payload_crc: Option<u32>,
) -> [u8; 32] {
    let mut r = [0u8; 32];
    r[0..4].copy_from_slice(&REC_MAGIC.to_le_bytes());
    r[4..8].copy_from_slice(&kind.to_le_bytes());
    r[8..16].copy_from_slice(&generation.to_le_bytes());
    r[16..24].copy_from_slice(&index.to_le_bytes());
    #[allow(clippy::cast_possible_truncation)] // payload is at most one page (< 2^24)
    r[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let head = crc32c(&r[0..28]);
    let crc = match payload_crc {
        Some(p) if payload.len() == PageCrc::LEN => PageCrc::get().combine(head, p),
        _ => crc32c_append(head, payload),
    };
    r[28..32].copy_from_slice(&crc.to_le_bytes());
    r
}

/// `crc32c(a ‖ b)` from `crc32c(a)` and `crc32c(b)` when `b` is 4096 bytes
/// long. Appending `n` bytes to a CRC is `M_n(crc(a)) ^ crc(b)` with `M_n` a
/// linear map over GF(2) (the technique of zlib's `crc32_combine`); `M_4096`
/// is tabulated once here, one table per byte of its input. The crc32c
/// crate's `crc32c_combine` rebuilds the operator on every call (about a
/// microsecond), which would cost more than reading the page again.
struct PageCrc {
    table: [[u32; 256]; 4],
}

impl PageCrc {
    const LEN: usize = 4096;

    fn get() -> &'static PageCrc {
        static TABLE: std::sync::OnceLock<PageCrc> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| {
            let mut table = [[0u32; 256]; 4];
            for (j, row) in table.iter_mut().enumerate() {
                for (v, cell) in (0u32..).zip(row.iter_mut()) {
                    // combine(x, 0, n) = M_n(x): the operator applied to one input byte.
                    *cell = crc32c::crc32c_combine(v << (8 * j), 0, Self::LEN);
                }
            }
            PageCrc { table }
        })
    }

    fn combine(&self, crc_a: u32, crc_b: u32) -> u32 {
        let [b0, b1, b2, b3] = crc_a.to_le_bytes();
        self.table[0][usize::from(b0)]
            ^ self.table[1][usize::from(b1)]
            ^ self.table[2][usize::from(b2)]
            ^ self.table[3][usize::from(b3)]
            ^ crc_b
    }
}

fn page_len(page_size: u32, region_size: u64, index: u64) -> u64 {
    let start = index * u64::from(page_size);
    u64::from(page_size).min(region_size - start)
}

/// Whether bytes `0..len` are all zero. Holes of a sparse file are skipped
/// without reading them ([`Storage::data_from`]).
fn is_all_zero<S: Storage + ?Sized>(s: &S, len: u64) -> Result<bool, SnapshotError> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0;
    while off < len {
        match s
            .data_from(off)
            .map_err(|e| SnapshotError::io("seek data", e))?
        {
            Some(data) if data < len => off = data,
            _ => return Ok(true),
        }
        let n = usize::try_from((len - off).min(CHUNK as u64)).unwrap_or(CHUNK);
        rd(s, off, &mut buf[..n])?;
        if buf[..n] != zeros[..n] {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

/// A checked header, and the file length it was read with.
#[derive(Debug, Clone, Copy)]
struct Parsed {
    header: Header,
    file_len: u64,
}

fn parse_header<S: Storage + ?Sized>(s: &S) -> Result<Parsed, SnapshotError> {
    let len = s.len().map_err(|e| SnapshotError::io("stat", e))?;
    if len == 0 {
        return Err(SnapshotError::new(ErrorKind::Empty, "file is empty"));
    }
    if len < HEADER_LEN {
        if is_all_zero(s, len)? {
            return Err(SnapshotError::new(
                ErrorKind::BadGeometry,
                format!("all-zero file of {len} bytes is too small for a state region"),
            ));
        }
        return Err(SnapshotError::new(
            ErrorKind::Truncated,
            format!("file is {len} bytes, shorter than the {HEADER_LEN}-byte header"),
        ));
    }
    let mut h = [0u8; 64];
    rd(s, 0, &mut h)?;
    if h[0..8] != MAGIC {
        if h.iter().all(|&b| b == 0) && is_all_zero(s, len)? {
            return Ok(Parsed {
                header: Header {
                    version: VERSION,
                    page_size: 4096,
                    region_size: len,
                    base_generation: 0,
                    base_tag: 0,
                    all_zero: true,
                },
                file_len: len,
            });
        }
        return Err(SnapshotError::new(
            ErrorKind::Foreign,
            "not a snapshot file (bad magic)",
        ));
    }
    if crc32c(&h[0..60]) != u32_at(&h, 60) {
        return Err(SnapshotError::new(
            ErrorKind::CorruptHeader,
            "header checksum mismatch",
        ));
    }
    let version = u32_at(&h, 8);
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(SnapshotError::new(
            ErrorKind::Version,
            format!(
                "unsupported format version {version} (this build reads {MIN_VERSION} to {VERSION})"
            ),
        ));
    }
    let page_size = u32_at(&h, 12);
    let region_size = u64_at(&h, 16);
    if page_size == 0 || page_size > MAX_PAGE || !page_size.is_power_of_two() {
        return Err(SnapshotError::new(
            ErrorKind::BadGeometry,
            format!("bad page size {page_size}"),
        ));
    }
    if region_size == 0 || region_size > (1 << 48) {
        return Err(SnapshotError::new(
            ErrorKind::BadGeometry,
            format!("bad region size {region_size}"),
        ));
    }
    let base = u64_at(&h, 24);
    if base > MAX_GENERATION {
        return Err(SnapshotError::new(
            ErrorKind::BadGeometry,
            format!("implausible base generation {base}"),
        ));
    }
    Ok(Parsed {
        header: Header {
            version,
            page_size,
            region_size,
            base_generation: base,
            // Reserved (zero) in version 1.
            base_tag: if version >= 2 { u64_at(&h, 32) } else { 0 },
            all_zero: false,
        },
        file_len: len,
    })
}

/// What a file's header says, without scanning the log: enough to size the
/// region before [`restore`] fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The format version ([`VERSION`] for an all-zero file).
    pub version: u32,
    /// Page size of the records.
    pub page_size: u32,
    /// Size of the snapshotted region (for an all-zero file, the file's size).
    pub region_size: u64,
    /// The generation before the first record of the log.
    pub base_generation: u64,
    /// The tag of the base generation (0 in version 1).
    pub base_tag: u64,
    /// Whether the file is all zeros (a fresh state of `region_size` bytes).
    pub all_zero: bool,
}

/// Reads and checks a file's header.
///
/// # Errors
/// As [`restore`].
pub fn read_header<S: Storage + ?Sized>(s: &S) -> Result<Header, SnapshotError> {
    parse_header(s).map(|p| p.header)
}

/// The client's crash point inside `commit` (between the copy and the even store).
#[inline]
pub(crate) fn crash_point_client() {
    crash_point!("client.mid_commit");
}

#[cfg(test)]
mod tests {
    use super::{PageCrc, crc32c, crc32c_append, record_header, record_header_hashed};

    #[test]
    fn derived_page_checksum_equals_the_direct_one() {
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..200u64 {
            let page: Vec<u8> = (0..PageCrc::LEN).map(|_| next() as u8).collect();
            let (g, i) = (next(), next() % 1000);
            let h = crc32c(&page);
            let kind = 1 + (round % 2) as u32;
            assert_eq!(
                record_header_hashed(kind, g, i, &page, Some(h)),
                record_header(kind, g, i, &page),
                "round {round}"
            );
        }
        // Other lengths take the direct path.
        let short = [7u8; 100];
        assert_eq!(
            record_header_hashed(1, 1, 1, &short, Some(crc32c(&short))),
            record_header(1, 1, 1, &short)
        );
    }

    /// The format's CRC-32C (crc-fast) against the crc32c crate, at every
    /// length crc-fast's code paths switch between (up to a few folding
    /// blocks, both sides of 4096) and at every alignment of the input.
    #[test]
    fn crc32c_is_the_crc32c_crates_at_every_length_and_alignment() {
        let bytes: Vec<u8> = (0..9000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(crc32c(b"123456789"), 0xE306_9283, "the CRC-32C check value");
        for len in (0..=600).chain([1023, 1024, 1025, 4095, 4096, 4097, 8191, 8192]) {
            for skew in 0..8 {
                let b = &bytes[skew..skew + len];
                assert_eq!(crc32c(b), crc32c::crc32c(b), "length {len}, skew {skew}");
            }
        }
        let head = crc32c(&bytes[..28]);
        assert_eq!(crc32c_append(head, &bytes[28..36]), crc32c(&bytes[..36]));
    }
}
