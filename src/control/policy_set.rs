//! The repository's policy and template files, rendered for one account.
//!
//! The files under `policies/` are the same documents `setup` sends to AWS
//! and the emulator evaluates; they carry `{{name}}` placeholders (region,
//! account, template, device policy) filled in here. AWS's own `${...}`
//! policy variables are left alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::ControlError;

pub const CLAIM_POLICY_FILE: &str = "claim-policy.json";
pub const DEVICE_POLICY_FILE: &str = "device-policy.json";
pub const PROVISIONING_TEMPLATE_FILE: &str = "provisioning-template.json";

const BUILTIN_CLAIM_POLICY: &str = include_str!("../../policies/claim-policy.json");
const BUILTIN_DEVICE_POLICY: &str = include_str!("../../policies/device-policy.json");
const BUILTIN_TEMPLATE: &str = include_str!("../../policies/provisioning-template.json");

/// The three documents `setup` creates, placeholders filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySet {
    pub claim_policy: String,
    pub device_policy: String,
    pub provisioning_template: String,
}

impl PolicySet {
    /// Reads and renders the three files in `dir`. A missing file, an
    /// unknown or unclosed placeholder, or a result that is not JSON is an
    /// error naming the file.
    pub fn load(dir: &Path, vars: &BTreeMap<String, String>) -> Result<PolicySet, ControlError> {
        Ok(PolicySet {
            claim_policy: load_file(&dir.join(CLAIM_POLICY_FILE), vars)?,
            device_policy: load_file(&dir.join(DEVICE_POLICY_FILE), vars)?,
            provisioning_template: load_file(&dir.join(PROVISIONING_TEMPLATE_FILE), vars)?,
        })
    }

    /// The repository's files as compiled into this binary, for runs that
    /// name no policy directory.
    pub fn builtin(vars: &BTreeMap<String, String>) -> Result<PolicySet, ControlError> {
        let builtin =
            |file: &str, text: &str| render_file(&Path::new("builtin").join(file), text, vars);
        Ok(PolicySet {
            claim_policy: builtin(CLAIM_POLICY_FILE, BUILTIN_CLAIM_POLICY)?,
            device_policy: builtin(DEVICE_POLICY_FILE, BUILTIN_DEVICE_POLICY)?,
            provisioning_template: builtin(PROVISIONING_TEMPLATE_FILE, BUILTIN_TEMPLATE)?,
        })
    }
}

fn load_file(path: &Path, vars: &BTreeMap<String, String>) -> Result<String, ControlError> {
    let text = std::fs::read_to_string(path).map_err(|e| ControlError::PolicyFile {
        path: PathBuf::from(path),
        reason: format!("cannot be read: {e}"),
    })?;
    render_file(path, &text, vars)
}

fn render_file(
    path: &Path,
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, ControlError> {
    let fault = |reason: String| ControlError::PolicyFile {
        path: PathBuf::from(path),
        reason,
    };
    let rendered = render(text, vars).map_err(fault)?;
    serde_json::from_str::<serde_json::Value>(&rendered)
        .map_err(|e| fault(format!("is not valid JSON once rendered: {e}")))?;
    Ok(rendered)
}

/// Replaces every `{{name}}` in `text` with its value from `vars`.
pub fn render(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        output.push_str(&rest[..open]);
        let after_open = &rest[open + 2..];
        let close = after_open.find("}}").ok_or_else(|| {
            format!(
                "placeholder opened at byte {} is never closed",
                text.len() - rest.len() + open
            )
        })?;
        let name = after_open[..close].trim();
        let value = vars
            .get(name)
            .ok_or_else(|| format!("unknown placeholder {{{{{name}}}}}; known: {}", known(vars)))?;
        output.push_str(value);
        rest = &after_open[close + 2..];
    }
    output.push_str(rest);
    Ok(output)
}

fn known(vars: &BTreeMap<String, String>) -> String {
    vars.keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("region".to_owned(), "eu-west-1".to_owned()),
            ("account".to_owned(), "123456789012".to_owned()),
        ])
    }

    #[test]
    fn placeholders_are_replaced_and_policy_variables_kept() {
        let text = r#"arn:aws:iot:{{region}}:{{ account }}:client/${iot:ClientId}"#;

        let rendered = render(text, &vars());

        assert_eq!(
            rendered.as_deref(),
            Ok("arn:aws:iot:eu-west-1:123456789012:client/${iot:ClientId}")
        );
    }

    #[test]
    fn an_unknown_placeholder_is_named() {
        let error = render("{{regoin}}", &vars()).unwrap_err();

        assert!(error.contains("{{regoin}}"), "{error}");
    }

    #[test]
    fn an_unclosed_placeholder_is_refused() {
        assert!(render("abc {{region", &vars()).is_err());
    }

    #[test]
    fn a_builtin_file_with_an_unset_placeholder_is_named() {
        let error = PolicySet::builtin(&vars()).unwrap_err();

        let message = error.to_string();
        assert!(message.contains("builtin/claim-policy.json"), "{message}");
        assert!(message.contains("{{template}}"), "{message}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");

        let error = PolicySet::load(dir.path(), &vars()).unwrap_err();

        assert!(error.to_string().contains(CLAIM_POLICY_FILE), "{error}");
    }
}
