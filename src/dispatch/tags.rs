//! Instance tags: replacing an instance's tags, adding tags to many instances at once, and
//! reading a tag filter (`key` or `key=value`). Targeting by tags is resolved in `run.rs`.

use super::Dispatcher;
use super::actor::Actor;
use super::check;
use super::error::{Error, Field, Kind, invalid, not_found};
use crate::protocol::Tag;
use crate::store::{self, InstanceRow, Role, TagMatch};
use std::collections::BTreeMap;

/// Reads one tag filter: `key` (any value) or `key=value` (only the first `=` splits).
pub fn tag_filter(text: &str) -> Result<TagMatch, Error> {
    let (key, value) = match text.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (text, None),
    };
    check::tag(&Tag::new(key, value.unwrap_or_default()))?;
    Ok(TagMatch {
        key: key.to_string(),
        value: value.map(str::to_string),
    })
}

/// Reads a listing's tag filters, all of which must match: at most as many as an instance has
/// tags (more could never match, and each costs the query a condition).
pub fn tag_filters(texts: &[String]) -> Result<Vec<TagMatch>, Error> {
    if texts.len() > check::MAX_TAGS {
        return Err(invalid(
            Field::Tags,
            format!(
                "{} tag filters given; an instance has at most {} tags, so give at most that many",
                texts.len(),
                check::MAX_TAGS
            ),
        ));
    }
    texts.iter().map(|t| tag_filter(t)).collect()
}

/// The tags as a map, once checked (`what` names whose tags they are in refusals).
pub(super) fn checked_tags(tags: &[Tag], what: &str) -> Result<BTreeMap<String, String>, Error> {
    check::tags(tags, what)?;
    Ok(tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect())
}

/// `env=prod, role=web`, for audit details.
fn words(tags: &BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Dispatcher {
    /// Replaces an instance's tags (operator): at most 20, each by Alibaba's rules.
    pub async fn set_instance_tags(
        &self,
        actor: &Actor,
        instance_id: &str,
        tags: &[Tag],
    ) -> Result<InstanceRow, Error> {
        actor.require(Role::Operator)?;
        let tags = checked_tags(tags, &format!("instance {instance_id}"))?;
        self.inner
            .store
            .set_instance_tags(&[(instance_id.to_string(), tags.clone())])
            .await
            .map_err(not_found(Kind::Instance, instance_id))?;
        self.audit(actor, "SetInstanceTags", instance_id, &words(&tags)).await;
        self.inner
            .store
            .instance(instance_id)
            .await
            .map_err(not_found(Kind::Instance, instance_id))
    }

    /// Adds tags to each of `instance_ids` (operator), keeping their other tags; a key they
    /// have already takes the new value. Refused, with nothing changed, when an instance would
    /// have more than 20.
    pub async fn add_instance_tags(
        &self,
        actor: &Actor,
        instance_ids: &[String],
        tags: &[Tag],
    ) -> Result<usize, Error> {
        actor.require(Role::Operator)?;
        check::instance_ids(instance_ids, self.inner.settings.max_instances)?;
        let added = checked_tags(tags, "the tags to add")?;
        if added.is_empty() {
            return Err(invalid(Field::Tags, "no tags given: add at least one key=value"));
        }
        let instances = self.inner.store.instances_by_ids(instance_ids).await?;
        if instances.len() < instance_ids.len() {
            let unknown = instance_ids
                .iter()
                .filter(|id| !instances.iter().any(|i| &i.id == *id))
                .cloned()
                .collect();
            return Err(Error::UnknownInstances(unknown));
        }
        let mut writes = Vec::with_capacity(instances.len());
        for instance in instances {
            let mut merged = instance.tags;
            merged.extend(added.clone());
            if merged.len() > check::MAX_TAGS {
                return Err(invalid(
                    Field::Tags,
                    format!(
                        "instance {} would have {} tags; at most {} are allowed: remove some of its tags first",
                        instance.id,
                        merged.len(),
                        check::MAX_TAGS
                    ),
                ));
            }
            writes.push((instance.id, merged));
        }
        match self.inner.store.set_instance_tags(&writes).await {
            Ok(()) => {}
            // Deregistered between the read and the write.
            Err(store::Error::NotFound) => {
                return Err(Error::UnknownInstances(writes.into_iter().map(|(id, _)| id).collect()));
            }
            Err(e) => return Err(e.into()),
        }
        let target = match instance_ids {
            [one] => one.clone(),
            many => format!("{} instances", many.len()),
        };
        let detail = format!("{} on {}", words(&added), instance_ids.join(" "));
        self.audit(actor, "AddInstanceTags", &target, &detail).await;
        Ok(writes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_filter_is_a_key_or_a_key_and_value() {
        assert_eq!(
            tag_filter("env").unwrap(),
            TagMatch {
                key: "env".into(),
                value: None
            }
        );
        assert_eq!(
            tag_filter("env=").unwrap(),
            TagMatch {
                key: "env".into(),
                value: Some(String::new())
            }
        );
        assert_eq!(tag_filter("team=a=b").unwrap().value.as_deref(), Some("a=b"));
        assert!(tag_filter("aliyun:x").is_err());
    }
}
