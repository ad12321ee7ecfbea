//! When an agent tries its server again: the reconnect policy (docs/ARCHITECTURE.md, "Reconnect
//! storms"). Pure: no I/O, and no clock or randomness of its own (callers pass `now` and a random
//! source), so the real agent (`session`) and the bench's virtual agents (`bench/src/swarm.rs`)
//! run the same rules, and tests drive them with a seeded generator.
//!
//! - **Spread.** The first attempt after losing an established connection waits a uniform random
//!   time in `[0, window)` (full jitter), `window` being what the server announced in its last
//!   `Welcome`, sized to its fleet: a restarted server meets its agents at the rate it chose,
//!   not all in the first second.
//! - **Prompt.** While the server stays unreachable, attempt n waits a uniform random time up to
//!   `500 ms * 2^(n-1)` (capped exponential backoff with full jitter), but never up to more than
//!   the server has been unreachable so far, and never less than the window: after a short
//!   outage, delivery waits about as long as the outage lasted, not for backoff to unwind.
//! - **Polite.** A server that answered 503 with `Retry-After` is not tried again before that
//!   time (plus the jitter above). A connection lost before it lasted [`STABLE_AFTER`] (a server
//!   that accepts and drops, say) makes the next first attempt wait longer, doubling each time.
//!
//! Depends on `rand` and `std` only.

use rand::Rng;
use std::time::{Duration, Instant};

/// The window after a server whose `Welcome` named none (a server from before windows).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5);
/// The longest window or `Retry-After` an agent takes from a server, so a bogus value cannot
/// park it for hours.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// A connection that lasted this long was stable: it ends a run of flapping connections.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// First step of the exponential backoff.
const BASE: Duration = Duration::from_millis(500);

/// One agent's reconnect state. Tell it what happened ([`welcomed`](Self::welcomed),
/// [`lost`](Self::lost), [`failed`](Self::failed)); the last two answer how long to wait before
/// the next attempt.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Longest wait between failed attempts (`--reconnect-max-secs`), besides the window and
    /// `Retry-After`, which the server sets.
    max: Duration,
    /// Spread of the first attempt after a loss, from the last `Welcome`; `None` until a server
    /// has welcomed this agent.
    window: Option<Duration>,
    /// Attempts failed since the last loss (or since the agent started).
    failures: u32,
    /// Connections in a row lost before lasting [`STABLE_AFTER`].
    flaps: u32,
    /// When the server was last lost, or first found unreachable: how long it has been down.
    down_since: Option<Instant>,
}

impl Backoff {
    /// A fresh agent that has not reached a server yet; `max` caps the exponential backoff.
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            max: max.max(BASE),
            window: None,
            failures: 0,
            flaps: 0,
            down_since: None,
        }
    }

    /// A `Welcome` arrived: remember the reconnect window it announced, or [`DEFAULT_WINDOW`].
    pub fn welcomed(&mut self, reconnect_window_ms: Option<u64>) {
        let window = reconnect_window_ms.map_or(DEFAULT_WINDOW, Duration::from_millis);
        self.window = Some(window.min(MAX_WAIT));
    }

    /// The window the first attempt after a loss is spread over (zero before any `Welcome`).
    pub fn window(&self) -> Duration {
        self.window.unwrap_or_default()
    }

    /// An established connection was lost at `now`; `stable` when it had lasted
    /// [`STABLE_AFTER`]. Returns the wait before the first attempt.
    pub fn lost(&mut self, now: Instant, stable: bool, rng: &mut impl Rng) -> Duration {
        self.failures = 0;
        self.down_since = Some(now);
        self.flaps = if stable { 0 } else { self.flaps.saturating_add(1) };
        let flapping = if self.flaps == 0 {
            Duration::ZERO
        } else {
            self.grown(self.flaps)
        };
        jitter(self.window().max(flapping), rng)
    }

    /// An attempt failed at `now`; `retry_after` when the server answered 503 with it. Returns
    /// the wait before the next attempt.
    pub fn failed(&mut self, now: Instant, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let down_for = now.saturating_duration_since(*self.down_since.get_or_insert(now));
        let ceiling = self.grown(self.failures).min(down_for.max(BASE)).max(self.window());
        let wait = jitter(ceiling, rng);
        retry_after.map_or(wait, |after| after.min(MAX_WAIT) + wait)
    }

    /// `BASE * 2^(n-1)`, at most `max`.
    fn grown(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(16);
        BASE.saturating_mul(1 << doublings).min(self.max)
    }
}

/// A uniform random time in `[0, ceiling)`.
fn jitter(ceiling: Duration, rng: &mut impl Rng) -> Duration {
    ceiling.mul_f64(rng.r#gen::<f64>())
}

/// Reads a `Retry-After` header value: delay-seconds only (the form fleetrun servers send); an
/// HTTP date, or anything else, is `None`.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The server answered the upgrade with 503: it is setting up too many connections and asks to
/// be tried again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerBusy {
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for ServerBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.retry_after {
            Some(after) => write!(
                f,
                "the server is busy (503) and asked to retry after {} s",
                after.as_secs()
            ),
            None => f.write_str("the server is busy (503)"),
        }
    }
}

impl std::error::Error for ServerBusy {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    const SAMPLES: usize = 2_000;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(11)
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Waits for `SAMPLES` agents that do the same thing, each from a fresh copy of `backoff`.
    fn waits(backoff: &Backoff, mut step: impl FnMut(&mut Backoff, &mut StdRng) -> Duration) -> Vec<Duration> {
        let mut rng = rng();
        (0..SAMPLES).map(|_| step(&mut backoff.clone(), &mut rng)).collect()
    }

    fn welcomed(window_ms: Option<u64>, max: Duration) -> Backoff {
        let mut backoff = Backoff::new(max);
        backoff.welcomed(window_ms);
        backoff
    }

    #[test]
    fn the_first_retry_after_a_loss_is_spread_over_the_whole_window() {
        let backoff = welcomed(Some(10_000), secs(30.0));
        let now = Instant::now();

        let waits = waits(&backoff, |b, rng| b.lost(now, true, rng));

        assert!(
            waits.iter().all(|w| *w < secs(10.0)),
            "every first retry is inside the window"
        );
        for second in 0..10 {
            let (from, to) = (secs(second as f64), secs(second as f64 + 1.0));
            let share = waits.iter().filter(|w| (from..to).contains(*w)).count() as f64 / SAMPLES as f64;
            assert!(
                (0.07..0.13).contains(&share),
                "second {second} holds {share:.3} of the retries"
            );
        }
    }

    #[test]
    fn a_server_that_never_named_a_window_gets_the_default_and_a_huge_one_is_capped() {
        let mut backoff = welcomed(None, secs(30.0));
        assert_eq!(backoff.window(), DEFAULT_WINDOW);

        backoff.welcomed(Some(u64::MAX / 2));
        assert_eq!(backoff.window(), MAX_WAIT);

        backoff.welcomed(Some(1_500));
        assert_eq!(backoff.window(), secs(1.5), "the last window told wins");
        assert_eq!(
            Backoff::new(secs(30.0)).window(),
            Duration::ZERO,
            "none before a Welcome"
        );
    }

    #[test]
    fn failed_attempts_back_off_exponentially_up_to_the_cap() {
        // Before any Welcome (no window), long into an outage, so only growth and cap bound it.
        let mut backoff = Backoff::new(secs(30.0));
        let start = Instant::now();
        backoff.failed(start, None, &mut rng());
        let later = start + secs(3600.0);
        let ceilings = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0];

        for ceiling in ceilings {
            let waits = waits(&backoff, |b, rng| b.failed(later, None, rng));
            backoff.failed(later, None, &mut rng());

            let longest = waits.iter().max().unwrap();
            assert!(*longest < secs(ceiling), "{longest:?} over {ceiling} s");
            assert!(*longest > secs(ceiling * 0.95), "{longest:?} far under {ceiling} s");
        }
    }

    #[test]
    fn a_retry_never_waits_longer_than_the_server_has_been_down_nor_less_than_the_window() {
        let mut backoff = welcomed(Some(1_000), secs(30.0));
        let lost_at = Instant::now();
        backoff.lost(lost_at, true, &mut rng());
        // Many quick failures: growth alone would allow 30 s by now.
        for _ in 0..10 {
            backoff.failed(lost_at + secs(0.1), None, &mut rng());
        }

        let two_secs_in = waits(&backoff, |b, rng| b.failed(lost_at + secs(2.0), None, rng));
        let at_once = waits(&backoff, |b, rng| b.failed(lost_at, None, rng));

        assert!(two_secs_in.iter().all(|w| *w < secs(2.0)));
        assert!(two_secs_in.iter().any(|w| *w > secs(1.9)));
        assert!(
            at_once.iter().all(|w| *w < secs(1.0)),
            "the window, not the 500 ms step"
        );
        assert!(at_once.iter().any(|w| *w > secs(0.95)));
    }

    #[test]
    fn after_a_short_outage_the_agent_is_back_within_the_window_plus_the_outage() {
        let window = secs(1.0);
        for outage in [0.5, 2.0, 5.0, 20.0] {
            let outage = secs(outage);
            let mut rng = rng();
            let mut longest = Duration::ZERO;
            for _ in 0..SAMPLES {
                let mut backoff = welcomed(Some(1_000), secs(30.0));
                let lost_at = Instant::now();
                let mut at = lost_at + backoff.lost(lost_at, true, &mut rng);
                while at < lost_at + outage {
                    at += backoff.failed(at, None, &mut rng);
                }
                longest = longest.max(at - (lost_at + outage));
            }
            assert!(
                longest <= window.max(outage),
                "{outage:?} outage: back {longest:?} after it"
            );
        }
    }

    #[test]
    fn retry_after_is_waited_in_full_before_the_jitter() {
        let backoff = welcomed(Some(2_000), secs(30.0));
        let now = Instant::now();

        let waits = waits(&backoff, |b, rng| b.failed(now, Some(secs(7.0)), rng));

        assert!(waits.iter().all(|w| (secs(7.0)..secs(9.0)).contains(w)));
        assert!(waits.iter().any(|w| *w < secs(7.1)) && waits.iter().any(|w| *w > secs(8.9)));
        let absurd = Backoff::new(secs(1.0)).failed(now, Some(secs(1e9)), &mut rng());
        assert!(absurd <= MAX_WAIT + BASE, "{absurd:?}");
    }

    #[test]
    fn connections_dropped_quickly_again_and_again_wait_longer_each_time() {
        let mut backoff = welcomed(Some(1_000), secs(30.0));
        let now = Instant::now();
        let mut ceilings = Vec::new();

        for _ in 0..7 {
            let waits = waits(&backoff, |b, rng| b.lost(now, false, rng));
            backoff.lost(now, false, &mut rng());
            ceilings.push(waits.into_iter().max().unwrap().as_secs_f64().ceil() as u64);
        }
        let stable = waits(&backoff, |b, rng| b.lost(now, true, rng));

        assert_eq!(ceilings, [1, 1, 2, 4, 8, 16, 30]);
        assert!(
            stable.iter().all(|w| *w < secs(1.0)),
            "a stable connection ends the run"
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds_only() {
        assert_eq!(parse_retry_after("3"), Some(secs(3.0)));
        assert_eq!(parse_retry_after(" 120 "), Some(secs(120.0)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
