//! device
pub mod lifecycle;
pub mod mqtt;
