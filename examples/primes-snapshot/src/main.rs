//! Generates primes continuously into a snapshotted state region

fn main() {}
