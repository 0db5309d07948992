//! One policy statement: parsed from its JSON object and asked whether it applies to a
//! request. Unresolved variables never widen access: they keep an Allow from applying and
//! make a Deny apply, so a missing thing attachment can only ever deny more.

use serde_json::{Map, Value};

use super::condition::Condition;
use super::pattern::{Pattern, Wildcards};
use super::{Action, Effect, PolicyError, RequestContext};

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Statement {
    pub(super) effect: Effect,
    actions: Vec<Pattern>,
    resources: Resources,
    conditions: Vec<Condition>,
}

/// `Resource` lists what the statement covers; `NotResource` lists what it does not.
#[derive(Debug, Clone, PartialEq)]
enum Resources {
    Listed(Vec<Pattern>),
    AllExcept(Vec<Pattern>),
}

const FIELDS: [&str; 6] = [
    "Sid",
    "Effect",
    "Action",
    "Resource",
    "NotResource",
    "Condition",
];

/// A field-level parse failure, before the statement index is attached.
type FieldError = (String, String);

impl Statement {
    pub(super) fn parse(index: usize, value: &Value) -> Result<Statement, PolicyError> {
        Statement::parse_fields(value).map_err(|(field, reason)| PolicyError::Malformed {
            statement: Some(index),
            field,
            reason,
        })
    }

    fn parse_fields(value: &Value) -> Result<Statement, FieldError> {
        let fields = value
            .as_object()
            .ok_or_else(|| (String::new(), "a statement must be an object".to_owned()))?;
        reject_unknown_fields(fields)?;
        Ok(Statement {
            effect: parse_effect(fields.get("Effect"))?,
            actions: parse_actions(fields.get("Action"))?,
            resources: parse_resources(fields)?,
            conditions: parse_conditions(fields.get("Condition"))?,
        })
    }

    pub(super) fn reads_certificate(&self) -> bool {
        let (Resources::Listed(resources) | Resources::AllExcept(resources)) = &self.resources;
        self.actions
            .iter()
            .chain(resources)
            .any(Pattern::reads_certificate)
            || self.conditions.iter().any(Condition::reads_certificate)
    }

    /// Whether this statement's effect applies to the request.
    pub(super) fn applies(
        &self,
        action: Action,
        resource: &str,
        context: &RequestContext<'_>,
    ) -> bool {
        self.names(action) && self.covers(resource, context) && self.conditions_hold(context)
    }

    fn names(&self, action: Action) -> bool {
        let name = action.lowercase_name();
        self.actions
            .iter()
            .any(|pattern| pattern.matches(name, context_free()) == Some(true))
    }

    fn covers(&self, resource: &str, context: &RequestContext<'_>) -> bool {
        let is_deny = self.effect == Effect::Deny;
        let any_matches = |patterns: &[Pattern], if_unresolved: bool| {
            let outcome = |p: &Pattern| p.matches(resource, context).unwrap_or(if_unresolved);
            patterns.iter().any(outcome)
        };
        match &self.resources {
            Resources::Listed(patterns) => any_matches(patterns, is_deny),
            Resources::AllExcept(patterns) => !any_matches(patterns, !is_deny),
        }
    }

    fn conditions_hold(&self, context: &RequestContext<'_>) -> bool {
        let is_deny = self.effect == Effect::Deny;
        let holds = |c: &Condition| c.holds(context).unwrap_or(is_deny);
        self.conditions.iter().all(holds)
    }
}

/// Action patterns hold no variables, so any context resolves them.
fn context_free() -> &'static RequestContext<'static> {
    const NONE: RequestContext<'static> = RequestContext::new("", "");
    &NONE
}

fn reject_unknown_fields(fields: &Map<String, Value>) -> Result<(), FieldError> {
    match fields.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        Some(key) => Err((key.clone(), "unsupported statement field".into())),
        None => Ok(()),
    }
}

fn parse_effect(value: Option<&Value>) -> Result<Effect, FieldError> {
    let error = |reason: &str| ("Effect".to_owned(), reason.to_owned());
    match value.ok_or_else(|| error("missing"))?.as_str() {
        Some("Allow") => Ok(Effect::Allow),
        Some("Deny") => Ok(Effect::Deny),
        _ => Err(error("must be \"Allow\" or \"Deny\"")),
    }
}

fn parse_actions(value: Option<&Value>) -> Result<Vec<Pattern>, FieldError> {
    let names = string_list("Action", value)?;
    names
        .iter()
        .enumerate()
        .map(|(i, name)| parse_action(name).map_err(|r| (format!("Action[{i}]"), r)))
        .collect()
}

/// IAM action names are case-insensitive, so patterns are kept in lowercase.
fn parse_action(name: &str) -> Result<Pattern, String> {
    let lower = name.to_ascii_lowercase();
    let operation = match lower.as_str() {
        "*" => "*",
        _ => lower
            .strip_prefix("iot:")
            .ok_or("action is not in the iot namespace")?,
    };
    let well_formed = !operation.is_empty()
        && operation
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '*' || c == '?');
    if !well_formed {
        return Err(format!("`{name}` is not an action name"));
    }
    Pattern::parse(&lower, Wildcards::Glob).map_err(|e| e.to_string())
}

fn parse_resources(fields: &Map<String, Value>) -> Result<Resources, FieldError> {
    match (fields.get("Resource"), fields.get("NotResource")) {
        (Some(_), Some(_)) => Err((
            "NotResource".into(),
            "a statement has either Resource or NotResource, not both".into(),
        )),
        (Some(listed), None) => resource_patterns("Resource", listed).map(Resources::Listed),
        (None, Some(excluded)) => {
            resource_patterns("NotResource", excluded).map(Resources::AllExcept)
        }
        (None, None) => Err(("Resource".into(), "missing".into())),
    }
}

fn resource_patterns(field: &str, value: &Value) -> Result<Vec<Pattern>, FieldError> {
    let entries = string_list(field, Some(value))?;
    let parse = |(i, entry): (usize, &String)| {
        parse_resource(entry).map_err(|reason| (format!("{field}[{i}]"), reason))
    };
    entries.iter().enumerate().map(parse).collect()
}

fn parse_resource(entry: &str) -> Result<Pattern, String> {
    if entry != "*" && !entry.starts_with("arn:") {
        return Err(format!("`{entry}` is neither \"*\" nor an ARN"));
    }
    Pattern::parse(entry, Wildcards::Glob).map_err(|e| e.to_string())
}

fn parse_conditions(value: Option<&Value>) -> Result<Vec<Condition>, FieldError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let operators = value.as_object().ok_or_else(|| {
        (
            "Condition".to_owned(),
            "must be an object of operators".to_owned(),
        )
    })?;
    let mut conditions = Vec::new();
    for (operator, keys) in operators {
        let parsed = Condition::parse_operator(operator, keys)
            .map_err(|(field, reason)| (format!("Condition.{field}"), reason))?;
        conditions.extend(parsed);
    }
    Ok(conditions)
}

/// A field written as one string or a non-empty list of strings.
fn string_list(field: &str, value: Option<&Value>) -> Result<Vec<String>, FieldError> {
    let error = |reason: &str| (field.to_owned(), reason.to_owned());
    let items = match value.ok_or_else(|| error("missing"))? {
        Value::String(one) => return Ok(vec![one.clone()]),
        Value::Array(items) if !items.is_empty() => items,
        _ => return Err(error("must be a string or a non-empty list of strings")),
    };
    let as_string = |item: &Value| item.as_str().map(str::to_owned);
    items
        .iter()
        .map(as_string)
        .collect::<Option<_>>()
        .ok_or_else(|| error("list entries must be strings"))
}
