//! The registry's write-ahead journal with group commit: changes are appended in memory
//! under the registry lock, and one writer task writes whatever has accumulated, fsyncs once
//! and then releases everyone waiting for those changes.
//!
//! A provisioning storm therefore pays one fsync per batch, not per change, while every
//! reply that waited on [`Journal::wait_durable`] is backed by bytes on disk.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{Change, JournalLine, PersistError};
use crate::emulator::registry::Registry;

/// Once the journal file grows past this, the writer folds it into a new snapshot.
pub const COMPACT_AFTER_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("registry journal cannot be written; changes are no longer durable")]
    Failed,
}

#[derive(Default)]
struct Pending {
    last_seq: u64,
    changes: Vec<JournalLine>,
}

/// The in-memory side of the journal, shared by the registry and the writer.
pub struct Journal {
    pending: Mutex<Pending>,
    wake: Notify,
    durable: watch::Sender<u64>,
    failed: AtomicBool,
}

impl Journal {
    /// A journal whose changes so far, up to `seq`, are already on disk.
    pub fn new(seq: u64) -> Journal {
        Journal {
            pending: Mutex::new(Pending {
                last_seq: seq,
                changes: Vec::new(),
            }),
            wake: Notify::new(),
            durable: watch::Sender::new(seq),
            failed: AtomicBool::new(false),
        }
    }

    /// Queues a change for the writer and returns its sequence number.
    pub fn append(&self, change: Change) -> u64 {
        let mut pending = self.lock();
        pending.last_seq += 1;
        let seq = pending.last_seq;
        pending.changes.push(JournalLine { seq, change });
        drop(pending);
        self.wake.notify_one();
        seq
    }

    /// The sequence number of the last change appended.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// Waits until the change numbered `seq` and every earlier one is on disk.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), JournalError> {
        let mut durable = self.durable.subscribe();
        loop {
            if self.failed.load(Ordering::Acquire) {
                return Err(JournalError::Failed);
            }
            if *durable.borrow_and_update() >= seq {
                return Ok(());
            }
            if durable.changed().await.is_err() {
                return Err(JournalError::Failed);
            }
        }
    }

    fn take(&self) -> Vec<JournalLine> {
        std::mem::take(&mut self.lock().changes)
    }

    fn mark_failed(&self) {
        self.failed.store(true, Ordering::Release);
        self.durable.send_modify(|_| {});
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Plain data behind the lock: a panic elsewhere leaves it usable.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The journal file and where the snapshot goes when it is compacted.
pub(super) struct JournalFile {
    pub file: File,
    pub len: u64,
    pub snapshot_path: PathBuf,
}

impl JournalFile {
    /// Appends the batch and fsyncs; returns the last sequence number written.
    fn write_batch(&mut self, batch: &[JournalLine]) -> Result<u64, PersistError> {
        let mut bytes = Vec::with_capacity(batch.len() * 512);
        for line in batch {
            serde_json::to_writer(&mut bytes, line).map_err(PersistError::encode)?;
            bytes.push(b'\n');
        }
        self.file.write_all(&bytes).map_err(PersistError::journal)?;
        self.file.sync_data().map_err(PersistError::journal)?;
        self.len += bytes.len() as u64;
        Ok(batch.last().map_or(0, |line| line.seq))
    }

    /// Writes the snapshot first and only then empties the journal: a crash in between
    /// replays changes the snapshot already holds, which is harmless because every
    /// change is a whole record.
    fn compact(&mut self, seq: u64, image: &super::RegistryImage) -> Result<(), PersistError> {
        super::write_snapshot(&self.snapshot_path, seq, image)?;
        self.file.set_len(0).map_err(PersistError::journal)?;
        self.file.sync_all().map_err(PersistError::journal)?;
        self.len = 0;
        Ok(())
    }
}

/// Writes batches until `stop`, then writes the last one and compacts.
pub(super) async fn run_writer(
    journal: Arc<Journal>,
    registry: Arc<Registry>,
    mut file: JournalFile,
    stop: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            () = journal.wake.notified() => false,
            () = stop.cancelled() => true,
        };
        file = match flush(&journal, &registry, file, stopping).await {
            Some(file) => file,
            None => return,
        };
        if stopping {
            return;
        }
    }
}

/// One group commit, then a compaction when the file is large or the emulator stops.
/// Returns None once the journal has failed: nothing further can be made durable.
async fn flush(
    journal: &Arc<Journal>,
    registry: &Arc<Registry>,
    mut file: JournalFile,
    stopping: bool,
) -> Option<JournalFile> {
    let batch = journal.take();
    let compact = stopping || file.len >= COMPACT_AFTER_BYTES;
    let image = compact.then(|| registry.image());
    let written = tokio::task::spawn_blocking(move || {
        let seq = file.write_batch(&batch)?;
        if let Some((image_seq, image)) = image {
            file.compact(image_seq, &image)?;
        }
        Ok::<_, PersistError>((seq, file))
    })
    .await;
    match written {
        Ok(Ok((seq, file))) => {
            journal
                .durable
                .send_modify(|durable| *durable = (*durable).max(seq));
            Some(file)
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "registry journal failed; replies that need durability are withheld");
            journal.mark_failed();
            None
        }
        Err(error) => {
            tracing::error!(%error, "registry journal writer panicked");
            journal.mark_failed();
            None
        }
    }
}
