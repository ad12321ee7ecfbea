//! Login throttling: the rules ([`LoginPolicy`]), the keys failures are counted under, and the
//! turns that make attempts for one username wait one at a time. The counts themselves live in
//! the store (`login_failures`, `login_sources`), so a restart keeps them and replicas sharing a
//! database share them; `accounts::under_throttle` applies the rules around every password check.
//!
//! Two rules, over the failed password checks of the last [`LoginPolicy::window`]:
//! - **Per address**: an address with [`LoginPolicy::address_limit`] failures is refused,
//!   whatever the password, until the oldest of them ages out. Only failures count, and only
//!   that address is refused.
//! - **Per username**: while a username has failures from *other* addresses, each attempt for it
//!   waits [`LoginPolicy::delay`] (growing with those failures, capped at a few seconds) before
//!   its password is checked, and the attempts for one username take turns. Guessing from many
//!   addresses at once therefore gains nothing (one guess per `max_delay` per username), while
//!   the right password still logs in, a few seconds late.
//!
//! Why failures from the attempt's own address do not slow it: that address is already bounded
//! by its own limit (the delay could not lower its guesses per window, only spread them), and
//! the person who mistypes their own password is not made to wait for it. Why an address the
//! username logged in from before ([`LoginPolicy::known_for`]) skips the delay and the turns:
//! failures from elsewhere must never hold the account's owner back, even when an attacker
//! with many addresses keeps the username's turns busy.
//!
//! Nothing here hashes: the rules run before argon2 does, so a refused attempt costs no hash.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;

/// The numbers of login throttling; defaults are what docs/SECURITY.md states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPolicy {
    /// How far back failures count.
    pub window: Duration,
    /// Failures from one address within the window at which that address is refused.
    pub address_limit: u32,
    /// Failures for a username from other addresses that cost nothing (typos on another device).
    pub free_failures: u64,
    /// The wait after `free_failures`; it doubles with each further failure…
    pub first_delay: Duration,
    /// …up to this: at most one guess per `max_delay` per username, from however many addresses.
    pub max_delay: Duration,
    /// Longest an attempt waits for its username's turn before it is refused as busy.
    pub max_wait: Duration,
    /// How long an address the username logged in from stays exempt from the delay.
    pub known_for: Duration,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            window: Duration::from_secs(15 * 60),
            address_limit: 50,
            free_failures: 3,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(4),
            max_wait: Duration::from_secs(20),
            known_for: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl LoginPolicy {
    /// The wait before checking a password for a username with `failures_elsewhere` recent
    /// failures from other addresses.
    pub fn delay(&self, failures_elsewhere: u64) -> Duration {
        let Some(over) = failures_elsewhere.checked_sub(self.free_failures) else {
            return Duration::ZERO;
        };
        // 2^over, without overflowing on a long attack.
        let factor = 1u32.checked_shl(over.min(31) as u32).unwrap_or(u32::MAX);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// How long an address stays refused, given when its `address_limit`-th most recent failure
    /// within the window happened (`None`: it has fewer). Rounded up to whole seconds, as
    /// `Retry-After` and the messages give it.
    pub fn address_wait(&self, now_ms: i64, limit_reached_at: Option<i64>) -> Option<Duration> {
        let ages_out = limit_reached_at? + self.window.as_millis() as i64;
        let wait_ms = ages_out.saturating_sub(now_ms);
        (wait_ms > 0).then(|| Duration::from_secs((wait_ms as u64).div_ceil(1000)))
    }

    /// The oldest failure time that still counts at `now_ms`.
    pub fn since(&self, now_ms: i64) -> i64 {
        now_ms - self.window.as_millis() as i64
    }

    /// The oldest successful login that still makes its address known at `now_ms`.
    pub fn known_since(&self, now_ms: i64) -> i64 {
        now_ms - self.known_for.as_millis() as i64
    }
}

/// Longest username kept as a key: one more than a valid name (`check::account_name`) may have,
/// so every over-long name shares one key and a flood of them stores little.
const USER_KEY_CHARS: usize = 65;

/// The key a username's failures are counted under: lowercased and cut short.
pub fn user_key(username: &str) -> String {
    username.chars().take(USER_KEY_CHARS).collect::<String>().to_lowercase()
}

/// The key an address's failures are counted under: an IPv4 address (IPv4-mapped IPv6 too) as
/// itself, an IPv6 address as its /64, which one host or home usually holds whole (counting
/// each of its 2^64 addresses apart would give that host 2^64 allowances). Anything else
/// (`unknown` when the peer address is missing) is kept as it is, cut short.
pub fn source_key(ip: &str) -> String {
    match ip.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => {
            let prefix = u128::from(v6) & !(u128::MAX >> 64);
            format!("{}/64", std::net::Ipv6Addr::from(prefix))
        }
        Err(_) => ip.chars().take(64).collect(),
    }
}

/// One-at-a-time turns per key, first come first served (tokio's mutex queues its waiters in
/// order). In memory: with several replicas each serves its own turns, so guesses spread over
/// R replicas get R turns at once; the delay itself comes from the shared counts.
#[derive(Default)]
pub struct Turns {
    /// A queue per key that someone holds or waits for; idle ones are dropped as the map grows.
    queues: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Idle queues are dropped once the map holds this many keys.
const TURNS_KEPT: usize = 1024;

impl Turns {
    /// Waits for the key's turn; the turn lasts as long as the guard.
    pub async fn take(&self, key: &str) -> OwnedMutexGuard<()> {
        let queue = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            if queues.len() >= TURNS_KEPT {
                // A holder or a waiter keeps its own clone of the Arc: one reference is idle.
                queues.retain(|_, queue| Arc::strong_count(queue) > 1);
            }
            queues.entry(key.to_string()).or_default().clone()
        };
        queue.lock_owned().await
    }

    /// Keys currently held or waited for, or not yet dropped.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_starts_after_the_free_failures_doubles_and_stops_at_the_cap() {
        let policy = LoginPolicy::default();

        let delays: Vec<u64> = (0..8).map(|n| policy.delay(n).as_secs()).collect();

        assert_eq!(delays, [0, 0, 0, 1, 2, 4, 4, 4]);
        assert_eq!(
            policy.delay(u64::MAX),
            policy.max_delay,
            "a long attack cannot overflow it"
        );
        assert_eq!(policy.delay(1_000), Duration::from_secs(4));
    }

    #[test]
    fn thirty_guesses_cost_the_owner_at_most_the_cap() {
        let policy = LoginPolicy::default();

        let worst = (0..=30).map(|n| policy.delay(n)).max().unwrap();

        assert!(worst <= Duration::from_secs(4), "{worst:?}");
    }

    #[test]
    fn an_address_is_refused_until_its_limit_th_newest_failure_ages_out() {
        let policy = LoginPolicy::default();
        let now = 10_000_000;
        let window = policy.window.as_millis() as i64;

        assert_eq!(policy.address_wait(now, None), None, "under its limit");
        assert_eq!(
            policy.address_wait(now, Some(now - 1_000)),
            Some(policy.window - Duration::from_secs(1))
        );
        assert_eq!(
            policy.address_wait(now, Some(now - window + 1)),
            Some(Duration::from_secs(1)),
            "a wait is never shown as zero seconds"
        );
        assert_eq!(policy.address_wait(now, Some(now - window)), None, "aged out");
        assert_eq!(policy.since(now), now - window);
    }

    #[test]
    fn usernames_are_counted_case_blind_and_cut_short() {
        assert_eq!(user_key("Admin"), "admin");
        let long = "a".repeat(100_000);
        assert_eq!(user_key(&long).len(), USER_KEY_CHARS);
        assert_eq!(user_key(&long), user_key(&"a".repeat(70)));
        assert_eq!(user_key("ann\u{0}"), "ann\u{0}", "only length and case are changed");
    }

    #[test]
    fn ipv6_addresses_are_counted_by_their_64_and_ipv4_as_themselves() {
        assert_eq!(source_key("203.0.113.7"), "203.0.113.7");
        assert_eq!(source_key("::ffff:203.0.113.7"), "203.0.113.7", "IPv4-mapped");
        assert_eq!(source_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(source_key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64");
        assert_ne!(source_key("2001:db8:1:3::1"), source_key("2001:db8:1:2::1"));
        assert_eq!(source_key("unknown"), "unknown");
    }

    #[tokio::test]
    async fn turns_for_one_key_come_one_at_a_time_and_other_keys_do_not_wait() {
        let turns = Turns::default();

        let first = turns.take("admin").await;
        let second = tokio::time::timeout(Duration::from_millis(50), turns.take("admin")).await;
        let other = tokio::time::timeout(Duration::from_secs(10), turns.take("ann")).await;

        assert!(
            second.is_err(),
            "admin's second attempt waits while the first holds its turn"
        );
        assert!(other.is_ok(), "another username has its own turns");
        drop(first);
        let again = tokio::time::timeout(Duration::from_secs(10), turns.take("admin")).await;
        assert!(again.is_ok(), "the turn passes on once released");
    }

    #[tokio::test]
    async fn idle_turns_are_dropped_as_keys_pile_up() {
        let turns = Turns::default();
        let held = turns.take("held").await;

        for i in 0..TURNS_KEPT + 10 {
            drop(turns.take(&format!("user-{i}")).await);
        }

        assert!(turns.len() <= TURNS_KEPT, "{}", turns.len());
        let waiter = tokio::time::timeout(Duration::from_millis(50), turns.take("held")).await;
        assert!(waiter.is_err(), "a held turn survives the pruning");
        drop(held);
    }
}
