//! The Fleet Provisioning MQTT API as both sides see it: topic names and the
//! JSON payloads of CreateCertificateFromCsr and RegisterThing, with AWS's
//! key names. The device and the emulator share these types, so the two can
//! only disagree with AWS, never with each other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The topics of CreateCertificateFromCsr in the JSON format.
pub mod create_from_csr {
    pub const REQUEST: &str = "$aws/certificates/create-from-csr/json";
    pub const ACCEPTED: &str = "$aws/certificates/create-from-csr/json/accepted";
    pub const REJECTED: &str = "$aws/certificates/create-from-csr/json/rejected";
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
pub enum RequestTopic<'a> {
    CreateCertificateFromCsr,
    RegisterThing { template: &'a str },
}

impl<'a> RequestTopic<'a> {
    /// Recognises a JSON request topic; anything else is not a request.
    pub fn parse(topic: &'a str) -> Option<RequestTopic<'a>> {
        if topic == create_from_csr::REQUEST {
            return Some(RequestTopic::CreateCertificateFromCsr);
        }
        let rest = topic.strip_prefix("$aws/provisioning-templates/")?;
        let template = rest.strip_suffix("/provision/json")?;
        let valid = !template.is_empty()
            && template.len() <= 36
            && template
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        valid.then_some(RequestTopic::RegisterThing { template })
    }
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
        assert_eq!(
            RequestTopic::parse("$aws/certificates/create-from-csr/json"),
            Some(RequestTopic::CreateCertificateFromCsr)
        );
        assert_eq!(
            RequestTopic::parse("$aws/provisioning-templates/fleet-1/provision/json"),
            Some(RequestTopic::RegisterThing {
                template: "fleet-1"
            })
        );
        for other in [
            "$aws/certificates/create-from-csr/json/accepted",
            "$aws/provisioning-templates//provision/json",
            "$aws/provisioning-templates/a/b/provision/json",
            "$aws/provisioning-templates/fleet/provision/cbor",
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
