//! The template's intrinsic functions (`Ref`, `Fn::Join`, `Fn::Select`, `Fn::Split`,
//! `Fn::Sub`, `Fn::FindInMap`), evaluated against a request's parameters. A static pass
//! refuses unknown functions and undeclared references when the template is created.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{CERTIFICATE_ID_PARAMETER, TemplateError};

const FUNCTIONS: [&str; 6] = [
    "Ref",
    "Fn::Join",
    "Fn::Select",
    "Fn::Split",
    "Fn::Sub",
    "Fn::FindInMap",
];

/// Whether a JSON object is a function call (`{"Ref": ...}`, `{"Fn::...": ...}`) rather
/// than a literal map.
pub(super) fn is_function(fields: &Map<String, Value>) -> bool {
    fields.len() == 1
        && fields
            .keys()
            .all(|key| key == "Ref" || key.starts_with("Fn::"))
}

/// Everything a function may read: declared parameters, the request, the mappings.
pub(super) struct Scope<'a> {
    declared: &'a BTreeMap<String, Option<String>>,
    mappings: &'a Map<String, Value>,
    request: &'a BTreeMap<String, String>,
}

impl<'a> Scope<'a> {
    pub(super) fn new(
        declared: &'a BTreeMap<String, Option<String>>,
        mappings: &'a Map<String, Value>,
        request: &'a BTreeMap<String, String>,
    ) -> Scope<'a> {
        Scope {
            declared,
            mappings,
            request,
        }
    }

    /// Replaces every function call inside `value` by its result.
    pub(super) fn evaluate(&self, value: &Value, at: &str) -> Result<Value, TemplateError> {
        match value {
            Value::Object(fields) if is_function(fields) => {
                let (name, argument) = fields.iter().next().expect("invariant: one key");
                self.call(name, argument, &format!("{at}.{name}"))
            }
            Value::Object(fields) => {
                let evaluate = |(key, value): (&String, &Value)| {
                    Ok((key.clone(), self.evaluate(value, &format!("{at}.{key}"))?))
                };
                fields
                    .iter()
                    .map(evaluate)
                    .collect::<Result<_, _>>()
                    .map(Value::Object)
            }
            Value::Array(items) => self.evaluate_list(items, at).map(Value::Array),
            literal => Ok(literal.clone()),
        }
    }

    /// Evaluates `value` and requires a string result.
    pub(super) fn string(&self, value: &Value, at: &str) -> Result<String, TemplateError> {
        match self.evaluate(value, at)? {
            Value::String(text) => Ok(text),
            _ => Err(TemplateError::evaluation(at, "must be a string")),
        }
    }

    fn evaluate_list(&self, items: &[Value], at: &str) -> Result<Vec<Value>, TemplateError> {
        let evaluate = |(i, item): (usize, &Value)| self.evaluate(item, &format!("{at}[{i}]"));
        items.iter().enumerate().map(evaluate).collect()
    }

    fn call(&self, name: &str, argument: &Value, at: &str) -> Result<Value, TemplateError> {
        match name {
            "Ref" => self.reference(argument, at).map(Value::String),
            "Fn::Join" => self.join(argument, at).map(Value::String),
            "Fn::Select" => self.select(argument, at),
            "Fn::Split" => self.split(argument, at),
            "Fn::Sub" => self.substitute(argument, at).map(Value::String),
            "Fn::FindInMap" => self.find_in_map(argument, at),
            _ => Err(TemplateError::UnknownFunction {
                at: at.into(),
                function: name.into(),
            }),
        }
    }

    fn reference(&self, argument: &Value, at: &str) -> Result<String, TemplateError> {
        let name = argument
            .as_str()
            .ok_or_else(|| TemplateError::malformed(at, "Ref takes a parameter name"))?;
        self.parameter(name, at)
    }

    /// A request value for a declared parameter, else its default.
    fn parameter(&self, name: &str, at: &str) -> Result<String, TemplateError> {
        let missing = || TemplateError::MissingParameter {
            at: at.into(),
            name: name.into(),
        };
        match self.declared.get(name) {
            Some(default) => self
                .request
                .get(name)
                .or(default.as_ref())
                .cloned()
                .ok_or_else(missing),
            None if name == CERTIFICATE_ID_PARAMETER => {
                self.request.get(name).cloned().ok_or_else(missing)
            }
            None => Err(undeclared(name, at)),
        }
    }

    fn join(&self, argument: &Value, at: &str) -> Result<String, TemplateError> {
        let [delimiter, items] = arguments(argument, at, "[delimiter, [values]]")?;
        let delimiter = self.string(delimiter, &format!("{at}[0]"))?;
        let items = self.strings(items, &format!("{at}[1]"))?;
        Ok(items.join(&delimiter))
    }

    fn select(&self, argument: &Value, at: &str) -> Result<Value, TemplateError> {
        let [index, items] = arguments(argument, at, "[index, [values]]")?;
        let index_at = format!("{at}[0]");
        let index = match self.evaluate(index, &index_at)? {
            Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
            Value::String(text) => text.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| TemplateError::evaluation(&index_at, "index must be a whole number"))?;
        let items = self.list(items, &format!("{at}[1]"))?;
        let count = items.len();
        items.into_iter().nth(index).ok_or_else(|| {
            TemplateError::evaluation(
                at,
                format!("index {index} is out of range for {count} values"),
            )
        })
    }

    fn split(&self, argument: &Value, at: &str) -> Result<Value, TemplateError> {
        let [delimiter, source] = arguments(argument, at, "[delimiter, string]")?;
        let delimiter = self.string(delimiter, &format!("{at}[0]"))?;
        if delimiter.is_empty() {
            return Err(TemplateError::evaluation(
                format!("{at}[0]"),
                "delimiter is empty",
            ));
        }
        let source = self.string(source, &format!("{at}[1]"))?;
        let parts = source
            .split(delimiter.as_str())
            .map(|p| Value::String(p.to_owned()));
        Ok(Value::Array(parts.collect()))
    }

    /// `Fn::Sub` in both forms: `"text ${Param}"` and `["text ${Var}", {"Var": value}]`.
    fn substitute(&self, argument: &Value, at: &str) -> Result<String, TemplateError> {
        let (text, locals) = sub_parts(argument, at)?;
        let locals = match locals {
            Some(locals) => self.sub_variables(locals, at)?,
            None => BTreeMap::new(),
        };
        render_sub(text, at, |name| match locals.get(name) {
            Some(value) => Ok(value.clone()),
            None => self.parameter(name, at),
        })
    }

    fn sub_variables(
        &self,
        variables: &Map<String, Value>,
        at: &str,
    ) -> Result<BTreeMap<String, String>, TemplateError> {
        let evaluate = |(name, value): (&String, &Value)| {
            Ok((
                name.clone(),
                self.string(value, &format!("{at}[1].{name}"))?,
            ))
        };
        variables.iter().map(evaluate).collect()
    }

    fn find_in_map(&self, argument: &Value, at: &str) -> Result<Value, TemplateError> {
        let [map, top, second] = arguments(argument, at, "[map, top-level key, second-level key]")?;
        let map = self.string(map, &format!("{at}[0]"))?;
        let top = self.string(top, &format!("{at}[1]"))?;
        let second = self.string(second, &format!("{at}[2]"))?;
        let found = self
            .mappings
            .get(&map)
            .and_then(|m| m.get(&top))
            .and_then(|t| t.get(&second));
        found.cloned().ok_or_else(|| {
            TemplateError::evaluation(at, format!("Mappings has no {map}.{top}.{second}"))
        })
    }

    fn list(&self, value: &Value, at: &str) -> Result<Vec<Value>, TemplateError> {
        match self.evaluate(value, at)? {
            Value::Array(items) => Ok(items),
            _ => Err(TemplateError::evaluation(at, "must be a list")),
        }
    }

    fn strings(&self, value: &Value, at: &str) -> Result<Vec<String>, TemplateError> {
        let text = |(i, item): (usize, Value)| match item {
            Value::String(text) => Ok(text),
            _ => Err(TemplateError::evaluation(
                format!("{at}[{i}]"),
                "must be a string",
            )),
        };
        self.list(value, at)?
            .into_iter()
            .enumerate()
            .map(text)
            .collect()
    }

    /// The static pass: every function is known and every `Ref` names a declared parameter.
    pub(super) fn check(&self, value: &Value, at: &str) -> Result<(), TemplateError> {
        match value {
            Value::Object(fields) if is_function(fields) => {
                let (name, argument) = fields.iter().next().expect("invariant: one key");
                self.check_call(name, argument, &format!("{at}.{name}"))
            }
            Value::Object(fields) => fields
                .iter()
                .try_for_each(|(key, value)| self.check(value, &format!("{at}.{key}"))),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| self.check(item, &format!("{at}[{i}]"))),
            _ => Ok(()),
        }
    }

    fn check_call(&self, name: &str, argument: &Value, at: &str) -> Result<(), TemplateError> {
        if !FUNCTIONS.contains(&name) {
            return Err(TemplateError::UnknownFunction {
                at: at.into(),
                function: name.into(),
            });
        }
        match (name, argument) {
            ("Ref", Value::String(parameter)) => self.check_declared(parameter, at),
            ("Ref", _) => Err(TemplateError::malformed(at, "Ref takes a parameter name")),
            ("Fn::Sub", _) => self.check_sub(argument, at),
            _ => self.check(argument, at),
        }
    }

    /// Every `${Name}` in a `Fn::Sub` names a local variable or a declared parameter.
    fn check_sub(&self, argument: &Value, at: &str) -> Result<(), TemplateError> {
        self.check(argument, at)?;
        let (text, locals) = sub_parts(argument, at)?;
        let known = |name: &str| match locals.is_some_and(|locals| locals.contains_key(name)) {
            true => Ok(String::new()),
            false => self.check_declared(name, at).map(|()| String::new()),
        };
        render_sub(text, at, known).map(drop)
    }

    fn check_declared(&self, name: &str, at: &str) -> Result<(), TemplateError> {
        match self.declared.contains_key(name) || name == CERTIFICATE_ID_PARAMETER {
            true => Ok(()),
            false => Err(undeclared(name, at)),
        }
    }
}

fn undeclared(name: &str, at: &str) -> TemplateError {
    TemplateError::malformed(at, format!("`{name}` is not a declared parameter"))
}

/// The text of a `Fn::Sub` and its local variables, if any.
type SubParts<'v> = (&'v str, Option<&'v Map<String, Value>>);

fn sub_parts<'v>(argument: &'v Value, at: &str) -> Result<SubParts<'v>, TemplateError> {
    match argument {
        Value::String(text) => Ok((text, None)),
        Value::Array(pair) => match pair.as_slice() {
            [Value::String(text), Value::Object(locals)] => Ok((text, Some(locals))),
            _ => Err(TemplateError::malformed(
                at,
                "expects a string or [string, {variables}]",
            )),
        },
        _ => Err(TemplateError::malformed(
            at,
            "expects a string or [string, {variables}]",
        )),
    }
}

/// A function's argument list, of exactly `N` entries.
fn arguments<'v, const N: usize>(
    argument: &'v Value,
    at: &str,
    shape: &str,
) -> Result<[&'v Value; N], TemplateError> {
    let items = argument
        .as_array()
        .map(|items| items.iter().collect::<Vec<_>>());
    items
        .and_then(|items| items.try_into().ok())
        .ok_or_else(|| TemplateError::malformed(at, format!("expects {shape}")))
}

/// Expands `${Name}` through `lookup`; `${!Text}` stands for a literal `${Text}`.
fn render_sub(
    text: &str,
    at: &str,
    lookup: impl Fn(&str) -> Result<String, TemplateError>,
) -> Result<String, TemplateError> {
    let mut rendered = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        rendered.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| TemplateError::malformed(at, "`${` without a closing `}`"))?;
        let name = &after[..end];
        match name.strip_prefix('!') {
            Some(literal) => rendered.push_str(&format!("${{{literal}}}")),
            None => rendered.push_str(&lookup(name)?),
        }
        rest = &after[end + 1..];
    }
    rendered.push_str(rest);
    Ok(rendered)
}
