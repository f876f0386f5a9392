//! memfd and named POSIX shared-memory segments: ownership, seals, validated headers and typed views that are sound across processes
