//! Oneshot example: extends a table of primes kept in a memfd that outlives the process

fn main() {}
