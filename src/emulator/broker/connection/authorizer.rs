//! The policy check of one connection: builds the request context from what was computed
//! once at CONNECT (connect attributes, will topic), the certificate's fields (parsed once,
//! the first time a policy reads them), and what may change while connected (the thing
//! attachment), and counts every denial by action.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tracing::debug;

use super::open::PeerCertificate;
use super::session_expiry;
use crate::emulator::broker::packet::ConnectRequest;
use crate::emulator::broker::{Shared, metric};
use crate::emulator::policy::{self, Action, CertificateFields, RequestContext};

/// Evaluates the certificate's policies for this connection. Everything that does not
/// change during a connection (certificate fields, connect attributes) is computed once.
pub(super) struct Authorizer {
    shared: Arc<Shared>,
    client_id: String,
    pub(super) certificate_id: String,
    certificate_der: CertificateDer<'static>,
    /// Parsing the certificate costs more than a policy evaluation, and most policies (the
    /// fleet's own included) never read `iot:Certificate.*`.
    certificate: OnceLock<Option<CertificateFields>>,
    connect_attributes: Vec<&'static str>,
    last_will_topic: Option<String>,
}

impl Authorizer {
    pub(super) fn new(
        shared: Arc<Shared>,
        connect: &ConnectRequest,
        certificate: PeerCertificate,
    ) -> Self {
        let mut connect_attributes = Vec::new();
        if session_expiry(connect, shared.config.session_expiry) > Duration::ZERO {
            connect_attributes.push("PersistentConnect");
        }
        if connect.will.is_some() {
            connect_attributes.push("LastWill");
        }
        Authorizer {
            shared,
            client_id: connect.client_id.clone(),
            certificate_id: certificate.id,
            certificate_der: certificate.der,
            certificate: OnceLock::new(),
            connect_attributes,
            last_will_topic: connect.will.as_ref().map(|will| will.topic.clone()),
        }
    }

    /// Whether `action` is allowed on `<kind>/<name>`; a denial is counted.
    pub(super) fn allows(&self, action: Action, kind: &str, name: &str) -> bool {
        let registry = &self.shared.registry;
        // The thing variables resolve only when the certificate is attached to the thing
        // named by the client id [aws-iot-facts §3.3].
        let thing = registry
            .thing(&self.client_id)
            .filter(|thing| thing.principals.contains(&self.certificate_id));
        let policies = registry.policies_of(&self.certificate_id);
        let reads_certificate = policies.iter().any(|policy| policy.reads_certificate());
        let context = RequestContext {
            client_id: &self.client_id,
            thing_name: thing.as_ref().map(|thing| thing.name.as_str()),
            thing_type_name: thing.as_ref().and_then(|thing| thing.thing_type.as_deref()),
            thing_attributes: thing.as_ref().map(|thing| &thing.attributes),
            certificate_id: &self.certificate_id,
            certificate: reads_certificate
                .then(|| self.certificate_fields())
                .flatten(),
            connect_attributes: &self.connect_attributes,
            last_will_topic: self.last_will_topic.as_deref(),
        };
        let resource = registry.arn(kind, name);
        let allowed = policy::is_allowed(&policies, action, &resource, &context);
        if !allowed {
            metric::policy_denial(action);
        }
        allowed
    }

    fn certificate_fields(&self) -> Option<&CertificateFields> {
        self.certificate
            .get_or_init(|| {
                CertificateFields::from_der(&self.certificate_der)
                    .inspect_err(|error| debug!(%error, "certificate variables unavailable"))
                    .ok()
            })
            .as_ref()
    }
}
