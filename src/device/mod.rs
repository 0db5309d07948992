//! One simulated device: its MQTT connection, the decisions of its life
//! (backoff, rotation timing) and the task that drives it from provisioning
//! by claim through telemetry and certificate rotation.

pub mod lifecycle;
pub mod live;
pub mod mqtt;
pub mod task;

pub use task::{DeviceContext, DeviceOutcome, TelemetrySettings};
