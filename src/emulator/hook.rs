//! Pre-provisioning hooks: the Lambda contract of AWS Fleet Provisioning,
//! served locally. RegisterThing sends the documented event
//! (`claimCertificateId`, `certificateId`, `certificatePem`, `templateArn`,
//! `clientId`, `parameters`) and reads `allowProvisioning` and
//! `parameterOverrides` back; anything else (a refusal, a timeout after
//! 5 s, a crash, output that is not that answer) denies with 403.
//!
//! A template names its hook as AWS does, by a Lambda ARN in
//! `preProvisioningHook.targetArn`; the function name in that ARN
//! (`arn:aws:lambda:<region>:<account>:function:<name>[:<qualifier>]`) picks a
//! hook registered with the emulator under that name. A hook is either
//! built-in rules or a local command that reads the event as JSON on stdin
//! and prints the answer as JSON on stdout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// AWS's limit on a pre-provisioning Lambda.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// The most a command hook may print; more is a failure, not an answer.
pub const MAX_OUTPUT_BYTES: u64 = 64 * 1024;

/// The event a hook receives, with AWS's key names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookEvent {
    pub claim_certificate_id: String,
    pub certificate_id: String,
    pub certificate_pem: String,
    pub template_arn: String,
    pub client_id: String,
    pub parameters: BTreeMap<String, String>,
}

/// A hook's answer. Only `allowProvisioning: true` lets provisioning go on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookAnswer {
    pub allow_provisioning: bool,
    #[serde(default)]
    pub parameter_overrides: BTreeMap<String, String>,
}

/// A hook registered with the emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    Rules(HookRules),
    Command(CommandHook),
}

/// Built-in rules on one request parameter (the serial number by default):
/// a denied value is refused; otherwise, with an allow pattern, only values
/// matching it (`*` any run of characters, `?` one character) pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRules {
    pub parameter: String,
    pub allow_pattern: Option<String>,
    pub deny: BTreeSet<String>,
    /// Added to the request's parameters when the device is allowed.
    pub parameter_overrides: BTreeMap<String, String>,
}

impl Default for HookRules {
    fn default() -> Self {
        HookRules {
            parameter: "SerialNumber".to_owned(),
            allow_pattern: None,
            deny: BTreeSet::new(),
            parameter_overrides: BTreeMap::new(),
        }
    }
}

/// A local program run once per request, with the event on stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandHook {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Why a hook did not allow provisioning; every kind denies with 403.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook target {0} is not a lambda function ARN")]
    BadTarget(String),
    #[error("no hook named {0} is registered with the emulator")]
    Unknown(String),
    #[error("hook denied provisioning")]
    Denied,
    #[error("hook did not answer within {0:?}")]
    Timeout(Duration),
    #[error("hook command could not run: {0}")]
    Spawn(std::io::Error),
    #[error("hook command failed: {0}")]
    Failed(String),
    #[error("hook answer is not valid: {0}")]
    BadAnswer(String),
}

/// Hooks by function name; shared by the emulator and whoever configures it.
#[derive(Debug)]
pub struct HookRegistry {
    hooks: RwLock<HashMap<String, Hook>>,
    timeout: Duration,
}

impl Default for HookRegistry {
    fn default() -> Self {
        HookRegistry::new(HOOK_TIMEOUT)
    }
}

impl HookRegistry {
    /// A registry whose hooks must answer within `timeout` (AWS: 5 s).
    pub fn new(timeout: Duration) -> HookRegistry {
        HookRegistry {
            hooks: RwLock::new(HashMap::new()),
            timeout,
        }
    }

    /// Registers (or replaces) the hook that ARNs naming `function` reach.
    pub fn register(&self, function: &str, hook: Hook) {
        let mut hooks = self.hooks.write().unwrap_or_else(|p| p.into_inner());
        hooks.insert(function.to_owned(), hook);
    }

    fn get(&self, function: &str) -> Option<Hook> {
        let hooks = self.hooks.read().unwrap_or_else(|p| p.into_inner());
        hooks.get(function).cloned()
    }

    /// Runs the hook `target_arn` names and returns the parameter overrides
    /// of an allowing answer.
    pub async fn invoke(
        &self,
        target_arn: &str,
        event: &HookEvent,
    ) -> Result<BTreeMap<String, String>, HookError> {
        let function = function_name(target_arn)?;
        let hook = self
            .get(function)
            .ok_or_else(|| HookError::Unknown(function.to_owned()))?;
        let answer = match &hook {
            Hook::Rules(rules) => Ok(rules.answer(event)),
            Hook::Command(command) => tokio::time::timeout(self.timeout, command.run(event))
                .await
                .map_err(|_| HookError::Timeout(self.timeout))?,
        }?;
        match answer.allow_provisioning {
            true => Ok(answer.parameter_overrides),
            false => Err(HookError::Denied),
        }
    }
}

/// `arn:aws:lambda:<region>:<account>:function:<name>[:<qualifier>]` → `<name>`.
pub fn function_name(target_arn: &str) -> Result<&str, HookError> {
    let bad = || HookError::BadTarget(target_arn.to_owned());
    let parts: Vec<&str> = target_arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "lambda", _, _, "function", name]
        | ["arn", _, "lambda", _, _, "function", name, _]
            if !name.is_empty() =>
        {
            Ok(name)
        }
        _ => Err(bad()),
    }
}

impl HookRules {
    fn answer(&self, event: &HookEvent) -> HookAnswer {
        let value = event.parameters.get(&self.parameter).map(String::as_str);
        let allowed = match value {
            None => false,
            Some(value) if self.deny.contains(value) => false,
            Some(value) => self
                .allow_pattern
                .as_deref()
                .is_none_or(|pattern| glob_matches(pattern, value)),
        };
        HookAnswer {
            allow_provisioning: allowed,
            parameter_overrides: self.parameter_overrides.clone(),
        }
    }
}

impl CommandHook {
    /// Spawns the program, writes the event, reads at most
    /// [`MAX_OUTPUT_BYTES`] of answer. The child is killed when the caller's
    /// deadline drops this future.
    async fn run(&self, event: &HookEvent) -> Result<HookAnswer, HookError> {
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(HookError::Spawn)?;
        let input = serde_json::to_vec(event).expect("invariant: hook events are plain maps");
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that exits without reading its input may still answer.
            let _ = stdin.write_all(&input).await;
        }
        let mut output = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            stdout
                .take(MAX_OUTPUT_BYTES + 1)
                .read_to_end(&mut output)
                .await
                .map_err(|e| HookError::Failed(e.to_string()))?;
        }
        if output.len() as u64 > MAX_OUTPUT_BYTES {
            return Err(HookError::BadAnswer(format!(
                "output over {MAX_OUTPUT_BYTES} bytes"
            )));
        }
        let status = child
            .wait()
            .await
            .map_err(|e| HookError::Failed(e.to_string()))?;
        if !status.success() {
            return Err(HookError::Failed(format!("exited with {status}")));
        }
        serde_json::from_slice(&output).map_err(|e| HookError::BadAnswer(e.to_string()))
    }
}

/// `*` matches any run of characters, `?` exactly one; everything else is literal.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    p = star + 1;
                    t = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(serial: &str) -> HookEvent {
        HookEvent {
            claim_certificate_id: "c".into(),
            certificate_id: "n".into(),
            certificate_pem: "p".into(),
            template_arn: "arn:aws:iot:us-east-1:1:provisioningtemplate/t".into(),
            client_id: "provision-1".into(),
            parameters: [("SerialNumber".to_owned(), serial.to_owned())].into(),
        }
    }

    #[test]
    fn globs_match_runs_and_single_characters() {
        assert!(glob_matches("sim-*", "sim-000001"));
        assert!(glob_matches("a?c", "abc"));
        assert!(glob_matches("*-1*", "x-x-1"));
        assert!(!glob_matches("sim-*", "bad-1"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("*", ""));
    }

    #[test]
    fn function_names_come_from_lambda_arns_only() {
        let arn = "arn:aws:lambda:us-east-1:123456789012:function:allow-sim";
        assert_eq!(function_name(arn).unwrap(), "allow-sim");
        assert_eq!(function_name(&format!("{arn}:live")).unwrap(), "allow-sim");
        assert!(function_name("arn:aws:iam::1:role/x").is_err());
        assert!(function_name("allow-sim").is_err());
    }

    #[test]
    fn rules_deny_listed_serials_and_serials_outside_the_pattern() {
        let rules = HookRules {
            allow_pattern: Some("sim-*".into()),
            deny: ["sim-13".to_owned()].into(),
            ..HookRules::default()
        };
        assert!(rules.answer(&event("sim-1")).allow_provisioning);
        assert!(!rules.answer(&event("sim-13")).allow_provisioning);
        assert!(!rules.answer(&event("other-1")).allow_provisioning);
    }

    #[test]
    fn events_and_answers_use_the_lambda_key_names() {
        let json = serde_json::to_value(event("s")).unwrap();
        for key in [
            "claimCertificateId",
            "certificateId",
            "certificatePem",
            "templateArn",
            "clientId",
            "parameters",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        let answer: HookAnswer =
            serde_json::from_str(r#"{"allowProvisioning":true,"parameterOverrides":{"a":"b"}}"#)
                .unwrap();
        assert!(answer.allow_provisioning);
        assert_eq!(answer.parameter_overrides["a"], "b");
    }
}
