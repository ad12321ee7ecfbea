//! Login throttling that stops guessing without locking out the innocent (issue 11): guesses
//! at `admin` from one address slow `admin` down elsewhere but never keep the right password
//! out, through the console and the API alike; behind a trusted proxy each forwarded address
//! counts on its own, and the same header from anyone else is ignored. Requests leave from
//! different loopback addresses (127.0.0.0/8 is all this machine's) to play different clients.
//! The address limit itself is in `security::an_address_past_its_failure_limit_is_refused_…`.

use crate::helpers::{Console, PASSWORD, TestApp, register_body};
use fleetrun::client::{ApiClient, Credentials};
use reqwest::StatusCode;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

/// An HTTP client whose requests leave from `source` (a loopback address), following no
/// redirects, so a console login's 303 is seen.
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// `GET /api/v1/instances` as `username:password` over HTTP Basic from `http`, with
/// `X-Forwarded-For: forwarded` when given.
async fn basic(
    app: &TestApp,
    http: &reqwest::Client,
    username: &str,
    password: &str,
    forwarded: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .get(format!("{}/api/v1/instances", app.url))
        .basic_auth(username, Some(password));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    request.send().await.unwrap()
}

/// Sends `n` wrong passwords for `admin` over HTTP Basic; each must be refused as wrong.
async fn guess(app: &TestApp, http: &reqwest::Client, n: usize, forwarded: Option<&str>) {
    for i in 0..n {
        let answer = basic(app, http, "admin", &format!("guess number {i}"), forwarded).await;
        assert_eq!(
            answer.status(),
            StatusCode::UNAUTHORIZED,
            "guess {i} from {forwarded:?}"
        );
    }
}

/// The audit log's entries for `action`, newest first.
async fn audited(app: &TestApp, action: &str) -> Vec<Value> {
    let audit: Value = app
        .client
        .raw(
            reqwest::Method::GET,
            &format!("/audit?action={action}&page_size=100"),
            None,
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    audit["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn thirty_wrong_passwords_for_admin_from_one_address_do_not_keep_admin_out_of_the_api() {
    let app = TestApp::spawn().await;
    let attacker = client_from("127.0.0.9");
    guess(&app, &attacker, 30, None).await;

    let owner = ApiClient::with_http(
        &app.url,
        Credentials::Basic {
            username: "admin".into(),
            password: PASSWORD.into(),
        },
        client_from("127.0.0.1"),
    );
    let listed = owner.instances("").await;
    let typo = basic(&app, &client_from("127.0.0.3"), "admin", "a typo of the password", None).await;

    assert!(listed.is_ok(), "the right password logs in: {listed:?}");
    assert_eq!(typo.status(), StatusCode::UNAUTHORIZED, "slowed, not refused outright");
    let body: Value = typo.json().await.unwrap();
    assert_eq!(body["code"], "InvalidCredentials");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("was held") && message.contains("failed attempts from other addresses"),
        "the answer says it was slowed and why: {message}"
    );
}

#[tokio::test]
async fn thirty_wrong_passwords_for_admin_from_one_address_do_not_keep_admin_out_of_the_console() {
    let app = TestApp::spawn().await;
    let attacker = client_from("127.0.0.9");
    for i in 0..30 {
        let form = [("username", "admin"), ("password", &format!("guess number {i}"))];
        let refused = attacker
            .post(format!("{}/login", app.url))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }

    let console = Console::login_with(&app, client_from("127.0.0.1"), "admin", PASSWORD).await;
    let page = console
        .http
        .get(format!("{}/console/instances", console.url))
        .header("cookie", &console.cookie)
        .send()
        .await
        .unwrap();

    assert_eq!(page.status(), StatusCode::OK, "logged in");
    let logins = audited(&app, "Login").await;
    assert!(
        logins.iter().any(|e| e["source_ip"] == "127.0.0.1"),
        "the login is audited from its own address: {logins:?}"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_address_is_throttled_on_its_own() {
    let app = TestApp::spawn_with(&["--trusted-proxy", "127.0.0.2/32"]).await;
    let proxy = client_from("127.0.0.2");
    // The client may write anything left of what the proxy appends: only the right-most counts.
    guess(&app, &proxy, 50, Some("192.0.2.1, 198.51.100.7")).await;

    let blocked = basic(&app, &proxy, "admin", PASSWORD, Some("198.51.100.7")).await;
    let other = basic(&app, &proxy, "admin", PASSWORD, Some("198.51.100.8")).await;
    let console = Console::login_with(&app, client_from("127.0.0.2"), "admin", PASSWORD).await;

    assert_eq!(
        blocked.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the guessing address is refused"
    );
    assert!(blocked.headers().contains_key("retry-after"));
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "another client behind the same proxy is not"
    );
    assert!(!console.cookie.is_empty());
    let logins = audited(&app, "Login").await;
    assert_eq!(
        logins[0]["source_ip"], "127.0.0.2",
        "no header: the proxy is the client"
    );
    let forwarded = Console::login_with(&app, forging_client("127.0.0.2", "198.51.100.8"), "admin", PASSWORD).await;
    assert!(!forwarded.cookie.is_empty());
    let logins = audited(&app, "Login").await;
    assert_eq!(
        logins[0]["source_ip"], "198.51.100.8",
        "the audit log names the forwarded client"
    );
    let enrolment = forwarding_enrolment(&app, "127.0.0.2", "203.0.113.50").await;
    assert_eq!(enrolment["source_ip"], "203.0.113.50", "and so does enrolment");
}

/// A client leaving from `source` that sends `X-Forwarded-For: forwarded` with every request,
/// as a proxy would (or a client pretending to be one).
fn forging_client(source: &str, forwarded: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", forwarded.parse().unwrap());
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[tokio::test]
async fn x_forwarded_for_from_a_peer_that_is_not_a_trusted_proxy_is_ignored() {
    let app = TestApp::spawn_with(&["--trusted-proxy", "127.0.0.2/32"]).await;
    let stranger = client_from("127.0.0.5");
    // A new forged address on each guess does not spread them over many allowances.
    for i in 0..50 {
        let forged = format!("198.51.100.{}", 100 + i);
        let answer = basic(&app, &stranger, "admin", "a wrong guess", Some(&forged)).await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }

    let stranger_again = basic(&app, &stranger, "admin", PASSWORD, Some("203.0.113.99")).await;
    let forged_login = Console::login_with(&app, forging_client("127.0.0.6", "198.51.100.7"), "admin", PASSWORD).await;

    assert_eq!(
        stranger_again.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the untrusted peer's own address counted its 50 failures"
    );
    assert!(!forged_login.cookie.is_empty());
    let logins = audited(&app, "Login").await;
    assert_eq!(
        logins[0]["source_ip"], "127.0.0.6",
        "the audit log names the peer, not the header"
    );
    let enrolment = forwarding_enrolment(&app, "127.0.0.5", "203.0.113.50").await;
    assert_eq!(enrolment["source_ip"], "127.0.0.5", "and so does enrolment");
}

/// Enrols an instance from `source` with `X-Forwarded-For: forwarded`; its audit entry.
async fn forwarding_enrolment(app: &TestApp, source: &str, forwarded: &str) -> Value {
    let activation = app.activation("local", 1).await;
    let response = client_from(source)
        .post(format!("{}/agent/v1/register", app.url))
        .header("x-forwarded-for", forwarded)
        .json(&register_body(&activation, "via-proxy"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let instance: Value = response.json().await.unwrap();
    let entries = audited(app, "RegisterInstance").await;
    entries
        .into_iter()
        .find(|e| e["target"] == instance["instance_id"])
        .expect("the enrolment is audited")
}
