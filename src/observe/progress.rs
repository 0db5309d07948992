//! The live view of a run: a progress bar of provisioned devices with online,
//! rotating and failed counts and rates when stdout is a terminal, otherwise
//! one `tracing` line every few seconds, so CI logs stay readable.
//!
//! It only reads [`Recorder::snapshot`]; device tasks never wait on it.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{DeviceState, Op, Recorder, Snapshot};

const TICK: Duration = Duration::from_millis(250);
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Rates shown on the bar are averaged over this window to keep them steady.
const BAR_RATE_WINDOW: Duration = Duration::from_secs(2);

/// A running display; stops when the run's token is cancelled or on [`finish`].
///
/// [`finish`]: Progress::finish
pub struct Progress {
    stop: CancellationToken,
    display: Arc<Display>,
    task: JoinHandle<()>,
}

/// The output, behind a lock so that the final draw in `finish` cannot
/// interleave with a tick still in flight on another thread.
struct Display {
    recorder: Arc<Recorder>,
    fleet_size: u64,
    sink: Mutex<Sink>,
}

struct Sink {
    bar: Option<ProgressBar>,
    rates: RateWindow,
    last_log: Option<Instant>,
    done: bool,
}

impl Progress {
    /// Starts the display on the current tokio runtime.
    pub fn start(recorder: Arc<Recorder>, fleet_size: u64, cancel: CancellationToken) -> Progress {
        let terminal = std::io::stdout().is_terminal();
        let display = Arc::new(Display {
            recorder,
            fleet_size,
            sink: Mutex::new(Sink::new(terminal.then(|| new_bar(fleet_size)))),
        });
        let stop = cancel.child_token();
        let task = tokio::spawn(tick(display.clone(), stop.clone()));
        Progress {
            stop,
            display,
            task,
        }
    }

    /// Stops the display after drawing the final counts once more.
    pub fn finish(self) {
        self.stop.cancel();
        self.task.abort();
        self.display.finish();
    }
}

async fn tick(display: Arc<Display>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = interval.tick() => display.update(),
        }
    }
}

impl Display {
    fn update(&self) {
        let snapshot = self.recorder.snapshot();
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        if !sink.done {
            sink.show(&snapshot, self.fleet_size, false);
        }
    }

    fn finish(&self) {
        let snapshot = self.recorder.snapshot();
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        if !sink.done {
            sink.show(&snapshot, self.fleet_size, true);
            sink.done = true;
            if let Some(bar) = &sink.bar {
                bar.finish();
            }
        }
    }
}

impl Sink {
    fn new(bar: Option<ProgressBar>) -> Sink {
        Sink {
            bar,
            rates: RateWindow::default(),
            last_log: None,
            done: false,
        }
    }

    fn show(&mut self, snapshot: &Snapshot, fleet_size: u64, last: bool) {
        let now = Instant::now();
        self.rates.push(now, snapshot);
        match &self.bar {
            Some(bar) => {
                self.rates.forget_before(now, BAR_RATE_WINDOW);
                bar.set_position(snapshot.provisioned());
                bar.set_message(bar_message(snapshot, &self.rates.per_second()));
            }
            None if last || self.log_due(now) => {
                log_line(snapshot, fleet_size, &self.rates.per_second());
                self.rates.keep_newest();
                self.last_log = Some(now);
            }
            None => {}
        }
    }

    fn log_due(&self, now: Instant) -> bool {
        self.last_log
            .is_none_or(|last| now.duration_since(last) >= LOG_EVERY)
    }
}

fn new_bar(fleet_size: u64) -> ProgressBar {
    let style =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} provisioned  {msg}")
            .expect("invariant: the constant progress template is valid")
            .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(fleet_size), ProgressDrawTarget::stdout()).with_style(style)
}

fn bar_message(snapshot: &Snapshot, rates: &Rates) -> String {
    format!(
        "online {} rotating {} failed {} | rotations {} | {:.1} prov/s {:.1} rot/s {:.1} msg/s",
        snapshot.devices(DeviceState::Online),
        snapshot.devices(DeviceState::Rotating),
        snapshot.devices(DeviceState::Failed),
        snapshot.rotations(),
        rates.provisioned,
        rates.rotations,
        rates.publishes,
    )
}

fn log_line(snapshot: &Snapshot, fleet_size: u64, rates: &Rates) {
    tracing::info!(
        provisioned = snapshot.provisioned(),
        fleet_size,
        online = snapshot.devices(DeviceState::Online),
        rotating = snapshot.devices(DeviceState::Rotating),
        offline = snapshot.devices(DeviceState::Offline),
        failed = snapshot.devices(DeviceState::Failed),
        rotations = snapshot.rotations(),
        failures = snapshot.failures(),
        provisioned_per_second = rates.provisioned,
        rotations_per_second = rates.rotations,
        publishes_per_second = rates.publishes,
        "fleet progress"
    );
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Rates {
    provisioned: f64,
    rotations: f64,
    publishes: f64,
}

/// Recent snapshots, so rates are differences over a window rather than
/// over a single jittery tick.
#[derive(Default)]
struct RateWindow {
    samples: VecDeque<(Instant, Snapshot)>,
}

impl RateWindow {
    fn push(&mut self, at: Instant, snapshot: &Snapshot) {
        self.samples.push_back((at, *snapshot));
    }

    /// Drops samples older than `window`, always keeping the newest two.
    fn forget_before(&mut self, now: Instant, window: Duration) {
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > window)
        {
            self.samples.pop_front();
        }
    }

    /// Makes the newest sample the start of the next window.
    fn keep_newest(&mut self) {
        let excess = self.samples.len().saturating_sub(1);
        self.samples.drain(..excess);
    }

    fn per_second(&self) -> Rates {
        let (Some((first_at, first)), Some((last_at, last))) =
            (self.samples.front(), self.samples.back())
        else {
            return Rates::default();
        };
        let seconds = last_at.duration_since(*first_at).as_secs_f64();
        if seconds <= 0.0 {
            return Rates::default();
        }
        let rate =
            |count: fn(&Snapshot) -> u64| count(last).saturating_sub(count(first)) as f64 / seconds;
        Rates {
            provisioned: rate(Snapshot::provisioned),
            rotations: rate(Snapshot::rotations),
            publishes: rate(|s| s.completed(Op::Publish)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rates_are_differences_over_the_window() {
        let recorder = Recorder::new("rates");
        let mut window = RateWindow::default();
        window.push(Instant::now(), &recorder.snapshot());
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..10 {
            recorder.record(Op::Publish, Duration::from_millis(1));
            recorder.rotation_completed();
        }
        window.push(Instant::now(), &recorder.snapshot());
        let rates = window.per_second();
        assert_eq!(rates.publishes, 5.0);
        assert_eq!(rates.rotations, 5.0);
        assert_eq!(rates.provisioned, 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn plain_display_logs_at_most_every_five_seconds() {
        let recorder = Recorder::new("log");
        let mut sink = Sink::new(None);
        sink.show(&recorder.snapshot(), 10, false);
        let first = sink.last_log.expect("first tick logs");
        tokio::time::advance(Duration::from_secs(1)).await;
        sink.show(&recorder.snapshot(), 10, false);
        assert_eq!(sink.last_log, Some(first));
        tokio::time::advance(Duration::from_secs(4)).await;
        sink.show(&recorder.snapshot(), 10, false);
        assert_eq!(sink.last_log, Some(first + LOG_EVERY));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_the_run_stops_the_display_and_finish_draws_once_more() {
        let recorder = Arc::new(Recorder::new("cancel"));
        let cancel = CancellationToken::new();
        let progress = Progress::start(recorder, 10, cancel.clone());
        tokio::time::sleep(TICK * 3).await;
        assert!(!progress.task.is_finished());

        cancel.cancel();
        tokio::time::sleep(TICK).await;
        assert!(progress.task.is_finished());

        let display = progress.display.clone();
        progress.finish();
        assert!(display.sink.lock().unwrap().done);
    }
}
