//! Login throttling: after too many failed logins from one address, or for one username, further
//! attempts are refused until the oldest failure in the window has aged out. Checked before the
//! password is hashed, so a guessing loop costs us no argon2 work.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts allowed per key within [`WINDOW`].
const MAX_FAILURES: usize = 5;
/// How far back failures count.
const WINDOW: Duration = Duration::from_secs(15 * 60);

/// Recent failures per key (`ip:…` and `user:…`).
#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// The keys a login attempt counts against.
pub fn keys(ip: &str, username: &str) -> [String; 2] {
    [format!("ip:{ip}"), format!("user:{}", username.to_lowercase())]
}

impl LoginThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(wait)` when any key has used up its attempts: the time until one ages out.
    pub fn check(&self, keys: &[String]) -> Result<(), Duration> {
        let now = Instant::now();
        let mut failures = self.lock();
        let mut wait = Duration::ZERO;
        for key in keys {
            if let Some(times) = failures.get_mut(key) {
                while times.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
                    times.pop_front();
                }
                if times.len() >= MAX_FAILURES {
                    let oldest = times[times.len() - MAX_FAILURES];
                    wait = wait.max(WINDOW.saturating_sub(now.duration_since(oldest)));
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait.max(Duration::from_secs(1)))
        }
    }

    /// Counts a failed attempt against every key.
    pub fn failed(&self, keys: &[String]) {
        let now = Instant::now();
        let mut failures = self.lock();
        if failures.len() > 100_000 {
            failures.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
        }
        for key in keys {
            let times = failures.entry(key.clone()).or_default();
            times.push_back(now);
            if times.len() > MAX_FAILURES * 2 {
                times.pop_front();
            }
        }
    }

    /// Forgets the username's failures after a successful login (the address keeps its own).
    pub fn succeeded(&self, keys: &[String]) {
        let mut failures = self.lock();
        for key in keys.iter().filter(|k| k.starts_with("user:")) {
            failures.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sixth_failure_within_the_window_is_refused_with_a_wait() {
        let throttle = LoginThrottle::default();
        let keys = keys("10.0.0.1", "Ann");

        for _ in 0..MAX_FAILURES {
            assert!(throttle.check(&keys).is_ok());
            throttle.failed(&keys);
        }

        let wait = throttle.check(&keys).unwrap_err();
        assert!(wait > Duration::from_secs(14 * 60), "{wait:?}");
        let other_user_same_ip = super::keys("10.0.0.1", "bob");
        assert!(
            throttle.check(&other_user_same_ip).is_err(),
            "the address is throttled too"
        );
        assert!(throttle.check(&super::keys("10.0.0.2", "bob")).is_ok());
    }
}
