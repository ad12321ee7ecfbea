//! How the server serves, at the edges: HTTP/1 only (so the header deadline covers every
//! connection), cookies that stay `Secure` under TLS, server errors that show a request id and
//! never their cause, and an agent line that says https when the server does.

use crate::helpers::{Console, PASSWORD, TestApp, form, private_ca_certificate};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A server on HTTPS with a certificate for `localhost` signed by a private CA; the CA's path.
async fn tls_app(dir: &Path) -> (TestApp, PathBuf) {
    let (cert, key, ca) = private_ca_certificate(dir);
    (TestApp::spawn_tls(&cert, &key, &ca).await, ca)
}

/// A console client trusting `ca` that follows no redirects.
fn https_client(ca: &Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_cleartext_http2_client_is_refused_rather_than_held_open() {
    let app = TestApp::spawn().await;
    let address = app.url.trim_start_matches("http://");

    let mut stream = TcpStream::connect(address).await.unwrap();
    // The HTTP/2 connection preface and an empty SETTINGS frame, as an h2c client opens.
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;

    assert!(read.is_ok(), "the connection was held open");
    let settings_frame = answer.len() >= 9 && answer[3] == 4;
    assert!(!settings_frame, "the server spoke HTTP/2: {answer:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
}

#[tokio::test]
async fn a_client_that_sends_its_headers_slowly_is_cut_off_at_the_configured_deadline() {
    let app = TestApp::spawn_with(&["--header-timeout-secs", "1"]).await;
    let address = app.url.trim_start_matches("http://");

    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = tokio::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut answer)).await;

    assert!(read.is_ok(), "a slow client held the connection past the deadline");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut off by the 1 s deadline, not by the test's own limit"
    );
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
}

#[tokio::test]
async fn logging_out_under_tls_ends_the_cookie_with_its_secure_attribute() {
    let dir = tempfile::tempdir().unwrap();
    let (app, ca) = tls_app(dir.path()).await;
    let console = Console::login_with(&app, https_client(&ca), "admin", PASSWORD).await;

    let logout = console.post_form("/logout", Vec::new()).await.unwrap();

    assert!(console.set_cookie.contains("Secure"), "{}", console.set_cookie);
    let removal = logout.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(removal.starts_with("fleetrun_session=;"), "{removal}");
    assert!(removal.contains("Secure") && removal.contains("HttpOnly"), "{removal}");
    assert!(removal.contains("Max-Age=0"), "{removal}");
}

#[tokio::test]
async fn the_activation_line_says_https_and_keeps_the_code_out_of_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (app, ca) = tls_app(dir.path()).await;
    let console = Console::login_with(&app, https_client(&ca), "admin", PASSWORD).await;

    let page = console
        .post_form(
            "/console/activations",
            form(&[
                ("region_id", "local"),
                ("instance_count_limit", "2"),
                ("ttl_hours", "4"),
                ("instance_name", "web-1"),
            ]),
        )
        .await
        .unwrap()
        .text;

    let line = page
        .lines()
        .find(|l| l.contains("fleetrun-agent --server"))
        .unwrap_or_else(|| panic!("no agent line in {page}"));
    assert!(line.contains("--server https://localhost:"), "{line}");
    assert!(line.contains("--name web-1"), "{line}");
    assert!(
        !line.contains("--activation-code"),
        "the code stays out of argv: {line}"
    );
    assert!(page.contains("export FLEETRUN_ACTIVATION_CODE="), "{page}");
}

#[tokio::test]
async fn a_server_error_shows_a_request_id_and_never_its_cause() {
    let app = TestApp::spawn().await;
    let console = Console::login(&app).await;
    // Break the database under the running server: reading the audit log now fails.
    let database = app.data.path().join("fleetrun.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", database.display()))
        .await
        .unwrap();
    sqlx::query("DROP TABLE audit_log").execute(&pool).await.unwrap();
    pool.close().await;

    let page = console.get("/console/audit").await.unwrap();
    let (status, html) = (page.status, page.text);
    let request_id = page.headers["x-request-id"].to_str().unwrap().to_string();
    let api = app.client.raw(reqwest::Method::GET, "/audit", None).await.unwrap();
    let api_status = api.status();
    let body = api.text().await.unwrap();

    assert_eq!(status, 500);
    assert!(html.contains(&request_id), "the page names its request id: {html}");
    assert!(
        !html.to_lowercase().contains("audit_log") && !html.contains("no such table"),
        "{html}"
    );
    assert_eq!(api_status, 500);
    assert!(!body.contains("audit_log") && body.contains("request_id"), "{body}");
}
