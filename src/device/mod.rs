//! One simulated device: its MQTT connection, the decisions of its life
//! (backoff, rotation timing) and the task that drives it from provisioning
//! by claim through telemetry and certificate rotation.

mod by_hand;
pub mod faults;
pub mod lifecycle;
pub mod live;
pub mod mqtt;
mod online;
mod provision;
mod resume;
mod rotate;
mod storage;
pub mod task;

pub use faults::DeviceFaults;
pub use rotate::{Proof, probe, prove_refused, prove_works};
pub use task::{ClaimSlot, DeviceContext, DeviceOutcome, TelemetrySettings};
