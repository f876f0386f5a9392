//! A lock-free single-producer single-consumer channel in a sealed memfd, with eventfd wake-ups
