//! Terminal output: colour and live progress on a terminal, plain lines otherwise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering}; // atomics-ok: a process-local stop flag
use std::time::Instant;

/// How the tour talks to the person running it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ui {
    color: bool,
    live: bool,
}

impl Ui {
    /// Colour and progress only on a terminal, and never with `NO_COLOR` or `--plain`.
    pub(crate) fn detect(plain: bool) -> Ui {
        let tty = std::io::stdout().is_terminal();
        let color = tty && !plain && std::env::var_os("NO_COLOR").is_none();
        Ui {
            color,
            live: tty && !plain,
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub(crate) fn title(self, text: &str) {
        println!("\n{}", self.paint("1;36", &format!("== {text} ==")));
    }

    #[allow(
        clippy::unused_self,
        reason = "every output goes through the Ui, plain or not"
    )]
    pub(crate) fn say(self, text: &str) {
        println!("   {text}");
    }

    /// A line of output from a program the tour runs.
    pub(crate) fn program(self, who: &str, line: &str) {
        println!("   {} {line}", self.paint("2", &format!("[{who}]")));
    }

    pub(crate) fn ok(self, text: &str) {
        println!(" {} {text}", self.paint("1;32", "ok"));
    }

    pub(crate) fn fail(self, text: &str) {
        println!(" {} {text}", self.paint("1;31", "FAIL"));
    }

    pub(crate) fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    /// Shows `label` with a live elapsed-time counter while `work` runs (terminal
    /// only), then clears the line.
    pub(crate) fn progress<T>(self, label: &str, work: impl FnOnce() -> T) -> T {
        if !self.live {
            println!("   {label} ...");
            return work();
        }
        let start = Instant::now();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let label_owned = label.to_owned();
        let ticker = std::thread::spawn(move || {
            let frames = ['|', '/', '-', '\\'];
            let mut i = 0;
            // Relaxed: a stop flag for a display thread; nothing else is published.
            while !flag.load(Ordering::Relaxed) {
                print!(
                    "\r   {} {label_owned} {:.1}s ",
                    frames[i % 4],
                    start.elapsed().as_secs_f64()
                );
                let _ = std::io::stdout().flush();
                i += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            print!("\r\x1b[2K");
            let _ = std::io::stdout().flush();
        });
        let out = work();
        done.store(true, Ordering::Relaxed);
        let _ = ticker.join();
        out
    }
}
