//! The real binary on a real socket: starts `lookergate-looker-sim --listen 127.0.0.1:0`,
//! reads the `listening on` line, and talks plain HTTP/1.1 to it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Kills the simulator when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> (Running, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lookergate-looker-sim"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lookergate-looker-sim");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (running, addr.parse().unwrap())
}

/// One request on a fresh connection; returns (status, body).
async fn http(addr: SocketAddr, request: String) -> (u16, String) {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

#[tokio::test]
async fn binary_listens_on_port_0_and_serves_login_and_user() {
    let (_sim, addr) = start(&["--listen", "127.0.0.1:0", "--token-ttl", "42"]);
    assert_ne!(addr.port(), 0);

    let form = "client_id=demo-analyst-id&client_secret=demo-analyst-secret";
    let (status, body) = http(
        addr,
        format!(
            "POST /api/4.0/login HTTP/1.1\r\nHost: looker\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let login: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(login["expires_in"], 42);
    let token = login["access_token"].as_str().unwrap();

    let (status, body) =
        http(addr, format!("GET /api/4.0/user HTTP/1.1\r\nHost: looker\r\nAuthorization: token {token}\r\nConnection: close\r\n\r\n"))
            .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""email":"svc-analyst@example.com""#),
        "{body}"
    );

    let (status, body) = http(
        addr,
        "GET /__sim/requests HTTP/1.1\r\nHost: looker\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    // The login is listed in /__sim/logins; only the API call is here.
    assert_eq!(seen.as_array().unwrap().len(), 1, "{seen}");
    assert_eq!(seen[0]["path"], "/api/4.0/user");
}

#[test]
fn bad_arguments_exit_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_lookergate-looker-sim"))
        .args(["--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage:"));
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn chunked_request_trailers_are_recorded_and_the_body_still_answered() {
    let (_sim, addr) = start(&["--listen", "127.0.0.1:0"]);
    let form = "client_id=demo-analyst-id&client_secret=demo-analyst-secret";
    let (status, body) = http(
        addr,
        format!(
            "POST /api/4.0/login HTTP/1.1\r\nHost: looker\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let login: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = login["access_token"].as_str().unwrap();

    let query = r#"{"model":"thelook","view":"orders","fields":["orders.count"]}"#;
    let (first, second) = query.split_at(20);
    let (status, body) = http(
        addr,
        format!(
            "POST /api/4.0/queries/run/json HTTP/1.1\r\nHost: looker\r\nAuthorization: token {token}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\nX-Client-Trailer: sneaky\r\nX-Other: 1\r\n\r\n",
            first.len(),
            second.len()
        ),
    )
    .await;
    assert_eq!(status, 200, "the chunked query must still run: {body}");
    let (status, body) = http(
        addr,
        format!("GET /api/4.0/user HTTP/1.1\r\nHost: looker\r\nAuthorization: token {token}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = http(
        addr,
        "GET /__sim/requests HTTP/1.1\r\nHost: looker\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen.as_array().unwrap().len(), 2, "{seen}");
    assert_eq!(
        seen[0]["trailers"],
        serde_json::json!({"x-client-trailer": "sneaky", "x-other": "1"}),
        "{seen}"
    );
    assert_eq!(
        seen[1]["trailers"],
        serde_json::json!({}),
        "a request without trailers records none: {seen}"
    );
}
