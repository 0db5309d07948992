//! fleetsim: a load simulator for AWS IoT Core fleets.
//!
//! Thousands of simulated devices provision by claim, connect with their own
//! certificates over mutual TLS, send telemetry and rotate their certificates
//! on a compressed clock, against an embedded IoT Core emulator or a real
//! endpoint. The binary in `main.rs` is a thin command line over this library.

pub mod bench;
pub mod check;
pub mod console;
pub mod control;
pub mod device;
pub mod emulator;
pub mod fleet;
pub mod identity;
pub mod lanes;
pub mod observe;
pub mod pacing;
pub mod provisioning;
pub mod run;
pub mod scenario;
pub mod standalone;
pub mod target;
