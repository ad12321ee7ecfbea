//! Reconnect storms: how the server paces its fleet coming back after a restart
//! (docs/ARCHITECTURE.md, "Reconnect storms").
//!
//! - Every `Welcome` announces a reconnect window sized to the fleet ([`window_for`]): after
//!   losing this server, an agent's first attempt is spread uniformly over it
//!   (`agent::backoff`), so the fleet comes back at about `Settings::reconnect_rate` per second.
//! - While `Settings::max_attaching` agents are being attached (from their `Hello` until
//!   `attach` has settled them), a new upgrade is refused ([`Busy`], a 503 with `Retry-After`)
//!   before it costs a credential check. Only attaches count, not upgraded sockets that have
//!   not said `Hello`: a client holding sockets open cannot lock the fleet out.

use super::Dispatcher;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The shortest window announced: a small fleet still does not come back in one instant.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// How often the fleet is counted again from the store.
pub(super) const COUNT_FLEET_EVERY: Duration = Duration::from_secs(60);
/// Instances heard from within this long count as the fleet that may come back.
const FLEET_SEEN_WITHIN: Duration = Duration::from_secs(7 * 24 * 3600);
/// Busy refusals are logged at most this often (a storm would otherwise flood the log).
const BUSY_LOG_EVERY_MS: i64 = 10_000;

/// The reconnect window for `fleet` agents when the server takes back `rate` per second:
/// `fleet / rate`, at least [`MIN_WINDOW`] and at most `max`.
pub fn window_for(fleet: u64, rate: u64, max: Duration) -> Duration {
    let ms = fleet.saturating_mul(1000) / rate.max(1);
    Duration::from_millis(ms).clamp(MIN_WINDOW, max.max(MIN_WINDOW))
}

/// One agent being attached, counted while it lives (see [`Dispatcher::attaching`]).
pub(super) struct Attaching<'a> {
    count: &'a AtomicUsize,
}

impl Drop for Attaching<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server is attaching as many agents as it allows at once: try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub retry_after: Duration,
}

/// Counts busy refusals between two warnings about them.
#[derive(Debug, Default)]
pub(super) struct BusyLog {
    refused: AtomicU64,
    last_warned_ms: AtomicI64,
}

impl Dispatcher {
    /// The reconnect window to announce now: sized to the larger of the fleet seen recently and
    /// the agents connected here (enrolments count at once).
    pub fn reconnect_window(&self) -> Duration {
        let connected = self.lock_agents().len() as u64;
        let fleet = self.inner.fleet_size.load(Ordering::Relaxed).max(connected);
        let settings = &self.inner.settings;
        window_for(fleet, settings.reconnect_rate, settings.reconnect_window_max)
    }

    /// Whether a new agent connection may be upgraded now: [`Busy`] while
    /// `Settings::max_attaching` agents are being attached. The wait asked for is about the
    /// time to settle that many at the reconnect rate (at least a second); agents add their
    /// own jitter.
    pub fn admit_agent(&self) -> Result<(), Busy> {
        let settings = &self.inner.settings;
        if self.inner.attaching.load(Ordering::Relaxed) < settings.max_attaching {
            return Ok(());
        }
        let settle_ms = (settings.max_attaching as u64).saturating_mul(1000) / settings.reconnect_rate.max(1);
        let retry_after = Duration::from_millis(settle_ms)
            .max(Duration::from_secs(1))
            .min(settings.reconnect_window_max);
        let busy = Busy {
            retry_after: Duration::from_secs(retry_after.as_secs_f64().ceil() as u64),
        };
        self.log_busy(busy);
        Err(busy)
    }

    /// Counts one agent being attached until the guard drops (`attach` holds it).
    pub(super) fn attaching(&self) -> Attaching<'_> {
        let count = &self.inner.attaching;
        count.fetch_add(1, Ordering::Relaxed);
        Attaching { count }
    }

    fn log_busy(&self, busy: Busy) {
        let log = &self.inner.busy;
        let refused = log.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.now();
        let last = log.last_warned_ms.load(Ordering::Relaxed);
        if now - last >= BUSY_LOG_EVERY_MS
            && log
                .last_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log.refused.fetch_sub(refused, Ordering::Relaxed);
            tracing::warn!(
                refused,
                max_attaching = self.inner.settings.max_attaching,
                retry_after_secs = busy.retry_after.as_secs(),
                "too many agents being attached at once: new agent connections refused with 503 and Retry-After"
            );
        }
    }

    /// Counts the fleet that may come back (instances heard from in the last week) from the
    /// store, for the reconnect window.
    pub async fn count_fleet(&self) -> Result<u64, super::Error> {
        let since = self.now() - FLEET_SEEN_WITHIN.as_millis() as i64;
        let count = self.inner.store.count_instances_seen_since(since).await?;
        self.inner.fleet_size.store(count, Ordering::Relaxed);
        Ok(count)
    }

    /// [`Dispatcher::count_fleet`] for housekeeping: a failure keeps the last count.
    pub(super) async fn recount_fleet(&self) {
        if let Err(e) = self.count_fleet().await {
            tracing::warn!(error = %e, "could not count the fleet for the reconnect window");
        }
    }

    /// One more instance enrolled (or one fewer, deregistered): the window grows at once.
    pub(super) fn fleet_changed(&self, enrolled: bool) {
        let size = &self.inner.fleet_size;
        if enrolled {
            size.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = size.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{ActivationRequest, Actor, Clock, Outbound, Settings, Via};
    use crate::protocol::agent::ServerMessage;
    use crate::protocol::api::RegisterRequest;
    use crate::protocol::{OsType, PROTOCOL_VERSION};
    use crate::store::{Role, test_store};

    async fn dispatcher(settings: Settings) -> (Dispatcher, tempfile::TempDir) {
        let (store, dir) = test_store().await;
        (Dispatcher::build(store, settings, Clock::manual(), None).0, dir)
    }

    /// Enrols `n` instances through one activation; their ids.
    async fn enrol(dispatcher: &Dispatcher, n: u64) -> Vec<String> {
        let admin = Actor {
            user_id: 1,
            username: "ann".into(),
            role: Role::Admin,
            source_ip: "127.0.0.1".into(),
            via: Via::Api,
        };
        let req = ActivationRequest {
            region_id: "local".into(),
            instance_count_limit: n,
            ttl_hours: None,
            description: None,
        };
        let (activation, code) = dispatcher.create_activation(&admin, req).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..n {
            let register = RegisterRequest {
                activation_id: activation.id.clone(),
                activation_code: code.clone(),
                hostname: format!("host-{i}"),
                name: None,
                os_type: OsType::Linux,
                os_name: "Debian".into(),
                ip_addresses: vec![],
                agent_version: "test".into(),
                tags: Vec::new(),
            };
            let (instance, _) = dispatcher.register(&Actor::agent("10.0.0.1"), register).await.unwrap();
            ids.push(instance.id);
        }
        ids
    }

    #[tokio::test]
    async fn a_welcome_announces_a_window_sized_to_the_enrolled_fleet_not_to_who_is_back_yet() {
        let settings = Settings {
            reconnect_rate: 2,
            ..Settings::default()
        };
        let (dispatcher, _dir) = dispatcher(settings).await;
        let ids = enrol(&dispatcher, 5).await;

        let (_session, mut outbox) = dispatcher
            .attach(&ids[0], &super::super::tests::hello(vec![]), PROTOCOL_VERSION)
            .await
            .unwrap();
        let counted = dispatcher.count_fleet().await.unwrap();

        let Some(Outbound::Message(ServerMessage::Welcome(welcome))) = outbox.rx.recv().await else {
            panic!("no Welcome first")
        };
        assert_eq!(welcome.reconnect_window_ms, Some(2_500), "5 instances at 2 per second");
        assert_eq!(counted, 5, "every instance enrolled this week counts");
        assert_eq!(dispatcher.reconnect_window(), Duration::from_millis(2_500));
    }

    #[tokio::test]
    async fn upgrades_are_refused_while_as_many_agents_as_allowed_are_being_attached() {
        let settings = Settings {
            max_attaching: 2,
            ..Settings::default()
        };
        let (dispatcher, _dir) = dispatcher(settings).await;

        let first = dispatcher.attaching();
        let admitted_with_one = dispatcher.admit_agent();
        let _second = dispatcher.attaching();
        let refused = dispatcher.admit_agent().unwrap_err();
        drop(first);

        assert!(admitted_with_one.is_ok());
        assert_eq!(
            refused.retry_after,
            Duration::from_secs(1),
            "2 at 500 per second: the 1 s floor"
        );
        assert!(dispatcher.admit_agent().is_ok(), "a settled agent lets the next one in");
    }

    #[test]
    fn the_window_grows_with_the_fleet_between_a_floor_and_the_maximum() {
        let max = Duration::from_secs(30);

        assert_eq!(window_for(0, 500, max), MIN_WINDOW);
        assert_eq!(window_for(40, 500, max), MIN_WINDOW);
        assert_eq!(window_for(2_000, 500, max), Duration::from_secs(4));
        assert_eq!(window_for(5_000, 500, max), Duration::from_secs(10));
        assert_eq!(window_for(50_000, 500, max), max);
        assert_eq!(window_for(u64::MAX, 1, max), max);
        assert_eq!(window_for(3, 2, max), Duration::from_millis(1_500));
    }
}
