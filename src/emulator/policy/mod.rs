//! AWS IoT policy documents: parsing into statements and IAM-style evaluation of the
//! data-plane actions the broker checks. Parsing is strict, because an operator or key the
//! emulator skipped would silently widen what a device may do.

mod certificate;
mod condition;
mod pattern;
mod statement;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use statement::Statement;

pub use certificate::{CertificateFields, CertificateFieldsError};

/// IoT's limit on a policy document, counted without whitespace.
pub const MAX_POLICY_CHARS: usize = 2048;

/// The policy-language versions IAM accepts.
const VERSIONS: [&str; 2] = ["2012-10-17", "2008-10-17"];

/// A parsed IoT policy document.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    /// The document exactly as it was given, for GetPolicy.
    pub source: String,
    statements: Vec<Statement>,
    reads_certificate: bool,
}

/// Why a policy document was refused (the policy author's fault).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy document has {chars} non-whitespace characters, over the limit of {max}")]
    TooLarge { chars: usize, max: usize },
    #[error("policy document is not valid json: {0}")]
    Json(#[source] serde_json::Error),
    #[error("malformed policy at {}: {reason}", location(.statement, .field))]
    Malformed {
        /// Index into `Statement`, when the fault is inside one statement.
        statement: Option<usize>,
        /// The field path inside the statement (or document), e.g. `Resource[1]`.
        field: String,
        reason: String,
    },
}

fn location(statement: &Option<usize>, field: &str) -> String {
    match (statement, field) {
        (Some(index), "") => format!("Statement[{index}]"),
        (Some(index), field) => format!("Statement[{index}].{field}"),
        (None, field) => field.to_owned(),
    }
}

/// The data-plane actions the broker checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Connect,
    Publish,
    Subscribe,
    Receive,
    RetainPublish,
}

impl Action {
    /// The action's IAM name, e.g. `iot:Connect`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Connect => "iot:Connect",
            Action::Publish => "iot:Publish",
            Action::Subscribe => "iot:Subscribe",
            Action::Receive => "iot:Receive",
            Action::RetainPublish => "iot:RetainPublish",
        }
    }

    fn lowercase_name(self) -> &'static str {
        match self {
            Action::Connect => "iot:connect",
            Action::Publish => "iot:publish",
            Action::Subscribe => "iot:subscribe",
            Action::Receive => "iot:receive",
            Action::RetainPublish => "iot:retainpublish",
        }
    }
}

/// What policy variables resolve to for one request. The broker builds one per check from
/// values it computed once per connection, so every field is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    pub client_id: &'a str,
    /// The thing named by the client id, present only when the connection's
    /// certificate is attached to it; every thing variable needs it.
    pub thing_name: Option<&'a str>,
    pub thing_type_name: Option<&'a str>,
    pub thing_attributes: Option<&'a BTreeMap<String, String>>,
    pub certificate_id: &'a str,
    /// The client certificate's subject, issuer and serial, for `iot:Certificate.*`.
    pub certificate: Option<&'a CertificateFields>,
    /// `iot:ConnectAttributes`: `PersistentConnect` and/or `LastWill`.
    pub connect_attributes: &'a [&'a str],
    /// `iot:LastWillTopic`, when the connection registered a will.
    pub last_will_topic: Option<&'a str>,
}

impl<'a> RequestContext<'a> {
    /// A context with only the identity set; everything else unresolved.
    pub const fn new(client_id: &'a str, certificate_id: &'a str) -> RequestContext<'a> {
        RequestContext {
            client_id,
            thing_name: None,
            thing_type_name: None,
            thing_attributes: None,
            certificate_id,
            certificate: None,
            connect_attributes: &[],
            last_will_topic: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

/// The outcome of evaluating a request against a set of policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allowed,
    /// No statement allows the request (IAM's default deny).
    ImplicitlyDenied,
    /// A Deny statement applies; it overrides every Allow.
    ExplicitlyDenied,
}

impl PolicyDocument {
    /// Parses and validates a policy document, refusing anything the evaluator would not
    /// understand.
    pub fn parse(json: &str) -> Result<PolicyDocument, PolicyError> {
        check_size(json)?;
        let value: Value = serde_json::from_str(json).map_err(PolicyError::Json)?;
        let statements = parse_document(&value)?;
        Ok(PolicyDocument {
            source: json.to_owned(),
            reads_certificate: statements.iter().any(Statement::reads_certificate),
            statements,
        })
    }

    /// Whether evaluating this document may read the client certificate's fields
    /// (`iot:Certificate.*`), in a resource, an action or a condition.
    pub fn reads_certificate(&self) -> bool {
        self.reads_certificate
    }

    /// This document's verdict alone: `None` when no statement applies.
    fn verdict(
        &self,
        action: Action,
        resource: &str,
        context: &RequestContext<'_>,
    ) -> Option<Decision> {
        let mut verdict = None;
        for statement in &self.statements {
            if !statement.applies(action, resource, context) {
                continue;
            }
            match statement.effect {
                Effect::Deny => return Some(Decision::ExplicitlyDenied),
                Effect::Allow => verdict = Some(Decision::Allowed),
            }
        }
        verdict
    }
}

fn check_size(json: &str) -> Result<(), PolicyError> {
    let chars = json.chars().filter(|c| !c.is_whitespace()).count();
    match chars > MAX_POLICY_CHARS {
        true => Err(PolicyError::TooLarge {
            chars,
            max: MAX_POLICY_CHARS,
        }),
        false => Ok(()),
    }
}

fn parse_document(value: &Value) -> Result<Vec<Statement>, PolicyError> {
    let malformed = |field: &str, reason: &str| PolicyError::Malformed {
        statement: None,
        field: field.to_owned(),
        reason: reason.to_owned(),
    };
    let fields = value
        .as_object()
        .ok_or_else(|| malformed("", "must be a json object"))?;
    if let Some(key) = fields
        .keys()
        .find(|k| !["Version", "Id", "Statement"].contains(&k.as_str()))
    {
        return Err(malformed(key, "unsupported policy field"));
    }
    if let Some(version) = fields.get("Version") {
        let known = version.as_str().is_some_and(|v| VERSIONS.contains(&v));
        known
            .then_some(())
            .ok_or_else(|| malformed("Version", "must be \"2012-10-17\""))?;
    }
    let statements = match fields.get("Statement") {
        Some(Value::Array(statements)) if !statements.is_empty() => statements.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        Some(_) => {
            return Err(malformed(
                "Statement",
                "must be a statement or a non-empty list",
            ));
        }
        None => return Err(malformed("Statement", "missing")),
    };
    statements
        .into_iter()
        .enumerate()
        .map(|(i, s)| Statement::parse(i, s))
        .collect()
}

/// Evaluates a request the IAM way: any applicable Deny wins, otherwise any applicable Allow
/// grants, otherwise the request is denied by default.
pub fn decide(
    policies: &[Arc<PolicyDocument>],
    action: Action,
    resource: &str,
    context: &RequestContext<'_>,
) -> Decision {
    let mut decision = Decision::ImplicitlyDenied;
    for policy in policies {
        match policy.verdict(action, resource, context) {
            Some(Decision::ExplicitlyDenied) => return Decision::ExplicitlyDenied,
            Some(Decision::Allowed) => decision = Decision::Allowed,
            _ => {}
        }
    }
    decision
}

/// Whether any of `policies` allows `action` on `resource` (a full ARN) and
/// none denies it.
pub fn is_allowed(
    policies: &[Arc<PolicyDocument>],
    action: Action,
    resource: &str,
    context: &RequestContext<'_>,
) -> bool {
    decide(policies, action, resource, context) == Decision::Allowed
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
        "Action":["iot:Connect","iot:Publish"],"Resource":"arn:aws:iot:*:*:topic/${iot:ClientId}/*",
        "Condition":{"ForAnyValue:StringLike":{"iot:ConnectAttributes":"Persist*"},
        "StringEquals":{"iot:Connection.Thing.Attributes[fleet]":"n","iot:Certificate.Subject.CommonName.List":"x"}}}]}"#;

    /// Parses, and if accepted evaluates, a document: neither may panic.
    fn parse_and_decide(text: &str) {
        let Ok(document) = PolicyDocument::parse(text) else {
            return;
        };
        let context = RequestContext {
            thing_name: Some("t"),
            connect_attributes: &["PersistentConnect", "LastWill"],
            ..RequestContext::new("c", "id")
        };
        let resource = "arn:aws:iot:us-east-1:1:topic/c/x";
        for action in [Action::Connect, Action::Publish, Action::Receive] {
            decide(&[Arc::new(document.clone())], action, resource, &context);
        }
    }

    #[test]
    fn the_sample_document_parses() {
        PolicyDocument::parse(VALID).expect("sample parses");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics_the_parser(text in "\\PC{0,300}") {
            parse_and_decide(&text);
        }

        #[test]
        fn mutated_documents_never_panic_the_parser(
            at in 0usize..400,
            replacement in "[\\[\\]{}\",:$*?a-zA-Z0-9.]{0,4}",
        ) {
            let mut text = VALID.to_owned();
            let at = (at % text.len()..).find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text.replace_range(at..(at + 1).min(text.len()), &replacement);
            parse_and_decide(&text);
        }
    }
}
