//! Retained commands and their per-region quota.

use super::{Error, Result, Store, json_vec, now_ms, parse_name};
use crate::protocol::CommandType;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

/// A retained command to create.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub region_id: String,
    pub name: String,
    pub description: String,
    pub command_type: CommandType,
    pub content: String,
    pub working_dir: Option<String>,
    pub timeout_secs: u64,
    pub username: Option<String>,
    pub enable_parameter: bool,
    pub parameter_names: Vec<String>,
    pub creator: String,
}

/// A stored retained command.
#[derive(Debug, Clone)]
pub struct CommandRow {
    pub id: String,
    pub region_id: String,
    pub name: String,
    pub description: String,
    pub command_type: CommandType,
    pub content: String,
    pub working_dir: Option<String>,
    pub timeout_secs: u64,
    pub username: Option<String>,
    pub enable_parameter: bool,
    pub parameter_names: Vec<String>,
    pub creator: String,
    pub created_at: i64,
    /// How many invocations ran it.
    pub invoke_times: u64,
}

/// New values for a retained command; `None` keeps the old one.
#[derive(Debug, Clone, Default)]
pub struct CommandUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    /// New content with the parameter names found in it.
    pub content: Option<(String, Vec<String>)>,
    pub working_dir: Option<Option<String>>,
    pub timeout_secs: Option<u64>,
    pub username: Option<Option<String>>,
}

const SELECT: &str = "SELECT c.*, (SELECT COUNT(*) FROM invocations i WHERE i.command_id = c.id) AS invoke_times \
                      FROM commands c";

fn command_from_row(row: &SqliteRow) -> Result<CommandRow> {
    Ok(CommandRow {
        id: row.try_get("id")?,
        region_id: row.try_get("region_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        command_type: parse_name(row.try_get("type")?)?,
        content: row.try_get("content")?,
        working_dir: row.try_get("working_dir")?,
        timeout_secs: row.try_get::<i64, _>("timeout_secs")? as u64,
        username: row.try_get("username")?,
        enable_parameter: row.try_get("enable_parameter")?,
        parameter_names: json_vec(row.try_get("parameter_names")?)?,
        creator: row.try_get("creator")?,
        created_at: row.try_get("created_at")?,
        invoke_times: row.try_get::<i64, _>("invoke_times")? as u64,
    })
}

/// Inserts a command inside a transaction after checking the region's quota.
pub(super) async fn insert_command(conn: &mut sqlx::SqliteConnection, new: &NewCommand, quota: u64) -> Result<String> {
    let used: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM commands WHERE region_id = $1")
        .bind(&new.region_id)
        .fetch_one(&mut *conn)
        .await?;
    if used as u64 >= quota {
        return Err(Error::Quota {
            name: "retained_commands",
            used: used as u64,
            limit: quota,
        });
    }
    let id = super::ids::new_id("c");
    sqlx::query(
        "INSERT INTO commands (id, region_id, name, description, type, content, working_dir, timeout_secs, \
         username, enable_parameter, parameter_names, creator, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&id)
    .bind(&new.region_id)
    .bind(&new.name)
    .bind(&new.description)
    .bind(new.command_type.as_str())
    .bind(&new.content)
    .bind(&new.working_dir)
    .bind(new.timeout_secs as i64)
    .bind(&new.username)
    .bind(new.enable_parameter)
    .bind(serde_json::to_string(&new.parameter_names).unwrap_or_else(|_| "[]".into()))
    .bind(&new.creator)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

impl Store {
    /// Creates a retained command unless the region's quota is used up.
    pub async fn create_command(&self, new: &NewCommand, quota: u64) -> Result<CommandRow> {
        let mut tx = self.write_tx().await?;
        let id = insert_command(&mut tx, new, quota).await?;
        tx.commit().await?;
        self.command(&id).await
    }

    /// One retained command.
    pub async fn command(&self, command_id: &str) -> Result<CommandRow> {
        let row = sqlx::query(&format!("{SELECT} WHERE c.id = $1"))
            .bind(command_id)
            .fetch_one(&self.pool)
            .await?;
        command_from_row(&row)
    }

    /// Retained commands, newest first, optionally of one region and matching a name search.
    pub async fn list_commands(
        &self,
        region_id: Option<&str>,
        query: Option<&str>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<CommandRow>, u64)> {
        const WHERE: &str = "WHERE ($1 IS NULL OR c.region_id = $1) \
                             AND ($2 IS NULL OR instr(lower(c.id || ' ' || c.name || ' ' || c.description), $2) > 0)";
        let query = query.map(str::to_lowercase);
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM commands c {WHERE}"))
            .bind(region_id)
            .bind(&query)
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query(&format!(
            "{SELECT} {WHERE} ORDER BY c.created_at DESC LIMIT $3 OFFSET $4"
        ))
        .bind(region_id)
        .bind(&query)
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await?;
        let commands = rows.iter().map(command_from_row).collect::<Result<_>>()?;
        Ok((commands, total as u64))
    }

    /// Changes a retained command.
    pub async fn update_command(&self, command_id: &str, update: &CommandUpdate) -> Result<CommandRow> {
        let (content, names) = match &update.content {
            Some((content, names)) => (
                Some(content.as_str()),
                Some(serde_json::to_string(names).unwrap_or_default()),
            ),
            None => (None, None),
        };
        let done = sqlx::query(
            "UPDATE commands SET name = COALESCE($2, name), description = COALESCE($3, description), \
             content = COALESCE($4, content), parameter_names = COALESCE($5, parameter_names), \
             working_dir = CASE WHEN $6 THEN $7 ELSE working_dir END, \
             timeout_secs = COALESCE($8, timeout_secs), \
             username = CASE WHEN $9 THEN $10 ELSE username END WHERE id = $1",
        )
        .bind(command_id)
        .bind(&update.name)
        .bind(&update.description)
        .bind(content)
        .bind(names)
        .bind(update.working_dir.is_some())
        .bind(update.working_dir.clone().flatten())
        .bind(update.timeout_secs.map(|t| t as i64))
        .bind(update.username.is_some())
        .bind(update.username.clone().flatten())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound);
        }
        self.command(command_id).await
    }

    /// Deletes a retained command. Its past invocations keep their own copy of the content.
    pub async fn delete_command(&self, command_id: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM commands WHERE id = $1")
            .bind(command_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    /// Retained commands per region.
    pub async fn command_counts(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT region_id, COUNT(*) FROM commands GROUP BY region_id ORDER BY region_id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(r, n)| (r, n as u64)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;

    fn new_command(name: &str) -> NewCommand {
        NewCommand {
            region_id: "local".into(),
            name: name.into(),
            description: String::new(),
            command_type: CommandType::RunShellScript,
            content: "echo {{who}}".into(),
            working_dir: None,
            timeout_secs: 60,
            username: None,
            enable_parameter: true,
            parameter_names: vec!["who".into()],
            creator: "admin".into(),
        }
    }

    #[tokio::test]
    async fn the_quota_refusal_names_use_and_limit() {
        let (store, _dir) = test_store().await;
        store.create_command(&new_command("a"), 2).await.unwrap();
        store.create_command(&new_command("b"), 2).await.unwrap();

        let refused = store.create_command(&new_command("c"), 2).await;

        assert!(
            matches!(refused, Err(Error::Quota { used: 2, limit: 2, .. })),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_command_update_keeps_fields_left_out() {
        let (store, _dir) = test_store().await;
        let cmd = store.create_command(&new_command("a"), 10).await.unwrap();

        let update = CommandUpdate {
            name: Some("renamed".into()),
            working_dir: Some(Some("/tmp".into())),
            ..Default::default()
        };
        let changed = store.update_command(&cmd.id, &update).await.unwrap();

        assert_eq!(changed.name, "renamed");
        assert_eq!(changed.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(changed.content, "echo {{who}}");
        assert_eq!(changed.parameter_names, vec!["who".to_string()]);
    }
}
