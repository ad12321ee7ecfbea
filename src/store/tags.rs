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
