//! The control plane through `aws-sdk-iot` (placeholder; being written).
