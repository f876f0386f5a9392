//! A crash-proof latest-value board: one writer, many readers, N+1 slots
