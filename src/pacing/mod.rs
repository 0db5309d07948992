//! Rate limits per API and action, on both sides of the wire: the fleet
//! paces itself ([`Pacer`]) so that a run against AWS stays inside the
//! account's quotas, and the emulator enforces the same [`Quotas`]
//! ([`Buckets::try_take`]) so that throttling is testable offline.
//!
//! Each limit is a GCRA token bucket (a "theoretical arrival time" per
//! bucket) on tokio time, allowing a burst of one second's worth.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

/// Requests per second for each paced action; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quotas {
    /// CONNECT requests per second, fleet-wide (AWS: 500 per account).
    pub connect: Option<f64>,
    /// CONNECT requests per second for one client id (AWS: 1).
    pub connect_per_client_id: Option<f64>,
    /// Fleet Provisioning MQTT CreateCertificateFromCsr and
    /// CreateKeysAndCertificate, each its own bucket.
    pub create_certificate: Option<f64>,
    /// Fleet Provisioning MQTT RegisterThing.
    pub register_thing: Option<f64>,
    /// Every control-plane API, each its own bucket at this rate.
    pub control_plane: Option<f64>,
}

/// The names `fleetsim emulator --quota NAME=RATE` accepts.
pub const QUOTA_NAMES: &[&str] = &[
    "connect",
    "connect_per_client_id",
    "create_certificate",
    "register_thing",
    "control_plane",
];

impl Quotas {
    /// AWS's published default quotas (aws-iot-facts §5): 500 connects per
    /// second per account, 1 per client id, and 10 TPS for the Fleet
    /// Provisioning MQTT APIs (AWS publishes quota codes, not values, for
    /// those; 10 is the RegisterThing rate users report) and for the
    /// control-plane APIs a run calls (UpdateCertificate, DescribeCertificate
    /// and ListThingPrincipals are 10; the detach calls 15).
    pub fn aws_defaults() -> Quotas {
        Quotas {
            connect: Some(500.0),
            connect_per_client_id: Some(1.0),
            create_certificate: Some(10.0),
            register_thing: Some(10.0),
            control_plane: Some(10.0),
        }
    }

    /// Sets one quota from `NAME=RATE` (RATE per second, `0` for unlimited).
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (name, rate) = assignment
            .split_once('=')
            .ok_or_else(|| format!("{assignment:?}: expected NAME=RATE"))?;
        let rate: f64 = rate
            .trim_end_matches("/s")
            .parse()
            .ok()
            .filter(|r: &f64| r.is_finite() && *r >= 0.0)
            .ok_or_else(|| format!("{assignment:?}: {rate} is not a rate per second"))?;
        let value = (rate > 0.0).then_some(rate);
        let slot = match name {
            "connect" => &mut self.connect,
            "connect_per_client_id" => &mut self.connect_per_client_id,
            "create_certificate" => &mut self.create_certificate,
            "register_thing" => &mut self.register_thing,
            "control_plane" => &mut self.control_plane,
            other => {
                return Err(format!(
                    "{other:?} is not a quota; use one of {}",
                    QUOTA_NAMES.join(", ")
                ));
            }
        };
        *slot = value;
        Ok(())
    }
}

impl std::fmt::Display for Quotas {
    /// `connect 500/s, connect_per_client_id 1/s, ...`, or `none`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rates = [
            self.connect,
            self.connect_per_client_id,
            self.create_certificate,
            self.register_thing,
            self.control_plane,
        ];
        let set: Vec<String> = QUOTA_NAMES
            .iter()
            .zip(rates)
            .filter_map(|(name, rate)| rate.map(|r| format!("{name} {r}/s")))
            .collect();
        match set.is_empty() {
            true => f.write_str("none"),
            false => f.write_str(&set.join(", ")),
        }
    }
}

/// One token bucket.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    /// How far ahead of the steady rate a burst may run.
    tolerance: Duration,
    /// When the bucket would be empty again at the steady rate.
    theoretical_arrival: Mutex<Instant>,
}

impl RateLimit {
    /// `rate` requests per second, bursts of up to one second's worth.
    pub fn per_second(rate: f64) -> RateLimit {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let burst = rate.ceil().max(1.0) as u32;
        RateLimit {
            interval,
            tolerance: interval * (burst - 1),
            theoretical_arrival: Mutex::new(Instant::now()),
        }
    }

    /// Waits until a request may go.
    pub async fn acquire(&self) {
        let at = self.reserve();
        if at > Instant::now() {
            sleep_until(at).await;
        }
    }

    /// Takes a token if one is there now; `false` means throttled.
    pub fn try_acquire(&self) -> bool {
        let now = Instant::now();
        let mut tat = self.lock();
        if earliest(*tat, self.tolerance) > now {
            return false;
        }
        *tat = (*tat).max(now) + self.interval;
        true
    }

    /// Books the next slot and says when it is.
    fn reserve(&self) -> Instant {
        let now = Instant::now();
        let mut tat = self.lock();
        let at = earliest(*tat, self.tolerance).max(now);
        *tat = (*tat).max(now) + self.interval;
        at
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        // A panic while holding this lock leaves a valid instant behind.
        self.theoretical_arrival
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn earliest(tat: Instant, tolerance: Duration) -> Instant {
    tat.checked_sub(tolerance).unwrap_or(tat)
}

/// A bucket per name (API or client id), all at the same rate, made on
/// first use.
#[derive(Debug)]
pub struct Buckets {
    rate: Option<f64>,
    by_name: Mutex<HashMap<String, std::sync::Arc<RateLimit>>>,
}

impl Buckets {
    pub fn new(rate: Option<f64>) -> Buckets {
        Buckets {
            rate,
            by_name: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for `name`'s bucket; returns at once when unlimited.
    pub async fn take(&self, name: &str) {
        if let Some(bucket) = self.bucket(name) {
            bucket.acquire().await;
        }
    }

    /// Whether `name` may go now (always, when unlimited).
    pub fn try_take(&self, name: &str) -> bool {
        self.bucket(name).is_none_or(|bucket| bucket.try_acquire())
    }

    fn bucket(&self, name: &str) -> Option<std::sync::Arc<RateLimit>> {
        let rate = self.rate?;
        let mut by_name = self
            .by_name
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = by_name
            .entry(name.to_owned())
            .or_insert_with(|| std::sync::Arc::new(RateLimit::per_second(rate)));
        Some(std::sync::Arc::clone(bucket))
    }
}

/// The fleet's own pacing, shared by every device and the control plane.
#[derive(Debug)]
pub struct Pacer {
    connect: Buckets,
    per_client_id: Buckets,
    create_certificate: Buckets,
    register_thing: Buckets,
    control_plane: Buckets,
}

impl Pacer {
    pub fn new(quotas: &Quotas) -> Pacer {
        Pacer {
            connect: Buckets::new(quotas.connect),
            per_client_id: Buckets::new(quotas.connect_per_client_id),
            create_certificate: Buckets::new(quotas.create_certificate),
            register_thing: Buckets::new(quotas.register_thing),
            control_plane: Buckets::new(quotas.control_plane),
        }
    }

    /// No pacing at all (the local target without a `pacing` section).
    pub fn off() -> Pacer {
        Pacer::new(&Quotas::default())
    }

    /// Before a CONNECT as `client_id`.
    pub async fn connect(&self, client_id: &str) {
        self.per_client_id.take(client_id).await;
        self.connect.take("connect").await;
    }

    /// Before a CreateCertificateFromCsr or CreateKeysAndCertificate request.
    pub async fn create_certificate(&self, api: &str) {
        self.create_certificate.take(api).await;
    }

    /// Before a RegisterThing request.
    pub async fn register_thing(&self) {
        self.register_thing.take("register_thing").await;
    }

    /// Before a control-plane call of `operation`.
    pub async fn control_plane(&self, operation: &str) {
        self.control_plane.take(operation).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_lets_a_burst_through_then_holds_the_steady_rate() {
        let limit = RateLimit::per_second(4.0);
        let start = Instant::now();
        for _ in 0..4 {
            limit.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..4 {
            limit.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_refuses_beyond_the_burst_until_time_passes() {
        let limit = RateLimit::per_second(2.0);
        assert!(limit.try_acquire() && limit.try_acquire());
        assert!(!limit.try_acquire());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(limit.try_acquire());
    }

    #[test]
    fn quotas_print_as_names_and_rates() {
        assert_eq!(Quotas::default().to_string(), "none");
        let quotas = Quotas {
            register_thing: Some(10.0),
            ..Quotas::default()
        };
        assert_eq!(quotas.to_string(), "register_thing 10/s");
    }

    #[test]
    fn quotas_are_set_by_name_and_bad_names_or_rates_are_refused() {
        let mut quotas = Quotas::default();
        quotas.set("register_thing=2").unwrap();
        quotas.set("connect=0").unwrap();
        assert_eq!(quotas.register_thing, Some(2.0));
        assert_eq!(quotas.connect, None);
        assert!(quotas.set("publish=3").unwrap_err().contains("not a quota"));
        assert!(quotas.set("connect=-1").unwrap_err().contains("not a rate"));
        assert!(quotas.set("connect").unwrap_err().contains("NAME=RATE"));
    }
}
