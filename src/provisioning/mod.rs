//! The Fleet Provisioning MQTT API as both sides see it: topic names and the
//! payloads of CreateKeysAndCertificate, CreateCertificateFromCsr and
//! RegisterThing, with AWS's key names, in JSON or CBOR. The device and the
//! emulator share these types, so the two can only disagree with AWS, never
//! with each other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The topics of CreateCertificateFromCsr in the JSON format.
pub mod create_from_csr {
    pub const REQUEST: &str = "$aws/certificates/create-from-csr/json";
    pub const ACCEPTED: &str = "$aws/certificates/create-from-csr/json/accepted";
    pub const REJECTED: &str = "$aws/certificates/create-from-csr/json/rejected";
}

/// The topics of CreateKeysAndCertificate in the JSON format.
pub mod create_keys {
    pub const REQUEST: &str = "$aws/certificates/create/json";
    pub const ACCEPTED: &str = "$aws/certificates/create/json/accepted";
    pub const REJECTED: &str = "$aws/certificates/create/json/rejected";
}

/// The encoding of a request and of its reply, named by the topic's last level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    Json,
    Cbor,
}

impl PayloadFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Json => "json",
            PayloadFormat::Cbor => "cbor",
        }
    }

    fn parse(text: &str) -> Option<PayloadFormat> {
        match text {
            "json" => Some(PayloadFormat::Json),
            "cbor" => Some(PayloadFormat::Cbor),
            _ => None,
        }
    }
}

/// `$aws/certificates/create/<fmt>`.
pub fn create_keys_topic(format: PayloadFormat) -> String {
    format!("$aws/certificates/create/{}", format.as_str())
}

/// `$aws/certificates/create-from-csr/<fmt>`.
pub fn create_from_csr_topic(format: PayloadFormat) -> String {
    format!("$aws/certificates/create-from-csr/{}", format.as_str())
}

/// `$aws/provisioning-templates/<template>/provision/<fmt>`.
pub fn register_thing_topic_in(template: &str, format: PayloadFormat) -> String {
    format!(
        "$aws/provisioning-templates/{template}/provision/{}",
        format.as_str()
    )
}

/// `$aws/provisioning-templates/<template>/provision/json`.
pub fn register_thing_topic(template: &str) -> String {
    format!("$aws/provisioning-templates/{template}/provision/json")
}

pub fn register_thing_accepted(template: &str) -> String {
    format!("{}/accepted", register_thing_topic(template))
}

pub fn register_thing_rejected(template: &str) -> String {
    format!("{}/rejected", register_thing_topic(template))
}

/// Which API a request topic names, with the template for RegisterThing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestApi<'a> {
    CreateKeysAndCertificate,
    CreateCertificateFromCsr,
    RegisterThing { template: &'a str },
}

/// A request topic: the API and the payload format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTopic<'a> {
    pub api: RequestApi<'a>,
    pub format: PayloadFormat,
}

impl<'a> RequestTopic<'a> {
    /// Recognises a request topic; anything else is not a request.
    pub fn parse(topic: &'a str) -> Option<RequestTopic<'a>> {
        let (head, format) = topic.rsplit_once('/')?;
        let format = PayloadFormat::parse(format)?;
        let api = match head {
            "$aws/certificates/create" => RequestApi::CreateKeysAndCertificate,
            "$aws/certificates/create-from-csr" => RequestApi::CreateCertificateFromCsr,
            _ => RequestApi::RegisterThing {
                template: template_of(head)?,
            },
        };
        Some(RequestTopic { api, format })
    }
}

fn template_of(head: &str) -> Option<&str> {
    let rest = head.strip_prefix("$aws/provisioning-templates/")?;
    let template = rest.strip_suffix("/provision")?;
    let valid = !template.is_empty()
        && template.len() <= 36
        && template
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then_some(template)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateCertificateFromCsrRequest {
    pub certificate_signing_request: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateCertificateFromCsrResponse {
    pub certificate_ownership_token: String,
    pub certificate_id: String,
    pub certificate_pem: String,
}

/// The accepted reply of CreateKeysAndCertificate; the private key is sent
/// once and never stored by the service.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateKeysAndCertificateResponse {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub private_key: String,
    pub certificate_ownership_token: String,
}

impl std::fmt::Debug for CreateKeysAndCertificateResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateKeysAndCertificateResponse")
            .field("certificate_id", &self.certificate_id)
            .field("private_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterThingRequest {
    #[serde(default)]
    pub certificate_ownership_token: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterThingResponse {
    #[serde(default)]
    pub device_configuration: BTreeMap<String, String>,
    pub thing_name: String,
}

/// The payload of every `rejected` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse {
    pub status_code: u16,
    pub error_code: String,
    pub error_message: String,
}

impl ErrorResponse {
    pub fn new(status_code: u16, error_code: &str, error_message: impl Into<String>) -> Self {
        ErrorResponse {
            status_code,
            error_code: error_code.to_owned(),
            error_message: error_message.into(),
        }
    }
}

impl std::fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status_code, self.error_code, self.error_message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics_are_recognised_and_others_are_not() {
        let api = |topic| RequestTopic::parse(topic).map(|t| (t.api, t.format));
        assert_eq!(
            api("$aws/certificates/create-from-csr/json"),
            Some((RequestApi::CreateCertificateFromCsr, PayloadFormat::Json))
        );
        assert_eq!(
            api("$aws/certificates/create/cbor"),
            Some((RequestApi::CreateKeysAndCertificate, PayloadFormat::Cbor))
        );
        assert_eq!(
            api("$aws/provisioning-templates/fleet-1/provision/cbor"),
            Some((
                RequestApi::RegisterThing {
                    template: "fleet-1"
                },
                PayloadFormat::Cbor
            ))
        );
        for other in [
            "$aws/certificates/create-from-csr/json/accepted",
            "$aws/certificates/create/xml",
            "$aws/provisioning-templates//provision/json",
            "$aws/provisioning-templates/a/b/provision/json",
            "fleetsim/x/telemetry",
        ] {
            assert_eq!(RequestTopic::parse(other), None, "{other}");
        }
    }

    #[test]
    fn payloads_use_aws_key_names() {
        let reply = CreateCertificateFromCsrResponse {
            certificate_ownership_token: "t".into(),
            certificate_id: "i".into(),
            certificate_pem: "p".into(),
        };
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(json["certificateOwnershipToken"], "t");
        assert_eq!(json["certificateId"], "i");
        let error = ErrorResponse::new(400, "InvalidCertificateOwnershipToken", "empty");
        let json = serde_json::to_value(&error).unwrap();
        assert_eq!(json["statusCode"], 400);
        assert_eq!(json["errorCode"], "InvalidCertificateOwnershipToken");
    }
}
