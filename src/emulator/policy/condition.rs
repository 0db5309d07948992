//! The `Condition` block of a policy statement: the operators and keys the emulator can
//! evaluate, with IAM's `ForAllValues:` / `ForAnyValue:` set qualifiers for multi-valued keys
//! such as `iot:ConnectAttributes`. Anything else is refused when the policy is parsed,
//! because a condition that is silently skipped would widen an Allow.

use serde_json::Value;

use super::RequestContext;
use super::pattern::{Pattern, Variable, Wildcards};

/// One `"Operator": { "key": values }` entry; a statement's conditions must all hold.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Condition {
    key: Variable,
    set: SetQualifier,
    test: Test,
}

const OPERATORS: [&str; 4] = ["Bool", "StringEquals", "StringNotEquals", "StringLike"];

/// How a test over one value extends to a key with several values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetQualifier {
    /// No qualifier: a positive test holds if any value passes, a negated one if all do.
    Plain,
    /// Every request value must pass (vacuously true for no values).
    ForAllValues,
    /// At least one request value must pass.
    ForAnyValue,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Bool(Vec<bool>),
    StringEquals(Vec<Pattern>),
    StringNotEquals(Vec<Pattern>),
    StringLike(Vec<Pattern>),
}

impl Condition {
    /// Parses one operator's key/value map. Errors are `(field, reason)` relative to the
    /// statement's `Condition`.
    pub(super) fn parse_operator(
        qualified: &str,
        keys: &Value,
    ) -> Result<Vec<Condition>, (String, String)> {
        let error = |reason: &str| (qualified.to_owned(), reason.to_owned());
        let (set, operator) = split_qualifier(qualified);
        if !OPERATORS.contains(&operator) {
            return Err(error("unsupported condition operator"));
        }
        if set != SetQualifier::Plain && operator == "Bool" {
            return Err(error("a set qualifier needs a string operator"));
        }
        let keys = keys
            .as_object()
            .ok_or_else(|| error("must be an object of condition keys"))?;
        keys.iter()
            .map(|(key, values)| Condition::parse_one(qualified, set, operator, key, values))
            .collect()
    }

    fn parse_one(
        qualified: &str,
        set: SetQualifier,
        operator: &str,
        key: &str,
        values: &Value,
    ) -> Result<Condition, (String, String)> {
        let field = || format!("{qualified}.{key}");
        let key =
            condition_key(key).ok_or_else(|| (field(), "unsupported condition key".into()))?;
        let test = Test::parse(operator, &key, values).map_err(|reason| (field(), reason))?;
        Ok(Condition { key, set, test })
    }

    pub(super) fn reads_certificate(&self) -> bool {
        let values: &[Pattern] = match &self.test {
            Test::Bool(_) => &[],
            Test::StringEquals(values)
            | Test::StringNotEquals(values)
            | Test::StringLike(values) => values,
        };
        self.key.reads_certificate() || values.iter().any(Pattern::reads_certificate)
    }

    /// Whether the condition holds; `None` when its key or a value's variable is unresolved.
    pub(super) fn holds(&self, context: &RequestContext<'_>) -> Option<bool> {
        let actual = self.key.values(context)?;
        let mut outcomes = Vec::with_capacity(actual.len());
        for value in actual {
            outcomes.push(self.test.passes(value, context)?);
        }
        let all = outcomes.iter().all(|passed| *passed);
        let any = outcomes.iter().any(|passed| *passed);
        Some(match (self.set, &self.test) {
            (SetQualifier::ForAllValues, _) => all,
            (SetQualifier::ForAnyValue, _) => any,
            (SetQualifier::Plain, Test::StringNotEquals(_)) => all,
            (SetQualifier::Plain, _) => any,
        })
    }
}

fn split_qualifier(qualified: &str) -> (SetQualifier, &str) {
    if let Some(operator) = qualified.strip_prefix("ForAllValues:") {
        return (SetQualifier::ForAllValues, operator);
    }
    if let Some(operator) = qualified.strip_prefix("ForAnyValue:") {
        return (SetQualifier::ForAnyValue, operator);
    }
    (SetQualifier::Plain, qualified)
}

fn condition_key(name: &str) -> Option<Variable> {
    Variable::from_name(name).filter(|key| *key != Variable::Unsupported)
}

fn any_matches(values: &[Pattern], actual: &str, context: &RequestContext<'_>) -> Option<bool> {
    let mut any = false;
    for value in values {
        any |= value.matches(actual, context)?;
    }
    Some(any)
}

impl Test {
    /// Parses the values of an operator already checked against [`OPERATORS`].
    fn parse(operator: &str, key: &Variable, values: &Value) -> Result<Test, String> {
        let values = one_or_many(values);
        if values.is_empty() {
            return Err("needs at least one value".into());
        }
        let strings = |wildcards| string_values(&values, wildcards);
        match operator {
            "Bool" if key.is_boolean() => bool_values(&values).map(Test::Bool),
            "Bool" => Err("Bool needs a boolean key".into()),
            "StringEquals" => strings(Wildcards::Literal).map(Test::StringEquals),
            "StringNotEquals" => strings(Wildcards::Literal).map(Test::StringNotEquals),
            _ => strings(Wildcards::Glob).map(Test::StringLike),
        }
    }

    /// Whether one request value passes; `None` when a condition value is unresolved.
    fn passes(&self, actual: &str, context: &RequestContext<'_>) -> Option<bool> {
        match self {
            Test::Bool(expected) => Some(expected.contains(&actual.eq_ignore_ascii_case("true"))),
            Test::StringEquals(values) | Test::StringLike(values) => {
                any_matches(values, actual, context)
            }
            Test::StringNotEquals(values) => any_matches(values, actual, context).map(|any| !any),
        }
    }
}

fn string_values(values: &[&Value], wildcards: Wildcards) -> Result<Vec<Pattern>, String> {
    values
        .iter()
        .map(|value| {
            let text = value.as_str().ok_or("values must be strings")?;
            Pattern::parse(text, wildcards).map_err(|e| e.to_string())
        })
        .collect()
}

fn bool_values(values: &[&Value]) -> Result<Vec<bool>, String> {
    values
        .iter()
        .map(|value| match value {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            _ => Err("Bool values must be true or false".to_owned()),
        })
        .collect()
}

fn one_or_many(values: &Value) -> Vec<&Value> {
    match values {
        Value::Array(values) => values.iter().collect(),
        value => vec![value],
    }
}
