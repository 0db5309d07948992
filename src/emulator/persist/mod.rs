//! The emulator's state directory: the CA's root and key, and the registry as a snapshot
//! plus a write-ahead journal, so that a restarted standalone emulator keeps every issued
//! identity valid and every revoked one refused.
//!
//! Why a journal and not an embedded store: the registry already lives in memory, and
//! what it needs from disk is an ordered, durable record of whole-record changes. A
//! snapshot written through a temporary file, fsync and rename, plus an append-only
//! journal with group commit ([`journal`]), gives that with the crates we have; one fsync
//! covers every change made while the previous one ran, so a provisioning storm is not
//! throttled. Durability contract: a reply (MQTT or HTTP) that reports a change is sent
//! only after [`Registry::durable`] says the change is on disk. A crash may lose changes
//! whose reply was never sent: a certificate issued by CreateCertificateFromCsr whose
//! reply did not leave, or a RegisterThing that did not answer. The device never learned
//! of them, retries, and gets a new certificate; the lost one never worked anywhere.
//! Ownership tokens are not persisted: a restart invalidates them, as their one-hour
//! expiry would, and the device restarts at CreateCertificateFromCsr.
//!
//! Recovery reads the snapshot, replays the journal lines numbered after it up to the
//! first torn or unreadable line (only an unacknowledged tail can be torn, since nothing
//! is written after a line until it is fsynced), writes a new snapshot and empties the
//! journal. A lock file keeps a second emulator off the same directory.

pub mod journal;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use journal::{Journal, JournalError};

use super::ca::{CaError, CertificateAuthority};
use super::registry::{
    CertificateRecord, PolicyRecord, Registry, TemplateRecord, ThingGroupRecord, ThingRecord,
    ThingTypeRecord,
};

/// Version of the snapshot format; a newer one is refused rather than misread.
const SNAPSHOT_VERSION: u32 = 1;

/// One recorded change: the whole record after the change, so replaying it twice is
/// the same as replaying it once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Certificate(CertificateRecord),
    CertificateRemoved { id: String },
    Thing(ThingRecord),
    ThingRemoved { name: String },
    Policy(StoredPolicy),
    PolicyRemoved { name: String },
    Template(TemplateRecord),
    TemplateRemoved { name: String },
    ThingType(ThingTypeRecord),
    ThingTypeRemoved { name: String },
    ThingGroup(ThingGroupRecord),
    ThingGroupRemoved { name: String },
}

/// A policy as stored: the document is parsed again when it is loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub name: String,
    pub arn: String,
    pub document: String,
    pub created_at: SystemTime,
}

impl From<&PolicyRecord> for StoredPolicy {
    fn from(record: &PolicyRecord) -> Self {
        StoredPolicy {
            name: record.name.clone(),
            arn: record.arn.clone(),
            document: record.document.clone(),
            created_at: record.created_at,
        }
    }
}

/// Everything the registry holds, in storable form.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryImage {
    pub certificates: Vec<CertificateRecord>,
    pub things: Vec<ThingRecord>,
    pub policies: Vec<StoredPolicy>,
    pub templates: Vec<TemplateRecord>,
    pub thing_types: Vec<ThingTypeRecord>,
    pub thing_groups: Vec<ThingGroupRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    /// The last journal change the snapshot includes.
    seq: u64,
    registry: RegistryImage,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JournalLine {
    seq: u64,
    change: Change,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: another emulator is using this state directory", path.display())]
    Locked { path: PathBuf },
    #[error("{}: damaged state file: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("registry journal: {0}")]
    Journal(std::io::Error),
    #[error("registry record cannot be encoded: {0}")]
    Encode(String),
    #[error(transparent)]
    Ca(#[from] CaError),
}

impl PersistError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PersistError + '_ {
        move |source| PersistError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn journal(error: std::io::Error) -> PersistError {
        PersistError::Journal(error)
    }

    fn encode(error: serde_json::Error) -> PersistError {
        PersistError::Encode(error.to_string())
    }
}

/// The files of a state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path) -> StateDir {
        StateDir {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn root_certificate(&self) -> PathBuf {
        self.root.join("ca").join("root-ca.pem")
    }

    pub fn root_key(&self) -> PathBuf {
        self.root.join("ca").join("root-ca.key")
    }

    fn registry_dir(&self) -> PathBuf {
        self.root.join("registry")
    }

    fn snapshot(&self) -> PathBuf {
        self.registry_dir().join("snapshot.json")
    }

    fn journal(&self) -> PathBuf {
        self.registry_dir().join("journal.jsonl")
    }

    fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
}

/// Holds the state directory while the emulator runs: its lock, and the journal writer.
pub struct PersistHandle {
    writer: JoinHandle<()>,
    stop: CancellationToken,
    _lock: File,
}

impl PersistHandle {
    /// Writes the last changes and a final snapshot, then releases the directory.
    pub async fn close(self) {
        self.stop.cancel();
        if let Err(error) = self.writer.await {
            tracing::warn!(%error, "registry journal writer did not finish");
        }
    }
}

/// Takes the directory's lock, creating the directory when it is new.
pub fn lock(dir: &StateDir) -> Result<File, PersistError> {
    create_private_dir(dir.root())?;
    let path = dir.lock();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(PersistError::io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(PersistError::Locked { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(PersistError::Io { path, source }),
    }
}

/// Loads the root CA of the directory, or creates and stores one (key mode 0600).
pub fn load_or_create_ca(dir: &StateDir) -> Result<CertificateAuthority, PersistError> {
    let (cert_path, key_path) = (dir.root_certificate(), dir.root_key());
    if cert_path.exists() {
        let cert = std::fs::read_to_string(&cert_path).map_err(PersistError::io(&cert_path))?;
        let key = std::fs::read_to_string(&key_path).map_err(PersistError::io(&key_path))?;
        return Ok(CertificateAuthority::from_pem(&cert, &key)?);
    }
    let ca = CertificateAuthority::generate("fleetsim emulator root CA")?;
    // The key goes first: a root certificate on disk always has its key beside it.
    write_atomically(&key_path, ca.signing_key_pem().as_bytes(), 0o600)?;
    write_atomically(&cert_path, ca.root_pem().as_bytes(), 0o644)?;
    Ok(ca)
}

/// Recovers the registry from the directory and starts journaling its changes.
pub fn open_registry(
    dir: &StateDir,
    registry: &Arc<Registry>,
    lock: File,
) -> Result<PersistHandle, PersistError> {
    create_private_dir(&dir.registry_dir())?;
    let (seq, image) = recover(dir)?;
    registry
        .restore(image.clone())
        .map_err(|e| PersistError::Damaged {
            path: dir.snapshot(),
            reason: e.to_string(),
        })?;
    write_snapshot(&dir.snapshot(), seq, &image)?;
    let file = empty_journal(&dir.journal())?;
    let journal = Arc::new(Journal::new(seq));
    registry.attach_journal(Arc::clone(&journal));
    let stop = CancellationToken::new();
    let writer = journal::JournalFile {
        file,
        len: 0,
        snapshot_path: dir.snapshot(),
    };
    let task = tokio::spawn(journal::run_writer(
        journal,
        Arc::clone(registry),
        writer,
        stop.clone(),
    ));
    Ok(PersistHandle {
        writer: task,
        stop,
        _lock: lock,
    })
}

/// The snapshot with the journal replayed over it.
fn recover(dir: &StateDir) -> Result<(u64, RegistryImage), PersistError> {
    let (seq, image) = match read_snapshot(&dir.snapshot())? {
        Some(snapshot) => (snapshot.seq, snapshot.registry),
        None => (0, RegistryImage::default()),
    };
    let path = dir.journal();
    let journal = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(PersistError::io(&path)(e)),
    };
    Ok(replay(seq, image, &journal))
}

/// Applies every complete journal line numbered after `seq`, stopping at the first torn one.
pub fn replay(seq: u64, image: RegistryImage, journal: &[u8]) -> (u64, RegistryImage) {
    let mut state = Tables::from(image);
    let mut last = seq;
    let mut rest = journal;
    while let Some(end) = rest.iter().position(|b| *b == b'\n') {
        let Ok(line) = serde_json::from_slice::<JournalLine>(&rest[..end]) else {
            break;
        };
        if line.seq > last {
            state.apply(line.change);
            last = line.seq;
        }
        rest = &rest[end + 1..];
    }
    if !rest.is_empty() {
        tracing::warn!(
            bytes = rest.len(),
            "registry journal ends in a torn write; its unacknowledged tail is dropped"
        );
    }
    (last, state.into())
}

/// The registry image keyed for replay.
#[derive(Default)]
struct Tables {
    certificates: BTreeMap<String, CertificateRecord>,
    things: BTreeMap<String, ThingRecord>,
    policies: BTreeMap<String, StoredPolicy>,
    templates: BTreeMap<String, TemplateRecord>,
    thing_types: BTreeMap<String, ThingTypeRecord>,
    thing_groups: BTreeMap<String, ThingGroupRecord>,
}

impl Tables {
    fn apply(&mut self, change: Change) {
        match change {
            Change::Certificate(c) => _ = self.certificates.insert(c.id.clone(), c),
            Change::CertificateRemoved { id } => _ = self.certificates.remove(&id),
            Change::Thing(t) => _ = self.things.insert(t.name.clone(), t),
            Change::ThingRemoved { name } => _ = self.things.remove(&name),
            Change::Policy(p) => _ = self.policies.insert(p.name.clone(), p),
            Change::PolicyRemoved { name } => _ = self.policies.remove(&name),
            Change::Template(t) => _ = self.templates.insert(t.name.clone(), t),
            Change::TemplateRemoved { name } => _ = self.templates.remove(&name),
            Change::ThingType(t) => _ = self.thing_types.insert(t.name.clone(), t),
            Change::ThingTypeRemoved { name } => _ = self.thing_types.remove(&name),
            Change::ThingGroup(g) => _ = self.thing_groups.insert(g.name.clone(), g),
            Change::ThingGroupRemoved { name } => _ = self.thing_groups.remove(&name),
        }
    }
}

impl From<RegistryImage> for Tables {
    fn from(image: RegistryImage) -> Self {
        let mut tables = Tables::default();
        let changes = (image.certificates.into_iter().map(Change::Certificate))
            .chain(image.things.into_iter().map(Change::Thing))
            .chain(image.policies.into_iter().map(Change::Policy))
            .chain(image.templates.into_iter().map(Change::Template))
            .chain(image.thing_types.into_iter().map(Change::ThingType))
            .chain(image.thing_groups.into_iter().map(Change::ThingGroup));
        changes.for_each(|change| tables.apply(change));
        tables
    }
}

impl From<Tables> for RegistryImage {
    fn from(tables: Tables) -> Self {
        RegistryImage {
            certificates: tables.certificates.into_values().collect(),
            things: tables.things.into_values().collect(),
            policies: tables.policies.into_values().collect(),
            templates: tables.templates.into_values().collect(),
            thing_types: tables.thing_types.into_values().collect(),
            thing_groups: tables.thing_groups.into_values().collect(),
        }
    }
}

fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, PersistError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PersistError::io(path)(e)),
    };
    let damaged = |reason: String| PersistError::Damaged {
        path: path.to_owned(),
        reason,
    };
    let snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    if snapshot.version > SNAPSHOT_VERSION {
        return Err(damaged(format!(
            "format version {} is newer than this fleetsim ({SNAPSHOT_VERSION})",
            snapshot.version
        )));
    }
    Ok(Some(snapshot))
}

fn write_snapshot(path: &Path, seq: u64, image: &RegistryImage) -> Result<(), PersistError> {
    #[derive(Serialize)]
    struct SnapshotRef<'a> {
        version: u32,
        seq: u64,
        registry: &'a RegistryImage,
    }
    let snapshot = SnapshotRef {
        version: SNAPSHOT_VERSION,
        seq,
        registry: image,
    };
    let bytes = serde_json::to_vec(&snapshot).map_err(PersistError::encode)?;
    write_atomically(path, &bytes, 0o600)
}

/// Opens the journal for appending, emptied: its content is in the snapshot by now.
fn empty_journal(path: &Path) -> Result<File, PersistError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(PersistError::io(path))?;
    file.set_len(0).map_err(PersistError::io(path))?;
    file.sync_all().map_err(PersistError::io(path))?;
    Ok(file)
}

/// Temporary file, fsync, rename, fsync of the folder: after a crash the path holds either
/// the old content or the new, never a mix.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), PersistError> {
    let dir = path
        .parent()
        .expect("invariant: state files always live in a folder");
    create_private_dir(dir)?;
    let temp = dir.join(format!(".{}.tmp", rand::random::<u64>()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(PersistError::io(&temp))?;
    file.write_all(contents).map_err(PersistError::io(&temp))?;
    file.sync_all().map_err(PersistError::io(&temp))?;
    std::fs::rename(&temp, path).map_err(PersistError::io(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(PersistError::io(dir))
}

fn create_private_dir(dir: &Path) -> Result<(), PersistError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(PersistError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::registry::CertificateStatus;

    fn cert(id: &str, status: CertificateStatus) -> CertificateRecord {
        CertificateRecord {
            id: id.to_owned(),
            arn: format!("arn:aws:iot:us-east-1:123456789012:cert/{id}"),
            pem: String::new(),
            status,
            created_at: SystemTime::UNIX_EPOCH,
            last_modified: SystemTime::UNIX_EPOCH,
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
            things: Default::default(),
            policies: Default::default(),
        }
    }

    fn line(seq: u64, change: Change) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(&JournalLine { seq, change }).unwrap();
        bytes.push(b'\n');
        bytes
    }

    #[test]
    fn replay_applies_lines_after_the_snapshot_and_stops_at_a_torn_tail() {
        let snapshot = RegistryImage {
            certificates: vec![cert("a", CertificateStatus::Active)],
            ..RegistryImage::default()
        };
        let mut journal = line(
            1,
            Change::Certificate(cert("a", CertificateStatus::Inactive)),
        );
        journal.extend(line(
            2,
            Change::Certificate(cert("a", CertificateStatus::Revoked)),
        ));
        journal.extend(line(
            3,
            Change::Certificate(cert("b", CertificateStatus::Active)),
        ));
        let torn = line(4, Change::CertificateRemoved { id: "b".into() });
        journal.extend(&torn[..torn.len() / 2]);

        let (seq, image) = replay(1, snapshot, &journal);

        assert_eq!(seq, 3);
        let statuses: Vec<_> = image
            .certificates
            .iter()
            .map(|c| (c.id.as_str(), c.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("a", CertificateStatus::Revoked),
                ("b", CertificateStatus::Active)
            ],
            "line 1 is in the snapshot already; the torn line 4 was never acknowledged"
        );
    }

    #[tokio::test]
    async fn an_acknowledged_change_is_on_disk_before_durable_returns() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let registry = Arc::new(Registry::new("us-east-1", "123456789012"));
        let handle = open_registry(&state, &registry, lock(&state).unwrap()).unwrap();
        let (thing, _) = registry.ensure_thing("t-1", &BTreeMap::new());

        registry.durable().await.unwrap();

        let journal = std::fs::read(state.journal()).unwrap();
        let (_, image) = replay(0, RegistryImage::default(), &journal);
        assert_eq!(image.things[0].id, thing.id);
        handle.close().await;
        let (_, image) = recover(&state).unwrap();
        assert_eq!(image.things.len(), 1, "the final snapshot holds it too");
    }

    #[tokio::test]
    async fn thing_types_groups_and_memberships_survive_a_restart() {
        use crate::emulator::registry::{NewThingGroup, NewThingType};
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let registry = Arc::new(Registry::new("us-east-1", "123456789012"));
        let handle = open_registry(&state, &registry, lock(&state).unwrap()).unwrap();
        registry
            .create_thing_type("sensor", NewThingType::default())
            .unwrap();
        registry.deprecate_thing_type("sensor", false).unwrap();
        registry
            .create_thing_group("fleet", NewThingGroup::default())
            .unwrap();
        registry.ensure_thing("t-1", &BTreeMap::new());
        registry.add_thing_to_group("t-1", "fleet").unwrap();
        registry.durable().await.unwrap();
        handle.close().await;

        let (_, image) = recover(&state).unwrap();
        let restored = Registry::new("us-east-1", "123456789012");
        restored.restore(image).unwrap();

        let sensor = restored.thing_type("sensor").expect("type kept");
        assert!(sensor.deprecated_at.is_some(), "deprecation kept");
        assert!(restored.thing_group("fleet").is_some(), "group kept");
        assert_eq!(restored.things_in_group("fleet").unwrap(), ["t-1"]);
    }
}
