//! Reading the located YAML tree section by section: each lookup knows its
//! dotted field path and position, so every refusal (missing, unknown,
//! wrongly typed or out of range) names the field and points at its line.

use std::time::Duration;

use super::tree::{Key, Node, Pos, Value};
use super::values;

/// Why a scenario was refused, before the file path is attached.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Problem {
    pub at: Pos,
    pub field: String,
    pub reason: String,
}

/// Where a value came from: its dotted path, its position, and whether the
/// user wrote it (a defaulted value points at its enclosing section).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Site {
    pub field: String,
    pub at: Pos,
    pub written: bool,
}

impl Site {
    pub(crate) fn problem(&self, reason: impl Into<String>) -> Problem {
        Problem {
            at: self.at,
            field: self.field.clone(),
            reason: reason.into(),
        }
    }
}

/// A mapping of known fields at one dotted path.
pub(crate) struct Section<'a> {
    path: String,
    at: Pos,
    entries: &'a [(Key, Node)],
}

/// The value of one field, with the path and position to blame.
pub(crate) struct Field<'a> {
    pub site: Site,
    pub node: &'a Node,
}

impl<'a> Section<'a> {
    /// Opens `node` as a section accepting only `accepted` fields; an absent or
    /// empty value counts as an empty section. `at` is where to point for a
    /// field left out: the section's key, or its parent's if it has none.
    pub(crate) fn open(
        node: Option<&'a Node>,
        path: &str,
        at: Pos,
        accepted: &[&str],
    ) -> Result<Section<'a>, Problem> {
        let section = match node.map(|n| &n.value) {
            None | Some(Value::Null) => Section::of(path, at, &[]),
            Some(Value::Map(entries)) => Section::of(path, at, entries),
            Some(other) => return Err(not_a_mapping(path, node.map_or(at, |n| n.at), other)),
        };
        section.reject_unknown(accepted)?;
        Ok(section)
    }

    fn of(path: &str, at: Pos, entries: &'a [(Key, Node)]) -> Section<'a> {
        Section {
            path: path.to_owned(),
            at,
            entries,
        }
    }

    /// The position of the section itself, for refusals about the whole of it.
    pub(crate) fn at(&self) -> Pos {
        self.at
    }

    fn reject_unknown(&self, accepted: &[&str]) -> Result<(), Problem> {
        let unknown = self
            .entries
            .iter()
            .map(|(key, _)| key)
            .find(|key| !accepted.contains(&key.name.as_str()));
        match unknown {
            Some(key) => Err(unknown_field(&self.child_path(&key.name), key, accepted)),
            None => Ok(()),
        }
    }

    fn child_path(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The field if it was written; an explicit `null` counts as written, so it is refused.
    pub(crate) fn get(&self, name: &str) -> Option<Field<'a>> {
        let (_, node) = self.entries.iter().find(|(key, _)| key.name == name)?;
        Some(Field {
            site: Site {
                field: self.child_path(name),
                at: node.at,
                written: true,
            },
            node,
        })
    }

    pub(crate) fn require(&self, name: &str) -> Result<Field<'a>, Problem> {
        self.get(name)
            .ok_or_else(|| self.default_site(name).problem("required field is missing"))
    }

    /// Where to point for a field that was left out.
    pub(crate) fn default_site(&self, name: &str) -> Site {
        Site {
            field: self.child_path(name),
            at: self.at,
            written: false,
        }
    }

    /// Where a field's key is written, if it is.
    pub(crate) fn key_at(&self, name: &str) -> Option<Pos> {
        self.entries
            .iter()
            .find(|(key, _)| key.name == name)
            .map(|(key, _)| key.at)
    }

    /// The raw node of a field, for nested sections and lists.
    pub(crate) fn node(&self, name: &str) -> Option<&'a Node> {
        self.get(name).map(|field| field.node)
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.child_path(name)
    }
}

impl Field<'_> {
    pub(crate) fn problem(&self, reason: impl Into<String>) -> Problem {
        self.site.problem(reason)
    }

    fn wrong_type(&self, expected: &str) -> Problem {
        self.problem(format!(
            "expected {expected}, found {}",
            self.node.value.describe()
        ))
    }

    pub(crate) fn text(&self) -> Result<&str, Problem> {
        match &self.node.value {
            Value::Str(text) => Ok(text),
            _ => Err(self.wrong_type("text")),
        }
    }

    pub(crate) fn boolean(&self) -> Result<bool, Problem> {
        match self.node.value {
            Value::Bool(b) => Ok(b),
            _ => Err(self.wrong_type("true or false")),
        }
    }

    /// A whole number within `min..=max`.
    pub(crate) fn integer(&self, min: i128, max: i128) -> Result<i128, Problem> {
        let Value::Int(n) = self.node.value else {
            return Err(self.wrong_type("a whole number"));
        };
        if !(min..=max).contains(&n) {
            return Err(self.problem(format!("{n} is out of range; must be {min} to {max}")));
        }
        Ok(n)
    }

    /// Any finite number, whole or decimal.
    pub(crate) fn number(&self) -> Result<f64, Problem> {
        match self.node.value {
            Value::Int(n) => Ok(n as f64),
            Value::Float(x) if x.is_finite() => Ok(x),
            _ => Err(self.wrong_type("a number")),
        }
    }

    /// A duration in the scenario syntax; a bare number is told to add a unit.
    pub(crate) fn duration(&self) -> Result<Duration, Problem> {
        let text = self.unit_text("a duration such as 30s")?;
        values::parse_duration(&text).map_err(|reason| self.problem(reason))
    }

    /// A duration that must be above zero.
    pub(crate) fn positive_duration(&self) -> Result<Duration, Problem> {
        let duration = self.duration()?;
        if duration.is_zero() {
            return Err(self.problem("must be above zero"));
        }
        Ok(duration)
    }

    pub(crate) fn rate(&self) -> Result<super::Rate, Problem> {
        let text = self.unit_text("a rate such as 50/s")?;
        values::parse_rate(&text).map_err(|reason| self.problem(reason))
    }

    /// Text of a value that needs a unit; a YAML number is passed through as
    /// text so that the unit parser explains what is missing.
    fn unit_text(&self, expected: &str) -> Result<String, Problem> {
        match &self.node.value {
            Value::Str(text) => Ok(text.clone()),
            Value::Int(n) => Ok(n.to_string()),
            Value::Float(x) => Ok(x.to_string()),
            _ => Err(self.wrong_type(expected)),
        }
    }

    /// One of a fixed set of words.
    pub(crate) fn choice<T: Copy>(&self, options: &[(&str, T)]) -> Result<T, Problem> {
        let text = self.text()?;
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        options
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, value)| *value)
            .ok_or_else(|| self.problem(format!("`{text}` is not one of: {}", names.join(", "))))
    }
}

fn not_a_mapping(path: &str, at: Pos, found: &Value) -> Problem {
    let field = if path.is_empty() {
        super::TOP_LEVEL
    } else {
        path
    };
    Problem {
        at,
        field: field.to_owned(),
        reason: format!("expected a mapping of fields, found {}", found.describe()),
    }
}

fn unknown_field(path: &str, key: &Key, accepted: &[&str]) -> Problem {
    let hint = closest(&key.name, accepted)
        .map(|name| format!("did you mean `{name}`? "))
        .unwrap_or_default();
    Problem {
        at: key.at,
        field: path.to_owned(),
        reason: format!(
            "unknown field; {hint}accepted fields: {}",
            accepted.join(", ")
        ),
    }
}

/// The accepted name within two edits of a misspelling, if any.
fn closest<'n>(name: &str, accepted: &[&'n str]) -> Option<&'n str> {
    accepted
        .iter()
        .map(|candidate| (edit_distance(name, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("size", "size"), 0);
        assert_eq!(edit_distance("sise", "size"), 1);
        assert_eq!(edit_distance("siz", "size"), 1);
        assert_eq!(edit_distance("renew_befor", "renew_before"), 1);
        assert_eq!(edit_distance("abc", "xyz"), 3);
    }

    #[test]
    fn closest_suggests_only_near_names() {
        assert_eq!(closest("sise", &["size", "serial_pattern"]), Some("size"));
        assert_eq!(closest("colour", &["size", "serial_pattern"]), None);
    }
}
