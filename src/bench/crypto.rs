//! The crypto ceiling: exactly the cryptography of one provisioning and of
//! one rotation, device and emulator side together, in a tight loop on every
//! core. It is the denominator of every throughput ratio the benchmarks
//! report, so it runs in the same process and run as what it is compared to.
//!
//! One provisioning: an EC P-256 key and CSR (device), CSR verification and
//! signing (emulator CA), the claim handshake and the handshake with the new
//! certificate (both sides each). One rotation: key and CSR, signing, the
//! handshake with the new certificate and the refused handshake of the old.
//! Handshakes run in memory through the real client and server
//! configurations (the registry-checking verifier included), so sockets,
//! MQTT and scheduling are left out by construction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use serde::Serialize;

use super::BenchError;
use crate::emulator::ca::CertificateAuthority;
use crate::emulator::registry::{CertificateStatus, NewCertificate, Registry};
use crate::emulator::{ACCOUNT_ID, REGION, tls};
use crate::identity::tls::{KeyExchange, client_config_with};
use crate::identity::{Credentials, generate_key_and_csr};

/// Lifetime of the certificates signed in the loop; never checked.
const VALIDITY: Duration = Duration::from_secs(3600);

/// What the loop measured, per second of wall-clock time on all cores.
#[derive(Debug, Clone, Serialize)]
pub struct CryptoCeiling {
    pub key_exchange: &'static str,
    pub threads: usize,
    pub seconds_each: f64,
    pub provisionings_per_second: f64,
    pub rotations_per_second: f64,
    /// CPU microseconds of each part on one core, measured alone.
    pub key_and_csr_us: f64,
    pub sign_csr_us: f64,
    pub handshake_us: f64,
    pub refused_handshake_us: f64,
}

/// The identities the loop uses: a CA, the broker's configuration, and a
/// claim, a device and a revoked certificate known to its registry.
struct Material {
    ca: CertificateAuthority,
    server: Arc<ServerConfig>,
    claim: Arc<ClientConfig>,
    device: Arc<ClientConfig>,
    revoked: Arc<ClientConfig>,
}

impl Material {
    fn new(key_exchange: KeyExchange) -> Result<Material, BenchError> {
        let ca = CertificateAuthority::generate("fleetsim bench root").map_err(setup)?;
        let registry = Arc::new(Registry::new(REGION, ACCOUNT_ID));
        let server_identity = ca.issue_server(&["localhost"]).map_err(setup)?;
        let server = tls::server_config(
            ca.root_der().clone(),
            server_identity,
            Arc::clone(&registry),
        )
        .map_err(setup)?;
        let client = |name: &str, status| -> Result<Arc<ClientConfig>, BenchError> {
            let (issued, key) = ca.issue_client(name, VALIDITY).map_err(setup)?;
            registry.insert_certificate(NewCertificate {
                id: issued.id,
                pem: issued.pem.clone(),
                not_before: issued.not_before,
                not_after: issued.not_after,
                status,
            });
            let credentials = Credentials {
                certificate_pem: issued.pem,
                private_key_pem: key,
            };
            client_config_with(ca.root_pem(), &credentials, key_exchange).map_err(setup)
        };
        let claim = client("claim", CertificateStatus::Active)?;
        let device = client("device", CertificateStatus::Active)?;
        let revoked = client("revoked", CertificateStatus::Revoked)?;
        Ok(Material {
            ca,
            server,
            claim,
            device,
            revoked,
        })
    }

    fn key_and_csr(&self) -> String {
        generate_key_and_csr("bench-000001")
            .expect("invariant: EC P-256 key generation does not fail")
            .csr_pem
    }

    fn sign(&self, csr_pem: &str) {
        self.ca
            .sign_csr(csr_pem, VALIDITY)
            .expect("invariant: our own CSR is accepted");
    }

    fn provision(&self) {
        let csr = self.key_and_csr();
        self.sign(&csr);
        assert!(handshake(&self.claim, &self.server), "claim handshake");
        assert!(handshake(&self.device, &self.server), "device handshake");
    }

    fn rotate(&self) {
        let csr = self.key_and_csr();
        self.sign(&csr);
        assert!(handshake(&self.device, &self.server), "new certificate");
        assert!(!handshake(&self.revoked, &self.server), "old is refused");
    }
}

fn setup(error: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(format!("crypto ceiling: {error}"))
}

/// Runs the ceiling for `seconds` per flow on every core.
pub fn measure(key_exchange: KeyExchange, seconds: f64) -> Result<CryptoCeiling, BenchError> {
    let material = Arc::new(Material::new(key_exchange)?);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let each = Duration::from_secs_f64(seconds);
    let provisionings = on_all_cores(&material, threads, each, Material::provision);
    let rotations = on_all_cores(&material, threads, each, Material::rotate);
    let csr = material.key_and_csr();
    Ok(CryptoCeiling {
        key_exchange: key_exchange.label(),
        threads,
        seconds_each: seconds,
        provisionings_per_second: provisionings,
        rotations_per_second: rotations,
        key_and_csr_us: micros_per(|| drop(material.key_and_csr())),
        sign_csr_us: micros_per(|| material.sign(&csr)),
        handshake_us: micros_per(|| {
            handshake(&material.device, &material.server);
        }),
        refused_handshake_us: micros_per(|| {
            handshake(&material.revoked, &material.server);
        }),
    })
}

/// How many times per second `unit` completes with one thread per core.
fn on_all_cores(
    material: &Arc<Material>,
    threads: usize,
    each: Duration,
    unit: fn(&Material),
) -> f64 {
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let material = Arc::clone(material);
            std::thread::spawn(move || {
                let mut done = 0u64;
                while started.elapsed() < each {
                    unit(&material);
                    done += 1;
                }
                done
            })
        })
        .collect();
    let done: u64 = workers
        .into_iter()
        .map(|w| w.join().expect("a crypto worker panicked"))
        .sum();
    done as f64 / started.elapsed().as_secs_f64()
}

/// Median microseconds of `work` over 9 rounds of 20, on this thread.
fn micros_per(mut work: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..9)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..20 {
                work();
            }
            started.elapsed().as_secs_f64() * 1e6 / 20.0
        })
        .collect();
    super::median(&mut rounds)
}

/// A full TLS handshake between the two configurations through memory;
/// false when either side refused it.
pub fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> bool {
    let name = ServerName::try_from("localhost").expect("invariant: a valid DNS name");
    let client =
        ClientConnection::new(Arc::clone(client), name).expect("invariant: client config is valid");
    let server =
        ServerConnection::new(Arc::clone(server)).expect("invariant: server config is valid");
    let (mut client, mut server) = (Connection::Client(client), Connection::Server(server));
    let mut wire = Vec::with_capacity(8192);
    // A TLS 1.3 mutual handshake takes two flights each way.
    for _ in 0..4 {
        if !transfer(&mut wire, &mut client, &mut server)
            || !transfer(&mut wire, &mut server, &mut client)
        {
            return false;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return true;
        }
    }
    false
}

/// Moves everything `from` wants to write into `to`; false on a TLS error.
fn transfer(wire: &mut Vec<u8>, from: &mut Connection, to: &mut Connection) -> bool {
    wire.clear();
    while from.wants_write() {
        if from.write_tls(wire).is_err() {
            return false;
        }
    }
    let mut unread = &wire[..];
    while !unread.is_empty() {
        if to.read_tls(&mut unread).is_err() || to.process_new_packets().is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_active_certificate_completes_the_handshake_and_a_revoked_one_is_refused() {
        let material = Material::new(KeyExchange::X25519).unwrap();
        assert!(handshake(&material.claim, &material.server));
        assert!(handshake(&material.device, &material.server));
        assert!(!handshake(&material.revoked, &material.server));
    }
}
