//! The broker's shared tables: sessions by id, by client id and by certificate, and the
//! subscription index that routes a publish to the sessions whose filters match it. A parked
//! session (a persistent client that is offline) keeps its subscriptions and its queue here,
//! so messages published while it is away wait for it. Locks are held for map operations
//! only, never across an await or a policy evaluation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::session::min_qos;
use crate::emulator::topic::SubscriptionIndex;

pub type ConnectionId = u64;

/// A message queued for one connection; the receiving task checks `iot:Receive` before it
/// writes it out.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    /// Set only for a retained message sent because of a new subscription [MQTT-3.3.1-8].
    pub retain: bool,
}

/// Why the broker, not the client, ended a connection from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    DuplicateClientId,
    CertificateDeactivated,
}

/// What other tasks may do to a live connection: queue messages for it or close it.
#[derive(Debug)]
pub struct ConnectionHandle {
    pub id: ConnectionId,
    pub client_id: String,
    pub certificate_id: String,
    outbox: mpsc::Sender<Delivery>,
    kill: CancellationToken,
    eviction: OnceLock<Eviction>,
    /// Cancelled once the connection's task has finished closing (will sent, session
    /// parked), so a client taking over the id can wait for its session.
    finished: CancellationToken,
}

impl ConnectionHandle {
    pub fn new(
        id: ConnectionId,
        client_id: String,
        certificate_id: String,
        outbox: mpsc::Sender<Delivery>,
        kill: CancellationToken,
    ) -> ConnectionHandle {
        ConnectionHandle {
            id,
            client_id,
            certificate_id,
            outbox,
            kill,
            eviction: OnceLock::new(),
            finished: CancellationToken::new(),
        }
    }

    /// The same session under a new connection: same id and queue, fresh kill token.
    pub fn resumed(&self, kill: CancellationToken, certificate_id: String) -> ConnectionHandle {
        ConnectionHandle::new(
            self.id,
            self.client_id.clone(),
            certificate_id,
            self.outbox.clone(),
            kill,
        )
    }

    pub fn mark_finished(&self) {
        self.finished.cancel();
    }

    /// Resolves once the connection's task has finished closing.
    pub async fn finished(&self) {
        self.finished.cancelled().await;
    }

    /// Closes the connection; the first reason given is the one reported.
    pub fn evict(&self, reason: Eviction) {
        let _ = self.eviction.set(reason);
        self.kill.cancel();
    }

    /// Cancelled when the connection must close: eviction or broker shutdown.
    pub fn kill_token(&self) -> CancellationToken {
        self.kill.clone()
    }

    pub fn eviction(&self) -> Option<Eviction> {
        self.eviction.get().copied()
    }

    /// Queues a message without waiting; false when the queue is full or closed.
    pub fn offer(&self, delivery: Delivery) -> bool {
        self.outbox.try_send(delivery).is_ok()
    }
}

/// How a publish was routed, for the message counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub queued: usize,
    pub dropped: usize,
}

#[derive(Default)]
pub struct Router {
    tables: RwLock<Tables>,
}

#[derive(Default)]
struct Tables {
    connections: HashMap<ConnectionId, Arc<ConnectionHandle>>,
    by_client: HashMap<String, ConnectionId>,
    by_certificate: HashMap<String, HashSet<ConnectionId>>,
    subscriptions: SubscriptionIndex<ConnectionId, QoS>,
    /// Sessions whose client is offline; they still receive into their queue.
    parked: HashSet<ConnectionId>,
}

impl Router {
    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        // The tables hold plain data and every write completes or panics before any
        // invariant is half-updated, so a poisoned lock is still consistent.
        self.tables
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Connections online (parked sessions excluded).
    pub fn len(&self) -> usize {
        let tables = self.read();
        tables.connections.len() - tables.parked.len()
    }

    /// The online connection of a client id, if any.
    pub fn online(&self, client_id: &str) -> Option<Arc<ConnectionHandle>> {
        let tables = self.read();
        let id = tables.by_client.get(client_id)?;
        if tables.parked.contains(id) {
            return None;
        }
        tables.connections.get(id).cloned()
    }

    /// Adds a connection (or a resumed session under its old id) and returns the online
    /// one it displaces with the same client id.
    pub fn register(&self, handle: Arc<ConnectionHandle>) -> Option<Arc<ConnectionHandle>> {
        let mut tables = self.write();
        let tables = &mut *tables;
        tables.parked.remove(&handle.id);
        tables
            .by_certificate
            .entry(handle.certificate_id.clone())
            .or_default()
            .insert(handle.id);
        let displaced = tables.by_client.insert(handle.client_id.clone(), handle.id);
        let id = handle.id;
        tables.connections.insert(id, handle);
        displaced
            .filter(|displaced| *displaced != id && !tables.parked.contains(displaced))
            .and_then(|displaced| tables.connections.get(&displaced).cloned())
    }

    /// Keeps an offline persistent session routable: its subscriptions stay and messages
    /// queue in its outbox, but it no longer counts as a connection of its certificate.
    pub fn park(&self, handle: &ConnectionHandle) {
        let mut tables = self.write();
        tables.parked.insert(handle.id);
        remove_from_certificate(&mut tables, handle);
    }

    /// Removes a connection and its subscriptions (`filters`).
    pub fn unregister<'a>(
        &self,
        handle: &ConnectionHandle,
        filters: impl Iterator<Item = &'a str>,
    ) {
        let mut tables = self.write();
        for filter in filters {
            tables.subscriptions.remove(filter, &handle.id);
        }
        tables.connections.remove(&handle.id);
        tables.parked.remove(&handle.id);
        if tables.by_client.get(&handle.client_id) == Some(&handle.id) {
            tables.by_client.remove(&handle.client_id);
        }
        remove_from_certificate(&mut tables, handle);
    }

    pub fn subscribe(&self, id: ConnectionId, filter: &str, qos: QoS) {
        self.write().subscriptions.insert(filter, id, qos);
    }

    pub fn unsubscribe(&self, id: ConnectionId, filter: &str) {
        self.write().subscriptions.remove(filter, &id);
    }

    pub fn connections_of(&self, certificate_id: &str) -> Vec<Arc<ConnectionHandle>> {
        let tables = self.read();
        let Some(ids) = tables.by_certificate.get(certificate_id) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| tables.connections.get(id).cloned())
            .collect()
    }

    /// Every online connection.
    pub fn all(&self) -> Vec<Arc<ConnectionHandle>> {
        let tables = self.read();
        let online = |handle: &&Arc<ConnectionHandle>| !tables.parked.contains(&handle.id);
        tables
            .connections
            .values()
            .filter(online)
            .cloned()
            .collect()
    }

    /// Queues `payload` for every connection subscribed to `topic`, once per connection at
    /// the highest QoS among its matching subscriptions, capped by the publish QoS.
    pub fn route(&self, topic: &str, payload: &Bytes, qos: QoS) -> Routed {
        let targets = self.targets(topic);
        let topic: Arc<str> = topic.into();
        let mut routed = Routed::default();
        for (handle, granted) in targets {
            let delivery = Delivery {
                topic: Arc::clone(&topic),
                payload: payload.clone(),
                qos: min_qos(qos, granted),
                retain: false,
            };
            if handle.offer(delivery) {
                routed.queued += 1;
            } else {
                routed.dropped += 1;
            }
        }
        routed
    }

    fn targets(&self, topic: &str) -> Vec<(Arc<ConnectionHandle>, QoS)> {
        let tables = self.read();
        let mut best: HashMap<ConnectionId, QoS> = HashMap::new();
        for (id, qos) in tables.subscriptions.matches(topic) {
            let entry = best.entry(id).or_insert(qos);
            if (qos as u8) > (*entry as u8) {
                *entry = qos;
            }
        }
        best.into_iter()
            .filter_map(|(id, qos)| Some((tables.connections.get(&id)?.clone(), qos)))
            .collect()
    }
}

fn remove_from_certificate(tables: &mut Tables, handle: &ConnectionHandle) {
    if let Some(ids) = tables.by_certificate.get_mut(&handle.certificate_id) {
        ids.remove(&handle.id);
        if ids.is_empty() {
            tables.by_certificate.remove(&handle.certificate_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(
        id: ConnectionId,
        client: &str,
        cert: &str,
    ) -> (Arc<ConnectionHandle>, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(4);
        let handle =
            ConnectionHandle::new(id, client.into(), cert.into(), tx, CancellationToken::new());
        (Arc::new(handle), rx)
    }

    #[test]
    fn a_second_registration_of_a_client_id_returns_the_first() {
        let router = Router::default();
        let (first, _rx1) = handle(1, "dev", "c1");
        let (second, _rx2) = handle(2, "dev", "c1");
        assert!(router.register(first).is_none());
        let displaced = router
            .register(Arc::clone(&second))
            .expect("first is displaced");
        assert_eq!(displaced.id, 1);
        router.unregister(&displaced, std::iter::empty());
        assert_eq!(router.len(), 1);
        assert_eq!(router.connections_of("c1").len(), 1);
        router.unregister(&second, std::iter::empty());
        assert_eq!(router.len(), 0);
        assert!(router.connections_of("c1").is_empty());
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
        let router = Router::default();
        let (sub, mut rx) = handle(1, "sub", "c1");
        router.register(sub);
        router.subscribe(1, "a/+", QoS::AtMostOnce);
        router.subscribe(1, "a/#", QoS::AtLeastOnce);
        let routed = router.route("a/b", &Bytes::from_static(b"x"), QoS::AtLeastOnce);
        assert_eq!(
            routed,
            Routed {
                queued: 1,
                dropped: 0
            }
        );
        assert_eq!(rx.try_recv().expect("one delivery").qos, QoS::AtLeastOnce);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking_the_publisher() {
        let router = Router::default();
        let (sub, _rx) = handle(1, "sub", "c1");
        router.register(sub);
        router.subscribe(1, "t", QoS::AtMostOnce);
        for _ in 0..4 {
            router.route("t", &Bytes::new(), QoS::AtMostOnce);
        }
        let routed = router.route("t", &Bytes::new(), QoS::AtMostOnce);
        assert_eq!(
            routed,
            Routed {
                queued: 0,
                dropped: 1
            }
        );
    }

    #[test]
    fn eviction_keeps_the_first_reason() {
        let (conn, _rx) = handle(1, "dev", "c1");
        conn.evict(Eviction::CertificateDeactivated);
        conn.evict(Eviction::DuplicateClientId);
        assert_eq!(conn.eviction(), Some(Eviction::CertificateDeactivated));
        assert!(conn.kill.is_cancelled());
    }
}
