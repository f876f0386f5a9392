//! The N-process latest-value board demo

fn main() {}
