//! Command-line conventions shared by every outlive binary (`shm-fd`,
//! `shm-restore`, the examples): the one size parser, the one duration
//! parser, and the logging setup (`-q`/`-v`, `RUST_LOG`).
//!
//! The parsers are `clap` value parsers (`value_parser = shm_fd::cli::parse_size`);
//! libraries log through `tracing`, and a binary calls [`Verbosity::init`]
//! once to print those events, and its own, as plain `PROGRAM: message`
//! lines on stderr.

use std::time::Duration;

/// Parses a size in bytes: a plain number (`1048576`), or a number with a
/// unit, all of them powers of 1024 (`512K`, `10M`, `1MiB`, `2 GiB`, `1.5M`;
/// case does not matter). `parse-size` with binary units; `K`, `M`, `G` were
/// powers of 1024 in every outlive binary before it, and stay so.
///
/// # Examples
/// ```
/// use shm_fd::cli::parse_size;
///
/// assert_eq!(parse_size("1048576")?, 1 << 20);
/// assert_eq!(parse_size("512K")?, 512 << 10);
/// assert_eq!(parse_size("1.5 MiB")?, 3 << 19);
/// assert!(parse_size("ten").unwrap_err().contains("is not a size"));
/// # Ok::<(), String>(())
/// ```
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| match e {
            parse_size::Error::PosOverflow => format!("{s:?} is too large"),
            _ => format!("{s:?} is not a size (e.g. 1048576, 512K, 10M, 1MiB): {e}"),
        })
}

/// Parses a duration: a bare number of seconds (`0.1`, `2`, the spelling
/// outlive's binaries took first), or `humantime` (`100ms`, `2s`, `1min`,
/// `1m 30s`). The bare-seconds case is ours because `humantime` requires a
/// unit on every number but zero.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use shm_fd::cli::parse_duration;
///
/// assert_eq!(parse_duration("0.1")?, Duration::from_millis(100));
/// assert_eq!(parse_duration("100ms")?, Duration::from_millis(100));
/// assert_eq!(parse_duration("1m 30s")?, Duration::from_secs(90));
/// assert!(parse_duration("-1").is_err());
/// # Ok::<(), String>(())
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s:?} is not a duration (a number of seconds at least 0)"));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 0.5, 100ms, 2s, 1min): {e}"))
}

/// `-q`/`-v`: how much a binary logs. Flatten it into the binary's
/// arguments (`#[command(flatten)] log: Verbosity`) and call
/// [`Verbosity::init`] first thing.
///
/// # Examples
///
/// A binary's arguments with the conventions: the size and duration
/// parsers, and `-q`/`-v`.
/// ```
/// use std::time::Duration;
/// use clap::Parser;
///
/// /// What the program takes.
/// #[derive(Debug, Parser)]
/// #[command(name = "example", version)]
/// struct Args {
///     /// Size of the region (e.g. 1048576, 512K, 1MiB).
///     #[arg(long, value_parser = shm_fd::cli::parse_size)]
///     size: u64,
///     /// Pause between two polls (e.g. 0.5, 100ms, 2s).
///     #[arg(long, value_parser = shm_fd::cli::parse_duration, default_value = "1s")]
///     interval: Duration,
///     #[command(flatten)]
///     log: shm_fd::cli::Verbosity,
/// }
///
/// let args = Args::try_parse_from(["example", "--size", "1MiB", "-vv"])?;
/// assert_eq!((args.size, args.interval), (1 << 20, Duration::from_secs(1)));
/// assert_eq!(args.log.level(), Some(tracing::Level::TRACE));
/// args.log.init("example");
/// tracing::trace!("mapped"); // stderr: "example: TRACE <target>: mapped"
///
/// // -q with -v, or a size that is not one, is a usage error: exit status 2.
/// let err = Args::try_parse_from(["example", "--size", "1M", "-q", "-v"]).unwrap_err();
/// assert_eq!(err.exit_code(), 2);
/// let err = Args::try_parse_from(["example", "--size", "lots"]).unwrap_err();
/// assert!(err.to_string().contains("is not a size"), "{err}");
/// # Ok::<(), clap::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, clap::Args)]
// A flattened struct's doc comment would become the binary's `--help`
// description (clap's derive takes `about`/`long_about` from it): set both to
// nothing, so that the binary keeps its own.
#[command(about = None, long_about = None)]
#[allow(
    clippy::doc_markdown,
    reason = "the field docs are --help text, shown verbatim"
)]
pub struct Verbosity {
    /// Log more: -v debug, -vv trace (overrides RUST_LOG).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log less: -q warnings and errors only, -qq errors only (overrides RUST_LOG).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
}

impl Verbosity {
    /// The level the flags ask for, `None` without flags.
    ///
    /// # Examples
    /// ```
    /// use shm_fd::cli::Verbosity;
    /// use tracing::Level;
    ///
    /// assert_eq!(Verbosity::default().level(), None);
    /// assert_eq!(Verbosity { quiet: 1, verbose: 0 }.level(), Some(Level::WARN));
    /// assert_eq!(Verbosity { quiet: 0, verbose: 1 }.level(), Some(Level::DEBUG));
    /// ```
    pub fn level(&self) -> Option<tracing::Level> {
        use tracing::Level;
        match (self.verbose, self.quiet) {
            (0, 0) => None,
            (0, 1) => Some(Level::WARN),
            (0, _) => Some(Level::ERROR),
            (1, _) => Some(Level::DEBUG),
            _ => Some(Level::TRACE),
        }
    }

    /// Installs the process's `tracing` subscriber: plain `PROGRAM: message`
    /// lines on stderr (debug and trace events also name their level and
    /// origin). The flags choose the level; without them `RUST_LOG` does
    /// (`RUST_LOG=warn`, `RUST_LOG=shm_snapshot=debug`: directives for some
    /// targets keep everything else at info), and without it everything at
    /// info and above is shown. A second call does nothing.
    ///
    /// # Examples
    /// ```
    /// let log = shm_fd::cli::Verbosity { quiet: 1, verbose: 0 };
    /// log.init("example");
    /// tracing::info!("started"); // not shown: -q keeps warnings and errors
    /// tracing::warn!("disk almost full"); // stderr: "example: disk almost full"
    /// ```
    pub fn init(&self, program: &'static str) {
        let spec = filter_spec(self.level(), std::env::var("RUST_LOG").ok().as_deref());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::builder().parse_lossy(spec))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(Plain { program })
            .try_init();
    }
}

/// The filter directives: the flags' level, else `RUST_LOG` with `info` for
/// the targets it does not name (unless it sets a level for all).
fn filter_spec(flags: Option<tracing::Level>, rust_log: Option<&str>) -> String {
    if let Some(level) = flags {
        return level.as_str().to_owned();
    }
    let env = rust_log.unwrap_or("").trim();
    let global = env
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .any(|d| d.parse::<tracing_subscriber::filter::LevelFilter>().is_ok());
    if env.is_empty() {
        "info".to_owned()
    } else if global {
        env.to_owned()
    } else {
        format!("info,{env}")
    }
}

/// The event format: `PROGRAM: message key=value ...`, as the binaries
/// printed their lines before they logged through `tracing`.
#[derive(Debug)]
struct Plain {
    program: &'static str,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Plain
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        write!(writer, "{}: ", self.program)?;
        // More verbose than info: say what it is and where it came from.
        if *meta.level() > tracing::Level::INFO {
            write!(writer, "{} {}: ", meta.level(), meta.target())?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_flattening_verbosity_keeps_its_own_help_text() {
        use clap::CommandFactory;
        /// The binary's own description.
        #[derive(Debug, clap::Parser)]
        #[command(name = "described")]
        struct Described {
            #[command(flatten)]
            log: Verbosity,
        }
        #[derive(Debug, clap::Parser)]
        #[command(name = "about", about = "An explicit about")]
        struct About {
            #[command(flatten)]
            log: Verbosity,
        }
        for (mut cmd, own) in [
            (Described::command(), "The binary's own description"),
            (About::command(), "An explicit about"),
        ] {
            let long = cmd.render_long_help().to_string();
            let short = cmd.render_help().to_string();
            for help in [long, short] {
                assert!(help.starts_with(own), "{help}");
                assert!(!help.contains("how much a binary logs"), "{help}");
                assert!(help.contains("--verbose"), "{help}");
            }
        }
    }

    #[test]
    fn sizes_take_plain_bytes_and_binary_units() {
        for (s, n) in [
            ("1048576", 1u64 << 20),
            ("512K", 512 << 10),
            ("512k", 512 << 10),
            ("10M", 10 << 20),
            ("1MiB", 1 << 20),
            ("1 MiB", 1 << 20),
            ("2g", 2 << 30),
            ("2GiB", 2 << 30),
            ("1.5M", 3 << 19),
            ("0", 0),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s:?}");
        }
        for bad in [
            "",
            "fast",
            "-5",
            "1Q",
            "99999999999999999999",
            "17179869184G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_take_bare_seconds_and_humantime() {
        let ms = Duration::from_millis;
        for (s, d) in [
            ("0.1", ms(100)),
            ("2", ms(2000)),
            ("0", ms(0)),
            ("100ms", ms(100)),
            ("2s", ms(2000)),
            ("1min", ms(60_000)),
            ("1m 30s", ms(90_000)),
        ] {
            assert_eq!(parse_duration(s), Ok(d), "{s:?}");
        }
        for bad in ["", "-1", "fast", "1 fortnight", "NaN", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rust_log_applies_without_flags_and_keeps_info_for_the_rest() {
        use tracing::Level;
        assert_eq!(filter_spec(None, None), "info");
        assert_eq!(filter_spec(None, Some("")), "info");
        assert_eq!(filter_spec(None, Some("warn")), "warn");
        assert_eq!(filter_spec(None, Some("off")), "off");
        assert_eq!(
            filter_spec(None, Some("shm_snapshot=debug")),
            "info,shm_snapshot=debug"
        );
        assert_eq!(
            filter_spec(None, Some("shm_snapshot=debug,")),
            "info,shm_snapshot=debug,"
        );
        assert_eq!(
            filter_spec(None, Some("error,shm_snapshot=debug")),
            "error,shm_snapshot=debug"
        );
        assert_eq!(filter_spec(Some(Level::WARN), Some("debug")), "WARN");
    }

    #[test]
    fn flags_choose_the_level() {
        use tracing::Level;
        let v = |verbose, quiet| Verbosity { verbose, quiet }.level();
        assert_eq!(v(0, 0), None);
        assert_eq!(v(0, 1), Some(Level::WARN));
        assert_eq!(v(0, 3), Some(Level::ERROR));
        assert_eq!(v(1, 0), Some(Level::DEBUG));
        assert_eq!(v(2, 0), Some(Level::TRACE));
    }
}
