//! The memfd that holds a program's state: created, sized and sealed here,
//! and validated when the store hands it back. Built on `shm_segment::memfd`.

use std::os::fd::{BorrowedFd, OwnedFd};

use shm_segment::memfd::{self, FIXED_SIZE, MemfdError, MemfdInfo, Requirements, ValidateError};

/// Creates a memfd of `size` zero bytes, sealed against shrinking and growing.
pub fn create(name: &str, size: u64) -> Result<OwnedFd, MemfdError> {
    memfd::create(name, size, FIXED_SIZE)
}

/// Checks that `fd` is a memfd of at least `min_size` bytes and makes sure it
/// is sealed against shrinking and growing (adding the seals if an older
/// creator did not), so no process can turn reads of it into SIGBUS.
pub fn validate(fd: BorrowedFd<'_>, min_size: u64) -> Result<MemfdInfo, ValidateError> {
    let info = memfd::validate(fd, &Requirements::min_size(min_size))?;
    if info.seals.contains(FIXED_SIZE) {
        return Ok(info);
    }
    // A memfd created without MFD_ALLOW_SEALING carries F_SEAL_SEAL and cannot
    // be sealed: refuse it, its size could change under us.
    memfd::add_seals(fd, FIXED_SIZE).map_err(|_| ValidateError::MissingSeals {
        name: info.name.clone(),
        missing: FIXED_SIZE,
    })?;
    memfd::validate(fd, &Requirements::min_size(min_size).with_seals(FIXED_SIZE))
}
