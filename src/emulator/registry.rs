//! The emulator's registry: certificates with their status, things, thing
//! types and groups ([`classes`]), policies, principal attachments and
//! provisioning templates.
//!
//! It is the one source of truth that the TLS handshake, the broker's policy
//! checks, Fleet Provisioning and the control-plane API all read and write.
//! A certificate leaving ACTIVE is announced on a broadcast channel so that
//! the broker can close that certificate's live connections. With a
//! [`Journal`] attached (standalone mode), every change is recorded under the
//! same lock that makes it, so the journal's order is the registry's order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::persist::{Change, Journal, JournalError, RegistryImage, StoredPolicy};
use super::policy::PolicyDocument;

pub mod classes;

pub use classes::{NewThingGroup, NewThingType, ThingGroupRecord, ThingTypeRecord};

/// The statuses AWS IoT gives a certificate. Only `Active` authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CertificateStatus {
    Active,
    Inactive,
    Revoked,
    PendingActivation,
}

impl CertificateStatus {
    /// AWS's wire name (`ACTIVE`, `REVOKED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateStatus::Active => "ACTIVE",
            CertificateStatus::Inactive => "INACTIVE",
            CertificateStatus::Revoked => "REVOKED",
            CertificateStatus::PendingActivation => "PENDING_ACTIVATION",
        }
    }

    /// Parses AWS's wire name, case-insensitively, as templates accept
    /// both `Active` and `ACTIVE`.
    pub fn parse(text: &str) -> Option<CertificateStatus> {
        match text.to_ascii_uppercase().as_str() {
            "ACTIVE" => Some(CertificateStatus::Active),
            "INACTIVE" => Some(CertificateStatus::Inactive),
            "REVOKED" => Some(CertificateStatus::Revoked),
            "PENDING_ACTIVATION" => Some(CertificateStatus::PendingActivation),
            _ => None,
        }
    }
}

/// A certificate the emulator has issued or registered. Fields added later
/// need `#[serde(default)]` so that older state directories still load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// Lowercase hex SHA-256 of the DER encoding, as AWS computes it.
    pub id: String,
    pub arn: String,
    pub pem: String,
    pub status: CertificateStatus,
    pub created_at: SystemTime,
    pub last_modified: SystemTime,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Things this certificate is attached to (non-exclusive).
    #[serde(default)]
    pub things: BTreeSet<String>,
    /// Names of the policies attached to this certificate.
    #[serde(default)]
    pub policies: BTreeSet<String>,
}

/// What the registry needs to know about a new certificate.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    pub id: String,
    pub pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub status: CertificateStatus,
}

/// A thing; every field defaults so that fields added later load from
/// older state directories.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ThingRecord {
    pub name: String,
    pub id: String,
    pub arn: String,
    pub attributes: BTreeMap<String, String>,
    /// Ids of the certificates attached to this thing.
    pub principals: BTreeSet<String>,
    pub version: i64,
    /// `ThingTypeName`, if the thing has one.
    pub thing_type: Option<String>,
    /// Names of the thing groups the thing belongs to.
    pub groups: BTreeSet<String>,
}

/// A thing's properties that a provisioning template sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThingProperties {
    pub attributes: BTreeMap<String, String>,
    pub thing_type: Option<String>,
    pub groups: BTreeSet<String>,
}

/// A template's pre-provisioning hook, as CreateProvisioningTemplate takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisioningHookConfig {
    pub target_arn: String,
    pub payload_version: String,
}

/// The fields UpdateProvisioningTemplate may change; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub struct TemplateUpdate {
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub provisioning_role_arn: Option<String>,
    pub pre_provisioning_hook: Option<Option<ProvisioningHookConfig>>,
}

#[derive(Debug, Clone)]
pub struct PolicyRecord {
    pub name: String,
    pub arn: String,
    pub document: String,
    pub parsed: Arc<PolicyDocument>,
    pub created_at: SystemTime,
}

/// A provisioning template; every field defaults, as for [`ThingRecord`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TemplateRecord {
    pub name: String,
    pub arn: String,
    pub description: String,
    pub body: String,
    pub enabled: bool,
    pub provisioning_role_arn: String,
    pub created_at: SystemTime,
    pub last_modified: SystemTime,
    pub pre_provisioning_hook: Option<ProvisioningHookConfig>,
}

impl Default for TemplateRecord {
    fn default() -> Self {
        TemplateRecord {
            name: String::new(),
            arn: String::new(),
            description: String::new(),
            body: String::new(),
            enabled: false,
            provisioning_role_arn: String::new(),
            created_at: SystemTime::UNIX_EPOCH,
            last_modified: SystemTime::UNIX_EPOCH,
            pre_provisioning_hook: None,
        }
    }
}

/// A change other parts of the emulator must react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateEvent {
    /// The certificate may no longer authenticate; close its connections.
    Deactivated { certificate_id: String },
}

/// Why a registry operation was refused; maps onto AWS's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{kind} {id} does not exist")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    #[error("certificate {id} cannot move from {from} to {to}")]
    InvalidTransition {
        id: String,
        from: &'static str,
        to: &'static str,
    },
    #[error("malformed policy {name}: {reason}")]
    MalformedPolicy { name: String, reason: String },
    #[error("certificate {id} already has {limit} policies attached")]
    PolicyLimit { id: String, limit: usize },
    #[error("{kind} {id} cannot be deleted: {reason}")]
    DeleteConflict {
        kind: &'static str,
        id: String,
        reason: String,
    },
    #[error("certificate {id} must be deactivated (not ACTIVE) before deletion")]
    DeleteActive { id: String },
    #[error("{reason}")]
    Invalid { reason: String },
    #[error("thing {name} is at version {actual}, not the expected {expected}")]
    VersionConflict {
        name: String,
        expected: i64,
        actual: i64,
    },
}

/// AWS allows at most this many policies on one certificate.
pub const MAX_POLICIES_PER_CERTIFICATE: usize = 10;

#[derive(Default)]
struct State {
    certificates: HashMap<String, CertificateRecord>,
    things: HashMap<String, ThingRecord>,
    policies: HashMap<String, PolicyRecord>,
    templates: HashMap<String, TemplateRecord>,
    thing_types: HashMap<String, ThingTypeRecord>,
    thing_groups: HashMap<String, ThingGroupRecord>,
}

/// The shared registry. Cheap to clone through `Arc`; every method takes
/// the lock for a short, non-async critical section.
pub struct Registry {
    region: String,
    account: String,
    state: Mutex<State>,
    events: broadcast::Sender<CertificateEvent>,
    journal: OnceLock<Arc<Journal>>,
}

impl Registry {
    pub fn new(region: &str, account: &str) -> Registry {
        let (events, _) = broadcast::channel(4096);
        Registry {
            region: region.to_owned(),
            account: account.to_owned(),
            state: Mutex::new(State::default()),
            events,
            journal: OnceLock::new(),
        }
    }

    /// Records every later change in `journal`. Attach it before the
    /// registry is shared: changes made earlier are not recorded.
    pub fn attach_journal(&self, journal: Arc<Journal>) {
        let _ = self.journal.set(journal);
    }

    /// Waits until every change made so far is on disk, so that a reply
    /// sent after it is never undone by a crash. Immediate without a journal.
    pub async fn durable(&self) -> Result<(), JournalError> {
        match self.journal.get() {
            Some(journal) => journal.wait_durable(journal.last_seq()).await,
            None => Ok(()),
        }
    }

    /// Replaces the whole content with a stored image (at start-up).
    pub fn restore(&self, image: RegistryImage) -> Result<(), RegistryError> {
        let mut restored = State::default();
        for cert in image.certificates {
            restored.certificates.insert(cert.id.clone(), cert);
        }
        for thing in image.things {
            restored.things.insert(thing.name.clone(), thing);
        }
        for stored in image.policies {
            let record = self.policy_record(stored)?;
            restored.policies.insert(record.name.clone(), record);
        }
        for template in image.templates {
            restored.templates.insert(template.name.clone(), template);
        }
        for thing_type in image.thing_types {
            restored
                .thing_types
                .insert(thing_type.name.clone(), thing_type);
        }
        for group in image.thing_groups {
            restored.thing_groups.insert(group.name.clone(), group);
        }
        *self.lock() = restored;
        Ok(())
    }

    /// The whole content and the journal sequence number it includes.
    pub fn image(&self) -> (u64, RegistryImage) {
        let state = self.lock();
        let seq = self.journal.get().map_or(0, |j| j.last_seq());
        let image = RegistryImage {
            certificates: state.certificates.values().cloned().collect(),
            things: state.things.values().cloned().collect(),
            policies: state.policies.values().map(StoredPolicy::from).collect(),
            templates: state.templates.values().cloned().collect(),
            thing_types: state.thing_types.values().cloned().collect(),
            thing_groups: state.thing_groups.values().cloned().collect(),
        };
        (seq, image)
    }

    fn policy_record(&self, stored: StoredPolicy) -> Result<PolicyRecord, RegistryError> {
        let parsed = PolicyDocument::parse(&stored.document).map_err(|e| {
            RegistryError::MalformedPolicy {
                name: stored.name.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(PolicyRecord {
            name: stored.name,
            arn: stored.arn,
            document: stored.document,
            parsed: Arc::new(parsed),
            created_at: stored.created_at,
        })
    }

    /// Journals a change; called with the state lock held so that the
    /// journal's order matches the order of the changes.
    fn record(&self, change: impl FnOnce() -> Change) {
        if let Some(journal) = self.journal.get() {
            journal.append(change());
        }
    }

    fn record_certificate(&self, state: &State, id: &str) {
        if let Some(cert) = state.certificates.get(id) {
            self.record(|| Change::Certificate(cert.clone()));
        }
    }

    fn record_thing(&self, state: &State, name: &str) {
        if let Some(thing) = state.things.get(name) {
            self.record(|| Change::Thing(thing.clone()));
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// `arn:aws:iot:<region>:<account>:<kind>/<name>`.
    pub fn arn(&self, kind: &str, name: &str) -> String {
        format!("arn:aws:iot:{}:{}:{kind}/{name}", self.region, self.account)
    }

    /// Extracts the certificate id from a certificate ARN.
    pub fn certificate_id_from_arn(arn: &str) -> Option<&str> {
        let (_, id) = arn.rsplit_once(":cert/")?;
        Some(id)
    }

    pub fn subscribe_events(&self) -> broadcast::Receiver<CertificateEvent> {
        self.events.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; no
        // invariant spans two fields, so recovering the guard is sound.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---- certificates ----

    pub fn insert_certificate(&self, new: NewCertificate) -> CertificateRecord {
        let now = SystemTime::now();
        let record = CertificateRecord {
            arn: self.arn("cert", &new.id),
            id: new.id,
            pem: new.pem,
            status: new.status,
            created_at: now,
            last_modified: now,
            not_before: new.not_before,
            not_after: new.not_after,
            things: BTreeSet::new(),
            policies: BTreeSet::new(),
        };
        let mut state = self.lock();
        state.certificates.insert(record.id.clone(), record.clone());
        self.record(|| Change::Certificate(record.clone()));
        record
    }

    pub fn certificate(&self, id: &str) -> Option<CertificateRecord> {
        self.lock().certificates.get(id).cloned()
    }

    pub fn certificate_status(&self, id: &str) -> Option<CertificateStatus> {
        self.lock().certificates.get(id).map(|c| c.status)
    }

    /// Sets a certificate's status; leaving ACTIVE is announced so that live
    /// connections using it are closed. Only ACTIVE, INACTIVE and REVOKED
    /// can be set, and a REVOKED certificate stays revoked.
    pub fn set_certificate_status(
        &self,
        id: &str,
        status: CertificateStatus,
    ) -> Result<(), RegistryError> {
        let previous = {
            let mut state = self.lock();
            let cert = state
                .certificates
                .get_mut(id)
                .ok_or_else(|| not_found("certificate", id))?;
            let previous = cert.status;
            let allowed = match (previous, status) {
                (_, CertificateStatus::PendingActivation) => false,
                (CertificateStatus::Revoked, s) => s == CertificateStatus::Revoked,
                _ => true,
            };
            if !allowed {
                return Err(RegistryError::InvalidTransition {
                    id: id.to_owned(),
                    from: previous.as_str(),
                    to: status.as_str(),
                });
            }
            cert.status = status;
            cert.last_modified = SystemTime::now();
            self.record_certificate(&state, id);
            previous
        };
        if previous == CertificateStatus::Active && status != CertificateStatus::Active {
            // No receiver simply means no broker is running.
            let _ = self.events.send(CertificateEvent::Deactivated {
                certificate_id: id.to_owned(),
            });
        }
        Ok(())
    }

    /// Removes a certificate that has been issued but never activated or
    /// attached (its ownership token expired).
    pub fn remove_unclaimed_certificate(&self, id: &str) -> bool {
        let mut state = self.lock();
        let unclaimed = state.certificates.get(id).is_some_and(|c| {
            c.status == CertificateStatus::PendingActivation
                && c.things.is_empty()
                && c.policies.is_empty()
        });
        if unclaimed {
            state.certificates.remove(id);
            self.record(|| Change::CertificateRemoved { id: id.to_owned() });
        }
        unclaimed
    }

    /// Deletes a certificate under AWS's rules [aws-iot-facts §4.5]: never an
    /// ACTIVE one, never one attached to a thing, and one with policies
    /// only when `force` is set.
    pub fn delete_certificate(&self, id: &str, force: bool) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let cert = state
            .certificates
            .get(id)
            .ok_or_else(|| not_found("certificate", id))?;
        let conflict = |reason: &str| RegistryError::DeleteConflict {
            kind: "certificate",
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        if cert.status == CertificateStatus::Active {
            return Err(RegistryError::DeleteActive { id: id.to_owned() });
        }
        if !cert.things.is_empty() {
            return Err(conflict("it is attached to one or more things"));
        }
        if !cert.policies.is_empty() && !force {
            return Err(conflict(
                "it has policies attached; detach them or force the deletion",
            ));
        }
        state.certificates.remove(id);
        self.record(|| Change::CertificateRemoved { id: id.to_owned() });
        Ok(())
    }

    pub fn certificate_count(&self) -> usize {
        self.lock().certificates.len()
    }

    pub fn certificates(&self) -> Vec<CertificateRecord> {
        self.lock().certificates.values().cloned().collect()
    }

    // ---- things and principals ----

    /// Returns the thing, creating it when absent; the flag says whether it
    /// was created.
    pub fn ensure_thing(
        &self,
        name: &str,
        attributes: &BTreeMap<String, String>,
    ) -> (ThingRecord, bool) {
        let mut state = self.lock();
        if let Some(thing) = state.things.get(name) {
            return (thing.clone(), false);
        }
        let thing = ThingRecord {
            name: name.to_owned(),
            id: random_id(),
            arn: self.arn("thing", name),
            attributes: attributes.clone(),
            principals: BTreeSet::new(),
            version: 1,
            thing_type: None,
            groups: BTreeSet::new(),
        };
        state.things.insert(name.to_owned(), thing.clone());
        self.record(|| Change::Thing(thing.clone()));
        (thing, true)
    }

    /// Replaces a thing's attributes (template `OverrideSettings: REPLACE`).
    pub fn replace_thing_attributes(
        &self,
        name: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let thing = state
            .things
            .get_mut(name)
            .ok_or_else(|| not_found("thing", name))?;
        if &thing.attributes != attributes {
            thing.attributes = attributes.clone();
            thing.version += 1;
            self.record_thing(&state, name);
        }
        Ok(())
    }

    /// Creates a thing with all its properties at version 1, unless it exists;
    /// the flag says whether it was created.
    pub fn ensure_thing_with(&self, name: &str, properties: &ThingProperties) -> bool {
        let (_, created) = self.ensure_thing(name, &properties.attributes);
        if created {
            let mut state = self.lock();
            if let Some(thing) = state.things.get_mut(name) {
                thing.thing_type = properties.thing_type.clone();
                thing.groups = properties.groups.clone();
            }
            self.record_thing(&state, name);
        }
        created
    }

    /// Sets a thing's attributes, type and groups as a template decided them;
    /// the version moves only when something changed.
    pub fn set_thing_properties(
        &self,
        name: &str,
        properties: &ThingProperties,
    ) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let thing = state
            .things
            .get_mut(name)
            .ok_or_else(|| not_found("thing", name))?;
        let changed = thing.attributes != properties.attributes
            || thing.thing_type != properties.thing_type
            || thing.groups != properties.groups;
        if changed {
            thing.attributes = properties.attributes.clone();
            thing.thing_type = properties.thing_type.clone();
            thing.groups = properties.groups.clone();
            thing.version += 1;
            self.record_thing(&state, name);
        }
        Ok(())
    }

    /// Deletes a thing. A missing thing is not an error, as on AWS; one
    /// with principals attached is refused.
    pub fn delete_thing(
        &self,
        name: &str,
        expected_version: Option<i64>,
    ) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let Some(thing) = state.things.get(name) else {
            return Ok(());
        };
        if let Some(expected) = expected_version.filter(|v| *v != thing.version) {
            return Err(RegistryError::VersionConflict {
                name: name.to_owned(),
                expected,
                actual: thing.version,
            });
        }
        if !thing.principals.is_empty() {
            let reason = "it is still attached to one or more principals";
            return Err(delete_conflict("thing", name, reason));
        }
        state.things.remove(name);
        self.record(|| Change::ThingRemoved {
            name: name.to_owned(),
        });
        Ok(())
    }

    pub fn thing(&self, name: &str) -> Option<ThingRecord> {
        self.lock().things.get(name).cloned()
    }

    pub fn thing_count(&self) -> usize {
        self.lock().things.len()
    }

    pub fn things(&self) -> Vec<ThingRecord> {
        self.lock().things.values().cloned().collect()
    }

    pub fn attach_thing_principal(&self, thing: &str, cert_id: &str) -> Result<(), RegistryError> {
        let mut state = self.lock();
        if !state.certificates.contains_key(cert_id) {
            return Err(not_found("certificate", cert_id));
        }
        let record = state
            .things
            .get_mut(thing)
            .ok_or_else(|| not_found("thing", thing))?;
        record.principals.insert(cert_id.to_owned());
        if let Some(cert) = state.certificates.get_mut(cert_id) {
            cert.things.insert(thing.to_owned());
        }
        self.record_thing(&state, thing);
        self.record_certificate(&state, cert_id);
        Ok(())
    }

    /// Detaching a principal that is not attached succeeds, as on AWS.
    pub fn detach_thing_principal(&self, thing: &str, cert_id: &str) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let record = state
            .things
            .get_mut(thing)
            .ok_or_else(|| not_found("thing", thing))?;
        record.principals.remove(cert_id);
        if let Some(cert) = state.certificates.get_mut(cert_id) {
            cert.things.remove(thing);
        }
        self.record_thing(&state, thing);
        self.record_certificate(&state, cert_id);
        Ok(())
    }

    pub fn thing_principals(&self, thing: &str) -> Result<Vec<String>, RegistryError> {
        let state = self.lock();
        let record = state
            .things
            .get(thing)
            .ok_or_else(|| not_found("thing", thing))?;
        Ok(record.principals.iter().cloned().collect())
    }

    pub fn is_attached(&self, thing: &str, cert_id: &str) -> bool {
        self.lock()
            .things
            .get(thing)
            .is_some_and(|t| t.principals.contains(cert_id))
    }

    // ---- policies ----

    pub fn create_policy(&self, name: &str, document: &str) -> Result<PolicyRecord, RegistryError> {
        let parsed =
            PolicyDocument::parse(document).map_err(|e| RegistryError::MalformedPolicy {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        let mut state = self.lock();
        if state.policies.contains_key(name) {
            return Err(already_exists("policy", name));
        }
        let record = PolicyRecord {
            name: name.to_owned(),
            arn: self.arn("policy", name),
            document: document.to_owned(),
            parsed: Arc::new(parsed),
            created_at: SystemTime::now(),
        };
        state.policies.insert(name.to_owned(), record.clone());
        self.record(|| Change::Policy(StoredPolicy::from(&record)));
        Ok(record)
    }

    /// Deletes a policy that no certificate uses.
    pub fn delete_policy(&self, name: &str) -> Result<(), RegistryError> {
        let mut state = self.lock();
        if !state.policies.contains_key(name) {
            return Err(not_found("policy", name));
        }
        if state
            .certificates
            .values()
            .any(|c| c.policies.contains(name))
        {
            let reason = "the policy is attached to one or more principals";
            return Err(delete_conflict("policy", name, reason));
        }
        state.policies.remove(name);
        self.record(|| Change::PolicyRemoved {
            name: name.to_owned(),
        });
        Ok(())
    }

    /// The policies attached to a certificate, sorted by name.
    pub fn attached_policies(&self, cert_id: &str) -> Result<Vec<PolicyRecord>, RegistryError> {
        let state = self.lock();
        let cert = state
            .certificates
            .get(cert_id)
            .ok_or_else(|| not_found("certificate", cert_id))?;
        Ok(cert
            .policies
            .iter()
            .filter_map(|name| state.policies.get(name).cloned())
            .collect())
    }

    pub fn policy(&self, name: &str) -> Option<PolicyRecord> {
        self.lock().policies.get(name).cloned()
    }

    pub fn attach_policy(&self, policy: &str, cert_id: &str) -> Result<(), RegistryError> {
        let mut state = self.lock();
        if !state.policies.contains_key(policy) {
            return Err(not_found("policy", policy));
        }
        let cert = state
            .certificates
            .get_mut(cert_id)
            .ok_or_else(|| not_found("certificate", cert_id))?;
        if !cert.policies.contains(policy) && cert.policies.len() >= MAX_POLICIES_PER_CERTIFICATE {
            return Err(RegistryError::PolicyLimit {
                id: cert_id.to_owned(),
                limit: MAX_POLICIES_PER_CERTIFICATE,
            });
        }
        cert.policies.insert(policy.to_owned());
        self.record_certificate(&state, cert_id);
        Ok(())
    }

    pub fn detach_policy(&self, policy: &str, cert_id: &str) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let cert = state
            .certificates
            .get_mut(cert_id)
            .ok_or_else(|| not_found("certificate", cert_id))?;
        cert.policies.remove(policy);
        self.record_certificate(&state, cert_id);
        Ok(())
    }

    /// The parsed documents of every policy attached to the certificate.
    pub fn policies_of(&self, cert_id: &str) -> Vec<Arc<PolicyDocument>> {
        let state = self.lock();
        let Some(cert) = state.certificates.get(cert_id) else {
            return Vec::new();
        };
        cert.policies
            .iter()
            .filter_map(|name| state.policies.get(name))
            .map(|p| Arc::clone(&p.parsed))
            .collect()
    }

    // ---- provisioning templates ----

    pub fn create_template(
        &self,
        name: &str,
        description: &str,
        body: &str,
        enabled: bool,
        provisioning_role_arn: &str,
    ) -> Result<TemplateRecord, RegistryError> {
        let mut state = self.lock();
        if state.templates.contains_key(name) {
            return Err(already_exists("provisioning template", name));
        }
        let now = SystemTime::now();
        let record = TemplateRecord {
            name: name.to_owned(),
            arn: self.arn("provisioningtemplate", name),
            description: description.to_owned(),
            body: body.to_owned(),
            enabled,
            provisioning_role_arn: provisioning_role_arn.to_owned(),
            created_at: now,
            last_modified: now,
            pre_provisioning_hook: None,
        };
        state.templates.insert(name.to_owned(), record.clone());
        self.record(|| Change::Template(record.clone()));
        Ok(record)
    }

    pub fn template(&self, name: &str) -> Option<TemplateRecord> {
        self.lock().templates.get(name).cloned()
    }

    /// Applies UpdateProvisioningTemplate (and the hook of Create).
    pub fn update_template(
        &self,
        name: &str,
        update: TemplateUpdate,
    ) -> Result<TemplateRecord, RegistryError> {
        let mut state = self.lock();
        let record = state
            .templates
            .get_mut(name)
            .ok_or_else(|| not_found("provisioning template", name))?;
        if let Some(description) = update.description {
            record.description = description;
        }
        if let Some(enabled) = update.enabled {
            record.enabled = enabled;
        }
        if let Some(role) = update.provisioning_role_arn {
            record.provisioning_role_arn = role;
        }
        if let Some(hook) = update.pre_provisioning_hook {
            record.pre_provisioning_hook = hook;
        }
        record.last_modified = SystemTime::now();
        let record = record.clone();
        self.record(|| Change::Template(record.clone()));
        Ok(record)
    }

    pub fn delete_template(&self, name: &str) -> Result<(), RegistryError> {
        match self.lock().templates.remove(name) {
            Some(_) => {
                self.record(|| Change::TemplateRemoved {
                    name: name.to_owned(),
                });
                Ok(())
            }
            None => Err(not_found("provisioning template", name)),
        }
    }
}

fn already_exists(kind: &'static str, id: &str) -> RegistryError {
    RegistryError::AlreadyExists {
        kind,
        id: id.to_owned(),
    }
}

fn delete_conflict(kind: &'static str, id: &str, reason: &str) -> RegistryError {
    RegistryError::DeleteConflict {
        kind,
        id: id.to_owned(),
        reason: reason.to_owned(),
    }
}

fn not_found(kind: &'static str, id: &str) -> RegistryError {
    RegistryError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

/// A random 128-bit identifier in the 8-4-4-4-12 hex form AWS uses for ids.
pub(crate) fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
