//! Fuzzes the IoT policy parser with arbitrary text, and evaluates every document it accepts
//! against one request, so the evaluator sees whatever the parser lets through.
#![no_main]

use std::sync::Arc;

use fleetsim::emulator::policy::{Action, PolicyDocument, RequestContext, decide};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(document) = PolicyDocument::parse(text) else {
        return;
    };
    let policies = [Arc::new(document)];
    let context = RequestContext {
        thing_name: Some("dev-1"),
        connect_attributes: &["PersistentConnect"],
        last_will_topic: Some("wills/dev-1"),
        ..RequestContext::new("dev-1", "c0ffee")
    };
    let resource = "arn:aws:iot:us-east-1:123456789012:topic/dt/dev-1/x";
    for action in [Action::Connect, Action::Publish, Action::Subscribe, Action::Receive] {
        decide(&policies, action, resource, &context);
    }
});
