//! The snapshot file format: header, page records, commit records.

use crate::error::{ErrorKind, SnapshotError};
use crate::storage::Storage;

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
    let mut r = [0u8; 32];
    r[0..4].copy_from_slice(&REC_MAGIC.to_le_bytes());
    r[4..8].copy_from_slice(&kind.to_le_bytes());
    r[8..16].copy_from_slice(&generation.to_le_bytes());
    r[16..24].copy_from_slice(&index.to_le_bytes());
    #[allow(clippy::cast_possible_truncation)] // payload is at most one page (< 2^24)
    r[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&r[0..28]), payload);
    r[28..32].copy_from_slice(&crc.to_le_bytes());
    r
}

fn page_len(page_size: u32, region_size: u64, index: u64) -> u64 {
    let start = index * u64::from(page_size);
    u64::from(page_size).min(region_size - start)
}

fn is_all_zero<S: Storage + ?Sized>(s: &S, len: u64) -> Result<bool, SnapshotError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = usize::try_from((len - off).min(buf.len() as u64)).unwrap_or(buf.len());
        rd(s, off, &mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
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
    Ok((page_size, region_size, len, false, u64_at(&h, 24)))
}

/// Scans and replays the log, calling `apply(offset, bytes)` for every page
/// of every committed generation in order; pages of an uncommitted tail are
/// never applied. The caller's region must start all zero.
///
/// # Errors
/// A clear [`SnapshotError`] for an empty, truncated, foreign, corrupt-header
/// or unreadable file. A torn or corrupt log tail is not an error: it ends the
/// replay at the last valid commit.
pub fn restore<S: Storage + ?Sized>(
    s: &S,
    mut apply: impl FnMut(u64, &[u8]),
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
        return Ok(Restored { info });
    }
    let pages = region_size.div_ceil(u64::from(page_size));
    let mut pending: Vec<(u64, u64)> = Vec::new(); // (page index, payload offset)
    let mut off = HEADER_LEN;
    let mut rh = [0u8; 32];
    let mut payload = vec![0u8; page_size as usize];
    while off + REC_LEN <= file_len {
        if rd(s, off, &mut rh).is_err() {
            break;
        }
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
        let p = &mut payload[..usize::try_from(plen).unwrap_or(0)];
        if rd(s, off + REC_LEN, p).is_err() {
            break;
        }
        if crc32c::crc32c_append(crc32c::crc32c(&rh[0..28]), p) != u32_at(&rh, 28) {
            break;
        }
        off += REC_LEN + plen;
        if kind == KIND_PAGE {
            pending.push((index, off - plen));
        } else {
            for &(index, poff) in &pending {
                let l = usize::try_from(page_len(page_size, region_size, index)).unwrap_or(0);
                rd(s, poff, &mut payload[..l])?;
                apply(index * u64::from(page_size), &payload[..l]);
            }
            pending.clear();
            info.generation += 1;
            info.commits += 1;
            info.valid_end = off;
        }
    }
    Ok(Restored { info })
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
/// Only pages whose checksum changed since the last durable snapshot are
/// written; a snapshot counts once [`SnapshotWriter::snapshot`] returned `Ok`
/// (after the storage's sync).
#[derive(Debug)]
pub struct SnapshotWriter<S: Storage> {
    storage: S,
    page_size: u32,
    region_size: u64,
    generation: u64,
    end: u64,
    hashes: Vec<u32>,
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
        let pages = usize::try_from(region_size.div_ceil(u64::from(page_size)))
            .map_err(|_| SnapshotError::new(ErrorKind::BadGeometry, "region too large"))?;
        let zero_hash = crc32c::crc32c(&vec![0u8; page_size as usize]);
        let mut hashes = vec![zero_hash; pages];
        let last = page_len(page_size, region_size, pages as u64 - 1);
        hashes[pages - 1] = crc32c::crc32c(&vec![0u8; usize::try_from(last).unwrap_or(0)]);
        Ok(Self {
            storage,
            page_size,
            region_size,
            generation: 0,
            end: HEADER_LEN,
            hashes,
            last_bytes_written: 0,
            batch: 1 << 20,
        })
    }

    /// Continues an existing file whose newest generation is `state` (as
    /// returned by [`restore`] into the caller's region): cuts off any torn
    /// tail durably before the next append.
    ///
    /// # Errors
    /// As [`restore`], and I/O errors.
    pub fn open(mut storage: S, state: &[u8]) -> Result<Self, SnapshotError> {
        let info = inspect(&storage)?;
        if info.all_zero {
            // The file holds generation 0 (all zeros): `create`'s zero-page
            // hashes describe it, whatever `state` is, so the next snapshot
            // writes every non-zero page of the state.
            let _ = state;
            return Self::create(storage, info.page_size, info.region_size);
        }
        if state.len() as u64 != info.region_size {
            return Err(SnapshotError::new(
                ErrorKind::SizeMismatch,
                "state size differs from the file's region size",
            ));
        }
        if info.file_len != info.valid_end {
            storage
                .set_len(info.valid_end)
                .map_err(|e| SnapshotError::io("truncate torn tail", e))?;
            storage
                .sync()
                .map_err(|e| SnapshotError::io("fdatasync", e))?;
        }
        let mut w = Self {
            storage,
            page_size: info.page_size,
            region_size: info.region_size,
            generation: info.generation,
            end: info.valid_end,
            hashes: Vec::new(),
            last_bytes_written: 0,
            batch: 1 << 20,
        };
        w.rehash(state);
        Ok(w)
    }

    fn rehash(&mut self, state: &[u8]) {
        self.hashes = state
            .chunks(self.page_size as usize)
            .map(crc32c::crc32c)
            .collect();
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
        let generation = self.generation + 1;
        let mut off = self.end;
        let mut new_hashes = Vec::new();
        let mut buf = Vec::new();
        let r = (|| {
            for (i, page) in state.chunks(self.page_size as usize).enumerate() {
                let h = crc32c::crc32c(page);
                if h == self.hashes[i] {
                    continue;
                }
                new_hashes.push((i, h));
                buf.extend_from_slice(&record_header(KIND_PAGE, generation, i as u64, page));
                buf.extend_from_slice(page);
                if buf.len() >= self.batch {
                    self.storage
                        .write_at(off, &buf)
                        .map_err(|e| SnapshotError::io("write", e))?;
                    off += buf.len() as u64;
                    buf.clear();
                    crash_point!("writer.batch_written");
                }
            }
            buf.extend_from_slice(&record_header(
                KIND_COMMIT,
                generation,
                new_hashes.len() as u64,
                &[],
            ));
            self.storage
                .write_at(off, &buf)
                .map_err(|e| SnapshotError::io("write", e))?;
            off += buf.len() as u64;
            crash_point!("writer.before_sync");
            self.storage
                .sync()
                .map_err(|e| SnapshotError::io("fdatasync", e))
        })();
        if let Err(e) = r {
            let _ = self.storage.set_len(self.end);
            return Err(e);
        }
        crash_point!("writer.after_sync");
        for (i, h) in new_hashes {
            self.hashes[i] = h;
        }
        self.last_bytes_written = off - self.end;
        self.end = off;
        self.generation = generation;
        Ok(generation)
    }

    /// Writes a compacted copy (header plus one generation holding only the
    /// non-zero pages of `state`, numbered as the current generation) to
    /// `target`, synced. The caller swaps it in (rename, then fsync of the
    /// directory) and continues with [`SnapshotWriter::open`].
    ///
    /// # Errors
    /// I/O errors.
    pub fn compact_into<T: Storage>(
        &self,
        mut target: T,
        state: &[u8],
    ) -> Result<T, SnapshotError> {
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
        let mut n = 0u64;
        for (i, page) in state.chunks(self.page_size as usize).enumerate() {
            if page.iter().all(|&b| b == 0) {
                continue;
            }
            target
                .write_at(off, &record_header(KIND_PAGE, g, i as u64, page))
                .map_err(|e| SnapshotError::io("write", e))?;
            target
                .write_at(off + REC_LEN, page)
                .map_err(|e| SnapshotError::io("write", e))?;
            off += REC_LEN + page.len() as u64;
            n += 1;
        }
        target
            .write_at(off, &record_header(KIND_COMMIT, g, n, &[]))
            .map_err(|e| SnapshotError::io("write", e))?;
        target
            .sync()
            .map_err(|e| SnapshotError::io("fdatasync", e))?;
        Ok(target)
    }
}

/// The client's crash point inside `commit` (between the copy and the even store).
#[inline]
pub(crate) fn crash_point_client() {
    crash_point!("client.mid_commit");
}
