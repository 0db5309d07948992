//! Server-generated device keys for CreateKeysAndCertificate. AWS makes an
//! RSA-2048 key and returns it as a PKCS#1 PEM (`RSA PRIVATE KEY`); EC P-256
//! is an emulator option for runs that want cheap keys.
//!
//! An RSA key costs tens of milliseconds of CPU, so a background task keeps
//! a bounded pool of them ready: a storm of requests takes keys from the
//! pool instead of queueing behind key generation. When the pool is empty
//! the key is made on the blocking pool, never on the async workers.

use std::sync::Mutex;

use rcgen::KeyPair;
use tokio::sync::mpsc;

/// Which key CreateKeysAndCertificate generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerKeyType {
    /// RSA-2048 with a PKCS#1 PEM private key, as AWS does.
    #[default]
    Rsa2048,
    /// EC P-256 with a PKCS#8 PEM private key (emulator option).
    EcP256,
}

/// A generated key: the pair (to sign a certificate for its public half) and
/// the private key as the device receives it.
pub struct GeneratedKey {
    pub pair: KeyPair,
    pub private_key_pem: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey").finish_non_exhaustive()
    }
}

/// Why a key could not be made: the emulator's fault, never the device's.
#[derive(Debug, thiserror::Error)]
#[error("emulator could not generate a {kind:?} key: {reason}")]
pub struct KeyError {
    kind: ServerKeyType,
    reason: String,
}

/// Keys generated ahead of demand by a background task.
pub struct KeyPool {
    kind: ServerKeyType,
    ready: Mutex<Option<mpsc::Receiver<GeneratedKey>>>,
}

impl KeyPool {
    /// A pool that keeps up to `size` keys ready. With `size` 0, or outside
    /// a tokio runtime, every key is generated on demand.
    pub fn start(kind: ServerKeyType, size: usize) -> KeyPool {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let ready = runtime.filter(|_| size > 0).map(|runtime| {
            let (sender, receiver) = mpsc::channel(size);
            runtime.spawn(fill(kind, sender));
            receiver
        });
        KeyPool {
            kind,
            ready: Mutex::new(ready),
        }
    }

    pub fn kind(&self) -> ServerKeyType {
        self.kind
    }

    /// A key from the pool, or a fresh one when the pool is empty.
    pub async fn take(&self) -> Result<GeneratedKey, KeyError> {
        if let Some(key) = self.try_take() {
            return Ok(key);
        }
        let kind = self.kind;
        tokio::task::spawn_blocking(move || generate(kind))
            .await
            .map_err(|e| KeyError {
                kind,
                reason: e.to_string(),
            })?
    }

    fn try_take(&self) -> Option<GeneratedKey> {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        ready.as_mut()?.try_recv().ok()
    }

    /// Keys ready right now (for tests and benchmarks that wait for a warm pool).
    pub fn ready(&self) -> usize {
        let ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        ready.as_ref().map_or(0, |r| r.len())
    }
}

/// Refills the pool until it is dropped; the bounded channel makes this
/// task wait whenever the pool is full.
async fn fill(kind: ServerKeyType, sender: mpsc::Sender<GeneratedKey>) {
    loop {
        let Ok(permit) = sender.reserve().await else {
            return;
        };
        match tokio::task::spawn_blocking(move || generate(kind)).await {
            Ok(Ok(key)) => permit.send(key),
            Ok(Err(error)) => {
                tracing::warn!(%error, "key pool stopped");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Generates one key of `kind`.
pub fn generate(kind: ServerKeyType) -> Result<GeneratedKey, KeyError> {
    let failed = |e: rcgen::Error| KeyError {
        kind,
        reason: e.to_string(),
    };
    match kind {
        ServerKeyType::Rsa2048 => {
            let pair = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .map_err(failed)?;
            let pkcs1 = pkcs1_of_pkcs8(&pair.serialize_der()).ok_or_else(|| KeyError {
                kind,
                reason: "generated key is not a PKCS#8 RSA key".into(),
            })?;
            let private_key_pem = crate::emulator::ca::pem_encode("RSA PRIVATE KEY", &pkcs1);
            Ok(GeneratedKey {
                pair,
                private_key_pem,
            })
        }
        ServerKeyType::EcP256 => {
            let pair = KeyPair::generate().map_err(failed)?;
            let private_key_pem = pair.serialize_pem();
            Ok(GeneratedKey {
                pair,
                private_key_pem,
            })
        }
    }
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`:
/// `SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING key }`.
fn pkcs1_of_pkcs8(der: &[u8]) -> Option<Vec<u8>> {
    let (tag, body, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (version_tag, _, rest) = der_element(body)?;
    let (algorithm_tag, _, rest) = der_element(rest)?;
    let (key_tag, key, _) = der_element(rest)?;
    (version_tag == 0x02 && algorithm_tag == 0x30 && key_tag == 0x04).then(|| key.to_vec())
}

/// One DER element: its tag, its contents and the bytes after it.
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let count = usize::from(first & 0x7f);
            let (length_bytes, rest) = rest.split_at_checked(count)?;
            let length = length_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (length, rest)
        }
        _ => return None,
    };
    let (contents, after) = rest.split_at_checked(length)?;
    Some((tag, contents, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_keys_are_pkcs1_pem_that_rustls_and_rcgen_read_back() {
        let key = generate(ServerKeyType::Rsa2048).unwrap();
        assert!(
            key.private_key_pem
                .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
        );
        use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
        let der = PrivateKeyDer::from_pem_slice(key.private_key_pem.as_bytes()).unwrap();
        assert!(matches!(der, PrivateKeyDer::Pkcs1(_)));
        let back = KeyPair::from_pem(&key.private_key_pem).unwrap();
        assert_eq!(back.public_key_raw(), key.pair.public_key_raw());
    }

    #[test]
    fn der_reader_refuses_truncated_input() {
        assert_eq!(pkcs1_of_pkcs8(&[0x30, 0x82, 0x01]), None);
        assert_eq!(pkcs1_of_pkcs8(&[]), None);
        assert_eq!(pkcs1_of_pkcs8(&[0x30, 0x00]), None);
    }

    #[tokio::test]
    async fn the_pool_fills_ahead_of_demand_and_still_serves_when_empty() {
        let pool = KeyPool::start(ServerKeyType::EcP256, 2);
        for _ in 0..200 {
            if pool.ready() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(pool.ready(), 2);
        for _ in 0..4 {
            pool.take().await.unwrap();
        }
        let cold = KeyPool::start(ServerKeyType::EcP256, 0);
        assert_eq!(cold.ready(), 0);
        cold.take().await.unwrap();
    }
}
