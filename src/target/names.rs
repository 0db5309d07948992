//! The prefix every resource of a target carries, and the names derived
//! from it: `<prefix>-claim` and `<prefix>-device` (policies),
//! `<prefix>-fleet` (template), `<prefix>-provisioning` (IAM role) and
//! `<prefix>-<serial>` (things).

use super::TargetError;

pub const DEFAULT_PREFIX: &str = "fleetsim";

/// Room left in AWS's tightest limit: template names of at most 36
/// characters, and the longest suffix is `-provisioning` on a role (64).
const MAX_PREFIX_LEN: usize = 24;

/// A checked resource prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    pub fn new(text: &str) -> Result<Prefix, TargetError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if text.is_empty() || text.len() > MAX_PREFIX_LEN || !text.chars().all(allowed) {
            return Err(TargetError::Invalid(format!(
                "prefix {text:?}: must be 1 to {MAX_PREFIX_LEN} letters, digits, `_` or `-` \
                 (it starts every policy, template, role and thing name)"
            )));
        }
        Ok(Prefix(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn claim_policy(&self) -> String {
        format!("{}-claim", self.0)
    }

    pub fn device_policy(&self) -> String {
        format!("{}-device", self.0)
    }

    pub fn template(&self) -> String {
        format!("{}-fleet", self.0)
    }

    pub fn role(&self) -> String {
        format!("{}-provisioning", self.0)
    }

    /// Whether a thing is one a run created under this prefix.
    pub fn owns_thing(&self, thing: &str) -> bool {
        thing
            .strip_prefix(self.0.as_str())
            .is_some_and(|rest| rest.starts_with('-'))
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_owns_only_things_named_with_it_and_a_dash() {
        let prefix = Prefix::new("load").unwrap();
        assert!(prefix.owns_thing("load-0001"));
        assert!(!prefix.owns_thing("loadtest-0001"));
        assert!(!prefix.owns_thing("load"));
    }

    #[test]
    fn prefixes_that_would_break_aws_names_are_refused() {
        for bad in ["", "has space", "a/b", &"x".repeat(25)] {
            let error = Prefix::new(bad).unwrap_err().to_string();
            assert!(error.contains("prefix"), "{error}");
        }
    }
}
