//! The replica's ledger writer: callers hand entries to [`Recorder::record`] (a push onto a
//! list, never a wait), and one task per replica writes everything pending every
//! [`FLUSH_EVERY`] in one statement. A media stream that ends then costs no task, no pooled
//! connection and no statement of its own, like the batched heartbeats
//! (docs/adr/0038-one-round-trip-per-request.md, docs/USAGE.md "Cost of the ledger").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Entry;
use crate::db::Db;

/// How often pending entries are written: a row appears in the ledger at most this long
/// after its source event (plus a retry after a failed write).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Entries kept while the database cannot take them. Past it the oldest are logged at ERROR
/// with their keys (for an operator to replay) and dropped, so an outage cannot grow the
/// process without bound.
const MAX_PENDING: usize = 100_000;

/// Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct Recorder {
    enabled: bool,
    db: Db,
    pending: Arc<Mutex<Vec<Entry>>>,
    /// Held for the whole of a write, so [`Self::flush`] also waits for one under way.
    writing: Arc<tokio::sync::Mutex<()>>,
}

impl Recorder {
    /// Starts the writer; `enabled` false (`USAGE_LEDGER=false`) records nothing. The writer
    /// stops once the last clone is gone; what is pending then is written by
    /// [`Self::flush`], which shutdown awaits after the media bridges have ended.
    pub fn start(db: Db, enabled: bool) -> Self {
        let recorder = Self {
            enabled,
            db,
            pending: Arc::default(),
            writing: Arc::default(),
        };
        if enabled {
            let (db, writing) = (recorder.db.clone(), recorder.writing.clone());
            let pending = Arc::downgrade(&recorder.pending);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(FLUSH_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let Some(pending) = pending.upgrade() else {
                        return;
                    };
                    write_pending(&db, &pending, &writing).await;
                }
            });
        }
        recorder
    }

    /// Queues `entries` for the next write.
    pub fn record(&self, entries: Vec<Entry>) {
        if !self.enabled || entries.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.extend(entries);
        let excess = pending.len().saturating_sub(MAX_PENDING);
        if excess > 0 {
            let dropped: Vec<Entry> = pending.drain(..excess).collect();
            drop(pending);
            let keys: Vec<&str> = dropped.iter().map(|e| e.source_key.as_str()).collect();
            tracing::error!(
                ?keys,
                "usage could not be recorded: too many pending entries"
            );
        }
    }

    /// Writes what is pending now, after any write under way (shutdown, tests).
    pub async fn flush(&self) {
        if self.enabled {
            write_pending(&self.db, &self.pending, &self.writing).await;
        }
    }

    /// Entries waiting for the next write.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One write of everything pending, in one statement; on failure the entries go back for
/// the next write.
async fn write_pending(db: &Db, pending: &Mutex<Vec<Entry>>, writing: &tokio::sync::Mutex<()>) {
    let _writing = writing.lock().await;
    let entries = std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()));
    if entries.is_empty() {
        return;
    }
    let outcome = async {
        let client = db.client().await?;
        // Prepared once per connection: unprepared, each write would be three round trips.
        let statement = db.prepare(&client, super::RECORD_SQL).await?;
        super::record_with(&client, &statement, &entries).await
    }
    .await;
    match outcome {
        Ok(_) => {}
        Err(error) if error.is_unavailable() => {
            tracing::warn!(%error, entries = entries.len(), "recording usage failed; retrying with the next write");
            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
            let newer = std::mem::replace(&mut *pending, entries);
            pending.extend(newer);
        }
        Err(error) => {
            // The database refused the batch itself: write the entries one by one, so one
            // bad entry cannot hold back the others, and name those it refuses.
            tracing::warn!(%error, entries = entries.len(), "a batch of usage was refused; writing its entries one by one");
            for entry in entries {
                let outcome = match db.client().await {
                    Ok(client) => super::record(&client, std::slice::from_ref(&entry)).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = outcome {
                    tracing::error!(%error, key = %entry.source_key, "usage could not be recorded");
                }
            }
        }
    }
}
