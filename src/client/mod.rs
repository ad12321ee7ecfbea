//! The API client over reqwest, and the CLI subcommands built on it (`fleetrun run`,
//! `instances`, `invocations`, `stop`).

mod cli;
mod output;
mod run;

pub use cli::run_cli;

use crate::protocol::api::{
    ActivationCreated, CreateActivationRequest, ErrorBody, ExecutionsResponse, Instance, InstancesResponse, Invocation,
    InvocationCreated, InvocationsResponse, RegionsResponse, RunCommandRequest, StopRequest, StreamEvent,
};
use anyhow::Context as _;
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// How the client proves who it is.
#[derive(Clone)]
pub enum Credentials {
    Token(String),
    Basic { username: String, password: String },
}

/// An error answer from the API, with its documented code.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {} ({})", body.message, body.code)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub body: ErrorBody,
}

/// A client of one fleetrun server.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    credentials: Credentials,
    http: reqwest::Client,
    /// The TLS configuration of `http`, for the live stream's WebSocket; `None` uses
    /// tokio-tungstenite's default (the system roots).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ApiClient {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, credentials: Credentials) -> ApiClient {
        ApiClient::with_http(base, credentials, reqwest::Client::new())
    }

    /// A client using a configured reqwest client (e.g. one trusting a private CA).
    pub fn with_http(base: &str, credentials: Credentials, http: reqwest::Client) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            credentials,
            http,
            tls: None,
        }
    }

    /// A client whose HTTP requests and live streams both use `tls` (see `crate::tls`).
    pub fn with_tls(base: &str, credentials: Credentials, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<ApiClient> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(ApiClient {
            tls: Some(tls),
            ..ApiClient::with_http(base, credentials, http)
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, format!("{}/api/v1{path}", self.base));
        match &self.credentials {
            Credentials::Token(token) => builder.bearer_auth(token),
            Credentials::Basic { username, password } => builder.basic_auth(username, Some(password)),
        }
    }

    async fn send<T: DeserializeOwned>(&self, builder: RequestBuilder) -> anyhow::Result<T> {
        let response = check(builder.send().await.map_err(cannot_reach)?).await?;
        response.json().await.context("the server's answer is malformed")
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(Method::GET, path)).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// `GET /instances` with a raw query string such as `region_id=local`.
    pub async fn instances(&self, query: &str) -> anyhow::Result<InstancesResponse> {
        self.get(&format!("/instances?{query}")).await
    }

    /// Every instance matching a raw query (without paging, e.g. `region_id=local`), fetched
    /// a page of 1000 at a time.
    pub async fn all_instances(&self, query: &str) -> anyhow::Result<Vec<Instance>> {
        const PAGE_SIZE: usize = 1000;
        let separator = if query.is_empty() { "" } else { "&" };
        let mut all = Vec::new();
        for page in 1.. {
            let paged = format!("{query}{separator}page={page}&page_size={PAGE_SIZE}");
            let list = self.instances(&paged).await?;
            let is_last = list.instances.len() < PAGE_SIZE;
            all.extend(list.instances);
            if is_last || all.len() as u64 >= list.total {
                break;
            }
        }
        Ok(all)
    }

    /// The regions that have instances.
    pub async fn regions(&self) -> anyhow::Result<RegionsResponse> {
        self.get("/regions").await
    }

    pub async fn instance(&self, instance_id: &str) -> anyhow::Result<Instance> {
        self.get(&format!("/instances/{instance_id}")).await
    }

    pub async fn create_activation(&self, req: &CreateActivationRequest) -> anyhow::Result<ActivationCreated> {
        self.post("/activations", req).await
    }

    /// RunCommand.
    pub async fn run(&self, req: &RunCommandRequest) -> anyhow::Result<InvocationCreated> {
        self.post("/invocations", req).await
    }

    /// RunCommand with `repeat_mode: DryRun`: what would run.
    pub async fn dry_run(&self, req: &RunCommandRequest) -> anyhow::Result<crate::protocol::api::DryRunResponse> {
        let req = RunCommandRequest {
            repeat_mode: Some(crate::protocol::RepeatMode::DryRun),
            ..req.clone()
        };
        self.post("/invocations", &req).await
    }

    /// Replaces an instance's tags.
    pub async fn set_tags(&self, instance_id: &str, tags: Vec<crate::protocol::Tag>) -> anyhow::Result<Instance> {
        let body = crate::protocol::api::SetTagsRequest { tags };
        self.send(
            self.request(Method::PUT, &format!("/instances/{instance_id}/tags"))
                .json(&body),
        )
        .await
    }

    pub async fn invocation(&self, invoke_id: &str) -> anyhow::Result<Invocation> {
        self.get(&format!("/invocations/{invoke_id}")).await
    }

    /// One invocation with its results, but without their output.
    pub async fn invocation_without_output(&self, invoke_id: &str) -> anyhow::Result<Invocation> {
        self.get(&format!("/invocations/{invoke_id}?include_output=false"))
            .await
    }

    /// Every execution of an invocation, each with its results and their output.
    pub async fn executions(&self, invoke_id: &str) -> anyhow::Result<ExecutionsResponse> {
        self.get(&format!("/invocations/{invoke_id}/executions")).await
    }

    /// `GET /invocations` with a raw query string.
    pub async fn invocations(&self, query: &str) -> anyhow::Result<InvocationsResponse> {
        self.get(&format!("/invocations?{query}")).await
    }

    /// The exact kept output bytes of one result.
    pub async fn output(&self, invoke_id: &str, instance_id: &str) -> anyhow::Result<Vec<u8>> {
        let path = format!("/invocations/{invoke_id}/results/{instance_id}/output");
        let response = check(self.request(Method::GET, &path).send().await.map_err(cannot_reach)?).await?;
        Ok(response.bytes().await?.to_vec())
    }

    pub async fn stop(&self, invoke_id: &str, instance_ids: Option<Vec<String>>) -> anyhow::Result<()> {
        let path = format!("/invocations/{invoke_id}/stop");
        check(
            self.request(Method::POST, &path)
                .json(&StopRequest { instance_ids })
                .send()
                .await
                .map_err(cannot_reach)?,
        )
        .await?;
        Ok(())
    }

    /// Any request, for routes without a helper; the answer is returned as it came.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut builder = self.request(method, path);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        builder.send().await.map_err(cannot_reach)
    }

    /// Opens the live stream of an invocation (optionally of one instance) and calls `on_event`
    /// for each event until `Done` or the connection ends.
    pub async fn stream(
        &self,
        invoke_id: &str,
        instance_id: Option<&str>,
        mut on_event: impl FnMut(&StreamEvent),
    ) -> anyhow::Result<()> {
        let mut url = format!(
            "{}/api/v1/invocations/{invoke_id}/stream",
            self.base.replacen("http", "ws", 1)
        );
        if let Some(instance_id) = instance_id {
            url.push_str(&format!("?instance_id={instance_id}"));
        }
        let mut request = url.as_str().into_client_request()?;
        let auth = match &self.credentials {
            Credentials::Token(token) => format!("Bearer {token}"),
            Credentials::Basic { username, password } => {
                use base64::Engine as _;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
                )
            }
        };
        request.headers_mut().insert("authorization", auth.parse()?);
        let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        let (mut socket, _) = tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector)
            .await
            .map_err(|e| crate::tls::explain(e.into()).context("cannot open the live stream"))?;
        while let Some(message) = socket.next().await {
            let Message::Text(text) = message? else {
                continue;
            };
            let event: StreamEvent = serde_json::from_str(&text).context("malformed stream event")?;
            on_event(&event);
            if matches!(event, StreamEvent::Done { .. }) {
                break;
            }
        }
        Ok(())
    }
}

/// A request that got no answer; a refused server certificate says how to fix it.
fn cannot_reach(error: reqwest::Error) -> anyhow::Error {
    crate::tls::explain(error.into()).context("cannot reach the fleetrun server")
}

/// Turns an error answer into an `ApiFailure`.
async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(ErrorBody {
        code: "Unknown".into(),
        message: text,
        request_id: String::new(),
    });
    Err(ApiFailure { status, body }.into())
}
