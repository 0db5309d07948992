//! Persistent sessions whose client is offline, by client id: the session state, the queue
//! that keeps receiving while the client is away, and when the session expires. This is the
//! state a persistent broker would write down; it is kept in memory here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::router::{ConnectionHandle, Delivery};
use super::session::Session;

/// One offline persistent session.
#[derive(Debug)]
pub struct ParkedSession {
    /// The router handle its subscriptions and queue are registered under.
    pub handle: Arc<ConnectionHandle>,
    pub session: Session,
    /// Messages routed to the session while its client was away.
    pub queue: mpsc::Receiver<Delivery>,
    pub expires_at: Instant,
}

#[derive(Debug, Default)]
pub struct ParkedSessions {
    sessions: Mutex<HashMap<String, ParkedSession>>,
}

impl ParkedSessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, ParkedSession>> {
        // Each operation is a single map call, so a poisoned map is still consistent.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn park(&self, parked: ParkedSession) {
        self.lock().insert(parked.handle.client_id.clone(), parked);
    }

    /// Removes and returns the session of `client_id`, even if expired (the caller discards
    /// an expired one like any other it does not resume).
    pub fn take(&self, client_id: &str) -> Option<ParkedSession> {
        self.lock().remove(client_id)
    }

    /// Removes and returns every session expired at `now`.
    pub fn take_expired(&self, now: Instant) -> Vec<ParkedSession> {
        let mut sessions = self.lock();
        let expired: Vec<String> = sessions
            .iter()
            .filter(|(_, parked)| parked.expires_at <= now)
            .map(|(client_id, _)| client_id.clone())
            .collect();
        expired
            .iter()
            .filter_map(|client_id| sessions.remove(client_id))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}
