//! Notes between replicas over PostgreSQL's LISTEN/NOTIFY: references only (an invocation id),
//! the bodies stay in the tables. A note is a hint that something changed, never the only
//! record of it: a listener that lost its connection is told to resynchronise from the tables.
//! On SQLite there is one process and nothing to tell.

use super::db::{Pool, query};
use super::{Result, Store};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The one channel every replica listens on.
const CHANNEL: &str = "fleetrun";

/// How often an idle listener checks its connection (a half-open TCP connection never errors).
const PING_EVERY: Duration = Duration::from_secs(5);

/// What one replica tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Note {
    /// An invocation has tasks for agents that may be held by another replica.
    Run { invoke_id: String },
    /// Results of an invocation were stopped: their agents must be told.
    Stop { invoke_id: String },
    /// An invocation's output or statuses changed: its watchers catch up from the tables.
    Changed { invoke_id: String },
}

/// A note as received, or the news that some may have been missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Note(Note),
    /// The listening connection was lost and made again: notes sent meanwhile are gone, so
    /// whatever they would have said must be read from the tables.
    Resync,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The replica that sent it, which ignores its own notes.
    from: String,
    #[serde(flatten)]
    note: Note,
}

impl Store {
    /// Sends notes to every other replica (nothing on SQLite). Delivered once committed.
    pub async fn notify(&self, from: &str, notes: &[Note]) -> Result<()> {
        if !self.is_shared() || notes.is_empty() {
            return Ok(());
        }
        let payloads: Vec<String> = notes
            .iter()
            .filter_map(|note| {
                serde_json::to_string(&Envelope {
                    from: from.to_string(),
                    note: note.clone(),
                })
                .ok()
            })
            .collect();
        query("SELECT pg_notify($1, value) FROM json_each($2)")
            .bind(CHANNEL)
            .bind(sqlx::types::Json(&payloads))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Listens for other replicas' notes until `shutdown`; `None` on SQLite. The connection is
    /// pinged while idle and made again when lost, with [`Heard::Resync`] after each loss.
    pub fn listen(&self, me: &str, shutdown: CancellationToken) -> Option<mpsc::Receiver<Heard>> {
        let Pool::Postgres(pool) = &self.pool else {
            return None;
        };
        let (tx, rx) = mpsc::channel(4096);
        let (pool, me) = (pool.clone(), me.to_string());
        tokio::spawn(async move {
            let mut first = true;
            while !shutdown.is_cancelled() {
                if !first && tx.send(Heard::Resync).await.is_err() {
                    return;
                }
                first = false;
                if let Err(e) = listen_once(&pool, &me, &tx, &shutdown).await {
                    tracing::warn!(error = %e, "lost the connection that hears other replicas; listening again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        });
        Some(rx)
    }
}

/// Listens on one connection until it fails (an error) or `shutdown` (Ok).
async fn listen_once(
    pool: &sqlx::PgPool,
    me: &str,
    tx: &mpsc::Sender<Heard>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            heard = tokio::time::timeout(PING_EVERY, listener.try_recv()) => match heard {
                Ok(Ok(Some(notification))) => {
                    let Ok(envelope) = serde_json::from_str::<Envelope>(notification.payload()) else {
                        tracing::warn!(payload = notification.payload(), "ignoring a note this version does not know");
                        continue;
                    };
                    if envelope.from != me && tx.send(Heard::Note(envelope.note)).await.is_err() {
                        return Ok(());
                    }
                }
                // The connection was lost (sqlx made a new one): notes sent meanwhile are gone,
                // so this counts as a loss, followed by a resync.
                Ok(Ok(None)) => return Err(super::Error::Database(sqlx::Error::PoolClosed)),
                Ok(Err(e)) => return Err(e.into()),
                Err(_idle) => {
                    sqlx::query("SELECT 1").execute(&mut listener).await?;
                }
            }
        }
    }
}
