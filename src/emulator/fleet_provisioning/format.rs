//! The two payload encodings of the Fleet Provisioning API. AWS answers in
//! the format of the request topic (`.../json` or `.../cbor`) with the same
//! key names, so one set of serde types serves both.
//!
//! CBOR goes through `ciborium`: a small serde-native codec whose maps
//! decode into the same structs as JSON, with no `unsafe` and no build step.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::provisioning::{ErrorResponse, PayloadFormat};

/// Decodes a request payload. An empty payload reads as an empty map, which
/// AWS accepts for CreateKeysAndCertificate.
pub fn decode<T: DeserializeOwned>(
    format: PayloadFormat,
    payload: &[u8],
) -> Result<T, ErrorResponse> {
    match (format, payload.is_empty()) {
        (PayloadFormat::Json, true) => serde_json::from_slice(b"{}").map_err(json_refusal),
        (PayloadFormat::Json, false) => serde_json::from_slice(payload).map_err(json_refusal),
        (PayloadFormat::Cbor, true) => ciborium::from_reader(&[0xa0u8][..]).map_err(cbor_refusal),
        (PayloadFormat::Cbor, false) => ciborium::from_reader(payload).map_err(cbor_refusal),
    }
}

/// Encodes a reply in the request's format.
pub fn encode<T: Serialize>(format: PayloadFormat, value: &T) -> Vec<u8> {
    match format {
        PayloadFormat::Json => {
            serde_json::to_vec(value).expect("invariant: provisioning payloads are plain maps")
        }
        PayloadFormat::Cbor => {
            let mut bytes = Vec::new();
            ciborium::into_writer(value, &mut bytes)
                .expect("invariant: provisioning payloads are plain maps written to memory");
            bytes
        }
    }
}

fn json_refusal(error: serde_json::Error) -> ErrorResponse {
    ErrorResponse::new(
        400,
        "InvalidPayload",
        format!("payload is not valid JSON for this API: {error}"),
    )
}

fn cbor_refusal<E: std::fmt::Display>(error: E) -> ErrorResponse {
    ErrorResponse::new(
        400,
        "InvalidPayload",
        format!("payload is not valid CBOR for this API: {error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provisioning::RegisterThingRequest;

    #[test]
    fn cbor_and_json_carry_the_same_keys() {
        let request = RegisterThingRequest {
            certificate_ownership_token: "t".into(),
            parameters: [("SerialNumber".to_owned(), "s-1".to_owned())].into(),
        };
        let cbor = encode(PayloadFormat::Cbor, &request);
        let value: ciborium::Value = ciborium::from_reader(&cbor[..]).unwrap();
        let keys: Vec<String> = value
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_text().unwrap().to_owned())
            .collect();
        assert_eq!(keys, ["certificateOwnershipToken", "parameters"]);
        let back: RegisterThingRequest = decode(PayloadFormat::Cbor, &cbor).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn empty_payloads_read_as_empty_maps_and_garbage_is_refused() {
        let empty: std::collections::BTreeMap<String, String> =
            decode(PayloadFormat::Cbor, b"").unwrap();
        assert!(empty.is_empty());
        let error = decode::<RegisterThingRequest>(PayloadFormat::Cbor, b"\xff\x00").unwrap_err();
        assert_eq!(error.status_code, 400);
        let error = decode::<RegisterThingRequest>(PayloadFormat::Json, b"{").unwrap_err();
        assert_eq!(error.error_code, "InvalidPayload");
    }
}
