//! Issue 16: global rate limits through real Envoys, the real rate limit service
//! (`lookergate-ratelimit`, LOOKERGATE_RLS_BIN) and a real `redis-server`: one budget
//! across two Envoys, the service or Redis down (per rule: 503 or the local bucket), and
//! recovery without restarting anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::harness::{demo_plugin_config, Gateway, Options, Peer, Process, Reply};
use crate::{assert_gateway_error, tokens};

/// `run_query`: a `db_query` operation the simulator answers to a GET.
const RUN_QUERY: &str = "/api/4.0/queries/1/run/json";
/// How long Redis or the service may take to come back.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(20);

/// A `redis-server` on a loopback port in a temp dir (`--save "" --appendonly no`);
/// can be stopped and started again on the same port; stopped on drop.
struct Redis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "lookergate-e2e-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis = Redis {
            port,
            dir,
            child: None,
        };
        redis.spawn();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let bin =
            std::env::var("LOOKERGATE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (`make redis` installs it): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Redis and the rate limit service on it.
struct Fleet {
    redis: Redis,
    rls: Process,
    rls_addr: SocketAddr,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A scratch dir for the service's log, removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Fleet {
    fn start() -> Fleet {
        let redis = Redis::start();
        let bin = std::env::var_os("LOOKERGATE_RLS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debug/lookergate-ratelimit")
            });
        assert!(
            bin.exists(),
            "LOOKERGATE_RLS_BIN: {} does not exist (`make test-bins` builds it)",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!(
            "lookergate-e2e-rls-{}-{}",
            std::process::id(),
            redis.port
        ));
        std::fs::create_dir_all(&dir).expect("rls dir");
        let url = redis.url();
        let (rls, rls_addr) = Process::start_service(
            "ratelimit",
            &bin,
            &["--listen", "127.0.0.1:0", "--redis", &url],
            &dir,
        );
        Fleet {
            redis,
            rls,
            rls_addr,
            _dir: tempdir::Dir(dir),
        }
    }
}

/// The demo plugin with `rules` and the rate limit service.
fn plugin(rules: Value) -> Value {
    let mut plugin = demo_plugin_config();
    plugin["policy"]["rules"] = rules;
    plugin["rate_limit_service"] = json!({"cluster": "lookergate_rls", "timeout": "500ms"});
    plugin
}

async fn gateway(fleet: &Fleet, rules: Value) -> Gateway {
    Gateway::start_with(Options {
        plugin: Some(plugin(rules)),
        rls: Some(fleet.rls_addr),
        ..Options::default()
    })
    .await
}

#[derive(Clone, Copy, Debug)]
enum Wire {
    Http1,
    Http2,
}

/// `GET path` with the bearer token to the Envoy listening at `listener`.
async fn get(
    client: &reqwest::Client,
    listener: SocketAddr,
    wire: Wire,
    path: &str,
    jwt: &str,
) -> Reply {
    let url = format!("http://{listener}{path}");
    match wire {
        Wire::Http1 => crate::harness::send_request(client.get(&url).bearer_auth(jwt)).await,
        Wire::Http2 => {
            let started = Instant::now();
            let socket = tokio::net::TcpStream::connect(listener)
                .await
                .expect("connect to Envoy");
            let (client, connection) = h2::client::handshake(socket)
                .await
                .expect("HTTP/2 handshake with Envoy");
            let driver = tokio::spawn(connection);
            let request = http::Request::builder()
                .method("GET")
                .uri(&url)
                .header("authorization", format!("Bearer {jwt}"))
                .body(())
                .expect("HTTP/2 request");
            let mut client = client.ready().await.expect("HTTP/2 stream available");
            let (response, _) = client
                .send_request(request, true)
                .expect("send HTTP/2 request");
            let response = response.await.expect("HTTP/2 response");
            let status = response.status().as_u16();
            let headers: HeaderMap = response.headers().clone();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("HTTP/2 body");
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            driver.abort();
            Reply {
                status,
                headers,
                body: String::from_utf8_lossy(&bytes).into_owned(),
                elapsed: started.elapsed(),
            }
        }
    }
}

/// How many `run_query` calls reached Looker (the simulator's request log).
async fn queries_at_looker(gw: &Gateway) -> usize {
    gw.forwarded_requests()
        .await
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/api/4.0/queries/1/run"))
        })
        .count()
}

async fn global_counter(gw: &Gateway, peer: &Peer, name: &str) -> u64 {
    let name = format!("wasmcustom.lookergate.ratelimit.global.{name}");
    gw.envoy_counter(&name).await + peer.envoy_counter(&name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_db_query_budget_is_shared_by_two_envoys_over_http1_and_http2() {
    let fleet = Fleet::start();
    let gw = gateway(
        &fleet,
        json!([{"name": "fleet-queries", "paths": ["/api/4.0/**"], "activity_types": ["db_query"], "allow": {"role": "analyst"},
                "rate_limit": {"per_second": 100, "burst": 100, "db_queries_per_minute": 10, "scope": "global"}}]),
    )
    .await;
    let peer = gw.start_peer().await;
    // Each wire its own principal (its own budget): alice over HTTP/1.1, bob over HTTP/2.
    let mut reached = 0;
    for (user, wire) in [("alice", Wire::Http1), ("bob", Wire::Http2)] {
        let jwt = tokens::valid(user);
        let mut statuses = Vec::new();
        for i in 0..20 {
            let listener = if i % 2 == 0 {
                gw.listener()
            } else {
                peer.listener()
            };
            let reply = get(&gw.client, listener, wire, RUN_QUERY, &jwt).await;
            if reply.status == 429 {
                let body = assert_gateway_error(&reply, 429);
                assert_eq!(body["error"], "rate_limited", "{body}");
                assert_eq!(body["rule"], "fleet-queries", "{body}");
                assert!(
                    body["reason"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("db_query budget"),
                    "{body}"
                );
                let retry_after: u64 = reply
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", reply.headers));
                assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
            } else {
                assert_eq!(
                    reply.status, 200,
                    "{user} {wire:?} request {i}: {}",
                    reply.body
                );
            }
            statuses.push(reply.status);
        }
        let allowed = statuses.iter().filter(|s| **s == 200).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!(
            (allowed, limited),
            (10, 10),
            "{user} over {wire:?}: {statuses:?}"
        );
        reached += 10;
        assert_eq!(
            queries_at_looker(&gw).await,
            reached,
            "{user} over {wire:?}: what Looker saw"
        );
    }
    assert_eq!(global_counter(&gw, &peer, "over_limit").await, 20);
    assert_eq!(global_counter(&gw, &peer, "ok").await, 20);
    assert!(
        gw.envoy_counter("wasmcustom.lookergate.ratelimit.global.ok")
            .await
            > 0
            && peer
                .envoy_counter("wasmcustom.lookergate.ratelimit.global.ok")
                .await
                > 0,
        "both Envoys admitted some: {}",
        peer.log_tail()
    );
}

/// Two principals, each under a global rule failing its own way.
fn failure_rules() -> Value {
    json!([
        {"name": "strict", "paths": ["/api/4.0/**"], "activity_types": ["db_query"], "when": [{"claim": "sub", "equals": "alice"}],
         "allow": {"role": "analyst"},
         "rate_limit": {"per_second": 100, "burst": 100, "db_queries_per_minute": 1000, "scope": "global"}},
        {"name": "lenient", "paths": ["/api/4.0/**"], "activity_types": ["db_query"], "when": [{"claim": "sub", "equals": "bob"}],
         "allow": {"role": "analyst"},
         "rate_limit": {"per_second": 0.01, "burst": 3, "scope": "global", "on_unavailable": "local"}}
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_service_down_a_deny_rule_answers_503_and_a_local_rule_falls_back() {
    let mut fleet = Fleet::start();
    let gw = gateway(&fleet, failure_rules()).await;
    let (alice, bob) = (tokens::valid("alice"), tokens::valid("bob"));
    for jwt in [&alice, &bob] {
        let reply = get(&gw.client, gw.listener(), Wire::Http1, RUN_QUERY, jwt).await;
        assert_eq!(reply.status, 200, "service up: {}", reply.body);
    }
    fleet.rls.stop();
    let before = queries_at_looker(&gw).await;
    for wire in [Wire::Http1, Wire::Http2] {
        let reply = get(&gw.client, gw.listener(), wire, RUN_QUERY, &alice).await;
        let body = assert_gateway_error(&reply, 503);
        assert_eq!(body["error"], "rate_limit_unavailable", "{body}");
        assert_eq!(body["rule"], "strict", "{body}");
    }
    assert_eq!(
        queries_at_looker(&gw).await,
        before,
        "the 503s reached Looker"
    );
    // bob's rule falls back to the local bucket: a burst of 3, then 429.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            get(&gw.client, gw.listener(), Wire::Http1, RUN_QUERY, &bob)
                .await
                .status,
        );
    }
    assert_eq!(
        statuses,
        vec![200, 200, 200, 429],
        "the local bucket decides"
    );
    assert_eq!(queries_at_looker(&gw).await, before + 3);
    let counter = |name: &str| format!("wasmcustom.lookergate.ratelimit.global.{name}");
    assert_eq!(gw.envoy_counter(&counter("unavailable_denied")).await, 2);
    assert_eq!(gw.envoy_counter(&counter("unavailable_local")).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_mid_load_fails_as_configured_then_recovers() {
    let mut fleet = Fleet::start();
    let gw = gateway(&fleet, failure_rules()).await;
    let (alice, bob) = (tokens::valid("alice"), tokens::valid("bob"));
    let mut ok = 0;
    let send = |jwt: String| {
        let gw = &gw;
        async move { get(&gw.client, gw.listener(), Wire::Http1, RUN_QUERY, &jwt).await }
    };
    for _ in 0..5 {
        assert_eq!(send(alice.clone()).await.status, 200);
        ok += 1;
    }
    fleet.redis.stop();
    for i in 0..5 {
        let reply = send(alice.clone()).await;
        let body = assert_gateway_error(&reply, 503);
        assert_eq!(
            body["rule"], "strict",
            "request {i} with Redis down: {body}"
        );
    }
    // bob's rule falls back to the local bucket meanwhile.
    assert_eq!(send(bob.clone()).await.status, 200, "local fallback");
    ok += 1;
    assert_eq!(
        queries_at_looker(&gw).await,
        ok,
        "only the allowed requests reached Looker"
    );
    fleet.redis.spawn();
    // Nothing restarted: the service reconnects and alice is served again.
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    loop {
        let reply = send(alice.clone()).await;
        if reply.status == 200 {
            ok += 1;
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(
            Instant::now() < deadline,
            "no recovery within {RECOVERY_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..5 {
        assert_eq!(send(alice.clone()).await.status, 200, "after recovery");
        ok += 1;
    }
    assert_eq!(
        queries_at_looker(&gw).await,
        ok,
        "only the allowed requests reached Looker"
    );
    assert!(
        gw.envoy_counter("wasmcustom.lookergate.ratelimit.global.failure")
            .await
            >= 5
    );
}
