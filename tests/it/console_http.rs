//! The console over plain HTTP: login, CSRF, security headers, the dialog's per-OS groups and
//! inline errors. (The browser tests in `console.rs` drive the same pages in Chromium.)

use crate::helpers::{PASSWORD, TestApp};
use reqwest::header::{COOKIE, LOCATION};
use reqwest::redirect::Policy;

/// A logged-in console client: the session cookie and the page's CSRF token.
struct Console {
    http: reqwest::Client,
    url: String,
    cookie: String,
    csrf: String,
}

impl Console {
    async fn login(app: &TestApp) -> Console {
        Console::login_as(app, "admin", PASSWORD).await
    }

    async fn login_as(app: &TestApp, username: &str, password: &str) -> Console {
        let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
        let (set_cookie, cookie, csrf) = crate::helpers::console_session(&http, &app.url, username, password).await;
        assert!(
            set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
            "{set_cookie}"
        );
        Console {
            http,
            url: app.url.clone(),
            cookie,
            csrf,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)], csrf: bool) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}{path}", self.url))
            .header(COOKIE, &self.cookie)
            .header("hx-request", "true");
        if csrf {
            request = request.header("x-csrf-token", &self.csrf);
        }
        request.form(form).send().await.unwrap()
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_pages_need_a_session() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();

    let anonymous = http.get(format!("{}/console/instances", app.url)).send().await.unwrap();
    let form = [("username", "admin"), ("password", "wrong")];
    let refused = http
        .post(format!("{}/login", app.url))
        .form(&form)
        .send()
        .await
        .unwrap();

    assert_eq!(anonymous.status(), 303);
    assert!(
        anonymous.headers()[LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/login?next=")
    );
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("Wrong username or password."));
}

#[tokio::test]
async fn a_state_change_without_the_csrf_token_is_refused() {
    let app = TestApp::spawn().await;
    let console = Console::login(&app).await;

    let forged = console
        .post("/console/region", &[("region_id", "cn-hangzhou")], false)
        .await;
    let genuine = console
        .post("/console/region", &[("region_id", "cn-hangzhou")], true)
        .await;

    assert_eq!(forged.status(), 403);
    assert!(forged.text().await.unwrap().contains("CSRF"));
    assert_eq!(genuine.status(), 200);
}

#[tokio::test]
async fn pages_carry_a_strict_content_security_policy() {
    let app = TestApp::spawn().await;
    let console = Console::login(&app).await;

    let page = console.get("/console/instances").await;
    let htmx = console.get("/static/vendor/htmx-2.0.11.min.js").await;

    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert!(htmx.headers()["cache-control"].to_str().unwrap().contains("immutable"));
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains(" onclick="),
        "inline script in the page"
    );
}

#[tokio::test]
async fn a_mixed_selection_asks_for_type_and_content_per_os() {
    let app = TestApp::spawn().await;
    let linux = app.agent("local").await.instance_id().await;
    let activation = app.activation("local", 1).await;
    let body = serde_json::json!({
        "activation_id": activation.activation_id, "activation_code": activation.activation_code,
        "hostname": "win-1", "os_type": "windows", "os_name": "Windows Server 2022",
        "ip_addresses": ["10.0.0.9"], "agent_version": "0.1.0"
    });
    let registered: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/agent/v1/register", app.url))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let windows = registered["instance_id"].as_str().unwrap();
    let console = Console::login(&app).await;

    let dialog = console
        .get(&format!("/console/send?instance_ids={linux}&instance_ids={windows}"))
        .await
        .text()
        .await
        .unwrap();

    assert!(
        dialog.contains(r#"data-os="linux""#) && dialog.contains(r#"data-os="windows""#),
        "{dialog}"
    );
    assert!(dialog.contains(r#"name="type_linux" value="RunShellScript""#));
    assert!(dialog.contains(r#"name="type_windows" value="RunBatScript""#));
    assert!(
        !dialog.contains(r#"name="type_linux" value="RunBatScript""#),
        "a type Linux cannot run is offered"
    );
}

#[tokio::test]
async fn an_oversize_command_is_refused_next_to_the_content_field() {
    let app = TestApp::spawn().await;
    let id = app.agent("local").await.instance_id().await;
    let console = Console::login(&app).await;
    let content = "x".repeat(64 * 1024 + 1);

    let response = console
        .post(
            "/console/send",
            &[
                ("instance_ids", &id),
                ("type_linux", "RunShellScript"),
                ("content_linux", &content),
            ],
            true,
        )
        .await;

    assert_eq!(response.headers()["hx-retarget"], "#send-form");
    let html = response.text().await.unwrap();
    let error_at = html.find("the limit is 65536 bytes").expect("the limit is named");
    let field_at = html.find(r#"name="content_linux""#).unwrap();
    assert!(error_at > field_at, "the error follows the content field");
    assert_eq!(app.client.invocations("").await.unwrap().total, 0, "nothing was run");
}

#[tokio::test]
async fn an_admin_adds_a_viewer_who_can_look_but_not_run() {
    let app = TestApp::spawn().await;
    let id = app.agent("local").await.instance_id().await;
    let admin = Console::login(&app).await;

    let created = admin
        .post(
            "/console/users",
            &[
                ("username", "vic"),
                ("password", "vic-password-123"),
                ("role", "viewer"),
            ],
            true,
        )
        .await;
    let viewer = Console::login_as(&app, "vic", "vic-password-123").await;
    let look = viewer.get("/console/instances").await;
    let run = viewer
        .post(
            "/console/send",
            &[
                ("instance_ids", id.as_str()),
                ("type_linux", "RunShellScript"),
                ("content_linux", "true"),
            ],
            true,
        )
        .await;
    let users = viewer.get("/console/users").await;

    assert!(created.text().await.unwrap().contains("User vic created."));
    assert_eq!(look.status(), 200);
    assert_eq!(run.status(), 403);
    assert!(run.text().await.unwrap().contains("operator role"));
    assert_eq!(users.status(), 403);
    assert_eq!(app.client.invocations("").await.unwrap().total, 0);
}
