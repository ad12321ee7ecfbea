//! A headless Chromium (Debian's `chromium` + `chromium-driver`, which `.ci/run` installs)
//! driven through chromedriver, with the steps the console tests share.

use crate::helpers::{AgentProcess, PASSWORD, TestApp, eventually};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

/// One browser at a time: Chromium is heavy on a 2-core machine.
static BROWSER: Semaphore = Semaphore::const_new(1);
pub const WAIT: Duration = Duration::from_secs(30);

/// One browser session, with its chromedriver.
pub struct Browser {
    pub client: Client,
    _driver: Child,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

impl Browser {
    pub async fn start() -> Browser {
        let permit = BROWSER.acquire().await.unwrap();
        let spawned = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(mut driver) = spawned else {
            panic!(
                "the browser tests need Chromium and chromedriver, and `chromedriver` is not on the PATH: \
                 install them with `sudo apt-get install chromium chromium-driver` (.ci/run does), then run cargo test again"
            );
        };
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

    /// A browser logged in to `app`'s console as admin.
    pub async fn signed_in(app: &TestApp) -> Browser {
        let browser = Browser::start().await;
        browser.login(app).await;
        browser
    }

    pub async fn login(&self, app: &TestApp) {
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
    pub async fn wait_text(&self, css: &str, text: &str) -> String {
        eventually(WAIT, &format!("{css} to contain {text:?}"), || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            let found = element.text().await.ok()?;
            found.contains(text).then_some(found)
        })
        .await
    }

    pub async fn click(&self, css: &str) {
        let element = eventually(WAIT, &format!("{css} to appear"), || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            element.is_displayed().await.ok()?.then_some(element)
        })
        .await;
        // As a person would: bring it to the middle of the window first, clear of the batch bar.
        let arg = serde_json::to_value(&element).unwrap();
        let _ = self
            .client
            .execute("arguments[0].scrollIntoView({block: 'center'});", vec![arg])
            .await;
        element.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    pub async fn type_into(&self, css: &str, text: &str) {
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
    pub async fn panel_invoke_id(&self) -> String {
        eventually(WAIT, "a Command Output panel", || async {
            let panels = self.client.find_all(Locator::Css(".output-panel")).await.ok()?;
            let id = panels.last()?.attr("id").await.ok()??;
            id.strip_prefix("panel-").map(String::from)
        })
        .await
    }

    /// On the Instances page: tick each instance → More → Send Command.
    pub async fn send_command_to_selection(&self, fleet: &[(AgentProcess, String)]) {
        for (_, id) in fleet {
            self.click(&format!("#instance-rows input[value={id}]")).await;
        }
        self.click("#more-button").await;
        self.click("#send-command-batch").await;
    }

    /// The instance's page → Remote Commands → Send Command.
    pub async fn open_send_command(&self, app: &TestApp, instance_id: &str) {
        self.client
            .goto(&format!("{}/console/instances/{instance_id}", app.url))
            .await
            .unwrap();
        self.click("#tab-commands").await;
        self.click("#send-command").await;
    }

    /// The instance's page → Send Command → `content` → Run: the invoke id of its panel.
    pub async fn run_from_instance_page(&self, app: &TestApp, instance_id: &str, content: &str) -> String {
        self.open_send_command(app, instance_id).await;
        self.type_into("#content-linux", content).await;
        self.click("#run-button").await;
        self.panel_invoke_id().await
    }

    pub async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        // Show the newest output, not the top of the dialog.
        let _ = self.client.execute("const o = [...document.querySelectorAll('pre.output')].pop(); if (o) o.scrollIntoView({block: 'end'});", vec![]).await;
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }

    /// Whether the first element matching `css` is displayed now.
    pub async fn is_shown(&self, css: &str) -> bool {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Runs a script in the page and returns its value.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap()
    }
}
