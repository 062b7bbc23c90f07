//! Issue 16: a fleet on one machine, as `make fleet` runs it — two Envoys with the filter
//! (envoy/fleet/envoy-fleet.yaml, its ports replaced) in front of two broker replicas
//! sharing a real `redis-server` (`[store]`), the simulator and the dev IdP. A broker
//! replica dies under load and no client notices; Redis stops and comes back under load
//! and nothing is forwarded without a token. (Rotation with two replicas on Redis, and
//! no plain secret in any Redis key: broker/tests/broker/fleet.rs.)

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    broker_config, envoy_log_tail, listener_address, read_lossy, repo_root, start_envoy,
    wait_until_ready, Envoy, Paths, Process, ScratchDir, KEYS_DEADLINE, WORKER_SYNC,
};
use crate::tokens;

/// The fleet's fixed ports in envoy/fleet/envoy-fleet.yaml, replaced by the test's.
const FLEET_ADMIN: u16 = 9911;
const FLEET_LISTENER: u16 = 10100;
const FLEET_SIM: u16 = 10180;
const FLEET_IDP: u16 = 10170;
const FLEET_BROKERS: [u16; 2] = [10190, 10191];

/// Extra simulator users (`--users`): per-user identities, one broker call each.
const EXTRA_USERS: u64 = 2000;

/// A `redis-server` on a free loopback port, no persistence; stopped on drop.
struct Redis {
    child: Option<std::process::Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis = Redis {
            child: None,
            port,
            dir,
        };
        redis.run();
        redis
    }

    /// Starts (again) on its port and waits until it accepts connections.
    fn run(&mut self) {
        let bin = std::env::var("LOOKERGATE_REDIS_BIN").unwrap_or_else(|_| "redis-server".into());
        let child = std::process::Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} (apt-get install redis-server): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
    }
}

struct FleetEnvoy {
    envoy: Envoy,
    admin: SocketAddr,
    listener: SocketAddr,
}

/// A running fleet. Everything stops on drop; logs are printed if the test failed.
pub struct Fleet {
    pub client: reqwest::Client,
    envoys: Vec<FleetEnvoy>,
    sim: SocketAddr,
    brokers: Vec<Process>,
    services: Vec<Process>,
    redis: Redis,
    dir: ScratchDir,
}

impl Fleet {
    pub async fn start() -> Fleet {
        let paths = Paths::from_env();
        let dir = ScratchDir::new();
        let users = EXTRA_USERS.to_string();
        let (sim_process, sim) = Process::start_service(
            "looker-sim",
            &paths.sim,
            &["--listen", "127.0.0.1:0", "--users", &users],
            &dir.0,
        );
        let (idp_process, idp) = Process::start_service(
            "idp",
            &paths.idp,
            &["idp", "--listen", "127.0.0.1:0"],
            &dir.0,
        );
        let redis = Redis::start(&dir.0);
        // Both replicas share the store: one sealing key (32 random bytes, base64).
        let key = dir.0.join("store-key");
        let mut bytes = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
            &mut bytes,
        )
        .expect("32 random bytes");
        std::fs::write(
            &key,
            base64::engine::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes),
        )
        .expect("store key");
        let store = format!(
            "\n[store]\nurl = \"redis://127.0.0.1:{}/0\"\nkey_file = \"{}\"\n",
            redis.port,
            key.display()
        );
        let config = dir.0.join("broker.toml");
        std::fs::write(&config, broker_config(&paths.broker, sim) + &store).expect("broker config");
        let config = config.to_string_lossy().into_owned();
        let mut brokers = Vec::new();
        let mut broker_ports = Vec::new();
        for name in ["broker-1", "broker-2"] {
            let (process, addr) = Process::start_service(
                name,
                &paths.broker,
                &["--listen", "127.0.0.1:0", "--config", &config],
                &dir.0,
            );
            brokers.push(process);
            broker_ports.push(addr.port());
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");
        let yaml = fleet_yaml(&paths.wasm, sim.port(), idp.port(), &broker_ports);
        let mut envoys = Vec::new();
        for n in 1..=2 {
            let envoy_dir = dir.0.join(format!("envoy-{n}"));
            std::fs::create_dir_all(&envoy_dir).expect("envoy dir");
            let mut envoy = start_envoy(&paths.envoy, &envoy_dir, &yaml);
            let admin = match wait_until_ready(&mut envoy, &envoy_dir).await {
                Ok(admin) => admin,
                Err(why) => panic!(
                    "Envoy #{n} did not become ready: {why}\n{}",
                    envoy_log_tail(&envoy.process.log, 120)
                ),
            };
            let listener = listener_address(&client, admin, "looker_api").await;
            envoys.push(FleetEnvoy {
                envoy,
                admin,
                listener,
            });
        }
        let fleet = Fleet {
            client,
            envoys,
            sim,
            brokers,
            services: vec![sim_process, idp_process],
            redis,
            dir,
        };
        fleet.wait_for_keys().await;
        fleet
    }

    /// Until every Envoy fetched the IdP's keys, then one tick for every worker.
    async fn wait_for_keys(&self) {
        let fetched = "wasmcustom.lookergate.jwks.fetch_ok.idp_lookergate_demo";
        let deadline = Instant::now() + KEYS_DEADLINE;
        for n in 0..self.envoys.len() {
            while self.counter(n, fetched).await == 0 {
                assert!(Instant::now() < deadline, "Envoy #{} has no keys", n + 1);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(WORKER_SYNC).await;
    }

    /// `path` on Envoy `n` (0 or 1).
    pub fn url(&self, n: usize, path: &str) -> String {
        format!("http://{}{path}", self.envoys[n].listener)
    }

    /// A counter of Envoy `n`'s `/stats` (0 when it does not exist yet).
    pub async fn counter(&self, n: usize, name: &str) -> u64 {
        let url = format!(
            "http://{}/stats?filter=^{}$",
            self.envoys[n].admin,
            name.replace('.', "\\.")
        );
        let text = match self.client.get(&url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(e) => panic!("GET {url}: {e}"),
        };
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(": ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// What the simulator received for `path` (the clients' requests the gateways
    /// forwarded; the brokers' logins and user lookups are other paths).
    pub async fn forwarded(&self, path: &str) -> Vec<Value> {
        let url = format!("http://{}/__sim/requests", self.sim);
        let response = self.client.get(&url).send().await;
        let list: Value = match response {
            Ok(response) => response.json().await.expect("/__sim/requests is JSON"),
            Err(e) => panic!("GET {url}: {e}"),
        };
        list.as_array()
            .expect("a list")
            .iter()
            .filter(|r| r["path"] == path)
            .cloned()
            .collect()
    }

    /// The `token_issued` events broker replica `n` logged.
    pub fn tokens_issued_by(&self, n: usize) -> usize {
        read_lossy(&self.brokers[n].log)
            .lines()
            .filter(|l| l.contains(r#""event":"token_issued""#))
            .count()
    }

    /// SIGKILLs broker replica `n` (no goodbye to open connections).
    pub fn kill_broker(&mut self, n: usize) {
        let broker = &mut self.brokers[n];
        let _ = broker.child.kill();
        let _ = broker.child.wait();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (n, envoy) in self.envoys.iter().enumerate() {
                eprintln!(
                    "==== Envoy #{} ====\n{}",
                    n + 1,
                    envoy_log_tail(&envoy.envoy.process.log, 60)
                );
            }
            for process in self.brokers.iter().chain(&self.services) {
                eprintln!(
                    "==== {} ====\n{}",
                    process.log.display(),
                    tail_of(&process.log)
                );
            }
            eprintln!("(fleet files in {})", self.dir.0.display());
        }
    }
}

fn tail_of(path: &Path) -> String {
    let text = read_lossy(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// envoy/fleet/envoy-fleet.yaml with this test's ports (admin and listener 0) and wasm.
fn fleet_yaml(wasm: &Path, sim: u16, idp: u16, brokers: &[u16]) -> String {
    let path = repo_root().join("envoy/fleet/envoy-fleet.yaml");
    let mut yaml =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut ports = vec![
        (FLEET_ADMIN, 0),
        (FLEET_LISTENER, 0),
        (FLEET_SIM, sim),
        (FLEET_IDP, idp),
    ];
    ports.extend(FLEET_BROKERS.iter().copied().zip(brokers.iter().copied()));
    for (fleet, test) in ports {
        let from = format!("port_value: {fleet} }}");
        assert_eq!(
            yaml.matches(&from).count(),
            1,
            "{from} in {}",
            path.display()
        );
        yaml = yaml.replace(&from, &format!("port_value: {test} }}"));
    }
    let shipped = "filename: target/wasm32-wasip1/release/lookergate.wasm";
    assert!(
        yaml.contains(shipped),
        "the fleet config's wasm path changed"
    );
    yaml.replace(shipped, &format!("filename: {}", wasm.display()))
}

/// A token whose per-user identity is `user-<n>@example.com` (the demo rule
/// `carol-reads-as-herself` maps carol's e-mail claim to her Looker user).
fn per_user_token(n: u64) -> String {
    tokens::with("carol", |spec| spec.email = format!("user-{n}@example.com"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broker_killed_under_load_fails_no_client_request() {
    const REQUESTS: u64 = 200;
    const EVERY: Duration = Duration::from_millis(20);
    const KILL_AFTER: u64 = 60;
    let mut fleet = Fleet::start().await;
    let mut requests = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..REQUESTS {
        if i == KILL_AFTER {
            fleet.kill_broker(0);
        }
        // A steady rate, alternating Envoys, each request a new identity: a callout each.
        tokio::time::sleep_until((started + EVERY * (i as u32)).into()).await;
        let request = fleet
            .client
            .get(fleet.url((i % 2) as usize, "/api/4.0/dashboards/1"))
            .bearer_auth(per_user_token(i + 1));
        requests.spawn(async move {
            let reply = request.send().await;
            match reply {
                Ok(reply) => (
                    i,
                    reply.status().as_u16(),
                    reply.text().await.unwrap_or_default(),
                ),
                Err(e) => (i, 0, e.to_string()),
            }
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = requests.join_next().await {
        let (i, status, body) = done.expect("request task");
        if status != 200 {
            failed.push(format!("#{i} (Envoy #{}): {status} {body}", i % 2 + 1));
        }
    }
    failed.sort();
    assert!(
        failed.is_empty(),
        "{} of {REQUESTS} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );

    // Both replicas served before the kill; the survivor served the rest, and the
    // filter's retry carried calls that met the dead one.
    assert!(
        fleet.tokens_issued_by(0) > 0,
        "broker #1 served nothing before it died"
    );
    assert!(fleet.tokens_issued_by(1) > 0, "broker #2 served nothing");
    let mut retries = 0;
    for n in 0..2 {
        retries += fleet
            .counter(n, "wasmcustom.lookergate.broker.retries")
            .await;
    }
    assert!(
        retries > 0,
        "no token call was retried: the kill was not exercised"
    );
    // Nothing reached Looker without a token the broker issued.
    let forwarded = fleet.forwarded("/api/4.0/dashboards/1").await;
    assert_eq!(forwarded.len() as u64, REQUESTS);
    for request in &forwarded {
        let auth = request["headers"]["authorization"]
            .as_str()
            .unwrap_or_default();
        assert!(
            auth.starts_with("token ") && auth.len() > 10,
            "forwarded with {auth:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_under_load_forwards_nothing_without_a_token_and_recovers() {
    let mut fleet = Fleet::start().await;
    // Identities 1..=40 get their tokens while Redis is up (cached by Envoy and broker).
    for n in 1..=40 {
        let reply = fleet
            .client
            .get(fleet.url((n % 2) as usize, "/api/4.0/dashboards/1"))
            .bearer_auth(per_user_token(n))
            .send()
            .await
            .expect("request through Envoy");
        assert_eq!(
            reply.status().as_u16(),
            200,
            "identity {n} before Redis stopped"
        );
    }
    fleet.redis.stop();
    // Under load while Redis is down: known identities (on the Envoy that cached them)
    // and new ones, on both Envoys.
    let mut outcomes = Vec::new();
    for i in 0..60u64 {
        let (n, envoy) = if i % 2 == 0 {
            let n = 1 + (i / 2) % 40;
            (n, n % 2)
        } else {
            (500 + i, (i / 2) % 2)
        };
        let reply = fleet
            .client
            .get(fleet.url(envoy as usize, "/api/4.0/dashboards/1"))
            .bearer_auth(per_user_token(n))
            .send()
            .await
            .expect("request through Envoy");
        let status = reply.status().as_u16();
        let body: Value =
            serde_json::from_str(&reply.text().await.unwrap_or_default()).unwrap_or_default();
        outcomes.push((n, status, body["error"].clone()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A cached identity keeps working; a new one is refused (fail closed: the broker does
    // not log in behind the store's back), never let through.
    for (n, status, error) in &outcomes {
        assert!(
            *status == 200 || (*status == 503 && error == "broker_unavailable"),
            "identity {n} with Redis down: {status} {error}"
        );
        if *n <= 40 {
            assert_eq!(*status, 200, "identity {n} had a cached token");
        } else {
            assert_eq!(*status, 503, "identity {n} is new: it needs the store");
        }
    }
    fleet.redis.run();
    // Recovery without restarts: new identities get tokens again, from both replicas (each
    // reconnects on its own): 20 in a row, within a bounded wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut next, mut in_a_row, mut recovered) = (900, 0, 0);
    while in_a_row < 20 {
        next += 1;
        let reply = fleet
            .client
            .get(fleet.url((next % 2) as usize, "/api/4.0/dashboards/1"))
            .bearer_auth(per_user_token(next))
            .send()
            .await
            .expect("request through Envoy");
        if reply.status().as_u16() == 200 {
            in_a_row += 1;
            recovered += 1;
        } else {
            in_a_row = 0;
            assert!(
                Instant::now() < deadline,
                "no recovery after Redis came back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Nothing reached Looker without a token a broker issued.
    let forwarded = fleet.forwarded("/api/4.0/dashboards/1").await;
    let ok = outcomes
        .iter()
        .filter(|(_, status, _)| *status == 200)
        .count();
    assert_eq!(forwarded.len(), 40 + ok + recovered);
    for request in &forwarded {
        let auth = request["headers"]["authorization"]
            .as_str()
            .unwrap_or_default();
        assert!(
            auth.starts_with("token ") && auth.len() > 10,
            "forwarded with {auth:?}"
        );
    }
}
