//! The emulator's TLS acceptor (placeholder; being written).
