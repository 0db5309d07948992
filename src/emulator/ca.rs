//! The emulator's certificate authority (placeholder; being written).
