//! Activations, enrolment and instances.

use super::db::{query, query_scalar};
use super::tags::{bind_tag_matches, tag_conditions, write_tags};
use super::{Error, Result, Store, changed_one, now_ms};
use crate::protocol::{CommandType, OsType};
use std::collections::BTreeMap;

/// An activation to create. The code itself is never stored, only its hash.
#[derive(Debug, Clone)]
pub struct NewActivation {
    pub region_id: String,
    pub description: String,
    pub instance_count_limit: u32,
    pub expires_at: i64,
    pub code_hash: String,
}

/// A stored activation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ActivationRow {
    pub id: String,
    pub region_id: String,
    pub description: String,
    pub instance_count_limit: i64,
    pub registered_count: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub disabled: bool,
}

/// Why an activation refused an enrolment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterRefusal {
    /// No activation with that id and code.
    BadCode,
    Expired,
    Disabled,
    /// Its instance limit is reached.
    UsedUp,
}

impl std::fmt::Display for RegisterRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RegisterRefusal::BadCode => "the activation id or code is wrong",
            RegisterRefusal::Expired => "the activation has expired",
            RegisterRefusal::Disabled => "the activation is disabled",
            RegisterRefusal::UsedUp => "the activation has reached its instance limit",
        })
    }
}

/// An instance to enrol.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub name: String,
    pub hostname: String,
    pub os_type: OsType,
    pub os_name: String,
    pub ip_addresses: Vec<String>,
    pub agent_version: String,
    pub supported_command_types: Vec<CommandType>,
    pub secret_hash: String,
    /// Tags it starts with (the agent's `--tag`), already checked.
    pub tags: BTreeMap<String, String>,
}

/// A stored instance.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InstanceRow {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub region_id: String,
    #[sqlx(try_from = "String")]
    pub os_type: OsType,
    pub os_name: String,
    #[sqlx(json)]
    pub ip_addresses: Vec<String>,
    #[sqlx(json)]
    pub tags: BTreeMap<String, String>,
    pub agent_version: String,
    /// The protocol version of the agent's last connection; `None` before it first connects.
    pub agent_protocol: Option<i64>,
    #[sqlx(json)]
    pub supported_command_types: Vec<CommandType>,
    pub registered_at: i64,
    /// The activation it enrolled with.
    pub activation_id: String,
    pub last_heartbeat_at: Option<i64>,
    /// The agent holds a connection to a server right now.
    pub online: bool,
}

/// Filters of the instance listing.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub region_id: Option<String>,
    /// `Some(true)`: only instances whose heartbeat is newer than `fresh_after`; `Some(false)`: only older.
    pub running: Option<bool>,
    pub fresh_after: i64,
    /// `Some(true)`: only instances whose agent is connected now.
    pub online: Option<bool>,
    /// Matches id, name, hostname, IP addresses or tags (substring, case-insensitive).
    pub query: Option<String>,
    /// The instance has every one of these tags (exact key and value).
    pub tags: Vec<super::TagMatch>,
    pub offset: u64,
    pub limit: u64,
}

fn to_json<T: serde::Serialize>(value: &T) -> sqlx::types::Json<&T> {
    sqlx::types::Json(value)
}

const INSTANCE_FILTER: &str = "WHERE ($1 IS NULL OR region_id = $1) \
    AND ($2 IS NULL OR $2 = (COALESCE(last_heartbeat_at, 0) > $3)) \
    AND ($4 IS NULL OR instr(lower(id || ' ' || name || ' ' || hostname || ' ' || ip_addresses || ' ' || tags), $4) > 0) \
    AND ($5 IS NULL OR online = $5)";

/// Listing order: by name, so people find their machines (ids are random).
const INSTANCE_ORDER: &str = "ORDER BY region_id, lower(name), id";

impl Store {
    /// Stores a new activation and returns its id.
    pub async fn create_activation(&self, new: &NewActivation) -> Result<ActivationRow> {
        let id = super::ids::new_id("act");
        let row = query(
            "INSERT INTO activations (id, code_hash, region_id, description, instance_count_limit, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, region_id, description, instance_count_limit, \
             registered_count, created_at, expires_at, disabled",
        )
        .bind(&id)
        .bind(&new.code_hash)
        .bind(&new.region_id)
        .bind(&new.description)
        .bind(i64::from(new.instance_count_limit))
        .bind(now_ms())
        .bind(new.expires_at)
        .fetch_one(&self.pool)
        .await?;
        Ok(row)
    }

    /// All activations, newest first.
    pub async fn list_activations(&self) -> Result<Vec<ActivationRow>> {
        query(
            "SELECT id, region_id, description, instance_count_limit, registered_count, created_at, expires_at, disabled \
             FROM activations ORDER BY created_at DESC",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Disables an activation: it enrols no more instances.
    pub async fn disable_activation(&self, activation_id: &str) -> Result<()> {
        changed_one(
            query("UPDATE activations SET disabled = TRUE WHERE id = $1")
                .bind(activation_id)
                .execute(&self.pool)
                .await?,
        )?;
        Ok(())
    }

    /// Deletes an activation. Instances it enrolled keep their own credentials.
    pub async fn delete_activation(&self, activation_id: &str) -> Result<()> {
        changed_one(
            query("DELETE FROM activations WHERE id = $1")
                .bind(activation_id)
                .execute(&self.pool)
                .await?,
        )
    }

    /// Enrols an instance through an activation, atomically counting it against the limit.
    pub async fn register_instance(
        &self,
        activation_id: &str,
        code_hash: &str,
        new: &NewInstance,
    ) -> Result<InstanceRow> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let activation: Option<ActivationRow> = query(
            "SELECT id, region_id, description, instance_count_limit, registered_count, created_at, expires_at, disabled \
             FROM activations WHERE id = $1 AND code_hash = $2",
        )
        .bind(activation_id)
        .bind(code_hash)
        .fetch_optional(&mut tx)
        .await?;
        let activation = activation.ok_or(Error::Register(RegisterRefusal::BadCode))?;
        if activation.disabled {
            return Err(Error::Register(RegisterRefusal::Disabled));
        }
        if activation.expires_at <= now {
            return Err(Error::Register(RegisterRefusal::Expired));
        }
        if activation.registered_count >= activation.instance_count_limit {
            return Err(Error::Register(RegisterRefusal::UsedUp));
        }
        query("UPDATE activations SET registered_count = registered_count + 1 WHERE id = $1")
            .bind(activation_id)
            .execute(&mut tx)
            .await?;
        let id = super::ids::new_id("i");
        let name = if new.name.is_empty() {
            id.clone()
        } else {
            new.name.clone()
        };
        let instance = query(
            "INSERT INTO instances (id, name, hostname, region_id, os_type, os_name, ip_addresses, agent_version, \
             supported_command_types, secret_hash, activation_id, registered_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *",
        )
        .bind(&id)
        .bind(&name)
        .bind(&new.hostname)
        .bind(&activation.region_id)
        .bind(new.os_type.as_str())
        .bind(&new.os_name)
        .bind(to_json(&new.ip_addresses))
        .bind(&new.agent_version)
        .bind(to_json(&new.supported_command_types))
        .bind(&new.secret_hash)
        .bind(activation_id)
        .bind(now)
        .fetch_one::<InstanceRow>(&mut tx)
        .await?;
        let instance = if new.tags.is_empty() {
            instance
        } else {
            write_tags(&mut tx, &id, &new.tags).await?;
            InstanceRow {
                tags: new.tags.clone(),
                ..instance
            }
        };
        tx.commit().await?;
        Ok(instance)
    }

    /// The stored secret hash of an instance, for authenticating its agent.
    pub async fn instance_secret_hash(&self, instance_id: &str) -> Result<Option<String>> {
        query_scalar("SELECT secret_hash FROM instances WHERE id = $1")
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await
    }

    /// One instance.
    pub async fn instance(&self, instance_id: &str) -> Result<InstanceRow> {
        query("SELECT * FROM instances WHERE id = $1")
            .bind(instance_id)
            .fetch_one(&self.pool)
            .await
    }

    /// The instances among `ids` that exist (in no particular order).
    pub async fn instances_by_ids(&self, ids: &[String]) -> Result<Vec<InstanceRow>> {
        // One statement however many: the ids travel as one JSON array.
        query("SELECT * FROM instances WHERE id IN (SELECT value FROM json_each($1))")
            .bind(sqlx::types::Json(ids))
            .fetch_all(&self.pool)
            .await
    }

    /// A page of instances matching the filter, ordered by region then name, and the total matching.
    pub async fn list_instances(&self, filter: &InstanceFilter) -> Result<(Vec<InstanceRow>, u64)> {
        let running = filter.running;
        let online = filter.online;
        let text = filter.query.as_ref().map(|q| q.to_lowercase());
        // Tag conditions take the placeholders after the fixed ones.
        let count_sql = format!(
            "SELECT COUNT(*) FROM instances {INSTANCE_FILTER}{}",
            tag_conditions(filter.tags.len(), 6)
        );
        let count = query(&count_sql)
            .bind(&filter.region_id)
            .bind(running)
            .bind(filter.fresh_after)
            .bind(&text)
            .bind(online);
        let (total,): (i64,) = bind_tag_matches(count, &filter.tags).fetch_one(&self.pool).await?;
        let page_sql = format!(
            "SELECT * FROM instances {INSTANCE_FILTER}{} {INSTANCE_ORDER} LIMIT $6 OFFSET $7",
            tag_conditions(filter.tags.len(), 8)
        );
        let page = query(&page_sql)
            .bind(&filter.region_id)
            .bind(running)
            .bind(filter.fresh_after)
            .bind(&text)
            .bind(online)
            .bind(filter.limit as i64)
            .bind(filter.offset as i64);
        let instances = bind_tag_matches(page, &filter.tags).fetch_all(&self.pool).await?;
        Ok((instances, total as u64))
    }

    /// The ids of the first `limit` instances matching the filter (its offset is ignored), in
    /// listing order: "select all matching" in the console.
    pub async fn matching_instance_ids(&self, filter: &InstanceFilter, limit: u64) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT id FROM instances {INSTANCE_FILTER}{} {INSTANCE_ORDER} LIMIT $6",
            tag_conditions(filter.tags.len(), 7)
        );
        let statement = query(&sql)
            .bind(&filter.region_id)
            .bind(filter.running)
            .bind(filter.fresh_after)
            .bind(filter.query.as_ref().map(|q| q.to_lowercase()))
            .bind(filter.online)
            .bind(limit as i64);
        let ids: Vec<(String,)> = bind_tag_matches(statement, &filter.tags).fetch_all(&self.pool).await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// Renames an instance.
    pub async fn rename_instance(&self, instance_id: &str, name: &str) -> Result<InstanceRow> {
        query("UPDATE instances SET name = $2 WHERE id = $1 RETURNING *")
            .bind(instance_id)
            .bind(name)
            .fetch_one(&self.pool)
            .await
    }

    /// Every region with its number of instances.
    pub async fn regions(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> =
            query("SELECT region_id, COUNT(*) FROM instances GROUP BY region_id ORDER BY region_id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(r, n)| (r, n as u64)).collect())
    }

    /// Instances whose agent was heard from (or that enrolled) since `since`: the fleet that
    /// may come back when the server restarts.
    pub async fn count_instances_seen_since(&self, since: i64) -> Result<u64> {
        let (count,): (i64,) =
            query("SELECT COUNT(*) FROM instances WHERE COALESCE(last_heartbeat_at, registered_at) >= $1")
                .bind(since)
                .fetch_one(&self.pool)
                .await?;
        Ok(count as u64)
    }

    /// Records what an agent said about itself in its `Hello`, received at `hello_at`, and that
    /// it is online since then on `replica`, connection number `connection` of that replica.
    ///
    /// Returns false, and changes nothing, when the agent was heard after `hello_at` on a
    /// connection still recorded online: this connection is older than that one, and only
    /// recorded late (its server was slow to attach it, and the agent, killed or tired of
    /// waiting, meanwhile connected again, perhaps to another replica). Taking over would
    /// record the agent on a connection it no longer has, and offline once that one's close
    /// is noticed, while it is connected elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub async fn agent_connected(
        &self,
        instance_id: &str,
        replica: &str,
        connection: u64,
        hello: &crate::protocol::agent::Hello,
        protocol_version: u32,
        hello_at: i64,
    ) -> Result<bool> {
        let taken = query(
            "UPDATE instances SET hostname = $2, os_name = $3, ip_addresses = $4, agent_version = $5, \
             supported_command_types = $6, os_type = $7, last_heartbeat_at = $8, online = TRUE, connection = $9, \
             agent_protocol = $10, replica = $11 \
             WHERE id = $1 AND NOT (online = TRUE AND COALESCE(last_heartbeat_at, 0) > $8)",
        )
        .bind(instance_id)
        .bind(&hello.hostname)
        .bind(&hello.os_name)
        .bind(to_json(&hello.ip_addresses))
        .bind(&hello.agent_version)
        .bind(to_json(&hello.supported_command_types))
        .bind(hello.os_type.as_str())
        .bind(hello_at)
        .bind(connection as i64)
        .bind(protocol_version as i64)
        .bind(replica)
        .execute(&self.pool)
        .await?;
        Ok(taken == 1)
    }

    /// Records that an agent's connection closed, with its last heartbeat time, unless a newer
    /// connection of the instance (here or on another replica) has taken over.
    pub async fn agent_disconnected(
        &self,
        instance_id: &str,
        replica: &str,
        connection: u64,
        last_heartbeat_at: i64,
    ) -> Result<()> {
        query(
            "UPDATE instances SET online = FALSE, connection = NULL, replica = NULL, last_heartbeat_at = $2 \
             WHERE id = $1 AND connection = $3 AND replica = $4",
        )
        .bind(instance_id)
        .bind(last_heartbeat_at)
        .bind(connection as i64)
        .bind(replica)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes a batch of heartbeat times in one transaction.
    pub async fn record_heartbeats(&self, beats: &[(String, i64)]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        static HEARTBEATS: super::MultiRow = super::MultiRow::new(
            "WITH v(id, at) AS (VALUES ",
            2,
            ") UPDATE instances SET last_heartbeat_at = v.at FROM v WHERE instances.id = v.id AND instances.online = TRUE",
        );
        for chunk in super::statement_chunks(beats, tx.rows_per_statement()) {
            let mut statement = query(HEARTBEATS.sql(chunk.len()));
            for (id, at) in chunk {
                statement = statement.bind(id).bind(at);
            }
            statement.execute(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deregisters an instance: its credential stops working at once. Its results are kept.
    pub async fn delete_instance(&self, instance_id: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        changed_one(
            query("DELETE FROM instances WHERE id = $1")
                .bind(instance_id)
                .execute(&mut tx)
                .await?,
        )?;
        // It leaves every schedule; a schedule left with no instance has nothing to start.
        let schedules: Vec<String> =
            query_scalar("DELETE FROM plan_targets WHERE instance_id = $1 RETURNING invocation_id")
                .bind(instance_id)
                .fetch_all(&mut tx)
                .await?;
        for invoke_id in schedules {
            query(
                "UPDATE invocations SET schedule_state = 'Ended', next_run_at = NULL \
                 WHERE id = $1 AND schedule_state = 'Scheduled' \
                 AND NOT EXISTS (SELECT 1 FROM plan_targets WHERE invocation_id = $1)",
            )
            .bind(&invoke_id)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ids;

    fn new_instance(name: &str) -> NewInstance {
        NewInstance {
            name: name.into(),
            hostname: "host".into(),
            os_type: OsType::Linux,
            os_name: "Debian".into(),
            ip_addresses: vec!["10.0.0.1".into()],
            agent_version: "0.1.0".into(),
            supported_command_types: vec![CommandType::RunShellScript],
            secret_hash: ids::hash_secret("s"),
            tags: BTreeMap::new(),
        }
    }

    async fn activation(store: &Store, limit: u32, expires_at: i64) -> ActivationRow {
        let new = NewActivation {
            region_id: "cn-hangzhou".into(),
            description: String::new(),
            instance_count_limit: limit,
            expires_at,
            code_hash: ids::hash_secret("code"),
        };
        store.create_activation(&new).await.unwrap()
    }

    fn hello() -> crate::protocol::agent::Hello {
        crate::protocol::agent::Hello {
            protocol_version: crate::protocol::PROTOCOL_VERSION,
            protocol_versions: Vec::new(),
            agent_version: "0.1.0".into(),
            hostname: "host".into(),
            os_type: OsType::Linux,
            os_name: "Debian".into(),
            ip_addresses: vec!["10.0.0.1".into()],
            supported_command_types: vec![CommandType::RunShellScript],
            held_tasks: Vec::new(),
            boot_id: None,
        }
    }

    crate::store::both_backends! {
    async fn a_connection_recorded_after_a_newer_one_of_the_agent_does_not_take_over(store) {
        let act = activation(&store, 1, now_ms() + 60_000).await;
        let id = store
            .register_instance(&act.id, &ids::hash_secret("code"), &new_instance("web-1"))
            .await
            .unwrap()
            .id;
        let holder = || async {
            query("SELECT online, replica, connection FROM instances WHERE id = $1")
                .bind(&id)
                .fetch_one::<(bool, Option<String>, Option<i64>)>(&store.pool)
                .await
                .unwrap()
        };

        let newer = store.agent_connected(&id, "r-b", 1, &hello(), 2, 2_000).await.unwrap();
        // Its Hello came first; it is recorded second, then its close is noticed.
        let older = store.agent_connected(&id, "r-a", 7, &hello(), 2, 1_000).await.unwrap();
        store.agent_disconnected(&id, "r-a", 7, 1_000).await.unwrap();
        let after_the_older = holder().await;
        let later = store.agent_connected(&id, "r-a", 8, &hello(), 2, 3_000).await.unwrap();

        assert!(newer);
        assert!(!older, "the older connection does not take over");
        assert_eq!(after_the_older, (true, Some("r-b".into()), Some(1)));
        assert!(later, "a connection newer than the agent's last word takes over");
        assert_eq!(holder().await, (true, Some("r-a".into()), Some(8)));
    }
    }

    crate::store::both_backends! {
    async fn an_activation_refuses_enrolment_past_its_limit(store) {
        let act = activation(&store, 1, now_ms() + 60_000).await;
        let code = ids::hash_secret("code");

        let first = store
            .register_instance(&act.id, &code, &new_instance("web-1"))
            .await
            .unwrap();
        let second = store.register_instance(&act.id, &code, &new_instance("web-2")).await;

        assert_eq!(first.region_id, "cn-hangzhou");
        assert!(matches!(second, Err(Error::Register(RegisterRefusal::UsedUp))));
    }
    }

    crate::store::both_backends! {
    async fn an_activation_refuses_a_wrong_code_and_expiry(store) {
        let live = activation(&store, 5, now_ms() + 60_000).await;
        let expired = activation(&store, 5, now_ms() - 1).await;
        let code = ids::hash_secret("code");

        let wrong = store.register_instance(&live.id, "nope", &new_instance("a")).await;
        let late = store.register_instance(&expired.id, &code, &new_instance("a")).await;

        assert!(matches!(wrong, Err(Error::Register(RegisterRefusal::BadCode))));
        assert!(matches!(late, Err(Error::Register(RegisterRefusal::Expired))));
    }
    }

    crate::store::both_backends! {
    async fn instances_are_listed_by_region_and_search(store) {
        let act = activation(&store, 5, now_ms() + 60_000).await;
        let code = ids::hash_secret("code");
        store
            .register_instance(&act.id, &code, &new_instance("web-1"))
            .await
            .unwrap();
        store
            .register_instance(&act.id, &code, &new_instance("db-1"))
            .await
            .unwrap();

        let filter = |q: &str| InstanceFilter {
            region_id: Some("cn-hangzhou".into()),
            query: Some(q.into()),
            limit: 10,
            ..Default::default()
        };
        let (web, total) = store.list_instances(&filter("WEB")).await.unwrap();
        let (none, _) = store
            .list_instances(&InstanceFilter {
                region_id: Some("eu-west-1".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();

        assert_eq!((web.len(), total), (1, 1));
        assert_eq!(web[0].name, "web-1");
        assert!(none.is_empty());
    }
    }
}
