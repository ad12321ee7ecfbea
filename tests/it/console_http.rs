//! The console over plain HTTP: login, CSRF, security headers, the dialog's per-OS groups and
//! inline errors. (The browser tests in `console.rs` drive the same pages in Chromium.)

use crate::helpers::{Answer, Console, TestApp, form, register, register_body};
use reqwest::header::{COOKIE, LOCATION};
use reqwest::redirect::Policy;
use serde_json::json;

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
async fn the_session_cookie_is_http_only_and_same_site_strict() {
    let app = TestApp::spawn().await;

    let console = Console::login(&app).await;

    let set_cookie = &console.set_cookie;
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
}

#[tokio::test]
async fn a_state_change_without_the_csrf_token_is_refused() {
    let app = TestApp::spawn().await;
    let console = Console::login(&app).await;
    let body = form(&[("region_id", "cn-hangzhou")]);

    // What a forged cross-site form sends: the cookie and the form, but no token.
    let forged = console
        .http
        .post(format!("{}/console/region", console.url))
        .header(COOKIE, &console.cookie)
        .header("hx-request", "true")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone());
    let forged = Answer::of(forged).await.unwrap();
    let genuine = console.post_form("/console/region", body).await.unwrap();

    assert_eq!(forged.status, 403);
    assert!(forged.text.contains("CSRF"));
    assert_eq!(genuine.status, 200);
}

#[tokio::test]
async fn pages_carry_a_strict_content_security_policy() {
    let app = TestApp::spawn().await;
    let console = Console::login(&app).await;

    let page = console.get("/console/instances").await.unwrap();
    let htmx = console.get("/static/vendor/htmx-2.0.11.min.js").await.unwrap();

    let csp = page.headers["content-security-policy"].to_str().unwrap().to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert!(htmx.headers["cache-control"].to_str().unwrap().contains("immutable"));
    let html = page.text;
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
    let mut body = register_body(&activation, "win-1");
    body["os_type"] = json!("windows");
    body["os_name"] = json!("Windows Server 2022");
    let (windows, _) = register(&app, &body).await;
    let console = Console::login(&app).await;

    let dialog = console
        .get(&format!("/console/send?instance_ids={linux}&instance_ids={windows}"))
        .await
        .unwrap()
        .text;

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

    let body = form(&[
        ("instance_ids", &id),
        ("type_linux", "RunShellScript"),
        ("content_linux", &content),
    ]);

    let response = console.post_form("/console/send", body).await.unwrap();

    assert_eq!(response.headers["hx-retarget"], "#send-form");
    let html = response.text;
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

    let vic = form(&[
        ("username", "vic"),
        ("password", "vic-password-123"),
        ("role", "viewer"),
    ]);
    let run = form(&[
        ("instance_ids", id.as_str()),
        ("type_linux", "RunShellScript"),
        ("content_linux", "true"),
    ]);

    let created = admin.post_form("/console/users", vic).await.unwrap();
    let viewer = Console::login_as(&app, "vic", "vic-password-123").await;
    let look = viewer.get("/console/instances").await.unwrap();
    let run = viewer.post_form("/console/send", run).await.unwrap();
    let users = viewer.get("/console/users").await.unwrap();

    assert!(created.text.contains("User vic created."));
    assert_eq!(look.status, 200);
    assert_eq!(run.status, 403);
    assert!(run.text.contains("operator role"));
    assert_eq!(users.status, 403);
    assert_eq!(app.client.invocations("").await.unwrap().total, 0);
}

#[tokio::test]
async fn the_output_panel_of_a_big_run_pages_its_rows_and_counts_them_all() {
    let app = TestApp::spawn().await;
    let activation = app.activation("local", 205).await;
    let mut ids = Vec::new();
    for n in 0..205 {
        ids.push(
            register(&app, &register_body(&activation, &format!("quiet-{n:03}")))
                .await
                .0,
        );
    }
    ids.sort();
    // Offline instances: every result waits, Pending.
    let created = app
        .client
        .run(&fleetrun::protocol::api::RunCommandRequest::shell(ids.clone(), "true"))
        .await
        .unwrap();
    let console = Console::login(&app).await;
    let panel = |query: &str| format!("/console/invocations/{}/panel?{query}", created.invoke_id);
    let rows = |html: &str| html.matches("class=\"mono instance-link\"").count();

    let first = console.get(&panel("")).await.unwrap().text;
    let second = console.get(&panel("page=2")).await.unwrap().text;
    let pending = console.get(&panel("status=Pending&page=2")).await.unwrap().text;
    let failed = console.get(&panel("status=Failed")).await.unwrap().text;

    assert_eq!(rows(&first), 200);
    assert!(
        first.contains("205 instances") && first.contains("Pending 205"),
        "the counts cover all"
    );
    assert!(first.contains("Instances 1–200 of 205"), "{first}");
    assert!(
        first.contains(&format!(
            "{}/panel?instance_id={}&#38;page=2",
            created.invoke_id, ids[0]
        )),
        "{first}"
    );
    assert_eq!(rows(&second), 5);
    assert!(second.contains("Instances 201–205 of 205") && second.contains(&ids[204]));
    assert!(
        !second.contains(&format!("row-{}-{}\"", created.invoke_id, ids[0])),
        "page 2 starts after page 1"
    );
    assert_eq!(rows(&pending), 5, "the filter pages across all 205");
    assert_eq!(rows(&failed), 0);
    assert!(
        second.contains(&format!("/live?instance_id={}&#38;page=2", ids[0])),
        "the live socket redraws the rows of the page shown"
    );
}

#[tokio::test]
async fn a_panel_connecting_late_gets_every_row_of_its_page_redrawn() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "late", 3).await;
    let mut ids: Vec<String> = fleet.iter().map(|(_, id)| id.clone()).collect();
    ids.sort();
    // Everything ends before the panel's socket connects (as when a fast run beats the browser).
    let done = app
        .run_to_end(&fleetrun::protocol::api::RunCommandRequest::shell(
            ids.clone(),
            "echo hi",
        ))
        .await;
    let console = Console::login(&app).await;
    let url = format!(
        "{}/console/invocations/{}/live?instance_id={}&page=1",
        app.url.replacen("http", "ws", 1),
        done.invoke_id,
        ids[0]
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("cookie", console.cookie.parse().unwrap());
    request.headers_mut().insert("origin", app.url.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    let mut received = String::new();
    while let Some(Ok(message)) = socket.next().await {
        if let Ok(text) = message.into_text() {
            received.push_str(&text);
        }
    }

    for id in &ids {
        let row = format!("id=\"row-{}-{id}\"", done.invoke_id);
        let at = received
            .find(&row)
            .unwrap_or_else(|| panic!("no redraw of {id}'s row in {received}"));
        assert!(received[at..].contains("data-status=\"Success\""), "{received}");
    }
}
