//! AccessKey pairs through the API and the console: created, listed without their secret,
//! disabled, enabled, deleted, two at most per account, every change audited, and the secret
//! found nowhere afterwards: not in the database files, not in anything the server logged.

use crate::helpers::{Console, TestApp, form};
use fleetrun::client::{ApiClient, Credentials};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;

/// Everything logged on the test's thread, at every level. The test's runtime has one thread,
/// which runs the server's tasks too, so this is what the server would have written to its log.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// `method path` as `client` with a JSON body: the status and the answer.
async fn call(client: &ApiClient, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let response = client.raw(method, path, body).await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The files under `dir` that hold `needle`, read as bytes.
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test]
async fn access_keys_live_their_whole_life_through_api_and_console_and_their_secrets_are_kept_nowhere_in_clear() {
    let log = CapturedLog::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(log.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let app = TestApp::spawn().await;
    let console = Console::login(&app).await;

    // Created through the API: the secret comes back this once.
    let response = app
        .client
        .raw(Method::POST, "/access-keys", Some(&json!({"description": "ci"})))
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let by_api: Value = response.json().await.unwrap();
    let api_id = by_api["access_key_id"].as_str().unwrap().to_string();
    let api_secret = by_api["access_key_secret"].as_str().unwrap().to_string();
    assert!(api_id.starts_with("LTAI") && api_id.len() == 24, "{api_id}");
    assert_eq!(api_secret.len(), 30);
    assert_eq!(
        (by_api["description"].as_str(), by_api["enabled"].as_bool()),
        (Some("ci"), Some(true))
    );

    // Created through the console: the secret is on the answer, with the warning, this once.
    let page = console
        .post_form("/console/account/access-keys", form(&[("description", "laptop")]))
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(
        page.text
            .contains("AccessKey Secret — copy it now; it is not shown again."),
        "{}",
        page.text
    );
    let console_secret = page
        .text
        .split("id=\"new-access-key-secret\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(console_secret.len(), 30, "{console_secret}");
    let account = console.get("/console/account").await.unwrap().text;
    assert!(account.contains(&api_id) && account.contains("laptop"), "{account}");
    assert!(!account.contains(&console_secret) && !account.contains(&api_secret));

    // Listed without secrets.
    let (status, listed) = call(&app.client, Method::GET, "/access-keys", None).await;
    assert_eq!(status, 200);
    let keys = listed["access_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{listed}");
    assert_eq!(keys[0]["access_key_id"], api_id.as_str());
    assert_eq!(keys[0]["last_used_time"], Value::Null);
    let console_id = keys[1]["access_key_id"].as_str().unwrap().to_string();
    assert!(keys.iter().all(|k| k.get("access_key_secret").is_none()));
    let listed_text = listed.to_string();
    assert!(!listed_text.contains(&api_secret) && !listed_text.contains(&console_secret));

    // A third is refused by the quota, on both surfaces.
    let (status, third) = call(&app.client, Method::POST, "/access-keys", Some(&json!({}))).await;
    assert_eq!((status, third["code"].as_str()), (403, Some("QuotaExceeded.AccessKey")));
    let message = third["message"].as_str().unwrap();
    assert!(
        message.contains("2 of 2") && message.contains("delete one"),
        "{message}"
    );
    let refused = console
        .post_form("/console/account/access-keys", form(&[("description", "")]))
        .await
        .unwrap();
    assert!(refused.text.contains("2 of 2"), "{}", refused.text);
    assert!(!refused.text.contains("copy it now"));

    // Disabled and enabled again through the API, disabled through the console.
    let path = format!("/access-keys/{api_id}");
    let (status, disabled) = call(&app.client, Method::PATCH, &path, Some(&json!({"enabled": false}))).await;
    assert_eq!(
        (status, disabled["enabled"].as_bool()),
        (200, Some(false)),
        "{disabled}"
    );
    let (status, enabled) = call(&app.client, Method::PATCH, &path, Some(&json!({"enabled": true}))).await;
    assert_eq!((status, enabled["enabled"].as_bool()), (200, Some(true)), "{enabled}");
    let page = console
        .post_form(
            &format!("/console/account/access-keys/{console_id}/status"),
            form(&[("enabled", "false")]),
        )
        .await
        .unwrap();
    assert!(
        page.text.contains(&format!("AccessKey {console_id} disabled")),
        "{}",
        page.text
    );
    assert!(page.text.contains(">Disabled</span>"));

    // Another account neither sees nor changes them, and has two of its own.
    let viewer = json!({"username": "vera", "password": "vera's long password", "role": "viewer"});
    app.create("/users", &viewer).await;
    let vera = ApiClient::new(
        &app.url,
        Credentials::Basic {
            username: "vera".into(),
            password: "vera's long password".into(),
        },
    );
    let (_, theirs) = call(&vera, Method::GET, "/access-keys", None).await;
    let (status, not_theirs) = call(&vera, Method::PATCH, &path, Some(&json!({"enabled": false}))).await;
    let (viewer_created, _) = call(&vera, Method::POST, "/access-keys", Some(&json!({}))).await;
    assert_eq!(theirs["access_keys"], json!([]));
    assert_eq!(
        (status, not_theirs["code"].as_str()),
        (404, Some("InvalidAccessKeyId.NotFound"))
    );
    assert_eq!(viewer_created, 201, "a viewer may hold AccessKeys too");

    // Deleted through the console and the API; a second delete finds nothing.
    let page = console
        .post_form(&format!("/console/account/access-keys/{console_id}/delete"), Vec::new())
        .await
        .unwrap();
    assert!(
        page.text.contains(&format!("AccessKey {console_id} deleted.")),
        "{}",
        page.text
    );
    let (status, _) = call(&app.client, Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    let (status, again) = call(&app.client, Method::DELETE, &path, None).await;
    assert_eq!(
        (status, again["code"].as_str()),
        (404, Some("InvalidAccessKeyId.NotFound"))
    );
    let (_, listed) = call(&app.client, Method::GET, "/access-keys", None).await;
    assert_eq!(listed["access_keys"], json!([]));

    // Every change is in the audit log, under the key id, with no secret.
    let (_, audit) = call(&app.client, Method::GET, "/audit?user=admin&page_size=100", None).await;
    let mut trail: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().ends_with("AccessKey"))
        .map(|e| {
            let field = |name: &str| e[name].as_str().unwrap().to_string();
            (field("action"), field("target"), field("via"))
        })
        .collect();
    trail.reverse();
    let entry = |action: &str, target: &str, via: &str| (action.to_string(), target.to_string(), via.to_string());
    assert_eq!(
        trail,
        [
            entry("CreateAccessKey", &api_id, "api"),
            entry("CreateAccessKey", &console_id, "console"),
            entry("DisableAccessKey", &api_id, "api"),
            entry("EnableAccessKey", &api_id, "api"),
            entry("DisableAccessKey", &console_id, "console"),
            entry("DeleteAccessKey", &console_id, "console"),
            entry("DeleteAccessKey", &api_id, "api"),
        ]
    );
    let audit_text = audit.to_string();
    assert!(!audit_text.contains(&api_secret) && !audit_text.contains(&console_secret));

    // The secrets are nowhere in clear: not in the database, its WAL, or anything logged.
    let data = app.data.path();
    let key_file = std::fs::metadata(data.join("secret.key")).unwrap();
    assert_eq!(key_file.len(), 32);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_file.permissions()) & 0o777,
        0o600
    );
    assert!(data.join("fleetrun.db-wal").exists(), "the WAL is searched too");
    assert!(
        !files_holding(data, &api_id).is_empty(),
        "the search finds what is stored (the audit's target)"
    );
    for secret in [&api_secret, &console_secret] {
        assert_eq!(files_holding(data, secret), Vec::<String>::new());
    }
    let logged = log.text();
    // The capture is this thread's subscriber; when the whole `it` binary runs, tracing's cached
    // interest of a callsite can leave the server's lines out (seen once in CI). When they are in,
    // the request naming the key must be too; the secrets must be absent either way.
    if logged.contains("fleetrun server listening on") {
        assert!(logged.contains(&api_id), "requests naming the key are in the log");
    } else {
        eprintln!("note: the server's log lines were not captured in this run");
    }
    assert!(!logged.contains(&api_secret), "the API key's secret was logged");
    assert!(!logged.contains(&console_secret), "the console key's secret was logged");
}
