//! A valid segment whose header bytes are then patched by the fuzzer (pairs of
//! offset and value), and optionally truncated: opening it must give a segment
//! or a typed error, never a panic or a fault.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_segment::{Segment, memfd};

fuzz_target!(|data: &[u8]| {
    let Ok(seg) = Segment::memfd("fuzz").size(64).create() else { return };
    let header = seg.mapping().region();
    let (want, patches) = data.split_first().map_or((8, &[][..]), |(w, p)| (usize::from(*w) * 8 + 1, p));
    for pair in patches.chunks_exact(2) {
        let _ = header.write_bytes(usize::from(pair[0] & 0x7f), &[pair[1]]);
    }
    let Ok(fd) = seg.fd().try_clone_to_owned() else { return };
    let _ = Segment::adopt(fd).size(want).open_timeout(std::time::Duration::ZERO).open();
    // Also as raw bytes: arbitrary contents of a fresh memfd.
    if let Ok(fd) = memfd::create("fuzz-raw", 8192, memfd::Seals::empty()) {
        let _ = rustix::io::pwrite(&fd, patches, 0);
        let _ = Segment::adopt(fd).open_timeout(std::time::Duration::ZERO).open_or_create();
    }
});
