//! One decoded control-plane request: query string, headers and JSON body,
//! with accessors that turn every malformed input into `InvalidRequest`.

use std::collections::HashMap;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

pub(super) struct Call {
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Call {
    pub(super) fn new(parts: &Parts, body: Bytes) -> Result<Call, ApiError> {
        let Query(query) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map_err(|_| ApiError::InvalidRequest("malformed query string".into()))?;
        Ok(Call {
            query,
            headers: parts.headers.clone(),
            body,
        })
    }

    pub(super) fn query(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// A boolean query flag; absent means `false`, as for `setAsActive`.
    pub(super) fn query_flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.query(name) {
            None => Ok(false),
            Some(text) => text
                .parse()
                .map_err(|_| ApiError::InvalidRequest(format!("{name}={text} is not a boolean"))),
        }
    }

    /// The optional `expectedVersion` of a delete.
    pub(super) fn expected_version(&self) -> Result<Option<i64>, ApiError> {
        self.query("expectedVersion")
            .map(|text| {
                text.parse::<i64>().map_err(|_| {
                    ApiError::InvalidRequest(format!("expectedVersion {text} is not a number"))
                })
            })
            .transpose()
    }

    pub(super) fn required_header(&self, name: &str) -> Result<&str, ApiError> {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty())
            .ok_or_else(|| ApiError::InvalidRequest(format!("header {name} is required")))
    }

    /// The JSON body; an empty body reads as `{}`, as the SDK sends for
    /// operations whose input has no body members.
    pub(super) fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let body: &[u8] = if self.body.is_empty() {
            b"{}"
        } else {
            &self.body
        };
        serde_json::from_slice(body)
            .map_err(|e| ApiError::InvalidRequest(format!("malformed request body: {e}")))
    }
}

/// A timestamp in the epoch-seconds form restJson1 uses in bodies.
pub(super) fn epoch_seconds(time: SystemTime) -> f64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

/// A fresh request id in the 8-4-4-4-12 hex form AWS uses.
pub(super) fn request_id() -> String {
    crate::emulator::registry::random_id()
}
