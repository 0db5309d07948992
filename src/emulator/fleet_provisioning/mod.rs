//! The Fleet Provisioning service: CreateKeysAndCertificate,
//! CreateCertificateFromCsr and RegisterThing over MQTT, in JSON or CBOR, as
//! the broker hands them over.
//!
//! Replies go back on the requesting connection only (the broker enforces
//! that), in the request's format. A rejected request changes nothing in
//! the registry and leaves the connection open: RegisterThing checks the
//! token, asks the template's pre-provisioning hook, and checks every
//! resource the template names before it applies any of them.

pub mod format;
pub mod keys;
mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::ca::{CertificateAuthority, IssuedCertificate};
use super::hook::{HookEvent, HookRegistry};
use super::registry::{CertificateStatus, NewCertificate, Registry, RegistryError, TemplateRecord};
use super::template::{Plan, PolicyPlan, Template, ThingProperties};
use crate::pacing::Buckets;
use crate::provisioning::{
    CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse,
    CreateKeysAndCertificateResponse, ErrorResponse, PayloadFormat, RegisterThingRequest,
    RegisterThingResponse, RequestApi, RequestTopic,
};
use keys::{KeyPool, ServerKeyType};
use tokens::TokenBook;

/// How long an ownership token stays usable, as on AWS.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The pseudo-parameter carrying the id of the certificate being registered.
const CERTIFICATE_ID_PARAMETER: &str = "AWS::IoT::Certificate::Id";

/// How the service issues certificates and tokens.
#[derive(Debug, Clone)]
pub struct ProvisioningSettings {
    /// Real lifetime of issued certificates.
    pub certificate_validity: Duration,
    /// Lifetime of an ownership token (AWS: one hour).
    pub token_lifetime: Duration,
    /// The key CreateKeysAndCertificate generates.
    pub server_key: ServerKeyType,
    /// Keys generated ahead of demand; 0 generates each on request.
    pub key_pool_size: usize,
    /// Faults injected on purpose (latency, throttles, hook denials).
    pub faults: Option<Arc<super::faults::EmulatorFaults>>,
    /// Requests per second each API serves before rejecting with 429.
    pub quotas: crate::pacing::Quotas,
}

impl Default for ProvisioningSettings {
    fn default() -> Self {
        ProvisioningSettings {
            certificate_validity: Duration::from_secs(365 * 86_400),
            token_lifetime: TOKEN_LIFETIME,
            server_key: ServerKeyType::Rsa2048,
            key_pool_size: 0,
            faults: None,
            quotas: crate::pacing::Quotas::default(),
        }
    }
}

/// Who sent a request: the connection's client id and the id of the
/// certificate it authenticated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub client_id: String,
    pub certificate_id: String,
}

/// A reply to deliver on the requesting connection only, and only if that
/// connection is subscribed to `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub topic: String,
    pub payload: Vec<u8>,
}

pub struct FleetProvisioning {
    registry: Arc<Registry>,
    ca: Arc<CertificateAuthority>,
    settings: ProvisioningSettings,
    tokens: TokenBook,
    keys: KeyPool,
    hooks: Arc<HookRegistry>,
    certificate_rates: Buckets,
    register_rates: Buckets,
    /// Templates parsed for RegisterThing, by name, with the body each was parsed from: a
    /// fleet's requests all name one template, and parsing its body again for each cost
    /// more than the rest of the request outside its cryptography. A body changed since
    /// (UpdateProvisioningTemplate) does not match and is parsed anew.
    parsed_templates: Mutex<HashMap<String, (String, Arc<Template>)>>,
}

type Outcome = Result<Vec<u8>, ErrorResponse>;

impl FleetProvisioning {
    /// `certificate_validity` is the real lifetime of issued certificates;
    /// everything else takes its default.
    pub fn new(
        registry: Arc<Registry>,
        ca: Arc<CertificateAuthority>,
        certificate_validity: Duration,
    ) -> FleetProvisioning {
        let settings = ProvisioningSettings {
            certificate_validity,
            ..ProvisioningSettings::default()
        };
        FleetProvisioning::with_settings(registry, ca, settings, Arc::default())
    }

    /// Starts the key pool (inside a tokio runtime) with `settings`.
    pub fn with_settings(
        registry: Arc<Registry>,
        ca: Arc<CertificateAuthority>,
        settings: ProvisioningSettings,
        hooks: Arc<HookRegistry>,
    ) -> FleetProvisioning {
        FleetProvisioning {
            tokens: TokenBook::new(settings.token_lifetime),
            keys: KeyPool::start(settings.server_key, settings.key_pool_size),
            certificate_rates: Buckets::new(settings.quotas.create_certificate),
            register_rates: Buckets::new(settings.quotas.register_thing),
            parsed_templates: Mutex::default(),
            registry,
            ca,
            settings,
            hooks,
        }
    }

    /// The pool CreateKeysAndCertificate takes keys from.
    pub fn key_pool(&self) -> &KeyPool {
        &self.keys
    }

    /// Handles a PUBLISH on a Fleet Provisioning request topic. Returns
    /// `None` when `topic` is not such a topic, so the broker routes it as
    /// an ordinary message.
    pub async fn handle_publish(&self, peer: &Peer, topic: &str, payload: &[u8]) -> Option<Reply> {
        let request = RequestTopic::parse(topic)?;
        let started = tokio::time::Instant::now();
        let format = request.format;
        if let Some(faults) = &self.settings.faults
            && let Err(error) = faults.before_answer().await
        {
            return Some(Reply {
                topic: format!("{topic}/rejected"),
                payload: format::encode(format, &error),
            });
        }
        let (api, outcome) = match self.throttle(&request.api) {
            Some(throttled) => throttled,
            None => self.dispatch(peer, request, payload).await,
        };
        let label = if outcome.is_ok() {
            "accepted"
        } else {
            "rejected"
        };
        metrics::counter!("fleetsim_emulator_provisioning_requests_total",
            "api" => api, "outcome" => label)
        .increment(1);
        metrics::histogram!(crate::observe::metrics::EMULATOR_REQUEST_DURATION, "api" => api)
            .record(started.elapsed().as_secs_f64());
        let payload = outcome.unwrap_or_else(|mut error| {
            tracing::debug!(client_id = %peer.client_id, api, error = %error, "provisioning rejected");
            truncate_message(&mut error.error_message);
            format::encode(format, &error)
        });
        Some(Reply {
            topic: format!("{topic}/{label}"),
            payload,
        })
    }

    /// A 429 rejection when the API is over its configured rate, the way
    /// AWS answers a throttled Fleet Provisioning request [unverified code].
    fn throttle(&self, api: &RequestApi<'_>) -> Option<(&'static str, Outcome)> {
        let (name, rates) = match api {
            RequestApi::CreateKeysAndCertificate => {
                ("create_keys_and_certificate", &self.certificate_rates)
            }
            RequestApi::CreateCertificateFromCsr => {
                ("create_certificate_from_csr", &self.certificate_rates)
            }
            RequestApi::RegisterThing { .. } => ("register_thing", &self.register_rates),
        };
        (!rates.try_take(name)).then(|| {
            let error = ErrorResponse::new(429, "ThrottlingException", "Rate exceeded");
            (name, Err(error))
        })
    }

    async fn dispatch(
        &self,
        peer: &Peer,
        request: RequestTopic<'_>,
        payload: &[u8],
    ) -> (&'static str, Outcome) {
        let format = request.format;
        match request.api {
            RequestApi::CreateKeysAndCertificate => (
                "create_keys_and_certificate",
                self.create_keys_and_certificate(peer, format, payload)
                    .await,
            ),
            RequestApi::CreateCertificateFromCsr => (
                "create_certificate_from_csr",
                self.create_certificate_from_csr(peer, format, payload),
            ),
            RequestApi::RegisterThing { template } => (
                "register_thing",
                self.register_thing(peer, template, format, payload).await,
            ),
        }
    }

    async fn create_keys_and_certificate(
        &self,
        peer: &Peer,
        format: PayloadFormat,
        payload: &[u8],
    ) -> Outcome {
        let _: serde_json::Map<String, serde_json::Value> = format::decode(format, payload)?;
        let key = self.keys.take().await.map_err(internal)?;
        let issued = self
            .ca
            .issue_for_key(&key.pair, self.settings.certificate_validity)
            .map_err(internal)?;
        let token = self.register_pending(peer, &issued);
        Ok(format::encode(
            format,
            &CreateKeysAndCertificateResponse {
                certificate_id: issued.id,
                certificate_pem: issued.pem,
                private_key: key.private_key_pem,
                certificate_ownership_token: token,
            },
        ))
    }

    fn create_certificate_from_csr(
        &self,
        peer: &Peer,
        format: PayloadFormat,
        payload: &[u8],
    ) -> Outcome {
        let request: CreateCertificateFromCsrRequest = format::decode(format, payload)?;
        let issued = self
            .ca
            .sign_csr(
                &request.certificate_signing_request,
                self.settings.certificate_validity,
            )
            .map_err(|e| {
                ErrorResponse::new(400, "InvalidCertificateSigningRequest", e.to_string())
            })?;
        let token = self.register_pending(peer, &issued);
        Ok(format::encode(
            format,
            &CreateCertificateFromCsrResponse {
                certificate_ownership_token: token,
                certificate_id: issued.id,
                certificate_pem: issued.pem,
            },
        ))
    }

    /// Records a new certificate as PENDING_ACTIVATION and issues its token.
    fn register_pending(&self, peer: &Peer, issued: &IssuedCertificate) -> String {
        self.registry.insert_certificate(NewCertificate {
            id: issued.id.clone(),
            pem: issued.pem.clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
            status: CertificateStatus::PendingActivation,
        });
        self.tokens.issue(&self.registry, peer, &issued.id)
    }

    async fn register_thing(
        &self,
        peer: &Peer,
        template_name: &str,
        format: PayloadFormat,
        payload: &[u8],
    ) -> Outcome {
        let request: RegisterThingRequest = format::decode(format, payload)?;
        let (record, template) = self.enabled_template(template_name)?;
        let token = &request.certificate_ownership_token;
        let certificate_id = self.tokens.check(&self.registry, peer, token)?;
        let mut parameters = request.parameters;
        if let Some(faults) = &self.settings.faults {
            faults.hook_denies()?;
        }
        if let Some(hook) = &record.pre_provisioning_hook {
            let event = self.hook_event(peer, &record, &certificate_id, &parameters);
            let overrides = self
                .hooks
                .invoke(&hook.target_arn, &event)
                .await
                .map_err(|e| {
                    ErrorResponse::new(
                        403,
                        "AccessDeniedException",
                        format!("pre-provisioning hook: {e}"),
                    )
                })?;
            parameters.extend(overrides);
        }
        parameters.insert(CERTIFICATE_ID_PARAMETER.to_owned(), certificate_id.clone());
        let plan = template
            .evaluate(&parameters)
            .map_err(|e| ErrorResponse::new(400, "InvalidParameters", e.to_string()))?;
        let thing = self.check_plan(&plan, &certificate_id)?;
        self.tokens.redeem(&self.registry, peer, token)?;
        let reply = self.apply_plan(&plan, thing, &certificate_id)?;
        Ok(format::encode(format, &reply))
    }

    fn hook_event(
        &self,
        peer: &Peer,
        record: &TemplateRecord,
        certificate_id: &str,
        parameters: &BTreeMap<String, String>,
    ) -> HookEvent {
        HookEvent {
            claim_certificate_id: peer.certificate_id.clone(),
            certificate_id: certificate_id.to_owned(),
            certificate_pem: self
                .registry
                .certificate(certificate_id)
                .map(|c| c.pem)
                .unwrap_or_default(),
            template_arn: record.arn.clone(),
            client_id: peer.client_id.clone(),
            parameters: parameters.clone(),
        }
    }

    fn enabled_template(
        &self,
        name: &str,
    ) -> Result<(TemplateRecord, Arc<Template>), ErrorResponse> {
        let record = self.registry.template(name).ok_or_else(|| {
            ErrorResponse::new(
                404,
                "ResourceNotFoundException",
                format!("template {name} does not exist"),
            )
        })?;
        if !record.enabled {
            return Err(ErrorResponse::new(
                403,
                "TemplateDisabled",
                format!("template {name} is disabled"),
            ));
        }
        let template = self.parsed_template(&record)?;
        Ok((record, template))
    }

    fn parsed_template(&self, record: &TemplateRecord) -> Result<Arc<Template>, ErrorResponse> {
        let lock = || {
            self.parsed_templates
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        if let Some((body, template)) = lock().get(&record.name)
            && *body == record.body
        {
            return Ok(Arc::clone(template));
        }
        let template = Template::parse(&record.body).map_err(|e| {
            let name = &record.name;
            ErrorResponse::new(500, "InternalFailure", format!("template {name}: {e}"))
        })?;
        let template = Arc::new(template);
        let parsed = (record.body.clone(), Arc::clone(&template));
        lock().insert(record.name.clone(), parsed);
        Ok(template)
    }

    /// Everything that could refuse the request, checked before any change;
    /// returns the thing's properties after provisioning.
    fn check_plan(
        &self,
        plan: &Plan,
        certificate_id: &str,
    ) -> Result<Option<ThingProperties>, ErrorResponse> {
        let certificate = plan.certificate.as_ref().ok_or_else(|| {
            ErrorResponse::new(
                400,
                "InvalidTemplate",
                "template declares no AWS::IoT::Certificate",
            )
        })?;
        if certificate.certificate_id != certificate_id {
            return Err(ErrorResponse::new(
                400,
                "InvalidParameters",
                "template's CertificateId is not the certificate of the ownership token",
            ));
        }
        if CertificateStatus::parse(&certificate.status).is_none() {
            return Err(ErrorResponse::new(
                400,
                "InvalidTemplate",
                format!("bad certificate status {}", certificate.status),
            ));
        }
        for policy in &plan.policies {
            if let PolicyPlan::Named(name) = policy
                && self.registry.policy(name).is_none()
            {
                return Err(ErrorResponse::new(
                    404,
                    "ResourceNotFoundException",
                    format!("policy {name} does not exist"),
                ));
            }
        }
        let Some(thing) = plan.thing.as_ref() else {
            return Ok(None);
        };
        let properties = self.resolve_thing(thing)?;
        self.registry
            .check_thing_properties(&thing.name, &properties)
            .map_err(refused_thing)?;
        Ok(Some(properties))
    }

    fn resolve_thing(
        &self,
        thing: &super::template::ThingPlan,
    ) -> Result<ThingProperties, ErrorResponse> {
        let existing = self.registry.thing(&thing.name).map(|t| ThingProperties {
            attributes: t.attributes,
            thing_type: t.thing_type,
            groups: t.groups,
        });
        thing.resolve(existing.as_ref()).map_err(|conflict| {
            ErrorResponse::new(
                409,
                "ResourceConflictsException",
                format!(
                    "thing {} exists and OverrideSettings.{} is FAIL",
                    thing.name, conflict.0
                ),
            )
        })
    }

    fn apply_plan(
        &self,
        plan: &Plan,
        properties: Option<ThingProperties>,
        certificate_id: &str,
    ) -> Result<RegisterThingResponse, ErrorResponse> {
        for policy in &plan.policies {
            let name = self.ensure_policy(policy)?;
            self.registry
                .attach_policy(&name, certificate_id)
                .map_err(internal)?;
        }
        let mut thing_name = String::new();
        if let (Some(thing), Some(properties)) = (&plan.thing, properties) {
            if !self.registry.ensure_thing_with(&thing.name, &properties) {
                self.registry
                    .set_thing_properties(&thing.name, &properties)
                    .map_err(internal)?;
            }
            self.registry
                .attach_thing_principal(&thing.name, certificate_id)
                .map_err(internal)?;
            thing_name = thing.name.clone();
        }
        let status = plan
            .certificate
            .as_ref()
            .and_then(|c| CertificateStatus::parse(&c.status))
            .unwrap_or(CertificateStatus::Active);
        self.registry
            .set_certificate_status(certificate_id, status)
            .map_err(internal)?;
        Ok(RegisterThingResponse {
            device_configuration: plan.device_configuration.clone(),
            thing_name,
        })
    }

    fn ensure_policy(&self, policy: &PolicyPlan) -> Result<String, ErrorResponse> {
        match policy {
            PolicyPlan::Named(name) => Ok(name.clone()),
            PolicyPlan::Document { name, document } => {
                if self.registry.policy(name).is_none() {
                    match self.registry.create_policy(name, document) {
                        Ok(_) | Err(RegistryError::AlreadyExists { .. }) => {}
                        Err(error) => return Err(internal(error)),
                    }
                }
                Ok(name.clone())
            }
        }
    }
}

/// A thing the template would create with a missing type or group, or too
/// many attributes: the template's fault, answered as AWS names it.
fn refused_thing(error: RegistryError) -> ErrorResponse {
    match error {
        RegistryError::NotFound { .. } => {
            ErrorResponse::new(404, "ResourceNotFoundException", error.to_string())
        }
        other => ErrorResponse::new(400, "InvalidRequestException", other.to_string()),
    }
}

/// The longest `errorMessage` a rejection carries. Messages quote what the device sent (a
/// serde error quotes a mistyped string whole); unbounded, a 128 KiB request would get a
/// reply too large for the packet size limit, and the broker would close the connection
/// instead of answering.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

fn truncate_message(message: &mut String) {
    if message.len() <= MAX_ERROR_MESSAGE_BYTES {
        return;
    }
    let mut cut = MAX_ERROR_MESSAGE_BYTES - "...".len();
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str("...");
}

/// A failure on the emulator's side, not the device's.
fn internal(error: impl std::fmt::Display) -> ErrorResponse {
    ErrorResponse::new(500, "InternalFailure", error.to_string())
}

/// Parameters as a device sends them, for tests and the simulator.
pub fn serial_parameters(serial: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("SerialNumber".to_owned(), serial.to_owned())])
}

/// JSON of a provisioning payload (tests and tools).
pub fn to_json<T: Serialize>(value: T) -> Vec<u8> {
    format::encode(PayloadFormat::Json, &value)
}
