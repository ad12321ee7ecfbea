//! Accounts: create, find, change, delete, with the rule that one enabled admin always remains.

use super::db::{Tx, query, query_scalar};
use super::{Error, Result, Store, now_ms};

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

impl TryFrom<String> for Role {
    type Error = Error;
    fn try_from(s: String) -> Result<Role> {
        Role::parse(&s).ok_or_else(|| Error::Corrupt(format!("role {s:?}")))
    }
}

/// An account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    #[sqlx(try_from = "String")]
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

/// Refuses (`Conflict`) to take away the last enabled admin: `user` may lose its rights only
/// if it is not an enabled admin or another enabled admin remains.
async fn ensure_another_admin(conn: &mut Tx, user: &UserRow) -> Result<()> {
    if user.role != Role::Admin || user.disabled {
        return Ok(());
    }
    let admins: i64 = query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = FALSE")
        .fetch_one(&mut *conn)
        .await?;
    if admins <= 1 {
        return Err(Error::Conflict);
    }
    Ok(())
}

impl Store {
    /// Number of accounts (0 on a fresh database).
    pub async fn count_users(&self) -> Result<u64> {
        let n: i64 = query_scalar("SELECT COUNT(*) FROM users").fetch_one(&self.pool).await?;
        Ok(n as u64)
    }

    /// Creates an account; `Conflict` when the name is taken.
    pub async fn create_user(&self, username: &str, password_hash: &str, role: Role) -> Result<UserRow> {
        query("INSERT INTO users (username, password_hash, role, created_at) VALUES ($1, $2, $3, $4) RETURNING *")
            .bind(username)
            .bind(password_hash)
            .bind(role.as_str())
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await
    }

    /// The account with this name, if any.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>> {
        query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await
    }

    /// Every account, by name.
    pub async fn list_users(&self) -> Result<Vec<UserRow>> {
        query("SELECT * FROM users ORDER BY username")
            .fetch_all(&self.pool)
            .await
    }

    /// Changes an account. Refuses (`Conflict`) to leave no enabled admin. A new password or a
    /// disabled account ends every session of the user.
    pub async fn update_user(&self, username: &str, update: &UserUpdate) -> Result<UserRow> {
        let mut tx = self.write_tx().await?;
        let user: UserRow = query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_one(&mut tx)
            .await?;
        let role = update.role.unwrap_or(user.role);
        let disabled = update.disabled.unwrap_or(user.disabled);
        if role != Role::Admin || disabled {
            ensure_another_admin(&mut tx, &user).await?;
        }
        let hash = update.password_hash.clone().unwrap_or(user.password_hash.clone());
        query("UPDATE users SET role = $2, disabled = $3, password_hash = $4 WHERE id = $1")
            .bind(user.id)
            .bind(role.as_str())
            .bind(disabled)
            .bind(&hash)
            .execute(&mut tx)
            .await?;
        if update.password_hash.is_some() || disabled {
            query("DELETE FROM sessions WHERE user_id = $1")
                .bind(user.id)
                .execute(&mut tx)
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
        let user: UserRow = query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_one(&mut tx)
            .await?;
        ensure_another_admin(&mut tx, &user).await?;
        query("DELETE FROM users WHERE id = $1")
            .bind(user.id)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::store::both_backends! {
    async fn the_last_enabled_admin_cannot_be_demoted_disabled_or_deleted(store) {
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
    }

    crate::store::both_backends! {
    async fn usernames_are_unique(store) {
        store.create_user("ann", "h", Role::Admin).await.unwrap();
        assert!(matches!(
            store.create_user("ann", "h", Role::Viewer).await,
            Err(Error::Conflict)
        ));
    }
    }
}
