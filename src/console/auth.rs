//! Who may use the console: a bearer token compared in constant time, or,
//! when the user asks for it explicitly, nobody is asked. The token never
//! appears in a URL the server sees: the page reads it from the fragment
//! and sends it in the `Authorization` header.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The environment variable that sets the token.
pub const TOKEN_ENV: &str = "FLEETSIM_CONSOLE_TOKEN";

/// Shorter tokens can be guessed; a random one is 32 bytes.
pub const MIN_TOKEN_CHARS: usize = 16;

/// How the console admits requests.
#[derive(Clone, PartialEq, Eq)]
pub enum Access {
    /// Every API request carries `Authorization: Bearer <token>`.
    Token(String),
    /// No check at all: only for a console on loopback, on request.
    Open,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Token(_) => f.write_str("Token(<redacted>)"),
            Access::Open => f.write_str("Open"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{TOKEN_ENV} is {0} characters long; use at least {MIN_TOKEN_CHARS}")]
pub struct WeakToken(pub usize);

impl Access {
    /// The token from the environment value if set, or a fresh random one.
    pub fn token_or_random(from_env: Option<String>) -> Result<Access, WeakToken> {
        match from_env {
            Some(token) if token.chars().count() < MIN_TOKEN_CHARS => {
                Err(WeakToken(token.chars().count()))
            }
            Some(token) => Ok(Access::Token(token)),
            None => Ok(Access::Token(random_token())),
        }
    }

    fn admits(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let Access::Token(expected) = self else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("missing token: send Authorization: Bearer <token>")?;
        aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), expected.as_bytes())
            .map_err(|_| "wrong token")
    }
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses API requests without the right token, before any handler runs.
pub(super) async fn require(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    match access.admits(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(reason) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({ "error": reason })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn only_the_exact_token_is_admitted() {
        let access = Access::Token("0123456789abcdef".into());
        assert!(access.admits(&bearer("0123456789abcdef")).is_ok());
        assert!(access.admits(&bearer("0123456789abcdeF")).is_err());
        assert!(access.admits(&bearer("0123456789abcdef0")).is_err());
        assert!(access.admits(&HeaderMap::new()).is_err());
        assert!(Access::Open.admits(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn short_tokens_are_refused_and_random_ones_are_long() {
        assert!(Access::token_or_random(Some("short".into())).is_err());
        let Ok(Access::Token(token)) = Access::token_or_random(None) else {
            panic!("a random token is made")
        };
        assert_eq!(token.len(), 64);
        assert_ne!(token, random_token());
    }
}
