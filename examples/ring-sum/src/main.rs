//! The shm-ring server/client example: the client sends f64 batches, the server sums them

fn main() {}
