//! The servers an agent may use (`--server URL1,URL2,…`, DESIGN §9) and which one it uses now:
//! every URL is checked once at start; enrolment tries them in the order given; the connection
//! loop starts at one picked by the instance id (so a fleet spreads evenly over the replicas) and
//! moves to the next, round-robin, whenever its connection is lost or an attempt fails. One URL
//! (a single server, or one name behind a load balancer) is the list of one that never moves.
//!
//! Pure: no I/O. Depends on `url` (via reqwest) and `anyhow` only; the reconnect timing stays in
//! `backoff`, which does not care which server is next.

use anyhow::{anyhow, bail};

/// The server URLs, in the order given, and the one in use.
#[derive(Debug, Clone)]
pub struct Servers {
    /// Checked URLs without a trailing `/`; never empty.
    urls: Vec<String>,
    /// Index into `urls` of the server the agent uses now; moved only by
    /// [`start_for`](Self::start_for) and [`advance`](Self::advance).
    current: usize,
}

impl Servers {
    /// Checks every `--server` entry ([`check_server_url`]); an empty entry or a bad URL is an
    /// error naming it. Starts at the first URL.
    pub fn parse(entries: &[String], insecure_plaintext: bool) -> anyhow::Result<Servers> {
        if entries.is_empty() {
            bail!("--server needs at least one URL");
        }
        let mut urls = Vec::with_capacity(entries.len());
        for (n, entry) in entries.iter().enumerate() {
            let url = entry.trim();
            if url.is_empty() {
                bail!(
                    "--server entry {} of {} is empty: separate the URLs with single commas, as in \
                     https://a.example,https://b.example",
                    n + 1,
                    entries.len()
                );
            }
            check_server_url(url, insecure_plaintext)?;
            urls.push(url.trim_end_matches('/').to_string());
        }
        Ok(Servers { urls, current: 0 })
    }

    /// The URLs in the order given: the order enrolment tries them in.
    pub fn all(&self) -> &[String] {
        &self.urls
    }

    /// Moves to the server the agent with `instance_id` starts at: the same one on every start of
    /// that agent, and about as many agents on each server of the list.
    pub fn start_for(&mut self, instance_id: &str) {
        self.current = start_index(instance_id, self.urls.len());
    }

    /// The URL of the server in use.
    pub fn current(&self) -> &str {
        &self.urls[self.current]
    }

    /// Whether there is another server to move to.
    pub fn has_others(&self) -> bool {
        self.urls.len() > 1
    }

    /// Moves to the next server of the list, after the last back to the first, and returns it.
    pub fn advance(&mut self) -> &str {
        self.current = (self.current + 1) % self.urls.len();
        self.current()
    }
}

/// Where an agent starts in a list of `len` servers: FNV-1a of its instance id, modulo `len`.
/// Spelled out rather than `std`'s hasher, whose output may change between Rust releases: an
/// agent should not move to another replica because it was rebuilt.
fn start_index(instance_id: &str, len: usize) -> usize {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = instance_id
        .bytes()
        .fold(OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME));
    // `len` is small, so the cast back cannot truncate: the remainder is below it.
    (hash % len.max(1) as u64) as usize
}

/// Refuses URLs the agent cannot use, and plain HTTP to another machine unless allowed: the
/// instance credential and every command would cross the network unencrypted.
fn check_server_url(url: &str, insecure_plaintext: bool) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow!("--server {url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if insecure_plaintext || is_loopback(&parsed) => Ok(()),
        "http" => bail!(
            "refusing plain http:// to {}: the instance credential and every command would cross the network \
             unencrypted. Serve with --tls-cert/--tls-key and use https://, or pass --insecure-plaintext if \
             this network is trusted",
            parsed.host_str().unwrap_or_default()
        ),
        other => bail!("--server {url:?} must use https:// or http://, not {other}://"),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng as _, SeedableRng as _};

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    fn parse(entries: &[&str]) -> anyhow::Result<Servers> {
        Servers::parse(&list(entries), false)
    }

    #[test]
    fn plaintext_is_refused_to_other_machines_unless_allowed() {
        assert!(check_server_url("http://127.0.0.1:8080", false).is_ok());
        assert!(check_server_url("http://localhost:8080", false).is_ok());
        assert!(check_server_url("http://[::1]:8080", false).is_ok());
        assert!(check_server_url("https://fleet.example", false).is_ok());
        let refused = check_server_url("http://fleet.example:8080", false)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("--insecure-plaintext"), "{refused}");
        assert!(check_server_url("http://fleet.example:8080", true).is_ok());
        assert!(check_server_url("ftp://fleet.example", true).is_err());
    }

    #[test]
    fn every_url_of_the_list_is_checked_and_a_bad_one_is_named() {
        let servers = parse(&["https://a.example/", " https://b.example:8443", "http://127.0.0.1:8080"]).unwrap();
        assert_eq!(
            servers.all(),
            ["https://a.example", "https://b.example:8443", "http://127.0.0.1:8080"],
            "trimmed of spaces and the trailing slash"
        );

        let empty = parse(&["https://a.example", "", "https://c.example"])
            .unwrap_err()
            .to_string();
        assert!(empty.contains("entry 2 of 3 is empty"), "{empty}");
        let bad = parse(&["https://a.example", "b.example"]).unwrap_err().to_string();
        assert!(bad.contains("\"b.example\" is not a URL"), "{bad}");
        let plain = parse(&["https://a.example", "http://b.example"])
            .unwrap_err()
            .to_string();
        assert!(plain.contains("plain http:// to b.example"), "{plain}");
        let scheme = parse(&["https://a.example", "ws://b.example"]).unwrap_err().to_string();
        assert!(scheme.contains("\"ws://b.example\" must use https://"), "{scheme}");
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn one_url_is_always_the_one_in_use() {
        let mut servers = parse(&["https://fleet.example"]).unwrap();

        servers.start_for("i-abc");

        assert_eq!(servers.current(), "https://fleet.example");
        assert_eq!(servers.advance(), "https://fleet.example");
        assert!(!servers.has_others());
    }

    #[test]
    fn servers_are_used_round_robin_from_the_start_the_instance_id_picks() {
        let mut servers = parse(&["https://a", "https://b", "https://c"]).unwrap();
        let start = start_index("i-abc", 3);

        servers.start_for("i-abc");
        let mut order = vec![servers.current().to_string()];
        for _ in 0..6 {
            order.push(servers.advance().to_string());
        }

        let names = ["https://a", "https://b", "https://c"];
        let expected: Vec<&str> = (0..7).map(|n| names[(start + n) % 3]).collect();
        assert_eq!(order, expected);
        assert!(servers.has_others());
    }

    #[test]
    fn an_agent_always_starts_at_the_same_server_and_a_fleet_spreads_evenly() {
        const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let ids: Vec<String> = (0..3_000)
            .map(|_| {
                let random: String = (0..20).map(|_| BASE32[rng.gen_range(0..32)] as char).collect();
                format!("i-{random}")
            })
            .collect();

        for len in [2, 3, 5] {
            let mut counts = vec![0usize; len];
            for id in &ids {
                let start = start_index(id, len);
                assert_eq!(start, start_index(id, len), "the same start every time");
                counts[start] += 1;
            }
            let fair = ids.len() / len;
            for count in &counts {
                assert!(
                    count.abs_diff(fair) * 10 < fair,
                    "{len} servers: {counts:?}, each should be near {fair}"
                );
            }
        }
        assert_eq!(start_index("i-abc", 1), 0);
    }
}
