//! A guided tour of outlive

fn main() {}
