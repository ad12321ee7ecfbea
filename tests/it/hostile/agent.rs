//! Hostile enrolments (`POST /agent/v1/register`) and the agent socket: bad credentials on the
//! upgrade, garbage frames before and after Hello, and reports about tasks that are not the
//! instance's. The socket helpers here also serve the console's escaping test, which needs an
//! agent to report hostile output.

use super::{Bare, Case, Fixture, JSON, MIB, Refused, ReplaceFirst as _, bad, body, get, merge, post, raw, truncate};
use crate::helpers::{TestApp, register, register_body};
use base64::Engine as _;
use fleetrun::protocol::agent::{AgentMessage, Hello, Output, ServerMessage, TaskStarted};
use fleetrun::protocol::api::ActivationCreated;
use fleetrun::protocol::{CommandType, OsType, OutputStream, PROTOCOL_VERSION};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest as _};

/// Enrolments with a wrong or used-up activation, hostile host facts and malformed bodies, and
/// the wrong methods on the agent routes.
#[rustfmt::skip]
fn enrolment_cases(fx: &Fixture, used_up: &ActivationCreated) -> Vec<Case> {
    let sql = "' OR '1'='1";
    let reg = |extra: Value| merge(register_body(&fx.activation, "new"), extra);
    let ips: Vec<String> = (0..65).map(|n| format!("10.0.1.{n}")).collect();
    let invalid_utf8 = body(reg(json!({"hostname": "__RAW__"}))).replace_first(b"__RAW__", &[0xc3, 0x28, 0xff]);
    let register = "/agent/v1/register";
    vec![
        post("enrol with a wrong activation code", register, reg(json!({"activation_code": "wrong"})), Refused(401, "InvalidActivation.Code")).anonymous(),
        post("enrol with SQL as the activation id", register, reg(json!({"activation_id": format!("act-x{sql}")})), Refused(401, "InvalidActivation.Code")).anonymous(),
        post("enrol with SQL as the activation code", register, reg(json!({"activation_code": sql})), Refused(401, "InvalidActivation.Code")).anonymous(),
        post("enrol with a used-up activation", register, register_body(used_up, "x"), Refused(403, "InvalidActivation.LimitExceeded")).anonymous(),
        post("enrol with a hostname of 256 characters", register, reg(json!({"hostname": "h".repeat(256)})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with a NUL byte in the hostname", register, reg(json!({"hostname": "h\u{0}"})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with a name of 129 characters", register, reg(json!({"name": "n".repeat(129)})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with a newline in the name", register, reg(json!({"name": "web\nadmin"})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with an escape sequence in os_name", register, reg(json!({"os_name": "\u{1b}[31mred"})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with an agent_version of 65 characters", register, reg(json!({"agent_version": "v".repeat(65)})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with the ip address 999.1.1.1", register, reg(json!({"ip_addresses": ["999.1.1.1"]})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with a script tag as ip address", register, reg(json!({"ip_addresses": ["<script>"]})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with 65 ip addresses", register, reg(json!({"ip_addresses": ips})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with ip_addresses as a string", register, reg(json!({"ip_addresses": "10.0.0.1"})), bad("InvalidParameter.Body")).anonymous(),
        post("enrol with os_type plan9", register, reg(json!({"os_type": "plan9"})), bad("InvalidParameter.Body")).anonymous(),
        post("enrol with an unknown field", register, reg(json!({"instance_id": "i-chosen"})), bad("InvalidParameter.Body")).anonymous(),
        raw("enrol with a body of 2 MiB", register, JSON, body(reg(json!({"os_name": "o".repeat(2 * MIB)}))), Refused(413, "RequestTooLarge")).anonymous().mentions(&["1 MiB", "1048576"]),
        raw("enrol with invalid UTF-8", register, JSON, invalid_utf8, bad("InvalidParameter.Body")).anonymous(),
        raw("enrol as text/plain", register, "text/plain", body(reg(json!({}))), Refused(415, "UnsupportedMediaType")).anonymous(),
        get("agent socket without a WebSocket upgrade", "/agent/v1/connect", Bare(400)).anonymous(),
        Case::new("POST to the agent socket", Method::POST, "/agent/v1/connect", Bare(405)).anonymous(),
        get("GET on enrolment", register, Bare(405)).anonymous(),
    ]
}

#[tokio::test]
async fn hostile_enrolments_are_refused_and_store_nothing() {
    let fx = Fixture::new().await;
    let used_up = fx.app.activation("local", 1).await;
    register(&fx.app, &register_body(&used_up, "only")).await;
    let cases = enrolment_cases(&fx, &used_up);
    fx.run(cases).await;
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub(super) fn hello() -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        protocol_versions: Vec::new(),
        agent_version: "0.1.0".into(),
        hostname: "fake-host".into(),
        os_type: OsType::Linux,
        os_name: "Debian GNU/Linux 12".into(),
        ip_addresses: vec!["10.0.0.7".into()],
        supported_command_types: vec![CommandType::RunShellScript],
        held_tasks: Vec::new(),
        boot_id: None,
    }
}

pub(super) fn text_of(message: impl Into<AgentMessage>) -> String {
    message.into().encode()
}

/// Opens the agent socket with this `Authorization` value; the server's refusal as an error.
async fn agent_socket(app: &TestApp, authorization: Option<&str>) -> Result<Socket, tungstenite::Error> {
    let url = format!("{}/agent/v1/connect", app.url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    if let Some(value) = authorization {
        let value = tungstenite::http::HeaderValue::from_str(value).unwrap();
        request.headers_mut().insert("authorization", value);
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The next message from the server other than a heartbeat, within 5 s.
pub(super) async fn next_message(socket: &mut Socket) -> Option<ServerMessage> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => match ServerMessage::decode(&text) {
                Ok(ServerMessage::Heartbeat) => continue,
                Ok(message) => return Some(message),
                Err(_) => return None,
            },
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// Connects as an agent with `hello`: the socket once `Welcome` arrived.
pub(super) async fn attach(app: &TestApp, credential: &str, hello: Hello) -> Result<Socket, String> {
    let mut socket = agent_socket(app, Some(&format!("Bearer {credential}")))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    socket
        .send(Message::text(text_of(hello)))
        .await
        .map_err(|e| format!("cannot send Hello: {e}"))?;
    match next_message(&mut socket).await {
        Some(ServerMessage::Welcome(_)) => Ok(socket),
        other => Err(format!("no Welcome after Hello but {other:?}")),
    }
}

/// A client-to-server WebSocket frame: `first` is the FIN/RSV/opcode byte.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend(key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend(payload);
    }
    out
}

fn text_frame(text: &str) -> Vec<u8> {
    frame(0x81, text.as_bytes(), true)
}

/// The agent socket over a bare TCP stream, after a hand-made upgrade.
async fn raw_socket(app: &TestApp, credential: &str) -> Result<TcpStream, String> {
    let address = app.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    let request = format!(
        "GET /agent/v1/connect HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {credential}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte)).await;
        read.map_err(|_| "no upgrade answer".to_string())?
            .map_err(|e| e.to_string())?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!("the upgrade was refused: {}", String::from_utf8_lossy(&head)));
    }
    Ok(stream)
}

/// Reads until the server closes the connection: what it sent, or `Err` if it was still open
/// 2.5 s later. (A silent agent is dropped after three 1 s heartbeats, so a longer wait would not
/// tell a refused frame from silence; the error says when it did close, if it did within 10 s.)
async fn read_until_closed(stream: &mut TcpStream) -> Result<String, String> {
    let started = Instant::now();
    let mut received = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await {
        Ok(_) if started.elapsed() < Duration::from_millis(2500) => Ok(String::from_utf8_lossy(&received).into_owned()),
        Ok(_) => Err(format!(
            "the connection was still open 2.5 s later (closed after {:.1} s)",
            started.elapsed().as_secs_f64()
        )),
        Err(_) => Err("the connection is still open 10 s later".into()),
    }
}

/// Hostile bytes for the agent socket, and when they are sent.
enum Frames {
    /// Sent right after the upgrade, without Hello.
    First(Vec<u8>),
    /// Sent after a valid Hello.
    AfterHello(Vec<u8>),
}

#[tokio::test]
async fn the_agent_socket_refuses_bad_credentials_and_garbage_frames() {
    let fx = Fixture::new().await;
    let app = &fx.app;
    let id = fx.instance_id.as_str();
    let secret = fx.instance_secret.as_str();
    let credential = format!("{id}:{secret}");
    let baseline_invocations = fx.api("/invocations?page_size=1000").await.unwrap();
    let facts = |i: &Value| {
        json!([
            i["name"],
            i["hostname"],
            i["os_name"],
            i["os_type"],
            i["ip_addresses"],
            i["agent"]["version"]
        ])
    };
    let baseline_facts = facts(&fx.api(&format!("/instances/{id}")).await.unwrap());
    let mut failures = Vec::new();
    let mut count = 0;

    // Upgrades with bad credentials: 401 with a JSON body, before any frame.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&credential)
    );
    let long = format!("Bearer {credential}{}", "x".repeat(64 * 1024));
    let refusals: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("an instance id without a secret", Some(format!("Bearer {id}"))),
        ("a wrong secret", Some(format!("Bearer {id}:wrong"))),
        (
            "an unknown instance",
            Some(format!("Bearer i-0000000000000000:{secret}")),
        ),
        ("SQL as the instance id", Some(format!("Bearer ' OR '1'='1:{secret}"))),
        ("an empty id and secret", Some("Bearer :".into())),
        ("Basic instead of Bearer", Some(basic)),
        ("a credential with 64 KiB appended", Some(long)),
        ("the admin's API token", Some(format!("Bearer {}", fx.token))),
    ];
    for (what, authorization) in refusals {
        count += 1;
        let problem = match agent_socket(app, authorization.as_deref()).await {
            Ok(_) => Some("the upgrade was accepted".to_string()),
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let code = serde_json::from_str::<Value>(&body).ok().map(|b| b["code"].clone());
                (response.status() != 401 || code != Some(json!("InvalidInstanceCredential")))
                    .then(|| format!("answered {}: {body}", response.status()))
            }
            Err(e) => Some(format!("failed without an answer: {e}")),
        };
        if let Some(problem) = problem {
            failures.push(format!("- upgrade with {what}: {problem}"));
        }
    }

    // Garbage once connected: the connection is closed, nothing is stored, the agent can connect again.
    let mut bad_version = hello();
    bad_version.protocol_version = 999;
    let mut fragments = frame(0x01, &[b'x'; 64 * 1024], true);
    for _ in 0..30 {
        fragments.extend(frame(0x00, &[b'x'; 64 * 1024], true));
    }
    fragments.extend(frame(0x80, b"x", true));
    let huge_header = [vec![0x81, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0], vec![1, 2, 3, 4]].concat();
    let output = |data: &str| format!(r#"{{"type":"output","task":"t-x","seq":0,"stream":"stdout","data":"{data}"}}"#);
    let binary_output = Output {
        task: "t-x".into(),
        seq: 0,
        stream: OutputStream::Stdout,
        data: "x".into(),
    }
    .encode_binary();
    // 600 KiB of output in one chunk: within the 1 MiB frame limit, over the 256 KiB chunk limit.
    let oversized_output = Output {
        task: "t-x".into(),
        seq: 0,
        stream: OutputStream::Stdout,
        data: vec![b'x'; 600 * 1024].into(),
    }
    .encode_binary();
    let mut v1 = hello();
    v1.protocol_version = 1;
    let binary_from_v1 = [text_frame(&text_of(v1)), frame(0x82, &binary_output, true)].concat();
    let mut overlong_task = binary_output.clone();
    overlong_task[10] = 60;
    let hostile_hello = |change: fn(&mut Hello)| {
        let mut hello = hello();
        change(&mut hello);
        Frames::First(text_frame(&text_of(hello)))
    };
    #[rustfmt::skip]
    let frames: Vec<(&str, Frames)> = vec![
        ("a heartbeat before Hello", Frames::First(text_frame(r#"{"type":"heartbeat"}"#))),
        ("a binary frame before Hello", Frames::First(frame(0x82, b"\x00\x01garbage", true))),
        ("text that is not JSON before Hello", Frames::First(text_frame("hello?"))),
        ("Hello with protocol version 999", Frames::First(text_frame(&text_of(bad_version)))),
        ("Hello without its fields", Frames::First(text_frame(r#"{"type":"hello"}"#))),
        ("Hello holding 40,000 tasks", hostile_hello(|h| h.held_tasks = (0..40_000).map(|n| format!("t-{n}")).collect())),
        ("Hello with a hostname of 300,000 characters", hostile_hello(|h| h.hostname = "h".repeat(300_000))),
        ("Hello with the ip address not-an-ip", hostile_hello(|h| h.ip_addresses = vec!["not-an-ip".into()])),
        ("Hello with an escape sequence in os_name", hostile_hello(|h| h.os_name = "\u{1b}[2J\u{0}".into())),
        ("Hello with an agent_version of 10,000 characters", hostile_hello(|h| h.agent_version = "v".repeat(10_000))),
        ("a second Hello", Frames::AfterHello(text_frame(&text_of(hello())))),
        ("text that is not JSON", Frames::AfterHello(text_frame("{"))),
        ("an unknown message type", Frames::AfterHello(text_frame(r#"{"type":"rm -rf /"}"#))),
        ("output with invalid Base64", Frames::AfterHello(text_frame(&output("%%%")))),
        ("an empty output chunk", Frames::AfterHello(text_frame(&output("")))),
        ("an output skip of no chunks", Frames::AfterHello(text_frame(r#"{"type":"output_skipped","task":"t-x","seq":0,"chunks":0,"offset":600000,"bytes":0}"#))),
        ("an output skip past the largest offset", Frames::AfterHello(text_frame(&format!(r#"{{"type":"output_skipped","task":"t-x","seq":0,"chunks":1,"offset":{},"bytes":2}}"#, u64::MAX)))),
        ("output with a negative seq", Frames::AfterHello(text_frame(&output("eA==").replace("\"seq\":0", "\"seq\":-1")))),
        ("a binary frame", Frames::AfterHello(frame(0x82, b"\xde\xad\xbe\xef", true))),
        ("binary output from an agent that speaks protocol version 1", Frames::First(binary_from_v1)),
        ("binary output whose task id runs past the frame", Frames::AfterHello(frame(0x82, &overlong_task[..14], true))),
        ("a 600 KiB output chunk (limit 256 KiB)", Frames::AfterHello(frame(0x82, &oversized_output, true))),
        ("binary output of an unknown kind", Frames::AfterHello(frame(0x82, &[[7].as_slice(), &binary_output[1..]].concat(), true))),
        ("a 2 MiB text frame (limit 1 MiB)", Frames::AfterHello(frame(0x81, &vec![b'x'; 2 * MIB], true))),
        ("a frame header announcing 2^62 bytes", Frames::AfterHello(huge_header)),
        ("a 2 MiB message in 64 KiB fragments", Frames::AfterHello(fragments)),
        ("an unmasked frame", Frames::AfterHello(frame(0x81, br#"{"type":"heartbeat"}"#, false))),
        ("reserved opcode 0x3", Frames::AfterHello(frame(0x83, b"x", true))),
        ("reserved bits set", Frames::AfterHello(frame(0xf1, br#"{"type":"heartbeat"}"#, true))),
        ("a continuation with nothing to continue", Frames::AfterHello(frame(0x80, b"x", true))),
        ("a text frame of invalid UTF-8", Frames::AfterHello(frame(0x81, &[0xc3, 0x28, 0xff], true))),
        ("a ping of 200 bytes (limit 125)", Frames::AfterHello(frame(0x89, &[b'p'; 200], true))),
        ("random bytes instead of frames", Frames::AfterHello(b"\xde\xad\xbe\xef".repeat(16))),
    ];
    for (what, frames) in frames {
        count += 1;
        let mut problems = Vec::new();
        match raw_socket(app, &credential).await {
            Err(e) => problems.push(format!("cannot connect: {e}")),
            Ok(mut stream) => {
                let bytes = match frames {
                    Frames::First(bytes) => bytes,
                    Frames::AfterHello(bytes) => [text_frame(&text_of(hello())), bytes].concat(),
                };
                // The server may close before reading everything: a failed write is fine.
                let _ = stream.write_all(&bytes).await;
                match read_until_closed(&mut stream).await {
                    Ok(received) if what.contains("version 999") && !received.contains(r#""type":"refused""#) => {
                        problems.push(format!("closed without Refused: {}", truncate(&received, 200)))
                    }
                    Ok(_) => {}
                    Err(e) => problems.push(e),
                }
            }
        }
        if !fx.offline(id).await {
            problems.push("the instance is still shown online 5 s after its connection closed".into());
        }
        match fx.api(&format!("/instances/{id}")).await {
            Ok(instance) if facts(&instance) == baseline_facts => {}
            Ok(instance) => problems.push(format!(
                "the instance's facts changed to {}",
                truncate(&facts(&instance).to_string(), 300)
            )),
            Err(e) => problems.push(e),
        }
        if let Err(e) = fx.healthz().await {
            problems.push(format!("the server is not healthy afterwards: {e}"));
        }
        match fx.api("/invocations?page_size=1000").await {
            Ok(after) if after == baseline_invocations => {}
            Ok(after) => problems.push(format!("invocations changed: {}", truncate(&after.to_string(), 300))),
            Err(e) => problems.push(format!("the server is not healthy afterwards: {e}")),
        }
        match attach(app, &credential, hello()).await {
            Ok(mut socket) => {
                let _ = socket.close(None).await;
            }
            Err(e) => problems.push(format!("the agent cannot connect again: {e}")),
        }
        if !problems.is_empty() {
            failures.push(format!("- {what}: {}", problems.join("; ")));
        }
    }

    // A report about a task that is not the instance's: acknowledged as finished so the agent
    // forgets it, the connection stays, and nothing is stored.
    count += 1;
    let mut socket = attach(app, &credential, hello()).await.unwrap();
    let report = TaskStarted {
        task: fx.invoke_id.replace("t-", "t-0"),
    };
    socket.send(Message::text(text_of(report))).await.unwrap();
    // The fixture's pending task is delivered first.
    let answer = loop {
        match next_message(&mut socket).await {
            Some(ServerMessage::RunTask(_)) => continue,
            other => break other,
        }
    };
    if !matches!(&answer, Some(ServerMessage::Ack(ack)) if ack.finished) {
        failures.push(format!(
            "- a report about another task: answered {answer:?} instead of a finishing Ack"
        ));
    }
    let after = fx.api("/invocations?page_size=1000").await.unwrap();
    if after != baseline_invocations {
        failures.push("- a report about another task: invocations changed".into());
    }
    assert!(
        failures.is_empty(),
        "{} of {count} hostile agent-socket cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
