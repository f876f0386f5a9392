//! Shared bits of the `server` and `client` binaries: the default socket path.
//!
//! Run the server, then the client, in two terminals:
//! ```text
//! cargo run --release --bin server
//! cargo run --release --bin client -- --batches 5
//! ```

/// The socket both binaries use unless told otherwise (the path of the original example).
pub const DEFAULT_SOCKET: &str = "/tmp/shmem-test.sock";
