//! systemd File Descriptor Store and LISTEN_FDS plumbing, the shm-fd wrapper and a standalone supervisor
