//! Browser tests: headless Chromium (Debian's `chromium` + `chromium-driver`, installed by
//! `.ci/run`) driven through chromedriver against a real server and real agents. Screenshots go
//! to `target/screenshots/` for review.

use crate::helpers::{AgentProcess, PASSWORD, TestApp, eventually, live_processes, unique_seconds};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

/// One browser at a time: Chromium is heavy on a 2-core machine.
static BROWSER: Semaphore = Semaphore::const_new(1);
const WAIT: Duration = Duration::from_secs(30);

struct Browser {
    client: Client,
    _driver: Child,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

impl Browser {
    async fn start() -> Browser {
        let permit = BROWSER.acquire().await.unwrap();
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "chromedriver is needed for the browser tests: apt-get install chromium chromium-driver (.ci/run does)",
            );
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("chromedriver exited before it started");
            if let Some(port) = line.split("successfully on port ").nth(1) {
                break port.trim_end_matches('.').to_string();
            }
        };
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]
            }
        });
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect to chromedriver");
        Browser {
            client,
            _driver: driver,
            _permit: permit,
        }
    }

    async fn login(&self, app: &TestApp) {
        self.client.goto(&format!("{}/login", app.url)).await.unwrap();
        self.client
            .find(Locator::Id("username"))
            .await
            .unwrap()
            .send_keys("admin")
            .await
            .unwrap();
        self.client
            .find(Locator::Id("password"))
            .await
            .unwrap()
            .send_keys(PASSWORD)
            .await
            .unwrap();
        self.client
            .find(Locator::Css("button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_text("h1", "Instances").await;
    }

    /// Waits until the first element matching `css` contains `text`; returns its whole text.
    async fn wait_text(&self, css: &str, text: &str) -> String {
        eventually(WAIT, &format!("{css} to contain {text:?}"), || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            let found = element.text().await.ok()?;
            found.contains(text).then_some(found)
        })
        .await
    }

    async fn click(&self, css: &str) {
        let element = eventually(WAIT, &format!("{css} to appear"), || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            element.is_displayed().await.ok()?.then_some(element)
        })
        .await;
        element.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap();
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    /// The id of the invocation whose panel is on screen (the newest one).
    async fn panel_invoke_id(&self) -> String {
        eventually(WAIT, "a Command Output panel", || async {
            let panels = self.client.find_all(Locator::Css(".output-panel")).await.ok()?;
            let id = panels.last()?.attr("id").await.ok()??;
            id.strip_prefix("panel-").map(String::from)
        })
        .await
    }

    /// On the Instances page: tick each instance → More → Send Command.
    async fn send_command_to_selection(&self, fleet: &[(AgentProcess, String)]) {
        for (_, id) in fleet {
            self.click(&format!("#instance-rows input[value={id}]")).await;
        }
        self.click("#more-button").await;
        self.click("#send-command-batch").await;
    }

    /// The instance's page → Remote Commands → Send Command.
    async fn open_send_command(&self, app: &TestApp, instance_id: &str) {
        self.client
            .goto(&format!("{}/console/instances/{instance_id}", app.url))
            .await
            .unwrap();
        self.click("#tab-commands").await;
        self.click("#send-command").await;
    }

    async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        // Show the newest output, not the top of the dialog.
        let _ = self.client.execute("const o = [...document.querySelectorAll('pre.output')].pop(); if (o) o.scrollIntoView({block: 'end'});", vec![]).await;
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

async fn agents(app: &TestApp, region: &str, n: usize) -> Vec<(AgentProcess, String)> {
    let mut agents = Vec::new();
    for _ in 0..n {
        let agent = app.agent(region).await;
        let id = agent.instance_id().await;
        agents.push((agent, id));
    }
    agents
}

#[tokio::test]
async fn picking_a_region_lists_only_its_instances() {
    let app = TestApp::spawn().await;
    let hangzhou = agents(&app, "cn-hangzhou", 1).await;
    let frankfurt = agents(&app, "eu-central-1", 1).await;
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
    let fleet = agents(&app, "local", 1).await;
    let id = &fleet[0].1;
    let hostname = app.client.instance(id).await.unwrap().hostname;
    let browser = Browser::start().await;
    browser.login(&app).await;

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
    let fleet = agents(&app, "local", 3).await;
    let browser = Browser::start().await;
    browser.login(&app).await;

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
    let fleet = agents(&app, "local", 2).await;
    let seconds = unique_seconds(600);
    let browser = Browser::start().await;
    browser.login(&app).await;

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
    let fleet = agents(&app, "local", 1).await;
    let id = &fleet[0].1;
    let browser = Browser::start().await;
    browser.login(&app).await;

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
    let fleet = agents(&app, "local", 1).await;
    let id = &fleet[0].1;
    let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let browser = Browser::start().await;
    browser.login(&app).await;

    browser.open_send_command(&app, id).await;
    browser
        .type_into("#content-linux", &format!("printf '%s\\n' '{hostile}'"))
        .await;
    browser.click("#run-button").await;
    let invoke_id = browser.panel_invoke_id().await;
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
    let fleet = agents(&app, "local", 1).await;
    let id = &fleet[0].1;
    let browser = Browser::start().await;
    browser.login(&app).await;

    browser.open_send_command(&app, id).await;
    browser
        .type_into(
            "#content-linux",
            "for i in $(seq 1 40); do echo line-$i; sleep 0.1; done",
        )
        .await;
    browser.click("#run-button").await;
    let invoke_id = browser.panel_invoke_id().await;
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
