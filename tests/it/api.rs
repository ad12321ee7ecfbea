//! Bad input and credentials get a 4xx with the documented code and a message that says what
//! to fix; tokens work as credentials.

use crate::helpers::TestApp;
use fleetrun::client::{ApiClient, ApiFailure, Credentials};
use fleetrun::protocol::CommandType;
use fleetrun::protocol::api::RunCommandRequest;
use reqwest::Method;
use serde_json::json;

async fn refusal(result: anyhow::Result<impl std::fmt::Debug>) -> (u16, String, String) {
    let error = result.expect_err("the request should be refused");
    let failure = error.downcast_ref::<ApiFailure>().expect("an API error answer");
    (
        failure.status.as_u16(),
        failure.body.code.clone(),
        failure.body.message.clone(),
    )
}

#[tokio::test]
async fn run_command_refusals_name_the_problem_and_the_fix() {
    let app = TestApp::spawn_with(&["--retained-command-quota", "1"]).await;
    let agent = app.agent("local").await;
    let id = agent.instance_id().await;

    let oversize = RunCommandRequest::shell(vec![id.clone()], "x".repeat(64 * 1024 + 1));
    let unknown = RunCommandRequest::shell(vec![id.clone(), "i-doesnotexist00000000".into()], "true");
    let mut bat = RunCommandRequest::shell(vec![id.clone()], "dir");
    bat.spec.command_type = CommandType::RunBatScript;
    let mut timeout = RunCommandRequest::shell(vec![id.clone()], "true");
    timeout.spec.timeout_secs = 0;
    let mut keep = RunCommandRequest::shell(vec![id.clone()], "true");
    keep.keep_command = true;
    keep.name = Some("kept".into());

    let (status, code, message) = refusal(app.client.run(&oversize).await).await;
    assert_eq!((status, code.as_str()), (400, "InvalidParameter.CommandContent"));
    assert!(
        message.contains("65537 bytes") && message.contains("limit is 65536"),
        "{message}"
    );

    let (status, code, message) = refusal(app.client.run(&unknown).await).await;
    assert_eq!((status, code.as_str()), (404, "InvalidInstance.NotFound"));
    assert!(
        message.contains("i-doesnotexist00000000") && message.contains("GET /api/v1/instances"),
        "{message}"
    );

    let (status, code, message) = refusal(app.client.run(&bat).await).await;
    assert_eq!((status, code.as_str()), (400, "InvalidParameter.Type"));
    assert!(message.contains("RunShellScript"), "{message}");

    let (status, code, _) = refusal(app.client.run(&timeout).await).await;
    assert_eq!((status, code.as_str()), (400, "InvalidParameter.Timeout"));

    app.client.run(&keep).await.unwrap();
    let (status, code, message) = refusal(app.client.run(&keep).await).await;
    assert_eq!((status, code.as_str()), (409, "InvalidCommandName.Duplicate"));
    assert!(message.contains("already has a retained command named"), "{message}");
    let mut another = keep.clone();
    another.name = Some("another name".into());
    let (status, code, message) = refusal(app.client.run(&another).await).await;
    assert_eq!((status, code.as_str()), (403, "QuotaExceeded.RetainedCommand"));
    assert!(
        message.contains("1 of 1") && message.contains("--retained-command-quota"),
        "{message}"
    );

    let invocations = app.client.invocations("").await.unwrap();
    assert_eq!(invocations.total, 1, "refused requests store nothing");
}

#[tokio::test]
async fn requests_without_valid_credentials_are_refused() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();

    let anonymous = http.get(format!("{}/api/v1/instances", app.url)).send().await.unwrap();
    let wrong = ApiClient::new(
        &app.url,
        Credentials::Basic {
            username: "admin".into(),
            password: "nope".into(),
        },
    );
    let bad_token = ApiClient::new(&app.url, Credentials::Token("frt_not-a-token".into()));
    let health = http.get(format!("{}/healthz", app.url)).send().await.unwrap();

    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = anonymous.json().await.unwrap();
    assert_eq!(body["code"], "Unauthorized");
    assert!(body["request_id"].as_str().unwrap().starts_with("req-"));
    assert_eq!(refusal(wrong.instances("").await).await.1, "InvalidCredentials");
    assert_eq!(refusal(bad_token.instances("").await).await.1, "InvalidToken");
    assert_eq!(health.status(), 200, "only /healthz answers without credentials");
}

#[tokio::test]
async fn an_api_token_authenticates_until_revoked() {
    let app = TestApp::spawn().await;
    let created = app.create("/tokens", &json!({"name": "ci"})).await;
    let token = created["token"].as_str().unwrap().to_string();
    let with_token = ApiClient::new(&app.url, Credentials::Token(token));

    let before = with_token.instances("").await;
    let path = format!("/tokens/{}", created["token_id"].as_str().unwrap());
    let revoked = app.client.raw(Method::DELETE, &path, None).await.unwrap();
    let after = with_token.instances("").await;

    assert!(before.is_ok());
    assert_eq!(revoked.status(), 204);
    assert_eq!(refusal(after).await.0, 401);
}

#[tokio::test]
async fn unknown_fields_and_bad_json_are_refused_with_the_field_named() {
    let app = TestApp::spawn().await;
    let body = json!({"instance_ids": ["i-x"], "type": "RunShellScript", "command_content": "true", "timout_secs": 5});

    let typo = app.client.raw(Method::POST, "/invocations", Some(&body)).await.unwrap();
    let status = typo.status();
    let typo: serde_json::Value = typo.json().await.unwrap();

    assert_eq!(status, 400);
    assert_eq!(typo["code"], "InvalidParameter.Body");
    assert!(typo["message"].as_str().unwrap().contains("timout_secs"), "{typo}");
}

#[tokio::test]
async fn the_live_stream_replays_stored_output_then_ends_with_done() {
    let app = TestApp::spawn().await;
    let agent = app.agent("local").await;
    let id = agent.instance_id().await;
    let inv = app
        .run_to_end(&RunCommandRequest::shell(vec![id.clone()], "echo one; echo two >&2"))
        .await;

    let mut events = Vec::new();
    app.client
        .stream(&inv.invoke_id, None, |e| events.push(e.clone()))
        .await
        .unwrap();

    let text: String = events
        .iter()
        .filter_map(|e| match e {
            fleetrun::protocol::api::StreamEvent::Output { data, .. } => {
                Some(String::from_utf8_lossy(data).into_owned())
            }
            _ => None,
        })
        .collect();
    assert!(text.contains("one\n") && text.contains("two\n"), "{text:?}");
    assert!(matches!(
        events.last(),
        Some(fleetrun::protocol::api::StreamEvent::Done { .. })
    ));
}

#[tokio::test]
async fn the_audit_log_records_who_did_what_from_where() {
    let app = TestApp::spawn().await;
    let agent = app.agent("local").await;
    let id = agent.instance_id().await;
    let bad = ApiClient::new(
        &app.url,
        Credentials::Basic {
            username: "admin".into(),
            password: "nope".into(),
        },
    );
    let _ = bad.instances("").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = [("username", "admin"), ("password", "wrong")];
    http.post(format!("{}/login", app.url))
        .form(&form)
        .send()
        .await
        .unwrap();
    let created = app
        .client
        .run(&RunCommandRequest::shell(vec![id.clone()], "sleep 5"))
        .await
        .unwrap();
    app.client.stop(&created.invoke_id, None).await.unwrap();
    let token: serde_json::Value = app
        .client
        .raw(Method::POST, "/tokens", Some(&json!({"name": "t"})))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    app.client
        .raw(
            Method::DELETE,
            &format!("/tokens/{}", token["token_id"].as_str().unwrap()),
            None,
        )
        .await
        .unwrap();
    app.client
        .raw(Method::DELETE, &format!("/instances/{id}"), None)
        .await
        .unwrap();

    let audit: serde_json::Value = app
        .client
        .raw(Method::GET, "/audit?page_size=100", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let entries = audit["entries"].as_array().unwrap();
    let has = |action: &str, target: &str| {
        entries.iter().any(|e| {
            e["action"] == action && e["target"].as_str().unwrap().contains(target) && e["source_ip"] == "127.0.0.1"
        })
    };
    for (action, target) in [
        ("CreateActivation", "act-"),
        ("RegisterInstance", id.as_str()),
        ("LoginFailed", "console"),
        ("RunCommand", created.invoke_id.as_str()),
        ("StopInvocation", created.invoke_id.as_str()),
        ("CreateToken", "tok-"),
        ("RevokeToken", "tok-"),
        ("DeregisterInstance", id.as_str()),
    ] {
        assert!(has(action, target), "no {action} on {target} in {entries:?}");
    }
    let filtered: serde_json::Value = app
        .client
        .raw(Method::GET, "/audit?action=RunCommand&user=admin", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(filtered["total"], 1);
}

#[tokio::test]
async fn invocations_page_by_next_token_as_by_page_number() {
    let app = TestApp::spawn().await;
    let activation = app.activation("local", 1).await;
    let (id, _) = crate::helpers::register(&app, &crate::helpers::register_body(&activation, "quiet")).await;
    // Offline: each stays Pending, which is all a listing needs.
    for n in 0..5 {
        app.client
            .run(&RunCommandRequest::shell(vec![id.clone()], format!("echo {n}")))
            .await
            .unwrap();
    }
    let all = app.client.invocations("page_size=100").await.unwrap();
    assert_eq!(all.total, 5);
    assert_eq!(all.next_token, None, "one page holds them all");

    let mut followed = Vec::new();
    let mut query = "page_size=2".to_string();
    loop {
        let page = app.client.invocations(&query).await.unwrap();
        assert_eq!(page.total, 5, "the total counts every match, whatever the page");
        followed.extend(page.invocations.into_iter().map(|i| i.invoke_id));
        match page.next_token {
            Some(token) => query = format!("page_size=2&next_token={token}"),
            None => break,
        }
    }
    let expected: Vec<String> = all.invocations.into_iter().map(|i| i.invoke_id).collect();
    assert_eq!(followed, expected, "three pages, newest first, none twice");

    let (status, code, message) = refusal(app.client.invocations("next_token=yesterday").await).await;
    assert_eq!((status, code.as_str()), (400, "InvalidParameter.NextToken"));
    assert!(message.contains("previous"), "{message}");
    let token = app.client.invocations("page_size=1").await.unwrap().next_token.unwrap();
    let (status, code, _) = refusal(app.client.invocations(&format!("page=2&next_token={token}")).await).await;
    assert_eq!((status, code.as_str()), (400, "InvalidParameter.NextToken"));
}
