//! The credential store: where a device keeps its certificate and key
//! between connections, on disk under `certs/<run>/<serial>/` or in memory.
//!
//! On disk a certificate and its key live together in one PEM file
//! (`current.pem`), so that replacing them is a single atomic rename: there
//! is no moment at which a new key sits beside an old certificate. A
//! rotation first copies the working identity to `previous.pem`, then
//! installs the new one; a crash at any point leaves at least one working
//! pair, and [`CredentialStore::load`] returns both for the device to try.
//! Keys are written mode 0600 in folders mode 0700, through a temporary
//! file, fsync and rename.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Credentials, IdentityError};

const CURRENT: &str = "current.pem";
const PREVIOUS: &str = "previous.pem";

/// What a device finds when it starts or restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIdentity {
    pub current: Credentials,
    /// The identity in use before the last rotation, until it is retired.
    pub previous: Option<Credentials>,
}

#[derive(Clone)]
pub enum CredentialStore {
    Disk { root: PathBuf },
    Memory(Arc<Mutex<HashMap<String, StoredIdentity>>>),
}

impl CredentialStore {
    /// A store under `root`, created with mode 0700 if absent.
    pub fn disk(root: &Path) -> Result<CredentialStore, IdentityError> {
        create_private_dir(root)?;
        Ok(CredentialStore::Disk {
            root: root.to_owned(),
        })
    }

    pub fn memory() -> CredentialStore {
        CredentialStore::Memory(Arc::default())
    }

    /// The folder of one device, when the store is on disk.
    pub fn device_dir(&self, serial: &str) -> Result<Option<PathBuf>, IdentityError> {
        validate_serial(serial)?;
        Ok(match self {
            CredentialStore::Disk { root } => Some(root.join(serial)),
            CredentialStore::Memory(_) => None,
        })
    }

    pub async fn load(&self, serial: &str) -> Result<Option<StoredIdentity>, IdentityError> {
        validate_serial(serial)?;
        match self {
            CredentialStore::Memory(map) => Ok(lock(map).get(serial).cloned()),
            CredentialStore::Disk { root } => {
                let dir = root.join(serial);
                blocking(move || load_dir(&dir)).await
            }
        }
    }

    /// Installs `new` as the current identity, keeping the one it replaces
    /// as `previous`.
    pub async fn install(&self, serial: &str, new: &Credentials) -> Result<(), IdentityError> {
        validate_serial(serial)?;
        match self {
            CredentialStore::Memory(map) => {
                let mut map = lock(map);
                let previous = map.get(serial).map(|s| s.current.clone());
                map.insert(
                    serial.to_owned(),
                    StoredIdentity {
                        current: new.clone(),
                        previous,
                    },
                );
                Ok(())
            }
            CredentialStore::Disk { root } => {
                let (dir, new) = (root.join(serial), new.clone());
                blocking(move || install_dir(&dir, &new)).await
            }
        }
    }

    /// Drops the backup once the old identity has been retired.
    pub async fn forget_previous(&self, serial: &str) -> Result<(), IdentityError> {
        validate_serial(serial)?;
        match self {
            CredentialStore::Memory(map) => {
                if let Some(stored) = lock(map).get_mut(serial) {
                    stored.previous = None;
                }
                Ok(())
            }
            CredentialStore::Disk { root } => {
                let path = root.join(serial).join(PREVIOUS);
                blocking(move || match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path, e)),
                    _ => Ok(()),
                })
                .await
            }
        }
    }
}

/// Serial numbers become folder names, so only a safe alphabet passes.
pub fn validate_serial(serial: &str) -> Result<(), IdentityError> {
    let safe = !serial.is_empty()
        && serial.len() <= 100
        && serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if safe {
        Ok(())
    } else {
        Err(IdentityError::BadSerial(serial.to_owned()))
    }
}

fn load_dir(dir: &Path) -> Result<Option<StoredIdentity>, IdentityError> {
    let current = read_pair(&dir.join(CURRENT))?;
    let previous = read_pair(&dir.join(PREVIOUS))?;
    Ok(match (current, previous) {
        (Some(current), previous) => Some(StoredIdentity { current, previous }),
        // A crash between writing the backup and the new identity.
        (None, Some(previous)) => Some(StoredIdentity {
            current: previous,
            previous: None,
        }),
        (None, None) => None,
    })
}

fn install_dir(dir: &Path, new: &Credentials) -> Result<(), IdentityError> {
    create_private_dir(dir)?;
    let current = dir.join(CURRENT);
    if let Some(working) = read_pair(&current)? {
        write_atomically(&dir.join(PREVIOUS), &to_pem(&working))?;
    }
    write_atomically(&current, &to_pem(new))
}

/// Reads a certificate+key PEM file; a missing or unparseable file is
/// `None` so that the caller falls back to the other copy.
fn read_pair(path: &Path) -> Result<Option<Credentials>, IdentityError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, e)),
    };
    Ok(split_pem(&text))
}

fn split_pem(text: &str) -> Option<Credentials> {
    let cert_end = "-----END CERTIFICATE-----";
    let at = text.find(cert_end)? + cert_end.len();
    let (certificate, key) = text.split_at(at);
    let key = key.trim_start();
    key.contains("PRIVATE KEY-----").then(|| Credentials {
        certificate_pem: format!("{}\n", certificate.trim()),
        private_key_pem: key.to_owned(),
    })
}

fn to_pem(credentials: &Credentials) -> String {
    format!(
        "{}\n{}",
        credentials.certificate_pem.trim_end(),
        credentials.private_key_pem
    )
}

fn write_atomically(path: &Path, contents: &str) -> Result<(), IdentityError> {
    let dir = path
        .parent()
        .expect("credential files always live in a device folder");
    let temp = dir.join(format!(".{}.tmp", rand::random::<u64>()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| io(&temp, e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| io(&temp, e))?;
    file.sync_all().map_err(|e| io(&temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| io(path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io(dir, e))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, IdentityError> + Send + 'static,
) -> Result<T, IdentityError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn lock<T>(map: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    map.lock().unwrap_or_else(|p| p.into_inner())
}

fn io(path: &Path, source: std::io::Error) -> IdentityError {
    IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn creds(tag: &str) -> Credentials {
        Credentials {
            certificate_pem: format!(
                "-----BEGIN CERTIFICATE-----\n{tag}\n-----END CERTIFICATE-----\n"
            ),
            private_key_pem: format!(
                "-----BEGIN PRIVATE KEY-----\n{tag}\n-----END PRIVATE KEY-----\n"
            ),
        }
    }

    #[tokio::test]
    async fn install_keeps_the_replaced_identity_as_previous() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::disk(&dir.path().join("run")).unwrap();
        store.install("SN-1", &creds("a")).await.unwrap();
        store.install("SN-1", &creds("b")).await.unwrap();
        let loaded = store.load("SN-1").await.unwrap().unwrap();
        assert_eq!(loaded.current, creds("b"));
        assert_eq!(loaded.previous, Some(creds("a")));
        store.forget_previous("SN-1").await.unwrap();
        assert_eq!(store.load("SN-1").await.unwrap().unwrap().previous, None);
    }

    #[tokio::test]
    async fn files_are_private_and_folders_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::disk(&dir.path().join("run")).unwrap();
        store.install("SN-1", &creds("a")).await.unwrap();
        let device = store.device_dir("SN-1").unwrap().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&device), 0o700);
        assert_eq!(mode(&device.join(CURRENT)), 0o600);
    }

    #[tokio::test]
    async fn a_crash_after_the_backup_still_loads_a_working_identity() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::disk(dir.path()).unwrap();
        store.install("SN-1", &creds("a")).await.unwrap();
        let device = dir.path().join("SN-1");
        std::fs::rename(device.join(CURRENT), device.join(PREVIOUS)).unwrap();
        let loaded = store.load("SN-1").await.unwrap().unwrap();
        assert_eq!(loaded.current, creds("a"));
        std::fs::write(device.join(CURRENT), "torn wri").unwrap();
        let loaded = store.load("SN-1").await.unwrap().unwrap();
        assert_eq!(loaded.current, creds("a"), "a torn current file falls back");
    }

    #[tokio::test]
    async fn path_like_serials_never_reach_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::disk(dir.path()).unwrap();
        for serial in ["../evil", "a/b", "", ".", "x\0y", &"s".repeat(101)] {
            assert!(matches!(
                store.install(serial, &creds("a")).await,
                Err(IdentityError::BadSerial(_))
            ));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
