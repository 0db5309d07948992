//! What a run measures and how it is reported: operation latencies in HDR
//! histograms and Prometheus histograms, failures by bounded reason, live
//! fleet gauges, and the end-of-run report with its SLO verdicts.
//!
//! Every label value used in metrics comes from the fixed enums below, so
//! cardinality is bounded by construction; nothing here is per device.

pub mod faults;
pub mod merge;
pub mod metrics;
pub mod progress;
mod recorder;
pub mod report;
pub mod slo;

use std::net::SocketAddr;

pub use recorder::{Recorder, Snapshot};
pub use report::{FinalCheck, Report};

/// A timed step of a device's life. Latency is measured from when the step
/// was *due*, not from when it started, so a stalled server cannot hide its
/// own latency (coordinated omission).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// TLS + MQTT CONNECT with the claim certificate.
    ClaimConnect,
    /// CreateCertificateFromCsr request to its accepted reply.
    CreateCertificate,
    /// RegisterThing request to its accepted reply.
    RegisterThing,
    /// Whole provisioning, from the scheduled arrival to the first
    /// connection with the device's own certificate.
    Provision,
    /// TLS + MQTT CONNECT with the device's own certificate.
    Connect,
    /// One telemetry publish, to its PUBACK (QoS 1) or write (QoS 0).
    Publish,
    /// Whole rotation, from when it was due to the old certificate refused.
    Rotate,
    /// Detach and revoke of the old certificate through the control plane.
    Revoke,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::ClaimConnect,
        Op::CreateCertificate,
        Op::RegisterThing,
        Op::Provision,
        Op::Connect,
        Op::Publish,
        Op::Rotate,
        Op::Revoke,
    ];

    /// The metric label and report key.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::ClaimConnect => "claim_connect",
            Op::CreateCertificate => "create_certificate",
            Op::RegisterThing => "register_thing",
            Op::Provision => "provision",
            Op::Connect => "connect",
            Op::Publish => "publish",
            Op::Rotate => "rotate",
            Op::Revoke => "revoke",
        }
    }
}

/// Why a step failed: a small fixed set, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureReason {
    /// The step did not finish before its deadline.
    Timeout,
    /// TCP connect failed or the connection dropped mid-step.
    Connection,
    /// The server refused the TLS handshake (unknown or inactive certificate).
    TlsRefused,
    /// The broker refused or closed the MQTT session (CONNACK, policy).
    MqttRefused,
    /// Fleet Provisioning answered on a `rejected` topic.
    ProvisioningRejected,
    /// The service asked us to slow down.
    Throttled,
    /// A reply or certificate could not be understood.
    Protocol,
    /// Reading or writing credentials failed.
    Storage,
    /// A control-plane call (detach, revoke) failed.
    ControlPlane,
    /// A retired certificate was still accepted after revocation.
    RetiredStillAccepted,
}

impl FailureReason {
    pub const ALL: [FailureReason; 10] = [
        FailureReason::Timeout,
        FailureReason::Connection,
        FailureReason::TlsRefused,
        FailureReason::MqttRefused,
        FailureReason::ProvisioningRejected,
        FailureReason::Throttled,
        FailureReason::Protocol,
        FailureReason::Storage,
        FailureReason::ControlPlane,
        FailureReason::RetiredStillAccepted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Timeout => "timeout",
            FailureReason::Connection => "connection",
            FailureReason::TlsRefused => "tls_refused",
            FailureReason::MqttRefused => "mqtt_refused",
            FailureReason::ProvisioningRejected => "provisioning_rejected",
            FailureReason::Throttled => "throttled",
            FailureReason::Protocol => "protocol",
            FailureReason::Storage => "storage",
            FailureReason::ControlPlane => "control_plane",
            FailureReason::RetiredStillAccepted => "retired_still_accepted",
        }
    }
}

/// Where a device is in its life, as counted by the live gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceState {
    /// Spawned, waiting for its scheduled arrival.
    Pending,
    /// Provisioning by claim, up to its first connection with its own certificate.
    Provisioning,
    /// Connected with its own certificate.
    Online,
    /// Replacing its certificate.
    Rotating,
    /// Provisioned but disconnected, reconnecting or stopped.
    Offline,
    /// Gave up after exhausting its attempts.
    Failed,
}

impl DeviceState {
    pub const ALL: [DeviceState; 6] = [
        DeviceState::Pending,
        DeviceState::Provisioning,
        DeviceState::Online,
        DeviceState::Rotating,
        DeviceState::Offline,
        DeviceState::Failed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Provisioning => "provisioning",
            DeviceState::Online => "online",
            DeviceState::Rotating => "rotating",
            DeviceState::Offline => "offline",
            DeviceState::Failed => "failed",
        }
    }
}

/// Why observing or reporting failed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("metrics exporter already listens on {listening}; cannot also listen on {requested}")]
    ExporterAlreadyListening {
        requested: SocketAddr,
        listening: SocketAddr,
    },
    #[error("another metrics recorder is already installed in this process")]
    RecorderTaken,
    #[error("cannot listen for metrics on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("cannot start the metrics exporter thread: {0}")]
    ExporterThread(std::io::Error),
    #[error("cannot serialize the {op} histogram: {reason}")]
    HistogramEncode { op: String, reason: String },
    #[error("report holds a corrupt {op} histogram: {reason}")]
    HistogramDecode { op: String, reason: String },
    #[error("report is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}
