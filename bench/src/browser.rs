//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`, as the
//! browser tests use), with just the commands the console figure needs: open a page, set the
//! session cookie, run a script. Plain JSON over HTTP, so the bench needs no WebDriver crate.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// One browser session and the chromedriver behind it (killed on drop).
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    _driver: Child,
}

impl Browser {
    pub async fn start() -> anyhow::Result<Browser> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("this figure needs chromedriver on the PATH (Debian: apt-get install chromium chromium-driver)")?;
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r.json::<Value>().await.ok().and_then(|v| v["value"]["ready"].as_bool()),
                Err(_) => None,
            };
            if ready == Some(true) {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not get ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"
            ]}
        }}});
        let created = answer(http.post(format!("{base}/session")).json(&capabilities)).await?;
        let id = created["sessionId"]
            .as_str()
            .context("chromedriver gave no session id")?;
        let browser = Browser {
            session: format!("{base}/session/{id}"),
            http,
            _driver: driver,
        };
        browser
            .post("/timeouts", json!({ "script": 120_000, "pageLoad": 60_000 }))
            .await?;
        Ok(browser)
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        answer(self.http.post(format!("{}{path}", self.session)).json(&body)).await
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    /// Sets a cookie for the site now open.
    pub async fn cookie(&self, name: &str, value: &str) -> anyhow::Result<()> {
        self.post(
            "/cookie",
            json!({ "cookie": { "name": name, "value": value, "path": "/" } }),
        )
        .await
        .map(drop)
    }

    /// Runs `script` (a function body) in the page; a promise it returns is awaited.
    pub async fn run(&self, script: &str) -> anyhow::Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// Ends the session (the browser exits; the driver is killed on drop).
    pub async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

/// The `value` of a WebDriver answer, or its error.
async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let body: Value = request.send().await?.json().await?;
    let value = body["value"].clone();
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        bail!("webdriver: {error}: {}", value["message"].as_str().unwrap_or_default());
    }
    Ok(value)
}
