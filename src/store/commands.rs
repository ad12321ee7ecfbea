//! Retained commands: unique names per region and the per-region quota, both checked inside the
//! write transaction that stores the command.

use super::db::{Tx, query, query_scalar};
use super::{Error, Result, Store, bind_spec, changed_one, now_ms};
use crate::protocol::CommandSpec;

/// A retained command to create.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub region_id: String,
    pub name: String,
    pub description: String,
    /// Content decoded, `{{parameters}}` unfilled.
    pub spec: CommandSpec,
    pub parameter_names: Vec<String>,
    pub creator: String,
}

/// A stored retained command.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommandRow {
    pub id: String,
    pub region_id: String,
    pub name: String,
    pub description: String,
    #[sqlx(flatten)]
    pub spec: CommandSpec,
    #[sqlx(json)]
    pub parameter_names: Vec<String>,
    pub creator: String,
    pub created_at: i64,
    /// How many invocations ran it.
    #[sqlx(try_from = "i64")]
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

// The spec columns of `commands` and `invocations`, which share their names.
super::db::from_row!(CommandSpec, |row| {
    Ok(CommandSpec {
        command_type: super::db::parsed("type", row.try_get("type")?)?,
        content: row.try_get("content")?,
        timeout_secs: row.try_get::<i64, _>("timeout_secs")? as u64,
        working_dir: row.try_get("working_dir")?,
        username: row.try_get("username")?,
        enable_parameter: row.try_get("enable_parameter")?,
    })
});

const SELECT: &str = "SELECT c.*, (SELECT COUNT(*) FROM invocations i WHERE i.command_id = c.id) AS invoke_times \
                      FROM commands c";

/// Refuses a name another command of the region has (`Conflict`), so that people and scripts
/// can name a retained command unambiguously.
async fn ensure_name_free(conn: &mut Tx, region_id: &str, name: &str, except: Option<&str>) -> Result<()> {
    let taken: Option<String> =
        query_scalar("SELECT id FROM commands WHERE region_id = $1 AND name = $2 AND ($3 IS NULL OR id <> $3)")
            .bind(region_id)
            .bind(name)
            .bind(except)
            .fetch_optional(&mut *conn)
            .await?;
    match taken {
        Some(id) => Err(Error::NameTaken(id)),
        None => Ok(()),
    }
}

/// Refuses a command whose name is taken in its region or whose region's quota is used up.
async fn ensure_fits(conn: &mut Tx, new: &NewCommand, quota: u64) -> Result<()> {
    ensure_name_free(conn, &new.region_id, &new.name, None).await?;
    let used: i64 = query_scalar("SELECT COUNT(*) FROM commands WHERE region_id = $1")
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
    Ok(())
}

/// Inserts a command inside a transaction after checking its name and the region's quota.
pub(super) async fn insert_command(conn: &mut Tx, new: &NewCommand, quota: u64) -> Result<String> {
    ensure_fits(conn, new, quota).await?;
    let id = super::ids::new_id("c");
    let insert = query(
        "INSERT INTO commands (id, region_id, name, description, type, content, working_dir, timeout_secs, \
         username, enable_parameter, parameter_names, creator, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&id)
    .bind(&new.region_id)
    .bind(&new.name)
    .bind(&new.description);
    bind_spec(insert, &new.spec)
        .bind(sqlx::types::Json(&new.parameter_names))
        .bind(&new.creator)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

impl Store {
    /// Whether [`Store::create_command`] would accept the command now (a dry run's check);
    /// writes nothing.
    pub async fn check_command_fits(&self, new: &NewCommand, quota: u64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        ensure_fits(&mut tx, new, quota).await?;
        tx.commit().await
    }

    /// Creates a retained command unless its name is taken in the region or the region's quota
    /// is used up.
    pub async fn create_command(&self, new: &NewCommand, quota: u64) -> Result<CommandRow> {
        let mut tx = self.write_tx().await?;
        let id = insert_command(&mut tx, new, quota).await?;
        tx.commit().await?;
        self.command(&id).await
    }

    /// One retained command.
    pub async fn command(&self, command_id: &str) -> Result<CommandRow> {
        query(&format!("{SELECT} WHERE c.id = $1"))
            .bind(command_id)
            .fetch_one(&self.pool)
            .await
    }

    /// Retained commands, newest first, optionally of one region and matching a name search.
    pub async fn list_commands(
        &self,
        region_id: Option<&str>,
        search: Option<&str>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<CommandRow>, u64)> {
        const WHERE: &str = "WHERE ($1 IS NULL OR c.region_id = $1) \
                             AND ($2 IS NULL OR instr(lower(c.id || ' ' || c.name || ' ' || c.description), $2) > 0)";
        let text = search.map(str::to_lowercase);
        let total: i64 = query_scalar(&format!("SELECT COUNT(*) FROM commands c {WHERE}"))
            .bind(region_id)
            .bind(&text)
            .fetch_one(&self.pool)
            .await?;
        let commands = query(&format!(
            "{SELECT} {WHERE} ORDER BY c.created_at DESC LIMIT $3 OFFSET $4"
        ))
        .bind(region_id)
        .bind(&text)
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok((commands, total as u64))
    }

    /// Changes a retained command; a new name must be free in its region.
    pub async fn update_command(&self, command_id: &str, update: &CommandUpdate) -> Result<CommandRow> {
        let (content, names) = match &update.content {
            Some((content, names)) => (Some(content.as_str()), Some(sqlx::types::Json(names))),
            None => (None, None),
        };
        let mut tx = self.write_tx().await?;
        if let Some(name) = &update.name {
            let region: String = query_scalar("SELECT region_id FROM commands WHERE id = $1")
                .bind(command_id)
                .fetch_one(&mut tx)
                .await?;
            ensure_name_free(&mut tx, &region, name, Some(command_id)).await?;
        }
        changed_one(
            query(
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
            .execute(&mut tx)
            .await?,
        )?;
        tx.commit().await?;
        self.command(command_id).await
    }

    /// Deletes a retained command. Its past invocations keep their own copy of the content.
    pub async fn delete_command(&self, command_id: &str) -> Result<()> {
        changed_one(
            query("DELETE FROM commands WHERE id = $1")
                .bind(command_id)
                .execute(&self.pool)
                .await?,
        )?;
        Ok(())
    }

    /// Retained commands in one region.
    pub async fn command_count(&self, region_id: &str) -> Result<u64> {
        let n: i64 = query_scalar("SELECT COUNT(*) FROM commands WHERE region_id = $1")
            .bind(region_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// Retained commands per region.
    pub async fn command_counts(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> =
            query("SELECT region_id, COUNT(*) FROM commands GROUP BY region_id ORDER BY region_id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(r, n)| (r, n as u64)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_command(name: &str) -> NewCommand {
        NewCommand {
            region_id: "local".into(),
            name: name.into(),
            description: String::new(),
            spec: CommandSpec {
                enable_parameter: true,
                ..CommandSpec::shell("echo {{who}}")
            },
            parameter_names: vec!["who".into()],
            creator: "admin".into(),
        }
    }

    crate::store::both_backends! {
    async fn the_quota_refusal_names_use_and_limit(store) {
        store.create_command(&new_command("a"), 2).await.unwrap();
        store.create_command(&new_command("b"), 2).await.unwrap();

        let refused = store.create_command(&new_command("c"), 2).await;

        assert!(
            matches!(refused, Err(Error::Quota { used: 2, limit: 2, .. })),
            "{refused:?}"
        );
    }
    }

    crate::store::both_backends! {
    async fn a_name_is_unique_within_its_region_on_create_and_rename(store) {
        let greet = store.create_command(&new_command("greet"), 10).await.unwrap();
        let other = store.create_command(&new_command("other"), 10).await.unwrap();
        let elsewhere = NewCommand {
            region_id: "eu-west-1".into(),
            ..new_command("greet")
        };

        let twice = store.create_command(&new_command("greet"), 10).await;
        let rename = CommandUpdate {
            name: Some("greet".into()),
            ..Default::default()
        };
        let renamed = store.update_command(&other.id, &rename).await;

        assert!(
            matches!(&twice, Err(Error::NameTaken(id)) if *id == greet.id),
            "{twice:?}"
        );
        assert!(
            matches!(&renamed, Err(Error::NameTaken(id)) if *id == greet.id),
            "{renamed:?}"
        );
        assert!(
            store.create_command(&elsewhere, 10).await.is_ok(),
            "another region may use it"
        );
        assert!(
            store.update_command(&greet.id, &rename).await.is_ok(),
            "keeping one's own name"
        );
    }
    }

    crate::store::both_backends! {
    async fn a_command_update_keeps_fields_left_out(store) {
        let cmd = store.create_command(&new_command("a"), 10).await.unwrap();

        let update = CommandUpdate {
            name: Some("renamed".into()),
            working_dir: Some(Some("/tmp".into())),
            ..Default::default()
        };
        let changed = store.update_command(&cmd.id, &update).await.unwrap();

        assert_eq!(changed.name, "renamed");
        assert_eq!(changed.spec.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(changed.spec.content, "echo {{who}}");
        assert_eq!(changed.parameter_names, vec!["who".to_string()]);
    }
    }
}
