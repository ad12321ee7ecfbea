//! The replay rules of signed requests (the ECS API's AccessKey signatures): a request is
//! accepted within 15 minutes of the time it was signed at, and each nonce once per key in
//! that window. Nonces live in the database, so a replay to another replica is refused too.

use super::Dispatcher;
use super::error::Error;
use std::time::Duration;

/// How far a signed request's time may be from the server's, either way (Alibaba's window).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Longest nonce kept (the SDKs send 32 or 64 hex digits).
const MAX_NONCE: usize = 128;

/// Whether a signed request may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Signed too long ago, or too far ahead of the server's clock.
    Expired,
    /// The key used this nonce within the window.
    NonceUsed,
    /// Empty, or longer than any SDK sends.
    BadNonce,
}

impl Dispatcher {
    /// Checks a verified request's signing time (`signed_at`, ms) and records its nonce.
    pub async fn check_freshness(&self, access_key_id: &str, nonce: &str, signed_at: i64) -> Result<Freshness, Error> {
        let now = self.now();
        let window = REPLAY_WINDOW.as_millis() as i64;
        if (now - signed_at).abs() > window {
            return Ok(Freshness::Expired);
        }
        if nonce.is_empty() || nonce.len() > MAX_NONCE {
            return Ok(Freshness::BadNonce);
        }
        // Anything older than the window could not pass the time check again, so its nonce
        // may be forgotten.
        let fresh = self
            .inner
            .store
            .remember_nonce(access_key_id, nonce, now, now - window)
            .await?;
        Ok(if fresh { Freshness::Fresh } else { Freshness::NonceUsed })
    }
}
