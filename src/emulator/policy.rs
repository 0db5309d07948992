//! AWS IoT policy documents: parsing and evaluation (placeholder interface;
//! the evaluator is being written).

/// A parsed IoT policy document.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// The data-plane actions the broker checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Connect,
    Publish,
    Subscribe,
    Receive,
    RetainPublish,
}

/// What policy variables resolve to for one connection.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    pub client_id: &'a str,
    /// The thing named by the client id, present only when the connection's
    /// certificate is attached to it.
    pub thing_name: Option<&'a str>,
    pub certificate_id: &'a str,
}

impl PolicyDocument {
    pub fn parse(json: &str) -> Result<PolicyDocument, PolicyError> {
        Ok(PolicyDocument {
            source: json.to_owned(),
        })
    }
}

/// Whether any of `policies` allows `action` on `resource` (a full ARN) and
/// none denies it.
pub fn is_allowed(
    policies: &[std::sync::Arc<PolicyDocument>],
    action: Action,
    resource: &str,
    context: &RequestContext<'_>,
) -> bool {
    let _ = (policies, action, resource, context);
    true
}
