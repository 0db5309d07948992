//! The web console of a run: a single page served by fleetsim itself, with a
//! live fleet view pushed as server-sent events, a device view, and devices
//! driven by hand through the same device code the fleet runs.
//!
//! The console is assembled from what its host gives it ([`ConsoleSources`]):
//! `fleetsim run` gives the fleet, the registry and a hands-on context; a
//! host with only a registry (the standalone emulator) gives that alone, and
//! the page shows the panels whose data exists. Access needs a token
//! compared in constant time, unless the host explicitly turns it off.

mod api;
mod auth;
mod fleet;
pub mod hands_on;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::device::live::LiveTable;
use crate::emulator::registry::Registry;
use crate::observe::Recorder;
use crate::observe::metrics::MetricsHandle;
use crate::scenario::Slo;

pub use auth::{Access, TOKEN_ENV, random_token};
pub use hands_on::{HandsOn, SerialReserved};

/// The address the console listens on when `--console` has no value:
/// loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// Why the console could not start or refused a request setting.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "console on {addr} would be reachable from other machines without a token; drop --console-no-auth or bind to 127.0.0.1"
    )]
    OpenToNetwork { addr: SocketAddr },
}

/// The fleet a run shows: its measurements and its devices' live status.
pub struct FleetSources {
    pub run: String,
    pub fleet_size: u64,
    pub slo: Slo,
    pub recorder: Arc<Recorder>,
    pub live: Arc<LiveTable>,
    pub started: Instant,
}

/// Everything a console can show; each part is optional, and the page shows
/// only the panels whose part is present.
#[derive(Default)]
pub struct ConsoleSources {
    pub fleet: Option<FleetSources>,
    /// The emulator's registry: certificate statuses for the device view,
    /// and the registry panel.
    pub registry: Option<Arc<Registry>>,
    /// The Prometheus exporter, read for the emulator's connections and
    /// refusals (they are counted only there).
    pub metrics: Option<MetricsHandle>,
    pub hands_on: Option<HandsOn>,
}

/// A running console. Dropping it does not stop it; call [`shutdown`](Self::shutdown).
pub struct ConsoleHandle {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ConsoleHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Binds `addr` and serves the console until [`ConsoleHandle::shutdown`].
pub async fn start(
    addr: SocketAddr,
    access: Access,
    sources: ConsoleSources,
) -> Result<ConsoleHandle, ConsoleError> {
    if access == Access::Open && !addr.ip().is_loopback() {
        return Err(ConsoleError::OpenToNetwork { addr });
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ConsoleError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ConsoleError::Bind { addr, source })?;
    let stop = CancellationToken::new();
    let router = api::router(Arc::new(sources), Arc::new(access), stop.clone());
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "console stopped serving");
            }
        }
    });
    Ok(ConsoleHandle { addr, stop, task })
}
