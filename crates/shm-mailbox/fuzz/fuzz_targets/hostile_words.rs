//! A mailbox whose shared words a hostile process has overwritten (config
//! block, published word, hazard words, slot headers, payload): opening,
//! reading, publishing and reaping give a result or a typed error, never a
//! panic or a fault, and a read never reports more bytes than a slot holds.
#![no_main]

use std::os::unix::fs::FileExt;

use libfuzzer_sys::fuzz_target;
use shm_mailbox::{Config, Mailbox};

const CONFIG: Config = Config {
    readers: 3,
    slot_bytes: 64,
};

fuzz_target!(|data: &[u8]| {
    let name = format!("outlive-fuzz-mailbox-{}", std::process::id());
    let _ = Mailbox::remove(&name);
    let Ok(mailbox) = Mailbox::open_or_create(&name, CONFIG) else { return };
    if let Ok(mut w) = mailbox.writer() {
        let _ = w.publish(&[7u8; 40]);
    }
    let words = (mailbox.config().region_bytes().unwrap_or(0) / 8) as u64;
    // Patches: (word index: u16, value: u64) records, applied to the payload.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .expect("the mailbox object");
    for rec in data.chunks_exact(10) {
        let index = u64::from(u16::from_le_bytes([rec[0], rec[1]])) % words.max(1);
        let value = u64::from_le_bytes(rec[2..10].try_into().unwrap());
        // Small values are as interesting as garbage: slot numbers, sequence numbers.
        let value = if rec[0] & 0x80 != 0 { value % 16 } else { value };
        let offset = shm_segment::header::DATA_OFFSET as u64 + index * 8;
        let _ = file.write_all_at(&value.to_ne_bytes(), offset);
    }
    drop(mailbox);
    if let Ok(mailbox) = Mailbox::open(&name) {
        let mut buf = [0u8; 64];
        for r in 0..mailbox.config().readers {
            if let Ok(mut reader) = mailbox.reader(r) {
                for _ in 0..3 {
                    if let Ok(Some(m)) = reader.read(&mut buf) {
                        assert!(m.len <= 64, "read reported {} bytes", m.len);
                    }
                }
            }
        }
        if let Ok(mut w) = mailbox.writer() {
            let _ = w.reap_dead_readers();
            for i in 0..4u8 {
                let _ = w.publish(&[i; 64]);
            }
            let _ = w.last(&mut buf);
        }
    }
    let _ = Mailbox::remove(&name);
});
