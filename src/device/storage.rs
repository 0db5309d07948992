//! The device's credential writes, made to outlive the device task. A
//! crash aborts the task wherever it is, but a file write in progress runs
//! to its end (as a rename a real process has already issued does), and the
//! restarted device reads its store only once those writes are done: each
//! operation runs in its own task holding the device's store lock.

use std::sync::Arc;

use tokio::sync::Mutex;

use super::task::Device;
use crate::identity::store::{CredentialStore, StoredIdentity};
use crate::identity::{Credentials, IdentityError};

/// Serializes one device's store operations across its restarts.
pub(super) type StoreLock = Arc<Mutex<()>>;

impl Device {
    pub(super) async fn store_install(
        &self,
        credentials: &Credentials,
    ) -> Result<(), IdentityError> {
        let credentials = credentials.clone();
        self.with_store(
            move |store, serial| async move { store.install(&serial, &credentials).await },
        )
        .await
    }

    pub(super) async fn store_forget_previous(&self) -> Result<(), IdentityError> {
        self.with_store(|store, serial| async move { store.forget_previous(&serial).await })
            .await
    }

    pub(super) async fn store_load(&self) -> Result<Option<StoredIdentity>, IdentityError> {
        self.with_store(|store, serial| async move { store.load(&serial).await })
            .await
    }

    async fn with_store<T, F>(
        &self,
        operation: impl FnOnce(CredentialStore, String) -> F,
    ) -> Result<T, IdentityError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, IdentityError>> + Send + 'static,
    {
        let lock = Arc::clone(&self.store_lock);
        let work = operation(self.ctx.store.clone(), self.serial.clone());
        let task = tokio::spawn(async move {
            let _held = lock.lock_owned().await;
            work.await
        });
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}
