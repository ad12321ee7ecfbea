//! Who may do what and who may be an agent: roles on every kind of route, the address limit of logins,
//! expired and revoked credentials, logout everywhere, agents confined to their own tasks,
//! TLS end to end, plaintext refused, body limits and slow clients.

use crate::helpers::{Console, PASSWORD, TestApp, register, register_body};
use fleetrun::client::{ApiClient, ApiFailure, Credentials};
use fleetrun::protocol::agent::{AgentMessage, Hello, Output, ServerMessage, TaskFinished, TaskStarted};
use fleetrun::protocol::api::RunCommandRequest;
use fleetrun::protocol::{CommandType, OsType, OutputStream, PROTOCOL_VERSION, ResultStatus, TaskEnd};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

async fn status_of(result: anyhow::Result<reqwest::Response>) -> u16 {
    result.unwrap().status().as_u16()
}

async fn user(app: &TestApp, name: &str, role: &str) -> ApiClient {
    let password = format!("{name}-password-long");
    let body = json!({"username": name, "password": password, "role": role});
    let created = app.client.raw(Method::POST, "/users", Some(&body)).await.unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    ApiClient::new(
        &app.url,
        Credentials::Basic {
            username: name.into(),
            password,
        },
    )
}

/// (method, path, body, status as viewer, as operator, as admin).
type RouteCase = (Method, &'static str, Option<serde_json::Value>, u16, u16, u16);

#[tokio::test]
async fn each_role_reaches_exactly_its_routes() {
    let app = TestApp::spawn().await;
    let viewer = user(&app, "vera", "viewer").await;
    let operator = user(&app, "otto", "operator").await;
    let run = json!({"instance_ids": ["i-aaaaaaaaaaaaaaaaaaaa"], "type": "RunShellScript", "command_content": "true"});
    let command = json!({"region_id": "local", "name": "n", "type": "RunShellScript", "command_content": "true"});
    let other_command = json!({"region_id": "local", "name": "m", "type": "RunShellScript", "command_content": "true"});
    let activation = json!({"region_id": "local", "instance_count_limit": 1});
    let new_user = json!({"username": "x", "password": "long-enough-password", "role": "viewer"});
    // (method, path, body, viewer, operator, admin): 403 means refused by role; any other
    // status means the role was allowed through (the rest is about the request itself).
    let table: Vec<RouteCase> = vec![
        (Method::GET, "/instances", None, 200, 200, 200),
        (Method::GET, "/regions", None, 200, 200, 200),
        (Method::GET, "/invocations", None, 200, 200, 200),
        (Method::GET, "/commands", None, 200, 200, 200),
        (Method::GET, "/quotas", None, 200, 200, 200),
        (Method::GET, "/tokens", None, 200, 200, 200),
        (Method::GET, "/access-keys", None, 200, 200, 200),
        (Method::POST, "/access-keys", Some(json!({})), 201, 201, 201),
        (Method::POST, "/invocations", Some(run), 403, 404, 404),
        (
            Method::POST,
            "/invocations/t-aaaaaaaaaaaaaaaaaaaa/stop",
            None,
            403,
            404,
            404,
        ),
        (Method::POST, "/commands", Some(command), 403, 201, 409),
        (Method::POST, "/commands", Some(other_command), 403, 201, 409),
        (Method::DELETE, "/commands/c-aaaaaaaaaaaaaaaaaaaa", None, 403, 404, 404),
        (Method::POST, "/activations", Some(activation), 403, 403, 201),
        (Method::GET, "/activations", None, 403, 403, 200),
        (Method::DELETE, "/instances/i-aaaaaaaaaaaaaaaaaaaa", None, 403, 403, 404),
        (Method::GET, "/audit", None, 403, 403, 200),
        (Method::GET, "/users", None, 403, 403, 200),
        (Method::POST, "/users", Some(new_user), 403, 403, 201),
        (Method::GET, "/settings", None, 403, 403, 200),
    ];

    for (method, path, body, as_viewer, as_operator, as_admin) in table {
        for (who, client, expected) in [
            ("viewer", &viewer, as_viewer),
            ("operator", &operator, as_operator),
            ("admin", &app.client, as_admin),
        ] {
            let status = status_of(client.raw(method.clone(), path, body.as_ref()).await).await;
            assert_eq!(status, expected, "{who} {method} {path}");
        }
    }
    let command = json!({"region_id": "local", "name": "n", "type": "RunShellScript", "command_content": "true"});
    let refused = viewer.raw(Method::POST, "/commands", Some(&command)).await.unwrap();
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap_or_default().contains("operator role"),
        "{body}"
    );
}

#[tokio::test]
async fn an_address_past_its_failure_limit_is_refused_with_a_time_to_wait_and_only_that_address() {
    let app = TestApp::spawn().await;
    let wrong = ApiClient::new(
        &app.url,
        Credentials::Basic {
            username: "admin".into(),
            password: "wrong".into(),
        },
    );

    for _ in 0..50 {
        let failure = wrong.instances("").await.unwrap_err();
        assert_eq!(failure.downcast_ref::<ApiFailure>().unwrap().status, 401);
    }
    let throttled = wrong.raw(Method::GET, "/instances", None).await.unwrap();
    let right_password_too = app.client.raw(Method::GET, "/instances", None).await.unwrap();
    let console = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/login", app.url))
        .form(&[("username", "admin"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let elsewhere = reqwest::Client::builder()
        .local_address("127.0.0.9".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let other_address = ApiClient::with_http(
        &app.url,
        Credentials::Basic {
            username: "admin".into(),
            password: PASSWORD.into(),
        },
        elsewhere,
    );

    assert_eq!(throttled.status(), 429);
    let retry_after: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((14 * 60..=15 * 60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = throttled.json().await.unwrap();
    assert_eq!(body["code"], "Throttling.Login");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("from your address") && message.contains("try again in"),
        "{body}"
    );
    assert_eq!(
        right_password_too.status(),
        429,
        "the address is refused, whatever the password"
    );
    assert_eq!(console.status(), 429, "the console refuses it too");
    assert!(console.headers().contains_key("retry-after"));
    let page = console.text().await.unwrap();
    assert!(
        page.contains("Too many failed logins from your address; try again in"),
        "{page}"
    );
    assert!(
        other_address.instances("").await.is_ok(),
        "another address logs in: only the guessing address is refused"
    );
}

#[tokio::test]
async fn expired_tokens_and_basic_auth_switched_off_are_refused() {
    let app = TestApp::spawn().await;
    let created = app.create("/tokens", &json!({"name": "ci"})).await;
    let token = ApiClient::new(&app.url, Credentials::Token(created["token"].as_str().unwrap().into()));
    let old: serde_json::Value = app
        .client
        .raw(
            Method::POST,
            "/tokens",
            Some(&json!({"name": "old", "expires_in_days": 1})),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Age the second token past its expiry, straight in the database file.
    let db = sqlx::SqlitePool::connect(&format!("sqlite:{}", app.data.path().join("fleetrun.db").display()))
        .await
        .unwrap();
    sqlx::query("UPDATE api_tokens SET expires_at = 1 WHERE id = $1")
        .bind(old["token_id"].as_str())
        .execute(&db)
        .await
        .unwrap();
    let expired = ApiClient::new(&app.url, Credentials::Token(old["token"].as_str().unwrap().into()));

    let off = token
        .raw(Method::PATCH, "/settings", Some(&json!({"basic_auth_enabled": false})))
        .await
        .unwrap();
    let basic = app.client.raw(Method::GET, "/instances", None).await.unwrap();

    assert_eq!(
        expired.raw(Method::GET, "/instances", None).await.unwrap().status(),
        401
    );
    assert_eq!(off.status(), 200);
    assert_eq!(basic.status(), 401);
    let body: serde_json::Value = basic.json().await.unwrap();
    assert_eq!(body["code"], "BasicAuthDisabled");
    assert_eq!(
        token.raw(Method::GET, "/instances", None).await.unwrap().status(),
        200,
        "tokens still work"
    );
}

#[tokio::test]
async fn a_password_change_ends_every_session_of_the_user() {
    let app = TestApp::spawn().await;
    let console = Console::login(&app).await;
    let page = || async { console.get("/console/instances").await.unwrap().status };
    assert_eq!(page().await, 200);

    let body = json!({"password": "a-brand-new-password"});
    let changed = app
        .client
        .raw(Method::PATCH, "/users/admin", Some(&body))
        .await
        .unwrap();

    assert_eq!(changed.status(), 200);
    assert_eq!(page().await, 303, "the old session now redirects to the login page");
    let old = app.client.raw(Method::GET, "/instances", None).await.unwrap();
    assert_eq!(old.status(), 401, "the old password no longer works");
}

#[tokio::test]
async fn an_agent_cannot_report_on_another_instances_task() {
    let app = TestApp::spawn_with(&["--delivery-window-secs", "60"]).await;
    let activation = app.activation("local", 2).await;
    let (a, a_secret) = register(&app, &register_body(&activation, "a")).await;
    let (b, _) = register(&app, &register_body(&activation, "b")).await;
    let created = app
        .client
        .run(&RunCommandRequest::shell(vec![b.clone()], "true"))
        .await
        .unwrap();
    let url = format!("{}/agent/v1/connect", app.url.replacen("http", "ws", 1));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {a}:{a_secret}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        protocol_versions: Vec::new(),
        agent_version: "hand-written".into(),
        hostname: "a".into(),
        os_type: OsType::Linux,
        os_name: "test".into(),
        ip_addresses: vec![],
        supported_command_types: vec![CommandType::RunShellScript],
        held_tasks: vec![],
        boot_id: None,
    };
    let send = |m: AgentMessage| Message::Text(m.encode().into());
    socket.send(send(hello.into())).await.unwrap();
    let task = created.invoke_id.clone();

    socket
        .send(send(TaskStarted { task: task.clone() }.into()))
        .await
        .unwrap();
    let output = Output {
        task: task.clone(),
        seq: 0,
        stream: OutputStream::Stdout,
        data: "forged".into(),
    };
    socket.send(send(output.into())).await.unwrap();
    let end = TaskFinished {
        task: task.clone(),
        chunks: 1,
        exit_code: Some(0),
        end: TaskEnd::Exited,
    };
    socket.send(send(end.into())).await.unwrap();
    // The server refuses by telling the agent to forget the task (and leaves B's result alone).
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(frame)) = socket.next().await {
            if let Message::Text(text) = frame {
                if let Ok(ServerMessage::Ack(ack)) = ServerMessage::decode(&text) {
                    if ack.task == task && ack.finished {
                        return true;
                    }
                }
            }
        }
        false
    })
    .await;

    assert_eq!(refused, Ok(true));
    let inv = app.client.invocation(&created.invoke_id).await.unwrap();
    let result = &inv.results.unwrap()[0];
    assert_eq!(result.instance_id, b);
    assert_eq!(result.invocation_status, ResultStatus::Pending);
    assert_eq!(result.output, "");
}

#[tokio::test]
async fn tls_end_to_end_with_the_agent_trusting_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, ca_path) = crate::helpers::private_ca_certificate(dir.path());
    let app = TestApp::spawn_tls(&cert_path, &key_path, &ca_path).await;

    let agent = app.agent_trusting(&ca_path).await;
    agent.wait_online(&app).await;
    let inv = app
        .run_to_end(&RunCommandRequest::shell(
            vec![agent.instance_id().await],
            "echo over tls",
        ))
        .await;
    let untrusted = reqwest::Client::new().get(format!("{}/healthz", app.url)).send().await;

    assert!(app.url.starts_with("https://"));
    assert_eq!(inv.results.unwrap()[0].output, "over tls\n");
    assert!(untrusted.is_err(), "a client without the CA must not connect");
    let page = app.client.raw(Method::GET, "/instances", None).await.unwrap();
    assert!(page.headers().contains_key("strict-transport-security"));
}

#[tokio::test]
async fn an_agent_refuses_plaintext_to_another_machine() {
    let state = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetrun"))
        .args([
            "agent",
            "--server",
            "http://fleet.example:8080",
            "--activation-id",
            "act-x",
            "--activation-code",
            "y",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .await
        .unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing plain http://") && stderr.contains("--insecure-plaintext"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_oversize_body_is_refused_naming_the_limit() {
    let app = TestApp::spawn().await;
    let body =
        json!({"instance_ids": ["i-x"], "type": "RunShellScript", "command_content": "x".repeat(2 * 1024 * 1024)});

    let response = app.client.raw(Method::POST, "/invocations", Some(&body)).await.unwrap();

    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "RequestTooLarge");
    assert!(body["message"].as_str().unwrap().contains("1 MiB"), "{body}");
}
