//! Wakes job workers on every replica after an enqueue has committed: a `NOTIFY
//! callbridge_jobs` sent in a transaction of its own, never inside the enqueuing one (a NOTIFY
//! there serialises every commit behind a database-wide lock; docs/adr/0012). Rings coalesce:
//! at most one NOTIFY is in flight per process, at most one per `SPACING`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::NOTIFY_CHANNEL;
use crate::db::Db;

/// Workers claim in batches, so one wake-up per few milliseconds serves any rate of enqueues.
const SPACING: Duration = Duration::from_millis(5);

#[derive(Clone)]
pub struct Bell {
    rung: Arc<Notify>,
}

impl Bell {
    /// Starts the ringer; it stops with `shutdown`.
    pub fn start(db: Db, shutdown: CancellationToken) -> Self {
        let rung = Arc::new(Notify::new());
        let waiting = rung.clone();
        tokio::spawn(async move {
            // The wake-up is not data: it need not wait for a WAL flush. The channel name is
            // a constant, so it is spelled into the statement.
            let statement = format!(
                "begin; set local synchronous_commit = off; notify {NOTIFY_CHANNEL}; commit"
            );
            while shutdown
                .run_until_cancelled(waiting.notified())
                .await
                .is_some()
            {
                match db.client().await {
                    Ok(client) => {
                        if let Err(error) = client.batch_execute(&statement).await {
                            tracing::debug!(%error, "waking job workers failed; they poll");
                        }
                    }
                    Err(error) => tracing::debug!(%error, "waking job workers failed; they poll"),
                }
                tokio::time::sleep(SPACING).await;
            }
        });
        Self { rung }
    }

    /// Call after the enqueuing transaction committed. Never blocks; rings made while a
    /// NOTIFY is in flight become one more.
    pub fn ring(&self) {
        self.rung.notify_one();
    }
}
