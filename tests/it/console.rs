//! Browser tests of the four things people do: Send Command to one instance, to many, view
//! each instance's output, Stop. Headless Chromium against a real server and real agents
//! (see `browser.rs`); screenshots go to `target/screenshots/` for review.

use crate::browser::Browser;
use crate::helpers::{TestApp, live_processes, unique_seconds};
use fantoccini::Locator;

#[tokio::test]
async fn picking_a_region_lists_only_its_instances() {
    let app = TestApp::spawn().await;
    let hangzhou = app.fleet("cn-hangzhou", "web", 1).await;
    let frankfurt = app.fleet("eu-central-1", "web", 1).await;
    let browser = Browser::start().await;

    browser.login(&app).await;
    let select = browser.client.find(Locator::Id("region")).await.unwrap();
    select.select_by_value("eu-central-1").await.unwrap();
    let listed = browser.wait_text(".page-head .muted", "Region eu-central-1").await;

    assert!(listed.contains("1 instances"), "{listed}");
    let table = browser.wait_text("#instance-rows", &frankfurt[0].1).await;
    assert!(
        !table.contains(&hangzhou[0].1),
        "another region's instance is listed: {table}"
    );
    browser.close().await;
}

#[tokio::test]
async fn send_command_from_an_instance_page_shows_its_output_and_success() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 1).await;
    let id = &fleet[0].1;
    let hostname = app.client.instance(id).await.unwrap().hostname;
    let browser = Browser::signed_in(&app).await;

    browser.open_send_command(&app, id).await;
    browser.type_into("#content-linux", "echo hello-$(hostname)").await;
    let shell = browser
        .client
        .find(Locator::Css("input[name=type_linux][value=RunShellScript]"))
        .await
        .unwrap();
    assert!(shell.is_selected().await.unwrap(), "Shell is the default type on Linux");
    browser.click("#run-button").await;
    let invoke_id = browser.panel_invoke_id().await;
    let row = format!("#row-{invoke_id}-{id}");
    browser.wait_text(&format!("{row} .badge"), "Success").await;

    let output = browser
        .wait_text(&format!("#output-{invoke_id}"), &format!("hello-{}", hostname.trim()))
        .await;
    assert_eq!(output.trim(), format!("hello-{}", hostname.trim()));
    assert_eq!(browser.wait_text(&format!("{row} .exit-code"), "0").await, "0");
    browser.screenshot("send-command-one-instance").await;
    browser.close().await;
}

#[tokio::test]
async fn one_command_to_three_selected_instances_shows_each_output() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 3).await;
    let browser = Browser::signed_in(&app).await;

    browser.send_command_to_selection(&fleet).await;
    browser
        .type_into("#content-linux", "echo I am {{fleetrun::instance_id}}")
        .await;
    browser.click("#run-button").await;
    let invoke_id = browser.panel_invoke_id().await;
    browser.wait_text(&format!("#summary-{invoke_id}"), "Success 3").await;

    for (_, id) in &fleet {
        browser.click(&format!("#row-{invoke_id}-{id} a.instance-link")).await;
        browser.wait_text(&format!("#selected-{invoke_id}"), id).await;
        let output = browser.wait_text(&format!("#output-{invoke_id}"), "I am").await;
        assert_eq!(output.trim(), format!("I am {id}"));
    }
    browser.screenshot("send-command-three-instances").await;
    browser.close().await;
}

#[tokio::test]
async fn stop_terminates_a_command_on_two_instances() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 2).await;
    let seconds = unique_seconds(600);
    let browser = Browser::signed_in(&app).await;

    browser.send_command_to_selection(&fleet).await;
    browser.type_into("#content-linux", &format!("sleep {seconds}")).await;
    browser.click("#run-button").await;
    let invoke_id = browser.panel_invoke_id().await;
    browser.wait_text(&format!("#summary-{invoke_id}"), "Running 2").await;
    browser.click(&format!("#stop-{invoke_id}")).await;

    for (_, id) in &fleet {
        browser
            .wait_text(&format!("#row-{invoke_id}-{id} .badge"), "Terminated")
            .await;
    }
    browser.wait_text(&format!("#overall-{invoke_id}"), "Stopped").await;
    assert!(live_processes(&seconds).is_empty(), "a sleep survived the stop");
    browser.screenshot("stop-two-instances").await;
    browser.close().await;
}

#[tokio::test]
async fn a_retained_command_is_listed_and_runs_from_the_commands_page() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 1).await;
    let id = &fleet[0].1;
    let browser = Browser::signed_in(&app).await;

    browser.open_send_command(&app, id).await;
    browser.type_into("#content-linux", "echo retained-run").await;
    browser.click("#retain").await;
    browser.type_into("#command-name", "say-retained").await;
    browser.click("#run-button").await;
    let first = browser.panel_invoke_id().await;
    browser.wait_text(&format!("#overall-{first}"), "Success").await;

    browser
        .client
        .goto(&format!("{}/console/commands", app.url))
        .await
        .unwrap();
    browser.wait_text("#commands", "say-retained").await;
    browser.click("#commands button.primary").await;
    browser.click(&format!("#instance-picker input[value={id}]")).await;
    browser.click("#run-button").await;
    let second = browser.panel_invoke_id().await;
    browser.wait_text(&format!("#overall-{second}"), "Success").await;

    let output = browser.wait_text(&format!("#output-{second}"), "retained-run").await;
    assert_eq!(output.trim(), "retained-run");
    assert_ne!(first, second);
    browser.screenshot("run-retained-command").await;
    browser.close().await;
}

#[tokio::test]
async fn markup_in_output_is_shown_literally_and_runs_no_script() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 1).await;
    let id = &fleet[0].1;
    let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let browser = Browser::signed_in(&app).await;

    let content = format!("printf '%s\\n' '{hostile}'");
    let invoke_id = browser.run_from_instance_page(&app, id, &content).await;
    let output = browser.wait_text(&format!("#output-{invoke_id}"), "alert(1)").await;

    assert_eq!(output.trim(), hostile);
    let injected = browser
        .client
        .find_all(Locator::Css(&format!(
            "#output-{invoke_id} img, #output-{invoke_id} script"
        )))
        .await
        .unwrap();
    assert!(injected.is_empty(), "output became markup");
    assert!(
        browser.client.get_alert_text().await.is_err(),
        "a script ran and opened an alert"
    );
    browser.screenshot("hostile-output").await;
    browser.close().await;
}

#[tokio::test]
async fn reloading_mid_stream_shows_the_output_once_and_in_order() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 1).await;
    let id = &fleet[0].1;
    let browser = Browser::signed_in(&app).await;

    let content = "for i in $(seq 1 40); do echo line-$i; sleep 0.1; done";
    let invoke_id = browser.run_from_instance_page(&app, id, content).await;
    browser.wait_text(&format!("#output-{invoke_id}"), "line-5").await;
    browser
        .client
        .goto(&format!("{}/console/invocations/{invoke_id}", app.url))
        .await
        .unwrap();
    browser.wait_text(&format!("#output-{invoke_id}"), "line-").await;
    browser.client.refresh().await.unwrap();
    browser.wait_text(&format!("#overall-{invoke_id}"), "Success").await;

    let expected: String = (1..=40).map(|i| format!("line-{i}\n")).collect();
    let output = browser.wait_text(&format!("#output-{invoke_id}"), "line-40").await;
    assert_eq!(output.trim(), expected.trim());
    browser.screenshot("reload-mid-stream").await;
    browser.close().await;
}
