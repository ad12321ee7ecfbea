//! The public surfaces the scenarios measure through: RunCommand, the invocation's live stream
//! (`GET /api/v1/invocations/{id}/stream`, whose `done` event says every result is terminal),
//! the invocation record, and the console's login and Instances page.

use anyhow::{Context as _, bail};
use fleetrun::client::{ApiClient, Credentials};
use fleetrun::protocol::api::{Invocation, RunCommandRequest, StreamEvent};
use fleetrun::protocol::{InvocationStatus, ResultStatus};
use reqwest::Method;
use std::time::{Duration, Instant};

/// An admin's view of one server.
#[derive(Clone)]
pub struct Api {
    pub client: ApiClient,
    pub base: String,
    password: String,
}

/// One RunCommand timed from the POST to the `done` event.
#[derive(Debug, Clone)]
pub struct Timed {
    pub invoke_id: String,
    /// From the POST to its answer.
    pub posted: Duration,
    /// From the POST to the `done` event.
    pub elapsed: Duration,
    pub status: InvocationStatus,
}

impl Api {
    /// The server at `base`, as `admin` with `password` (HTTP Basic).
    pub fn new(base: &str, password: &str) -> Api {
        let credentials = Credentials::Basic {
            username: "admin".into(),
            password: password.into(),
        };
        Api {
            client: ApiClient::new(base, credentials),
            base: base.trim_end_matches('/').to_string(),
            password: password.into(),
        }
    }

    /// The admin's password, for requests made without the client.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Waits until `/healthz` answers.
    pub async fn wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let url = format!("{}/healthz", self.base);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("the server at {} did not answer within {limit:?}", self.base);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs a command and waits for the stream's `done` event. The stream is opened right after
    /// the POST answers; it first replays what is stored, so nothing is missed in between.
    ///
    /// `watch` names one instance to receive output and statuses of (the `done` event covers the
    /// whole invocation either way); `None` receives everything and hands it to `on_event`.
    pub async fn run_until_done(
        &self,
        req: &RunCommandRequest,
        watch: Option<&str>,
        mut on_event: impl FnMut(&StreamEvent),
    ) -> anyhow::Result<Timed> {
        let started = Instant::now();
        let created = self.client.run(req).await.context("RunCommand failed")?;
        let posted = started.elapsed();
        let mut done = None;
        self.client
            .stream(&created.invoke_id, watch, |event| {
                if let StreamEvent::Done { invocation_status } = event {
                    done = Some((started.elapsed(), *invocation_status));
                }
                on_event(event);
            })
            .await
            .context("the live stream failed")?;
        let Some((elapsed, status)) = done else {
            bail!("the stream of {} ended without `done`", created.invoke_id);
        };
        Ok(Timed {
            invoke_id: created.invoke_id,
            posted,
            elapsed,
            status,
        })
    }

    /// Runs a command and polls `GET /api/v1/invocations/{id}?include_output=false` every
    /// `every` until its status is terminal. For invocations of a few instances whose output
    /// is large: a stream watcher would make the server re-send all of it.
    pub async fn run_until_terminal(&self, req: &RunCommandRequest, every: Duration) -> anyhow::Result<Timed> {
        let started = Instant::now();
        let created = self.client.run(req).await.context("RunCommand failed")?;
        let posted = started.elapsed();
        loop {
            let inv = self.invocation_summary(&created.invoke_id).await?;
            if inv.invocation_status.is_terminal() {
                return Ok(Timed {
                    invoke_id: created.invoke_id,
                    posted,
                    elapsed: started.elapsed(),
                    status: inv.invocation_status,
                });
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The invocation with its results but without their output.
    pub async fn invocation_summary(&self, invoke_id: &str) -> anyhow::Result<Invocation> {
        let path = format!("/invocations/{invoke_id}?include_output=false");
        let response = self.client.raw(Method::GET, &path, None).await?;
        if !response.status().is_success() {
            bail!("GET {path}: {}", response.status());
        }
        Ok(response.json().await?)
    }

    /// Checks that every one of `expected` results is `Success`.
    pub async fn check_all_success(&self, invoke_id: &str, expected: usize) -> anyhow::Result<()> {
        let inv = self.invocation_summary(invoke_id).await?;
        let ok = inv.status_counts.get(&ResultStatus::Success).copied().unwrap_or(0);
        if ok as usize != expected || inv.instance_count as usize != expected {
            bail!(
                "{invoke_id}: {ok} of {expected} results Success ({:?})",
                inv.status_counts
            );
        }
        Ok(())
    }

    /// Logs in to the console and returns the `Cookie` header value of the session.
    pub async fn console_cookie(&self) -> anyhow::Result<String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let response = http
            .post(format!("{}/login", self.base))
            .form(&[
                ("username", "admin"),
                ("password", self.password.as_str()),
                ("next", "/console/instances"),
            ])
            .send()
            .await?;
        response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("fleetrun_session="))
            .and_then(|v| v.split(';').next())
            .map(String::from)
            .with_context(|| format!("login answered {} without a session cookie", response.status()))
    }
}
