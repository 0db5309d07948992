//! Provisioning by claim: the claim connection, the certificate request
//! (CreateCertificateFromCsr or CreateKeysAndCertificate), RegisterThing and
//! the store's atomic install. A rotation reuses the same requests over the
//! device's own connection.

use tokio::time::Instant;
use tracing::debug;

use super::faults::{Flow, random_drop};

use super::mqtt::{Session, SessionError};
use super::task::{Device, GaveUp, Issued, short};
use crate::identity::{Credentials, generate_key_and_csr};
use crate::observe::{FailureReason, Op};
use crate::provisioning::{
    CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse,
    CreateKeysAndCertificateResponse, ErrorResponse, RegisterThingRequest, RegisterThingResponse,
    create_from_csr, create_keys, register_thing_accepted, register_thing_rejected,
    register_thing_topic,
};
use crate::scenario::{DropPoint, ProvisioningMethod};

impl Device {
    /// Provisions with the claim certificate, retrying the whole exchange:
    /// a half-finished provisioning leaves nothing the device can reuse.
    pub(super) async fn provision(&mut self, due: Instant) -> Result<(), GaveUp> {
        let mut attempt = 0;
        loop {
            match self.provision_once(due).await {
                Ok(()) => return Ok(()),
                Err((op, error)) => {
                    attempt += 1;
                    self.back_off(op, attempt, error).await?;
                }
            }
        }
    }

    pub(super) async fn provision_once(&mut self, due: Instant) -> Result<(), (Op, SessionError)> {
        let claim_tls = self.ctx.claim.tls(&self.ctx.tls).map_err(|e| {
            (
                Op::ClaimConnect,
                SessionError::new(FailureReason::Protocol, e),
            )
        })?;
        let client_id = format!("provision-{}", self.serial);
        self.ctx.pacer.connect(&client_id).await;
        let mut session = Session::connect(&self.ctx.connect, &client_id, claim_tls)
            .await
            .map_err(|e| (Op::ClaimConnect, e))?;
        self.succeeded(Op::ClaimConnect, due.elapsed(), || {
            format!("TLS with the claim certificate, CONNACK accepted for client id {client_id}")
        });
        session
            .subscribe(&self.reply_filters())
            .await
            .map_err(|e| (Op::ClaimConnect, e))?;
        let issued = self.request_certificate(&mut session).await?;
        self.drop_if(&mut session, Flow::Provision, DropPoint::AfterCertificate);
        let thing = self.register_thing(&mut session, &issued).await?;
        self.adopt(thing, issued.credentials)
            .await
            .map_err(|e| (Op::Provision, e))?;
        if !self.drop_if(&mut session, Flow::Provision, DropPoint::AfterStore) {
            session.disconnect().await;
        }
        Ok(())
    }

    /// Drops `session` at a named step, the first time this device passes
    /// it in `flow`, or at random after a reply; true if it dropped.
    pub(super) fn drop_if(&mut self, session: &mut Session, flow: Flow, point: DropPoint) -> bool {
        let at_point = self.faults.drop_here(&self.ctx.faults, flow, point);
        let dropped = at_point
            || (point == DropPoint::AfterCertificate
                && random_drop(&self.ctx.faults, &mut self.rng));
        if dropped {
            debug!(
                point = point.as_str(),
                "connection dropped (injected fault)"
            );
            session.sever();
        }
        dropped
    }

    pub(super) fn reply_filters(&self) -> [String; 4] {
        let (accepted, rejected) = match self.ctx.method {
            ProvisioningMethod::CsrEcP256 => (create_from_csr::ACCEPTED, create_from_csr::REJECTED),
            ProvisioningMethod::CreateKeysRsa => (create_keys::ACCEPTED, create_keys::REJECTED),
        };
        [
            accepted.to_owned(),
            rejected.to_owned(),
            register_thing_accepted(&self.ctx.template),
            register_thing_rejected(&self.ctx.template),
        ]
    }

    /// A new certificate by the scenario's method.
    pub(super) async fn request_certificate(
        &mut self,
        session: &mut Session,
    ) -> Result<Issued, (Op, SessionError)> {
        let api = match self.ctx.method {
            ProvisioningMethod::CsrEcP256 => create_from_csr::REQUEST,
            ProvisioningMethod::CreateKeysRsa => create_keys::REQUEST,
        };
        self.ctx.pacer.create_certificate(api).await;
        match self.ctx.method {
            ProvisioningMethod::CsrEcP256 => self.request_from_csr(session).await,
            ProvisioningMethod::CreateKeysRsa => self.request_keys(session).await,
        }
    }

    /// CreateKeysAndCertificate: the server makes an RSA key and sends it
    /// once with the certificate; the device signs every handshake with it.
    pub(super) async fn request_keys(
        &mut self,
        session: &mut Session,
    ) -> Result<Issued, (Op, SessionError)> {
        let op = Op::CreateCertificate;
        let started = Instant::now();
        let reply: CreateKeysAndCertificateResponse = exchange(
            session,
            create_keys::REQUEST,
            &serde_json::Map::new(),
            create_keys::ACCEPTED,
            create_keys::REJECTED,
        )
        .await
        .map_err(|e| (op, e))?;
        self.ctx.recorder.record(op, started.elapsed());
        Ok(Issued {
            credentials: Credentials {
                certificate_pem: reply.certificate_pem,
                private_key_pem: reply.private_key,
            },
            ownership_token: reply.certificate_ownership_token,
        })
    }

    /// CreateCertificateFromCsr: the key never leaves the device.
    pub(super) async fn request_from_csr(
        &mut self,
        session: &mut Session,
    ) -> Result<Issued, (Op, SessionError)> {
        let op = Op::CreateCertificate;
        let started = Instant::now();
        let key = generate_key_and_csr(&self.serial).map_err(|e| {
            (
                op,
                SessionError::new(FailureReason::Protocol, e.to_string()),
            )
        })?;
        let request = CreateCertificateFromCsrRequest {
            certificate_signing_request: key.csr_pem,
        };
        let reply: CreateCertificateFromCsrResponse = exchange(
            session,
            create_from_csr::REQUEST,
            &request,
            create_from_csr::ACCEPTED,
            create_from_csr::REJECTED,
        )
        .await
        .map_err(|e| (op, e))?;
        self.succeeded(op, started.elapsed(), || {
            format!(
                "published {}, accepted: certificate {}",
                create_from_csr::REQUEST,
                short(&reply.certificate_id)
            )
        });
        Ok(Issued {
            credentials: Credentials {
                certificate_pem: reply.certificate_pem,
                private_key_pem: key.private_key_pem,
            },
            ownership_token: reply.certificate_ownership_token,
        })
    }

    pub(super) async fn register_thing(
        &mut self,
        session: &mut Session,
        issued: &Issued,
    ) -> Result<String, (Op, SessionError)> {
        let op = Op::RegisterThing;
        self.ctx.pacer.register_thing().await;
        let started = Instant::now();
        let request = RegisterThingRequest {
            certificate_ownership_token: issued.ownership_token.clone(),
            parameters: [("SerialNumber".to_owned(), self.serial.clone())].into(),
        };
        let topic = register_thing_topic(&self.ctx.template);
        let reply: RegisterThingResponse = exchange(
            session,
            &topic,
            &request,
            &register_thing_accepted(&self.ctx.template),
            &register_thing_rejected(&self.ctx.template),
        )
        .await
        .map_err(|e| (op, e))?;
        self.succeeded(op, started.elapsed(), || {
            format!("published {topic}, accepted: thing {}", reply.thing_name)
        });
        Ok(reply.thing_name)
    }

    /// Stores a freshly registered identity; the previous one, if any, is
    /// kept as the store's backup.
    pub(super) async fn adopt(
        &mut self,
        thing: String,
        credentials: Credentials,
    ) -> Result<(), SessionError> {
        // The thing name is configuration, kept before the files it names,
        // so that a device restarted after the write knows who it is.
        self.thing = thing;
        self.store_install(&credentials)
            .await
            .map_err(|e| SessionError::new(FailureReason::Storage, e.to_string()))?;
        self.current = Some(credentials);
        self.show_identity();
        Ok(())
    }
}

/// Publishes a Fleet Provisioning request and decodes the accepted reply;
/// a rejection becomes a failure whose reason says whether it was a
/// throttle or a refusal.
async fn exchange<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    session: &mut Session,
    topic: &str,
    request: &Req,
    accepted: &str,
    rejected: &str,
) -> Result<Resp, SessionError> {
    let payload = serde_json::to_vec(request).expect("provisioning requests serialize");
    match session.request(topic, payload, accepted, rejected).await? {
        Ok(body) => serde_json::from_slice(&body).map_err(|e| {
            SessionError::new(
                FailureReason::Protocol,
                format!("bad reply on {accepted}: {e}"),
            )
        }),
        Err(body) => Err(rejection(&body)),
    }
}

fn rejection(body: &[u8]) -> SessionError {
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(error) if error.status_code == 429 => {
            SessionError::new(FailureReason::Throttled, error.to_string())
        }
        Ok(error) => SessionError::new(FailureReason::ProvisioningRejected, error.to_string()),
        Err(e) => SessionError::new(
            FailureReason::Protocol,
            format!("unreadable rejection: {e}"),
        ),
    }
}
