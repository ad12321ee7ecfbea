//! AccessKey pairs for the ECS API. Their secrets arrive here sealed (`dispatch::sealing`) and
//! leave sealed: nothing in this file sees a secret. The per-account limit is checked inside
//! the write transaction that inserts, so two requests at once cannot both pass it.

use super::db::{query, query_scalar};
use super::{Error, Result, Store, UserRow, changed_one, now_ms};

/// An AccessKey pair, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AccessKeyRow {
    /// `LTAI…`, sent in clear by clients.
    pub id: String,
    pub user_id: i64,
    pub description: String,
    /// While false, requests the key signs are refused.
    pub enabled: bool,
    pub created_at: i64,
    /// The last request it signed that verified, to the minute; `None` before the first.
    pub last_used_at: Option<i64>,
}

/// An AccessKey as a signature check needs it: its row, its sealed secret and its account.
#[derive(Debug, Clone)]
pub struct SealedAccessKey {
    pub key: AccessKeyRow,
    /// `nonce || ciphertext || tag`, opened with the server's secret key and the key id.
    pub sealed_secret: Vec<u8>,
    pub user: UserRow,
}

#[derive(sqlx::FromRow)]
struct SealedRow {
    #[sqlx(flatten)]
    key: AccessKeyRow,
    sealed_secret: Vec<u8>,
}

const COLUMNS: &str = "id, user_id, description, enabled, created_at, last_used_at";

/// How stale `last_used_at` may get: a key signing many requests writes it once a minute,
/// not once a request.
const USED_RESOLUTION_MS: i64 = 60_000;

impl Store {
    /// Stores a new AccessKey of a user, unless the user has `limit` already (`Quota`).
    pub async fn create_access_key(
        &self,
        user_id: i64,
        id: &str,
        description: &str,
        sealed_secret: &[u8],
        limit: u64,
    ) -> Result<AccessKeyRow> {
        let mut tx = self.write_tx().await?;
        let used: i64 = query_scalar("SELECT COUNT(*) FROM access_keys WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut tx)
            .await?;
        if used as u64 >= limit {
            return Err(Error::Quota {
                name: "access_keys",
                used: used as u64,
                limit,
            });
        }
        let sql = format!(
            "INSERT INTO access_keys (id, user_id, description, sealed_secret, enabled, created_at) \
             VALUES ($1, $2, $3, $4, TRUE, $5) RETURNING {COLUMNS}"
        );
        let row = query(&sql)
            .bind(id)
            .bind(user_id)
            .bind(description)
            .bind(sealed_secret)
            .bind(now_ms())
            .fetch_one(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// A user's AccessKeys, oldest first.
    pub async fn list_access_keys(&self, user_id: i64) -> Result<Vec<AccessKeyRow>> {
        query(&format!(
            "SELECT {COLUMNS} FROM access_keys WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
    }

    /// Enables or disables one of a user's AccessKeys; `NotFound` when it is not theirs.
    pub async fn set_access_key_enabled(&self, user_id: i64, id: &str, enabled: bool) -> Result<AccessKeyRow> {
        query(&format!(
            "UPDATE access_keys SET enabled = $3 WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(user_id)
        .bind(enabled)
        .fetch_one(&self.pool)
        .await
    }

    /// Deletes one of a user's AccessKeys; `NotFound` when it is not theirs.
    pub async fn delete_access_key(&self, user_id: i64, id: &str) -> Result<()> {
        changed_one(
            query("DELETE FROM access_keys WHERE id = $1 AND user_id = $2")
                .bind(id)
                .bind(user_id)
                .execute(&self.pool)
                .await?,
        )
    }

    /// The AccessKey with this id, with its sealed secret and its account, if it exists.
    pub async fn access_key(&self, id: &str) -> Result<Option<SealedAccessKey>> {
        let row: Option<SealedRow> = query(&format!(
            "SELECT {COLUMNS}, sealed_secret FROM access_keys WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(SealedRow { key, sealed_secret }) = row else {
            return Ok(None);
        };
        // None when the account was deleted in between, which deleted the key too.
        let user: Option<UserRow> = query("SELECT * FROM users WHERE id = $1")
            .bind(key.user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(user.map(|user| SealedAccessKey {
            key,
            sealed_secret,
            user,
        }))
    }

    /// Records that the key signed a request at `at` (ms), unless it was recorded within the
    /// last minute.
    pub async fn mark_access_key_used(&self, id: &str, at: i64) -> Result<()> {
        query(
            "UPDATE access_keys SET last_used_at = $2 \
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at <= $3)",
        )
        .bind(id)
        .bind(at)
        .bind(at - USED_RESOLUTION_MS)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Role;

    async fn key(store: &Store, user_id: i64, id: &str) -> Result<AccessKeyRow> {
        store.create_access_key(user_id, id, "ci", b"sealed", 2).await
    }

    crate::store::both_backends! {
    async fn an_account_holds_at_most_its_limit_of_access_keys(store) {
        let ann = store.create_user("ann", "h", Role::Viewer).await.unwrap();
        let bob = store.create_user("bob", "h", Role::Operator).await.unwrap();
        key(&store, ann.id, "LTAIann1").await.unwrap();
        key(&store, ann.id, "LTAIann2").await.unwrap();

        let third = key(&store, ann.id, "LTAIann3").await;
        let bobs = key(&store, bob.id, "LTAIbob1").await;
        store.delete_access_key(ann.id, "LTAIann1").await.unwrap();
        let after_delete = key(&store, ann.id, "LTAIann3").await;

        assert!(
            matches!(third, Err(Error::Quota { name: "access_keys", used: 2, limit: 2 })),
            "{third:?}"
        );
        assert!(bobs.is_ok(), "the limit is per account");
        assert!(after_delete.is_ok());
        let ids: Vec<String> = store.list_access_keys(ann.id).await.unwrap().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, ["LTAIann2", "LTAIann3"]);
    }
    }

    crate::store::both_backends! {
    async fn only_its_owner_disables_enables_or_deletes_a_key(store) {
        let ann = store.create_user("ann", "h", Role::Viewer).await.unwrap();
        let bob = store.create_user("bob", "h", Role::Admin).await.unwrap();
        let created = key(&store, ann.id, "LTAIann1").await.unwrap();

        let by_bob = store.set_access_key_enabled(bob.id, &created.id, false).await;
        let disabled = store.set_access_key_enabled(ann.id, &created.id, false).await.unwrap();
        let looked_up = store.access_key(&created.id).await.unwrap().unwrap();
        let enabled = store.set_access_key_enabled(ann.id, &created.id, true).await.unwrap();
        let deleted_by_bob = store.delete_access_key(bob.id, &created.id).await;
        store.delete_access_key(ann.id, &created.id).await.unwrap();

        assert!(created.enabled && created.last_used_at.is_none());
        assert!(matches!(by_bob, Err(Error::NotFound)));
        assert!(!disabled.enabled);
        assert!(!looked_up.key.enabled);
        assert_eq!(looked_up.sealed_secret, b"sealed");
        assert_eq!(looked_up.user.username, "ann");
        assert!(enabled.enabled);
        assert!(matches!(deleted_by_bob, Err(Error::NotFound)));
        assert!(store.access_key(&created.id).await.unwrap().is_none());
        assert!(matches!(store.delete_access_key(ann.id, &created.id).await, Err(Error::NotFound)));
    }
    }

    crate::store::both_backends! {
    async fn deleting_an_account_deletes_its_access_keys(store) {
        store.create_user("root", "h", Role::Admin).await.unwrap();
        let ann = store.create_user("ann", "h", Role::Operator).await.unwrap();
        key(&store, ann.id, "LTAIann1").await.unwrap();

        store.delete_user("ann").await.unwrap();

        assert!(store.access_key("LTAIann1").await.unwrap().is_none());
        assert!(store.list_access_keys(ann.id).await.unwrap().is_empty());
    }
    }

    crate::store::both_backends! {
    async fn use_is_recorded_to_the_minute(store) {
        let ann = store.create_user("ann", "h", Role::Viewer).await.unwrap();
        key(&store, ann.id, "LTAIann1").await.unwrap();
        let t = now_ms();
        let last_used = || async { store.access_key("LTAIann1").await.unwrap().unwrap().key.last_used_at };

        store.mark_access_key_used("LTAIann1", t).await.unwrap();
        let first = last_used().await;
        store.mark_access_key_used("LTAIann1", t + 1_000).await.unwrap();
        let within_a_minute = last_used().await;
        store.mark_access_key_used("LTAIann1", t + 60_000).await.unwrap();
        let a_minute_later = last_used().await;

        assert_eq!(first, Some(t));
        assert_eq!(within_a_minute, Some(t));
        assert_eq!(a_minute_later, Some(t + 60_000));
    }
    }
}
