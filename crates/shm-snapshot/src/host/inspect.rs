//! What a host's FILE holds, for `shm-restore inspect`: the file's facts
//! plus the program's commit generation (the newest commit's tag, or the
//! image prefix in a format version 1 FILE).

use std::path::Path;

use super::HostError;
use crate::live;
use crate::{FileInfo, FileStorage, RestoreOptions, SnapshotError, restore_with};

/// What a host's FILE holds: the facts of [`crate::inspect`] and the
/// program's commit generation as of the newest generation that restores
/// exactly (before any damage): that commit's tag, or in a format version 1
/// FILE the image's first 8 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Inspection {
    /// The file's facts.
    pub info: FileInfo,
    /// The program's committed generation (0 for an all-zero FILE).
    pub program_generation: u64,
}

impl Inspection {
    /// Reads FILE (never writing it).
    ///
    /// # Errors
    /// [`HostError::Open`] (including a FIFO, device or directory),
    /// [`HostError::Read`] for a file that is not a readable snapshot log.
    ///
    /// # Examples
    /// ```
    /// use shm_snapshot::host::Inspection;
    /// let file = std::env::temp_dir().join(format!("inspect-doc-{}", std::process::id()));
    /// std::fs::File::create(&file)?.set_len(1 << 20)?; // all zeros: a fresh state
    /// let i = Inspection::of(&file)?;
    /// assert!(i.info.all_zero);
    /// assert_eq!((i.program_generation, i.state_size()), (0, None));
    /// std::fs::remove_file(&file)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn of(path: &Path) -> Result<Self, HostError> {
        let read = |source| HostError::Read {
            path: path.to_path_buf(),
            source,
        };
        let st = FileStorage::open(path, false).map_err(|source| HostError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let info = crate::inspect(&st).map_err(read)?;
        let until = info.damage.as_ref().map(|d| d.last_before);
        Self::new(info, &st, until).map_err(read)
    }

    /// The inspection of a file whose facts are `info`: the program
    /// generation as of `until` (the newest if `None`).
    fn new(info: FileInfo, st: &FileStorage, until: Option<u64>) -> Result<Self, SnapshotError> {
        let opts = RestoreOptions {
            until,
            ..RestoreOptions::default()
        };
        let mut head = [0u8; 8];
        let restored = if info.version >= 2 && until.is_none() {
            // The tag is in the facts; no second pass needed.
            None
        } else {
            Some(restore_with(
                st,
                opts,
                |off, b| {
                    if let Some(n) = usize::try_from(off).ok().filter(|&o| o < 8) {
                        let k = b.len().min(8 - n);
                        head[n..n + k].copy_from_slice(&b[..k]);
                    }
                },
                |_, _| {},
            )?)
        };
        let at = restored.map_or_else(|| info.clone(), |r| r.info);
        Ok(Self {
            program_generation: super::file::program_generation(&at, head),
            info,
        })
    }

    /// Bytes of the program's state (the image less its 4096-byte prefix);
    /// `None` for an all-zero FILE or an image too small to hold a state.
    pub fn state_size(&self) -> Option<u64> {
        self.info
            .region_size
            .checked_sub(live::CONTROL_LEN)
            .filter(|&r| r > 0 && !self.info.all_zero)
    }

    /// Bytes after the last valid commit that a start ignores (a torn or
    /// corrupt tail); 0 for a damaged or all-zero FILE, and for the space
    /// the writer keeps ([`Inspection::reserved`]).
    pub fn ignored_tail(&self) -> u64 {
        let i = &self.info;
        if i.damage.is_none() && !i.all_zero {
            i.file_len.saturating_sub(i.valid_end + i.reserved)
        } else {
            0
        }
    }

    /// Bytes after the last commit that a running (or killed) host keeps
    /// for its next snapshots: reserved zeros
    /// ([`crate::SnapshotWriter::set_reserve`]), or the older records of a
    /// log its last compaction reused ([`crate::SnapshotWriter::compact_file`]).
    pub fn reserved(&self) -> u64 {
        self.info.reserved
    }

    /// Bytes in damaged ranges (0 without damage).
    pub fn damaged_bytes(&self) -> u64 {
        self.info
            .damage
            .as_ref()
            .map_or(0, |d| d.ranges.iter().map(|r| r.end - r.start).sum())
    }
}
