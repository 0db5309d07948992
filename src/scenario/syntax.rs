//! Turning serde-saphyr's own errors (bad YAML syntax, duplicate keys) into
//! scenario problems. serde-saphyr reports a line and column but not which
//! field was being read, so the field path is recovered by replaying the
//! parser's event stream up to the error's position.

use std::borrow::Cow;

use serde_saphyr::granit_parser::{Event, Parser, Span};
use serde_saphyr::{MessageFormatter, UserMessageFormatter};

use super::fields::Problem;
use super::tree::Pos;

/// The problem for a YAML error, located and named as precisely as the parser allows.
pub(crate) fn problem(text: &str, error: &serde_saphyr::Error) -> Problem {
    let at = error
        .location()
        .map_or(Pos { line: 1, column: 1 }, |location| Pos {
            line: location.line() as usize,
            column: location.column() as usize,
        });
    Problem {
        at,
        field: field_path_at(text, at),
        reason: message(error),
    }
}

/// serde-saphyr's user-facing wording, without its "at line X, column Y" suffix
/// and flattened to one line.
fn message(error: &serde_saphyr::Error) -> String {
    let mut inner = error.without_snippet();
    if let serde_saphyr::Error::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let text = UserMessageFormatter.format_message(inner);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("invalid YAML: {text}")
}

/// One open collection while replaying events.
enum Frame {
    /// `key` is set between a key and the end of its value.
    Map {
        key: Option<String>,
    },
    Seq {
        index: usize,
    },
}

/// The dotted path of the node being read at `at`, e.g. `rotation.jitter`.
pub(crate) fn field_path_at(text: &str, at: Pos) -> String {
    let mut stack: Vec<Frame> = Vec::new();
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else {
            break;
        };
        if starts_at_or_after(&span, at) {
            note_key(&mut stack, &event);
            break;
        }
        step(&mut stack, event);
    }
    render(&stack)
}

fn starts_at_or_after(span: &Span, at: Pos) -> bool {
    let start = Pos {
        line: span.start.line(),
        column: span.start.col() + 1,
    };
    start >= at
}

/// If the event at the error is a mapping key, it belongs in the path.
fn note_key(stack: &mut [Frame], event: &Event) {
    if let (Some(Frame::Map { key: key @ None }), Event::Scalar(name, ..)) =
        (stack.last_mut(), event)
    {
        *key = Some(name.to_string());
    }
}

fn step(stack: &mut Vec<Frame>, event: Event) {
    match event {
        Event::MappingStart(..) => open(stack, Frame::Map { key: None }),
        Event::SequenceStart(..) => open(stack, Frame::Seq { index: 0 }),
        Event::MappingEnd | Event::SequenceEnd => {
            stack.pop();
            value_done(stack);
        }
        Event::Scalar(name, ..) => scalar(stack, name),
        Event::Alias(..) => value_done(stack),
        _ => {}
    }
}

fn open(stack: &mut Vec<Frame>, frame: Frame) {
    if let Some(Frame::Map { key: key @ None }) = stack.last_mut() {
        // A collection used as a mapping key: give it a placeholder name.
        *key = Some("?".into());
    }
    stack.push(frame);
}

fn scalar(stack: &mut [Frame], name: Cow<str>) {
    match stack.last_mut() {
        Some(Frame::Map { key: key @ None }) => *key = Some(name.into_owned()),
        _ => value_done(stack),
    }
}

/// A complete value ends a map entry or moves a list to its next element.
fn value_done(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { key }) => *key = None,
        Some(Frame::Seq { index }) => *index += 1,
        None => {}
    }
}

fn render(stack: &[Frame]) -> String {
    let mut path = String::new();
    for frame in stack {
        match frame {
            Frame::Map { key: Some(key) } if path.is_empty() => path.push_str(key),
            Frame::Map { key: Some(key) } => {
                path.push('.');
                path.push_str(key);
            }
            Frame::Map { key: None } => break,
            Frame::Seq { index } => path.push_str(&format!("[{index}]")),
        }
    }
    if path.is_empty() {
        super::TOP_LEVEL.to_owned()
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_of(text: &str) -> Problem {
        let error = super::super::tree::parse(text).expect_err("text is invalid YAML");
        problem(text, &error)
    }

    #[test]
    fn an_unclosed_flow_list_names_the_field_it_belongs_to() {
        let problem = problem_of("fleet:\n  size: 5\narrival:\n  phases: [1, 2\n  rate: 3\n");
        assert!(problem.field.starts_with("arrival.phases"), "{problem:?}");
        assert!(problem.reason.starts_with("invalid YAML: "), "{problem:?}");
    }

    #[test]
    fn a_duplicate_key_names_that_key() {
        let problem = problem_of("fleet:\n  size: 5\n  size: 6\n");
        assert_eq!(problem.at, Pos { line: 3, column: 3 });
        assert_eq!(problem.field, "fleet.size");
    }

    #[test]
    fn a_bad_indent_at_top_level_is_named_top_level() {
        let problem = problem_of("name: a\n  target: b\n");
        assert_eq!(problem.at, Pos { line: 2, column: 9 });
        assert_eq!(problem.field, "(top level)");
        let problem = problem_of("[a, b\n");
        assert_eq!(
            (problem.at, problem.field.as_str()),
            (Pos { line: 1, column: 1 }, "(top level)")
        );
        assert_eq!(problem.reason, "invalid YAML: unclosed bracket '['");
    }
}
