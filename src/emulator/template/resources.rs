//! The resource types a fleet provisioning template may declare (thing, certificate,
//! policy): their static shape, checked at parse time, and their evaluation into a [`Plan`].
//! Names follow the registry's rules (thing, thing type and thing group names are
//! `^[a-zA-Z0-9:_-]{1,128}$`), so a bad name fails the request, not a later lookup.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::intrinsic::{Scope, is_function};
use super::{CertificatePlan, Override, Plan, PolicyPlan, TemplateError, ThingPlan, object};
use crate::emulator::policy::PolicyDocument;

const RESOURCE_FIELDS: [&str; 3] = ["Type", "Properties", "OverrideSettings"];

/// One entry of `Resources`, with its properties still unevaluated.
#[derive(Debug, Clone)]
pub(super) struct Resource {
    id: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Thing {
        name: Value,
        attributes: Option<Value>,
        attributes_override: Override,
        thing_type: Option<Value>,
        thing_type_override: Override,
        groups: Option<Value>,
        groups_override: Override,
    },
    Certificate {
        id: Value,
        status: Option<Value>,
    },
    Policy {
        name: Option<Value>,
        document: Option<Value>,
    },
}

pub(super) fn parse_all(
    section: Option<&Map<String, Value>>,
) -> Result<Vec<Resource>, TemplateError> {
    let section = section.ok_or_else(|| TemplateError::malformed("Resources", "missing"))?;
    let resources = section
        .iter()
        .map(|(id, value)| Resource::parse(id, value))
        .collect::<Result<Vec<_>, _>>()?;
    refuse_duplicates(&resources)?;
    Ok(resources)
}

/// RegisterThing provisions one device: one thing and one certificate at most.
fn refuse_duplicates(resources: &[Resource]) -> Result<(), TemplateError> {
    for kind in ["AWS::IoT::Thing", "AWS::IoT::Certificate"] {
        let mut of_kind = resources.iter().filter(|r| r.kind.type_name() == kind);
        if let Some(second) = of_kind.nth(1) {
            let at = format!("Resources.{}", second.id);
            return Err(TemplateError::malformed(
                at,
                format!("a template has at most one {kind}"),
            ));
        }
    }
    Ok(())
}

impl Kind {
    fn type_name(&self) -> &'static str {
        match self {
            Kind::Thing { .. } => "AWS::IoT::Thing",
            Kind::Certificate { .. } => "AWS::IoT::Certificate",
            Kind::Policy { .. } => "AWS::IoT::Policy",
        }
    }
}

impl Resource {
    fn parse(id: &str, value: &Value) -> Result<Resource, TemplateError> {
        let at = format!("Resources.{id}");
        let fields = object(value, &at)?;
        refuse_unknown(fields, &RESOURCE_FIELDS, &at)?;
        let kind_name = fields
            .get("Type")
            .and_then(Value::as_str)
            .ok_or_else(|| TemplateError::malformed(format!("{at}.Type"), "missing"))?;
        let empty = Map::new();
        let properties = match fields.get("Properties") {
            Some(properties) => object(properties, &format!("{at}.Properties"))?,
            None => &empty,
        };
        let overrides = match fields.get("OverrideSettings") {
            Some(overrides) => object(overrides, &format!("{at}.OverrideSettings"))?,
            None => &empty,
        };
        let kind = match kind_name {
            "AWS::IoT::Thing" => parse_thing(properties, overrides, &at)?,
            "AWS::IoT::Certificate" => parse_certificate(properties, overrides, &at)?,
            "AWS::IoT::Policy" => parse_policy(properties, overrides, &at)?,
            other => {
                return Err(TemplateError::UnsupportedResourceType {
                    resource: id.to_owned(),
                    kind: other.to_owned(),
                });
            }
        };
        Ok(Resource {
            id: id.to_owned(),
            kind,
        })
    }

    /// The static pass over this resource's expressions.
    pub(super) fn check(&self, scope: &Scope<'_>) -> Result<(), TemplateError> {
        let at = format!("Resources.{}.Properties", self.id);
        let fields: Vec<(&str, Option<&Value>)> = match &self.kind {
            Kind::Thing {
                name,
                attributes,
                thing_type,
                groups,
                ..
            } => vec![
                ("ThingName", Some(name)),
                ("AttributePayload", attributes.as_ref()),
                ("ThingTypeName", thing_type.as_ref()),
                ("ThingGroups", groups.as_ref()),
            ],
            Kind::Certificate { id, status } => {
                vec![("CertificateId", Some(id)), ("Status", status.as_ref())]
            }
            Kind::Policy { name, document } => vec![
                ("PolicyName", name.as_ref()),
                ("PolicyDocument", document.as_ref()),
            ],
        };
        let mut present = fields
            .into_iter()
            .filter_map(|(field, value)| Some((field, value?)));
        present.try_for_each(|(field, value)| scope.check(value, &format!("{at}.{field}")))
    }

    /// Evaluates this resource and records it in `plan`.
    pub(super) fn add_to(&self, plan: &mut Plan, scope: &Scope<'_>) -> Result<(), TemplateError> {
        let at = format!("Resources.{}.Properties", self.id);
        match &self.kind {
            Kind::Thing {
                name,
                attributes,
                attributes_override,
                thing_type,
                thing_type_override,
                groups,
                groups_override,
            } => {
                let type_at = format!("{at}.ThingTypeName");
                plan.thing = Some(ThingPlan {
                    name: registry_name(scope, name, &format!("{at}.ThingName"), "thing")?,
                    attributes: attribute_payload(scope, attributes.as_ref(), &at)?,
                    attributes_override: *attributes_override,
                    thing_type: thing_type
                        .as_ref()
                        .map(|value| registry_name(scope, value, &type_at, "thing type"))
                        .transpose()?,
                    thing_type_override: *thing_type_override,
                    groups: groups
                        .as_ref()
                        .map(|value| thing_groups(scope, value, &format!("{at}.ThingGroups")))
                        .transpose()?,
                    groups_override: *groups_override,
                });
            }
            Kind::Certificate { id, status } => {
                plan.certificate = Some(CertificatePlan {
                    certificate_id: certificate_id(scope, id, &format!("{at}.CertificateId"))?,
                    status: certificate_status(scope, status.as_ref(), &format!("{at}.Status"))?,
                });
            }
            Kind::Policy { name, document } => {
                plan.policies
                    .push(policy_plan(scope, name.as_ref(), document.as_ref(), &at)?);
            }
        }
        Ok(())
    }
}

fn refuse_unknown(
    fields: &Map<String, Value>,
    known: &[&str],
    at: &str,
) -> Result<(), TemplateError> {
    match fields.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(TemplateError::malformed(
            format!("{at}.{key}"),
            "unsupported field",
        )),
        None => Ok(()),
    }
}

fn parse_thing(
    properties: &Map<String, Value>,
    overrides: &Map<String, Value>,
    at: &str,
) -> Result<Kind, TemplateError> {
    refuse_unknown(
        properties,
        &[
            "ThingName",
            "AttributePayload",
            "ThingTypeName",
            "ThingGroups",
        ],
        &format!("{at}.Properties"),
    )?;
    refuse_unknown(
        overrides,
        &["AttributePayload", "ThingTypeName", "ThingGroups"],
        &format!("{at}.OverrideSettings"),
    )?;
    let name = properties
        .get("ThingName")
        .ok_or_else(|| TemplateError::malformed(format!("{at}.Properties.ThingName"), "missing"))?;
    let attributes = properties.get("AttributePayload");
    if let Some(attributes) = attributes {
        let literal_map = matches!(attributes, Value::Object(fields) if !is_function(fields));
        if !literal_map {
            let at = format!("{at}.Properties.AttributePayload");
            return Err(TemplateError::malformed(
                at,
                "must be a map of attribute names to values",
            ));
        }
    }
    Ok(Kind::Thing {
        name: name.clone(),
        attributes: attributes.cloned(),
        attributes_override: thing_override(overrides, "AttributePayload", at)?,
        thing_type: properties.get("ThingTypeName").cloned(),
        thing_type_override: thing_override(overrides, "ThingTypeName", at)?,
        groups: properties.get("ThingGroups").cloned(),
        groups_override: thing_override(overrides, "ThingGroups", at)?,
    })
}

/// `MERGE` exists only for attributes and groups; a thing type is one value.
fn thing_override(
    overrides: &Map<String, Value>,
    field: &str,
    at: &str,
) -> Result<Override, TemplateError> {
    let at = format!("{at}.OverrideSettings.{field}");
    let setting = match overrides.get(field) {
        Some(value) => parse_override(value, &at)?,
        None => return Ok(Override::default()),
    };
    if setting == Override::Merge && field == "ThingTypeName" {
        return Err(TemplateError::malformed(
            at,
            "MERGE applies only to AttributePayload and ThingGroups",
        ));
    }
    Ok(setting)
}

fn parse_override(value: &Value, at: &str) -> Result<Override, TemplateError> {
    let text = value.as_str().unwrap_or_default().to_ascii_uppercase();
    match text.as_str() {
        "DO_NOTHING" => Ok(Override::DoNothing),
        "REPLACE" => Ok(Override::Replace),
        "MERGE" => Ok(Override::Merge),
        "FAIL" => Ok(Override::Fail),
        _ => Err(TemplateError::malformed(
            at,
            "must be DO_NOTHING, REPLACE, MERGE or FAIL",
        )),
    }
}

fn parse_certificate(
    properties: &Map<String, Value>,
    overrides: &Map<String, Value>,
    at: &str,
) -> Result<Kind, TemplateError> {
    let properties_at = format!("{at}.Properties");
    let csr_or_pem = [
        "CertificateSigningRequest",
        "CertificatePem",
        "CACertificatePem",
    ];
    if let Some(field) = csr_or_pem
        .iter()
        .find(|field| properties.contains_key(**field))
    {
        let reason = "fleet provisioning templates may only use CertificateId";
        return Err(TemplateError::malformed(
            format!("{properties_at}.{field}"),
            reason,
        ));
    }
    refuse_unknown(properties, &["CertificateId", "Status"], &properties_at)?;
    // Fleet provisioning always registers a certificate it just issued, so there is never
    // an existing status to override; the setting is accepted and has no effect.
    refuse_unknown(overrides, &["Status"], &format!("{at}.OverrideSettings"))?;
    let id = properties.get("CertificateId").ok_or_else(|| {
        TemplateError::malformed(format!("{properties_at}.CertificateId"), "missing")
    })?;
    Ok(Kind::Certificate {
        id: id.clone(),
        status: properties.get("Status").cloned(),
    })
}

fn parse_policy(
    properties: &Map<String, Value>,
    overrides: &Map<String, Value>,
    at: &str,
) -> Result<Kind, TemplateError> {
    let properties_at = format!("{at}.Properties");
    refuse_unknown(
        properties,
        &["PolicyName", "PolicyDocument"],
        &properties_at,
    )?;
    refuse_unknown(overrides, &[], &format!("{at}.OverrideSettings"))?;
    let name = properties.get("PolicyName").cloned();
    let document = properties.get("PolicyDocument").cloned();
    if name.is_none() && document.is_none() {
        let reason = "needs PolicyName or PolicyDocument";
        return Err(TemplateError::malformed(properties_at, reason));
    }
    Ok(Kind::Policy { name, document })
}

/// Thing, thing type and thing group names follow `^[a-zA-Z0-9:_-]{1,128}$`.
fn registry_name(
    scope: &Scope<'_>,
    value: &Value,
    at: &str,
    kind: &str,
) -> Result<String, TemplateError> {
    let name = scope.string(value, at)?;
    check_registry_name(&name, at, kind)?;
    Ok(name)
}

/// A name as an error message shows it: a device controls it, and the message goes back to
/// the device inside one MQTT packet.
fn shortened(name: &str) -> String {
    const SHOWN: usize = 64;
    match name.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}... ({} bytes)", &name[..cut], name.len()),
        None => name.to_owned(),
    }
}

fn check_registry_name(name: &str, at: &str, kind: &str) -> Result<(), TemplateError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-');
    match (1..=128).contains(&name.len()) && name.chars().all(valid_char) {
        true => Ok(()),
        false => Err(TemplateError::evaluation(
            at,
            format!("`{}` is not a valid {kind} name", shortened(name)),
        )),
    }
}

/// `ThingGroups`: a list of group names, literal or computed (`Fn::Split`).
fn thing_groups(
    scope: &Scope<'_>,
    value: &Value,
    at: &str,
) -> Result<BTreeSet<String>, TemplateError> {
    let Value::Array(items) = scope.evaluate(value, at)? else {
        return Err(TemplateError::evaluation(
            at,
            "must be a list of thing group names",
        ));
    };
    let name = |(index, item): (usize, Value)| {
        let item_at = format!("{at}[{index}]");
        let Value::String(name) = item else {
            return Err(TemplateError::evaluation(item_at, "must be a string"));
        };
        check_registry_name(&name, &item_at, "thing group")?;
        Ok(name)
    };
    items.into_iter().enumerate().map(name).collect()
}

fn attribute_payload(
    scope: &Scope<'_>,
    value: Option<&Value>,
    at: &str,
) -> Result<BTreeMap<String, String>, TemplateError> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let at = format!("{at}.AttributePayload");
    let Value::Object(attributes) = scope.evaluate(value, &at)? else {
        return Err(TemplateError::evaluation(at, "must be a map"));
    };
    let text = |(key, value): (String, Value)| match value {
        Value::String(text) => Ok((key, text)),
        _ => Err(TemplateError::evaluation(
            format!("{at}.{key}"),
            "attribute values must be strings",
        )),
    };
    attributes.into_iter().map(text).collect()
}

/// Certificate IDs are the 64-hex-digit SHA-256 of the certificate.
fn certificate_id(scope: &Scope<'_>, value: &Value, at: &str) -> Result<String, TemplateError> {
    let id = scope.string(value, at)?;
    match id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()) {
        true => Ok(id),
        false => Err(TemplateError::evaluation(
            at,
            format!("`{id}` is not a certificate id"),
        )),
    }
}

fn certificate_status(
    scope: &Scope<'_>,
    value: Option<&Value>,
    at: &str,
) -> Result<String, TemplateError> {
    let Some(value) = value else {
        return Ok("ACTIVE".to_owned());
    };
    let status = scope.string(value, at)?.to_ascii_uppercase();
    match status.as_str() {
        "ACTIVE" | "INACTIVE" => Ok(status),
        _ => Err(TemplateError::evaluation(
            at,
            format!("`{status}` is not ACTIVE or INACTIVE"),
        )),
    }
}

fn policy_plan(
    scope: &Scope<'_>,
    name: Option<&Value>,
    document: Option<&Value>,
    at: &str,
) -> Result<PolicyPlan, TemplateError> {
    let name_at = format!("{at}.PolicyName");
    let name = name
        .map(|name| policy_name(scope, name, &name_at))
        .transpose()?;
    let Some(document) = document else {
        return Ok(PolicyPlan::Named(
            name.expect("invariant: parse requires a name or a document"),
        ));
    };
    let document = policy_document(scope, document, &format!("{at}.PolicyDocument"))?;
    let name = name.unwrap_or_else(|| sha256_hex(&document));
    Ok(PolicyPlan::Document { name, document })
}

/// Policy names follow `^[\w+=,.@-]{1,128}$`.
fn policy_name(scope: &Scope<'_>, value: &Value, at: &str) -> Result<String, TemplateError> {
    let name = scope.string(value, at)?;
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c);
    match (1..=128).contains(&name.len()) && name.chars().all(valid_char) {
        true => Ok(name),
        false => Err(TemplateError::evaluation(
            at,
            format!("`{name}` is not a valid policy name"),
        )),
    }
}

/// The document as text (an object is written as compact JSON with sorted keys, so its
/// hash name does not depend on key order), validated by the policy
/// engine so a bad document fails provisioning rather than every later connection.
fn policy_document(scope: &Scope<'_>, value: &Value, at: &str) -> Result<String, TemplateError> {
    let document = match scope.evaluate(value, at)? {
        Value::String(text) => text,
        object @ Value::Object(_) => sorted_keys(object).to_string(),
        _ => {
            return Err(TemplateError::evaluation(
                at,
                "must be a policy object or string",
            ));
        }
    };
    PolicyDocument::parse(&document)
        .map_err(|error| TemplateError::evaluation(at, error.to_string()))?;
    Ok(document)
}

/// Rebuilds objects with their keys in sorted order, so that the text is
/// the same whether or not serde_json keeps insertion order (its
/// `preserve_order` feature, which a dependency's feature can turn on).
fn sorted_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, sorted_keys(value)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted_keys).collect()),
        other => other,
    }
}

fn sha256_hex(document: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, document.as_bytes());
    digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
