//! Issue 14's targeting, with real agents: tags set at enrolment and through the API, runs
//! aimed at tags (resolved when the run starts and recorded), idempotent submission with
//! `client_token`, and dry runs that store and run nothing.

use crate::helpers::{AgentProcess, TestApp, agent_command, eventually};
use fleetrun::client::ApiFailure;
use fleetrun::protocol::api::{DryRunResponse, Invocation, InvocationCreated, RunCommandRequest};
use fleetrun::protocol::{PROTOCOL_VERSION, Tag};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// Enrols a real agent named `name` in `region` with `--tag` for each of `tags`, and waits
/// until it is online.
async fn tagged_agent(app: &TestApp, region: &str, name: &str, tags: &[&str]) -> (AgentProcess, String) {
    let activation = app.activation(region, 1).await;
    let state = tempfile::tempdir().unwrap();
    let mut command = agent_command(&app.url, Some(&activation), state.path());
    command.args(["--name", name]);
    for tag in tags {
        command.args(["--tag", tag]);
    }
    let agent = AgentProcess {
        child: command.spawn().expect("start fleetrun-agent"),
        state,
        protocol: PROTOCOL_VERSION,
    };
    agent.wait_online(app).await;
    let id = agent.instance_id().await;
    (agent, id)
}

/// `method path` with a JSON body as the admin: the status and the answer.
async fn call(app: &TestApp, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let response = app.client.raw(method, path, body).await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn instance_names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn result_ids(invocation: &Invocation) -> Vec<String> {
    let mut ids: Vec<String> = invocation
        .results
        .iter()
        .flatten()
        .map(|r| r.instance_id.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn an_agent_enrolled_with_tags_carries_them_and_the_instances_api_filters_by_them() {
    let app = TestApp::spawn().await;
    let (_web, web) = tagged_agent(&app, "local", "web", &["env=prod", "role=web"]).await;
    let (_db, _) = tagged_agent(&app, "local", "db", &["env=prod", "role=db"]).await;
    let (_bare, _) = tagged_agent(&app, "local", "bare", &[]).await;

    let shown = app.client.instance(&web).await.unwrap();
    let (_, prod) = call(&app, Method::GET, "/instances?tag=env=prod", None).await;
    let (_, any_role) = call(&app, Method::GET, "/instances?tag=role", None).await;
    let (_, both) = call(&app, Method::GET, "/instances?tag=env=prod&tag=role=db", None).await;
    let (status, bad) = call(&app, Method::GET, "/instances?tag=aliyun:x", None).await;
    let audit = app
        .client
        .raw(Method::GET, "/audit?action=RegisterInstance", None)
        .await
        .unwrap();
    let audit = audit.text().await.unwrap();

    assert_eq!(
        shown.tags.into_iter().collect::<Vec<_>>(),
        [("env".to_string(), "prod".to_string()), ("role".into(), "web".into())]
    );
    assert_eq!(instance_names(&prod), ["db", "web"]);
    assert_eq!(prod["total"], 2);
    assert_eq!(instance_names(&any_role), ["db", "web"]);
    assert_eq!(instance_names(&both), ["db"]);
    assert_eq!((status, bad["code"].as_str()), (400, Some("InvalidParameter.Tags")));
    assert!(
        audit.contains("tags env=prod, role=web"),
        "the enrolment's audit names its tags: {audit}"
    );
}

#[tokio::test]
async fn an_agent_with_a_tag_alibaba_refuses_is_not_enrolled_and_is_told_why() {
    let app = TestApp::spawn().await;
    let activation = app.activation("local", 1).await;
    let state = tempfile::tempdir().unwrap();

    let output = agent_command(&app.url, Some(&activation), state.path())
        .args(["--tag", "acs:team=ops"])
        .output()
        .await
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("acs:team") && stderr.contains("reserved"),
        "the refusal names the tag and the rule: {stderr}"
    );
    assert_eq!(app.client.instances("").await.unwrap().total, 0);
}

#[tokio::test]
async fn tags_set_through_the_api_replace_the_old_ones_and_bad_tags_are_refused_by_name() {
    let app = TestApp::spawn().await;
    let (_agent, id) = tagged_agent(&app, "local", "web", &["env=dev"]).await;
    let path = format!("/instances/{id}/tags");

    let (status, set) = call(
        &app,
        Method::PUT,
        &path,
        Some(&json!({"tags": [{"key": "env", "value": "prod"}, {"key": "team", "value": ""}]})),
    )
    .await;
    let too_many: Vec<Value> = (0..21).map(|n| json!({"key": format!("k{n}"), "value": "v"})).collect();
    let (many_status, many) = call(&app, Method::PUT, &path, Some(&json!({ "tags": too_many }))).await;
    let (url_status, url) = call(
        &app,
        Method::PUT,
        &path,
        Some(&json!({"tags": [{"key": "site", "value": "https://example.com"}]})),
    )
    .await;
    let (_, audit) = call(&app, Method::GET, "/audit?action=SetInstanceTags", None).await;

    assert_eq!(status, 200, "{set}");
    assert_eq!(set["tags"], json!({"env": "prod", "team": ""}));
    assert_eq!(
        (many_status, many["code"].as_str()),
        (400, Some("InvalidParameter.Tags"))
    );
    assert!(many["message"].as_str().unwrap().contains("at most 20"), "{many}");
    assert_eq!(url_status, 400);
    assert!(url["message"].as_str().unwrap().contains("\"site\""), "{url}");
    assert_eq!(
        app.client.instance(&id).await.unwrap().tags.len(),
        2,
        "a refusal changes nothing"
    );
    assert_eq!(audit["entries"][0]["target"], id.as_str());
    assert_eq!(audit["entries"][0]["detail"], "env=prod, team=");
}

#[tokio::test]
async fn a_run_by_tags_reaches_exactly_the_tagged_instances_of_its_region_and_records_them() {
    let app = TestApp::spawn().await;
    let (_a, web) = tagged_agent(&app, "local", "web", &["env=prod", "role=web"]).await;
    let (_b, db) = tagged_agent(&app, "local", "db", &["env=prod", "role=db"]).await;
    let (_c, _dev) = tagged_agent(&app, "local", "dev", &["env=dev", "role=web"]).await;
    let (_d, _far) = tagged_agent(&app, "far", "far", &["env=prod", "role=web"]).await;
    let selector = vec![Tag::new("env", "prod"), Tag::new("role", "web")];

    let mut req = RunCommandRequest::shell(vec![db.clone()], "echo {{fleetrun::instance_name}}");
    req.spec.enable_parameter = true;
    req.region_id = Some("local".into());
    req.tags = selector.clone();
    let done = app.run_to_end(&req).await;

    let mut expected = vec![web.clone(), db.clone()];
    expected.sort();
    assert_eq!(
        result_ids(&done),
        expected,
        "the tagged instance of local and the one named, each once"
    );
    for result in done.results.iter().flatten() {
        let name = if result.instance_id == web { "web" } else { "db" };
        assert_eq!(result.output, format!("{name}\n"));
    }
    assert_eq!(done.tags, selector, "the record keeps the selector");
    assert_eq!(done.region_id.as_deref(), Some("local"));
    let (_, listed) = call(&app, Method::GET, "/invocations", None).await;
    assert_eq!(
        listed["invocations"][0]["tags"],
        json!([{"key": "env", "value": "prod"}, {"key": "role", "value": "web"}])
    );

    // Tags are resolved when a run starts: a tag added later is in the next run.
    app.client
        .set_tags(&db, vec![Tag::new("env", "prod"), Tag::new("role", "web")])
        .await
        .unwrap();
    let mut by_tags_only = RunCommandRequest::shell(vec![], "true");
    by_tags_only.region_id = Some("local".into());
    by_tags_only.tags = selector;
    let next = app.run_to_end(&by_tags_only).await;
    assert_eq!(result_ids(&next), expected);
}

#[tokio::test]
async fn a_run_by_tags_that_match_nothing_or_without_a_region_is_refused_saying_why() {
    let app = TestApp::spawn().await;
    let (_agent, _) = tagged_agent(&app, "local", "web", &["env=prod"]).await;
    let run = |tags: Value, region: Option<&str>| {
        let mut body = json!({"type": "RunShellScript", "command_content": "true", "tags": tags});
        if let Some(region) = region {
            body["region_id"] = json!(region);
        }
        body
    };

    let (none_status, none) = call(
        &app,
        Method::POST,
        "/invocations",
        Some(&run(json!([{"key": "env", "value": "staging"}]), Some("local"))),
    )
    .await;
    let (region_status, region) = call(
        &app,
        Method::POST,
        "/invocations",
        Some(&run(json!([{"key": "env", "value": "prod"}]), None)),
    )
    .await;
    let (empty_status, empty) = call(&app, Method::POST, "/invocations", Some(&run(json!([]), Some("local")))).await;

    assert_eq!(
        (none_status, none["code"].as_str()),
        (400, Some("InvalidParameter.Tags"))
    );
    assert!(
        none["message"]
            .as_str()
            .unwrap()
            .contains("no instance of region local has all the tags env=staging"),
        "{none}"
    );
    assert_eq!(
        (region_status, region["code"].as_str()),
        (400, Some("InvalidParameter.RegionId"))
    );
    assert_eq!(
        (empty_status, empty["code"].as_str()),
        (400, Some("InvalidParameter.InstanceIds"))
    );
    assert_eq!(app.client.invocations("").await.unwrap().total, 0);
}

/// Lines in a file the command appends to on the (shared) host: how often it really ran.
fn runs_of(marker: &std::path::Path) -> usize {
    std::fs::read_to_string(marker).map(|t| t.lines().count()).unwrap_or(0)
}

#[tokio::test]
async fn the_same_client_token_twice_gives_one_invocation_and_runs_once() {
    let app = TestApp::spawn().await;
    let (_agent, id) = tagged_agent(&app, "local", "web", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let mut req = RunCommandRequest::shell(vec![id.clone()], format!("echo x >> {}", marker.display()));
    req.client_token = Some("deploy-2024-06-01".into());

    let first = app
        .client
        .raw(Method::POST, "/invocations", Some(&json!(req)))
        .await
        .unwrap();
    let first_status = first.status().as_u16();
    let first: InvocationCreated = first.json().await.unwrap();
    app.wait_done(&first.invoke_id, Duration::from_secs(30)).await;
    let again = app
        .client
        .raw(Method::POST, "/invocations", Some(&json!(req)))
        .await
        .unwrap();
    let again_status = again.status().as_u16();
    let again: InvocationCreated = again.json().await.unwrap();
    let mut changed = req.clone();
    changed.spec.content = "echo other".into();
    let reused = app.client.run(&changed).await;
    let (_, audit) = call(&app, Method::GET, "/audit?action=RunCommand", None).await;

    assert_eq!((first_status, again_status), (201, 200));
    assert_eq!(again.invoke_id, first.invoke_id);
    assert!(again.replayed && !first.replayed);
    assert_eq!(app.client.invocations("").await.unwrap().total, 1);
    assert_eq!(runs_of(&marker), 1, "the script ran once");
    let failure = reused.unwrap_err();
    let failure = failure.downcast_ref::<ApiFailure>().unwrap();
    assert_eq!(
        (failure.status.as_u16(), failure.body.code.as_str()),
        (409, "IdempotentParameterMismatch")
    );
    assert!(
        failure.body.message.contains(&first.invoke_id),
        "{}",
        failure.body.message
    );
    let details: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert!(details[0].contains("seen before"), "the replay is audited: {details:?}");
}

#[tokio::test]
async fn the_same_client_token_sent_eight_times_at_once_makes_one_invocation() {
    let app = TestApp::spawn().await;
    let (_agent, id) = tagged_agent(&app, "local", "web", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let mut req = RunCommandRequest::shell(vec![id.clone()], format!("echo x >> {}", marker.display()));
    req.client_token = Some("at-once".into());

    let answers = futures_util::future::join_all((0..8).map(|_| app.client.run(&req))).await;
    let answers: Vec<InvocationCreated> = answers.into_iter().map(Result::unwrap).collect();
    app.wait_done(&answers[0].invoke_id, Duration::from_secs(30)).await;

    assert!(
        answers.iter().all(|a| a.invoke_id == answers[0].invoke_id),
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| !a.replayed).count(),
        1,
        "one made it, seven were answered with it"
    );
    assert_eq!(app.client.invocations("").await.unwrap().total, 1);
    assert_eq!(runs_of(&marker), 1);
}

#[tokio::test]
async fn a_dry_run_stores_and_runs_nothing_and_says_which_instances_would_not_run() {
    let app = TestApp::spawn().await;
    let (_up, up) = tagged_agent(&app, "local", "up", &["env=prod"]).await;
    let (mut down_agent, down) = tagged_agent(&app, "local", "down", &["env=prod"]).await;
    down_agent.kill9().await;
    eventually(Duration::from_secs(10), "the killed agent to be offline", || async {
        let instance = app.client.instance(&down).await.ok()?;
        (!instance.agent.online).then_some(())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let mut req = RunCommandRequest::shell(vec![], format!("echo x >> {}", marker.display()));
    req.region_id = Some("local".into());
    req.tags = vec![Tag::new("env", "prod")];
    req.keep_command = true;
    req.name = Some("kept".into());

    let answer: DryRunResponse = app.client.dry_run(&req).await.unwrap();

    assert!(answer.dry_run);
    assert_eq!(answer.would_run, 1);
    let by_id = |id: &str| answer.instances.iter().find(|i| i.instance_id == id).unwrap().clone();
    assert!(by_id(&up).would_run && by_id(&up).reason.is_none());
    let waiting = by_id(&down);
    assert!(!waiting.would_run);
    assert_eq!(
        waiting.error_code.map(|c| c.to_string()).as_deref(),
        Some("ClientNotRunning")
    );
    assert!(waiting.reason.unwrap().contains("not connected"));
    assert_eq!(
        app.client.invocations("").await.unwrap().total,
        0,
        "no invocation stored"
    );
    let (_, commands) = call(&app, Method::GET, "/commands", None).await;
    assert_eq!(commands["total"], 0, "no command retained");
    assert_eq!(runs_of(&marker), 0, "nothing ran");
}

#[tokio::test]
async fn a_dry_run_refuses_what_a_run_would_refuse() {
    let app = TestApp::spawn_with(&["--retained-command-quota", "1"]).await;
    let (_agent, id) = tagged_agent(&app, "local", "web", &[]).await;
    let mut keep = RunCommandRequest::shell(vec![id.clone()], "true");
    (keep.keep_command, keep.name) = (true, Some("first".into()));
    app.run_to_end(&keep).await;
    let refusal = |result: anyhow::Result<DryRunResponse>| {
        let error = result.unwrap_err();
        let failure = error.downcast_ref::<ApiFailure>().unwrap();
        (failure.status.as_u16(), failure.body.code.clone())
    };

    let unknown = RunCommandRequest::shell(vec!["i-doesnotexist00000000".into()], "true");
    let mut quota = keep.clone();
    quota.name = Some("second".into());
    let mut parameters = RunCommandRequest::shell(vec![id.clone()], "echo {{who}}");
    parameters.spec.enable_parameter = true;
    let mut period = RunCommandRequest::shell(vec![id.clone()], "true");
    period.repeat_mode = Some(fleetrun::protocol::RepeatMode::Period);

    assert_eq!(
        refusal(app.client.dry_run(&unknown).await),
        (404, "InvalidInstance.NotFound".into())
    );
    assert_eq!(
        refusal(app.client.dry_run(&keep).await),
        (409, "InvalidCommandName.Duplicate".into())
    );
    assert_eq!(refusal(app.client.dry_run(&quota).await).0, 403);
    assert_eq!(
        refusal(app.client.dry_run(&parameters).await),
        (400, "InvalidParameter.Parameters".into())
    );
    let (status, answer) = call(&app, Method::POST, "/invocations", Some(&json!(period))).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("InvalidParameter.Frequency")),
        "a Period without a frequency: {answer}"
    );
    assert_eq!(app.client.invocations("").await.unwrap().total, 1, "only the first run");
}

#[tokio::test]
async fn the_console_filters_by_tag_edits_tags_adds_them_to_a_selection_and_runs_by_tags() {
    use crate::browser::Browser;
    use fantoccini::Locator;
    let app = TestApp::spawn().await;
    let (_web, web) = tagged_agent(&app, "local", "web", &["env=prod"]).await;
    let (_db, db) = tagged_agent(&app, "local", "db", &["env=dev"]).await;
    let browser = Browser::signed_in(&app).await;

    // The Instances page's tag filter.
    browser.type_into("#tag-filter", "env=prod\n").await;
    eventually(Duration::from_secs(30), "the filter to leave web alone", || async {
        let rows = browser.client.find(Locator::Css("#instance-rows")).await.ok()?;
        let text = rows.text().await.ok()?;
        (text.contains(&web) && !text.contains(&db)).then_some(())
    })
    .await;
    assert!(
        browser
            .client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains("tag=env%3Dprod")
    );

    // The instance page's tag editor.
    browser
        .client
        .goto(&format!("{}/console/instances/{db}", app.url))
        .await
        .unwrap();
    browser.click("#edit-tags summary").await;
    browser.type_into("#tags-editor", "env=prod\nrole=db").await;
    browser.click("#save-tags").await;
    browser.wait_text("#instance-tags", "role=db").await;
    let tags = app.client.instance(&db).await.unwrap().tags;
    assert_eq!(tags.get("env").map(String::as_str), Some("prod"));
    assert_eq!(tags.get("role").map(String::as_str), Some("db"));

    // The batch bar's Add Tags, on a selection of both.
    browser
        .client
        .goto(&format!("{}/console/instances", app.url))
        .await
        .unwrap();
    browser.click(&format!("#instance-rows input[value={web}]")).await;
    browser.click(&format!("#instance-rows input[value={db}]")).await;
    browser.click("#more-button").await;
    browser.click("#add-tags-batch").await;
    browser.type_into("#add-tags-input", "team=ops").await;
    browser.click("#add-tags-submit").await;
    browser.wait_text("#toasts", "Tags added to 2 instances.").await;
    for id in [&web, &db] {
        let tags = app.client.instance(id).await.unwrap().tags;
        assert_eq!(tags.get("team").map(String::as_str), Some("ops"), "{id}: {tags:?}");
    }

    // Send Command by tags, in the region picked in the top bar.
    browser
        .client
        .find(Locator::Id("region"))
        .await
        .unwrap()
        .select_by_value("local")
        .await
        .unwrap();
    browser
        .wait_text("#region-picker-label, .page-head", "Region local")
        .await;
    browser.click("#send-command-open").await;
    browser.type_into("#select-tags", "env=prod, team=ops").await;
    browser.wait_text("#tag-note", "2 instances have all these tags").await;
    browser.type_into("#content-linux", "echo tagged").await;
    browser.click("#dry-run-button").await;
    browser
        .wait_text("#dry-run-result", "2 of 2 instances would run now")
        .await;
    assert_eq!(
        app.client.invocations("").await.unwrap().total,
        0,
        "a dry run records nothing"
    );
    browser.click("#run-button").await;
    let invoke_id = browser.panel_invoke_id().await;
    let done = app.wait_done(&invoke_id, Duration::from_secs(30)).await;
    browser
        .client
        .goto(&format!("{}/console/invocations/{invoke_id}", app.url))
        .await
        .unwrap();
    browser.wait_text("#tag-selector", "env=prod").await;
    browser.close().await;

    let mut expected = vec![web.clone(), db.clone()];
    expected.sort();
    assert_eq!(result_ids(&done), expected);
    assert_eq!(done.tags, vec![Tag::new("env", "prod"), Tag::new("team", "ops")]);
    assert_eq!(done.region_id.as_deref(), Some("local"));
}
