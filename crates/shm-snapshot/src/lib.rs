//! Crash-consistent, durable, incremental snapshots of a shared-memory region
