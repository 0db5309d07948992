//! The emulator's control plane: the subset of the AWS IoT REST API that
//! fleetsim uses, served over loopback HTTP in restJson1 shapes so that the
//! real `aws-sdk-iot` client drives the emulator and AWS through one path.
//!
//! Signatures are not checked; every request is answered from the shared
//! [`Registry`], with AWS's error codes, and counted by operation and outcome.

mod certificates;
mod error;
mod policies;
mod request;
mod route;
mod templates;
mod thing_groups;
mod thing_types;
mod things;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use self::error::ApiError;
use self::request::Call;
use self::route::Operation;
use super::ca::CertificateAuthority;
use super::fleet_provisioning::keys::{KeyPool, ServerKeyType};
use super::registry::Registry;

/// Requests larger than this are refused; the largest legitimate body is a
/// 10 KiB template or a 4 KiB CSR.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the control plane needs besides the registry and the CA.
#[derive(Debug, Clone)]
pub struct ControlApiSettings {
    /// The MQTT endpoint returned by DescribeEndpoint.
    pub endpoint_address: String,
    /// The lifetime of certificates issued by CreateCertificateFromCsr and
    /// CreateKeysAndCertificate.
    pub certificate_validity: Duration,
    /// How long DetachThingPrincipal takes to take effect (AWS: seconds);
    /// the call answers at once either way.
    pub detach_propagation_delay: Duration,
    /// How long AttachPolicy and DetachPolicy take to take effect (AWS's
    /// policy cache); the call answers at once either way.
    pub policy_propagation_delay: Duration,
    /// The key CreateKeysAndCertificate generates.
    pub server_key: ServerKeyType,
    /// Requests per second each operation serves before answering
    /// ThrottlingException (`Quotas::control_plane`; unlimited by default).
    pub quotas: crate::pacing::Quotas,
}

/// AWS's control plane issues certificates that expire at
/// 2049-12-31T23:59:59Z [aws-iot-facts §4.1]; only certificates issued over
/// Fleet Provisioning follow the emulator's (compressed) validity. A claim
/// certificate made through the control plane must outlive every arrival.
pub fn aws_certificate_validity() -> Duration {
    const END_OF_2049: u64 = 2_524_607_999;
    let end = std::time::UNIX_EPOCH + Duration::from_secs(END_OF_2049);
    end.duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::from_secs(365 * 86_400))
}

impl Default for ControlApiSettings {
    fn default() -> Self {
        ControlApiSettings {
            endpoint_address: String::new(),
            certificate_validity: aws_certificate_validity(),
            detach_propagation_delay: Duration::ZERO,
            policy_propagation_delay: Duration::ZERO,
            server_key: ServerKeyType::Rsa2048,
            quotas: crate::pacing::Quotas::default(),
        }
    }
}

/// The control-plane server.
pub struct ControlApi;

/// A running control-plane server; dropping it stops the server too.
pub struct ControlApiHandle {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
    stop: DropGuard,
}

struct Service {
    registry: Arc<Registry>,
    ca: Arc<CertificateAuthority>,
    keys: KeyPool,
    settings: ControlApiSettings,
    /// One bucket per operation.
    rates: crate::pacing::Buckets,
}

impl ControlApi {
    /// Binds `bind` and serves until the handle is shut down or dropped.
    /// Keep-alive connections are served concurrently, one task each.
    pub async fn start(
        bind: SocketAddr,
        registry: Arc<Registry>,
        ca: Arc<CertificateAuthority>,
        settings: ControlApiSettings,
    ) -> std::io::Result<ControlApiHandle> {
        let listener = TcpListener::bind(bind).await?;
        let local_addr = listener.local_addr()?;
        let service = Arc::new(Service {
            registry,
            ca,
            keys: KeyPool::start(settings.server_key, 0),
            rates: crate::pacing::Buckets::new(settings.quotas.control_plane),
            settings,
        });
        let router = Router::new().fallback(handle).with_state(service);
        let stop = CancellationToken::new();
        let server =
            axum::serve(listener, router).with_graceful_shutdown(stop.clone().cancelled_owned());
        let task = tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::warn!(%error, "control-plane server stopped");
            }
        });
        tracing::info!(%local_addr, "control-plane API listening");
        Ok(ControlApiHandle {
            local_addr,
            task,
            stop: stop.drop_guard(),
        })
    }
}

impl ControlApiHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL to give the SDK as its endpoint override.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn shutdown(self) {
        drop(self.stop);
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "control-plane server task failed");
        }
    }
}

async fn handle(State(service): State<Arc<Service>>, request: Request) -> Response {
    let request_id = request::request_id();
    let span = tracing::debug_span!(
        "control_request",
        request_id = %request_id,
        operation = tracing::field::Empty,
    );
    let mut response = serve(&service, request, &span)
        .instrument(span.clone())
        .await;
    let header =
        HeaderValue::from_str(&request_id).expect("invariant: request ids are hex and dashes");
    response.headers_mut().insert("x-amzn-requestid", header);
    response
}

async fn serve(service: &Service, request: Request, span: &tracing::Span) -> Response {
    let started = tokio::time::Instant::now();
    let (parts, body) = request.into_parts();
    let operation = match Operation::route(&parts.method, parts.uri.path()) {
        Ok(operation) => operation,
        Err(error) => return finish("unknown", Err(error)),
    };
    span.record("operation", operation.name());
    if !service.rates.try_take(operation.name()) {
        let error = ApiError::Throttling("Rate exceeded".into());
        return finish(operation.name(), Err(error));
    }
    let result = match read_body(body).await {
        Ok(body) => match Call::new(&parts, body) {
            Ok(call) => dispatch(service, &operation, &call).await,
            Err(error) => Err(error),
        },
        Err(error) => Err(error),
    };
    // An answer never reports a change that a crash could still undo.
    let result = match (result, service.registry.durable().await) {
        (Ok(_), Err(error)) => Err(ApiError::InternalFailure(error.to_string())),
        (result, _) => result,
    };
    metrics::histogram!(
        crate::observe::metrics::EMULATOR_REQUEST_DURATION,
        "api" => operation.name(),
    )
    .record(started.elapsed().as_secs_f64());
    finish(operation.name(), result)
}

async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::InvalidRequest(format!(
                "request body unreadable or over {MAX_BODY_BYTES} bytes"
            ))
        })
}

async fn dispatch(
    service: &Service,
    operation: &Operation,
    call: &Call,
) -> Result<Value, ApiError> {
    match operation {
        Operation::CreateKeysAndCertificate => certificates::create_keys(service, call).await,
        Operation::DeleteCertificate { certificate_id } => {
            certificates::delete(service, call, certificate_id)
        }
        Operation::ListCertificates => certificates::list(service, call),
        Operation::DeletePolicy { policy } => policies::delete(service, policy),
        Operation::ListAttachedPolicies { target } => {
            policies::list_attached(service, call, target)
        }
        Operation::DeleteThing { thing } => things::delete(service, call, thing),
        Operation::ListThings => things::list(service, call),
        Operation::ListTargetsForPolicy { policy } => policies::list_targets(service, call, policy),
        Operation::UpdateProvisioningTemplate { template } => {
            templates::update(service, call, template)
        }
        Operation::DeleteProvisioningTemplate { template } => templates::delete(service, template),
        Operation::CreatePolicy { policy } => policies::create(service, call, policy),
        Operation::GetPolicy { policy } => policies::get(service, policy),
        Operation::AttachPolicy { policy } => policies::attach(service, call, policy),
        Operation::DetachPolicy { policy } => policies::detach(service, call, policy),
        Operation::CreateProvisioningTemplate => templates::create(service, call),
        Operation::DescribeProvisioningTemplate { template } => {
            templates::describe(service, template)
        }
        Operation::CreateCertificateFromCsr => certificates::create_from_csr(service, call),
        Operation::DescribeCertificate { certificate_id } => {
            certificates::describe(service, certificate_id)
        }
        Operation::UpdateCertificate { certificate_id } => {
            certificates::update(service, call, certificate_id)
        }
        Operation::DescribeThing { thing } => things::describe(service, thing),
        Operation::AttachThingPrincipal { thing } => things::attach_principal(service, call, thing),
        Operation::DetachThingPrincipal { thing } => things::detach_principal(service, call, thing),
        Operation::ListThingPrincipals { thing } => things::list_principals(service, call, thing),
        Operation::DescribeEndpoint => describe_endpoint(service, call),
        Operation::CreateThingType { thing_type } => thing_types::create(service, call, thing_type),
        Operation::DescribeThingType { thing_type } => thing_types::describe(service, thing_type),
        Operation::ListThingTypes => thing_types::list(service, call),
        Operation::DeprecateThingType { thing_type } => {
            thing_types::deprecate(service, call, thing_type)
        }
        Operation::DeleteThingType { thing_type } => thing_types::delete(service, thing_type),
        Operation::CreateThingGroup { group } => thing_groups::create(service, call, group),
        Operation::DescribeThingGroup { group } => thing_groups::describe(service, group),
        Operation::ListThingGroups => thing_groups::list(service, call),
        Operation::DeleteThingGroup { group } => thing_groups::delete(service, call, group),
        Operation::AddThingToThingGroup => thing_groups::add_thing(service, call),
        Operation::RemoveThingFromThingGroup => thing_groups::remove_thing(service, call),
        Operation::ListThingsInThingGroup { group } => {
            thing_groups::things_in(service, call, group)
        }
        Operation::ListThingGroupsForThing { thing } => {
            thing_groups::groups_of(service, call, thing)
        }
    }
}

/// AWS answers DescribeEndpoint with a bare host name, and every client then
/// connects to port 8883. The emulator does the same when it listens there;
/// on any other port (tests, several emulators on one machine) it answers
/// `host:port`, because a bare host would send clients to the wrong port.
pub fn endpoint_address(mqtt: SocketAddr) -> String {
    match mqtt.port() {
        AWS_MQTT_PORT => mqtt.ip().to_string(),
        _ => mqtt.to_string(),
    }
}

/// The port AWS IoT Core serves MQTT over mutual TLS on.
const AWS_MQTT_PORT: u16 = 8883;

/// Only the data endpoints exist here; the credential provider and jobs
/// endpoints are refused rather than answered with a wrong address.
fn describe_endpoint(service: &Service, call: &Call) -> Result<Value, ApiError> {
    match call.query("endpointType") {
        None | Some("iot:Data") | Some("iot:Data-ATS") => {
            Ok(json!({ "endpointAddress": service.settings.endpoint_address }))
        }
        Some(other) => Err(ApiError::InvalidRequest(format!(
            "endpoint type {other} is not served by the emulator"
        ))),
    }
}

fn finish(operation: &'static str, result: Result<Value, ApiError>) -> Response {
    let outcome = result.as_ref().map_or_else(ApiError::outcome, |_| "ok");
    metrics::counter!(
        "fleetsim_emulator_control_requests_total",
        "operation" => operation,
        "outcome" => outcome,
    )
    .increment(1);
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(error) => {
            tracing::debug!(code = error.code(), message = %error, "control request refused");
            error.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_address;

    #[test]
    fn the_endpoint_is_a_bare_host_on_aws_port_and_host_and_port_elsewhere() {
        assert_eq!(
            endpoint_address("127.0.0.1:8883".parse().unwrap()),
            "127.0.0.1"
        );
        assert_eq!(
            endpoint_address("127.0.0.1:40001".parse().unwrap()),
            "127.0.0.1:40001"
        );
    }
}
