//! `GET /metrics`: Prometheus's text format (version 0.0.4), off unless configured
//! (`--metrics-token-file`, `FLEETRUN_METRICS_TOKEN`, or `--metrics-open`), and the layer that
//! times every HTTP request by route.
//!
//! Why off by default: the metrics tell how many machines an installation runs, how busy it is
//! and which routes it serves, and the listener usually faces the network the agents reach it
//! from. An operator turns them on with a token Prometheus presents
//! (`authorization.credentials_file`), or on a private network with `--metrics-open`. Off,
//! the route does not exist (404, as any unknown path), and no request is timed.
//!
//! Requests are labelled by the route pattern that matched (axum's `MatchedPath`, such as
//! `/api/v1/invocations/{invoke_id}`) and the method, never the raw path, so the number of
//! series is bounded by the router. The registry is built once per server ([`Exposition`],
//! held by `AppState`); the domain's metrics are the dispatcher's (`dispatch::metrics`).

use super::{ApiError, AppState};
use anyhow::Context as _;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Instant;
use subtle::ConstantTimeEq as _;

/// Shortest metrics token accepted: guessing one must be hopeless, since failed tries are not
/// throttled.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Who may read `/metrics`.
#[derive(Clone)]
pub enum Access {
    /// Nobody: the route is not served (the default).
    Off,
    /// Anyone who reaches the listener (`--metrics-open`).
    Open,
    /// Requests with `Authorization: Bearer <token>`; the SHA-256 of the token is kept, so
    /// tokens of any length compare in the same time.
    Token([u8; 32]),
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Off => "Off",
            Access::Open => "Open",
            Access::Token(_) => "Token(***)",
        })
    }
}

impl Access {
    /// The access `fleetrun serve`'s options describe: a token given in the environment
    /// (`FLEETRUN_METRICS_TOKEN`) or read from a file (trailing whitespace ignored), or
    /// `--metrics-open`, or off.
    pub fn from_options(token: Option<&str>, token_file: Option<&Path>, open: bool) -> anyhow::Result<Access> {
        let token = match (token, token_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "give the metrics token once: FLEETRUN_METRICS_TOKEN (or --metrics-token) or --metrics-token-file, not both"
            ),
            (Some(token), None) => Some(token.to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "cannot read the metrics token (--metrics-token-file {})",
                        path.display()
                    )
                })?;
                Some(text.trim_end().to_string())
            }
            (None, None) => None,
        };
        match (token, open) {
            (Some(_), true) => anyhow::bail!(
                "--metrics-open serves /metrics to anyone, and a metrics token asks for it: give one or the other"
            ),
            (Some(token), false) => {
                if token.chars().count() < MIN_TOKEN_CHARS || token.chars().any(char::is_whitespace) {
                    anyhow::bail!(
                        "the metrics token must be at least {MIN_TOKEN_CHARS} characters without spaces: \
                         make one with `openssl rand -hex 32`"
                    );
                }
                Ok(Access::Token(Sha256::digest(token.as_bytes()).into()))
            }
            (None, true) => Ok(Access::Open),
            (None, false) => Ok(Access::Off),
        }
    }

    /// Whether `/metrics` is served at all.
    pub fn is_on(&self) -> bool {
        !matches!(self, Access::Off)
    }

    /// Whether a request with these headers may read the metrics.
    fn admits(&self, headers: &HeaderMap) -> bool {
        match self {
            Access::Off => false,
            Access::Open => true,
            Access::Token(expected) => {
                let presented = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                let Some(presented) = presented else {
                    return false;
                };
                let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
                digest.as_slice().ct_eq(expected.as_slice()).into()
            }
        }
    }
}

/// The labels of an HTTP request's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route pattern that matched, `ECS API`, or `unmatched`.
    route: String,
    /// The method, or `other` for one outside the standard set.
    method: &'static str,
}

/// A route label set by a handler that answers outside the router's routes (the ECS API,
/// which shares `/` with the console).
#[derive(Clone, Copy, Debug)]
pub struct Route(pub &'static str);

impl Route {
    /// The ECS RPC API's calls.
    pub const ECS: Route = Route("ECS API");
}

type Durations = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Prometheus's default buckets (5 ms to 10 s): what dashboards expect.
fn request_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

/// The registry of one server: the dispatcher's metrics and the request durations, and who may
/// read them.
pub struct Exposition {
    registry: Registry,
    durations: Durations,
    /// Who may read `/metrics`; `Off` also leaves requests untimed.
    pub access: Access,
}

impl Exposition {
    /// The registry over a dispatcher's metrics, every name prefixed `fleetrun_`.
    pub fn new(dispatcher: &crate::dispatch::Dispatcher, access: Access) -> Exposition {
        let mut registry = Registry::with_prefix("fleetrun");
        dispatcher.metrics().register(&mut registry);
        let durations = Durations::new_with_constructor(request_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its answer's headers, by route pattern and method",
            Unit::Seconds,
            durations.clone(),
        );
        Exposition {
            registry,
            durations,
            access,
        }
    }

    /// The registry in Prometheus's text format.
    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// `GET /metrics`.
pub async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.metrics.access.admits(&headers) {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidMetricsToken",
            "/metrics needs the metrics token: send Authorization: Bearer <token> \
             (Prometheus: authorization.credentials_file)",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"fleetrun metrics\""),
        );
        return response;
    }
    state.dispatcher.sample_metrics();
    match state.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::internal(anyhow::anyhow!("could not encode the metrics: {e}")).into_response(),
    }
}

/// Route layer: hands the matched route pattern to [`record`] on the answer.
pub async fn matched_route(path: MatchedPath, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    response.extensions_mut().insert(path);
    response
}

/// Outermost layer: times each request and records it under its route pattern.
pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let response = next.run(req).await;
    let route = match (
        response.extensions().get::<MatchedPath>(),
        response.extensions().get::<Route>(),
    ) {
        (Some(path), _) => path.as_str().to_string(),
        (None, Some(route)) => route.0.to_string(),
        (None, None) => "unmatched".to_string(),
    };
    state
        .metrics
        .durations
        .get_or_create(&RequestLabels { route, method })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The method as a label value from a fixed set, so a client cannot add series by inventing
/// methods.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_token_admits_only_a_bearer_of_that_exact_token() {
        let access = Access::from_options(Some("0123456789abcdef0123"), None, false).unwrap();

        assert!(access.admits(&bearer("Bearer 0123456789abcdef0123")));
        assert!(!access.admits(&bearer("Bearer 0123456789abcdef012")));
        assert!(!access.admits(&bearer("Bearer 0123456789abcdef01234")));
        assert!(!access.admits(&bearer("Basic 0123456789abcdef0123")));
        assert!(!access.admits(&bearer("0123456789abcdef0123")));
        assert!(!access.admits(&HeaderMap::new()));
        assert_eq!(format!("{access:?}"), "Token(***)");
    }

    #[test]
    fn metrics_are_off_unless_asked_for_and_short_or_doubled_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "fedcba9876543210fedcba\n").unwrap();

        assert!(!Access::from_options(None, None, false).unwrap().is_on());
        assert!(
            Access::from_options(None, None, true)
                .unwrap()
                .admits(&HeaderMap::new())
        );
        let from_file = Access::from_options(None, Some(&file), false).unwrap();
        assert!(from_file.admits(&bearer("Bearer fedcba9876543210fedcba")));
        let short = Access::from_options(Some("hunter2"), None, false).unwrap_err();
        assert!(short.to_string().contains("openssl rand -hex 32"), "{short}");
        assert!(Access::from_options(Some("0123456789abcdef0123"), Some(&file), false).is_err());
        assert!(Access::from_options(Some("0123456789abcdef0123"), None, true).is_err());
        let missing = Access::from_options(None, Some(&dir.path().join("nope")), false).unwrap_err();
        assert!(format!("{missing:#}").contains("--metrics-token-file"), "{missing:#}");
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let custom = Method::from_bytes(b"BREW").unwrap();

        assert_eq!(method_label(&custom), "other");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
    }
}
