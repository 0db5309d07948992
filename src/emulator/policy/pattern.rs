//! Resource and condition patterns of IoT policies: `*`/`?` globs with policy variables.
//! `*` crosses `/` and MQTT's `+`/`#` are plain characters, because IoT compares topic names
//! and topic filters as strings rather than as topic trees.

use super::RequestContext;

/// A policy variable, resolved per request from the connection's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Variable {
    ClientId,
    ThingName,
    ThingTypeName,
    IsAttached,
    /// `iot:Connection.Thing.Attributes[<name>]`; attribute names are case-sensitive.
    ThingAttribute(Box<str>),
    /// `iot:Certificate.<key>`, with the key lowercased and the `.N` / `.List` suffix apart.
    Certificate {
        key: Box<str>,
        index: Index,
    },
    /// Multi-valued: `PersistentConnect`, `LastWill`.
    ConnectAttributes,
    LastWillTopic,
    /// A documented IoT variable the emulator cannot resolve (source IP, available keys).
    /// It is accepted so real policies parse, and stays unresolved.
    Unsupported,
}

/// Which values of a multi-valued certificate attribute a variable names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Index {
    /// The plain name, or `.N`: AWS's `.1` is the second value, so this is zero-based.
    Nth(usize),
    List,
}

impl Variable {
    /// Whether resolving this variable reads the client certificate's fields.
    pub(super) fn reads_certificate(&self) -> bool {
        matches!(self, Variable::Certificate { .. })
    }

    pub(super) fn from_name(name: &str) -> Option<Variable> {
        let lower = name.to_ascii_lowercase();
        let variable = match lower.as_str() {
            "iot:clientid" => Variable::ClientId,
            "iot:connection.thing.thingname" => Variable::ThingName,
            "iot:connection.thing.thingtypename" => Variable::ThingTypeName,
            "iot:connection.thing.isattached" => Variable::IsAttached,
            "iot:connectattributes" => Variable::ConnectAttributes,
            "iot:lastwilltopic" => Variable::LastWillTopic,
            "aws:sourceip" | "iot:certificate.availablekeys" => Variable::Unsupported,
            _ => return thing_attribute(name).or_else(|| certificate_variable(&lower)),
        };
        Some(variable)
    }

    /// The variable's single value for this request; `None` when it does not resolve or
    /// names a list.
    pub(super) fn resolve<'a>(&self, context: &RequestContext<'a>) -> Option<&'a str> {
        match self {
            Variable::ClientId => Some(context.client_id),
            Variable::ThingName => context.thing_name,
            Variable::ThingTypeName => context.thing_name.and(context.thing_type_name),
            Variable::IsAttached if context.thing_name.is_some() => Some("true"),
            Variable::IsAttached => Some("false"),
            Variable::ThingAttribute(name) => context
                .thing_name
                .and(context.thing_attributes)?
                .get(name.as_ref())
                .map(String::as_str),
            Variable::Certificate {
                key,
                index: Index::Nth(n),
            } => context.certificate?.value(key, *n),
            Variable::LastWillTopic => context.last_will_topic,
            Variable::Certificate { .. } | Variable::ConnectAttributes | Variable::Unsupported => {
                None
            }
        }
    }

    /// Every value of the variable (one, for single-valued variables); `None` when it does
    /// not resolve.
    pub(super) fn values<'a>(&self, context: &RequestContext<'a>) -> Option<Vec<&'a str>> {
        match self {
            Variable::ConnectAttributes => Some(context.connect_attributes.to_vec()),
            Variable::Certificate {
                key,
                index: Index::List,
            } => context.certificate?.list(key),
            single => single.resolve(context).map(|value| vec![value]),
        }
    }

    /// Whether the variable only ever holds `true` or `false`.
    pub(super) fn is_boolean(&self) -> bool {
        *self == Variable::IsAttached
    }
}

fn thing_attribute(name: &str) -> Option<Variable> {
    const PREFIX: &str = "iot:connection.thing.attributes[";
    let head = name.get(..PREFIX.len())?;
    let attribute = name[PREFIX.len()..].strip_suffix(']')?;
    let valid = head.eq_ignore_ascii_case(PREFIX) && !attribute.is_empty();
    valid.then(|| Variable::ThingAttribute(attribute.into()))
}

/// `iot:Certificate.Subject.CommonName`, `….CommonName.1`, `….CommonName.List`,
/// `iot:Certificate.Issuer.*`, `iot:Certificate.Subject.AlternativeName.*`,
/// `iot:Certificate.SerialNumber`.
fn certificate_variable(lower: &str) -> Option<Variable> {
    let rest = lower.strip_prefix("iot:certificate.")?;
    let (key, index) = match rest.rsplit_once('.') {
        Some((key, "list")) => (key, Index::List),
        Some((key, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (key, Index::Nth(n.parse().ok()?))
        }
        _ => (rest, Index::Nth(0)),
    };
    is_certificate_key(key).then(|| Variable::Certificate {
        key: key.into(),
        index,
    })
}

fn is_certificate_key(key: &str) -> bool {
    const ATTRIBUTES: [&str; 13] = [
        "commonname",
        "surname",
        "serialnumber",
        "country",
        "state",
        "organization",
        "organizationalunit",
        "title",
        "givenname",
        "initials",
        "generationqualifier",
        "distinguishednamequalifier",
        "pseudonym",
    ];
    const ALT_NAMES: [&str; 5] = [
        "rfc822name",
        "dnsname",
        "directoryname",
        "uniformresourceidentifier",
        "ipaddress",
    ];
    if key == "serialnumber" {
        return true;
    }
    let Some((part, attribute)) = key.split_once('.') else {
        return false;
    };
    let is_part = part == "subject" || part == "issuer";
    match attribute.strip_prefix("alternativename.") {
        Some(kind) => is_part && ALT_NAMES.contains(&kind),
        None => is_part && ATTRIBUTES.contains(&attribute),
    }
}

/// Whether `*` and `?` are wildcards (resources, `StringLike`) or plain characters
/// (`StringEquals`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wildcards {
    Glob,
    Literal,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    AnyOne,
    AnySequence,
    Variable(Variable),
}

/// A compiled pattern: literal text, wildcards and variables.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pattern {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum PatternError {
    #[error("`${{` without a closing `}}`")]
    UnclosedVariable,
    #[error("unknown policy variable `${{{0}}}`")]
    UnknownVariable(String),
}

/// The escapes IoT documents for literal wildcard characters; IAM spells them `${*}`.
const ESCAPES: [(&str, char); 3] = [("$(*)", '*'), ("$(?)", '?'), ("$($)", '$')];

impl Pattern {
    pub(super) fn reads_certificate(&self) -> bool {
        self.pieces
            .iter()
            .any(|piece| matches!(piece, Piece::Variable(v) if v.reads_certificate()))
    }

    pub(super) fn parse(text: &str, wildcards: Wildcards) -> Result<Pattern, PatternError> {
        let mut pattern = Pattern { pieces: Vec::new() };
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("${") {
                let end = after.find('}').ok_or(PatternError::UnclosedVariable)?;
                pattern.push_braced(&after[..end])?;
                rest = &after[end + 1..];
            } else if let Some((escape, literal)) = ESCAPES.iter().find(|e| rest.starts_with(e.0)) {
                pattern.push_char(*literal);
                rest = &rest[escape.len()..];
            } else {
                pattern.push_plain(c, wildcards);
                rest = &rest[c.len_utf8()..];
            }
        }
        Ok(pattern)
    }

    fn push_braced(&mut self, name: &str) -> Result<(), PatternError> {
        if let [literal @ (b'*' | b'?' | b'$')] = name.as_bytes() {
            self.push_char(char::from(*literal));
            return Ok(());
        }
        let variable = Variable::from_name(name)
            .ok_or_else(|| PatternError::UnknownVariable(name.to_owned()))?;
        self.pieces.push(Piece::Variable(variable));
        Ok(())
    }

    fn push_plain(&mut self, c: char, wildcards: Wildcards) {
        match (c, wildcards) {
            ('*', Wildcards::Glob) => {
                if self.pieces.last() != Some(&Piece::AnySequence) {
                    self.pieces.push(Piece::AnySequence);
                }
            }
            ('?', Wildcards::Glob) => self.pieces.push(Piece::AnyOne),
            _ => self.push_char(c),
        }
    }

    fn push_char(&mut self, c: char) {
        match self.pieces.last_mut() {
            Some(Piece::Text(text)) => text.push(c),
            _ => self.pieces.push(Piece::Text(c.to_string())),
        }
    }

    /// Whether the pattern matches all of `text`; `None` when one of its variables does not
    /// resolve for this request (the caller decides what that means for its effect).
    pub(super) fn matches(&self, text: &str, context: &RequestContext<'_>) -> Option<bool> {
        let resolved = self.pieces.iter().all(|piece| match piece {
            Piece::Variable(variable) => variable.resolve(context).is_some(),
            _ => true,
        });
        resolved.then(|| self.matches_resolved(text, context))
    }

    /// Glob matching by backtracking to the last `*` only: the text between two stars is
    /// matched at its leftmost position, which is always as good as any later one.
    fn matches_resolved(&self, text: &str, context: &RequestContext<'_>) -> bool {
        let (mut piece, mut at) = (0, 0);
        let mut last_star: Option<(usize, usize)> = None;
        loop {
            match self.step(piece, &text[at..], context) {
                Step::Star => {
                    last_star = Some((piece + 1, at));
                    piece += 1;
                }
                Step::Advance(consumed) => {
                    piece += 1;
                    at += consumed;
                }
                Step::End if at == text.len() => return true,
                Step::End | Step::Mismatch => {
                    let Some((after_star, star_at)) = last_star else {
                        return false;
                    };
                    let Some(skipped) = text[star_at..].chars().next() else {
                        return false;
                    };
                    last_star = Some((after_star, star_at + skipped.len_utf8()));
                    (piece, at) = (after_star, star_at + skipped.len_utf8());
                }
            }
        }
    }

    fn step(&self, piece: usize, rest: &str, context: &RequestContext<'_>) -> Step {
        let literal = |text: &str| match rest.starts_with(text) {
            true => Step::Advance(text.len()),
            false => Step::Mismatch,
        };
        match self.pieces.get(piece) {
            None => Step::End,
            Some(Piece::AnySequence) => Step::Star,
            Some(Piece::AnyOne) => rest
                .chars()
                .next()
                .map_or(Step::Mismatch, |c| Step::Advance(c.len_utf8())),
            Some(Piece::Text(text)) => literal(text),
            Some(Piece::Variable(variable)) => {
                variable.resolve(context).map_or(Step::Mismatch, literal)
            }
        }
    }
}

enum Step {
    Star,
    Advance(usize),
    End,
    Mismatch,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CONTEXT: RequestContext<'static> = RequestContext {
        thing_name: Some("thing-1"),
        ..RequestContext::new("dev+1", "c0ffee")
    };

    fn glob(pattern: &str, text: &str) -> bool {
        let pattern = Pattern::parse(pattern, Wildcards::Glob).expect("test pattern parses");
        pattern
            .matches(text, &CONTEXT)
            .expect("test pattern resolves")
    }

    /// A plainly recursive matcher over characters, slow but obviously right.
    fn reference(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|skip| reference(rest, &text[skip..])),
            Some(('?', rest)) => !text.is_empty() && reference(rest, &text[1..]),
            Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    /// Writes `text` so that the pattern parser reads every character literally.
    fn escaped(text: &str) -> String {
        text.chars()
            .map(|c| match c {
                '*' | '?' | '$' => format!("$({c})"),
                c => c.to_string(),
            })
            .collect()
    }

    #[test]
    fn star_crosses_topic_levels() {
        assert!(glob("topic/a/*", "topic/a/b/c/d"));
        assert!(glob("topic/*/end", "topic/x/y/end"));
        assert!(!glob("topic/a/*", "topic/b/c"));
    }

    #[test]
    fn star_matches_the_empty_string() {
        assert!(glob("topic/a/*", "topic/a/"));
        assert!(!glob("topic/a/*", "topic/a"));
    }

    #[test]
    fn question_mark_matches_exactly_one_character() {
        assert!(glob("a?c", "abc"));
        assert!(glob("a?c", "a/c"));
        assert!(glob("a?c", "aéc"));
        assert!(!glob("a?c", "ac"));
        assert!(!glob("a?c", "abbc"));
    }

    #[test]
    fn mqtt_wildcards_are_literal_characters() {
        assert!(glob("a/+/c", "a/+/c"));
        assert!(!glob("a/+/c", "a/b/c"));
        assert!(glob("a/#", "a/#"));
        assert!(!glob("a/#", "a/b"));
    }

    #[test]
    fn escapes_stand_for_literal_wildcard_characters() {
        assert!(glob("a$(*)b", "a*b"));
        assert!(!glob("a$(*)b", "axb"));
        assert!(glob("a$(?)b", "a?b"));
        assert!(!glob("a$(?)b", "axb"));
        assert!(glob("$($)aws", "$aws"));
        assert!(glob("a${*}b", "a*b"));
    }

    #[test]
    fn a_dollar_outside_an_escape_is_literal() {
        assert!(glob("topic/$aws/things/*", "topic/$aws/things/x"));
    }

    #[test]
    fn substituted_values_are_literal_even_with_wildcard_characters() {
        assert!(glob("client/${iot:ClientId}", "client/dev+1"));
        assert!(!glob("client/${iot:ClientId}", "client/dev+2"));
        assert!(glob(
            "t/${iot:Connection.Thing.ThingName}/*",
            "t/thing-1/x/y"
        ));
        assert!(glob("${iot:Connection.Thing.IsAttached}", "true"));
    }

    #[test]
    fn an_unresolved_variable_leaves_the_match_undecided() {
        let pattern = Pattern::parse("t/${iot:Connection.Thing.ThingName}", Wildcards::Glob)
            .expect("test pattern parses");
        let detached = RequestContext {
            thing_name: None,
            ..CONTEXT
        };
        assert_eq!(pattern.matches("t/thing-1", &detached), None);
    }

    #[test]
    fn literal_patterns_do_not_treat_stars_as_wildcards() {
        let pattern = Pattern::parse("a*", Wildcards::Literal).expect("test pattern parses");
        assert_eq!(pattern.matches("a*", &CONTEXT), Some(true));
        assert_eq!(pattern.matches("ab", &CONTEXT), Some(false));
    }

    #[test]
    fn unknown_variables_and_unclosed_braces_are_refused() {
        assert_eq!(
            Pattern::parse("${iot:ClientID2}", Wildcards::Glob),
            Err(PatternError::UnknownVariable("iot:ClientID2".into()))
        );
        assert_eq!(
            Pattern::parse("a/${iot:ClientId", Wildcards::Glob),
            Err(PatternError::UnclosedVariable)
        );
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_reference_matcher(
            pattern in "[ab/+#*?]{0,10}",
            text in "[ab/+#*?]{0,12}",
        ) {
            let chars = |s: &str| s.chars().collect::<Vec<_>>();
            prop_assert_eq!(glob(&pattern, &text), reference(&chars(&pattern), &chars(&text)));
        }

        #[test]
        fn an_escaped_string_matches_itself_and_nothing_else(
            literal in "[a/+#*?$()]{0,12}",
            other in "[a/+#*?$()]{0,12}",
        ) {
            let pattern = escaped(&literal);
            prop_assert!(glob(&pattern, &literal));
            prop_assert_eq!(glob(&pattern, &other), other == literal);
        }

        #[test]
        fn a_prefix_followed_by_star_matches_every_extension(
            prefix in "[a-z/+#]{0,8}",
            suffix in "\\PC{0,12}",
        ) {
            let pattern = format!("{}*", escaped(&prefix));
            let text = format!("{prefix}{suffix}");
            prop_assert!(glob(&pattern, &text));
        }

        #[test]
        fn question_marks_match_exactly_their_count_of_characters(
            count in 0usize..6,
            text in "\\PC{0,8}",
        ) {
            let pattern = "?".repeat(count);
            prop_assert_eq!(glob(&pattern, &text), text.chars().count() == count);
        }
    }
}
