//! Server settings an admin changes at run time, one row per key.

use super::db::{query, query_scalar};
use super::{Result, Store};

impl Store {
    /// A server setting, if set.
    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
    }

    /// Sets a server setting.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
