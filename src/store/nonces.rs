//! Nonces of signed requests, each usable once per access key within the replay window.

use super::db::query;
use super::{Result, Store};

impl Store {
    /// Records `nonce` for `access_key_id` at `now`; false when that key used it since
    /// `forget_before` (a replay). Nonces older than that are forgotten first, so the table holds
    /// one window's worth. Two autocommit statements, outside the write lock every other write
    /// takes turns on: the insert is its own check (`ON CONFLICT`), and no other write touches
    /// this table, so a signed call never queues behind a fan-out's writer.
    pub async fn remember_nonce(&self, access_key_id: &str, nonce: &str, now: i64, forget_before: i64) -> Result<bool> {
        query("DELETE FROM signature_nonces WHERE seen_at < $1")
            .bind(forget_before)
            .execute(&self.pool)
            .await?;
        let added = query(
            "INSERT INTO signature_nonces (access_key_id, nonce, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (access_key_id, nonce) DO NOTHING",
        )
        .bind(access_key_id)
        .bind(nonce)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(added == 1)
    }
}

#[cfg(test)]
mod tests {
    crate::store::both_backends! {
    async fn a_nonce_is_fresh_once_per_key_until_forgotten(store) {
        assert!(store.remember_nonce("LTAIa", "n1", 1_000, 0).await.unwrap());
        assert!(!store.remember_nonce("LTAIa", "n1", 2_000, 0).await.unwrap(), "a replay");
        assert!(store.remember_nonce("LTAIb", "n1", 2_000, 0).await.unwrap(), "another key's nonce");
        assert!(store.remember_nonce("LTAIa", "n1", 9_000, 5_000).await.unwrap(), "forgotten after the window");
    }
    }
}
