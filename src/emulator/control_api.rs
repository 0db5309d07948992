//! The control-plane REST API (placeholder; being written).
