//! The Fleet Provisioning service: CreateCertificateFromCsr and
//! RegisterThing over MQTT, as the broker hands them over.
//!
//! Replies go back on the requesting connection only (the broker enforces
//! that). An ownership token is opaque, random, single-use, expires after
//! one hour, and is bound to the certificate it was issued for and to the
//! connection (client id and authenticating certificate) that asked for it:
//! AWS does not document the last binding, but a token replayed from another
//! connection is the mistake a device fleet must not get away with here.
//! A rejected request changes nothing in the registry: RegisterThing checks
//! the token, the template and every resource it names before it applies
//! any of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use tokio::time::Instant;

use super::ca::CertificateAuthority;
use super::registry::{CertificateStatus, NewCertificate, Registry};
use super::template::{Override, Plan, PolicyPlan, Template};
use crate::provisioning::{
    CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse, ErrorResponse,
    RegisterThingRequest, RegisterThingResponse, RequestTopic,
};

/// How long an ownership token stays usable, as on AWS.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The pseudo-parameter carrying the id of the certificate being registered.
const CERTIFICATE_ID_PARAMETER: &str = "AWS::IoT::Certificate::Id";

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

struct Token {
    certificate_id: String,
    requester: Peer,
    expires_at: Instant,
}

pub struct FleetProvisioning {
    registry: Arc<Registry>,
    ca: Arc<CertificateAuthority>,
    certificate_validity: Duration,
    tokens: Mutex<HashMap<String, Token>>,
}

impl FleetProvisioning {
    /// `certificate_validity` is the real lifetime of issued certificates.
    pub fn new(
        registry: Arc<Registry>,
        ca: Arc<CertificateAuthority>,
        certificate_validity: Duration,
    ) -> FleetProvisioning {
        FleetProvisioning {
            registry,
            ca,
            certificate_validity,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Handles a PUBLISH on a Fleet Provisioning request topic. Returns
    /// `None` when `topic` is not such a topic, so the broker routes it as
    /// an ordinary message.
    pub async fn handle_publish(&self, peer: &Peer, topic: &str, payload: &[u8]) -> Option<Reply> {
        let request = RequestTopic::parse(topic)?;
        let (api, outcome) = match request {
            RequestTopic::CreateCertificateFromCsr => (
                "create_certificate_from_csr",
                self.create_certificate_from_csr(peer, payload).map(to_json),
            ),
            RequestTopic::RegisterThing { template } => (
                "register_thing",
                self.register_thing(peer, template, payload).map(to_json),
            ),
        };
        let label = if outcome.is_ok() {
            "accepted"
        } else {
            "rejected"
        };
        metrics::counter!("fleetsim_emulator_provisioning_requests_total",
            "api" => api, "outcome" => label)
        .increment(1);
        if let Err(error) = &outcome {
            tracing::debug!(client_id = %peer.client_id, api, error = %error, "provisioning rejected");
        }
        Some(Reply {
            topic: format!("{topic}/{label}"),
            payload: outcome.unwrap_or_else(to_json),
        })
    }

    fn create_certificate_from_csr(
        &self,
        peer: &Peer,
        payload: &[u8],
    ) -> Result<CreateCertificateFromCsrResponse, ErrorResponse> {
        let request: CreateCertificateFromCsrRequest = parse_payload(payload)?;
        let issued = self
            .ca
            .sign_csr(
                &request.certificate_signing_request,
                self.certificate_validity,
            )
            .map_err(|e| {
                ErrorResponse::new(400, "InvalidCertificateSigningRequest", e.to_string())
            })?;
        self.registry.insert_certificate(NewCertificate {
            id: issued.id.clone(),
            pem: issued.pem.clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
            status: CertificateStatus::PendingActivation,
        });
        let token = self.issue_token(peer, &issued.id);
        Ok(CreateCertificateFromCsrResponse {
            certificate_ownership_token: token,
            certificate_id: issued.id,
            certificate_pem: issued.pem,
        })
    }

    fn register_thing(
        &self,
        peer: &Peer,
        template_name: &str,
        payload: &[u8],
    ) -> Result<RegisterThingResponse, ErrorResponse> {
        let request: RegisterThingRequest = parse_payload(payload)?;
        let template = self.enabled_template(template_name)?;
        let certificate_id = self.redeem_token(peer, &request.certificate_ownership_token)?;
        let mut parameters = request.parameters;
        parameters.insert(CERTIFICATE_ID_PARAMETER.to_owned(), certificate_id.clone());
        let plan = template
            .evaluate(&parameters)
            .map_err(|e| ErrorResponse::new(400, "InvalidParameters", e.to_string()))?;
        self.check_plan(&plan, &certificate_id)?;
        self.apply_plan(&plan, &certificate_id)
    }

    fn enabled_template(&self, name: &str) -> Result<Template, ErrorResponse> {
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
        Template::parse(&record.body).map_err(|e| {
            ErrorResponse::new(500, "InternalFailure", format!("template {name}: {e}"))
        })
    }

    fn issue_token(&self, peer: &Peer, certificate_id: &str) -> String {
        let bytes: [u8; 32] = rand::random();
        let token = base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut tokens = self.lock_tokens();
        self.expire_tokens(&mut tokens);
        tokens.insert(
            token.clone(),
            Token {
                certificate_id: certificate_id.to_owned(),
                requester: peer.clone(),
                expires_at: Instant::now() + TOKEN_LIFETIME,
            },
        );
        token
    }

    /// Consumes a token presented by `peer`, returning its certificate id.
    /// A token is only removed when it is valid, so a bad guess cannot burn
    /// someone else's token.
    fn redeem_token(&self, peer: &Peer, token: &str) -> Result<String, ErrorResponse> {
        let invalid = |message: &str| {
            ErrorResponse::new(400, "InvalidCertificateOwnershipToken", message.to_owned())
        };
        if token.is_empty() {
            return Err(invalid("Certificate ownership token cannot be empty."));
        }
        let mut tokens = self.lock_tokens();
        self.expire_tokens(&mut tokens);
        match tokens.get(token) {
            None => Err(invalid(
                "Certificate ownership token is unknown, used or expired.",
            )),
            Some(t) if t.requester != *peer => Err(invalid(
                "Certificate ownership token was issued to another connection.",
            )),
            Some(_) => Ok(tokens
                .remove(token)
                .map(|t| t.certificate_id)
                .unwrap_or_default()),
        }
    }

    /// Drops expired tokens and deletes their certificates if nothing ever
    /// claimed them, as AWS does.
    fn expire_tokens(&self, tokens: &mut HashMap<String, Token>) {
        let now = Instant::now();
        tokens.retain(|_, t| {
            let live = t.expires_at > now;
            if !live {
                self.registry
                    .remove_unclaimed_certificate(&t.certificate_id);
            }
            live
        });
    }

    /// Everything that could refuse the request, checked before any change.
    fn check_plan(&self, plan: &Plan, certificate_id: &str) -> Result<(), ErrorResponse> {
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
        if let Some(thing) = &plan.thing
            && thing.attributes_override == Override::Fail
            && self.registry.thing(&thing.name).is_some()
        {
            return Err(ErrorResponse::new(
                409,
                "ResourceConflictsException",
                format!("thing {} already exists", thing.name),
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
        Ok(())
    }

    fn apply_plan(
        &self,
        plan: &Plan,
        certificate_id: &str,
    ) -> Result<RegisterThingResponse, ErrorResponse> {
        let internal = |e: super::registry::RegistryError| {
            ErrorResponse::new(500, "InternalFailure", e.to_string())
        };
        let status = plan
            .certificate
            .as_ref()
            .and_then(|c| CertificateStatus::parse(&c.status))
            .unwrap_or(CertificateStatus::Active);
        for policy in &plan.policies {
            let name = match policy {
                PolicyPlan::Named(name) => name.clone(),
                PolicyPlan::Document { name, document } => {
                    if self.registry.policy(name).is_none() {
                        self.registry
                            .create_policy(name, document)
                            .map_err(internal)?;
                    }
                    name.clone()
                }
            };
            self.registry
                .attach_policy(&name, certificate_id)
                .map_err(internal)?;
        }
        let mut thing_name = String::new();
        if let Some(thing) = &plan.thing {
            let (_, created) = self.registry.ensure_thing(&thing.name, &thing.attributes);
            if !created && thing.attributes_override == Override::Replace {
                self.registry
                    .replace_thing_attributes(&thing.name, &thing.attributes)
                    .map_err(internal)?;
            }
            self.registry
                .attach_thing_principal(&thing.name, certificate_id)
                .map_err(internal)?;
            thing_name = thing.name.clone();
        }
        self.registry
            .set_certificate_status(certificate_id, status)
            .map_err(internal)?;
        Ok(RegisterThingResponse {
            device_configuration: plan.device_configuration.clone(),
            thing_name,
        })
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, Token>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn parse_payload<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, ErrorResponse> {
    serde_json::from_slice(payload).map_err(|e| {
        ErrorResponse::new(
            400,
            "InvalidPayload",
            format!("payload is not valid JSON for this API: {e}"),
        )
    })
}

fn to_json<T: Serialize>(value: T) -> Vec<u8> {
    serde_json::to_vec(&value).expect("provisioning payloads are plain maps and strings")
}

/// Parameters as a device sends them, for tests and the simulator.
pub fn serial_parameters(serial: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("SerialNumber".to_owned(), serial.to_owned())])
}
