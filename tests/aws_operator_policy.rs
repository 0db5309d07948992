//! `policies/fleetsim-operator-iam.json`, the IAM policy the README tells
//! operators to attach, grants every AWS call setup, run and cleanup make:
//! each call's operation name is read from the source, where every SDK
//! call names its operation for its error message.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `iot:<Operation>` and `iam:<Operation>` for every call the code makes.
fn called_actions() -> BTreeSet<String> {
    let markers = [
        ("from_sdk(\"", "iot"),
        ("retry_conflicts(control, \"", "iot"),
        ("OPERATION: &str = \"", "iot"),
        ("iam_error(\"", "iam"),
    ];
    let mut actions = BTreeSet::new();
    for dir in ["src/control", "src/target"] {
        for entry in std::fs::read_dir(Path::new(ROOT).join(dir)).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for (marker, service) in markers {
                for rest in text.split(marker).skip(1) {
                    let name: String = rest.chars().take_while(|c| *c != '"').collect();
                    actions.insert(format!("{service}:{name}"));
                }
            }
        }
    }
    actions
}

fn granted_actions() -> BTreeSet<String> {
    let path = Path::new(ROOT).join("policies/fleetsim-operator-iam.json");
    let policy: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut granted = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow");
        match &statement["Action"] {
            Value::String(action) => _ = granted.insert(action.clone()),
            Value::Array(list) => granted.extend(list.iter().map(|a| a.as_str().unwrap().into())),
            other => panic!("Action is neither a string nor a list: {other}"),
        }
    }
    granted
}

#[test]
fn the_operator_policy_grants_every_call_setup_run_and_cleanup_make() {
    let called = called_actions();
    let granted = granted_actions();

    assert!(
        called.len() > 20,
        "the source scan found too little: {called:?}"
    );
    let missing: Vec<_> = called.difference(&granted).collect();
    assert!(missing.is_empty(), "not granted: {missing:?}");
    for needed in ["iam:PassRole", "iam:TagRole"] {
        assert!(granted.contains(needed), "{needed}");
    }
}
