//! Brokers as replicas (`[store]`): two brokers on one real `redis-server` (started by
//! the test on a free loopback port, no persistence) and the in-process simulator.

use super::*;
use lookergate_broker::identity::CacheKey;
use lookergate_broker::store::identity_id;
use std::collections::HashSet;

/// The test's sealing key (base64 of 32 bytes), given to the brokers through a file.
const SEALING_KEY: &str = "bG9va2VyZ2F0ZS10ZXN0LXNlYWxpbmcta2V5LTMyYnk=";
const PREFIX: &str = "lgtest";

/// A `redis-server` of our own: `LOOKERGATE_REDIS_BIN`, else `redis-server` on the PATH.
struct Redis {
    child: Option<std::process::Child>,
    port: u16,
    dir: TempDir,
    password: Option<String>,
}

impl Redis {
    async fn start() -> Result<Redis, Box<dyn std::error::Error>> {
        Redis::start_with(None).await
    }

    /// With `password`: `--requirepass`, and the URL carries it.
    async fn start_with(password: Option<&str>) -> Result<Redis, Box<dyn std::error::Error>> {
        let port = free_addr().await?.port();
        let mut redis = Redis {
            child: None,
            port,
            dir: TempDir::new("redis")?,
            password: password.map(String::from),
        };
        redis.run().await?;
        Ok(redis)
    }

    fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    async fn run(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let bin = std::env::var("LOOKERGATE_REDIS_BIN").unwrap_or_else(|_| "redis-server".into());
        let child = std::process::Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(
                self.password
                    .iter()
                    .flat_map(|pw| ["--requirepass".to_string(), pw.clone()]),
            )
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {bin} (apt-get install redis-server): {e}"))?;
        self.child = Some(child);
        let client = redis::Client::open(self.url())?;
        let up = eventually(Duration::from_secs(10), || async {
            match client.get_multiplexed_async_connection().await {
                Ok(mut c) => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await;
        if !up {
            return Err("redis-server did not answer PING".into());
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// Every key and its value (all of the store's keys are strings).
    async fn dump(&self) -> Result<Vec<(String, Vec<u8>)>, redis::RedisError> {
        let mut conn = self.conn().await?;
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            for key in keys {
                let value: Option<Vec<u8>> =
                    redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
                out.push((key, value.unwrap_or_default()));
            }
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The demo config against `sim`, sharing `redis`; `edit` changes the TOML text.
fn replica_config(
    sim: &Sim,
    redis: &Redis,
    dir: &TempDir,
    edit: impl Fn(String) -> String,
) -> Result<String, std::io::Error> {
    let key = dir.write("sealing.key", &format!("{SEALING_KEY}\n"))?;
    Ok(config_text(&sim.url, |t| {
        edit(format!(
            "{t}\n[store]\nurl = {:?}\nkey_file = {:?}\nprefix = {PREFIX:?}\npoll = \"200ms\"\n",
            redis.url(),
            key.display().to_string()
        ))
    }))
}

async fn replicas(
    text: &str,
    path: Option<PathBuf>,
) -> Result<(Broker, Broker), Box<dyn std::error::Error>> {
    Ok((
        Broker::start(text, path.clone()).await?,
        Broker::start(text, path).await?,
    ))
}

fn access_token(body: &Value) -> String {
    body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn invalidate(broker: &Broker, identity: Value) -> Result<u16, reqwest::Error> {
    Ok(reqwest::Client::new()
        .post(format!("{}/v1/token/invalidate", broker.url))
        .header("authorization", GATEWAY)
        .json(&json!({"identity": identity}))
        .send()
        .await?
        .status()
        .as_u16())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
}

/// No key or value in Redis holds any of `secrets` in clear (nor base64 of it).
async fn assert_no_plain_secret(redis: &Redis, secrets: &[String]) -> TestResult {
    let dump = redis.dump().await?;
    assert!(!dump.is_empty(), "the store holds nothing");
    for (key, value) in &dump {
        for secret in secrets {
            let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
            assert!(
                !contains(key.as_bytes(), secret)
                    && !contains(value, secret)
                    && !contains(value, &b64),
                "{key} holds a secret in clear (fingerprint {})",
                lookergate_broker::secret::fingerprint(secret.as_bytes())
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_requests_across_two_replicas_make_one_looker_login_per_identity() -> TestResult
{
    let redis = Redis::start().await?;
    let sim = Sim::start().await?;
    // Slow logins: the requests pile up on both replicas while the first one logs in.
    sim.fault(json!({"login_delay_ms": 300, "count": 3}))
        .await?;
    let dir = TempDir::new("replicas-login")?;
    let text = replica_config(&sim, &redis, &dir, |t| t)?;
    let (a, b) = replicas(&text, None).await?;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..40 {
        let broker = if n % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let identity = if n % 4 < 2 {
                role("viewer")
            } else {
                user("carol@example.com")
            };
            let is_user = identity["kind"] == "user";
            (is_user, broker.token(identity).await)
        });
    }
    let (mut viewer, mut carol) = (HashSet::new(), HashSet::new());
    while let Some(done) = tasks.join_next().await {
        let (is_user, answer) = done?;
        let (status, body) = answer?;
        assert_eq!(status, 200, "{body}");
        if is_user { &mut carol } else { &mut viewer }.insert(access_token(&body));
    }
    assert_eq!(
        (viewer.len(), carol.len()),
        (1, 1),
        "one token per identity"
    );
    let logins = sim.logins().await?;
    let count = |f: &dyn Fn(&Value) -> bool| logins.iter().filter(|l| f(l)).count();
    assert_eq!(
        count(&|l| l["client_id"] == "demo-viewer-id"),
        1,
        "{logins:?}"
    );
    assert_eq!(count(&|l| l["sudo_user_id"] == "203"), 1, "{logins:?}");
    assert_eq!(
        count(&|l| l["client_id"] == "demo-admin-id"),
        1,
        "{logins:?}"
    );
    let waits = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("lookergate_broker_store_lock_waits_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (_, ma) = a.get("/metrics").await?;
    let (_, mb) = b.get("/metrics").await?;
    assert!(
        waits(&ma) + waits(&mb) >= 1,
        "a replica waited for the other's login"
    );
    Ok(())
}

#[tokio::test]
async fn a_token_cached_by_one_replica_is_used_by_the_other() -> TestResult {
    let redis = Redis::start().await?;
    let sim = Sim::start().await?;
    let dir = TempDir::new("replicas-share")?;
    let text = replica_config(&sim, &redis, &dir, |t| t)?;
    let (a, b) = replicas(&text, None).await?;
    let (status, first) = a.token(role("analyst")).await?;
    assert_eq!(status, 200, "{first}");
    let (status, second) = b.token(role("analyst")).await?;
    assert_eq!(status, 200, "{second}");
    assert_eq!(access_token(&first), access_token(&second));
    assert!(
        second["expires_in"].as_u64().unwrap_or(0) > 3000,
        "{second}"
    );
    assert_eq!(sim.logins_of("demo-analyst-id").await?, 1);
    let (_, metrics) = b.get("/metrics").await?;
    assert!(
        metrics.contains("lookergate_broker_store_hits_total 1"),
        "{metrics}"
    );
    // Served from B's local cache from now on.
    let (_, third) = b.token(role("analyst")).await?;
    assert_eq!(access_token(&third), access_token(&first));
    let (_, metrics) = b.get("/metrics").await?;
    assert!(
        metrics.contains("lookergate_broker_store_hits_total 1"),
        "{metrics}"
    );
    // The shared entry expires with the token, less the refresh margin.
    let mut conn = redis.conn().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}:token:*"))
        .query_async(&mut conn)
        .await?;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await?;
    assert!(ttl > 3_400_000 && ttl <= 3_540_000, "{ttl}");
    assert_no_plain_secret(
        &redis,
        &[
            access_token(&first),
            "demo-analyst-secret".into(),
            "demo-gateway-secret".into(),
            SEALING_KEY.into(),
        ],
    )
    .await
}

#[tokio::test]
async fn an_invalidation_on_one_replica_is_seen_by_the_other() -> TestResult {
    let redis = Redis::start().await?;
    let sim = Sim::start().await?;
    let dir = TempDir::new("replicas-invalidate")?;
    let text = replica_config(&sim, &redis, &dir, |t| t)?;
    let (a, b) = replicas(&text, None).await?;
    let (_, first) = a.token(role("viewer")).await?;
    let (_, on_b) = b.token(role("viewer")).await?;
    assert_eq!(access_token(&first), access_token(&on_b));
    assert_eq!(invalidate(&a, role("viewer")).await?, 204);
    // B drops its local copy when the invalidation arrives (pub/sub), then logs in anew.
    let old = access_token(&first);
    let renewed = eventually(Duration::from_secs(5), || async {
        matches!(b.token(role("viewer")).await, Ok((200, body)) if access_token(&body) != old)
    })
    .await;
    assert!(renewed, "B still serves the invalidated token");
    let (_, after_b) = b.token(role("viewer")).await?;
    let (_, after_a) = a.token(role("viewer")).await?;
    assert_eq!(
        access_token(&after_a),
        access_token(&after_b),
        "A uses B's new token"
    );
    assert_eq!(sim.logins_of("demo-viewer-id").await?, 2);
    Ok(())
}

#[tokio::test]
async fn a_sealed_token_moved_to_another_identity_does_not_open() -> TestResult {
    let redis = Redis::start().await?;
    let sim = Sim::start().await?;
    let dir = TempDir::new("replicas-moved")?;
    let text = replica_config(&sim, &redis, &dir, |t| t)?;
    let a = Broker::start(&text, None).await?;
    let (_, viewer) = a.token(role("viewer")).await?;
    let (_, analyst) = a.token(role("analyst")).await?;
    let key_of = |name: &str| {
        format!(
            "{PREFIX}:token:{}",
            identity_id(&CacheKey::Role(name.into()))
        )
    };
    let mut conn = redis.conn().await?;
    // The viewer's sealed token copied over the analyst's entry.
    let sealed: Vec<u8> = redis::cmd("GET")
        .arg(key_of("viewer"))
        .query_async(&mut conn)
        .await?;
    assert!(!sealed.is_empty());
    let () = redis::cmd("SET")
        .arg(key_of("analyst"))
        .arg(&sealed)
        .arg("PX")
        .arg(600_000)
        .query_async(&mut conn)
        .await?;
    // A fresh replica (empty local cache): the moved value does not open, so the analyst
    // logs in again instead of getting the viewer's session; the viewer's entry still serves.
    let c = Broker::start(&text, None).await?;
    let (status, an) = c.token(role("analyst")).await?;
    assert_eq!(status, 200, "{an}");
    assert_ne!(access_token(&an), access_token(&viewer));
    assert_ne!(access_token(&an), access_token(&analyst));
    assert_eq!(
        sim.me(&access_token(&an)).await?["id"]
            .to_string()
            .trim_matches('"'),
        "101",
        "a session of the analyst's service account"
    );
    assert_eq!(sim.logins_of("demo-analyst-id").await?, 2);
    let (_, v) = c.token(role("viewer")).await?;
    assert_eq!(access_token(&v), access_token(&viewer));
    assert_eq!(sim.logins_of("demo-viewer-id").await?, 1);
    let (_, metrics) = c.get("/metrics").await?;
    let unopened = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lookergate_broker_store_errors_total{op=\"token_open\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(unopened >= 1, "the moved value was counted: {metrics}");
    Ok(())
}

#[tokio::test]
async fn redis_down_serves_local_tokens_fails_closed_on_a_miss_and_recovers() -> TestResult {
    let mut redis = Redis::start().await?;
    let sim = Sim::start().await?;
    let dir = TempDir::new("replicas-redis-down")?;
    let text = replica_config(&sim, &redis, &dir, |t| t)?;
    let a = Broker::start(&text, None).await?;
    let b = Broker::start(&text, None).await?;
    let (_, viewer) = a.token(role("viewer")).await?;
    redis.stop();

    // The local cache still serves the viewer's valid token.
    let (status, again) = a.token(role("viewer")).await?;
    assert_eq!(status, 200, "{again}");
    assert_eq!(access_token(&again), access_token(&viewer));
    // A local miss needs the store: 503, no token, and no Looker login behind its back.
    let logins_before = sim.logins().await?.len();
    let (status, body) = a.token(role("analyst")).await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "looker_unavailable", "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
    assert_eq!(sim.logins().await?.len(), logins_before);

    redis.run().await?;
    let recovered = eventually(Duration::from_secs(10), || async {
        matches!(a.token(role("analyst")).await, Ok((200, _)))
    })
    .await;
    assert!(
        recovered,
        "the broker did not recover after Redis came back"
    );
    let (_, metrics) = a.get("/metrics").await?;
    assert!(
        metrics.contains("lookergate_broker_store_errors_total{op=\"token_get\"}"),
        "{metrics}"
    );
    // Invalidations reach the other replica again (it subscribed anew).
    let (_, on_a) = a.token(role("analyst")).await?;
    let shared = eventually(Duration::from_secs(5), || async {
        matches!(b.token(role("analyst")).await, Ok((200, body)) if access_token(&body) == access_token(&on_a))
    })
    .await;
    assert!(shared, "B does not use A's token after the restart");
    assert_eq!(invalidate(&a, role("analyst")).await?, 204);
    let old = access_token(&on_a);
    let renewed = eventually(Duration::from_secs(5), || async {
        matches!(b.token(role("analyst")).await, Ok((200, body)) if access_token(&body) != old)
    })
    .await;
    assert!(renewed, "B missed an invalidation after Redis restarted");
    Ok(())
}

#[tokio::test]
async fn scheduled_rotation_with_two_replicas_makes_one_key_and_deletes_the_old_after_both_switched(
) -> TestResult {
    let redis = Redis::start().await?;
    let sim = Sim::start().await?;
    let dir = TempDir::new("replicas-rotate")?;
    // A third replica that never switches: the old key must outlive the rotation until
    // its heartbeat goes (or the grace period ends).
    let mut conn = redis.conn().await?;
    let () = redis::cmd("SET")
        .arg(format!("{PREFIX}:replica:lagging"))
        .arg(r#"{"credentials_version":0}"#)
        .arg("PX")
        .arg(120_000)
        .query_async(&mut conn)
        .await?;
    let text = replica_config(&sim, &redis, &dir, |t| {
        t.replace(
            "user_id = \"102\"",
            "user_id = \"102\"\nrotate_every = \"7d\"",
        ) + "rotation_grace = \"60s\"\n"
    })?;
    let path = dir.write("broker.toml", &text)?;
    let (a, b) = replicas(&text, Some(path.clone())).await?;
    let (a, b) = (Arc::new(a), Arc::new(b));

    // Load through both replicas during the rotation; invalidations force fresh logins.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (a, b, stop) = (a.clone(), b.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let broker = if n.is_multiple_of(2) { &a } else { &b };
                answers.push(broker.token(role("viewer")).await.map(|(s, _)| s));
                if n % 5 == 4 {
                    let _ = invalidate(broker, role("viewer")).await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        })
    };

    let client_id = |broker: &Broker| {
        broker
            .state
            .runtime()
            .config
            .roles
            .get("viewer")
            .map(|r| r.credentials.client_id.clone())
            .unwrap_or_default()
    };
    let switched = eventually(Duration::from_secs(15), || async {
        client_id(&a) != "demo-viewer-id" && client_id(&a) == client_id(&b)
    })
    .await;
    assert!(switched, "both replicas use the new key");
    let new_id = client_id(&a);
    // Both switched, the lagging replica has not: the old key is not deleted yet.
    let deletes = |requests: &[lookergate_looker_sim::RecordedRequest]| {
        requests
            .iter()
            .filter(|r| r.method == "DELETE" && r.path.contains("/credentials_api3/"))
            .count()
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        deletes(&sim.state.requests()),
        0,
        "deleted before every replica switched"
    );
    // The lagging replica goes away: its heartbeat expires; the old key is deleted.
    let () = redis::cmd("DEL")
        .arg(format!("{PREFIX}:replica:lagging"))
        .query_async(&mut conn)
        .await?;
    let deleted = eventually(Duration::from_secs(10), || async {
        deletes(&sim.state.requests()) == 1
    })
    .await;
    assert!(
        deleted,
        "the old key was not deleted after the replicas switched"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.await?;

    let requests = sim.state.requests();
    let created = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/users/102/credentials_api3"))
        .count();
    assert_eq!(created, 1, "exactly one new API3 key");
    assert_eq!(deletes(&requests), 1);
    let failed: Vec<Value> = sim
        .logins()
        .await?
        .into_iter()
        .filter(|l| l["ok"] != true)
        .collect();
    assert!(failed.is_empty(), "failed Looker logins: {failed:?}");
    assert_eq!(
        sim.login_status("demo-viewer-id", "demo-viewer-secret")
            .await?,
        404,
        "the old key is gone"
    );
    assert!(answers.len() > 10, "{}", answers.len());
    assert!(
        answers.iter().all(|a| matches!(a, Ok(200))),
        "failed token requests: {:?}",
        answers
            .iter()
            .filter(|a| !matches!(a, Ok(200)))
            .collect::<Vec<_>>()
    );
    assert!(
        sim.logins_of(&new_id).await? >= 2,
        "proof and the replicas' logins"
    );

    // Nothing in Redis in clear: tokens, the new and old secrets, the admin's, the gateway's.
    let new_secret = a
        .state
        .runtime()
        .config
        .roles
        .get("viewer")
        .map(|r| r.credentials.client_secret.expose().to_string())
        .ok_or("no viewer")?;
    let (_, token) = b.token(role("viewer")).await?;
    assert_no_plain_secret(
        &redis,
        &[
            new_secret,
            access_token(&token),
            "demo-viewer-secret".into(),
            "demo-admin-secret".into(),
            "demo-gateway-secret".into(),
            SEALING_KEY.into(),
        ],
    )
    .await
}

#[tokio::test]
async fn binary_with_a_store_logs_no_token_key_or_redis_password() -> TestResult {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    const PASSWORD: &str = "redis-pass-0f3c9a";
    let mut redis = Redis::start_with(Some(PASSWORD)).await?;
    let sim = Sim::start().await?;
    let dir = TempDir::new("replica-binary")?;
    let text = replica_config(&sim, &redis, &dir, |t| {
        t.replace(
            &format!("url = {:?}", redis.url()),
            "url_env = \"STORE_URL\"",
        )
    })?;
    assert!(text.contains("url_env") && !text.contains(PASSWORD));
    let path = dir.write("broker.toml", &text)?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookergate-broker"))
        .arg("--config")
        .arg(&path)
        .env("STORE_URL", redis.url())
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
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or(format!("first line: {line:?}"))?
        .parse()?;
    let token = |name: &'static str| {
        reqwest::Client::new()
            .post(format!("http://{addr}/v1/token"))
            .header("authorization", GATEWAY)
            .json(&json!({"identity": role(name), "subject": "alice"}))
            .send()
    };
    let resp = token("analyst").await?;
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await?;
    // Redis goes away: a local miss fails closed and the failure is logged.
    redis.stop();
    let resp = token("viewer").await?;
    assert_eq!(resp.status().as_u16(), 503);

    child.start_kill()?;
    let _ = child.wait().await?;
    let mut logs = String::new();
    child
        .stderr
        .take()
        .ok_or("no stderr")?
        .read_to_string(&mut logs)
        .await?;
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let starting = lines
        .iter()
        .find(|l| l["event"] == "starting")
        .ok_or(format!("no starting line in {logs}"))?;
    let key = base64::engine::general_purpose::STANDARD.decode(SEALING_KEY)?;
    assert_eq!(
        starting["store_key_fp"].as_str(),
        Some(lookergate_broker::secret::fingerprint(&key).as_str())
    );
    assert!(
        lines.iter().any(|l| l["event"] == "store_error"),
        "no store_error in {logs}"
    );
    for secret in [
        access_token(&body).as_str(),
        SEALING_KEY,
        PASSWORD,
        "demo-analyst-secret",
        "demo-admin-secret",
        "demo-gateway-secret",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into logs:\n{logs}");
    }
    Ok(())
}

#[tokio::test]
async fn a_login_lock_left_by_a_dead_replica_expires_and_another_replica_logs_in() -> TestResult {
    let redis = Redis::start().await?;
    let sim = Sim::start().await?;
    let dir = TempDir::new("replicas-dead-holder")?;
    let text = replica_config(&sim, &redis, &dir, |t| t)?;
    let a = Broker::start(&text, None).await?;
    // A replica took the viewer's login lock and died: no token will ever come from it.
    let lock = format!(
        "{PREFIX}:login:{}",
        identity_id(&CacheKey::Role("viewer".into()))
    );
    let mut conn = redis.conn().await?;
    let () = redis::cmd("SET")
        .arg(&lock)
        .arg("dead-replica")
        .arg("PX")
        .arg(800)
        .query_async(&mut conn)
        .await?;
    let (status, body) = a.token(role("viewer")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.logins_of("demo-viewer-id").await?, 1);
    let (_, metrics) = a.get("/metrics").await?;
    assert!(
        metrics.contains("lookergate_broker_store_lock_waits_total 1"),
        "{metrics}"
    );
    let left: Option<String> = redis::cmd("GET").arg(&lock).query_async(&mut conn).await?;
    assert_eq!(left, None, "the new holder released its lock");
    Ok(())
}

#[tokio::test]
async fn a_replica_that_never_switches_holds_the_old_key_only_for_the_grace_period() -> TestResult {
    let redis = Redis::start().await?;
    let sim = Sim::start().await?;
    let dir = TempDir::new("replicas-grace")?;
    let mut conn = redis.conn().await?;
    let () = redis::cmd("SET")
        .arg(format!("{PREFIX}:replica:stuck"))
        .arg(r#"{"credentials_version":0}"#)
        .arg("PX")
        .arg(600_000)
        .query_async(&mut conn)
        .await?;
    let text = replica_config(&sim, &redis, &dir, |t| {
        t.replace(
            "user_id = \"101\"",
            "user_id = \"101\"\nrotate_every = \"7d\"",
        ) + "rotation_grace = \"1s\"\n"
    })?;
    let (a, b) = replicas(&text, None).await?;
    let deleted = eventually(Duration::from_secs(15), || async {
        sim.state.requests().iter().any(|r| {
            r.method == "DELETE" && r.path.starts_with("/api/4.0/users/101/credentials_api3/")
        })
    })
    .await;
    assert!(deleted, "the old key outlived the grace period");
    let client_id = |broker: &Broker| {
        broker
            .state
            .runtime()
            .config
            .roles
            .get("analyst")
            .map(|r| r.credentials.client_id.clone())
    };
    assert_ne!(client_id(&a).as_deref(), Some("demo-analyst-id"));
    assert_eq!(client_id(&a), client_id(&b));
    // The winner counts its rotation once the old key is deleted; the other never rotates.
    let rotated = |m: &str| m.contains("lookergate_broker_rotations_total{result=\"ok\"} 1");
    let one_counted = eventually(Duration::from_secs(5), || async {
        match (a.get("/metrics").await, b.get("/metrics").await) {
            (Ok((_, ma)), Ok((_, mb))) => rotated(&ma) != rotated(&mb),
            _ => false,
        }
    })
    .await;
    assert!(one_counted, "exactly one replica rotated");
    let created = sim
        .state
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/users/101/credentials_api3"))
        .count();
    assert_eq!(created, 1, "exactly one new API3 key");
    Ok(())
}

#[tokio::test]
async fn a_login_cancelled_mid_way_releases_its_lock_before_the_lease_ends() -> TestResult {
    let redis = Redis::start().await?;
    let sim = Sim::start().await?;
    sim.fault(json!({"login_delay_ms": 3000, "count": 1}))
        .await?;
    let dir = TempDir::new("replicas-cancelled")?;
    // retry_budget 5s: the lock's lease is 3 x 5s + 1s = 16s.
    let text = replica_config(&sim, &redis, &dir, |t| {
        t.replace("retry_budget = \"1500ms\"", "retry_budget = \"5s\"")
            .replace("looker_timeout = \"1s\"", "looker_timeout = \"4s\"")
    })?;
    assert!(
        text.contains("retry_budget = \"5s\""),
        "the demo config changed"
    );
    let a = Broker::start(&text, None).await?;
    let lock = format!(
        "{PREFIX}:login:{}",
        identity_id(&CacheKey::Role("viewer".into()))
    );
    let conn = redis.conn().await?;
    let identity = lookergate_broker::identity::LookerIdentity::Role("viewer".into());
    // The gateway gives up while the login is in flight: the request's future is dropped.
    let cancelled =
        tokio::time::timeout(Duration::from_millis(300), a.state.token(&identity)).await;
    assert!(cancelled.is_err(), "the login was not in flight");
    let (_, metrics) = a.get("/metrics").await?;
    assert!(
        metrics.contains("lookergate_broker_store_misses_total 1"),
        "the login had taken the lock: {metrics}"
    );
    let released = eventually(Duration::from_secs(3), || async {
        let mut conn = conn.clone();
        matches!(
            redis::cmd("GET")
                .arg(&lock)
                .query_async::<Option<String>>(&mut conn)
                .await,
            Ok(None)
        )
    })
    .await;
    assert!(released, "the lock stays until its 16s lease ends");
    Ok(())
}

#[tokio::test]
async fn a_redis_restarted_empty_gets_the_rotated_keys_back_from_the_replicas() -> TestResult {
    let mut redis = Redis::start().await?;
    let sim = Sim::start().await?;
    let dir = TempDir::new("replicas-reseed")?;
    let text = replica_config(&sim, &redis, &dir, |t| {
        t.replace(
            "user_id = \"101\"",
            "user_id = \"101\"\nrotate_every = \"7d\"",
        )
    })?;
    let (a, b) = replicas(&text, None).await?;
    let client_id = |broker: &Broker| {
        broker
            .state
            .runtime()
            .config
            .roles
            .get("analyst")
            .map(|r| r.credentials.client_id.clone())
            .unwrap_or_default()
    };
    let rotated = eventually(Duration::from_secs(15), || async {
        sim.state.requests().iter().any(|r| {
            r.method == "DELETE" && r.path.starts_with("/api/4.0/users/101/credentials_api3/")
        })
    })
    .await;
    assert!(rotated, "the old key was not deleted");
    let new_id = client_id(&a);
    assert_ne!(new_id, "demo-analyst-id");
    assert_eq!(client_id(&b), new_id);

    // Redis restarts without its data: the config's key is deleted in Looker, so the
    // replicas write the rotated keys they use back.
    redis.stop();
    redis.run().await?;
    let conn = redis.conn().await?;
    let credentials = format!("{PREFIX}:credentials");
    let reseeded = eventually(Duration::from_secs(10), || async {
        let mut conn = conn.clone();
        matches!(
            redis::cmd("EXISTS")
                .arg(&credentials)
                .query_async::<i64>(&mut conn)
                .await,
            Ok(1)
        )
    })
    .await;
    assert!(reseeded, "the rotated keys were not written back");
    // A new replica starts on the config's (deleted) key and the store's rotated one.
    let c = Broker::start(&text, None).await?;
    let (status, body) = c.token(role("analyst")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(client_id(&c), new_id);
    let failed: Vec<Value> = sim
        .logins()
        .await?
        .into_iter()
        .filter(|l| l["ok"] != true)
        .collect();
    assert!(failed.is_empty(), "failed Looker logins: {failed:?}");
    Ok(())
}
