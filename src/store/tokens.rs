//! API tokens. Only a hash of each secret is stored.

use super::db::{query, query_scalar};
use super::{Result, Store, UserRow, changed_one, now_ms};

/// An API token, without its secret.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub user_id: i64,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub expires_at: Option<i64>,
}

impl Store {
    /// Stores a new token for a user.
    pub async fn create_token(
        &self,
        user_id: i64,
        name: &str,
        secret_hash: &str,
        expires_at: Option<i64>,
    ) -> Result<TokenRow> {
        query(
            "INSERT INTO api_tokens (id, user_id, name, secret_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING id, user_id, name, created_at, last_used_at, expires_at",
        )
        .bind(super::ids::new_id("tok"))
        .bind(user_id)
        .bind(name)
        .bind(secret_hash)
        .bind(now_ms())
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await
    }

    /// The enabled user behind a live (unrevoked, unexpired) token, marking the token used.
    pub async fn user_by_token(&self, secret_hash: &str) -> Result<Option<UserRow>> {
        let now = now_ms();
        let user_id: Option<i64> = query_scalar(
            "UPDATE api_tokens SET last_used_at = $2 \
             WHERE secret_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2) \
             RETURNING user_id",
        )
        .bind(secret_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(user_id) = user_id else { return Ok(None) };
        query("SELECT * FROM users WHERE id = $1 AND disabled = FALSE")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
    }

    /// A user's live tokens, newest first.
    pub async fn list_tokens(&self, user_id: i64) -> Result<Vec<TokenRow>> {
        query(
            "SELECT id, user_id, name, created_at, last_used_at, expires_at FROM api_tokens \
             WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
    }

    /// Revokes one of a user's tokens; `NotFound` when it is not theirs or already revoked.
    pub async fn revoke_token(&self, user_id: i64, token_id: &str) -> Result<()> {
        changed_one(
            query("UPDATE api_tokens SET revoked_at = $3 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL")
                .bind(token_id)
                .bind(user_id)
                .bind(now_ms())
                .execute(&self.pool)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Error, Role};

    crate::store::both_backends! {
    async fn a_revoked_or_expired_token_finds_no_user(store) {
        let user = store.create_user("ann", "hash", Role::Operator).await.unwrap();
        let live = store.create_token(user.id, "ci", "h1", None).await.unwrap();
        store
            .create_token(user.id, "old", "h2", Some(now_ms() - 1))
            .await
            .unwrap();

        assert_eq!(store.user_by_token("h1").await.unwrap().unwrap().username, "ann");
        assert!(store.user_by_token("h2").await.unwrap().is_none());
        store.revoke_token(user.id, &live.id).await.unwrap();
        assert!(store.user_by_token("h1").await.unwrap().is_none());
        assert!(matches!(
            store.revoke_token(user.id, &live.id).await,
            Err(Error::NotFound)
        ));
    }
    }
}
