//! AccessKey pairs, the credentials of the Alibaba ECS API (issue 13): create, list, disable,
//! enable, delete, and the lookup the ECS API's signature check makes.
//!
//! Each account holds at most [`ACCESS_KEYS_PER_USER`], as on Alibaba Cloud, of any role: a key
//! acts with its account's role. The secret is shown once, when the key is created. The server
//! must recompute signatures, so it keeps the secret, sealed under its secret key (`sealing`)
//! with the key id as associated data; no log line, audit entry or error message carries it.

use super::Dispatcher;
use super::actor::Actor;
use super::check;
use super::error::{Error, Kind, QuotaKind, not_found};
use super::sealing::SecretKey;
use crate::store::{self, AccessKeyRow, UserRow, ids};

/// Most AccessKey pairs one account may hold (Alibaba's limit).
pub const ACCESS_KEYS_PER_USER: u64 = 2;

/// What [`Dispatcher::access_key`] found for an AccessKey id. Its `Debug` hides the secret.
pub enum AccessKeyLookup {
    /// The key is enabled and so is its account: the account to act as, and the secret to
    /// check the request's signature with.
    Found { user: UserRow, secret: String },
    /// No such key.
    NotFound,
    /// The key, or its account, is disabled.
    Disabled,
}

impl std::fmt::Debug for AccessKeyLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessKeyLookup::Found { user, .. } => f
                .debug_struct("Found")
                .field("user", &user.username)
                .finish_non_exhaustive(),
            AccessKeyLookup::NotFound => f.write_str("NotFound"),
            AccessKeyLookup::Disabled => f.write_str("Disabled"),
        }
    }
}

impl Dispatcher {
    /// Creates an AccessKey pair for the actor (any role); returns it with its secret, shown
    /// this once. Refused (`Quota`) when the actor holds [`ACCESS_KEYS_PER_USER`] already.
    pub async fn create_access_key(
        &self,
        actor: &Actor,
        description: Option<String>,
    ) -> Result<(AccessKeyRow, String), Error> {
        let description = check::access_key_description(description)?;
        let id = ids::new_access_key_id();
        let secret = ids::new_access_key_secret();
        let sealed = self
            .secret_key()?
            .seal(&id, &secret)
            .map_err(|e| internal(format!("cannot seal the secret of AccessKey {id}: {e}")))?;
        let row = self
            .inner
            .store
            .create_access_key(actor.user_id, &id, &description, &sealed, ACCESS_KEYS_PER_USER)
            .await
            .map_err(|e| match e {
                store::Error::Quota { used, limit, .. } => Error::Quota {
                    quota: QuotaKind::AccessKeys,
                    used,
                    limit,
                },
                other => other.into(),
            })?;
        self.audit(actor, "CreateAccessKey", &row.id, &row.description).await;
        Ok((row, secret))
    }

    /// The actor's AccessKeys, oldest first, without their secrets.
    pub async fn list_access_keys(&self, actor: &Actor) -> Result<Vec<AccessKeyRow>, Error> {
        Ok(self.inner.store.list_access_keys(actor.user_id).await?)
    }

    /// Disables (requests it signs are refused) or enables again one of the actor's AccessKeys.
    pub async fn set_access_key_enabled(
        &self,
        actor: &Actor,
        access_key_id: &str,
        enabled: bool,
    ) -> Result<AccessKeyRow, Error> {
        let row = self
            .inner
            .store
            .set_access_key_enabled(actor.user_id, access_key_id, enabled)
            .await
            .map_err(not_found(Kind::AccessKey, access_key_id))?;
        if enabled {
            self.audit(actor, "EnableAccessKey", access_key_id, "").await;
        } else {
            self.audit(actor, "DisableAccessKey", access_key_id, "").await;
        }
        Ok(row)
    }

    /// Deletes one of the actor's AccessKeys.
    pub async fn delete_access_key(&self, actor: &Actor, access_key_id: &str) -> Result<(), Error> {
        self.inner
            .store
            .delete_access_key(actor.user_id, access_key_id)
            .await
            .map_err(not_found(Kind::AccessKey, access_key_id))?;
        self.audit(actor, "DeleteAccessKey", access_key_id, "").await;
        Ok(())
    }

    /// The user and unsealed secret of an access key; Disabled when the key or its user is disabled.
    pub async fn access_key(&self, access_key_id: &str) -> Result<AccessKeyLookup, Error> {
        let Some(found) = self.inner.store.access_key(access_key_id).await? else {
            return Ok(AccessKeyLookup::NotFound);
        };
        if !found.key.enabled || found.user.disabled {
            return Ok(AccessKeyLookup::Disabled);
        }
        let mut secret = self
            .secret_key()?
            .open(&found.key.id, &found.sealed_secret)
            .map_err(|e| {
                internal(format!(
                    "the secret of AccessKey {access_key_id} does not open with this server's secret key ({e}): \
                     every replica needs the same --secret-key-file, and a restored database the key file it \
                     was written with"
                ))
            })?;
        Ok(AccessKeyLookup::Found {
            user: found.user,
            secret: std::mem::take(&mut *secret),
        })
    }

    /// Records that a key signed a request that verified (last_used_at).
    pub async fn access_key_used(&self, access_key_id: &str) -> Result<(), Error> {
        Ok(self.inner.store.mark_access_key_used(access_key_id, self.now()).await?)
    }

    /// The key that seals AccessKey secrets; a dispatcher started without one (`offline`)
    /// refuses every call that needs it.
    fn secret_key(&self) -> Result<&SecretKey, Error> {
        self.inner
            .secret_key
            .as_ref()
            .ok_or_else(|| internal("this dispatcher was started without the server's secret key".into()))
    }
}

/// A failure that is the server's, not the request's: answered as an internal error (5xx),
/// its message logged and never shown.
fn internal(message: String) -> Error {
    Error::Store(store::Error::Corrupt(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{Clock, Settings, Via};
    use crate::store::Role;

    /// A dispatcher with a secret key on a fresh store, and an actor of `role`.
    async fn keys(role: Role) -> (Dispatcher, Actor, tempfile::TempDir) {
        let (store, dir) = crate::store::test_store().await;
        let user = store.create_user("ann", "hash", role).await.unwrap();
        let key = SecretKey::generate().unwrap();
        let (dispatcher, _writer_rx) = Dispatcher::build(store, Settings::default(), Clock::manual(), Some(key));
        let actor = Actor {
            user_id: user.id,
            username: user.username,
            role,
            source_ip: "10.0.0.1".into(),
            via: Via::Api,
        };
        (dispatcher, actor, dir)
    }

    #[tokio::test]
    async fn a_viewer_creates_two_keys_and_the_third_is_refused_by_the_quota() {
        let (d, viewer, _dir) = keys(Role::Viewer).await;

        let (first, secret) = d.create_access_key(&viewer, Some(" ci ".into())).await.unwrap();
        d.create_access_key(&viewer, None).await.unwrap();
        let third = d.create_access_key(&viewer, None).await.unwrap_err();

        assert_eq!(first.description, "ci");
        assert!(first.id.starts_with("LTAI") && first.id.len() == 24, "{}", first.id);
        assert_eq!(secret.len(), 30);
        assert!(
            matches!(
                third,
                Error::Quota {
                    quota: QuotaKind::AccessKeys,
                    used: 2,
                    limit: 2
                }
            ),
            "{third:?}"
        );
        assert_eq!(
            third.to_string(),
            "quota access_keys of your account is used up (2 of 2)"
        );
        assert_eq!(d.list_access_keys(&viewer).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn the_lookup_opens_the_secret_until_the_key_or_its_account_is_disabled() {
        let (d, actor, _dir) = keys(Role::Operator).await;
        let (key, secret) = d.create_access_key(&actor, None).await.unwrap();

        let found = d.access_key(&key.id).await.unwrap();
        d.set_access_key_enabled(&actor, &key.id, false).await.unwrap();
        let disabled = d.access_key(&key.id).await.unwrap();
        d.set_access_key_enabled(&actor, &key.id, true).await.unwrap();
        let update = store::UserUpdate {
            disabled: Some(true),
            ..Default::default()
        };
        d.store().update_user("ann", &update).await.unwrap();
        let account_disabled = d.access_key(&key.id).await.unwrap();
        let unknown = d.access_key("LTAIunknownunknownunkno").await.unwrap();

        let AccessKeyLookup::Found { user, secret: opened } = found else {
            panic!("not found: {found:?}")
        };
        assert_eq!((user.username.as_str(), opened.as_str()), ("ann", secret.as_str()));
        assert!(matches!(disabled, AccessKeyLookup::Disabled));
        assert!(matches!(account_disabled, AccessKeyLookup::Disabled));
        assert!(matches!(unknown, AccessKeyLookup::NotFound));
        let shown = format!("{:?}", AccessKeyLookup::Found { user, secret });
        assert!(!shown.contains(&opened), "{shown}");
    }

    #[tokio::test]
    async fn another_accounts_key_is_not_found_and_use_is_recorded() {
        let (d, ann, _dir) = keys(Role::Admin).await;
        let bob = d.store().create_user("bob", "hash", Role::Admin).await.unwrap();
        let bob = Actor {
            user_id: bob.id,
            username: bob.username,
            ..ann.clone()
        };
        let (key, _) = d.create_access_key(&ann, None).await.unwrap();

        let disable = d.set_access_key_enabled(&bob, &key.id, false).await.unwrap_err();
        let delete = d.delete_access_key(&bob, &key.id).await.unwrap_err();
        d.access_key_used(&key.id).await.unwrap();

        assert!(
            matches!(
                disable,
                Error::NotFound {
                    kind: Kind::AccessKey,
                    ..
                }
            ),
            "{disable:?}"
        );
        assert!(
            matches!(
                delete,
                Error::NotFound {
                    kind: Kind::AccessKey,
                    ..
                }
            ),
            "{delete:?}"
        );
        assert!(d.list_access_keys(&bob).await.unwrap().is_empty());
        let listed = d.list_access_keys(&ann).await.unwrap();
        assert_eq!(listed[0].last_used_at, Some(d.now()));
        assert!(listed[0].enabled);
    }

    #[tokio::test]
    async fn a_dispatcher_without_the_secret_key_refuses_to_create_keys() {
        let (store, _dir) = crate::store::test_store().await;
        let user = store.create_user("ann", "hash", Role::Admin).await.unwrap();
        let d = Dispatcher::offline(store, Settings::default());
        let actor = Actor {
            user_id: user.id,
            ..Actor::server("t")
        };

        let refused = d.create_access_key(&actor, None).await.unwrap_err();

        assert!(refused.to_string().contains("secret key"), "{refused}");
        assert!(d.list_access_keys(&actor).await.unwrap().is_empty());
    }
}
