//! Issue 16: a fleet on one machine, as `make fleet` runs it — two Envoys with the filter
//! (envoy/fleet/envoy-fleet.yaml, its ports replaced) in front of two broker replicas,
//! the simulator and the dev IdP. A broker replica dies under load and no client notices.

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
const EXTRA_USERS: u64 = 400;

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
        let config = dir.0.join("broker.toml");
        std::fs::write(&config, broker_config(&paths.broker, sim)).expect("broker config");
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

    /// What the simulator received under `/api/` other than logins.
    pub async fn forwarded_requests(&self) -> Vec<Value> {
        let url = format!("http://{}/__sim/requests", self.sim);
        let response = self.client.get(&url).send().await;
        let list: Value = match response {
            Ok(response) => response.json().await.expect("/__sim/requests is JSON"),
            Err(e) => panic!("GET {url}: {e}"),
        };
        list.as_array()
            .expect("a list")
            .iter()
            .filter(|r| {
                !r["path"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("/api/4.0/login")
            })
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
/// `carol-as-herself` maps carol's e-mail claim to her Looker user).
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
    let forwarded = fleet.forwarded_requests().await;
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
