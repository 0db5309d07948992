//! The MQTT broker (placeholder; being written).
