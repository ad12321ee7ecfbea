//! The audit log. Append-only: nothing here updates or deletes an entry.

use super::db::{query, query_scalar};
use super::{Result, Store, now_ms};

/// An audit entry to record.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub username: &'a str,
    pub source_ip: &'a str,
    /// The surface: `api`, `console`, `agent` or `server`.
    pub via: &'a str,
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
    pub via: String,
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

impl Store {
    /// Appends an audit entry.
    pub async fn audit(&self, entry: NewAudit<'_>) -> Result<()> {
        query(
            "INSERT INTO audit_log (at, username, source_ip, via, action, target, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now_ms())
        .bind(entry.username)
        .bind(entry.source_ip)
        .bind(entry.via)
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
        let total: i64 = query_scalar(&format!("SELECT COUNT(*) FROM audit_log {WHERE}"))
            .bind(&filter.username)
            .bind(&filter.action)
            .bind(filter.since_ms)
            .fetch_one(&self.pool)
            .await?;
        let rows = query(&format!(
            "SELECT at, username, source_ip, via, action, target, detail FROM audit_log {WHERE} \
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
