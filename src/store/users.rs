//! Accounts, API tokens and the audit log.

use super::{Result, Store, now_ms};
use sqlx::Row;

/// What an account may do. Ordered: each role may do everything of the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read only.
    Viewer,
    /// Run and stop commands, manage retained commands.
    Operator,
    /// Everything, including users, activations and instances.
    Admin,
}

impl Role {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An account.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
    pub disabled: bool,
}

/// An API token, without its secret.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: String,
    pub user_id: i64,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub expires_at: Option<i64>,
}

/// An audit entry to record.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub username: &'a str,
    pub source_ip: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub detail: &'a str,
}

/// A recorded audit entry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub at: i64,
    pub username: String,
    pub source_ip: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// Filters of the audit log listing.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub username: Option<String>,
    pub action: Option<String>,
    pub since_ms: Option<i64>,
    pub offset: u64,
    pub limit: u64,
}

fn user_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<UserRow> {
    let role: String = row.try_get("role")?;
    Ok(UserRow {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        role: Role::parse(&role).ok_or_else(|| super::Error::Corrupt(format!("role {role:?}")))?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
    })
}

impl Store {
    /// Number of accounts (0 on a fresh database).
    pub async fn count_users(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// Creates an account; `Conflict` when the name is taken.
    pub async fn create_user(&self, username: &str, password_hash: &str, role: Role) -> Result<i64> {
        let id = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, role, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(username)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// The account with this name, if any.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>> {
        let row = sqlx::query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Stores a new token for a user.
    pub async fn create_token(
        &self,
        user_id: i64,
        name: &str,
        secret_hash: &str,
        expires_at: Option<i64>,
    ) -> Result<TokenRow> {
        let id = super::ids::new_id("tok");
        let created_at = now_ms();
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, name, secret_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(user_id)
        .bind(name)
        .bind(secret_hash)
        .bind(created_at)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(TokenRow {
            id,
            user_id,
            name: name.into(),
            created_at,
            last_used_at: None,
            expires_at,
        })
    }

    /// The enabled user behind a live (unrevoked, unexpired) token, marking the token used.
    pub async fn user_by_token(&self, secret_hash: &str) -> Result<Option<UserRow>> {
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE api_tokens SET last_used_at = $2 \
             WHERE secret_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2) \
             RETURNING user_id",
        )
        .bind(secret_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let user_id: i64 = row.try_get("user_id")?;
        let user = sqlx::query("SELECT * FROM users WHERE id = $1 AND disabled = 0")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        user.as_ref().map(user_from_row).transpose()
    }

    /// A user's live tokens, newest first.
    pub async fn list_tokens(&self, user_id: i64) -> Result<Vec<TokenRow>> {
        let rows = sqlx::query(
            "SELECT id, user_id, name, created_at, last_used_at, expires_at FROM api_tokens \
             WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenRow {
                    id: r.try_get("id")?,
                    user_id: r.try_get("user_id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect()
    }

    /// Revokes one of a user's tokens; `NotFound` when it is not theirs or already revoked.
    pub async fn revoke_token(&self, user_id: i64, token_id: &str) -> Result<()> {
        let done =
            sqlx::query("UPDATE api_tokens SET revoked_at = $3 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL")
                .bind(token_id)
                .bind(user_id)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(super::Error::NotFound);
        }
        Ok(())
    }

    /// Appends an audit entry.
    pub async fn audit(&self, entry: NewAudit<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, username, source_ip, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(now_ms())
        .bind(entry.username)
        .bind(entry.source_ip)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Audit entries matching the filter, newest first, and the total matching.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<(Vec<AuditRow>, u64)> {
        const WHERE: &str = "WHERE ($1 IS NULL OR username = $1) AND ($2 IS NULL OR action = $2) \
                             AND ($3 IS NULL OR at >= $3)";
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM audit_log {WHERE}"))
            .bind(&filter.username)
            .bind(&filter.action)
            .bind(filter.since_ms)
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query_as(&format!(
            "SELECT at, username, source_ip, action, target, detail FROM audit_log {WHERE} \
             ORDER BY id DESC LIMIT $4 OFFSET $5"
        ))
        .bind(&filter.username)
        .bind(&filter.action)
        .bind(filter.since_ms)
        .bind(filter.limit as i64)
        .bind(filter.offset as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok((rows, total as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Error, test_store};

    #[tokio::test]
    async fn a_revoked_or_expired_token_finds_no_user() {
        let (store, _dir) = test_store().await;
        let uid = store.create_user("ann", "hash", Role::Operator).await.unwrap();
        let live = store.create_token(uid, "ci", "h1", None).await.unwrap();
        store.create_token(uid, "old", "h2", Some(now_ms() - 1)).await.unwrap();

        assert_eq!(store.user_by_token("h1").await.unwrap().unwrap().username, "ann");
        assert!(store.user_by_token("h2").await.unwrap().is_none());
        store.revoke_token(uid, &live.id).await.unwrap();
        assert!(store.user_by_token("h1").await.unwrap().is_none());
        assert!(matches!(store.revoke_token(uid, &live.id).await, Err(Error::NotFound)));
    }

    #[tokio::test]
    async fn the_last_enabled_admin_cannot_be_demoted_disabled_or_deleted() {
        let (store, _dir) = test_store().await;
        store.create_user("root", "h", Role::Admin).await.unwrap();
        let demote = UserUpdate {
            role: Some(Role::Viewer),
            ..Default::default()
        };
        let disable = UserUpdate {
            disabled: Some(true),
            ..Default::default()
        };

        assert!(matches!(store.update_user("root", &demote).await, Err(Error::Conflict)));
        assert!(matches!(
            store.update_user("root", &disable).await,
            Err(Error::Conflict)
        ));
        assert!(matches!(store.delete_user("root").await, Err(Error::Conflict)));
        store.create_user("second", "h", Role::Admin).await.unwrap();
        assert_eq!(store.update_user("root", &demote).await.unwrap().role, Role::Viewer);
    }

    #[tokio::test]
    async fn usernames_are_unique() {
        let (store, _dir) = test_store().await;
        store.create_user("ann", "h", Role::Admin).await.unwrap();
        assert!(matches!(
            store.create_user("ann", "h", Role::Viewer).await,
            Err(Error::Conflict)
        ));
    }
}

/// A console login session with its user.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub user: UserRow,
    pub csrf: String,
    pub region_id: Option<String>,
    pub expires_at: i64,
}

impl Store {
    /// Starts a session for a user.
    pub async fn create_session(&self, id_hash: &str, user_id: i64, csrf: &str, expires_at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
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
        let row = sqlx::query(
            "SELECT u.*, s.csrf, s.region_id AS session_region, s.expires_at FROM sessions s \
             JOIN users u ON u.id = s.user_id WHERE s.id_hash = $1 AND s.expires_at > $2 AND u.disabled = 0",
        )
        .bind(id_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(SessionRow {
            user: user_from_row(&row)?,
            csrf: row.try_get("csrf")?,
            region_id: row.try_get("session_region")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    /// Remembers the region picked in a session.
    pub async fn set_session_region(&self, id_hash: &str, region_id: &str) -> Result<()> {
        sqlx::query("UPDATE sessions SET region_id = $2 WHERE id_hash = $1")
            .bind(id_hash)
            .bind(region_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a session.
    pub async fn delete_session(&self, id_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1 OR expires_at <= $2")
            .bind(id_hash)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Refuses (`Conflict`) to take away the last enabled admin: `user` may lose its rights only
/// if it is not an enabled admin or another enabled admin remains.
async fn ensure_another_admin(conn: &mut sqlx::SqliteConnection, user: &UserRow) -> Result<()> {
    if user.role != Role::Admin || user.disabled {
        return Ok(());
    }
    let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0")
        .fetch_one(&mut *conn)
        .await?;
    if admins <= 1 {
        return Err(super::Error::Conflict);
    }
    Ok(())
}

/// An account as listed (without its password hash).
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: i64,
}

/// Changes to an account; `None` keeps the old value.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    pub password_hash: Option<String>,
}

impl Store {
    /// Every account, by name.
    pub async fn list_users(&self) -> Result<Vec<AccountRow>> {
        let rows = sqlx::query("SELECT username, role, disabled, created_at FROM users ORDER BY username")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let role: String = r.try_get("role")?;
                Ok(AccountRow {
                    username: r.try_get("username")?,
                    role: Role::parse(&role).ok_or_else(|| super::Error::Corrupt(format!("role {role:?}")))?,
                    disabled: r.try_get::<i64, _>("disabled")? != 0,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Changes an account. Refuses (`Conflict`) to leave no enabled admin. A new password or a
    /// disabled account ends every session of the user.
    pub async fn update_user(&self, username: &str, update: &UserUpdate) -> Result<UserRow> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_one(&mut *tx)
            .await?;
        let user = user_from_row(&row)?;
        let role = update.role.unwrap_or(user.role);
        let disabled = update.disabled.unwrap_or(user.disabled);
        if role != Role::Admin || disabled {
            ensure_another_admin(&mut tx, &user).await?;
        }
        let hash = update.password_hash.clone().unwrap_or(user.password_hash.clone());
        sqlx::query("UPDATE users SET role = $2, disabled = $3, password_hash = $4 WHERE id = $1")
            .bind(user.id)
            .bind(role.as_str())
            .bind(disabled)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        if update.password_hash.is_some() || disabled {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(user.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(UserRow {
            role,
            disabled,
            password_hash: hash,
            ..user
        })
    }

    /// Deletes an account with its sessions and tokens. Refuses (`Conflict`) the last enabled admin.
    pub async fn delete_user(&self, username: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_one(&mut *tx)
            .await?;
        let user = user_from_row(&row)?;
        ensure_another_admin(&mut tx, &user).await?;
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(user.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A server setting, if set.
    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Sets a server setting.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
