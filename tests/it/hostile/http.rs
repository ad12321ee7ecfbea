//! The HTTP layer below the API and the console: too many or too large headers, a NUL byte in
//! a header, and a client that trickles its headers (slow loris).

use super::truncate;
use crate::helpers::TestApp;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sends `request` on a fresh connection and reads the answer until the server closes it.
async fn raw_http(address: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    // The server may answer and close before reading everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn oversize_headers_and_slow_clients_are_cut_off() {
    let app = TestApp::spawn_with(&["--header-timeout-secs", "1"]).await;
    let address = app.url.trim_start_matches("http://").to_string();

    let mut many = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_string();
    for n in 0..200 {
        many.push_str(&format!("X-Hostile-{n}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw_http(&address, many.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "200 headers: {}",
        truncate(&answer, 200)
    );

    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let answer = raw_http(&address, big.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "a 512 KiB header: {}",
        truncate(&answer, 200)
    );

    let nul = raw_http(
        &address,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        nul.starts_with("HTTP/1.1 400"),
        "a NUL byte in a header: {}",
        truncate(&nul, 200)
    );

    // Slow loris: a client trickling its headers is cut off after the header deadline (1 s here).
    let started = Instant::now();
    let stream = TcpStream::connect(&address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut received = Vec::new();
    let cut = {
        let read = reader.read_to_end(&mut received);
        tokio::pin!(read);
        let mut n = 0;
        loop {
            tokio::select! {
                _ = &mut read => break started.elapsed(),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    n += 1;
                    assert!(started.elapsed() < Duration::from_secs(10), "a slow client is still connected after 10 s");
                    if writer.write_all(format!("X-Slow-{n}: a\r\n").as_bytes()).await.is_err() {
                        break started.elapsed();
                    }
                }
            }
        }
    };
    assert!(
        cut < Duration::from_secs(8),
        "the slow client was cut off only after {cut:?}"
    );
    let received = String::from_utf8_lossy(&received);
    assert!(
        !received.starts_with("HTTP/1.1 200"),
        "the slow client got an answer: {received}"
    );

    let health = reqwest::get(format!("{}/healthz", app.url)).await.unwrap();
    assert_eq!(health.status(), 200, "healthy after oversize headers and a slow client");
    assert!(app.client.instances("").await.is_ok(), "a normal request still works");
}
