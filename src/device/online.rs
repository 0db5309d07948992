//! A device online as itself: connecting with its own certificate (with
//! backoff), the telemetry schedule and the certificate checks that may
//! start a rotation, until the run stops or the connection is lost.

use std::time::{Duration, SystemTime};

use tokio::time::{Instant, sleep_until};

use super::faults::{next_storm, random_drop};
use super::mqtt::{Session, SessionError};
use super::task::{Device, Ending, GaveUp};
use crate::identity::Credentials;
use crate::observe::faults::FaultKind;
use crate::observe::{DeviceState, FailureReason, Op};

impl Device {
    /// Connects with the device's own certificate, retrying with backoff;
    /// `None` when the run ended first.
    pub(super) async fn connect_as_thing(&mut self) -> Result<Option<Session>, GaveUp> {
        let mut attempt = 0;
        loop {
            let due = Instant::now();
            let stop = self.ctx.stop.clone();
            let attempt_result = tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                result = self.open_session(self.current.clone()) => result,
            };
            match attempt_result {
                Ok(session) => {
                    self.succeeded(Op::Connect, due.elapsed(), || self.connected_detail());
                    self.enter(DeviceState::Online);
                    return Ok(Some(session));
                }
                Err(error) => {
                    attempt += 1;
                    self.back_off(Op::Connect, attempt, error).await?;
                }
            }
        }
    }

    /// Opens and subscribes a session as the thing with `credentials`: a
    /// SUBACK is the proof that the identity works.
    pub(super) async fn open_session(
        &self,
        credentials: Option<Credentials>,
    ) -> Result<Session, SessionError> {
        let credentials = credentials
            .ok_or_else(|| SessionError::new(FailureReason::Storage, "device has no identity"))?;
        let tls = self
            .ctx
            .tls
            .client_config(&credentials)
            .map_err(|e| SessionError::new(FailureReason::Protocol, e.to_string()))?;
        self.ctx.pacer.connect(&self.thing).await;
        let mut session = Session::connect(&self.ctx.connect, &self.thing, tls).await?;
        let mut filters = self.reply_filters().to_vec();
        filters.push(format!("fleetsim/{}/commands", self.thing));
        session.subscribe(&filters).await?;
        Ok(session)
    }

    /// Telemetry and rotation checks until the run stops or the connection
    /// is lost.
    pub(super) async fn online(&mut self, session: &mut Session) -> Result<Ending, GaveUp> {
        let mut next_publish = self.first_publish();
        let mut next_check = self.next_check();
        let mut sequence = 0u64;
        let stop = self.ctx.stop.clone();
        let storm = next_storm(&self.ctx.faults, Instant::now());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(Ending::Stopped),
                _ = sleep_until(storm.unwrap_or_else(far_future)), if storm.is_some() => {
                    self.ctx.faults.log.injected(FaultKind::ReconnectStorm);
                    session.sever();
                    return Ok(Ending::Lost(SessionError::new(
                        FailureReason::Connection,
                        "dropped with the whole fleet (injected fault)",
                    )));
                }
                _ = sleep_until(next_publish.unwrap_or_else(far_future)), if next_publish.is_some() => {
                    let due = next_publish.expect("guarded by the select condition");
                    sequence += 1;
                    if let Err(error) = self.publish_telemetry(session, due, sequence).await {
                        return Ok(Ending::Lost(error));
                    }
                    if random_drop(&self.ctx.faults, &mut self.rng) {
                        session.sever();
                    }
                    next_publish = self.ctx.telemetry.as_ref().map(|t| due + t.interval);
                }
                _ = sleep_until(next_check.unwrap_or_else(far_future)), if next_check.is_some() => {
                    let due = next_check.expect("guarded by the select condition");
                    if let Some(ending) = self.check_certificate(session, due).await? {
                        return Ok(ending);
                    }
                    next_check = self.next_check();
                }
            }
            if let Some(error) = session.closed_reason() {
                return Ok(Ending::Lost(error));
            }
        }
    }

    /// Spreads the fleet's first messages over one interval.
    pub(super) fn first_publish(&mut self) -> Option<Instant> {
        let interval = self.ctx.telemetry.as_ref()?.interval;
        Some(Instant::now() + interval.mul_f64(rand::Rng::random_range(&mut self.rng, 0.0..1.0)))
    }

    pub(super) fn next_check(&mut self) -> Option<Instant> {
        let schedule = self.ctx.rotation?;
        Some(schedule.next_check(Instant::now(), &mut self.rng))
    }

    pub(super) async fn publish_telemetry(
        &mut self,
        session: &mut Session,
        due: Instant,
        sequence: u64,
    ) -> Result<(), SessionError> {
        let telemetry = self
            .ctx
            .telemetry
            .as_ref()
            .expect("only called when telemetry is on");
        let topic = format!("fleetsim/{}/{}", self.thing, telemetry.topic);
        let payload = telemetry_payload(&self.serial, sequence, telemetry.payload_bytes);
        match session.publish(&topic, telemetry.qos, payload).await {
            Ok(()) => {
                self.ctx.recorder.record(Op::Publish, due.elapsed());
                Ok(())
            }
            Err(error) => {
                self.failed(Op::Publish, &error);
                Err(error)
            }
        }
    }

    pub(super) fn connected_detail(&self) -> String {
        format!(
            "TLS with the device certificate, CONNACK accepted for client id {}, subscribed",
            self.thing
        )
    }
}

/// A JSON message of exactly `size` bytes (or the minimal message, if
/// `size` is smaller than that).
fn telemetry_payload(serial: &str, sequence: u64, size: usize) -> Vec<u8> {
    let stamp = crate::identity::unix_seconds(SystemTime::now());
    let head = format!(r#"{{"serial":"{serial}","seq":{sequence},"ts":{stamp},"pad":""#);
    let tail = "\"}";
    let padding = size.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(head.len() + padding + tail.len());
    body.push_str(&head);
    body.extend(std::iter::repeat_n('x', padding));
    body.push_str(tail);
    body.into_bytes()
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_payload_is_json_of_the_requested_size() {
        let payload = telemetry_payload("SN-1", 7, 256);
        assert_eq!(payload.len(), 256);
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(value["serial"], "SN-1");
        assert_eq!(value["seq"], 7);
        assert!(
            telemetry_payload("SN-1", 7, 1).len() > 1,
            "never truncates the message"
        );
    }
}
