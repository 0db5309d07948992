//! Fleet provisioning templates: parsing, static checks and evaluation into a [`Plan`] of
//! registry changes for RegisterThing. Errors name the resource and field at fault, because
//! a template author only sees them as a rejected provisioning request.

mod intrinsic;
mod resources;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

pub use crate::emulator::registry::ThingProperties;

use intrinsic::Scope;
use resources::Resource;

/// IoT's limit on a template body (`TemplateBody`, 0..10240 characters).
pub const MAX_TEMPLATE_CHARS: usize = 10240;

/// The pseudo-parameter carrying the ID of the certificate being provisioned.
pub const CERTIFICATE_ID_PARAMETER: &str = "AWS::IoT::Certificate::Id";

const SECTIONS: [&str; 4] = ["Parameters", "Mappings", "Resources", "DeviceConfiguration"];

/// A parsed and statically checked provisioning template.
#[derive(Debug, Clone)]
pub struct Template {
    /// The body as parsed JSON, for DescribeProvisioningTemplate.
    pub body: Value,
    /// Declared parameters and their defaults.
    parameters: BTreeMap<String, Option<String>>,
    mappings: Map<String, Value>,
    resources: Vec<Resource>,
    device_configuration: Map<String, Value>,
}

/// Why a template was refused or could not be evaluated. `at` is a path such as
/// `Resources.thing.Properties.ThingName`.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template body has {chars} characters, over the limit of {max}")]
    TooLarge { chars: usize, max: usize },
    #[error("template body is not valid json: {0}")]
    Json(#[source] serde_json::Error),
    #[error("malformed template at {at}: {reason}")]
    Malformed { at: String, reason: String },
    #[error("template uses unknown or unsupported function `{function}` at {at}")]
    UnknownFunction { at: String, function: String },
    #[error("template resource `{resource}` has type `{kind}`, unsupported in fleet provisioning")]
    UnsupportedResourceType { resource: String, kind: String },
    #[error("request lacks parameter `{name}`, which the template needs at {at}")]
    MissingParameter { at: String, name: String },
    #[error("template evaluation failed at {at}: {reason}")]
    Evaluation { at: String, reason: String },
}

impl TemplateError {
    /// Whether the provisioning request, rather than the template, is at fault.
    pub fn is_request_fault(&self) -> bool {
        matches!(self, TemplateError::MissingParameter { .. })
    }

    fn malformed(at: impl Into<String>, reason: impl Into<String>) -> TemplateError {
        TemplateError::Malformed {
            at: at.into(),
            reason: reason.into(),
        }
    }

    fn evaluation(at: impl Into<String>, reason: impl Into<String>) -> TemplateError {
        TemplateError::Evaluation {
            at: at.into(),
            reason: reason.into(),
        }
    }
}

/// How an existing resource's property is treated (`OverrideSettings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Override {
    #[default]
    DoNothing,
    Replace,
    Merge,
    Fail,
}

/// What RegisterThing must do, as evaluated from the template.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub thing: Option<ThingPlan>,
    pub certificate: Option<CertificatePlan>,
    pub policies: Vec<PolicyPlan>,
    pub device_configuration: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ThingPlan {
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    pub attributes_override: Override,
    /// `ThingTypeName`; `None` when the template does not set one.
    pub thing_type: Option<String>,
    pub thing_type_override: Override,
    /// `ThingGroups`; `None` when the template does not name any.
    pub groups: Option<BTreeSet<String>>,
    pub groups_override: Override,
}

/// Which property of an existing thing a `FAIL` override refused to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverrideConflict(pub &'static str);

impl ThingPlan {
    /// The thing's properties after provisioning: the template's values for
    /// a new thing; for an existing one, each property as its
    /// `OverrideSettings` says (`DO_NOTHING` keeps it, `REPLACE` takes the
    /// template's, `MERGE` adds the template's attributes or groups to the
    /// existing ones, `FAIL` refuses any change).
    pub fn resolve(
        &self,
        existing: Option<&ThingProperties>,
    ) -> Result<ThingProperties, OverrideConflict> {
        let wanted = ThingProperties {
            attributes: self.attributes.clone(),
            thing_type: self.thing_type.clone(),
            groups: self.groups.clone().unwrap_or_default(),
        };
        let Some(existing) = existing else {
            return Ok(wanted);
        };
        Ok(ThingProperties {
            attributes: resolve_map(
                &existing.attributes,
                &wanted.attributes,
                self.attributes_override,
                "AttributePayload",
            )?,
            thing_type: match self.thing_type {
                None => existing.thing_type.clone(),
                Some(_) => resolve_value(
                    &existing.thing_type,
                    &wanted.thing_type,
                    self.thing_type_override,
                    "ThingTypeName",
                )?,
            },
            groups: match self.groups {
                None => existing.groups.clone(),
                Some(_) => resolve_set(
                    &existing.groups,
                    &wanted.groups,
                    self.groups_override,
                    "ThingGroups",
                )?,
            },
        })
    }
}

fn resolve_value<T: Clone + PartialEq>(
    existing: &T,
    wanted: &T,
    setting: Override,
    field: &'static str,
) -> Result<T, OverrideConflict> {
    match setting {
        Override::DoNothing => Ok(existing.clone()),
        Override::Replace | Override::Merge => Ok(wanted.clone()),
        Override::Fail if existing == wanted => Ok(existing.clone()),
        Override::Fail => Err(OverrideConflict(field)),
    }
}

fn resolve_map(
    existing: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
    setting: Override,
    field: &'static str,
) -> Result<BTreeMap<String, String>, OverrideConflict> {
    match setting {
        Override::Merge => {
            let mut merged = existing.clone();
            merged.extend(wanted.iter().map(|(k, v)| (k.clone(), v.clone())));
            Ok(merged)
        }
        other => resolve_value(existing, wanted, other, field),
    }
}

fn resolve_set(
    existing: &BTreeSet<String>,
    wanted: &BTreeSet<String>,
    setting: Override,
    field: &'static str,
) -> Result<BTreeSet<String>, OverrideConflict> {
    match setting {
        Override::Merge => Ok(existing.union(wanted).cloned().collect()),
        other => resolve_value(existing, wanted, other, field),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertificatePlan {
    pub certificate_id: String,
    /// `ACTIVE` or `INACTIVE`, normalised to upper case (templates may write `Active`).
    pub status: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PolicyPlan {
    /// Attach an existing policy.
    Named(String),
    /// Create (or reuse) a policy from `document`; `name` is the template's `PolicyName`,
    /// or the lowercase hex SHA-256 of the document (an object document is written as
    /// compact JSON with sorted keys).
    Document { name: String, document: String },
}

impl Template {
    /// Parses a template body and checks everything that does not depend on parameters.
    pub fn parse(body: &str) -> Result<Template, TemplateError> {
        let chars = body.chars().count();
        if chars > MAX_TEMPLATE_CHARS {
            return Err(TemplateError::TooLarge {
                chars,
                max: MAX_TEMPLATE_CHARS,
            });
        }
        let value: Value = serde_json::from_str(body).map_err(TemplateError::Json)?;
        let sections = value
            .as_object()
            .ok_or_else(|| TemplateError::malformed("template", "must be a json object"))?;
        let template = Template::from_sections(sections)?;
        template.check_expressions()?;
        Ok(Template {
            body: value,
            ..template
        })
    }

    fn from_sections(sections: &Map<String, Value>) -> Result<Template, TemplateError> {
        if let Some(key) = sections
            .keys()
            .find(|key| !SECTIONS.contains(&key.as_str()))
        {
            return Err(TemplateError::malformed(
                key,
                "unsupported template section",
            ));
        }
        let section = |name: &str| {
            sections
                .get(name)
                .map(|value| object(value, name))
                .transpose()
        };
        Ok(Template {
            body: Value::Null,
            parameters: parse_parameters(section("Parameters")?)?,
            mappings: parse_mappings(section("Mappings")?)?,
            resources: resources::parse_all(section("Resources")?)?,
            device_configuration: parse_device_configuration(section("DeviceConfiguration")?)?,
        })
    }

    /// Refuses unknown functions and references to undeclared parameters before any
    /// device tries to provision with the template.
    fn check_expressions(&self) -> Result<(), TemplateError> {
        let no_request = BTreeMap::new();
        let scope = self.scope(&no_request);
        for resource in &self.resources {
            resource.check(&scope)?;
        }
        for (key, value) in &self.device_configuration {
            scope.check(value, &format!("DeviceConfiguration.{key}"))?;
        }
        Ok(())
    }

    fn scope<'a>(&'a self, request: &'a BTreeMap<String, String>) -> Scope<'a> {
        Scope::new(&self.parameters, &self.mappings, request)
    }

    /// Evaluates the template with the request's parameters (which include
    /// `AWS::IoT::Certificate::Id`).
    pub fn evaluate(&self, parameters: &BTreeMap<String, String>) -> Result<Plan, TemplateError> {
        let scope = self.scope(parameters);
        let mut plan = Plan {
            thing: None,
            certificate: None,
            policies: Vec::new(),
            device_configuration: self.evaluate_device_configuration(&scope)?,
        };
        for resource in &self.resources {
            resource.add_to(&mut plan, &scope)?;
        }
        Ok(plan)
    }

    fn evaluate_device_configuration(
        &self,
        scope: &Scope<'_>,
    ) -> Result<BTreeMap<String, String>, TemplateError> {
        let evaluate = |(key, value): (&String, &Value)| {
            let at = format!("DeviceConfiguration.{key}");
            let value = scope.evaluate(value, &at)?;
            scalar_text(&value)
                .map(|text| (key.clone(), text))
                .ok_or_else(|| {
                    TemplateError::evaluation(at, "device configuration values must be flat")
                })
        };
        self.device_configuration.iter().map(evaluate).collect()
    }
}

fn object<'a>(value: &'a Value, at: &str) -> Result<&'a Map<String, Value>, TemplateError> {
    value
        .as_object()
        .ok_or_else(|| TemplateError::malformed(at, "must be a json object"))
}

/// A string, number or boolean as the text a device receives; `None` for lists and objects.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn parse_parameters(
    section: Option<&Map<String, Value>>,
) -> Result<BTreeMap<String, Option<String>>, TemplateError> {
    let parse = |(name, spec): (&String, &Value)| {
        parse_parameter(spec, &format!("Parameters.{name}")).map(|default| (name.clone(), default))
    };
    section.into_iter().flatten().map(parse).collect()
}

/// A parameter declaration: `{"Type": "String", "Default"?: "..."}`; returns the default.
fn parse_parameter(spec: &Value, at: &str) -> Result<Option<String>, TemplateError> {
    let fields = object(spec, at)?;
    if let Some(key) = fields
        .keys()
        .find(|key| !["Type", "Default"].contains(&key.as_str()))
    {
        return Err(TemplateError::malformed(
            format!("{at}.{key}"),
            "unsupported field",
        ));
    }
    if fields.get("Type").and_then(Value::as_str) != Some("String") {
        return Err(TemplateError::malformed(
            format!("{at}.Type"),
            "must be \"String\"",
        ));
    }
    match fields.get("Default") {
        None => Ok(None),
        Some(Value::String(default)) => Ok(Some(default.clone())),
        Some(_) => Err(TemplateError::malformed(
            format!("{at}.Default"),
            "must be a string",
        )),
    }
}

/// `Mappings` is plain data: map → top key → second key → string or list of strings.
fn parse_mappings(
    section: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, TemplateError> {
    let Some(section) = section else {
        return Ok(Map::new());
    };
    for (name, map) in section {
        for (top, entries) in object(map, &format!("Mappings.{name}"))? {
            for (second, value) in object(entries, &format!("Mappings.{name}.{top}"))? {
                check_mapping_value(value, &format!("Mappings.{name}.{top}.{second}"))?;
            }
        }
    }
    Ok(section.clone())
}

fn check_mapping_value(value: &Value, at: &str) -> Result<(), TemplateError> {
    let plain = match value {
        Value::String(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        _ => false,
    };
    match plain {
        true => Ok(()),
        false => Err(TemplateError::malformed(
            at,
            "mapping values must be strings or lists of strings (no functions)",
        )),
    }
}

fn parse_device_configuration(
    section: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, TemplateError> {
    let Some(section) = section else {
        return Ok(Map::new());
    };
    for (key, value) in section {
        let nested = matches!(value, Value::Array(_))
            || matches!(value, Value::Object(fields) if !intrinsic::is_function(fields));
        if nested {
            let at = format!("DeviceConfiguration.{key}");
            return Err(TemplateError::malformed(
                at,
                "nested values are not supported",
            ));
        }
    }
    Ok(section.clone())
}
