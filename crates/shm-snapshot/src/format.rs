//! The snapshot file format: header, page records, commit records.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{ErrorKind, SnapshotError};
use crate::storage::{FileStorage, Storage};

#[cfg(feature = "fault-injection")]
use shm_testkit::crash_point;
#[cfg(not(feature = "fault-injection"))]
macro_rules! crash_point {
    ($name:literal) => {};
}

/// The first eight bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"OUTLSNP1";
/// The format version this library writes and reads.
pub const VERSION: u32 = 1;
/// Length of the file header.
pub const HEADER_LEN: u64 = 64;
const REC_LEN: u64 = 32;
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
    /// Page size of the records.
    pub page_size: u32,
    /// Size of the snapshotted region.
    pub region_size: u64,
    /// Newest valid generation (the header's base generation if no commit follows it).
    pub generation: u64,
    /// Number of valid commits found.
    pub commits: u64,
    /// End of the last valid commit record: everything after it is ignored.
    pub valid_end: u64,
    /// The storage length.
    pub file_len: u64,
    /// Whether the file was all zeros (a fresh state of `region_size` bytes).
    pub all_zero: bool,
}

/// Result of [`restore`].
#[derive(Debug)]
pub struct Restored {
    /// What the scan found.
    pub info: FileInfo,
    /// Where the newest committed version of each page is (for
    /// [`SnapshotWriter::open_restored`]).
    pub index: PageIndex,
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

fn header_bytes(page_size: u32, region_size: u64, base_generation: u64) -> [u8; 64] {
    let mut h = [0u8; 64];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&page_size.to_le_bytes());
    h[16..24].copy_from_slice(&region_size.to_le_bytes());
    h[24..32].copy_from_slice(&base_generation.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..60]);
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
    let head = crc32c::crc32c(&r[0..28]);
    let crc = match payload_crc {
        Some(p) if payload.len() == PageCrc::LEN => PageCrc::get().combine(head, p),
        _ => crc32c::crc32c_append(head, payload),
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

fn parse_header<S: Storage + ?Sized>(s: &S) -> Result<(u32, u64, u64, bool, u64), SnapshotError> {
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
            return Ok((4096, len, len, true, 0));
        }
        return Err(SnapshotError::new(
            ErrorKind::Foreign,
            "not a snapshot file (bad magic)",
        ));
    }
    if crc32c::crc32c(&h[0..60]) != u32_at(&h, 60) {
        return Err(SnapshotError::new(
            ErrorKind::CorruptHeader,
            "header checksum mismatch",
        ));
    }
    let version = u32_at(&h, 8);
    if version != VERSION {
        return Err(SnapshotError::new(
            ErrorKind::Version,
            format!("unsupported format version {version} (this build reads {VERSION})"),
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
    Ok((page_size, region_size, len, false, base))
}

/// What a file's header says, without scanning the log: enough to size the
/// region before [`restore`] fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Page size of the records.
    pub page_size: u32,
    /// Size of the snapshotted region (for an all-zero file, the file's size).
    pub region_size: u64,
    /// The generation before the first record of the log.
    pub base_generation: u64,
    /// Whether the file is all zeros (a fresh state of `region_size` bytes).
    pub all_zero: bool,
}

/// Reads and checks a file's header.
///
/// # Errors
/// As [`restore`].
pub fn read_header<S: Storage + ?Sized>(s: &S) -> Result<Header, SnapshotError> {
    let (page_size, region_size, _, all_zero, base_generation) = parse_header(s)?;
    Ok(Header {
        page_size,
        region_size,
        base_generation,
        all_zero,
    })
}

/// Replays the log into the caller's region, which must start all zero:
/// `apply(offset, bytes)` writes `bytes` at `offset` of the region. When
/// `restore` returns `Ok`, the region holds exactly the newest committed
/// generation.
///
/// The file is read once, front to back, in large chunks; each page is
/// applied as soon as its record's checksum is verified. Pages of an
/// uncommitted tail (a snapshot cut short by a crash) are therefore applied
/// too, and then put back: each is overwritten with its newest committed
/// version (read again from the file) or with zeros. `apply` must simply
/// overwrite; the last call for an offset wins.
///
/// # Errors
/// A clear [`SnapshotError`] for an empty, truncated, foreign, corrupt-header
/// or unreadable file. A torn or corrupt log tail is not an error: it ends the
/// replay at the last valid commit.
pub fn restore<S: Storage + ?Sized>(
    s: &S,
    apply: impl FnMut(u64, &[u8]),
) -> Result<Restored, SnapshotError> {
    restore_with_progress(s, apply, |_, _| {})
}

/// Bytes read per call while replaying.
const READ_CHUNK: u64 = 1 << 18;

/// [`restore`], reporting `progress(bytes_read, file_len)` after each chunk read.
///
/// # Errors
/// As [`restore`].
pub fn restore_with_progress<S: Storage + ?Sized>(
    s: &S,
    mut apply: impl FnMut(u64, &[u8]),
    mut progress: impl FnMut(u64, u64),
) -> Result<Restored, SnapshotError> {
    let (page_size, region_size, file_len, all_zero, base) = parse_header(s)?;
    let mut info = FileInfo {
        page_size,
        region_size,
        generation: base,
        commits: 0,
        valid_end: if all_zero { 0 } else { HEADER_LEN },
        file_len,
        all_zero,
    };
    if all_zero {
        progress(file_len, file_len);
        return Ok(Restored {
            info,
            index: PageIndex::default(),
        });
    }
    let ps = u64::from(page_size);
    let pages = region_size.div_ceil(ps);
    // The window [win_off, win_off + win_len) of the file held in `buf`; one
    // record (header and payload) always fits.
    let cap = READ_CHUNK.max(2 * (REC_LEN + ps));
    let mut buf = vec![0u8; usize::try_from(cap).unwrap_or(usize::MAX)];
    let (mut win_off, mut win_len) = (HEADER_LEN, 0u64);
    // Newest committed version of each page written so far, and the pages
    // applied since the last commit (index, (crc, payload offset)).
    let mut committed = PageIndex::default();
    let mut pending: Vec<(u64, (u32, u64))> = Vec::new();
    let mut off = HEADER_LEN;
    while off + REC_LEN <= file_len {
        if off + REC_LEN > win_off + win_len {
            win_off = off;
            win_len = cap.min(file_len - off);
            rd(s, off, &mut buf[..usize::try_from(win_len).unwrap_or(0)])?;
            progress(off + win_len, file_len);
        }
        let at = usize::try_from(off - win_off).unwrap_or(0);
        let rh: [u8; 32] = buf[at..at + 32].try_into().unwrap_or([0; 32]);
        if u32_at(&rh, 0) != REC_MAGIC || u64_at(&rh, 8) != info.generation + 1 {
            break;
        }
        let kind = u32_at(&rh, 4);
        let index = u64_at(&rh, 16);
        let plen = u64::from(u32_at(&rh, 24));
        let expected = match kind {
            KIND_PAGE if index < pages => page_len(page_size, region_size, index),
            KIND_COMMIT if index == pending.len() as u64 => 0,
            _ => break,
        };
        if plen != expected || off + REC_LEN + plen > file_len {
            break;
        }
        if off + REC_LEN + plen > win_off + win_len {
            // The payload runs past the window: slide it to this record.
            win_off = off;
            win_len = cap.min(file_len - off);
            rd(s, off, &mut buf[..usize::try_from(win_len).unwrap_or(0)])?;
            progress(off + win_len, file_len);
        }
        let at = usize::try_from(off - win_off).unwrap_or(0) + REC_LEN as usize;
        let payload = &buf[at..at + usize::try_from(plen).unwrap_or(0)];
        let head = crc32c::crc32c(&rh[0..28]);
        // One pass over the payload: its own CRC (kept in the index), from
        // which a 4 KiB page's record checksum is derived.
        let page_crc = crc32c::crc32c(payload);
        let record_crc = if payload.len() == PageCrc::LEN {
            PageCrc::get().combine(head, page_crc)
        } else {
            crc32c::crc32c_append(head, payload)
        };
        if record_crc != u32_at(&rh, 28) {
            break;
        }
        if kind == KIND_PAGE {
            apply(index * ps, payload);
            pending.push((index, (page_crc, off + REC_LEN)));
        } else {
            committed.pages.extend(pending.drain(..));
            info.generation += 1;
            info.commits += 1;
            info.valid_end = off + REC_LEN;
        }
        off += REC_LEN + plen;
    }
    // Put back the pages of the uncommitted tail.
    let mut page = vec![0u8; page_size as usize];
    for (index, _) in pending {
        let l = usize::try_from(page_len(page_size, region_size, index)).unwrap_or(0);
        match committed.pages.get(&index) {
            Some(&(_, poff)) => rd(s, poff, &mut page[..l])?,
            None => page[..l].fill(0),
        }
        apply(index * ps, &page[..l]);
    }
    Ok(Restored {
        info,
        index: committed,
    })
}

/// Scans a file without keeping its contents.
///
/// # Errors
/// As [`restore`].
pub fn inspect<S: Storage + ?Sized>(s: &S) -> Result<FileInfo, SnapshotError> {
    restore(s, |_, _| {}).map(|r| r.info)
}

/// Appends incremental snapshots to a storage.
///
/// Only pages whose checksum differs from their newest durable version are
/// written; a snapshot counts once its commit returned `Ok` (after the
/// storage's sync). The writer keeps no copy of the state: per page it
/// knows the checksum and the file offset of the newest durable version
/// ([`PageIndex`]), which is all that incremental writes and compaction need.
#[derive(Debug)]
pub struct SnapshotWriter<S: Storage> {
    storage: S,
    page_size: u32,
    region_size: u64,
    generation: u64,
    end: u64,
    index: PageIndex,
    /// CRC-32C of an all-zero page, and of the (possibly shorter) last page.
    zero_crc: u32,
    zero_last_crc: u32,
    /// Bytes appended by the last snapshot.
    pub last_bytes_written: u64,
    batch: usize,
}

impl<S: Storage> SnapshotWriter<S> {
    /// Starts a new file (generation 0 = all zeros) on `storage`, replacing its contents.
    ///
    /// # Errors
    /// Bad geometry or I/O errors.
    pub fn create(mut storage: S, page_size: u32, region_size: u64) -> Result<Self, SnapshotError> {
        if page_size == 0
            || page_size > MAX_PAGE
            || !page_size.is_power_of_two()
            || region_size == 0
        {
            return Err(SnapshotError::new(
                ErrorKind::BadGeometry,
                "bad page or region size",
            ));
        }
        storage
            .set_len(0)
            .map_err(|e| SnapshotError::io("truncate", e))?;
        storage
            .write_at(0, &header_bytes(page_size, region_size, 0))
            .map_err(|e| SnapshotError::io("write header", e))?;
        storage
            .sync()
            .map_err(|e| SnapshotError::io("fdatasync", e))?;
        Ok(Self::with_index(
            storage,
            page_size,
            region_size,
            0,
            HEADER_LEN,
            PageIndex::default(),
        ))
    }

    fn with_index(
        storage: S,
        page_size: u32,
        region_size: u64,
        generation: u64,
        end: u64,
        index: PageIndex,
    ) -> Self {
        let pages = region_size.div_ceil(u64::from(page_size));
        let last = page_len(page_size, region_size, pages - 1);
        let zeros = vec![0u8; page_size as usize];
        Self {
            storage,
            page_size,
            region_size,
            generation,
            end,
            index,
            zero_crc: crc32c::crc32c(&zeros),
            zero_last_crc: crc32c::crc32c(&zeros[..usize::try_from(last).unwrap_or(0)]),
            last_bytes_written: 0,
            batch: 1 << 20,
        }
    }

    /// Continues an existing file: scans it ([`restore`] without keeping
    /// the state) and cuts off any torn tail durably before the next append.
    ///
    /// # Errors
    /// As [`restore`], and I/O errors.
    pub fn open(storage: S) -> Result<Self, SnapshotError> {
        let restored = restore(&storage, |_, _| {})?;
        Self::open_restored(storage, restored)
    }

    /// [`SnapshotWriter::open`] without scanning the file again: `restored`
    /// must come from a [`restore`] of this same storage.
    ///
    /// # Errors
    /// As [`SnapshotWriter::open`].
    pub fn open_restored(mut storage: S, restored: Restored) -> Result<Self, SnapshotError> {
        let Restored { info, index } = restored;
        if info.all_zero {
            // The file holds generation 0 (all zeros): an empty index
            // describes it, so the next snapshot writes every non-zero page.
            return Self::create(storage, info.page_size, info.region_size);
        }
        if info.file_len != info.valid_end {
            storage
                .set_len(info.valid_end)
                .map_err(|e| SnapshotError::io("truncate torn tail", e))?;
            storage
                .sync()
                .map_err(|e| SnapshotError::io("fdatasync", e))?;
        }
        Ok(Self::with_index(
            storage,
            info.page_size,
            info.region_size,
            info.generation,
            info.valid_end,
            index,
        ))
    }

    /// Sets how many bytes are gathered before one write call (default 1 MiB;
    /// tests use small values to get many independently reorderable writes).
    pub fn set_write_batch(&mut self, bytes: usize) {
        self.batch = bytes.max(1);
    }

    /// The newest durable generation.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The storage length in use.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.end
    }

    /// Whether nothing but the header is stored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.end == HEADER_LEN
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The page size of the records.
    #[must_use]
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The size of the snapshotted region.
    #[must_use]
    pub fn region_size(&self) -> u64 {
        self.region_size
    }

    fn pages(&self) -> u64 {
        self.region_size.div_ceil(u64::from(self.page_size))
    }

    /// The checksum of page `index`'s newest durable version.
    fn crc_of(&self, index: u64) -> u32 {
        match self.index.pages.get(&index) {
            Some(&(crc, _)) => crc,
            None if index + 1 == self.pages() => self.zero_last_crc,
            None => self.zero_crc,
        }
    }

    /// Starts the next snapshot: hand it pages with [`Snapshot::page`], then
    /// [`Snapshot::commit`]. Pages not handed keep their previous contents.
    /// Dropping it without a commit discards what it appended.
    pub fn begin(&mut self) -> Snapshot<'_, S> {
        Snapshot {
            generation: self.generation + 1,
            off: self.end,
            buf: Vec::new(),
            new: Vec::new(),
            failed: false,
            done: false,
            w: self,
        }
    }

    /// Appends the changed pages of `state` and a commit record, then syncs.
    /// On error the previous snapshot stays the newest valid one and the
    /// writer stays usable (the failed tail is cut off best-effort and is
    /// ignored by readers anyway).
    ///
    /// # Errors
    /// I/O errors (e.g. a full disk); a state of the wrong size.
    pub fn snapshot(&mut self, state: &[u8]) -> Result<u64, SnapshotError> {
        if state.len() as u64 != self.region_size {
            return Err(SnapshotError::new(
                ErrorKind::SizeMismatch,
                "state size differs from the file's region size",
            ));
        }
        let ps = self.page_size as usize;
        let mut tx = self.begin();
        for (i, page) in (0u64..).zip(state.chunks(ps)) {
            tx.page(i, page)?;
        }
        tx.commit()
    }

    /// Writes a compacted copy (header plus one generation holding only the
    /// non-zero pages of the newest durable snapshot, numbered as the
    /// current generation) to `target`, synced, reading each page back from
    /// this writer's own storage. The caller swaps it in (rename, then fsync
    /// of the directory) and continues with [`SnapshotWriter::open`];
    /// [`SnapshotWriter::compact_file`] does all of that for a file.
    ///
    /// # Errors
    /// I/O errors; a page whose stored bytes no longer match the checksum
    /// they were written with (the storage changed under the writer).
    pub fn compact_into<T: Storage>(&self, target: T) -> Result<T, SnapshotError> {
        self.compact_to(target).map(|(t, _)| t)
    }

    fn compact_to<T: Storage>(&self, mut target: T) -> Result<(T, PageIndex), SnapshotError> {
        target
            .set_len(0)
            .map_err(|e| SnapshotError::io("truncate", e))?;
        target
            .write_at(
                0,
                &header_bytes(
                    self.page_size,
                    self.region_size,
                    self.generation.saturating_sub(1),
                ),
            )
            .map_err(|e| SnapshotError::io("write header", e))?;
        let mut off = HEADER_LEN;
        // The header's base generation makes this one commit carry the current number.
        let g = self.generation.max(1);
        let mut order: Vec<(u64, (u32, u64))> =
            self.index.pages.iter().map(|(&i, &v)| (i, v)).collect();
        order.sort_unstable_by_key(|&(i, _)| i);
        let mut index = PageIndex::default();
        let mut page = vec![0u8; self.page_size as usize];
        let mut buf = Vec::new();
        for (i, (crc, loc)) in order {
            let len = usize::try_from(page_len(self.page_size, self.region_size, i)).unwrap_or(0);
            let p = &mut page[..len];
            rd(&self.storage, loc, p)?;
            if crc32c::crc32c(p) != crc {
                return Err(SnapshotError::new(
                    ErrorKind::CorruptHeader,
                    format!("page {i} at offset {loc} changed on disk since it was written"),
                ));
            }
            if p.iter().all(|&b| b == 0) {
                continue;
            }
            buf.extend_from_slice(&record_header_hashed(KIND_PAGE, g, i, p, Some(crc)));
            index.pages.insert(i, (crc, off + buf.len() as u64));
            buf.extend_from_slice(p);
            if buf.len() >= self.batch {
                target
                    .write_at(off, &buf)
                    .map_err(|e| SnapshotError::io("write", e))?;
                target.start_writeback(off, buf.len() as u64);
                off += buf.len() as u64;
                buf.clear();
                crash_point!("compact.batch_written");
            }
        }
        buf.extend_from_slice(&record_header(KIND_COMMIT, g, index.len() as u64, &[]));
        target
            .write_at(off, &buf)
            .map_err(|e| SnapshotError::io("write", e))?;
        target
            .sync()
            .map_err(|e| SnapshotError::io("fdatasync", e))?;
        Ok((target, index))
    }
}

/// One snapshot being appended ([`SnapshotWriter::begin`]).
#[derive(Debug)]
pub struct Snapshot<'w, S: Storage> {
    w: &'w mut SnapshotWriter<S>,
    generation: u64,
    /// File offset where `buf` starts.
    off: u64,
    buf: Vec<u8>,
    /// Pages appended: index, crc, payload offset.
    new: Vec<(u64, u32, u64)>,
    failed: bool,
    done: bool,
}

impl<S: Storage> Snapshot<'_, S> {
    /// Hands page `index` (`bytes` is its whole content) to the snapshot.
    /// It is appended unless its checksum equals its newest durable
    /// version's; returns whether it was.
    ///
    /// # Errors
    /// An index beyond the region or a length other than the page's
    /// (`SizeMismatch`); I/O errors, after which only dropping is useful.
    pub fn page(&mut self, index: u64, bytes: &[u8]) -> Result<bool, SnapshotError> {
        let w = &mut *self.w;
        if index >= w.pages() || bytes.len() as u64 != page_len(w.page_size, w.region_size, index) {
            return Err(SnapshotError::new(
                ErrorKind::SizeMismatch,
                format!(
                    "page {index} of {} bytes does not fit the region",
                    bytes.len()
                ),
            ));
        }
        if self.failed {
            return Err(SnapshotError::new(
                ErrorKind::Io,
                "an earlier write of this snapshot failed",
            ));
        }
        let crc = crc32c::crc32c(bytes);
        if crc == w.crc_of(index) {
            return Ok(false);
        }
        self.buf.extend_from_slice(&record_header_hashed(
            KIND_PAGE,
            self.generation,
            index,
            bytes,
            Some(crc),
        ));
        self.new
            .push((index, crc, self.off + self.buf.len() as u64));
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= w.batch {
            if let Err(e) = w.storage.write_at(self.off, &self.buf) {
                self.failed = true;
                return Err(SnapshotError::io("write", e));
            }
            // Overlap the device writes with checksumming the next batch.
            w.storage.start_writeback(self.off, self.buf.len() as u64);
            self.off += self.buf.len() as u64;
            self.buf.clear();
            crash_point!("writer.batch_written");
        }
        Ok(true)
    }

    /// Pages appended so far.
    #[must_use]
    pub fn pages_written(&self) -> usize {
        self.new.len()
    }

    /// Appends the commit record and syncs: the snapshot is then durable.
    /// Returns its generation.
    ///
    /// # Errors
    /// I/O errors (e.g. a full disk): the previous snapshot stays the newest
    /// valid one.
    pub fn commit(mut self) -> Result<u64, SnapshotError> {
        if self.failed {
            return Err(SnapshotError::new(
                ErrorKind::Io,
                "an earlier write of this snapshot failed",
            ));
        }
        self.buf.extend_from_slice(&record_header(
            KIND_COMMIT,
            self.generation,
            self.new.len() as u64,
            &[],
        ));
        let w = &mut *self.w;
        w.storage
            .write_at(self.off, &self.buf)
            .map_err(|e| SnapshotError::io("write", e))?;
        self.off += self.buf.len() as u64;
        crash_point!("writer.before_sync");
        w.storage
            .sync()
            .map_err(|e| SnapshotError::io("fdatasync", e))?;
        crash_point!("writer.after_sync");
        for &(i, crc, loc) in &self.new {
            w.index.pages.insert(i, (crc, loc));
        }
        w.last_bytes_written = self.off - w.end;
        w.end = self.off;
        w.generation = self.generation;
        self.done = true;
        Ok(self.generation)
    }
}

impl<S: Storage> Drop for Snapshot<'_, S> {
    fn drop(&mut self) {
        if !self.done && self.off > self.w.end {
            // Best effort: readers ignore an uncommitted tail anyway, and the
            // next snapshot overwrites it from `end`.
            let _ = self.w.storage.set_len(self.w.end);
        }
    }
}

/// The temporary file [`SnapshotWriter::compact_file`] writes before renaming
/// it over `path`: `path` with `.compact.tmp` appended.
#[must_use]
pub fn compact_temp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".compact.tmp");
    PathBuf::from(s)
}

/// Removes the temporary file of a compaction that was killed before its
/// rename (the snapshot file itself is then still the complete old log).
/// Returns whether there was one.
///
/// # Errors
/// I/O errors other than the file being absent.
pub fn remove_stale_compaction(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(compact_temp_path(path)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

impl SnapshotWriter<FileStorage> {
    /// Replaces the log at `path` (this writer's file) by a compacted copy
    /// of the newest durable snapshot ([`SnapshotWriter::compact_into`]): writes
    /// [`compact_temp_path`] and `fdatasync`s it, renames it over `path`, then
    /// `fsync`s the directory, and continues appending to the new file.
    ///
    /// A crash at any point leaves `path` restorable to the same generation:
    /// before the rename it is the old log (the temporary file is garbage,
    /// see [`remove_stale_compaction`]); after it, the synced compacted copy;
    /// a power loss before the directory sync brings back either of the two.
    /// On an error the writer keeps appending to the old log.
    ///
    /// # Errors
    /// I/O errors (the old log stays in use), and a writer that has not
    /// snapshotted yet.
    pub fn compact_file(&mut self, path: &Path) -> Result<(), SnapshotError> {
        if self.generation == 0 {
            return Err(SnapshotError::new(
                ErrorKind::SizeMismatch,
                "nothing to compact before the first snapshot",
            ));
        }
        let tmp = compact_temp_path(path);
        let show = tmp.display();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| SnapshotError::io(&format!("create {show}"), e))?;
        let (target, index) = match self.compact_to(FileStorage(f)) {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let end = match target.len() {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(SnapshotError::io("stat compacted file", e));
            }
        };
        crash_point!("compact.temp_synced");
        std::fs::rename(&tmp, path).map_err(|e| SnapshotError::io(&format!("rename {show}"), e))?;
        crash_point!("compact.renamed");
        // From here on the new file is the log, whatever happens below.
        self.storage = target;
        self.end = end;
        self.index = index;
        sync_dir_of(path).map_err(|e| SnapshotError::io("fsync directory", e))?;
        crash_point!("compact.dir_synced");
        Ok(())
    }
}

/// The client's crash point inside `commit` (between the copy and the even store).
#[inline]
pub(crate) fn crash_point_client() {
    crash_point!("client.mid_commit");
}

#[cfg(test)]
mod tests {
    use super::{PageCrc, record_header, record_header_hashed};

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
            let h = crc32c::crc32c(&page);
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
            record_header_hashed(1, 1, 1, &short, Some(crc32c::crc32c(&short))),
            record_header(1, 1, 1, &short)
        );
    }
}
