//! Browser tests of what a new user hits in the first hour (issue 8): the picker offers only the
//! types the picked instances run, a character split across chunks shows whole, a Stop says it
//! was a stop, parameters sit beside the content, a retained name is unique, a fleet of 60 is
//! selected across pages, and the dialog behaves with the keyboard.

use crate::browser::{Browser, WAIT};
use crate::helpers::{TestApp, eventually};
use fantoccini::Locator;
use fantoccini::key::Key;
use fleetrun::protocol::CommandSpec;
use fleetrun::protocol::api::CreateCommandRequest;
use serde_json::json;

#[tokio::test]
async fn a_retained_powershell_command_offers_only_the_types_the_picked_instance_runs_and_is_never_run_as_shell() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 1).await;
    let id = &fleet[0].1;
    let command = json!(CreateCommandRequest {
        region_id: "local".into(),
        name: "hello-ps".into(),
        description: None,
        spec: CommandSpec {
            command_type: "RunPowerShellScript".parse().unwrap(),
            ..CommandSpec::shell("Write-Output hi")
        },
        content_encoding: Default::default(),
        no_unknown_fields: Default::default(),
    });
    let created = app
        .client
        .raw(reqwest::Method::POST, "/commands", Some(&command))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let browser = Browser::signed_in(&app).await;

    browser
        .client
        .goto(&format!("{}/console/commands", app.url))
        .await
        .unwrap();
    browser.click("#commands button.primary").await;
    browser.click(&format!("#instance-picker input[value={id}]")).await;
    let warning = browser
        .wait_text("#send-groups .warning-text", "cannot run PowerShell")
        .await;
    let offered = eventually(WAIT, "the types offered for the picked instance", || async {
        let radios = browser
            .client
            .find_all(Locator::Css("#send-groups input[type=radio][name=type_linux]"))
            .await
            .ok()?;
        let mut values = Vec::new();
        for radio in radios {
            values.push(radio.attr("value").await.ok()??);
        }
        Some(values)
    })
    .await;
    browser.click("#run-button").await;
    let refusal = browser
        .wait_text("#send-form .error-text", "cannot run RunPowerShellScript")
        .await;

    assert_eq!(offered, vec!["RunShellScript"], "PowerShell is not offered: {warning}");
    assert!(refusal.contains(id.as_str()), "{refusal}");
    let ran = app.client.invocations("").await.unwrap();
    assert_eq!(ran.total, 0, "nothing ran, and certainly not as Shell");
    browser.close().await;
}

#[tokio::test]
async fn a_character_split_across_two_chunks_shows_whole_in_the_live_output() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 1).await;
    let browser = Browser::signed_in(&app).await;

    // 中 is e4 b8 ad: its first byte, a pause (a separate chunk), then the rest.
    let content = r"printf 'a\344'; sleep 1; printf '\270\255b\n'";
    let invoke_id = browser.run_from_instance_page(&app, &fleet[0].1, content).await;
    browser.wait_text(&format!("#overall-{invoke_id}"), "Success").await;
    let output = browser.wait_text(&format!("#output-{invoke_id}"), "b").await;

    assert_eq!(output.trim(), "a中b");
    let stored = app.client.output(&invoke_id, &fleet[0].1).await.unwrap();
    assert_eq!(stored, "a中b\n".as_bytes());
    browser.close().await;
}

#[tokio::test]
async fn a_stop_is_reported_as_the_users_stop_not_as_an_agent_restart() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 1).await;
    let id = &fleet[0].1;
    let browser = Browser::signed_in(&app).await;

    let content = "trap 'echo got TERM; exit 5' TERM; sleep 30 & wait";
    let invoke_id = browser.run_from_instance_page(&app, id, content).await;
    browser.wait_text(&format!("#summary-{invoke_id}"), "Running 1").await;
    browser.click(&format!("#stop-{invoke_id}")).await;
    let row = format!("#row-{invoke_id}-{id}");
    browser.wait_text(&format!("{row} .badge"), "Terminated").await;
    let error = browser.wait_text(&format!("{row} .error"), "Stopped by admin").await;

    assert!(
        !error.contains("ExecutionInterrupted") && !error.contains("restarted"),
        "{error}"
    );
    let result = &app.client.invocation(&invoke_id).await.unwrap().results.unwrap()[0];
    assert_eq!(result.error_code, None);
    assert!(result.output.contains("got TERM"), "{:?}", result.output);
    browser.screenshot("stop-by-the-user").await;
    browser.close().await;
}

#[tokio::test]
async fn parameter_fields_sit_beside_the_content_and_a_missing_value_is_refused_by_name() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 1).await;
    let browser = Browser::signed_in(&app).await;

    browser.open_send_command(&app, &fleet[0].1).await;
    browser
        .type_into("#content-linux", "echo {{greeting}} from {{fleetrun::instance_name}}")
        .await;
    let field = "#parameters input[name=param_greeting]";
    eventually(WAIT, "the greeting field", || async {
        browser.is_shown(field).await.then_some(())
    })
    .await;
    browser.click("#run-button").await;
    let refusal = browser.wait_text("#send-form .error-text", "greeting").await;
    browser.type_into(field, "hello").await;
    browser.click("#run-button").await;
    let invoke_id = browser.panel_invoke_id().await;
    let output = browser.wait_text(&format!("#output-{invoke_id}"), "hello").await;

    assert!(refusal.contains("has no value"), "{refusal}");
    assert_eq!(
        output.trim(),
        "hello from web-01",
        "the built-in is filled without being asked for"
    );
    browser.close().await;
}

#[tokio::test]
async fn a_retained_name_is_unique_in_its_region_and_the_quota_shown_is_live() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 1).await;
    let browser = Browser::signed_in(&app).await;

    browser.open_send_command(&app, &fleet[0].1).await;
    let before = browser.wait_text("#retain-quota", "of 500").await;
    browser.type_into("#content-linux", "echo greet").await;
    browser.click("#retain").await;
    browser.type_into("#command-name", "greet").await;
    browser.click("#run-button").await;
    browser.panel_invoke_id().await;
    let after = browser.wait_text("#retain-quota", "1 of 500").await;
    browser.click("#run-button").await;
    let refusal = browser.wait_text("#send-form .error-text", "greet").await;

    assert!(before.starts_with("0 of 500"), "{before}");
    assert!(after.starts_with("1 of 500"), "{after}");
    assert!(refusal.contains("already has a retained command named"), "{refusal}");
    let commands = app.client.raw(reqwest::Method::GET, "/commands", None).await.unwrap();
    let commands: serde_json::Value = commands.json().await.unwrap();
    assert_eq!(commands["total"], 1, "{commands}");
    browser.close().await;
}

#[tokio::test]
async fn sixty_instances_are_selected_across_pages_and_one_run_reaches_all_of_them() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "node", 60).await;
    let browser = Browser::signed_in(&app).await;
    browser.client.set_window_size(800, 1000).await.unwrap();

    // Nothing ticked: Send Command opens the picker, sorted by name, with counts.
    browser.click("#send-command-open").await;
    browser.wait_text("#picker-count", "60 matching").await;
    let first = browser
        .wait_text("#instance-picker .picker-list label", "node-01")
        .await;
    browser.screenshot("picker-60-instances").await;
    browser.click("#modal [data-close-modal]").await;

    // The Instances page: select all matching, and the selection holds on page 2.
    browser.click("#instance-rows input[name=instance_ids]").await;
    browser.click("#select-matching").await;
    browser.wait_text("#selected-count", "60 selected").await;
    browser.screenshot("instances-800px").await;
    browser.click(".pager a").await;
    browser.wait_text(".pager", "Page 2 of 2").await;
    let ticked = eventually(WAIT, "page 2 to show its instances ticked", || async {
        let boxes = browser
            .client
            .find_all(Locator::Css("#instance-rows input[name=instance_ids]"))
            .await
            .ok()?;
        let mut ticked = 0;
        for b in &boxes {
            if b.is_selected().await.ok()? {
                ticked += 1;
            }
        }
        (boxes.len() == 10 && ticked == 10).then_some(ticked)
    })
    .await;
    browser.click("#send-command-open").await;
    browser.wait_text("#selected-summary", "60 selected").await;
    browser
        .type_into("#content-linux", "echo hi from {{fleetrun::instance_name}}")
        .await;
    browser.click("#run-button").await;
    let invoke_id = browser.panel_invoke_id().await;
    browser.wait_text(&format!("#summary-{invoke_id}"), "Success 60").await;

    assert!(first.starts_with("node-01"), "sorted by name: {first}");
    assert_eq!(ticked, 10);
    let inv = app.client.invocation(&invoke_id).await.unwrap();
    let ids: std::collections::BTreeSet<String> = fleet.iter().map(|(_, id)| id.clone()).collect();
    let reached: std::collections::BTreeSet<String> = inv.results.unwrap().into_iter().map(|r| r.instance_id).collect();
    assert_eq!(reached, ids, "one run reached all 60");
    browser.close().await;
}

#[tokio::test]
async fn the_dialog_returns_focus_asks_before_discarding_and_enter_in_timeout_does_not_run() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 1).await;
    let browser = Browser::signed_in(&app).await;
    browser
        .client
        .goto(&format!("{}/console/instances/{}", app.url, fleet[0].1))
        .await
        .unwrap();
    browser.click("#tab-commands").await;
    browser.click("#send-command").await;
    browser.wait_text("#send-title", "Send Command").await;
    browser
        .eval(
            "window.runs = 0; document.body.addEventListener('htmx:beforeRequest', function (e) { \
             if (e.detail.requestConfig.verb === 'post' && e.detail.requestConfig.path === '/console/send') window.runs++; });",
        )
        .await;

    // Enter in Timeout does not Run; the Run button does (once).
    browser.click("details.advanced summary").await;
    browser.type_into("#timeout", "abc").await;
    let timeout = browser.client.find(Locator::Css("#timeout")).await.unwrap();
    timeout.send_keys(&Key::Enter.to_string()).await.unwrap();
    browser.type_into("#content-linux", "echo typed").await;
    browser.click("#run-button").await;
    browser.wait_text("#send-form .error-text", "whole number").await;
    let runs = browser.eval("return window.runs;").await;

    // Esc in an edited editor: the first Esc leaves the editor, the next asks first.
    let editor = browser.client.find(Locator::Css("#content-linux")).await.unwrap();
    editor.send_keys(&Key::Escape.to_string()).await.unwrap();
    editor.send_keys(&Key::Escape.to_string()).await.unwrap();
    let question = browser.client.get_alert_text().await.unwrap();
    browser.client.dismiss_alert().await.unwrap();
    let still_open = browser.is_shown("#send-dialog").await;
    let editor = browser.client.find(Locator::Css("#content-linux")).await.unwrap();
    editor.send_keys(&Key::Escape.to_string()).await.unwrap();
    editor.send_keys(&Key::Escape.to_string()).await.unwrap();
    browser.client.accept_alert().await.unwrap();
    eventually(WAIT, "the dialog to close", || async {
        (!browser.is_shown("#send-dialog").await).then_some(())
    })
    .await;
    let focused = browser.client.active_element().await.unwrap().attr("id").await.unwrap();

    assert_eq!(runs, json!(1), "Enter in Timeout did not Run");
    assert_eq!(question, "Discard the command you typed?");
    assert!(still_open, "dismissing keeps the dialog and what was typed");
    assert_eq!(focused.as_deref(), Some("send-command"), "focus is back where it was");
    browser.close().await;
}
