"""I/O adapters: HTTP through requests, storage, and the system clock."""
