//! One `LISTEN` connection per process, on the unpooled URL, shared by everything that waits
//! for Postgres notifications (job workers, live call events). It reconnects with backoff;
//! after each (re)connection it broadcasts `Reconnected` so subscribers re-read whatever they
//! might have missed from the durable tables. Notifications only carry ids.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;

#[derive(Debug, Clone)]
pub enum Notice {
    Notification {
        channel: String,
        payload: String,
    },
    /// The connection was (re)established: anything may have been missed before it.
    Reconnected,
}

#[derive(Clone)]
pub struct Listener {
    sender: broadcast::Sender<Notice>,
}

impl Listener {
    /// Starts listening on `channels` in the background until `shutdown`.
    pub fn start(url: Secret<String>, channels: &[&str], shutdown: CancellationToken) -> Self {
        let (sender, _) = broadcast::channel(4096);
        let listener = Self { sender };
        let statements: String = channels.iter().map(|c| format!("listen {c};")).collect();
        let task_sender = listener.sender.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            while !shutdown.is_cancelled() {
                match listen_once(url.expose(), &statements, &task_sender, &shutdown).await {
                    Ok(()) => delay = Duration::from_millis(200),
                    Err(error) => {
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "LISTEN connection failed");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        });
        listener
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
    }
}

async fn listen_once(
    url: &str,
    statements: &str,
    sender: &broadcast::Sender<Notice>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let config = super::pg_config(url)?;
    let (client, mut connection) = config.connect(crate::tls::postgres_connector()).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let forward = async {
        while let Some(message) = messages.next().await {
            match message? {
                AsyncMessage::Notification(note) => {
                    let _ = sender.send(Notice::Notification {
                        channel: note.channel().to_owned(),
                        payload: note.payload().to_owned(),
                    });
                }
                AsyncMessage::Notice(_) => {}
                _ => {}
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    tokio::pin!(forward);
    // The connection must be driven while LISTEN runs, so race the two.
    tokio::select! {
        result = &mut forward => return Ok(result?),
        result = client.batch_execute(statements) => result?,
    }
    let _ = sender.send(Notice::Reconnected);
    tokio::select! {
        result = &mut forward => Ok(result?),
        () = shutdown.cancelled() => Ok(()),
    }
}
