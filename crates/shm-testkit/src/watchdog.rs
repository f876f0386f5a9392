use std::sync::mpsc;
use std::time::Duration;

/// Aborts the whole test process if it is still alive after a timeout.
///
/// Create one at the top of any test that waits on another process; dropping
/// it (the test finished) disarms it. A hung test then fails loudly instead of
/// stalling CI until its global limit.
#[derive(Debug)]
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
}

impl Watchdog {
    /// Arms a watchdog that aborts the process after `timeout`.
    pub fn new(timeout: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                eprintln!("watchdog: test {name} still running after {timeout:?}; aborting");
                std::process::abort();
            }
        });
        Watchdog { disarm: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.disarm.take() {
            let _ = tx.send(());
        }
    }
}
