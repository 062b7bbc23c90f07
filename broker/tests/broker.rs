//! Real-socket tests: the broker and the Looker simulator on port 0, talking HTTP.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine as _;
use lookergate_broker::config::{BrokerConfig, DEMO_CONFIG};
use lookergate_looker_sim::SimState;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const GATEWAY: &str = "Bearer demo-gateway-secret";

async fn bind() -> Result<(TcpListener, SocketAddr), std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// The Looker simulator with demo data on a free port.
struct Sim {
    url: String,
    state: SimState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sim {
    async fn start() -> Result<Sim, std::io::Error> {
        Sim::start_with(SimState::demo()).await
    }

    async fn start_with(state: SimState) -> Result<Sim, std::io::Error> {
        let (listener, addr) = bind().await?;
        let app = lookergate_looker_sim::app(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sim {
            url: format!("http://{addr}"),
            state,
            task,
        })
    }

    async fn logins(&self) -> Result<Vec<Value>, reqwest::Error> {
        reqwest::get(format!("{}/__sim/logins", self.url))
            .await?
            .json()
            .await
    }

    /// Login attempts made with `client_id`.
    async fn logins_of(&self, client_id: &str) -> Result<usize, reqwest::Error> {
        Ok(self
            .logins()
            .await?
            .iter()
            .filter(|l| l["client_id"] == client_id)
            .count())
    }

    async fn fault(&self, fault: Value) -> Result<(), reqwest::Error> {
        reqwest::Client::new()
            .post(format!("{}/__sim/faults", self.url))
            .json(&fault)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Logs in to the simulator directly; the status code tells whether the key works.
    async fn login_status(&self, client_id: &str, secret: &str) -> Result<u16, reqwest::Error> {
        let resp = reqwest::Client::new()
            .post(format!("{}/api/4.0/login", self.url))
            .form(&[("client_id", client_id), ("client_secret", secret)])
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }

    async fn me(&self, token: &str) -> Result<Value, reqwest::Error> {
        reqwest::Client::new()
            .get(format!("{}/api/4.0/user", self.url))
            .header("authorization", format!("token {token}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }
}

/// Demo config pointing at `looker_url`, with `edit` applied to the TOML text.
fn config_text(looker_url: &str, edit: impl Fn(String) -> String) -> String {
    edit(
        DEMO_CONFIG
            .replace("http://127.0.0.1:10080", looker_url)
            .replace("127.0.0.1:10090", "127.0.0.1:0"),
    )
}

/// A running broker on a free port.
struct Broker {
    url: String,
    state: lookergate_broker::AppState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Broker {
    async fn start(
        text: &str,
        path: Option<PathBuf>,
    ) -> Result<Broker, Box<dyn std::error::Error>> {
        let config = BrokerConfig::parse(text)?;
        let state = lookergate_broker::state(config, path)?;
        let (listener, addr) = bind().await?;
        let serving = state.clone();
        let task = tokio::spawn(async move {
            let _ = lookergate_broker::serve(listener, serving, std::future::pending()).await;
        });
        Ok(Broker {
            url: format!("http://{addr}"),
            state,
            task,
        })
    }

    async fn with_sim(sim: &Sim) -> Result<Broker, Box<dyn std::error::Error>> {
        Broker::start(&config_text(&sim.url, |t| t), None).await
    }

    async fn token(&self, identity: Value) -> Result<(u16, Value), reqwest::Error> {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/token", self.url))
            .header("authorization", GATEWAY)
            .json(&json!({"identity": identity, "subject": "alice", "request_id": "req-1"}))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await?))
    }

    async fn get(&self, path: &str) -> Result<(u16, String), reqwest::Error> {
        self.get_as(path, None).await
    }

    /// `GET path`, with `Authorization: auth` when given.
    async fn get_as(
        &self,
        path: &str,
        auth: Option<&str>,
    ) -> Result<(u16, String), reqwest::Error> {
        let mut req = reqwest::Client::new().get(format!("{}{path}", self.url));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }
}

fn role(name: &str) -> Value {
    json!({"kind": "role", "name": name})
}

fn user(email: &str) -> Value {
    json!({"kind": "user", "credential_type": "email", "credential_id": email})
}

/// A fresh directory for config files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<TempDir, std::io::Error> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "lookergate-broker-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf, std::io::Error> {
        let path = self.0.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` until it is true or `within` has passed.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// An address nothing listens on.
async fn dead_url() -> Result<String, std::io::Error> {
    let (listener, addr) = bind().await?;
    drop(listener);
    Ok(format!("http://{addr}"))
}

// ---------------------------------------------------------------- part A

#[tokio::test]
async fn role_token_is_issued_then_served_from_cache() -> TestResult {
    let sim = Sim::start().await?;
    let broker = Broker::with_sim(&sim).await?;
    let (status, first) = broker.token(role("analyst")).await?;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["token_type"], "token");
    let expires_in = first["expires_in"].as_u64().unwrap_or(0);
    assert!(expires_in > 60 && expires_in <= 3600, "{first}");
    let token = first["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        sim.me(&token).await?["id"].to_string().trim_matches('"'),
        "101"
    );

    let (status, second) = broker.token(role("analyst")).await?;
    assert_eq!(status, 200);
    assert_eq!(second["access_token"], first["access_token"]);
    assert_eq!(sim.logins_of("demo-analyst-id").await?, 1);

    let (_, metrics) = broker.get("/metrics").await?;
    assert!(
        metrics.contains("lookergate_broker_cache_hits_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lookergate_broker_cache_misses_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lookergate_broker_looker_logins_total{kind=\"role\",result=\"ok\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn hundred_concurrent_requests_for_one_role_make_one_looker_login() -> TestResult {
    let sim = Sim::start().await?;
    // Slow logins widen the window in which requests pile up behind the first one.
    sim.fault(json!({"login_delay_ms": 200, "count": 1}))
        .await?;
    let broker = Arc::new(Broker::with_sim(&sim).await?);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let broker = broker.clone();
        tasks.spawn(async move { broker.token(role("viewer")).await });
    }
    let mut tokens = std::collections::HashSet::new();
    while let Some(done) = tasks.join_next().await {
        let (status, body) = done??;
        assert_eq!(status, 200, "{body}");
        tokens.insert(body["access_token"].to_string());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(sim.logins_of("demo-viewer-id").await?, 1);
    Ok(())
}

#[tokio::test]
async fn wrong_gateway_credential_is_401() -> TestResult {
    let sim = Sim::start().await?;
    let broker = Broker::with_sim(&sim).await?;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/token", broker.url))
        .header("authorization", "Bearer not-the-gateway-secret")
        .json(&json!({"identity": role("analyst")}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(sim.logins().await?.len(), 0);
    Ok(())
}

#[tokio::test]
async fn wrong_role_credentials_are_502_bad_credentials() -> TestResult {
    let sim = Sim::start().await?;
    let text = config_text(&sim.url, |t| {
        t.replace("demo-analyst-secret", "wrong-secret")
    });
    let broker = Broker::start(&text, None).await?;
    let (status, body) = broker.token(role("analyst")).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("bad_credentials")),
        "{body}"
    );
    assert!(!body.to_string().contains("wrong-secret"));
    Ok(())
}

#[tokio::test]
async fn looker_down_is_503_looker_unavailable_quickly() -> TestResult {
    let text = config_text(&dead_url().await?, |t| t);
    let broker = Broker::start(&text, None).await?;
    let started = Instant::now();
    let (status, body) = broker.token(role("analyst")).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("looker_unavailable")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn unknown_role_is_404() -> TestResult {
    let sim = Sim::start().await?;
    let broker = Broker::with_sim(&sim).await?;
    let (status, body) = broker.token(role("superuser")).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_role")),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn the_embed_role_gets_no_gateway_token() -> TestResult {
    let sim = embed_sim().await?;
    let broker = Broker::with_sim(&sim).await?;
    let (status, body) = broker.token(role("embed-admin")).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_role")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("embed.role"),
        "{body}"
    );
    assert_eq!(sim.logins_of("demo-admin-id").await?, 0, "no login for it");
    Ok(())
}

/// An admin API token straight from the simulator (an admin acting at Looker).
async fn sim_admin_token(sim: &Sim) -> Result<String, Box<dyn std::error::Error>> {
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/api/4.0/login", sim.url))
        .form(&[
            ("client_id", "demo-admin-id"),
            ("client_secret", "demo-admin-secret"),
        ])
        .send()
        .await?
        .json()
        .await?;
    Ok(answer["access_token"]
        .as_str()
        .ok_or("no token")?
        .to_owned())
}

#[tokio::test]
async fn invalidate_makes_the_next_request_log_in_again() -> TestResult {
    let sim = Sim::start().await?;
    let broker = Broker::with_sim(&sim).await?;
    let (_, first) = broker.token(role("analyst")).await?;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/token/invalidate", broker.url))
        .header("authorization", GATEWAY)
        .json(&json!({"identity": role("analyst")}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 204);
    let (status, second) = broker.token(role("analyst")).await?;
    assert_eq!(status, 200);
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(sim.logins_of("demo-analyst-id").await?, 2);
    Ok(())
}

#[tokio::test]
async fn readyz_is_200_when_every_role_logs_in_and_503_otherwise() -> TestResult {
    let sim = Sim::start().await?;
    let broker = Broker::with_sim(&sim).await?;
    assert_eq!(broker.get("/healthz").await?.0, 200);
    let (status, body) = broker.get("/readyz").await?;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body)?),
        (200, json!({"status": "ready"}))
    );
    let (status, body) = broker.get_as("/readyz", Some(GATEWAY)).await?;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body)?),
        (
            200,
            json!({"status": "ready", "checks": {"role:analyst": "ok", "role:viewer": "ok", "role:embed-admin": "ok", "sudo": "ok"}})
        )
    );

    let text = config_text(&sim.url, |t| {
        t.replace("demo-viewer-secret", "wrong-secret")
    });
    let broken = Broker::start(&text, None).await?;
    let (status, body) = broken.get_as("/readyz", Some(GATEWAY)).await?;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("role:viewer") && body.contains("bad_credentials"),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn readyz_without_a_gateway_credential_shows_no_role_and_no_looker_error() -> TestResult {
    let sim = Sim::start().await?;
    // Every login fails with a 500 (retries included): an error for /readyz to leak.
    sim.fault(json!({"login_status": 500, "count": 1000}))
        .await?;
    let broker = Broker::with_sim(&sim).await?;
    for auth in [None, Some("Bearer wrong-gateway-secret")] {
        let (status, body) = broker.get_as("/readyz", auth).await?;
        assert_eq!(
            (status, serde_json::from_str::<Value>(&body)?),
            (503, json!({"status": "not_ready"})),
            "{auth:?}"
        );
    }

    let (status, body) = broker.get_as("/readyz", Some(GATEWAY)).await?;
    assert_eq!(status, 503, "{body}");
    let details: Value = serde_json::from_str(&body)?;
    for check in ["role:analyst", "role:viewer", "sudo"] {
        assert_eq!(
            details["checks"][check]["error"], "looker_unavailable",
            "{body}"
        );
        assert!(
            details["checks"][check]["message"]
                .as_str()
                .is_some_and(|m| m.contains("500")),
            "{body}"
        );
    }
    assert!(!body.contains("-secret"), "{body}");
    Ok(())
}

#[tokio::test]
async fn binary_prints_listening_line_and_audits_without_secrets() -> TestResult {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let sim = Sim::start().await?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookergate-broker"))
        .args(["--listen", "127.0.0.1:0"])
        .env("LOOKERGATE_BROKER_LOOKER_URL", &sim.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await??;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or(format!("first line: {line:?}"))?;
    let addr: SocketAddr = addr.parse()?;

    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/token"))
        .header("authorization", GATEWAY)
        .json(&json!({"identity": role("analyst"), "subject": "alice", "request_id": "req-42"}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await?;
    let token = body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    child.start_kill()?;
    let _ = child.wait().await?;
    let mut logs = String::new();
    child
        .stderr
        .take()
        .ok_or("no stderr")?
        .read_to_string(&mut logs)
        .await?;
    let audit = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["event"] == "token_issued")
        .ok_or(format!("no audit line in {logs}"))?;
    assert_eq!(audit["subject"], "alice");
    assert_eq!(audit["request_id"], "req-42");
    let identity: Value = serde_json::from_str(audit["identity"].as_str().unwrap_or_default())?;
    assert_eq!(identity, role("analyst"));
    assert_eq!(audit["token_fp"].as_str().map(str::len), Some(8));
    assert!(audit["expires_at"].is_u64());
    for secret in [
        token.as_str(),
        "demo-analyst-secret",
        "demo-admin-secret",
        "demo-gateway-secret",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into logs:\n{logs}");
    }
    Ok(())
}

// ---------------------------------------------------------------- part B: per-user tokens

#[tokio::test]
async fn user_token_for_carol_is_a_session_of_carol() -> TestResult {
    let sim = Sim::start().await?;
    let broker = Broker::with_sim(&sim).await?;
    let (status, body) = broker.token(user("carol@example.com")).await?;
    assert_eq!(status, 200, "{body}");
    let me = sim
        .me(body["access_token"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(me["id"].to_string().trim_matches('"'), "203", "{me}");

    // Cached: the same token, no second sudo login.
    let (_, again) = broker.token(user("Carol@Example.com")).await?;
    assert_eq!(again["access_token"], body["access_token"]);
    let sudo_logins = sim
        .logins()
        .await?
        .iter()
        .filter(|l| !l["sudo_user_id"].is_null())
        .count();
    assert_eq!(sudo_logins, 1);
    Ok(())
}

#[tokio::test]
async fn unknown_user_is_403_no_looker_user() -> TestResult {
    let sim = Sim::start().await?;
    let broker = Broker::with_sim(&sim).await?;
    let (status, body) = broker.token(user("mallory@example.com")).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("no_looker_user")),
        "{body}"
    );
    Ok(())
}

// ---------------------------------------------------------------- part B: Looker faults

#[tokio::test]
async fn login_5xx_is_retried_until_it_succeeds() -> TestResult {
    let sim = Sim::start().await?;
    sim.fault(json!({"login_status": 500, "count": 2})).await?;
    let broker = Broker::with_sim(&sim).await?;
    let (status, body) = broker.token(role("analyst")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.logins_of("demo-analyst-id").await?, 3);
    Ok(())
}

#[tokio::test]
async fn persistent_5xx_is_503_within_the_retry_budget() -> TestResult {
    let sim = Sim::start().await?;
    sim.fault(json!({"login_status": 503, "count": 100}))
        .await?;
    let broker = Broker::with_sim(&sim).await?;
    let started = Instant::now();
    let (status, body) = broker.token(role("analyst")).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("looker_unavailable")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn slow_looker_times_out_as_looker_unavailable() -> TestResult {
    let sim = Sim::start().await?;
    sim.fault(json!({"login_delay_ms": 5000, "count": 100}))
        .await?;
    let broker = Broker::with_sim(&sim).await?;
    let started = Instant::now();
    let (status, body) = broker.token(role("analyst")).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("looker_unavailable")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------- part B: reload

#[tokio::test]
async fn changed_config_file_is_picked_up_and_invalid_one_ignored() -> TestResult {
    let sim = Sim::start().await?;
    let dir = TempDir::new("reload")?;
    let fast = |t: String| {
        t.replace(
            "retry_budget = \"1500ms\"",
            "retry_budget = \"1500ms\"\nreload_poll = \"100ms\"",
        )
    };
    let path = dir.write("broker.toml", &config_text(&sim.url, fast))?;
    let broker = Broker::start(&std::fs::read_to_string(&path)?, Some(path.clone())).await?;
    assert_eq!(broker.token(role("ops")).await?.0, 404);

    let with_ops = |t: String| {
        fast(t) + "\n[roles.ops]\nclient_id = \"demo-viewer-id\"\nclient_secret = \"demo-viewer-secret\"\n"
    };
    std::fs::write(&path, config_text(&sim.url, with_ops))?;
    assert!(
        eventually(Duration::from_secs(5), || async {
            matches!(broker.token(role("ops")).await, Ok((200, _)))
        })
        .await
    );

    // Broken file: the previous config (with `ops`) stays.
    std::fs::write(&path, "looker_url = 12\n")?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(broker.token(role("ops")).await?.0, 200);
    let (_, metrics) = broker.get("/metrics").await?;
    assert!(
        metrics.contains("lookergate_broker_config_reloads_total{result=\"invalid\"}"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_the_config() -> TestResult {
    let sim = Sim::start().await?;
    let dir = TempDir::new("sighup")?;
    // Slow polling, so only the signal can explain the reload.
    let slow = |t: String| {
        t.replace(
            "retry_budget = \"1500ms\"",
            "retry_budget = \"1500ms\"\nreload_poll = \"1h\"",
        )
    };
    let path = dir.write("broker.toml", &config_text(&sim.url, slow))?;
    let broker = Broker::start(&std::fs::read_to_string(&path)?, Some(path.clone())).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let without_viewer = |t: String| {
        let t = slow(t);
        let start = t.find("[roles.viewer]").unwrap_or(t.len());
        let end = t.find("[sudo]").unwrap_or(t.len());
        format!(
            "{}{}",
            t.get(..start).unwrap_or_default(),
            t.get(end..).unwrap_or_default()
        )
    };
    std::fs::write(&path, config_text(&sim.url, without_viewer))?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()?;
    assert!(status.success());
    assert!(
        eventually(Duration::from_secs(5), || async {
            matches!(broker.token(role("viewer")).await, Ok((404, _)))
        })
        .await
    );
    Ok(())
}

// ---------------------------------------------------------------- part B: rotation

fn rotation_config(sim: &Sim) -> String {
    config_text(&sim.url, |t| t)
}

#[tokio::test]
async fn rotate_replaces_the_key_in_the_file_and_deletes_the_old_key() -> TestResult {
    let sim = Sim::start().await?;
    let dir = TempDir::new("rotate")?;
    let path = dir.write("broker.toml", &rotation_config(&sim))?;
    let report = lookergate_broker::rotate::rotate_role(&path, "analyst").await?;
    assert!(report.old_key_deleted, "{report:?}");

    let config = BrokerConfig::load(&path)?;
    let creds = &config.roles.get("analyst").ok_or("role")?.credentials;
    assert_ne!(creds.client_id, "demo-analyst-id");
    assert_eq!(
        sim.login_status(&creds.client_id, creds.client_secret.expose())
            .await?,
        200
    );
    assert_eq!(
        sim.login_status("demo-analyst-id", "demo-analyst-secret")
            .await?,
        404
    );
    let backup = std::fs::read_to_string(backup_of(&path))?;
    assert!(backup.contains("demo-analyst-secret"));
    // The rest of the file is untouched.
    assert_eq!(
        config
            .roles
            .get("viewer")
            .map(|r| r.credentials.client_id.as_str()),
        Some("demo-viewer-id")
    );
    Ok(())
}

/// A role whose secret came from a file is rewritten with the new secret inline and no
/// file source (two sources would not load), and the broker logs in with the new key.
#[tokio::test]
async fn rotating_a_role_whose_secret_is_a_file_writes_the_new_secret_inline() -> TestResult {
    let sim = Sim::start().await?;
    let dir = TempDir::new("rotate-file")?;
    let secret = dir.write("analyst-secret", "demo-analyst-secret\n")?;
    let text = config_text(&sim.url, |t| {
        t.replacen(
            "client_secret = \"demo-analyst-secret\"",
            &format!("client_secret_file = {:?}", secret.display().to_string()),
            1,
        )
    });
    assert!(
        text.contains("client_secret_file"),
        "the demo config changed"
    );
    let path = dir.write("broker.toml", &text)?;
    assert_eq!(
        BrokerConfig::load(&path)?
            .roles
            .get("analyst")
            .ok_or("role")?
            .credentials
            .client_secret
            .expose(),
        "demo-analyst-secret"
    );
    let report = lookergate_broker::rotate::rotate_role(&path, "analyst").await?;
    assert!(report.old_key_deleted, "{report:?}");
    let rewritten = std::fs::read_to_string(&path)?;
    assert!(!rewritten.contains("client_secret_file"), "{rewritten}");
    let config = BrokerConfig::load(&path)?;
    let creds = &config.roles.get("analyst").ok_or("role")?.credentials;
    assert_ne!(creds.client_id, "demo-analyst-id");
    assert_eq!(
        sim.login_status(&creds.client_id, creds.client_secret.expose())
            .await?,
        200
    );
    Ok(())
}

fn backup_of(path: &Path) -> PathBuf {
    path.with_file_name("broker.toml.bak")
}

#[tokio::test]
async fn rotation_failing_midway_leaves_the_old_key_working() -> TestResult {
    let sim = Sim::start().await?;
    let dir = TempDir::new("rotate-fail")?;
    let text = rotation_config(&sim);
    let path = dir.write("broker.toml", &text)?;
    // The temp file's name is taken by a directory: writing the new config fails
    // after the new key was created and proven.
    std::fs::create_dir(dir.0.join(".broker.toml.rotate.tmp"))?;
    let result = lookergate_broker::rotate::rotate_role(&path, "analyst").await;
    assert!(
        matches!(
            result,
            Err(lookergate_broker::rotate::RotateError::Write(_))
        ),
        "{result:?}"
    );
    assert_eq!(std::fs::read_to_string(&path)?, text);
    assert_eq!(
        sim.login_status("demo-analyst-id", "demo-analyst-secret")
            .await?,
        200
    );
    // The new key was created, proven, then deleted again: exactly one other client id logged in.
    let others: Vec<Value> = sim
        .logins()
        .await?
        .into_iter()
        .filter(|l| {
            l["client_id"].is_string()
                && l["client_id"] != "demo-analyst-id"
                && l["client_id"] != "demo-admin-id"
        })
        .collect();
    assert_eq!(others.len(), 1, "{others:?}");
    let new_id = others
        .first()
        .and_then(|l| l["client_id"].as_str())
        .unwrap_or_default()
        .to_string();
    assert_eq!(sim.login_status(&new_id, "anything").await?, 404);
    Ok(())
}

#[tokio::test]
async fn scheduled_rotation_runs_inside_the_broker_and_new_key_is_used() -> TestResult {
    let sim = Sim::start().await?;
    let dir = TempDir::new("rotate-every")?;
    let text = config_text(&sim.url, |t| {
        t.replace(
            "user_id = \"102\"",
            "user_id = \"102\"\nrotate_every = \"7d\"",
        )
    });
    let path = dir.write("broker.toml", &text)?;
    let broker = Broker::start(&text, Some(path.clone())).await?;
    // Never rotated by us (no rotated_at): due at once.
    let rotated = eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&path)
            .map(|t| t.contains("rotated_at"))
            .unwrap_or(false)
    })
    .await;
    assert!(rotated);
    let config = BrokerConfig::load(&path)?;
    let new_id = config
        .roles
        .get("viewer")
        .ok_or("role")?
        .credentials
        .client_id
        .clone();
    assert_ne!(new_id, "demo-viewer-id");
    assert!(
        eventually(Duration::from_secs(5), || async {
            broker.state.runtime().config == config
        })
        .await
    );
    let (status, body) = broker.token(role("viewer")).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        sim.logins_of(&new_id).await? >= 2,
        "proof login and the broker's login"
    );
    assert_eq!(
        sim.login_status("demo-viewer-id", "demo-viewer-secret")
            .await?,
        404
    );
    Ok(())
}

// ---------------------------------------------------------------- part C: containers and Kubernetes

/// A free port on 127.0.0.1 (bound, then released).
async fn free_addr() -> Result<SocketAddr, std::io::Error> {
    let (listener, addr) = bind().await?;
    drop(listener);
    Ok(addr)
}

/// Runs the broker binary and returns the address of its `listening on` line.
async fn listening_address(
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookergate-broker"));
    command
        .args(args)
        .env_remove("LOOKERGATE_BROKER_LISTEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await??;
    child.start_kill()?;
    let _ = child.wait().await;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or(format!("first line: {line:?}"))?;
    Ok(addr.parse()?)
}

#[tokio::test]
async fn listen_address_is_the_flag_else_the_environment_else_the_config() -> TestResult {
    let sim = Sim::start().await?;
    let (from_config, from_env, from_flag) =
        (free_addr().await?, free_addr().await?, free_addr().await?);
    let dir = TempDir::new("listen")?;
    let text = config_text(&sim.url, |t| {
        t.replace("127.0.0.1:0", &from_config.to_string())
    });
    let path = dir.write("broker.toml", &text)?;
    let path = path.to_str().ok_or("path")?;
    let env_listen = from_env.to_string();
    let flag_listen = from_flag.to_string();
    // The container case: `--config` replaces the image's CMD, the image's ENV still applies.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], SocketAddr);
    let cases: [Case; 3] = [
        (&["--config", path], &[], from_config),
        (
            &["--config", path],
            &[("LOOKERGATE_BROKER_LISTEN", &env_listen)],
            from_env,
        ),
        (
            &["--config", path, "--listen", &flag_listen],
            &[("LOOKERGATE_BROKER_LISTEN", &env_listen)],
            from_flag,
        ),
    ];
    for (args, env, want) in cases {
        assert_eq!(
            listening_address(args, env).await?,
            want,
            "{args:?} {env:?}"
        );
    }
    Ok(())
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    if !out.status.success() {
        return Err(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// A test CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it
/// (`looker.pem`, `looker.key`), made at run time.
fn private_ca(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=lookergate test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    )?;
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "looker.key",
                "-out",
                "looker.csr",
                "-subj",
                "/CN=looker",
            ],
        ]
        .concat(),
    )?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "looker.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "looker.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    )
}

/// A Looker stand-in over TLS (certificate from `private_ca`) that answers every
/// `POST /api/4.0/login` with a token; counts the requests it answered.
async fn tls_looker(
    dir: &Path,
) -> Result<(String, Arc<std::sync::atomic::AtomicUsize>), Box<dyn std::error::Error>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs =
        CertificateDer::pem_file_iter(dir.join("looker.pem"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("looker.key"))?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let (listener, addr) = bind().await?;
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // the client refused our certificate
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers and the small form body; the client sends them in one go.
                while !String::from_utf8_lossy(&request).contains("client_secret") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if !request.starts_with(b"POST /api/4.0/login ") {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"access_token":"private-ca-token","token_type":"Bearer","expires_in":3600}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok((format!("https://{addr}"), answered))
}

#[tokio::test]
async fn looker_behind_a_private_ca_is_trusted_only_with_looker_ca_file() -> TestResult {
    use std::sync::atomic::Ordering;
    let dir = TempDir::new("private-ca")?;
    private_ca(&dir.0)?;
    let (url, answered) = tls_looker(&dir.0).await?;
    let ca = dir.0.join("ca.pem");
    let without = config_text(&url, |t| {
        t.replace("retry_budget = \"1500ms\"", "retry_budget = \"1s\"")
    });
    let with = without.replace(
        "gateway_credentials",
        &format!(
            "looker_ca_file = {:?}\ngateway_credentials",
            ca.display().to_string()
        ),
    );

    let broker = Broker::start(&without, None).await?;
    let (status, body) = broker.token(role("analyst")).await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(answered.load(Ordering::SeqCst), 0, "no login got past TLS");

    let broker = Broker::start(&with, None).await?;
    let (status, body) = broker.token(role("analyst")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], "private-ca-token");
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn unreadable_or_invalid_looker_ca_file_is_a_config_error_naming_the_field() -> TestResult {
    let dir = TempDir::new("bad-ca")?;
    let garbage = dir.write("garbage.pem", "not a certificate\n")?;
    let broken = dir.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )?;
    for path in [dir.0.join("missing.pem"), garbage, broken] {
        let text = config_text("https://looker.example", |t| {
            t.replace(
                "gateway_credentials",
                &format!(
                    "looker_ca_file = {:?}\ngateway_credentials",
                    path.display().to_string()
                ),
            )
        });
        let err = BrokerConfig::parse(&text)
            .err()
            .ok_or(format!("{} accepted", path.display()))?;
        assert!(err.to_string().starts_with("looker_ca_file: "), "{err}");
    }
    Ok(())
}

/// The demo config with a read-only layout: rotation writes `state/rotated.toml`.
fn store_config(sim: &Sim, store: &Path) -> String {
    config_text(&sim.url, |t| {
        t.replace(
            "gateway_credentials",
            &format!(
                "rotated_credentials_file = {:?}\ngateway_credentials",
                store.display().to_string()
            ),
        )
    })
}

#[tokio::test]
async fn rotation_writes_the_store_not_the_config_and_the_store_wins_until_the_config_changes(
) -> TestResult {
    let sim = Sim::start().await?;
    let dir = TempDir::new("rotate-store")?;
    std::fs::create_dir(dir.0.join("state"))?;
    let store = dir.0.join("state/rotated.toml");
    let text = store_config(&sim, &store);
    let path = dir.write("broker.toml", &text)?;

    let first = lookergate_broker::rotate::rotate_role(&path, "analyst").await?;
    assert!(first.old_key_deleted, "{first:?}");
    assert_eq!(
        std::fs::read_to_string(&path)?,
        text,
        "the config is never written"
    );
    assert!(!backup_of(&path).exists());
    let config = BrokerConfig::load(&path)?;
    let creds = &config.roles.get("analyst").ok_or("role")?.credentials;
    assert_eq!(creds.client_id, first.new_client_id);
    assert_eq!(
        sim.login_status(&creds.client_id, creds.client_secret.expose())
            .await?,
        200
    );
    assert_eq!(
        sim.login_status("demo-analyst-id", "demo-analyst-secret")
            .await?,
        404
    );

    // A second rotation starts from the stored key and deletes it.
    let second = lookergate_broker::rotate::rotate_role(&path, "analyst").await?;
    assert!(second.old_key_deleted, "{second:?}");
    assert_eq!(second.old_client_id, first.new_client_id);
    let config = BrokerConfig::load(&path)?;
    let role_cfg = config.roles.get("analyst").ok_or("role")?;
    assert_eq!(role_cfg.credentials.client_id, second.new_client_id);
    assert_eq!(
        role_cfg.api3_id.as_deref(),
        Some(second.new_key_id.as_str())
    );
    assert!(role_cfg.rotated_at.is_some());
    let stored = std::fs::read_to_string(&store)?;
    assert!(
        stored.contains("replaces_client_id = \"demo-analyst-id\""),
        "{stored}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&store)?.permissions().mode() & 0o777,
            0o600
        );
    }

    // An operator copies the stored key into the config (the Secret): still in force, and
    // the next rotation replaces it, so the store keeps winning over the copied key.
    let secret = std::fs::read_to_string(&store)?
        .lines()
        .find_map(|l| l.strip_prefix("client_secret = "))
        .map(|v| v.trim_matches('"').to_string())
        .ok_or("no client_secret in the store")?;
    let copied = text
        .replace("demo-analyst-id", &second.new_client_id)
        .replace("demo-analyst-secret", &secret);
    std::fs::write(&path, &copied)?;
    let config = BrokerConfig::load(&path)?;
    assert_eq!(
        config
            .roles
            .get("analyst")
            .map(|r| r.credentials.client_id.as_str()),
        Some(second.new_client_id.as_str())
    );
    let third = lookergate_broker::rotate::rotate_role(&path, "analyst").await?;
    assert!(third.old_key_deleted, "{third:?}");
    let config = BrokerConfig::load(&path)?;
    let creds = &config.roles.get("analyst").ok_or("role")?.credentials;
    assert_eq!(creds.client_id, third.new_client_id);
    assert_eq!(
        sim.login_status(&creds.client_id, creds.client_secret.expose())
            .await?,
        200
    );

    // An operator puts another key in the config (a new Secret): it is newer than the store's.
    let edited = text.replace("demo-analyst-id", "operator-new-id");
    std::fs::write(&path, &edited)?;
    let config = BrokerConfig::load(&path)?;
    assert_eq!(
        config
            .roles
            .get("analyst")
            .map(|r| r.credentials.client_id.as_str()),
        Some("operator-new-id")
    );
    // Other roles are untouched throughout.
    assert_eq!(
        config
            .roles
            .get("viewer")
            .map(|r| r.credentials.client_id.as_str()),
        Some("demo-viewer-id")
    );
    Ok(())
}

#[tokio::test]
async fn failed_store_write_deletes_the_new_key_and_keeps_the_old_one() -> TestResult {
    let sim = Sim::start().await?;
    let dir = TempDir::new("rotate-store-fail")?;
    let store = dir.0.join("rotated.toml");
    let text = store_config(&sim, &store);
    let path = dir.write("broker.toml", &text)?;
    // The store's temp file name is taken by a directory: the durable write fails after
    // the new key was created and proven.
    std::fs::create_dir(dir.0.join(".rotated.toml.rotate.tmp"))?;
    let result = lookergate_broker::rotate::rotate_role(&path, "analyst").await;
    assert!(
        matches!(
            result,
            Err(lookergate_broker::rotate::RotateError::Write(_))
        ),
        "{result:?}"
    );
    assert!(!store.exists());
    assert_eq!(
        sim.login_status("demo-analyst-id", "demo-analyst-secret")
            .await?,
        200,
        "the old key was not deleted"
    );
    let config = BrokerConfig::load(&path)?;
    assert_eq!(
        config
            .roles
            .get("analyst")
            .map(|r| r.credentials.client_id.as_str()),
        Some("demo-analyst-id")
    );
    let created: Vec<String> = sim
        .logins()
        .await?
        .iter()
        .filter_map(|l| l["client_id"].as_str())
        .filter(|id| !id.starts_with("demo-"))
        .map(String::from)
        .collect();
    assert_eq!(
        created.len(),
        1,
        "one proof login of the new key: {created:?}"
    );
    for id in created {
        assert_eq!(
            sim.login_status(&id, "anything").await?,
            404,
            "{id} deleted again"
        );
    }
    Ok(())
}

#[tokio::test]
async fn scheduled_rotation_with_a_store_is_used_by_the_running_broker() -> TestResult {
    let sim = Sim::start().await?;
    let dir = TempDir::new("rotate-store-every")?;
    let store = dir.0.join("rotated.toml");
    let text = store_config(&sim, &store).replace(
        "user_id = \"102\"",
        "user_id = \"102\"\nrotate_every = \"7d\"",
    );
    let path = dir.write("broker.toml", &text)?;
    let broker = Broker::start(&text, Some(path.clone())).await?;
    let rotated = eventually(Duration::from_secs(10), || async {
        broker
            .state
            .runtime()
            .config
            .roles
            .get("viewer")
            .is_some_and(|r| r.credentials.client_id != "demo-viewer-id")
    })
    .await;
    assert!(rotated, "the broker did not switch to the rotated key");
    assert!(store.exists());
    assert_eq!(std::fs::read_to_string(&path)?, text);
    let (status, body) = broker.token(role("viewer")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sim.login_status("demo-viewer-id", "demo-viewer-secret")
            .await?,
        404
    );
    Ok(())
}

// ---------------------------------------------------------------- embed (issue 15)

const DEMO_EMBED_SECRET: &str = "demo-embed-secret";

/// The simulator with the demo's SSO embed secret (id "1"), as `make demo` starts it.
async fn embed_sim() -> Result<Sim, std::io::Error> {
    Sim::start_with(SimState::demo().with_embed_secret(DEMO_EMBED_SECRET)).await
}

fn principal(subject: &str) -> Value {
    json!({"issuer": "https://idp.lookergate.demo", "subject": subject})
}

fn embed_user(subject: &str, region: &str) -> Value {
    json!({
        "external_user_id": format!("https://idp.lookergate.demo|{subject}"),
        "first_name": subject,
        "permissions": ["access_data", "see_user_dashboards"],
        "models": ["thelook"],
        "user_attributes": {"region": region},
        "session_length": 3600,
        "force_logout_login": true
    })
}

/// An embed request body: `principal`, `profile`, `user`, then `extra`'s fields.
fn embed_request(subject: &str, profile: &str, region: &str, extra: Value) -> Value {
    let mut body = json!({
        "principal": principal(subject),
        "profile": profile,
        "user": embed_user(subject, region),
        "request_id": "req-embed",
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// The raw body too, so tests can assert what never appears in it.
struct Answer {
    status: u16,
    raw: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.raw).unwrap_or(Value::Null)
    }
}

impl Broker {
    async fn embed(&self, path: &str, body: &Value) -> Result<Answer, reqwest::Error> {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .header("authorization", GATEWAY)
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok(Answer {
            status,
            raw: resp.text().await?,
        })
    }

    /// The reference token the broker holds for this request's session (test access only).
    fn reference_token(&self, request: &Value) -> Option<String> {
        let principal = serde_json::from_value(request["principal"].clone()).ok()?;
        let user = serde_json::from_value(request["user"].clone()).ok()?;
        let profile = request["profile"].as_str()?;
        let key = lookergate_proto::embed::session_key(&principal, profile, &user);
        self.state
            .embed_sessions
            .live(&key)
            .map(|s| s.expose().to_owned())
    }
}

impl Sim {
    async fn embed_view(&self) -> Result<Value, reqwest::Error> {
        reqwest::get(format!("{}/__sim/embed", self.url))
            .await?
            .json()
            .await
    }

    async fn requests(&self) -> Result<Vec<Value>, reqwest::Error> {
        reqwest::get(format!("{}/__sim/requests", self.url))
            .await?
            .json()
            .await
    }
}

#[tokio::test]
async fn embed_session_acquire_refresh_logout_and_the_reference_token_never_leaves_the_broker(
) -> TestResult {
    let sim = embed_sim().await?;
    let broker = Broker::with_sim(&sim).await?;
    let request = embed_request("alice", "customer", "west", json!({}));

    let acquired = broker.embed("/v1/embed/acquire", &request).await?;
    assert_eq!(acquired.status, 200, "{}", acquired.raw);
    let tokens = acquired.json();
    for field in ["authentication_token", "navigation_token", "api_token"] {
        assert!(
            tokens[field].as_str().is_some_and(|t| !t.is_empty()),
            "{field}: {tokens}"
        );
    }
    assert!(
        tokens["session_reference_token_ttl"].as_u64() > Some(3000),
        "{tokens}"
    );
    assert!(tokens.get("session_reference_token").is_none(), "{tokens}");
    let reference = broker.reference_token(&request).ok_or("no session kept")?;
    let mut answers = vec![acquired.raw.clone()];

    let refresh = embed_request(
        "alice",
        "customer",
        "west",
        json!({"api_token": tokens["api_token"], "navigation_token": tokens["navigation_token"]}),
    );
    let refreshed = broker.embed("/v1/embed/generate_tokens", &refresh).await?;
    assert_eq!(refreshed.status, 200, "{}", refreshed.raw);
    let new_tokens = refreshed.json();
    assert!(
        new_tokens.get("authentication_token").is_none(),
        "{new_tokens}"
    );
    assert!(new_tokens["api_token"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert_ne!(new_tokens["api_token"], tokens["api_token"], "new tokens");
    assert!(new_tokens["session_reference_token_ttl"].as_u64() > Some(0));
    answers.push(refreshed.raw.clone());
    let view = sim.embed_view().await?;
    assert_eq!(view["sessions"][0]["generate_tokens_calls"], 1, "{view}");
    assert_eq!(
        view["sessions"][0]["user_attributes"]["region"], "west",
        "{view}"
    );

    let logout = broker.embed("/v1/embed/logout", &request).await?;
    assert_eq!(logout.status, 204, "{}", logout.raw);
    answers.push(logout.raw.clone());
    let view = sim.embed_view().await?;
    assert_eq!(view["sessions"][0]["state"], "ended", "{view}");
    let after = broker.embed("/v1/embed/generate_tokens", &refresh).await?;
    assert_eq!(
        (after.status, after.json()["error"].as_str()),
        (404, Some("no_embed_session")),
        "{}",
        after.raw
    );
    answers.push(after.raw.clone());
    let again = broker.embed("/v1/embed/logout", &request).await?;
    assert_eq!(
        (again.status, again.json()["error"].as_str()),
        (404, Some("no_embed_session"))
    );
    answers.push(again.raw);

    for raw in &answers {
        assert!(!raw.contains(&reference), "reference token in {raw}");
    }
    // Looker's delete was called with the reference token as one percent-encoded segment.
    let deleted = sim
        .requests()
        .await?
        .iter()
        .filter(|r| {
            r["method"] == "DELETE"
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/api/4.0/embed/cookieless_session/"))
        })
        .count();
    assert_eq!(deleted, 1);
    let metrics = broker.get("/metrics").await?.1;
    for line in [
        "lookergate_broker_embed_requests_total{endpoint=\"acquire\",outcome=\"ok\"} 1",
        "lookergate_broker_embed_requests_total{endpoint=\"generate_tokens\",outcome=\"ok\"} 1",
        "lookergate_broker_embed_requests_total{endpoint=\"generate_tokens\",outcome=\"no_embed_session\"} 1",
        "lookergate_broker_embed_requests_total{endpoint=\"logout\",outcome=\"ok\"} 1",
        "lookergate_broker_embed_sessions 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
    Ok(())
}

#[tokio::test]
async fn another_principal_profile_or_user_cannot_refresh_or_end_the_session() -> TestResult {
    let sim = embed_sim().await?;
    let broker = Broker::with_sim(&sim).await?;
    let acquired = broker
        .embed(
            "/v1/embed/acquire",
            &embed_request("alice", "customer", "west", json!({})),
        )
        .await?;
    assert_eq!(acquired.status, 200, "{}", acquired.raw);
    let tokens = acquired.json();
    let stolen =
        json!({"api_token": tokens["api_token"], "navigation_token": tokens["navigation_token"]});
    for (subject, profile, region) in [
        ("mallory", "customer", "west"),
        ("alice", "internal", "west"),
        ("alice", "customer", "east"),
    ] {
        for path in ["/v1/embed/generate_tokens", "/v1/embed/logout"] {
            let answer = broker
                .embed(
                    path,
                    &embed_request(subject, profile, region, stolen.clone()),
                )
                .await?;
            assert_eq!(
                (answer.status, answer.json()["error"].as_str()),
                (404, Some("no_embed_session")),
                "{subject}/{profile}/{region} {path}: {}",
                answer.raw
            );
        }
    }
    let view = sim.embed_view().await?;
    assert_eq!(view["sessions"][0]["state"], "live", "{view}");
    assert_eq!(view["sessions"][0]["generate_tokens_calls"], 0, "{view}");
    Ok(())
}

#[tokio::test]
async fn a_second_acquire_joins_the_live_session() -> TestResult {
    let sim = embed_sim().await?;
    let broker = Broker::with_sim(&sim).await?;
    let request = embed_request("alice", "customer", "west", json!({}));
    let first = broker.embed("/v1/embed/acquire", &request).await?;
    let reference = broker.reference_token(&request).ok_or("no session")?;
    let second = broker.embed("/v1/embed/acquire", &request).await?;
    assert_eq!((first.status, second.status), (200, 200), "{}", second.raw);
    assert_ne!(
        first.json()["authentication_token"],
        second.json()["authentication_token"]
    );
    assert_eq!(broker.reference_token(&request), Some(reference.clone()));
    let view = sim.embed_view().await?;
    let sessions = view["sessions"].as_array().ok_or("sessions")?;
    assert_eq!(sessions.len(), 1, "{view}");
    assert_eq!(sessions[0]["joins"], 1, "{view}");
    for raw in [&first.raw, &second.raw] {
        assert!(!raw.contains(&reference), "{raw}");
    }
    let metrics = broker.get("/metrics").await?.1;
    assert!(
        metrics.contains(
            "lookergate_broker_embed_requests_total{endpoint=\"acquire\",outcome=\"joined\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("lookergate_broker_embed_sessions 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_session_looker_ended_answers_ttl_0_and_is_forgotten() -> TestResult {
    let sim = embed_sim().await?;
    let broker = Broker::with_sim(&sim).await?;
    let request = embed_request("alice", "customer", "west", json!({}));
    let tokens = broker.embed("/v1/embed/acquire", &request).await?.json();
    let reference = broker.reference_token(&request).ok_or("no session")?;
    // Someone ends it at Looker (an admin, or a newer session of the same embed user).
    let token = sim_admin_token(&sim).await?;
    let status = reqwest::Client::new()
        .delete(format!(
            "{}/api/4.0/embed/cookieless_session/{reference}",
            sim.url
        ))
        .header("authorization", format!("token {token}"))
        .send()
        .await?
        .status();
    assert_eq!(status, 204);
    let refresh = embed_request(
        "alice",
        "customer",
        "west",
        json!({"api_token": tokens["api_token"], "navigation_token": tokens["navigation_token"]}),
    );
    let ended = broker.embed("/v1/embed/generate_tokens", &refresh).await?;
    assert_eq!(ended.status, 200, "{}", ended.raw);
    assert_eq!(
        ended.json()["session_reference_token_ttl"],
        0,
        "{}",
        ended.raw
    );
    assert!(!ended.raw.contains(&reference));
    let after = broker.embed("/v1/embed/generate_tokens", &refresh).await?;
    assert_eq!(
        (after.status, after.json()["error"].as_str()),
        (404, Some("no_embed_session"))
    );
    // A new acquire starts a new session.
    let again = broker.embed("/v1/embed/acquire", &request).await?;
    assert_eq!(again.status, 200, "{}", again.raw);
    assert_ne!(broker.reference_token(&request), Some(reference));
    Ok(())
}

#[tokio::test]
async fn a_revoked_embed_role_token_is_replaced_once() -> TestResult {
    let sim = embed_sim().await?;
    let broker = Broker::with_sim(&sim).await?;
    // The broker logs the embed role in for its first embed call; Looker then revokes it.
    let first = broker
        .embed(
            "/v1/embed/acquire",
            &embed_request("bob", "customer", "east", json!({})),
        )
        .await?;
    assert_eq!(first.status, 200, "{}", first.raw);
    let logins = sim.logins_of("demo-admin-id").await?;
    assert!(
        sim.state.revoke_user(1) >= 1,
        "the embed role's token was live"
    );
    let acquired = broker
        .embed(
            "/v1/embed/acquire",
            &embed_request("alice", "customer", "west", json!({})),
        )
        .await?;
    assert_eq!(acquired.status, 200, "{}", acquired.raw);
    assert_eq!(sim.logins_of("demo-admin-id").await?, logins + 1);
    Ok(())
}

#[tokio::test]
async fn embed_endpoints_are_501_embed_disabled_without_an_embed_section() -> TestResult {
    let sim = embed_sim().await?;
    let text = config_text(&sim.url, |t| {
        let start = t.find("[embed]").unwrap_or(t.len());
        let end = t.find("[sudo]").unwrap_or(t.len());
        format!("{}{}", &t[..start], &t[end..])
    });
    assert!(!text.contains("[embed]"));
    let broker = Broker::start(&text, None).await?;
    for path in [
        "/v1/embed/acquire",
        "/v1/embed/generate_tokens",
        "/v1/embed/logout",
        "/v1/embed/sso_url",
    ] {
        let body = embed_request(
            "alice",
            "customer",
            "west",
            json!({"api_token": "a", "navigation_token": "n", "target_url": "/embed/dashboards/1"}),
        );
        let answer = broker.embed(path, &body).await?;
        assert_eq!(
            (answer.status, answer.json()["error"].as_str()),
            (501, Some("embed_disabled")),
            "{path}: {}",
            answer.raw
        );
    }
    assert!(sim.embed_view().await?["sessions"]
        .as_array()
        .is_some_and(Vec::is_empty));
    Ok(())
}

/// `https://host/path?query` -> (`/path`, decoded query pairs).
fn split_sso_url(url: &str, host: &str) -> Result<(String, Vec<(String, String)>), String> {
    let rest = url
        .strip_prefix(&format!("https://{host}"))
        .ok_or(format!("not on {host}: {url}"))?;
    let (path, query) = rest.split_once('?').ok_or("no query")?;
    let pairs = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(n, v)| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(n), decode(v))
        })
        .collect();
    Ok((path.to_owned(), pairs))
}

/// Whether `url` carries `base64(HMAC-SHA256(secret, sso_string_to_sign(...)))`, computed
/// here with another HMAC implementation than the broker's.
fn signed_with(url: &str, host: &str, secret: &str) -> Result<bool, String> {
    let (path, pairs) = split_sso_url(url, host)?;
    let params: Vec<(&str, String)> = pairs.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let text = lookergate_proto::embed::sso_string_to_sign(host, &path, &params);
    let want = hmac_sha256::HMAC::mac(text.as_bytes(), secret.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(want);
    Ok(pairs.iter().any(|(n, v)| n == "signature" && v == &want))
}

#[tokio::test]
async fn sso_urls_are_signed_with_the_embed_secret_and_looker_accepts_them() -> TestResult {
    let sim = embed_sim().await?;
    // The embed host is the simulator itself, so the test can open the URL there.
    let host = sim.url.trim_start_matches("http://").to_owned();
    let text = config_text(&sim.url, |t| t.replace("127.0.0.1:10443", &host));
    let broker = Broker::start(&text, None).await?;
    let body = embed_request(
        "alice",
        "customer",
        "west",
        json!({"target_url": "/embed/dashboards/1"}),
    );
    let answer = broker.embed("/v1/embed/sso_url", &body).await?;
    assert_eq!(answer.status, 200, "{}", answer.raw);
    let url = answer.json()["url"].as_str().ok_or("url")?.to_owned();
    assert!(!answer.raw.contains(DEMO_EMBED_SECRET));
    assert!(signed_with(&url, &host, DEMO_EMBED_SECRET)?, "{url}");
    assert!(!signed_with(&url, &host, "another-secret")?);
    let (_, pairs) = split_sso_url(&url, &host)?;
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        param("external_user_id").as_deref(),
        Some("\"https://idp.lookergate.demo|alice\"")
    );
    assert_eq!(
        param("user_attributes").as_deref(),
        Some("{\"region\":\"west\"}")
    );
    let second = broker.embed("/v1/embed/sso_url", &body).await?.json();
    let (_, second_pairs) = split_sso_url(second["url"].as_str().ok_or("url")?, &host)?;
    assert_ne!(
        second_pairs.iter().find(|(n, _)| n == "nonce"),
        pairs.iter().find(|(n, _)| n == "nonce"),
        "a fresh nonce per URL"
    );

    // The simulator verifies it as Looker does and starts an SSO session.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let opened = client
        .get(url.replacen("https://", "http://", 1))
        .send()
        .await?;
    assert_eq!(opened.status().as_u16(), 302, "{:?}", opened.text().await);
    let view = sim.embed_view().await?;
    let sessions = view["sessions"].as_array().ok_or("sessions")?;
    assert_eq!(sessions.len(), 1, "{view}");
    assert_eq!(
        sessions[0]["external_user_id"], "https://idp.lookergate.demo|alice",
        "{view}"
    );
    Ok(())
}

fn embed_rotation_config(sim: &Sim, every: Option<&str>) -> String {
    config_text(&sim.url, |t| match every {
        Some(every) => t.replace(
            "secret_id = \"1\"\n",
            &format!("secret_id = \"1\"\nrotate_secret_every = \"{every}\"\n"),
        ),
        None => t,
    })
}

#[tokio::test]
async fn embed_secret_rotation_creates_one_secret_and_deletes_the_old_one() -> TestResult {
    let sim = embed_sim().await?;
    let dir = TempDir::new("embed-rotate")?;
    let path = dir.write("broker.toml", &embed_rotation_config(&sim, None))?;
    let report = lookergate_broker::rotate::rotate_embed_secret(&path).await?;
    assert!(report.old_secret_deleted, "{report:?}");
    assert_eq!(report.old_secret_id.as_deref(), Some("1"));

    let view = sim.embed_view().await?;
    let ids: Vec<&str> = view["secrets"]
        .as_array()
        .ok_or("secrets")?
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, vec![report.new_secret_id.as_str()], "{view}");
    let calls: Vec<(String, String)> = sim
        .requests()
        .await?
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.contains("/embed_config/secrets"))
        })
        .map(|r| {
            (
                r["method"].as_str().unwrap_or("").to_owned(),
                r["path"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        vec![
            (
                "POST".to_owned(),
                "/api/4.0/embed_config/secrets".to_owned()
            ),
            (
                "DELETE".to_owned(),
                "/api/4.0/embed_config/secrets/1".to_owned()
            ),
        ]
    );

    let config = BrokerConfig::load(&path)?;
    let embed = config.embed.as_ref().ok_or("embed")?;
    let secret = embed.secret.as_ref().ok_or("secret")?;
    assert_eq!(secret.id.as_deref(), Some(report.new_secret_id.as_str()));
    assert_ne!(secret.secret.expose(), DEMO_EMBED_SECRET);
    assert_eq!(secret.secret.fingerprint(), report.new_secret_fp);
    assert!(embed.rotated_at.is_some());
    assert!(std::fs::read_to_string(backup_of(&path))?.contains(DEMO_EMBED_SECRET));

    // A broker on the rotated file signs with the new secret, which Looker accepts.
    let new_secret = secret.secret.expose().to_owned();
    let broker = Broker::start(&std::fs::read_to_string(&path)?, None).await?;
    let body = embed_request(
        "alice",
        "customer",
        "west",
        json!({"target_url": "/embed/dashboards/1"}),
    );
    let url = broker.embed("/v1/embed/sso_url", &body).await?.json()["url"]
        .as_str()
        .ok_or("url")?
        .to_owned();
    assert!(signed_with(&url, "127.0.0.1:10443", &new_secret)?, "{url}");
    assert!(!signed_with(&url, "127.0.0.1:10443", DEMO_EMBED_SECRET)?);
    Ok(())
}

#[tokio::test]
async fn scheduled_embed_secret_rotation_with_a_store_is_used_by_the_running_broker() -> TestResult
{
    let sim = embed_sim().await?;
    let dir = TempDir::new("embed-rotate-store")?;
    let store = dir.0.join("rotated.toml");
    let text = embed_rotation_config(&sim, Some("1h")).replace(
        "[roles.analyst]",
        &format!(
            "rotated_credentials_file = {:?}\nreload_poll = \"100ms\"\n\n[roles.analyst]",
            store.display().to_string()
        ),
    );
    let path = dir.write("broker.toml", &text)?;
    let broker = Broker::start(&text, Some(path.clone())).await?;
    let rotated = eventually(Duration::from_secs(10), || async {
        broker
            .state
            .runtime()
            .config
            .embed
            .as_ref()
            .and_then(|e| e.secret.as_ref())
            .is_some_and(|s| s.id.as_deref() != Some("1"))
    })
    .await;
    assert!(
        rotated,
        "the running broker never picked up the rotated secret"
    );
    assert_eq!(
        std::fs::read_to_string(&path)?,
        text,
        "the config file is untouched"
    );
    let stored = std::fs::read_to_string(&store)?;
    assert!(
        stored.contains("[embed]") && stored.contains("replaces_secret_id = \"1\""),
        "the store holds it"
    );
    let view = sim.embed_view().await?;
    assert_eq!(view["secrets"].as_array().map(Vec::len), Some(1), "{view}");
    let metrics = broker.get("/metrics").await?.1;
    assert!(
        metrics.contains("lookergate_broker_embed_secret_rotations_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    Ok(())
}

/// The audit line of every embed session acquired (issue 15): who, which profile, which
/// embed user, the attributes' names; never a token, the attributes' values or a secret.
#[tokio::test]
async fn binary_audits_embed_sessions_without_tokens_or_attribute_values() -> TestResult {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let sim = embed_sim().await?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookergate-broker"))
        .args(["--listen", "127.0.0.1:0"])
        .env("LOOKERGATE_BROKER_LOOKER_URL", &sim.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await??;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or(format!("first line: {line:?}"))?
        .to_owned();
    let broker_url = format!("http://{addr}");
    let post = |path: &str, body: Value| {
        reqwest::Client::new()
            .post(format!("{broker_url}{path}"))
            .header("authorization", GATEWAY)
            .json(&body)
            .send()
    };
    let request = embed_request("alice", "customer", "west", json!({}));
    let acquired = post("/v1/embed/acquire", request.clone()).await?;
    assert_eq!(acquired.status().as_u16(), 200);
    let tokens: Value = acquired.json().await?;
    let refreshed: Value = post(
        "/v1/embed/generate_tokens",
        embed_request(
            "alice",
            "customer",
            "west",
            json!({"api_token": tokens["api_token"], "navigation_token": tokens["navigation_token"]}),
        ),
    )
    .await?
    .json()
    .await?;
    let signed: Value = post(
        "/v1/embed/sso_url",
        embed_request(
            "alice",
            "customer",
            "west",
            json!({"target_url": "/embed/dashboards/1"}),
        ),
    )
    .await?
    .json()
    .await?;
    let view = sim.embed_view().await?;
    let reference_fp = view["sessions"][0]["session_reference_token_fingerprint"].clone();
    assert_eq!(
        post("/v1/embed/logout", request).await?.status().as_u16(),
        204
    );

    child.start_kill()?;
    let _ = child.wait().await?;
    let mut logs = String::new();
    child
        .stderr
        .take()
        .ok_or("no stderr")?
        .read_to_string(&mut logs)
        .await?;
    let audit = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["event"] == "embed_session_acquired")
        .ok_or(format!("no audit line in {logs}"))?;
    assert_eq!(audit["audit"], true);
    assert_eq!(audit["subject"], "alice");
    assert_eq!(audit["issuer"], "https://idp.lookergate.demo");
    assert_eq!(audit["profile"], "customer");
    assert_eq!(
        audit["external_user_id"],
        "https://idp.lookergate.demo|alice"
    );
    assert_eq!(audit["user_attributes"], "[\"region\"]");
    assert_eq!(audit["request_id"], "req-embed");
    assert_eq!(
        audit["session_fp"], reference_fp,
        "the session by fingerprint"
    );
    let mut secrets = vec![
        DEMO_EMBED_SECRET.to_owned(),
        "demo-admin-secret".to_owned(),
        "west".to_owned(),
        signed["url"].as_str().unwrap_or("no url").to_owned(),
    ];
    for answer in [&tokens, &refreshed] {
        for field in ["authentication_token", "navigation_token", "api_token"] {
            if let Some(token) = answer[field].as_str() {
                secrets.push(token.to_owned());
            }
        }
    }
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "{secret} leaked into logs:\n{logs}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- issue 16: brokers as replicas

#[path = "broker/fleet.rs"]
mod fleet;
