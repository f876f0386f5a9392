//! Test helpers for outlive: unique names, helper processes, crash points, watchdog, a real systemd user manager
