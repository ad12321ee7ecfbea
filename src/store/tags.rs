//! Instance tags: writing them (the `instance_tags` rows the filters search, and the JSON copy
//! in `instances.tags` that rows show, in one transaction) and finding instances by them.

use super::db::{Query, Tx, query};
use super::{Error, Result, Store};
use crate::protocol::Tag;
use std::collections::BTreeMap;

/// One condition of a tag filter: the instance has `key`, with `value` when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagMatch {
    pub key: String,
    /// `None` matches any value of the key.
    pub value: Option<String>,
}

impl From<&Tag> for TagMatch {
    fn from(tag: &Tag) -> Self {
        TagMatch {
            key: tag.key.clone(),
            value: Some(tag.value.clone()),
        }
    }
}

/// SQL for "the instance has every one of `count` tag conditions", one `EXISTS` per condition
/// (each a lookup in the `(instance_id, key)` key), with placeholders `$first`, `$first + 1`, …
/// (key, then value or NULL) for [`bind_tag_matches`].
pub(crate) fn tag_conditions(count: usize, first: usize) -> String {
    (0..count)
        .map(|n| {
            let (key, value) = (first + 2 * n, first + 2 * n + 1);
            format!(
                " AND EXISTS (SELECT 1 FROM instance_tags t WHERE t.instance_id = instances.id \
                 AND t.key = ${key} AND (${value} IS NULL OR t.value = ${value}))"
            )
        })
        .collect()
}

/// Binds the placeholders [`tag_conditions`] wrote, in its order.
pub(crate) fn bind_tag_matches<'q>(mut statement: Query<'q>, matches: &'q [TagMatch]) -> Query<'q> {
    for m in matches {
        statement = statement.bind(m.key.as_str()).bind(m.value.as_deref());
    }
    statement
}

/// Writes an instance's tags: the rows, and the JSON copy. Not found when the instance is gone.
pub(crate) async fn write_tags(tx: &mut Tx, instance_id: &str, tags: &BTreeMap<String, String>) -> Result<()> {
    let changed = query("UPDATE instances SET tags = $2 WHERE id = $1")
        .bind(instance_id)
        .bind(sqlx::types::Json(tags))
        .execute(&mut *tx)
        .await?;
    if changed == 0 {
        return Err(Error::NotFound);
    }
    query("DELETE FROM instance_tags WHERE instance_id = $1")
        .bind(instance_id)
        .execute(&mut *tx)
        .await?;
    for (key, value) in tags {
        query("INSERT INTO instance_tags (instance_id, key, value) VALUES ($1, $2, $3)")
            .bind(instance_id)
            .bind(key.as_str())
            .bind(value.as_str())
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

impl Store {
    /// Replaces the tags of each instance named, all in one transaction. Not found (and nothing
    /// written) when one of them is gone.
    pub async fn set_instance_tags(&self, tags: &[(String, BTreeMap<String, String>)]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for (instance_id, tags) in tags {
            write_tags(&mut tx, instance_id, tags).await?;
        }
        tx.commit().await
    }

    /// The ids of the instances of `region_id` that have every one of `tags`, in id order, at
    /// most `limit`.
    pub async fn tagged_instance_ids(&self, region_id: &str, tags: &[TagMatch], limit: u64) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT id FROM instances WHERE region_id = $1{} ORDER BY id LIMIT $2",
            tag_conditions(tags.len(), 3)
        );
        let statement = query(&sql).bind(region_id).bind(limit as i64);
        let ids: Vec<(String,)> = bind_tag_matches(statement, tags).fetch_all(&self.pool).await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::{CommandType, OsType};
    use crate::store::invocations::tests::new_invocation;
    use crate::store::{ClientToken, InstanceFilter, NewActivation, NewInstance, ids, now_ms};

    /// Enrols an instance in `region` with `tags`.
    pub(crate) async fn enrol(store: &Store, region: &str, name: &str, tags: &[(&str, &str)]) -> String {
        let activation = store
            .create_activation(&NewActivation {
                region_id: region.into(),
                description: String::new(),
                instance_count_limit: 1,
                expires_at: now_ms() + 60_000,
                code_hash: ids::hash_secret("code"),
            })
            .await
            .unwrap();
        let new = NewInstance {
            name: name.into(),
            hostname: "host".into(),
            os_type: OsType::Linux,
            os_name: "Debian".into(),
            ip_addresses: vec![],
            agent_version: "0.1.0".into(),
            supported_command_types: vec![CommandType::RunShellScript],
            secret_hash: ids::hash_secret("s"),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        store
            .register_instance(&activation.id, &ids::hash_secret("code"), &new)
            .await
            .unwrap()
            .id
    }

    fn has(key: &str, value: Option<&str>) -> TagMatch {
        TagMatch {
            key: key.into(),
            value: value.map(str::to_string),
        }
    }

    async fn names(store: &Store, tags: Vec<TagMatch>) -> Vec<String> {
        let filter = InstanceFilter {
            tags,
            limit: 100,
            ..Default::default()
        };
        let (rows, total) = store.list_instances(&filter).await.unwrap();
        assert_eq!(rows.len() as u64, total, "the count agrees with the rows");
        let mut names: Vec<String> = rows.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    crate::store::both_backends! {
    async fn tags_are_stored_with_the_instance_and_filter_it_by_key_and_by_value(store) {
        let web = enrol(&store, "cn-hangzhou", "web", &[("env", "prod"), ("role", "web")]).await;
        let db = enrol(&store, "cn-hangzhou", "db", &[("env", "prod"), ("role", "db")]).await;
        enrol(&store, "cn-hangzhou", "dev", &[("env", "dev")]).await;
        let far = enrol(&store, "eu-west-1", "far", &[("env", "prod"), ("role", "web")]).await;

        let prod = names(&store, vec![has("env", Some("prod"))]).await;
        let any_role = names(&store, vec![has("role", None)]).await;
        let prod_web = names(&store, vec![has("env", Some("prod")), has("role", Some("web"))]).await;
        let tagged = store
            .tagged_instance_ids("cn-hangzhou", &[has("env", Some("prod")), has("role", Some("web"))], 10)
            .await
            .unwrap();
        let ids_matching = store
            .matching_instance_ids(
                &InstanceFilter {
                    tags: vec![has("role", Some("db"))],
                    ..Default::default()
                },
                10,
            )
            .await
            .unwrap();

        assert_eq!(prod, ["db", "far", "web"]);
        assert_eq!(any_role, ["db", "far", "web"]);
        assert_eq!(prod_web, ["far", "web"]);
        assert_eq!(tagged, std::slice::from_ref(&web), "only the region asked, with all the tags");
        assert_eq!(ids_matching, std::slice::from_ref(&db));
        assert!(!tagged.contains(&far));
    }
    }

    crate::store::both_backends! {
    async fn replacing_tags_replaces_the_rows_the_filters_search_and_the_copy_rows_show(store) {
        let web = enrol(&store, "local", "web", &[("env", "prod")]).await;

        let new: BTreeMap<String, String> = [("team".to_string(), "ops".to_string())].into();
        store.set_instance_tags(&[(web.clone(), new.clone())]).await.unwrap();
        let gone = store.set_instance_tags(&[("i-gone".to_string(), new.clone())]).await;

        assert_eq!(store.instance(&web).await.unwrap().tags, new);
        assert!(names(&store, vec![has("env", None)]).await.is_empty(), "the old tag no longer matches");
        assert_eq!(names(&store, vec![has("team", Some("ops"))]).await, ["web"]);
        assert!(matches!(gone, Err(crate::store::Error::NotFound)));
    }
    }

    fn token(expired_before: i64) -> ClientToken {
        ClientToken {
            user_id: 7,
            token: "retry-1".into(),
            request_hash: "h1".into(),
            expired_before,
        }
    }

    crate::store::both_backends! {
    async fn a_client_token_makes_one_invocation_even_when_submitted_concurrently(store) {
        let mut first = new_invocation(&["i-1"], now_ms() + 60_000);
        first.client_token = Some(token(now_ms() - 86_400_000));
        let second = first.clone();

        let (a, b) = tokio::join!(store.create_invocation(&first), store.create_invocation(&second));
        let invocations: i64 = crate::store::db::query_scalar("SELECT COUNT(*) FROM invocations")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        let claim = store.client_token_claim(7, "retry-1", now_ms() - 86_400_000).await.unwrap();
        let other_account = store.client_token_claim(8, "retry-1", 0).await.unwrap();

        let (made, refused) = match (a, b) {
            (Ok(made), Err(refused)) | (Err(refused), Ok(made)) => (made, refused),
            other => panic!("exactly one claim wins: {other:?}"),
        };
        assert!(
            matches!(&refused, crate::store::Error::ClientTokenUsed { invocation_id, request_hash }
                if invocation_id == &made.id && request_hash == "h1"),
            "{refused:?}"
        );
        assert_eq!(invocations, 1, "the loser stored nothing");
        assert_eq!(claim, Some((made.id.clone(), "h1".to_string())));
        assert_eq!(other_account, None, "a token is per account");
    }
    }

    crate::store::both_backends! {
    async fn a_client_token_older_than_its_day_is_free_again(store) {
        let mut first = new_invocation(&["i-1"], now_ms() + 60_000);
        first.client_token = Some(token(now_ms() - 86_400_000));
        let made = store.create_invocation(&first).await.unwrap();

        // A day later: the claim was made before the cut-off.
        let mut later = first.clone();
        later.client_token = Some(token(now_ms() + 1_000));
        let again = store.create_invocation(&later).await.unwrap();

        assert_ne!(again.id, made.id);
        let claim = store.client_token_claim(7, "retry-1", 0).await.unwrap();
        assert_eq!(claim.map(|(id, _)| id), Some(again.id));
    }
    }
}
