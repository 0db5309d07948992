//! What the dashboard tests share: the shipped files, the queries the
//! dashboards send, a small reader of PromQL selectors and of the exposition
//! format, and the external tools (`promtool`, `prometheus`) they run.
//!
//! The PromQL reader only needs what the shipped queries use: metric names,
//! label matchers and grouping clauses; Prometheus itself checks the rest.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

pub fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every shipped dashboard, by file name.
pub fn dashboards() -> Vec<(String, Value)> {
    let dir = dashboards_dir().join("grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "the fleet and emulator dashboards ship");
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let json =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                json,
            )
        })
        .collect()
}

/// One query a panel sends.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub dashboard: String,
    pub panel: String,
    pub expr: String,
}

pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

pub fn panel_queries() -> Vec<PanelQuery> {
    let mut queries = Vec::new();
    for (file, dashboard) in dashboards() {
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                queries.push(PanelQuery {
                    dashboard: file.clone(),
                    panel: panel["title"].as_str().unwrap().to_owned(),
                    expr: target["expr"].as_str().unwrap().to_owned(),
                });
            }
        }
    }
    queries
}

/// The query as Grafana would send it for one run and every operation.
pub fn for_run(expr: &str, run: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$run", run)
        .replace("$op", ".+")
}

/// One `metric{label op "value", ...}` in a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<(String, String, String)>,
}

/// Selectors and grouping labels (`by`, `on`, ...) of a PromQL expression.
#[derive(Debug, Default)]
pub struct Parsed {
    pub selectors: Vec<Selector>,
    pub grouping: BTreeSet<String>,
}

const FUNCTIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "rate",
    "irate",
    "increase",
    "delta",
    "deriv",
    "histogram_quantile",
    "abs",
    "clamp_min",
    "clamp_max",
    "vector",
    "scalar",
    "absent",
    "round",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATORS: &[&str] = &["and", "or", "unless", "bool", "offset"];

pub fn parse(expr: &str) -> Parsed {
    let chars: Vec<char> = expr.chars().collect();
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i = skip_string(&chars, i);
        } else if c == '[' {
            i = chars[i..]
                .iter()
                .position(|&c| c == ']')
                .map_or(chars.len(), |p| i + p + 1);
        } else if c.is_ascii_digit() || c == '.' {
            i += chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '.')
                .count();
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            i = identifier(&chars, i, &mut parsed);
        } else {
            i += 1;
        }
    }
    parsed
}

fn identifier(chars: &[char], start: usize, parsed: &mut Parsed) -> usize {
    let len = chars[start..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == '_' || **c == ':')
        .count();
    let name: String = chars[start..start + len].iter().collect();
    let mut i = start + len;
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    if GROUPING.contains(&name.as_str()) {
        let end = i + chars[i..].iter().position(|&c| c == ')').unwrap();
        let list: String = chars[i + 1..end].iter().collect();
        parsed.grouping.extend(
            list.split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
        return end + 1;
    }
    if FUNCTIONS.contains(&name.as_str()) || OPERATORS.contains(&name.as_str()) {
        return i;
    }
    let mut selector = Selector {
        metric: name,
        matchers: Vec::new(),
    };
    if chars.get(i) == Some(&'{') {
        let end = i + chars[i..].iter().position(|&c| c == '}').unwrap();
        selector.matchers = matchers(&chars[i + 1..end].iter().collect::<String>());
        i = end + 1;
    }
    parsed.selectors.push(selector);
    i
}

fn skip_string(chars: &[char], start: usize) -> usize {
    let mut i = start + 1;
    while i < chars.len() && chars[i] != '"' {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

fn matchers(body: &str) -> Vec<(String, String, String)> {
    body.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| {
            let at = m.find(['=', '!']).unwrap();
            let op_len = if m[at + 1..].starts_with(['=', '~']) {
                2
            } else {
                1
            };
            let value = m[at + op_len..].trim().trim_matches('"');
            (
                m[..at].trim().to_owned(),
                m[at..at + op_len].to_owned(),
                value.to_owned(),
            )
        })
        .collect()
}

/// The series of an exposition text: metric name to each series' labels.
pub type Series = BTreeMap<String, Vec<BTreeMap<String, String>>>;

pub fn exposition_series(text: &str) -> Series {
    let mut series = Series::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name_end = line.find(['{', ' ']).unwrap();
        let labels = if line[name_end..].starts_with('{') {
            let end = line.rfind('}').unwrap();
            exposition_labels(&line[name_end + 1..end])
        } else {
            BTreeMap::new()
        };
        series
            .entry(line[..name_end].to_owned())
            .or_default()
            .push(labels);
    }
    series
}

fn exposition_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_owned();
        let after = &rest[eq + 2..];
        let end = after.find('"').unwrap();
        labels.insert(key, after[..end].to_owned());
        rest = &after[end + 1..];
    }
    labels
}

/// Runs a tool that the tests need; a missing tool fails the test loudly.
pub fn tool(name: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(name)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("`{name}` is needed (Debian package `prometheus`; .ci/run installs it): {e}")
        });
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
