//! Provisioning templates: parsing and evaluation into a plan of registry
//! changes (placeholder interface; the evaluator is being written).

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Template {
    pub body: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

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
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertificatePlan {
    pub certificate_id: String,
    /// `ACTIVE` or `INACTIVE`, as written in the template.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PolicyPlan {
    Named(String),
    Document { name: String, document: String },
}

impl Template {
    pub fn parse(body: &str) -> Result<Template, TemplateError> {
        serde_json::from_str(body)
            .map(|body| Template { body })
            .map_err(|e| TemplateError(e.to_string()))
    }

    /// Evaluates the template with the request's parameters (which include
    /// `AWS::IoT::Certificate::Id`).
    pub fn evaluate(&self, parameters: &BTreeMap<String, String>) -> Result<Plan, TemplateError> {
        let _ = parameters;
        Err(TemplateError("template evaluation is not built yet".into()))
    }
}
