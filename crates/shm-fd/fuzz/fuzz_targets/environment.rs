//! Arbitrary values of LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES and
//! NOTIFY_SOCKET: a result or a typed error, never a panic; an accepted
//! LISTEN_* set names each fd from 3 on once, with a valid name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_fd::listen::{ListenVars, validate_fd_name};
use shm_fd::notify::NotifyAddr;

const OUR_PID: u32 = 4242;

fuzz_target!(|data: &[u8]| {
    // Four fields separated by 0xff; a field of exactly "-" is unset.
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\u{fffd}').map(|f| (f != "-").then(|| f.to_owned()));
    let vars = ListenVars {
        pid: fields.next().flatten(),
        fds: fields.next().flatten(),
        names: fields.next().flatten(),
    };
    if let Ok(pairs) = vars.parse(|p| p == OUR_PID, OUR_PID) {
        for (i, (fd, name)) in pairs.iter().enumerate() {
            assert_eq!(*fd, 3 + i as i32);
            assert!(validate_fd_name(name).is_ok(), "accepted invalid name {name:?}");
        }
        assert!(pairs.is_empty() || vars.pid.as_deref().and_then(|p| p.parse::<u64>().ok()) == Some(4242));
    }
    if let Some(Some(addr)) = fields.next() {
        let _ = NotifyAddr::parse(&addr);
    }
});
