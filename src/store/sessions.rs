//! Console login sessions. The cookie holds a random secret; only its hash is stored.

use super::db::query;
use super::{Result, Store, UserRow, now_ms};

/// A console login session with its user.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    #[sqlx(flatten)]
    pub user: UserRow,
    pub csrf: String,
    pub region_id: Option<String>,
    pub expires_at: i64,
}

impl Store {
    /// Starts a session for a user.
    pub async fn create_session(&self, id_hash: &str, user_id: i64, csrf: &str, expires_at: i64) -> Result<()> {
        query("INSERT INTO sessions (id_hash, user_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(id_hash)
            .bind(user_id)
            .bind(csrf)
            .bind(now_ms())
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The live session with this id hash and its enabled user.
    pub async fn session(&self, id_hash: &str) -> Result<Option<SessionRow>> {
        query(
            "SELECT u.*, s.csrf, s.region_id, s.expires_at FROM sessions s \
             JOIN users u ON u.id = s.user_id WHERE s.id_hash = $1 AND s.expires_at > $2 AND u.disabled = FALSE",
        )
        .bind(id_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
    }

    /// Remembers the region picked in a session.
    pub async fn set_session_region(&self, id_hash: &str, region_id: &str) -> Result<()> {
        query("UPDATE sessions SET region_id = $2 WHERE id_hash = $1")
            .bind(id_hash)
            .bind(region_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a session (and clears expired ones on the way).
    pub async fn delete_session(&self, id_hash: &str) -> Result<()> {
        query("DELETE FROM sessions WHERE id_hash = $1 OR expires_at <= $2")
            .bind(id_hash)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
