//! What a run against AWS is about to create and roughly what it costs,
//! printed before it starts so nobody is surprised by the bill.
//!
//! Prices are AWS IoT Core's public list prices for US East (N. Virginia),
//! as published on <https://aws.amazon.com/iot-core/pricing/> (the values
//! in force through 2024; this machine has no internet, so they were not
//! re-read when this was written on 2026-12-04): connectivity USD 0.08 per
//! million connection-minutes, messaging USD 1.00 per million messages
//! (first billion a month; metered in 5 KB units, CONNECT and SUBSCRIBE
//! count as messages), registry operations USD 1.25 per million (1 KB
//! units). The free tier, CloudWatch, data transfer and other regions'
//! prices are left out; the estimate is an upper bound for one run.

use crate::scenario::Scenario;

/// USD per connection-minute (0.08 per million).
pub const CONNECTIVITY_PER_MINUTE: f64 = 0.08 / 1e6;
/// USD per 5 KB message (1.00 per million).
pub const MESSAGING_PER_MESSAGE: f64 = 1.00 / 1e6;
/// USD per registry operation (1.25 per million).
pub const REGISTRY_PER_OPERATION: f64 = 1.25 / 1e6;
/// The size AWS meters messages in.
const MESSAGE_UNIT_BYTES: u64 = 5 * 1024;
/// Messages metered for one provisioning or rotation: the claim CONNECT and
/// SUBSCRIBE, the two requests and their two answers, then the device's
/// own CONNECT and SUBSCRIBE, plus one for the second SUBSCRIBE.
const MESSAGES_PER_PROVISIONING: u64 = 8;
/// Registry operations Fleet Provisioning performs per device (CreateThing,
/// AttachThingPrincipal), and the ones cleanup does (ListThingPrincipals).
const REGISTRY_PER_DEVICE: u64 = 3;

/// What one run is expected to create and use on AWS.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEstimate {
    pub things: u64,
    pub certificates: u64,
    pub rotations: u64,
    pub connection_minutes: u64,
    pub provisioning_messages: u64,
    pub telemetry_messages: u64,
    pub registry_operations: u64,
}

impl RunEstimate {
    /// The upper bound for `scenario`: every device connected for the whole
    /// run and rotating as often as its simulated validity allows.
    pub fn of(scenario: &Scenario) -> RunEstimate {
        let devices = scenario.fleet.size;
        let seconds = scenario.run.duration.as_secs().max(1);
        let rotations = devices * rotations_per_device(scenario, seconds);
        let telemetry = if scenario.telemetry.enabled {
            let sends = seconds * 1000 / scenario.telemetry.interval.as_millis().max(1) as u64;
            let units = (scenario.telemetry.payload_bytes as u64).div_ceil(MESSAGE_UNIT_BYTES);
            devices * sends * units.max(1)
        } else {
            0
        };
        RunEstimate {
            things: devices,
            certificates: devices + rotations,
            rotations,
            connection_minutes: devices * seconds.div_ceil(60),
            provisioning_messages: (devices + rotations) * MESSAGES_PER_PROVISIONING,
            telemetry_messages: telemetry,
            registry_operations: devices * REGISTRY_PER_DEVICE + rotations * 2,
        }
    }

    pub fn messages(&self) -> u64 {
        self.provisioning_messages + self.telemetry_messages
    }

    /// The list-price cost in USD.
    pub fn cost_usd(&self) -> f64 {
        self.connection_minutes as f64 * CONNECTIVITY_PER_MINUTE
            + self.messages() as f64 * MESSAGING_PER_MESSAGE
            + self.registry_operations as f64 * REGISTRY_PER_OPERATION
    }

    /// The text shown before the run asks for confirmation.
    pub fn render(&self) -> String {
        format!(
            "  things created:        {}\n\
             \x20 certificates issued:   {} ({} by rotation)\n\
             \x20 connection-minutes:    {}\n\
             \x20 messages (5 KB units): {} ({} provisioning and rotation, {} telemetry)\n\
             \x20 registry operations:   {}\n\
             estimated AWS IoT Core cost: USD {:.4} (us-east-1 list prices, no free tier; an upper bound)",
            self.things,
            self.certificates,
            self.rotations,
            self.connection_minutes,
            self.messages(),
            self.provisioning_messages,
            self.telemetry_messages,
            self.registry_operations,
            self.cost_usd(),
        )
    }
}

/// How many times a device can rotate in `seconds` of real time.
fn rotations_per_device(scenario: &Scenario, seconds: u64) -> u64 {
    if !scenario.rotation.enabled {
        return 0;
    }
    let validity = scenario.to_real(scenario.certificates.validity);
    let renew_before = scenario.to_real(scenario.rotation.renew_before);
    let period = validity.saturating_sub(renew_before).as_secs().max(1);
    seconds / period
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_devices_for_an_hour_cost_what_the_list_prices_say() {
        let estimate = RunEstimate {
            things: 1000,
            certificates: 1000,
            rotations: 0,
            connection_minutes: 60_000,
            provisioning_messages: 8_000,
            telemetry_messages: 3_600_000,
            registry_operations: 3_000,
        };
        // 60k minutes * 0.08/M + 3.608M messages * 1/M + 3k ops * 1.25/M
        let expected = 0.0048 + 3.608 + 0.00375;
        assert!((estimate.cost_usd() - expected).abs() < 1e-9);
    }
}
