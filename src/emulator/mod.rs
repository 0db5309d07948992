//! The local IoT Core emulator: certificate authority, registry, MQTT broker
//! over mutual TLS, Fleet Provisioning, policies and the control-plane API.

pub mod broker;
pub mod ca;
pub mod control_api;
pub mod fleet_provisioning;
pub mod policy;
pub mod registry;
pub mod template;
pub mod tls;
pub mod topic;
