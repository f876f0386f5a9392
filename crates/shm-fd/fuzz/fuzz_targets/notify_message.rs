//! Arbitrary sd_notify messages arriving at the supervisor's socket, each
//! with a memfd attached: the store only ever holds fds under valid names,
//! never panics, and never holds the same open file twice.
#![no_main]

use std::os::fd::AsFd;

use libfuzzer_sys::fuzz_target;
use shm_fd::listen::validate_fd_name;
use shm_fd::supervise::apply;

fuzz_target!(|data: &[u8]| {
    let mut store = Vec::new();
    let Ok(memfd) = rustix::fs::memfd_create("fuzz", rustix::fs::MemfdFlags::CLOEXEC) else {
        return;
    };
    // Messages separated by NUL; each may carry a duplicate of the same memfd.
    for (i, msg) in data.split(|b| *b == 0).enumerate() {
        let text = String::from_utf8_lossy(msg);
        let fds = if i % 2 == 0 {
            vec![memfd.as_fd().try_clone_to_owned().unwrap()]
        } else {
            Vec::new()
        };
        apply(&text, fds, &mut store);
    }
    for (name, _) in &store {
        assert!(validate_fd_name(name).is_ok(), "stored under invalid name {name:?}");
    }
    assert!(store.len() <= 1, "the same memfd stored {} times", store.len());
});
