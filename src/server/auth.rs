//! Who is calling and from where: the `Actor` extractor of the JSON API reads a bearer token or
//! HTTP Basic and asks the domain (`dispatch::accounts`), which holds the throttling and
//! password rules; `PeerIp` is the client's address, behind trusted proxies too.

use super::AppState;
use super::error::ApiError;
use crate::dispatch::{Actor, Via};
use crate::store::UserRow;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use base64::Engine as _;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The client's address: the one place every use of it (login throttling, the audit log,
/// enrolment) reads it from. It is the TCP peer's, unless the peer is a trusted proxy
/// (`--trusted-proxy`): then it is the right-most `X-Forwarded-For` entry that is not itself a
/// trusted proxy (see [`client_address`]). `unknown` when the server was started without
/// peer addresses (router tests). Never rejects.
pub struct PeerIp(pub String);

impl PeerIp {
    /// The client address of a request, as the extractor gives it.
    pub fn of(parts: &Parts, state: &AppState) -> PeerIp {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return PeerIp("unknown".into());
        };
        let forwarded = parts.headers.get_all("x-forwarded-for").iter();
        PeerIp(client_address(peer.ip(), forwarded, &state.trusted_proxies).to_string())
    }
}

impl FromRequestParts<AppState> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(PeerIp::of(parts, state))
    }
}

/// The client's address, from the TCP peer and the `X-Forwarded-For` headers (in order; a
/// header may list several addresses). The header is read only when the peer is in `trusted`,
/// and then from the right, as each proxy appends the address it saw: skip entries that are
/// trusted proxies themselves, and take the first that is not. The entries to its left were
/// written by the client and prove nothing. An entry that is not an address stops the walk at
/// the last proxy, so garbage never lets the client choose its address. IPv4-mapped IPv6
/// addresses count as IPv4.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    let entries = forwarded_for.rev().flat_map(|value| {
        let text = value.to_str().unwrap_or("\u{0}");
        text.rsplit(',').map(str::trim).collect::<Vec<_>>()
    });
    for entry in entries {
        let Some(hop) = forwarded_ip(entry) else {
            break;
        };
        client = hop;
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`203.0.113.7:5123`,
/// `[2001:db8::1]:443`) or in brackets, as some proxies write it.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// The actor of an API request, from `Authorization: Bearer <token>` or HTTP Basic.
impl FromRequestParts<AppState> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "Unauthorized",
                "this needs credentials: send `Authorization: Bearer <api token>` or HTTP Basic username:password",
            ));
        };
        let value = value.to_str().unwrap_or_default();
        let PeerIp(ip) = PeerIp::of(parts, state);
        let user: UserRow = if let Some(token) = value.strip_prefix("Bearer ") {
            state.dispatcher.authenticate_token(token).await?
        } else if let Some(encoded) = value.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    unauthorized(
                        "InvalidCredentials",
                        "the Basic credentials are not valid Base64 of username:password",
                    )
                })?;
            let (username, password) = decoded.split_once(':').ok_or_else(|| {
                unauthorized(
                    "InvalidCredentials",
                    "the Basic credentials have no ':' between username and password",
                )
            })?;
            state.dispatcher.authenticate_basic(username, password, &ip).await?
        } else {
            return Err(unauthorized(
                "Unauthorized",
                "unsupported Authorization scheme: use Bearer or Basic",
            ));
        };
        Ok(Actor {
            user_id: user.id,
            username: user.username,
            role: user.role,
            source_ip: ip,
            via: Via::Api,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(peer: &str, headers: &[&str], trusted: &[&str]) -> String {
        let headers: Vec<HeaderValue> = headers.iter().map(|h| HeaderValue::from_str(h).unwrap()).collect();
        let trusted: Vec<IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        client_address(peer.parse().unwrap(), headers.iter(), &trusted).to_string()
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        assert_eq!(client("198.51.100.4", &["203.0.113.7"], &[]), "198.51.100.4");
        assert_eq!(
            client("198.51.100.4", &["203.0.113.7"], &["10.0.0.0/8"]),
            "198.51.100.4"
        );
        assert_eq!(client("10.0.0.2", &["203.0.113.7"], &["10.0.0.0/8"]), "203.0.113.7");
        assert_eq!(
            client("10.0.0.2", &[], &["10.0.0.0/8"]),
            "10.0.0.2",
            "no header: the proxy itself"
        );
    }

    #[test]
    fn the_right_most_address_that_is_not_a_trusted_proxy_is_the_client() {
        let trusted = ["10.0.0.0/8"];

        // The client forged the left-most entry; the proxy appended what it saw.
        assert_eq!(client("10.0.0.2", &["1.1.1.1, 203.0.113.7"], &trusted), "203.0.113.7");
        // Two proxies of ours in a row.
        assert_eq!(
            client("10.0.0.2", &["1.1.1.1, 203.0.113.7, 10.0.0.3"], &trusted),
            "203.0.113.7"
        );
        // Several headers read as one list, in order.
        assert_eq!(
            client("10.0.0.2", &["1.1.1.1", "203.0.113.7", "10.0.0.3"], &trusted),
            "203.0.113.7"
        );
        // Only proxies of ours: the left-most of them.
        assert_eq!(client("10.0.0.2", &["10.0.0.9, 10.0.0.3"], &trusted), "10.0.0.9");
    }

    #[test]
    fn an_entry_that_is_not_an_address_stops_at_the_last_proxy() {
        let trusted = ["10.0.0.0/8"];

        assert_eq!(client("10.0.0.2", &["203.0.113.7, unknown"], &trusted), "10.0.0.2");
        assert_eq!(client("10.0.0.2", &["203.0.113.7, 10.0.0.3, "], &trusted), "10.0.0.2");
        assert_eq!(
            client("10.0.0.2", &["203.0.113.7, garbage, 10.0.0.3"], &trusted),
            "10.0.0.3"
        );
    }

    #[test]
    fn entries_with_ports_brackets_or_ipv4_mapping_are_read_as_addresses() {
        let trusted = ["10.0.0.0/8", "fd00::/8"];

        assert_eq!(client("10.0.0.2", &["203.0.113.7:5123"], &trusted), "203.0.113.7");
        assert_eq!(client("10.0.0.2", &["[2001:db8::1]:443"], &trusted), "2001:db8::1");
        assert_eq!(client("10.0.0.2", &["[2001:db8::1]"], &trusted), "2001:db8::1");
        assert_eq!(client("::ffff:10.0.0.2", &["203.0.113.7"], &trusted), "203.0.113.7");
        assert_eq!(client("fd00::2", &["::ffff:203.0.113.7"], &trusted), "203.0.113.7");
    }
}
