//! Accounts: passwords (argon2id), the one login check every surface uses (throttled before any
//! hashing, see `throttle`), console sessions, API tokens, users and the server settings an
//! admin changes.

use super::Dispatcher;
use super::actor::{Actor, Via};
use super::check;
use super::error::{Conflict, Error, Field, Kind, LoginRefusal, invalid, not_found};
use super::throttle;
use crate::store::{self, Role, SessionRow, TokenRow, UserRow, UserUpdate, ids, now_ms};
use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a console session lasts.
pub const SESSION_HOURS: i64 = 12;

/// How long a verified Basic-auth password is trusted without hashing it again.
const LOGIN_CACHE_TTL: Duration = Duration::from_secs(300);

/// Hashes a password with argon2id (OWASP parameters: 19 MiB, 2 passes, 1 lane).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Checks a password against an argon2 PHC string.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// An argon2id hash (default parameters) of a random password nobody knows: checked against
/// when the username does not exist, so the time a refusal takes does not tell which accounts
/// exist.
const UNKNOWN_USER_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$B15q+n5ouXnEqkbRTMBgtQ$62ShAaQfEpYk+DXVTyXzDG1m/+wHOf06UPV6SUxl5GY";

/// argon2 takes tens of milliseconds of CPU: keep it off the async workers.
async fn verify_blocking(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_string(), hash.to_string());
    tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

async fn hash_blocking(password: String) -> Result<String, Error> {
    let hashed = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Error::Store(store::Error::Corrupt(format!("password hashing stopped: {e}"))))?;
    hashed.map_err(|e| Error::Store(store::Error::Corrupt(format!("password hashing failed: {e}"))))
}

/// State of the accounts room, inside the dispatcher.
#[derive(Default)]
pub(super) struct Accounts {
    /// Turns of the attempts for one username (see `throttle`), by username key.
    user_turns: throttle::Turns,
    /// Turns of the password checks from one address, by address key: they run one at a
    /// time, so concurrent guesses cannot overshoot the address's limit.
    address_turns: throttle::Turns,
    /// Basic-auth passwords verified recently, so a script calling in a loop does not pay an
    /// argon2 hash per request. Keyed by SHA-256 of `username NUL password`.
    verified: Mutex<HashMap<[u8; 32], (UserRow, Instant)>>,
    /// Whether the API accepts HTTP Basic (an admin can switch it off); loaded at start.
    basic_auth: AtomicBool,
}

impl Accounts {
    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (UserRow, Instant)>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A console session just started: the cookie secret (shown to the browser only) and its user.
/// Its `Debug` hides the secret.
pub struct NewSession {
    pub secret: String,
    pub user: UserRow,
}

/// What [`Dispatcher::ensure_first_admin`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstAdmin {
    /// The database has accounts already.
    Existed,
    /// `admin` was created with the password given.
    Created,
    /// `admin` was created with this generated password, to be shown once.
    Generated(String),
}

/// Changes to an account through `PATCH /users/{name}` or the console's Users page.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub role: Option<String>,
    pub disabled: Option<bool>,
    pub password: Option<String>,
    /// Needed when a user who is not an admin changes their own password.
    pub current_password: Option<String>,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("user", &self.user.username)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Loads the run-time settings; called once at server start.
    pub async fn load_settings(&self) -> Result<(), Error> {
        let basic = self.inner.store.setting("basic_auth").await?.is_none_or(|v| v != "off");
        self.inner.accounts.basic_auth.store(basic, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the API accepts HTTP Basic.
    pub fn basic_auth_enabled(&self) -> bool {
        self.inner.accounts.basic_auth.load(Ordering::Relaxed)
    }

    /// Whether the API accepts HTTP Basic, as an admin reads the setting.
    pub fn basic_auth_setting(&self, actor: &Actor) -> Result<bool, Error> {
        actor.require(Role::Admin)?;
        Ok(self.basic_auth_enabled())
    }

    /// The audit log (admin).
    pub async fn list_audit(
        &self,
        actor: &Actor,
        filter: &store::AuditFilter,
    ) -> Result<(Vec<store::AuditRow>, u64), Error> {
        actor.require(Role::Admin)?;
        Ok(self.inner.store.list_audit(filter).await?)
    }

    /// Switches HTTP Basic on the API on or off (admin), and remembers it.
    pub async fn set_basic_auth(&self, actor: &Actor, enabled: bool) -> Result<(), Error> {
        actor.require(Role::Admin)?;
        let value = if enabled { "on" } else { "off" };
        self.inner.store.set_setting("basic_auth", value).await?;
        self.inner.accounts.basic_auth.store(enabled, Ordering::Relaxed);
        self.audit(actor, "ModifySettings", "server", &format!("basic auth {value}"))
            .await;
        Ok(())
    }

    /// On an empty database, creates the `admin` account (DESIGN.md §8) with `password`, or
    /// with a generated one.
    pub async fn ensure_first_admin(&self, password: Option<&str>) -> Result<FirstAdmin, Error> {
        if self.inner.store.count_users().await? > 0 {
            return Ok(FirstAdmin::Existed);
        }
        let (password, generated) = match password {
            Some(password) => (password.to_string(), false),
            None => (ids::new_secret()[..24].to_string(), true),
        };
        check::password("admin", &password)?;
        let hash = hash_blocking(password.clone()).await?;
        match self.inner.store.create_user("admin", &hash, Role::Admin).await {
            Ok(_) => {}
            // Another replica starting at the same moment created it first.
            Err(store::Error::Conflict) => return Ok(FirstAdmin::Existed),
            Err(e) => return Err(e.into()),
        }
        let server = Actor::server("server");
        self.audit(&server, "CreateUser", "admin", "admin").await;
        Ok(if generated {
            FirstAdmin::Generated(password)
        } else {
            FirstAdmin::Created
        })
    }

    /// The one password check of every surface, under the login throttle: unknown user,
    /// disabled account and wrong password are one refusal, and take as long as each other.
    pub async fn authenticate(&self, username: &str, password: &str, source_ip: &str) -> Result<UserRow, Error> {
        let check = async {
            let user = self.inner.store.user_by_name(username).await?;
            let hash = user
                .as_ref()
                .map_or(UNKNOWN_USER_HASH, |user| user.password_hash.as_str());
            let verified = verify_blocking(password, hash).await;
            Ok(user.filter(|user| verified && !user.disabled))
        };
        match self.under_throttle(username, source_ip, check).await? {
            Checked::Right(user) => Ok(user),
            Checked::Wrong { waited } => Err(Error::Login(LoginRefusal::WrongCredentials { waited })),
        }
    }

    /// Runs a password check (`check` answers `Some` when the password is right) under the
    /// rules of `throttle`: an address over its limit is refused before anything else; an
    /// attempt from an address the username does not know waits its turn and the delay the
    /// username's failures from elsewhere call for; the check itself runs in its address's
    /// turn, after the address's limit is read again. The outcome is recorded for the next
    /// attempt.
    async fn under_throttle<T>(
        &self,
        username: &str,
        source_ip: &str,
        check: impl Future<Output = Result<Option<T>, Error>>,
    ) -> Result<Checked<T>, Error> {
        let (accounts, store) = (&self.inner.accounts, &self.inner.store);
        let policy = &self.inner.settings.login;
        let (user, source) = (throttle::user_key(username), throttle::source_key(source_ip));

        self.check_address(&source).await?;
        let is_known = store
            .is_known_login_source(&user, &source, policy.known_since(self.now()))
            .await?;
        let held = Instant::now();
        let _user_turn = if is_known {
            None
        } else {
            let Ok(turn) = tokio::time::timeout(policy.max_wait, accounts.user_turns.take(&user)).await else {
                tracing::info!(username = %user, source = %source, "login refused: its username's turns are busy");
                return Err(Error::Login(LoginRefusal::UserBusy(policy.max_wait)));
            };
            // Counted in its turn: the attempts ahead may have added failures.
            let elsewhere = store
                .login_failures_elsewhere(&user, &source, policy.since(self.now()))
                .await?;
            let delay = policy.delay(elsewhere);
            if !delay.is_zero() {
                tracing::info!(username = %user, source = %source, failures_elsewhere = elsewhere, ?delay, "login attempt slowed");
                tokio::time::sleep(delay).await;
            }
            Some(turn)
        };
        let waited = held.elapsed();

        // Read again in the address's turn: the checks ahead of this one may have failed.
        let _address_turn = accounts.address_turns.take(&source).await;
        self.check_address(&source).await?;
        match check.await? {
            Some(value) => {
                // Bookkeeping only: a store that cannot write it does not refuse the owner.
                if let Err(e) = store.record_login_success(&user, &source, self.now()).await {
                    tracing::warn!(error = %e, "could not record a successful login");
                }
                Ok(Checked::Right(value))
            }
            None => {
                store.record_login_failure(&user, &source, self.now()).await?;
                Ok(Checked::Wrong { waited })
            }
        }
    }

    /// Refuses an address (a `throttle::source_key`) that is over its failure limit.
    async fn check_address(&self, source: &str) -> Result<(), Error> {
        let policy = &self.inner.settings.login;
        let now = self.now();
        let reached_at = self
            .inner
            .store
            .address_limit_reached_at(source, policy.since(now), policy.address_limit)
            .await?;
        match policy.address_wait(now, reached_at) {
            Some(wait) => Err(Error::Login(LoginRefusal::AddressThrottled(wait))),
            None => Ok(()),
        }
    }

    /// HTTP Basic on the API: [`authenticate`](Self::authenticate), remembering a verified
    /// password for a few minutes. A refused address is refused before the cache is read:
    /// otherwise, while the owner's password is cached, its guesses would be answered without
    /// counting, right ones with a 200.
    pub async fn authenticate_basic(&self, username: &str, password: &str, source_ip: &str) -> Result<UserRow, Error> {
        if !self.basic_auth_enabled() {
            return Err(Error::Login(LoginRefusal::BasicDisabled));
        }
        self.check_address(&throttle::source_key(source_ip)).await?;
        let key: [u8; 32] = Sha256::new()
            .chain_update(username.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if let Some((user, at)) = self.inner.accounts.verified().get(&key) {
            if at.elapsed() < LOGIN_CACHE_TTL {
                return Ok(user.clone());
            }
        }
        let user = self.authenticate(username, password, source_ip).await?;
        let mut verified = self.inner.accounts.verified();
        if verified.len() > 10_000 {
            verified.retain(|_, (_, at)| at.elapsed() < LOGIN_CACHE_TTL);
        }
        verified.insert(key, (user.clone(), Instant::now()));
        Ok(user)
    }

    /// The enabled user behind a live API token.
    pub async fn authenticate_token(&self, token: &str) -> Result<UserRow, Error> {
        self.inner
            .store
            .user_by_token(&ids::hash_secret(token.trim()))
            .await?
            .ok_or(Error::Login(LoginRefusal::BadToken))
    }

    /// Forgets verified Basic-auth passwords (after an account changed).
    fn forget_logins(&self) {
        self.inner.accounts.verified().clear();
    }

    /// Console login: checks the password and starts a session. Audited either way.
    pub async fn login(&self, username: &str, password: &str, source_ip: &str) -> Result<NewSession, Error> {
        let attempt = Actor {
            user_id: 0,
            username: username.to_string(),
            role: Role::Viewer,
            source_ip: source_ip.to_string(),
            via: Via::Console,
        };
        let user = match self.authenticate(username, password, source_ip).await {
            Ok(user) => user,
            Err(e) => {
                if matches!(e, Error::Login(LoginRefusal::WrongCredentials { .. })) {
                    self.audit(&attempt, "LoginFailed", "console", "").await;
                }
                return Err(e);
            }
        };
        let secret = ids::new_secret();
        let expires_at = now_ms() + SESSION_HOURS * 3_600_000;
        self.inner
            .store
            .create_session(&ids::hash_secret(&secret), user.id, &ids::new_secret(), expires_at)
            .await?;
        self.audit(&attempt, "Login", "console", "").await;
        Ok(NewSession { secret, user })
    }

    /// The live session behind a console cookie, if any.
    pub async fn session(&self, cookie: &str) -> Result<Option<SessionRow>, Error> {
        Ok(self.inner.store.session(&ids::hash_secret(cookie)).await?)
    }

    /// Ends a console session.
    pub async fn logout(&self, actor: &Actor, cookie: &str) -> Result<(), Error> {
        self.inner.store.delete_session(&ids::hash_secret(cookie)).await?;
        self.audit(actor, "Logout", "console", "").await;
        Ok(())
    }

    /// Remembers the region picked in the console's top bar. A view preference of the session,
    /// so not audited.
    pub async fn pick_region(&self, cookie: &str, region_id: &str) -> Result<(), Error> {
        if !region_id.is_empty() {
            check::RegionId::parse(region_id)?;
        }
        Ok(self
            .inner
            .store
            .set_session_region(&ids::hash_secret(cookie), region_id)
            .await?)
    }

    /// Creates a console account (admin).
    pub async fn create_user(
        &self,
        actor: &Actor,
        username: &str,
        password: &str,
        role: &str,
    ) -> Result<UserRow, Error> {
        actor.require(Role::Admin)?;
        check::account_name(username)?;
        check::password(username, password)?;
        let role = check::role(role)?;
        let hash = hash_blocking(password.to_string()).await?;
        let user = self
            .inner
            .store
            .create_user(username, &hash, role)
            .await
            .map_err(|e| match e {
                store::Error::Conflict => Error::Conflict {
                    conflict: Conflict::UserExists,
                    message: format!("user {username:?} exists already"),
                },
                other => other.into(),
            })?;
        self.audit(actor, "CreateUser", username, role.as_str()).await;
        Ok(user)
    }

    /// Changes an account. An admin may change anything of anyone; anyone else may only change
    /// their own password, giving the current one.
    pub async fn modify_user(&self, actor: &Actor, username: &str, change: UserChange) -> Result<UserRow, Error> {
        let own_password_only = actor.username == username
            && change.role.is_none()
            && change.disabled.is_none()
            && change.password.is_some();
        if actor.role < Role::Admin && own_password_only {
            let Some(current) = change.current_password else {
                return Err(invalid(
                    Field::Password,
                    "give `current_password` to change your own password",
                ));
            };
            let new = change.password.unwrap_or_default();
            return self.change_password(actor, &current, &new).await;
        }
        actor.require(Role::Admin)?;
        let role = change.role.as_deref().map(check::role).transpose()?;
        let password_hash = match change.password {
            Some(password) => {
                check::password(username, &password)?;
                Some(hash_blocking(password).await?)
            }
            None => None,
        };
        let update = UserUpdate {
            role,
            disabled: change.disabled,
            password_hash,
        };
        let user = self.update_user(username, &update).await?;
        let detail: Vec<String> = [
            update.role.map(|r| format!("role {}", r.as_str())),
            update
                .disabled
                .map(|d| if d { "disabled" } else { "enabled" }.to_string()),
            update.password_hash.as_ref().map(|_| "password changed".to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        self.audit(actor, "ModifyUser", username, &detail.join(", ")).await;
        Ok(user)
    }

    /// Changes the actor's own password, proving they know the current one. Every session of
    /// the account ends, this one too.
    pub async fn change_password(&self, actor: &Actor, current: &str, new: &str) -> Result<UserRow, Error> {
        // Guesses of the current password count like failed logins: a stolen session or token
        // must not become a way to try passwords at argon2's pace.
        let check = async {
            let user = self
                .inner
                .store
                .user_by_name(&actor.username)
                .await?
                .ok_or_else(|| Error::NotFound {
                    kind: Kind::User,
                    id: actor.username.clone(),
                })?;
            Ok(verify_blocking(current, &user.password_hash).await.then_some(()))
        };
        if let Checked::Wrong { .. } = self.under_throttle(&actor.username, &actor.source_ip, check).await? {
            return Err(Error::Login(LoginRefusal::WrongCurrentPassword));
        }
        check::password(&actor.username, new)?;
        let update = UserUpdate {
            password_hash: Some(hash_blocking(new.to_string()).await?),
            ..Default::default()
        };
        let user = self.update_user(&actor.username, &update).await?;
        self.audit(actor, "ChangePassword", &actor.username, "").await;
        Ok(user)
    }

    /// Stores an account change; verified Basic-auth passwords stop counting (the store ends
    /// the user's sessions itself).
    async fn update_user(&self, username: &str, update: &UserUpdate) -> Result<UserRow, Error> {
        let user = self
            .inner
            .store
            .update_user(username, update)
            .await
            .map_err(|e| match e {
                store::Error::Conflict => last_admin(),
                other => not_found(Kind::User, username)(other),
            })?;
        self.forget_logins();
        Ok(user)
    }

    /// Deletes an account (admin; not one's own, not the last admin).
    pub async fn delete_user(&self, actor: &Actor, username: &str) -> Result<(), Error> {
        actor.require(Role::Admin)?;
        if actor.username == username {
            return Err(Error::Conflict {
                conflict: Conflict::DeleteSelf,
                message: "you cannot delete your own account".into(),
            });
        }
        self.inner.store.delete_user(username).await.map_err(|e| match e {
            store::Error::Conflict => last_admin(),
            other => not_found(Kind::User, username)(other),
        })?;
        self.forget_logins();
        self.audit(actor, "DeleteUser", username, "").await;
        Ok(())
    }

    /// Every account (admin).
    pub async fn list_users(&self, actor: &Actor) -> Result<Vec<UserRow>, Error> {
        actor.require(Role::Admin)?;
        Ok(self.inner.store.list_users().await?)
    }

    /// Creates an API token for the actor; returns it with its secret, shown this once.
    pub async fn create_token(
        &self,
        actor: &Actor,
        name: &str,
        expires_in_days: Option<u64>,
    ) -> Result<(TokenRow, String), Error> {
        let name = check::token_name(name)?;
        let expires_at = check::token_days(expires_in_days)?.map(|d| now_ms() + d as i64 * 86_400_000);
        let secret = format!("frt_{}", ids::new_secret());
        let row = self
            .inner
            .store
            .create_token(actor.user_id, &name, &ids::hash_secret(&secret), expires_at)
            .await?;
        self.audit(actor, "CreateToken", &row.id, &name).await;
        Ok((row, secret))
    }

    /// Revokes one of the actor's tokens.
    pub async fn revoke_token(&self, actor: &Actor, token_id: &str) -> Result<(), Error> {
        self.inner
            .store
            .revoke_token(actor.user_id, token_id)
            .await
            .map_err(not_found(Kind::Token, token_id))?;
        self.audit(actor, "RevokeToken", token_id, "").await;
        Ok(())
    }
}

/// What a password check under the throttle found.
enum Checked<T> {
    /// The password is right; what the check answered.
    Right(T),
    /// The password is wrong; the attempt was held this long before its check.
    Wrong { waited: Duration },
}

fn last_admin() -> Error {
    Error::Conflict {
        conflict: Conflict::LastAdmin,
        message: "this is the last enabled admin: make another user admin first".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{Clock, LoginPolicy, Settings};

    const ADMIN_PASSWORD: &str = "the admin's long password";

    /// Login rules small enough to walk through in a test: 3 failures per address, delays of
    /// milliseconds.
    fn small_policy() -> LoginPolicy {
        LoginPolicy {
            address_limit: 3,
            free_failures: 2,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_wait: Duration::from_millis(200),
            ..LoginPolicy::default()
        }
    }

    /// A dispatcher on a fresh store with `admin` created, its login rules and a manual clock.
    async fn accounts(login: LoginPolicy) -> (Dispatcher, Clock, tempfile::TempDir) {
        let (store, dir) = crate::store::test_store().await;
        let clock = Clock::manual();
        let settings = Settings {
            login,
            ..Settings::default()
        };
        let (dispatcher, _writer_rx) = Dispatcher::build(store, settings, clock.clone(), None);
        dispatcher.ensure_first_admin(Some(ADMIN_PASSWORD)).await.unwrap();
        dispatcher.load_settings().await.unwrap();
        (dispatcher, clock, dir)
    }

    #[tokio::test]
    async fn servers_starting_at_once_on_an_empty_database_create_one_admin_and_both_start() {
        let (store, _dir) = crate::store::test_store().await;
        let first = Dispatcher::offline(store.clone(), Settings::default());
        let second = Dispatcher::offline(store.clone(), Settings::default());

        let (a, b) = tokio::join!(
            first.ensure_first_admin(Some(ADMIN_PASSWORD)),
            second.ensure_first_admin(None)
        );

        let mut outcomes = [a.unwrap(), b.unwrap()];
        outcomes.sort_by_key(|o| matches!(o, FirstAdmin::Existed));
        assert!(
            matches!(
                outcomes,
                [FirstAdmin::Created | FirstAdmin::Generated(_), FirstAdmin::Existed]
            ),
            "{outcomes:?}"
        );
        assert_eq!(store.count_users().await.unwrap(), 1);
    }

    fn refusal<T>(result: Result<T, Error>) -> LoginRefusal {
        match result {
            Err(Error::Login(refusal)) => refusal,
            Err(other) => panic!("refused otherwise: {other}"),
            Ok(_) => panic!("not refused"),
        }
    }

    #[tokio::test]
    async fn guesses_from_one_address_slow_the_username_elsewhere_but_never_refuse_the_right_password() {
        let policy = LoginPolicy {
            address_limit: 50,
            ..small_policy()
        };
        let (d, _clock, _dir) = accounts(policy.clone()).await;

        for _ in 0..10 {
            let guess = d.authenticate("admin", "a wrong guess", "10.0.0.9").await;
            assert!(matches!(refusal(guess), LoginRefusal::WrongCredentials { .. }));
        }
        let owner = d.authenticate("admin", ADMIN_PASSWORD, "10.0.0.1").await;
        let typo = d.authenticate("admin", "a typo", "10.0.0.2").await;

        assert_eq!(owner.unwrap().username, "admin");
        let LoginRefusal::WrongCredentials { waited } = refusal(typo) else {
            panic!("refused otherwise")
        };
        assert!(
            waited >= policy.max_delay,
            "ten failures elsewhere hold it the whole cap: {waited:?}"
        );
        let message = LoginRefusal::WrongCredentials { waited }.message();
        assert_eq!(
            message, "wrong username or password",
            "under a second is not worth a word"
        );
        let slowed = LoginRefusal::WrongCredentials {
            waited: Duration::from_secs(4),
        };
        assert!(slowed.message().contains("held 4 s"), "{}", slowed.message());
    }

    #[tokio::test]
    async fn an_address_over_its_limit_is_refused_whatever_the_password_until_its_failures_age_out() {
        let policy = small_policy();
        let (d, clock, _dir) = accounts(policy.clone()).await;

        for name in ["nobody", "admin", "Admin"] {
            let guess = d.authenticate(name, "a wrong guess", "10.0.0.9").await;
            assert!(matches!(refusal(guess), LoginRefusal::WrongCredentials { .. }));
        }
        let refused = refusal(d.authenticate("admin", ADMIN_PASSWORD, "10.0.0.9").await);
        let elsewhere = d.authenticate("admin", ADMIN_PASSWORD, "10.0.0.1").await;
        clock.advance(policy.window);
        let later = d.authenticate("admin", ADMIN_PASSWORD, "10.0.0.9").await;

        assert_eq!(refused, LoginRefusal::AddressThrottled(policy.window));
        assert!(
            refused.message().contains("try again in 900 seconds"),
            "{}",
            refused.message()
        );
        assert!(elsewhere.is_ok(), "only that address is refused");
        assert!(later.is_ok(), "its failures aged out");
    }

    #[tokio::test]
    async fn a_password_cached_for_basic_auth_does_not_let_a_refused_address_in() {
        let (d, _clock, _dir) = accounts(small_policy()).await;
        d.authenticate_basic("admin", ADMIN_PASSWORD, "10.0.0.1").await.unwrap();

        for _ in 0..3 {
            let guess = d.authenticate_basic("admin", "a wrong guess", "10.0.0.9").await;
            assert!(matches!(refusal(guess), LoginRefusal::WrongCredentials { .. }));
        }
        let cached = d.authenticate_basic("admin", ADMIN_PASSWORD, "10.0.0.9").await;
        let owner = d.authenticate_basic("admin", ADMIN_PASSWORD, "10.0.0.1").await;

        assert!(
            matches!(refusal(cached), LoginRefusal::AddressThrottled(_)),
            "a right guess past the limit would tell the guesser it is right"
        );
        assert!(owner.is_ok());
    }

    #[tokio::test]
    async fn an_address_the_user_logged_in_from_skips_the_turns_that_failures_elsewhere_impose() {
        let policy = small_policy();
        let (d, _clock, _dir) = accounts(policy.clone()).await;
        d.authenticate("admin", ADMIN_PASSWORD, "10.0.0.1").await.unwrap();

        // Another attempt for admin holds the username's turn for longer than max_wait.
        let turn = d.inner.accounts.user_turns.take(&throttle::user_key("admin")).await;
        let stranger = d.authenticate("admin", ADMIN_PASSWORD, "10.0.0.2").await;
        let owner = d.authenticate("admin", ADMIN_PASSWORD, "10.0.0.1").await;
        drop(turn);

        assert_eq!(refusal(stranger), LoginRefusal::UserBusy(policy.max_wait));
        assert!(owner.is_ok(), "the known address does not wait for the turn");
    }

    #[tokio::test]
    async fn wrong_current_passwords_count_against_the_address_like_failed_logins() {
        let (d, _clock, _dir) = accounts(small_policy()).await;
        let admin = d.authenticate("admin", ADMIN_PASSWORD, "10.0.0.1").await.unwrap();
        let actor = Actor {
            user_id: admin.id,
            username: admin.username,
            role: admin.role,
            source_ip: "10.0.0.5".into(),
            via: Via::Api,
        };

        for _ in 0..3 {
            let wrong = d.change_password(&actor, "a wrong guess", "a brand new password").await;
            assert_eq!(refusal(wrong), LoginRefusal::WrongCurrentPassword);
        }
        let right = d.change_password(&actor, ADMIN_PASSWORD, "a brand new password").await;

        assert!(matches!(refusal(right), LoginRefusal::AddressThrottled(_)));
    }

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn unknown_users_are_checked_against_a_hash_as_costly_as_a_real_one() {
        let real = hash_password("correct horse").unwrap();
        let params = |hash: &str| PasswordHash::new(hash).unwrap().params.to_string();

        assert_eq!(params(UNKNOWN_USER_HASH), params(&real));
        assert!(!verify_password("", UNKNOWN_USER_HASH));
        assert!(!verify_password("admin", UNKNOWN_USER_HASH));
    }
}
