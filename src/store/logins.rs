//! Login throttling's records: failed password checks, and the addresses each username logged
//! in from. The rules that read them live in `dispatch::throttle`; this module only counts.
//! Usernames and addresses arrive as the throttle's keys (lowercased, IPv6 by /64).

use super::db::{query, query_scalar};
use super::{Result, Store};

impl Store {
    /// Whether the username logged in from this address since `known_since`.
    pub async fn is_known_login_source(&self, username: &str, source: &str, known_since: i64) -> Result<bool> {
        query_scalar("SELECT EXISTS (SELECT 1 FROM login_sources WHERE username = $1 AND source = $2 AND at > $3)")
            .bind(username)
            .bind(source)
            .bind(known_since)
            .fetch_one(&self.pool)
            .await
    }

    /// When the address's `limit`-th most recent failure since `since` happened, if it has
    /// that many.
    pub async fn address_limit_reached_at(&self, source: &str, since: i64, limit: u32) -> Result<Option<i64>> {
        query_scalar("SELECT at FROM login_failures WHERE source = $1 AND at > $2 ORDER BY at DESC LIMIT 1 OFFSET $3")
            .bind(source)
            .bind(since)
            .bind(i64::from(limit.max(1)) - 1)
            .fetch_optional(&self.pool)
            .await
    }

    /// The username's failures since `since` from addresses other than `source`.
    pub async fn login_failures_elsewhere(&self, username: &str, source: &str, since: i64) -> Result<u64> {
        let n: i64 =
            query_scalar("SELECT COUNT(*) FROM login_failures WHERE username = $1 AND source <> $2 AND at > $3")
                .bind(username)
                .bind(source)
                .bind(since)
                .fetch_one(&self.pool)
                .await?;
        Ok(n as u64)
    }

    /// Counts a failed password check.
    pub async fn record_login_failure(&self, username: &str, source: &str, at: i64) -> Result<()> {
        query("INSERT INTO login_failures (username, source, at) VALUES ($1, $2, $3)")
            .bind(username)
            .bind(source)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A successful login: the username's failures from this address are forgiven (the
    /// address keeps its failures for other usernames), and the address becomes known to it.
    pub async fn record_login_success(&self, username: &str, source: &str, at: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        query("DELETE FROM login_failures WHERE username = $1 AND source = $2")
            .bind(username)
            .bind(source)
            .execute(&mut tx)
            .await?;
        query(
            "INSERT INTO login_sources (username, source, at) VALUES ($1, $2, $3) \
             ON CONFLICT (username, source) DO UPDATE SET at = $3",
        )
        .bind(username)
        .bind(source)
        .bind(at)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes failures from before `failures_before` and known addresses last used before
    /// `sources_before`; returns how many rows went.
    pub async fn forget_login_records(&self, failures_before: i64, sources_before: i64) -> Result<u64> {
        let failures = query("DELETE FROM login_failures WHERE at <= $1")
            .bind(failures_before)
            .execute(&self.pool)
            .await?;
        let sources = query("DELETE FROM login_sources WHERE at <= $1")
            .bind(sources_before)
            .execute(&self.pool)
            .await?;
        Ok(failures + sources)
    }
}

#[cfg(test)]
mod tests {

    crate::store::both_backends! {
    async fn an_address_reaches_its_limit_at_its_limit_th_newest_failure(store) {
        for at in [100, 200, 300] {
            store.record_login_failure("admin", "10.0.0.9", at).await.unwrap();
        }
        store.record_login_failure("ann", "10.0.0.1", 250).await.unwrap();

        let reached = |since, limit| store.address_limit_reached_at("10.0.0.9", since, limit);

        assert_eq!(reached(0, 3).await.unwrap(), Some(100));
        assert_eq!(reached(0, 2).await.unwrap(), Some(200));
        assert_eq!(reached(0, 4).await.unwrap(), None, "only three failures");
        assert_eq!(
            reached(100, 3).await.unwrap(),
            None,
            "the first one is out of the window"
        );
    }
    }

    crate::store::both_backends! {
    async fn a_username_counts_failures_from_other_addresses_only(store) {
        for (source, at) in [
            ("10.0.0.9", 100),
            ("10.0.0.9", 200),
            ("10.0.0.8", 300),
            ("10.0.0.1", 400),
        ] {
            store.record_login_failure("admin", source, at).await.unwrap();
        }
        store.record_login_failure("ann", "10.0.0.9", 500).await.unwrap();

        assert_eq!(store.login_failures_elsewhere("admin", "10.0.0.1", 0).await.unwrap(), 3);
        assert_eq!(store.login_failures_elsewhere("admin", "10.0.0.9", 0).await.unwrap(), 2);
        assert_eq!(
            store.login_failures_elsewhere("admin", "10.0.0.1", 150).await.unwrap(),
            2
        );
    }
    }

    crate::store::both_backends! {
    async fn a_success_forgives_that_address_for_that_username_only_and_makes_it_known(store) {
        for (user, source) in [("admin", "10.0.0.1"), ("admin", "10.0.0.9"), ("ann", "10.0.0.1")] {
            store.record_login_failure(user, source, 100).await.unwrap();
        }

        store.record_login_success("admin", "10.0.0.1", 200).await.unwrap();

        assert_eq!(store.login_failures_elsewhere("admin", "10.0.0.7", 0).await.unwrap(), 1);
        assert_eq!(
            store.address_limit_reached_at("10.0.0.1", 0, 1).await.unwrap(),
            Some(100),
            "ann's failure from the address still counts"
        );
        assert!(store.is_known_login_source("admin", "10.0.0.1", 150).await.unwrap());
        assert!(
            !store.is_known_login_source("admin", "10.0.0.1", 200).await.unwrap(),
            "known only since its last success"
        );
        assert!(
            !store.is_known_login_source("ann", "10.0.0.1", 0).await.unwrap(),
            "known for admin, not for ann"
        );
    }
    }

    crate::store::both_backends! {
    async fn old_records_are_forgotten(store) {
        store.record_login_failure("admin", "10.0.0.9", 100).await.unwrap();
        store.record_login_failure("admin", "10.0.0.9", 300).await.unwrap();
        store.record_login_success("ann", "10.0.0.1", 100).await.unwrap();

        let forgotten = store.forget_login_records(200, 200).await.unwrap();

        assert_eq!(forgotten, 2);
        assert_eq!(store.login_failures_elsewhere("admin", "x", 0).await.unwrap(), 1);
        assert!(!store.is_known_login_source("ann", "10.0.0.1", 0).await.unwrap());
    }
    }
}
