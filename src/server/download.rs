//! The one-line install (DESIGN.md §4): `GET /install.sh`, a POSIX shell script that downloads
//! the agent, checks its SHA-256, installs it and runs `fleetrun-agent install`; and
//! `GET /download/fleetrun-agent` (the binary, streamed, with its SHA-256 in `X-Checksum-Sha256`
//! and `Repr-Digest`) and `GET /download/fleetrun-agent.sha256` (`sha256sum`'s line).
//!
//! All three are public: a machine being installed has no console login, and none of them holds
//! a secret. The binary is the file the operator names with `--agent-binary`, else
//! `fleetrun-agent` next to the server's own executable; it is hashed once per version of the
//! file (its length and modification time), not per request.

use super::AppState;
use crate::protocol::hex;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The script, with `@SERVER@` (in its comments) and `@DEFAULT_SERVER@` (its default) to fill in.
const SCRIPT: &str = include_str!("../../templates/install.sh");

/// The agent binary the server hands out.
pub struct AgentBinary {
    /// The file, or `None` when the server cannot tell where its own executable is.
    path: Option<PathBuf>,
    /// The SHA-256 of the file as last hashed, with the length and modification time it had
    /// then: the file is hashed again only when it has changed. Written by [`AgentBinary::open`].
    digest: Mutex<Option<FileDigest>>,
}

#[derive(Clone)]
struct FileDigest {
    len: u64,
    modified: Option<SystemTime>,
    sha256: [u8; 32],
}

impl AgentBinary {
    /// The file `given` (`--agent-binary`), else `fleetrun-agent` beside this executable.
    pub fn new(given: Option<PathBuf>) -> AgentBinary {
        let beside = || Some(std::env::current_exe().ok()?.parent()?.join("fleetrun-agent"));
        AgentBinary {
            path: given.or_else(beside),
            digest: Mutex::new(None),
        }
    }

    /// Where the binary is looked for.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The binary opened at its start, with its length and SHA-256; `None` when there is no
    /// such file.
    async fn open(&self) -> std::io::Result<Option<(tokio::fs::File, u64, [u8; 32])>> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Ok(None);
        }
        let (len, modified) = (metadata.len(), metadata.modified().ok());
        let known = self
            .digest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .filter(|d| d.len == len && d.modified == modified);
        let (file, sha256) = match known {
            Some(digest) => (file, digest.sha256),
            None => {
                let (file, sha256) = tokio::task::spawn_blocking(move || hash(file))
                    .await
                    .map_err(std::io::Error::other)??;
                *self.digest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                    Some(FileDigest { len, modified, sha256 });
                (file, sha256)
            }
        };
        Ok(Some((tokio::fs::File::from_std(file), len, sha256)))
    }
}

/// The SHA-256 of a file, read from its start; returns the file rewound.
fn hash(mut file: std::fs::File) -> std::io::Result<(std::fs::File, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 256 * 1024];
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            n => hasher.update(&buffer[..n]),
        }
    }
    file.rewind()?;
    Ok((file, hasher.finalize().into()))
}

/// `GET /download/fleetrun-agent`: the binary, streamed.
pub async fn binary(State(state): State<AppState>) -> Response {
    match state.agent_binary.open().await {
        Ok(Some((file, len, sha256))) => {
            let digest = format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(sha256));
            let headers = [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_LENGTH, len.to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"fleetrun-agent\"".to_string(),
                ),
                (HeaderName::from_static("x-checksum-sha256"), hex(&sha256)),
                (HeaderName::from_static("repr-digest"), digest),
            ];
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
            (headers, body).into_response()
        }
        Ok(None) => missing(&state),
        Err(e) => unreadable(&state, e),
    }
}

/// `GET /download/fleetrun-agent.sha256`: `<hex>  fleetrun-agent`, as `sha256sum -c` reads it.
pub async fn checksum(State(state): State<AppState>) -> Response {
    match state.agent_binary.open().await {
        Ok(Some((_, _, sha256))) => text(StatusCode::OK, format!("{}  fleetrun-agent\n", hex(&sha256))),
        Ok(None) => missing(&state),
        Err(e) => unreadable(&state, e),
    }
}

/// `GET /install.sh`: the script, as text to read before running it, naming this server.
pub async fn script(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let server = public_url(state.tls, &headers);
    let script = SCRIPT
        .replace("@DEFAULT_SERVER@", server.as_deref().unwrap_or(""))
        .replace("@SERVER@", server.as_deref().unwrap_or("SERVER"));
    text(StatusCode::OK, script)
}

/// This server's URL as the client reached it (its `Host`), for lines to paste on a machine;
/// `None` when the client sent no `Host`, or one that is not a plain host and port (the URL goes
/// into shell lines and the script).
pub fn public_url(tls: bool, headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let is_plain = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    let scheme = if tls { "https" } else { "http" };
    is_plain.then(|| format!("{scheme}://{host}"))
}

fn missing(state: &AppState) -> Response {
    tracing::warn!(
        path = %state.agent_binary.path().map(|p| p.display().to_string()).unwrap_or_default(),
        "a machine asked for the agent binary, which is not there: place it, or start the server with --agent-binary PATH"
    );
    text(
        StatusCode::NOT_FOUND,
        "This fleetrun server has no agent binary to hand out. Its operator builds one \
         (cargo build --release --no-default-features --bin fleetrun-agent) and either places it \
         next to the fleetrun executable, named fleetrun-agent, or starts the server with \
         --agent-binary PATH (FLEETRUN_AGENT_BINARY).\n"
            .to_string(),
    )
}

fn unreadable(state: &AppState, e: std::io::Error) -> Response {
    tracing::error!(
        path = %state.agent_binary.path().map(|p| p.display().to_string()).unwrap_or_default(),
        "cannot read the agent binary: {e}"
    );
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The agent binary cannot be read; the server's log says why.\n".to_string(),
    )
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_host(host: &str) -> HeaderMap {
        HeaderMap::from_iter([(header::HOST, HeaderValue::from_str(host).unwrap())])
    }

    #[test]
    fn the_public_url_is_the_host_asked_for_when_it_is_a_plain_host_and_port() {
        assert_eq!(
            public_url(false, &with_host("fleet.example:8080")).as_deref(),
            Some("http://fleet.example:8080")
        );
        assert_eq!(
            public_url(true, &with_host("[::1]:8443")).as_deref(),
            Some("https://[::1]:8443")
        );
        assert_eq!(public_url(false, &with_host("a.example;rm -rf /")), None);
        assert_eq!(public_url(false, &with_host("a.example'$(id)'")), None);
        assert_eq!(public_url(false, &HeaderMap::new()), None);
    }

    #[test]
    fn the_script_names_the_server_in_its_default_and_its_comments_only() {
        let script = SCRIPT
            .replace("@DEFAULT_SERVER@", "http://fleet.example:8080")
            .replace("@SERVER@", "http://fleet.example:8080");

        assert!(script.contains("\n    server='http://fleet.example:8080'\n"));
        assert!(!script.contains("SERVER@"), "every placeholder is filled in");
        assert!(
            script.ends_with("main \"$@\"\n"),
            "nothing runs before the whole script is read"
        );
    }
}
