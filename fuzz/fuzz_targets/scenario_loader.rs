//! Fuzzes the scenario loader with arbitrary text: every input is either a scenario or a
//! refusal of the form `file:line:column: field: reason`, never a panic. The first input
//! byte picks a prefix (none, or a valid minimal scenario) so that the fuzzer also reaches
//! the checks behind a well-formed file.
#![no_main]

use std::path::Path;

use fleetsim::scenario::{Scenario, ScenarioError};
use libfuzzer_sys::fuzz_target;

const MINIMAL: &str =
    "name: small\nfleet:\n  size: 10\narrival:\n  rate: 5/s\nrun:\n  duration: 10s\n";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let text = match selector % 2 {
        0 => rest.to_owned(),
        _ => format!("{MINIMAL}{rest}"),
    };
    match Scenario::parse(&text, Path::new("fuzz.yaml")) {
        Ok(_) => {}
        Err(ScenarioError::Invalid { line, column, .. }) => assert!(line >= 1 && column >= 1),
        Err(ScenarioError::Read { .. }) => unreachable!("parse reads no file"),
    }
});
