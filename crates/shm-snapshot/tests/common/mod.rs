//! Helpers shared by the shm-snapshot tests.
// Each test binary uses a part of these.
#![allow(dead_code)]

#[cfg(feature = "shm-restore")]
pub(crate) mod cli;

use shm_snapshot::{RestoreOptions, Restored, SnapshotError, Storage, restore_with};

/// Restores `s` with `opts` into a vector of the region's size.
///
/// # Errors
/// As [`restore_with`].
pub(crate) fn restore_opts<S: Storage>(
    s: &S,
    opts: RestoreOptions,
) -> Result<(Vec<u8>, Restored), SnapshotError> {
    let mut v = Vec::new();
    let r = restore_with(
        s,
        opts,
        |o, b| {
            let o = usize::try_from(o).unwrap();
            if v.len() < o + b.len() {
                v.resize(o + b.len(), 0);
            }
            v[o..o + b.len()].copy_from_slice(b);
        },
        |_, _| {},
    )?;
    v.resize(usize::try_from(r.info.region_size).unwrap(), 0);
    Ok((v, r))
}

/// The newest committed state of `s` and its generation.
///
/// # Errors
/// As [`shm_snapshot::restore`].
pub(crate) fn restore_vec<S: Storage>(s: &S) -> Result<(Vec<u8>, u64), SnapshotError> {
    restore_opts(s, RestoreOptions::default()).map(|(v, r)| (v, r.info.generation))
}
