//! The storage a snapshot file lives on, behind a small trait so tests can
//! record every write and sync and replay the crash states POSIX allows.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{ErrorKind, SnapshotError};

/// Positioned byte storage with an explicit durability barrier.
///
/// The crate's implementations: [`FileStorage`], a real file, and
/// [`MemStorage`], in memory, which records every operation (for tests that
/// replay the states a crash can leave).
///
/// # Examples
/// The operations, on the in-memory storage; then a [`SnapshotWriter`]
/// (which works on any `Storage`) seen through the log it left:
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shm_snapshot::storage_ops::Op;
/// use shm_snapshot::{MemStorage, SnapshotWriter, Storage, inspect};
///
/// let mut mem = MemStorage::default();
/// mem.write_at(0, b"abc")?;
/// mem.set_len(8)?; // extends with zeros
/// mem.sync()?;
/// let mut buf = [0u8; 4];
/// mem.read_at(0, &mut buf)?;
/// assert_eq!((&buf, mem.len()?), (b"abc\0", 8));
/// assert_eq!(mem.log.len(), 3);
///
/// let mut writer = SnapshotWriter::create(MemStorage::default(), 4096, 8192)?;
/// writer.snapshot(&[7u8; 8192])?;
/// // Every snapshot ends with the durability barrier.
/// assert!(matches!(writer.storage().log.last(), Some(Op::Sync)));
/// assert_eq!(inspect(writer.storage())?.generation, 1);
/// # Ok(())
/// # }
/// ```
///
/// [`SnapshotWriter`]: crate::SnapshotWriter
#[allow(clippy::len_without_is_empty)] // a storage length, not a collection
pub trait Storage {
    /// Reads exactly `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// I/O errors, `UnexpectedEof` past the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    ///
    /// # Errors
    /// I/O errors (e.g. `ENOSPC`).
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// The current length.
    ///
    /// # Errors
    /// I/O errors.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros) to `len`.
    ///
    /// # Errors
    /// I/O errors.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes every earlier write and `set_len` durable (`fdatasync`).
    ///
    /// # Errors
    /// I/O errors.
    fn sync(&mut self) -> io::Result<()>;
    /// The first offset at or after `offset` that may hold non-zero bytes, or
    /// `None` if everything from `offset` to the end reads as zeros (a hole of
    /// a sparse file). The default treats every byte as data.
    ///
    /// # Errors
    /// I/O errors.
    fn data_from(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok(Some(offset))
    }
    /// How many bytes of zeros a [`crate::SnapshotWriter`] on this storage
    /// keeps written past the log's end by default
    /// ([`crate::SnapshotWriter::set_reserve`]). The default is 0: only a
    /// file system pays for growing a file at every sync.
    fn preferred_reserve(&self) -> u64 {
        0
    }
    /// A hint: start writing `len` bytes at `offset` to the device now, so
    /// that the next [`Storage::sync`] has less left to wait for. Gives no
    /// durability by itself. The default does nothing.
    fn start_writeback(&mut self, offset: u64, len: u64) {
        let _ = (offset, len);
    }
}

/// A real file.
#[derive(Debug)]
pub struct FileStorage(pub File);

impl FileStorage {
    /// Opens an existing snapshot file for reading (and writing if
    /// `writable`), refusing anything but a regular file. The open itself
    /// never blocks: it uses `O_NONBLOCK` (a FIFO would otherwise wait for a
    /// writer forever), checked with `fstat` before any read, then cleared.
    ///
    /// A file opened for reading only is pinned while it stays open (a
    /// shared OFD lock on its byte 0): a live host never reuses the inode
    /// under it for a compaction ([`crate::SnapshotWriter::compact_file`]
    /// recycles the log it replaced once nobody reads it), so a reader that
    /// keeps the file open across compactions goes on reading one complete
    /// log.
    ///
    /// # Errors
    /// The OS error, naming the path; [`ErrorKind::NotRegular`] for a FIFO,
    /// socket, device or directory.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shm_snapshot::{FileStorage, SnapshotWriter, inspect};
    ///
    /// let dir = std::env::temp_dir().join(format!("storage-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("state.snap");
    /// std::fs::File::create(&path)?;
    ///
    /// let mut writer = SnapshotWriter::create(FileStorage::open(&path, true)?, 4096, 4096)?;
    /// writer.snapshot(&[9u8; 4096])?;
    /// drop(writer);
    ///
    /// let info = inspect(&FileStorage::open(&path, false)?)?;
    /// assert_eq!(info.generation, 1);
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(path: &Path, writable: bool) -> Result<Self, SnapshotError> {
        if writable {
            return Self::open_once(path, true).map(Self);
        }
        crate::format::files::open_pinned(path, || Self::open_once(path, false)).map(Self)
    }

    fn open_once(path: &Path, writable: bool) -> Result<File, SnapshotError> {
        use rustix::fs::{FileType, Mode, OFlags};
        let show = path.display();
        let access = if writable {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let fd = rustix::fs::open(
            path,
            access | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SnapshotError::io(&format!("open {show}"), e.into()))?;
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| SnapshotError::io(&format!("stat {show}"), e.into()))?;
        let ty = FileType::from_raw_mode(st.st_mode);
        if ty != FileType::RegularFile {
            let what = match ty {
                FileType::Fifo => "a FIFO",
                FileType::Socket => "a socket",
                FileType::CharacterDevice => "a character device",
                FileType::BlockDevice => "a block device",
                FileType::Directory => "a directory",
                _ => "not a regular file",
            };
            return Err(SnapshotError::new(
                ErrorKind::NotRegular,
                format!("{show} is {what}, not a snapshot file"),
            ));
        }
        rustix::fs::fcntl_setfl(&fd, access)
            .map_err(|e| SnapshotError::io(&format!("fcntl {show}"), e.into()))?;
        Ok(File::from(fd))
    }
}

impl Storage for FileStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn preferred_reserve(&self) -> u64 {
        1 << 20
    }
    fn start_writeback(&mut self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // libc, not rustix: rustix has no `sync_file_range`. Errors are
        // ignored (a hint; `sync` reports what matters).
        #[allow(unsafe_code)]
        // SAFETY: a plain syscall on an fd we own; no memory is passed.
        unsafe {
            libc::sync_file_range(self.0.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    fn data_from(&self, offset: u64) -> io::Result<Option<u64>> {
        // SEEK_DATA: holes (e.g. of `truncate -s 5G FILE`) are skipped without reading.
        match rustix::fs::seek(&self.0, rustix::fs::SeekFrom::Data(offset)) {
            Ok(pos) => Ok(Some(pos)),
            Err(rustix::io::Errno::NXIO) => Ok(None),
            // A file system without SEEK_DATA: read everything.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok(Some(offset)),
            Err(e) => Err(e.into()),
        }
    }
}

/// One recorded operation of a [`MemStorage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A write of bytes at an offset.
    Write(u64, Vec<u8>),
    /// A length change.
    SetLen(u64),
    /// A durability barrier.
    Sync,
}

/// In-memory storage that records every operation (for crash-state replay)
/// and can fail writes beyond a byte budget (an injected full disk).
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    /// The current contents.
    pub data: Vec<u8>,
    /// Every operation in order.
    pub log: Vec<Op>,
    /// If set, writes that would grow the data past this length fail with `ENOSPC`.
    pub capacity: Option<u64>,
}

impl MemStorage {
    /// Storage holding `data`, with an empty log.
    #[must_use]
    pub fn with_data(data: Vec<u8>) -> Self {
        Self {
            data,
            log: Vec::new(),
            capacity: None,
        }
    }
}

impl Storage for MemStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self
            .data
            .get(start..end)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if let Some(c) = self.capacity.filter(|&c| end > c) {
            // Like a real file system: what fits is written, then ENOSPC.
            if offset < c {
                let fit = usize::try_from(c - offset).map_err(io::Error::other)?;
                self.write_at(offset, &buf[..fit])?;
            }
            return Err(io::Error::from_raw_os_error(28));
        }
        let (s, e) = (
            usize::try_from(offset).map_err(io::Error::other)?,
            usize::try_from(end).map_err(io::Error::other)?,
        );
        if self.data.len() < e {
            self.data.resize(e, 0);
        }
        self.data[s..e].copy_from_slice(buf);
        self.log.push(Op::Write(offset, buf.to_vec()));
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.len() as u64)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.data
            .resize(usize::try_from(len).map_err(io::Error::other)?, 0);
        self.log.push(Op::SetLen(len));
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.log.push(Op::Sync);
        Ok(())
    }
}
