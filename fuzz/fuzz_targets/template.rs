//! Fuzzes the provisioning template renderer: any body must parse or be
//! refused without panicking, and a parsed template must evaluate (or refuse)
//! any request parameters without panicking.

#![no_main]

use std::collections::BTreeMap;

use fleetsim::emulator::template::Template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first line is the template body; the rest are `name=value` parameters.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (body, rest) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(template) = Template::parse(body) else {
        return;
    };
    let parameters: BTreeMap<String, String> = rest
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let _ = template.evaluate(&parameters);
});
