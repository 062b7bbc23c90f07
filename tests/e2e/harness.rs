//! One gateway per test: the Looker simulator, the dev IdP (`lookergate idp`, whose keys
//! the filter fetches through discovery), the broker (or a fake in its place) and a real
//! Envoy running `envoy/demo.yaml` with its ports replaced. Everything is killed on drop;
//! if the test failed, the logs of all of them go into the test's output.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use lookergate_cli::source::{single_plugin_json, with_plugin_json};
use lookergate_cli::{demo_envoy_yaml, DemoEnvoyPorts};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// The demo's gateway -> broker credential (DESIGN.md).
pub const GATEWAY_CREDENTIAL: &str = "demo-gateway-secret";
/// The demo plugin's broker timeout (`broker.timeout` in envoy/demo.yaml).
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long Envoy may take to load the wasm and report ready on a busy machine.
const ENVOY_READY_DEADLINE: Duration = Duration::from_secs(60);
const SERVICE_READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long the filter may take to fetch the IdP's keys once Envoy is ready.
pub const KEYS_DEADLINE: Duration = Duration::from_secs(20);
/// The filter's tick (src/filter.rs): a worker installs keys another worker fetched on
/// its next tick, so every worker has them one tick (plus slack) after the fetch.
pub const WORKER_SYNC: Duration = Duration::from_millis(1200);
/// The demo issuer as a metric name segment (`lookergate.jwks.*.<issuer>`).
pub const DEMO_ISSUER_METRIC: &str = "idp_lookergate_demo";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the binaries are: `make test` sets the variables; defaults are the repo paths.
pub struct Paths {
    pub envoy: PathBuf,
    pub wasm: PathBuf,
    pub broker: PathBuf,
    pub sim: PathBuf,
    /// The `lookergate` CLI, for `lookergate idp`.
    pub idp: PathBuf,
}

impl Paths {
    pub fn from_env() -> Paths {
        let root = repo_root();
        let pick = |var: &str, default: &str| {
            let path = std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join(default));
            assert!(
                path.exists(),
                "{var}: {} does not exist; run the e2e tests with `make test` (it builds the wasm, \
                 installs Envoy into .venv and builds the broker, simulator and CLI)",
                path.display()
            );
            path
        };
        Paths {
            envoy: pick("LOOKERGATE_ENVOY", ".venv/bin/envoy"),
            wasm: pick(
                "LOOKERGATE_WASM",
                "target/wasm32-wasip1/release/lookergate.wasm",
            ),
            broker: pick("LOOKERGATE_BROKER_BIN", "target/debug/lookergate-broker"),
            sim: pick("LOOKERGATE_SIM_BIN", "target/debug/lookergate-looker-sim"),
            idp: pick("LOOKERGATE_IDP_BIN", "target/debug/lookergate"),
        }
    }
}

/// A scratch directory for one gateway; kept (and named in the output) if the test failed.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new() -> ScratchDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lookergate-e2e-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(scratch files kept in {})", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process whose output goes to files; stopped on drop.
pub struct Process {
    name: &'static str,
    pub child: Child,
    /// stderr (and, for services, stdout after the `listening on` line).
    pub log: PathBuf,
}

impl Process {
    /// Starts a native lookergate service and waits for its `listening on <addr>` line.
    pub fn start_service(
        name: &'static str,
        bin: &Path,
        args: &[&str],
        dir: &Path,
    ) -> (Process, SocketAddr) {
        let log = dir.join(format!("{name}.log"));
        let stderr = File::create(&log).expect("create log");
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let stdout_log = dir.join(format!("{name}.stdout"));
        // Keep draining stdout after the first line so the service never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            if let Ok(mut out) = File::create(stdout_log) {
                for line in lines.map_while(Result::ok) {
                    let _ = writeln!(out, "{line}");
                }
            }
        });
        let mut process = Process { name, child, log };
        let first = match rx.recv_timeout(SERVICE_READY_DEADLINE) {
            Ok(Some(Ok(line))) => line,
            other => {
                process.stop();
                panic!(
                    "{name} did not print `listening on <addr>` ({other:?}); its log:\n{}",
                    tail(&process.log, 60)
                );
            }
        };
        let addr = first
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!("{name}: first stdout line is not `listening on <addr>`: {first:?}")
            });
        (process, addr)
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM (so Envoy cleans up its shared memory), then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        if self.has_exited() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.has_exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The end of Envoy's log without its start-up listing of extensions and header maps.
pub fn envoy_log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains("]   ")).collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What stands at the broker's address.
#[derive(Debug, Clone)]
pub enum BrokerKind {
    /// The real `lookergate-broker`, talking to the simulator.
    Real,
    /// Nothing listens there.
    Down,
    /// Accepts connections and never answers.
    Silent,
    /// Answers every request `200` with a body that is not JSON.
    Garbage,
    /// Answers by a script and records what it was asked (see [`FakeBroker`]).
    Scripted(Arc<FakeBroker>),
}

/// The dev IdP when Envoy starts, and what `Gateway::start_with` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdpAtStart {
    /// It answers; start returns once the filter fetched its keys and every worker
    /// installed them (what most tests want: no 503 `keys_unavailable` race).
    KeysLoaded,
    /// It answers; start returns as soon as Envoy is ready (keys may not be fetched yet).
    Answering,
    /// Discovery and JWKS fail in this `/__idp/fail` mode (`"500"`, `"garbage"`) from
    /// before Envoy starts; start returns as soon as Envoy is ready.
    Failing(&'static str),
}

pub struct Options {
    pub broker: BrokerKind,
    pub idp: IdpAtStart,
    /// Envoy reaches the IdP through a proxy that holds every piece of a request this
    /// long (an IdP far away); zero: directly.
    pub idp_latency: Duration,
    /// Replaces the demo plugin JSON (start from [`demo_plugin_config`]).
    pub plugin: Option<Value>,
    /// Edits the final Envoy YAML (for diagnosing a deployment setting; tests of the
    /// shipped behaviour leave it `None`).
    pub envoy_yaml_edit: Option<fn(String) -> String>,
    /// The rate limit service (RLS v3) at this address becomes the cluster
    /// `lookergate_rls` (HTTP/2), for `rate_limit_service.cluster`.
    pub rls: Option<SocketAddr>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            broker: BrokerKind::Real,
            idp: IdpAtStart::KeysLoaded,
            idp_latency: Duration::ZERO,
            plugin: None,
            envoy_yaml_edit: None,
            rls: None,
        }
    }
}

/// A running gateway: Envoy in front of the simulator, with a broker.
pub struct Gateway {
    pub client: reqwest::Client,
    listener: SocketAddr,
    /// Looker's UI host (TLS, the demo's self-signed certificate).
    ui_listener: SocketAddr,
    admin: SocketAddr,
    sim: SocketAddr,
    broker: SocketAddr,
    idp: SocketAddr,
    fake_broker: Option<AbortHandle>,
    idp_proxy: Option<AbortHandle>,
    envoy: Envoy,
    services: Vec<Process>,
    /// How to start the real broker again (`restart_broker`).
    broker_command: Option<(PathBuf, String)>,
    /// The Envoy config it runs (ports 0): `start_peer` runs another Envoy on it.
    envoy_yaml: String,
    _dir: ScratchDir,
}

pub struct Envoy {
    pub process: Process,
    access_log: PathBuf,
    config: PathBuf,
    base_id: u32,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.process.stop();
        // Envoy leaves its hot-restart shared memory behind (named base id * 10 + epoch).
        let _ = fs::remove_file(format!(
            "/dev/shm/envoy_shared_memory_{}",
            self.base_id * 10
        ));
    }
}

impl Gateway {
    /// The demo gateway with the real broker.
    pub async fn start() -> Gateway {
        Gateway::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Gateway {
        let paths = Paths::from_env();
        let dir = ScratchDir::new();
        let (sim_process, sim) = Process::start_service(
            "looker-sim",
            &paths.sim,
            &["--listen", "127.0.0.1:0"],
            &dir.0,
        );
        let (idp_process, idp) = Process::start_service(
            "idp",
            &paths.idp,
            &["idp", "--listen", "127.0.0.1:0"],
            &dir.0,
        );
        let mut services = vec![sim_process, idp_process];
        if let IdpAtStart::Failing(mode) = options.idp {
            set_idp_fail_mode(idp, mode).await;
        }
        let mut fake_broker = None;
        let mut broker_command = None;
        let broker = match options.broker {
            BrokerKind::Real => {
                let config = dir.0.join("broker.toml");
                fs::write(&config, broker_config(&paths.broker, sim)).expect("write broker config");
                let config = config.to_string_lossy().into_owned();
                let (process, addr) = Process::start_service(
                    "broker",
                    &paths.broker,
                    &["--listen", "127.0.0.1:0", "--config", &config],
                    &dir.0,
                );
                services.push(process);
                broker_command = Some((paths.broker.clone(), config));
                addr
            }
            BrokerKind::Scripted(fake) => {
                let (addr, handle) = fake.serve(sim).await;
                fake_broker = Some(handle);
                addr
            }
            BrokerKind::Down => closed_port().await,
            BrokerKind::Silent => {
                let (addr, handle) = silent_server().await;
                fake_broker = Some(handle);
                addr
            }
            BrokerKind::Garbage => {
                let (addr, handle) = garbage_server().await;
                fake_broker = Some(handle);
                addr
            }
        };
        let plugin = options.plugin.clone().unwrap_or_else(demo_plugin_config);
        let remote_keys = plugin["issuers"].as_array().is_some_and(|issuers| {
            issuers
                .iter()
                .any(|i| i["discovery"] == true || i["jwks_uri"].is_string())
        });
        let mut idp_proxy = None;
        let idp_for_envoy = if options.idp_latency.is_zero() {
            idp
        } else {
            let (addr, handle) = delaying_proxy(idp, options.idp_latency).await;
            idp_proxy = Some(handle);
            addr
        };
        let mut yaml = envoy_config(
            sim,
            broker,
            idp_for_envoy,
            &paths.wasm,
            options.envoy_yaml_edit,
            options.plugin.as_ref(),
        );
        if let Some(rls) = options.rls {
            yaml = with_rls_cluster(&yaml, rls);
        }
        let mut envoy = start_envoy(&paths.envoy, &dir.0, &yaml);
        let admin = match wait_until_ready(&mut envoy, &dir.0).await {
            Ok(admin) => admin,
            Err(why) => {
                envoy.process.stop();
                panic!(
                    "Envoy did not become ready: {why}\n==== Envoy log ====\n{}",
                    envoy_log_tail(&envoy.process.log, 120)
                );
            }
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");
        let listener = listener_address(&client, admin, "looker_api").await;
        let ui_listener = listener_address(&client, admin, "looker_ui").await;
        let gateway = Gateway {
            client,
            listener,
            ui_listener,
            admin,
            sim,
            broker,
            idp,
            fake_broker,
            idp_proxy,
            envoy,
            services,
            broker_command,
            envoy_yaml: yaml,
            _dir: dir,
        };
        if options.idp == IdpAtStart::KeysLoaded && remote_keys {
            gateway.wait_for_keys().await;
        }
        gateway
    }

    /// Another Envoy with the same config (its own ports), in front of the same
    /// simulator, broker, IdP (and rate limit service): a replica of this gateway.
    /// Returns once it is ready and has the IdP's keys.
    pub async fn start_peer(&self) -> Peer {
        let paths = Paths::from_env();
        let dir = ScratchDir::new();
        let mut envoy = start_envoy(&paths.envoy, &dir.0, &self.envoy_yaml);
        let admin = match wait_until_ready(&mut envoy, &dir.0).await {
            Ok(admin) => admin,
            Err(why) => {
                envoy.process.stop();
                panic!(
                    "the peer Envoy did not become ready: {why}\n==== Envoy log ====\n{}",
                    envoy_log_tail(&envoy.process.log, 120)
                );
            }
        };
        let listener = listener_address(&self.client, admin, "looker_api").await;
        let peer = Peer {
            client: self.client.clone(),
            listener,
            admin,
            envoy,
            _dir: dir,
        };
        let fetched = format!("wasmcustom.lookergate.jwks.fetch_ok.{DEMO_ISSUER_METRIC}");
        let deadline = Instant::now() + KEYS_DEADLINE;
        while peer.envoy_counter(&fetched).await == 0 {
            assert!(
                Instant::now() < deadline,
                "the peer did not fetch the IdP's keys within {KEYS_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(WORKER_SYNC).await;
        peer
    }

    /// Waits (with a deadline) until the filter fetched the IdP's keys, then one worker
    /// tick so that every worker installed them from shared data.
    async fn wait_for_keys(&self) {
        let fetched = format!("wasmcustom.lookergate.jwks.fetch_ok.{DEMO_ISSUER_METRIC}");
        let deadline = Instant::now() + KEYS_DEADLINE;
        while self.envoy_counter(&fetched).await == 0 {
            assert!(
                Instant::now() < deadline,
                "the filter did not fetch the IdP's keys within {KEYS_DEADLINE:?} (IdP saw {})",
                self.idp_stats().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(WORKER_SYNC).await;
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.listener)
    }

    /// A URL on Looker's UI host listener (https, the demo's self-signed certificate).
    pub fn ui_url(&self, path_and_query: &str) -> String {
        format!("https://{}{path_and_query}", self.ui_listener)
    }

    /// The API listener's address (for hand-made connections, e.g. HTTP/2).
    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    /// Sends a request through the gateway and records what came back.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        send_request(request).await
    }

    /// `GET path` with `Authorization: Bearer <token>` when a token is given.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    /// Sends `method target` byte for byte (no client-side normalisation of `..`, `%2e`
    /// or `//`, which reqwest would do) and reads the reply until Envoy closes.
    pub async fn send_raw(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n",
            self.listener
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.send_raw_bytes(&[request.into_bytes()]).await
    }

    /// The `host` header value clients use for this gateway.
    pub fn authority(&self) -> String {
        self.listener.to_string()
    }

    /// Writes `pieces` to one connection, pausing between them (so Envoy sees a body
    /// arrive in several reads), and reads the reply until Envoy closes.
    pub async fn send_raw_bytes(&self, pieces: &[Vec<u8>]) -> Reply {
        let started = Instant::now();
        let mut socket = tokio::net::TcpStream::connect(self.listener)
            .await
            .expect("connect to Envoy");
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            // Envoy may answer (and close) before everything was written: that is fine.
            if socket.write_all(piece).await.is_err() {
                break;
            }
        }
        let mut raw = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(20), read_reply(&mut socket, &mut raw)).await;
        parse_raw_reply(&raw, started.elapsed())
    }

    /// Opens a request and sends its head only, never ending the stream: the body and
    /// trailers follow piece by piece through the [`StreamedRequest`].
    pub async fn open_request(
        &self,
        wire: Wire,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> StreamedRequest {
        StreamedRequest::open(self.listener, wire, method, target, headers, false).await
    }

    /// One request whose body is `chunks` (each its own DATA frame or chunk, a pause
    /// apart, so Envoy sees them separately) ended by the trailer block `trailers`.
    pub async fn send_with_trailers(
        &self,
        wire: Wire,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        chunks: &[&str],
        trailers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.open_request(wire, method, target, headers).await;
        for chunk in chunks {
            tokio::time::sleep(PIECE_PAUSE).await;
            request.send_data(chunk).await;
        }
        tokio::time::sleep(PIECE_PAUSE).await;
        request.send_trailers(trailers).await;
        request.reply().await
    }

    /// The same request, but head, body and trailers leave in one write: Envoy decodes
    /// them all in one go, before any callout the head started can be answered.
    pub async fn send_at_once_with_trailers(
        &self,
        wire: Wire,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        chunks: &[&str],
        trailers: &[(&str, &str)],
    ) -> Reply {
        let mut request =
            StreamedRequest::open(self.listener, wire, method, target, headers, true).await;
        for chunk in chunks {
            request.send_data(chunk).await;
        }
        request.send_trailers(trailers).await;
        request.reply().await
    }

    async fn get_json(&self, url: String) -> Value {
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
    }

    /// Every request the simulator received under `/api/` (logins too), in order.
    pub async fn looker_requests(&self) -> Vec<Value> {
        let list = self
            .get_json(format!("http://{}/__sim/requests", self.sim))
            .await;
        list.as_array()
            .cloned()
            .unwrap_or_else(|| panic!("/__sim/requests is not a list: {list}"))
    }

    /// The requests Looker received other than the broker's logins: what the gateway
    /// forwarded.
    pub async fn forwarded_requests(&self) -> Vec<Value> {
        let is_login = |r: &Value| {
            let path = r["path"].as_str().unwrap_or_default();
            path == "/api/4.0/login" || path.starts_with("/api/4.0/login/")
        };
        self.looker_requests()
            .await
            .into_iter()
            .filter(|r| !is_login(r))
            .collect()
    }

    /// Every login attempt the simulator saw.
    pub async fn looker_logins(&self) -> Vec<Value> {
        let list = self
            .get_json(format!("http://{}/__sim/logins", self.sim))
            .await;
        list.as_array()
            .cloned()
            .unwrap_or_else(|| panic!("/__sim/logins is not a list: {list}"))
    }

    /// Asks the real broker for a role's token, as Envoy does (the broker caches it).
    pub async fn broker_token(&self, role: &str) -> String {
        let body = json!({"identity": {"kind": "role", "name": role}, "subject": "e2e", "request_id": "e2e"});
        let url = format!("http://{}/v1/token", self.broker);
        let response = self
            .client
            .post(&url)
            .bearer_auth(GATEWAY_CREDENTIAL)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert_eq!(
            response.status().as_u16(),
            200,
            "POST {url} for role {role}"
        );
        let answer: Value = response.json().await.expect("broker answer is JSON");
        answer["access_token"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no access_token in {answer}"))
    }

    /// Requests Envoy sent to the `lookergate_broker` cluster (from Envoy's own stats).
    pub async fn broker_calls(&self) -> u64 {
        self.envoy_counter("cluster.lookergate_broker.upstream_rq_total")
            .await
    }

    pub async fn envoy_counter(&self, name: &str) -> u64 {
        let url = format!(
            "http://{}/stats?filter=^{}$",
            self.admin,
            name.replace('.', "\\.")
        );
        let text = self
            .client
            .get(&url)
            .send()
            .await
            .expect("admin /stats")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(": "))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Gateway {
    pub fn sim_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sim)
    }

    async fn sim_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> u16 {
        let mut request = self.client.request(method, self.sim_url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("simulator {path}: {e}"))
            .status()
            .as_u16()
    }

    /// The dev IdP's address (discovery, JWKS, `/token`, `/rotate`, `/__idp/*`).
    pub fn idp_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.idp)
    }

    /// `GET /__idp/stats`: discovery and JWKS fetches served, published kids, fail mode.
    pub async fn idp_stats(&self) -> Value {
        self.get_json(self.idp_url("/__idp/stats")).await
    }

    /// `POST /__idp/fail`: discovery and JWKS answer `"500"`, `"garbage"` or `"ok"`.
    pub async fn idp_fail(&self, mode: &str) {
        set_idp_fail_mode(self.idp, mode).await;
    }

    /// `POST /rotate?keep_old=..`: a new signing key; returns the IdP's answer
    /// (`{"kid", "published"}`).
    pub async fn idp_rotate(&self, keep_old: bool) -> Value {
        let url = self.idp_url(&format!("/rotate?keep_old={keep_old}"));
        let response = self
            .client
            .post(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "POST {url}");
        response.json().await.expect("rotate answer is JSON")
    }

    /// A token minted by the IdP (`POST /token`) for a demo user, signed with its
    /// current key (or the published key `kid`).
    pub async fn idp_token(&self, user: &str, kid: Option<&str>) -> String {
        let mut body = json!({"user": user, "ttl": 600});
        if let Some(kid) = kid {
            body["kid"] = json!(kid);
        }
        let url = self.idp_url("/token");
        let response = self
            .client
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "POST {url} {body}");
        let answer: Value = response.json().await.expect("token answer is JSON");
        answer["access_token"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no access_token in {answer}"))
    }

    /// `POST /__sim/faults`: the next logins / API calls fail as described.
    pub async fn sim_faults(&self, faults: Value) {
        let status = self
            .sim_call(reqwest::Method::POST, "/__sim/faults", Some(faults.clone()))
            .await;
        assert_eq!(status, 204, "POST /__sim/faults {faults}");
    }

    pub async fn sim_clear_faults(&self) {
        let status = self
            .sim_call(reqwest::Method::DELETE, "/__sim/faults", None)
            .await;
        assert_eq!(status, 204, "DELETE /__sim/faults");
    }

    /// `POST /__sim/revoke`; the simulator's status (204 revoked, 404 not live).
    pub async fn sim_revoke(&self, access_token: &str) -> u16 {
        self.sim_call(
            reqwest::Method::POST,
            "/__sim/revoke",
            Some(json!({ "access_token": access_token })),
        )
        .await
    }

    pub async fn clear_looker_requests(&self) {
        let status = self
            .sim_call(reqwest::Method::DELETE, "/__sim/requests", None)
            .await;
        assert_eq!(status, 204, "DELETE /__sim/requests");
    }

    /// Envoy's `/stats` lines whose name contains `part`.
    pub async fn envoy_stats(&self, part: &str) -> Vec<String> {
        let text = self
            .client
            .get(format!("http://{}/stats", self.admin))
            .send()
            .await
            .expect("admin /stats")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.contains(part))
            .map(str::to_owned)
            .collect()
    }

    /// Whether the Envoy process is still running.
    pub fn envoy_is_running(&mut self) -> bool {
        !self.envoy.process.has_exited()
    }

    /// The access log's JSON lines, waiting (with a deadline) until there are `at_least`
    /// (Envoy writes it on a flush timer, every 100 ms here).
    pub async fn access_log(&self, at_least: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let entries: Vec<Value> = fs::read_to_string(&self.envoy.access_log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if entries.len() >= at_least || Instant::now() > deadline {
                return entries;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every log this gateway's processes wrote so far: (name, text). Envoy's access
    /// log is written on a timer, so callers wanting it complete use `access_log` first.
    pub fn captured_logs(&self) -> Vec<(String, String)> {
        let mut logs = vec![
            ("envoy log".to_owned(), read_lossy(&self.envoy.process.log)),
            ("access log".to_owned(), read_lossy(&self.envoy.access_log)),
        ];
        if let Ok(entries) = fs::read_dir(&self._dir.0) {
            for entry in entries.flatten() {
                let path = entry.path();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if name.ends_with(".log") && name != "envoy.log" && name != "access.log"
                    || name.ends_with(".stdout")
                {
                    logs.push((name, read_lossy(&path)));
                }
            }
        }
        logs
    }

    /// The real broker's JSON log lines with `"event": event` (e.g. `token_issued`), with
    /// `identity` (logged as its JSON text) decoded.
    pub fn broker_events(&self, event: &str) -> Vec<Value> {
        let mut events = Vec::new();
        for service in self
            .services
            .iter()
            .filter(|s| s.name.starts_with("broker"))
        {
            events.extend(
                read_lossy(&service.log)
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|v| v["event"] == event)
                    .map(|mut v| {
                        if let Some(identity) = v["identity"].as_str() {
                            v["identity"] = serde_json::from_str(identity)
                                .unwrap_or_else(|e| panic!("identity {identity:?}: {e}"));
                        }
                        v
                    }),
            );
        }
        events
    }

    /// SIGKILLs the real broker (no goodbye to open connections).
    pub fn kill_broker(&mut self) {
        let broker = self
            .services
            .iter_mut()
            .filter(|s| s.name.starts_with("broker"))
            .find_map(|s| (!s.has_exited()).then_some(s))
            .expect("a running real broker");
        let _ = broker.child.kill();
        let _ = broker.child.wait();
    }

    /// Starts the real broker again on its old address (after `kill_broker`).
    pub fn restart_broker(&mut self) {
        let (bin, config) = self
            .broker_command
            .clone()
            .expect("the gateway runs the real broker");
        let listen = self.broker.to_string();
        let deadline = Instant::now() + SERVICE_READY_DEADLINE;
        // The port is free once the old process is gone; SO_REUSEADDR covers TIME_WAIT.
        let (process, addr) = loop {
            let attempt = std::panic::catch_unwind(|| {
                Process::start_service(
                    "broker-restarted",
                    &bin,
                    &["--listen", &listen, "--config", &config],
                    &self._dir.0,
                )
            });
            match attempt {
                Ok(started) => break started,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        };
        assert_eq!(addr, self.broker, "restarted broker on another address");
        self.services.push(process);
    }
}

/// The pause between the pieces of a [`Gateway::send_with_trailers`] request.
const PIECE_PAUSE: Duration = Duration::from_millis(40);
/// How long a streamed request may wait for its reply.
const REPLY_DEADLINE: Duration = Duration::from_secs(20);

/// How a request with trailers travels to Envoy's listener (the demo HCM's codec is
/// AUTO: it speaks both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// h2c with prior knowledge: HEADERS, DATA frames, then a trailer HEADERS frame
    /// with END_STREAM.
    Http2,
    /// HTTP/1.1 `transfer-encoding: chunked`, a trailer section after the last chunk.
    /// Envoy drops it unless the HCM sets `http_protocol_options.enable_trailers`.
    Http1Chunked,
}

/// A request sent piece by piece on its own connection: head at `open`, then body
/// pieces and trailers, then [`StreamedRequest::reply`]. Errors while sending are
/// ignored: Envoy may answer (and reset the stream) before everything was sent.
pub struct StreamedRequest {
    wire: Wire,
    started: Instant,
    stream: Streamed,
}

enum Streamed {
    Http2 {
        body: h2::SendStream<bytes::Bytes>,
        response: h2::client::ResponseFuture,
        /// The connection, not yet driven when everything is to leave in one write.
        unsent: Option<Box<H2Connection>>,
        driver: Option<AbortHandle>,
    },
    Http1 {
        socket: tokio::net::TcpStream,
        /// What is not written yet (everything, when it is to leave in one write).
        held: Option<Vec<u8>>,
    },
}

impl StreamedRequest {
    async fn open(
        listener: SocketAddr,
        wire: Wire,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        at_once: bool,
    ) -> StreamedRequest {
        let started = Instant::now();
        let socket = tokio::net::TcpStream::connect(listener)
            .await
            .expect("connect to Envoy");
        let stream = match wire {
            Wire::Http2 => {
                let (client, connection) = h2::client::handshake(socket)
                    .await
                    .expect("HTTP/2 handshake with Envoy");
                let mut request = http::Request::builder()
                    .method(method)
                    .uri(format!("http://{listener}{target}"));
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                let request = request.body(()).expect("HTTP/2 request");
                let mut client = client.ready().await.expect("HTTP/2 stream available");
                // No END_STREAM: a body or trailers follow.
                let (response, body) = client
                    .send_request(request, false)
                    .expect("send HTTP/2 HEADERS");
                let (unsent, driver) = if at_once {
                    (Some(Box::new(connection)), None)
                } else {
                    (None, Some(drive(connection)))
                };
                Streamed::Http2 {
                    body,
                    response,
                    unsent,
                    driver,
                }
            }
            Wire::Http1Chunked => {
                let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {listener}\r\n");
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
                let mut stream = Streamed::Http1 {
                    socket,
                    held: at_once.then(Vec::new),
                };
                stream.write_http1(head.as_bytes()).await;
                stream
            }
        };
        StreamedRequest {
            wire,
            started,
            stream,
        }
    }

    /// One DATA frame (HTTP/2) or chunk (HTTP/1.1); the stream stays open.
    pub async fn send_data(&mut self, piece: &str) {
        match &mut self.stream {
            Streamed::Http2 { body, .. } => {
                let _ = body.send_data(bytes::Bytes::copy_from_slice(piece.as_bytes()), false);
            }
            http1 => {
                let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
                http1.write_http1(chunk.as_bytes()).await;
            }
        }
    }

    /// The trailer block, which ends the request.
    pub async fn send_trailers(&mut self, trailers: &[(&str, &str)]) {
        match &mut self.stream {
            Streamed::Http2 { body, .. } => {
                let mut map = http::HeaderMap::new();
                for (name, value) in trailers {
                    map.append(
                        http::HeaderName::from_bytes(name.as_bytes()).expect("trailer name"),
                        http::HeaderValue::from_str(value).expect("trailer value"),
                    );
                }
                let _ = body.send_trailers(map);
            }
            http1 => {
                let mut last = "0\r\n".to_owned();
                for (name, value) in trailers {
                    last.push_str(&format!("{name}: {value}\r\n"));
                }
                last.push_str("\r\n");
                http1.write_http1(last.as_bytes()).await;
            }
        }
    }

    /// Sends what is held back, then waits (up to a deadline) for the whole reply.
    pub async fn reply(self) -> Reply {
        let StreamedRequest {
            wire,
            started,
            stream,
        } = self;
        match stream {
            Streamed::Http2 {
                body,
                response,
                unsent,
                driver,
            } => {
                let driver = driver.or_else(|| unsent.map(|connection| drive(*connection)));
                let read = async {
                    let response = response.await?;
                    let (head, mut answer) = response.into_parts();
                    let mut bytes = Vec::new();
                    while let Some(chunk) = answer.data().await {
                        let chunk = chunk?;
                        let _ = answer.flow_control().release_capacity(chunk.len());
                        bytes.extend_from_slice(&chunk);
                    }
                    Ok::<_, h2::Error>((head, bytes))
                };
                let outcome = tokio::time::timeout(REPLY_DEADLINE, read).await;
                drop(body);
                if let Some(driver) = driver {
                    driver.abort();
                }
                let (head, bytes) = match outcome {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(e)) => panic!("{wire:?}: the stream failed without a reply: {e}"),
                    Err(_) => panic!("{wire:?}: no reply within {REPLY_DEADLINE:?}"),
                };
                Reply {
                    status: head.status.as_u16(),
                    headers: head.headers,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                    elapsed: started.elapsed(),
                }
            }
            Streamed::Http1 { mut socket, held } => {
                if let Some(held) = held {
                    let _ = socket.write_all(&held).await;
                }
                let mut raw = Vec::new();
                let read = read_reply(&mut socket, &mut raw);
                if tokio::time::timeout(REPLY_DEADLINE, read).await.is_err() {
                    panic!("{wire:?}: no reply within {REPLY_DEADLINE:?}");
                }
                parse_raw_reply(&raw, started.elapsed())
            }
        }
    }
}

impl Streamed {
    async fn write_http1(&mut self, bytes: &[u8]) {
        if let Streamed::Http1 { socket, held } = self {
            match held {
                Some(held) => held.extend_from_slice(bytes),
                None => {
                    let _ = socket.write_all(bytes).await;
                }
            }
        }
    }
}

type H2Connection = h2::client::Connection<tokio::net::TcpStream, bytes::Bytes>;

/// Runs an HTTP/2 client connection in a task until it ends or is aborted.
fn drive(connection: H2Connection) -> AbortHandle {
    tokio::spawn(async move {
        let _ = connection.await;
    })
    .abort_handle()
}

/// Reads one HTTP/1.1 reply: up to its content-length, the end of a chunked body, or
/// the peer's close. (Waiting for the close costs Envoy's 1 s delayed-close timeout.)
async fn read_reply(socket: &mut tokio::net::TcpStream, raw: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    loop {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let body = &raw[end + 4..];
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = head
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        match length {
            Some(length) if body.len() >= length => return,
            None if chunked && body.ends_with(b"0\r\n\r\n") => return,
            _ => {}
        }
    }
}

pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Parses an HTTP/1.1 reply read off a socket (content-length or close-delimited body;
/// a chunked body is de-chunked).
fn parse_raw_reply(raw: &[u8], elapsed: Duration) -> Reply {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line from Envoy: {text:?}"));
    let mut header_map = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()),
                reqwest::header::HeaderValue::from_str(value.trim()),
            ) {
                header_map.append(name, value);
            }
        }
    }
    let chunked = header_map
        .get("transfer-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Reply {
        status,
        headers: header_map,
        body,
        elapsed,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// One answer of a [`FakeBroker`].
#[derive(Debug, Clone)]
pub enum FakeAnswer {
    /// A complete HTTP answer.
    Reply { status: u16, body: String },
    /// A real Looker token: the fake logs in to the simulator as the analyst role.
    LookerToken,
    /// Headers announcing `content-length` bytes, then only `body`, then close.
    CutShort { content_length: usize, body: String },
    /// Closes the connection without answering.
    Close,
}

/// What a [`FakeBroker`] was asked.
#[derive(Debug, Clone)]
pub struct FakeBrokerRequest {
    pub head: String,
    pub body: Value,
}

impl FakeBrokerRequest {
    pub fn path(&self) -> &str {
        self.head.split_whitespace().nth(1).unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// A broker stand-in: answers the n-th request with `script[n % len]` and records
/// every request.
#[derive(Debug)]
pub struct FakeBroker {
    script: Vec<FakeAnswer>,
    next: AtomicUsize,
    requests: Mutex<Vec<FakeBrokerRequest>>,
}

impl FakeBroker {
    pub fn new(script: Vec<FakeAnswer>) -> Arc<FakeBroker> {
        assert!(!script.is_empty(), "a fake broker needs a script");
        Arc::new(FakeBroker {
            script,
            next: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        })
    }

    pub fn requests(&self) -> Vec<FakeBrokerRequest> {
        self.requests.lock().expect("fake broker lock").clone()
    }

    async fn serve(self: Arc<FakeBroker>, sim: SocketAddr) -> (SocketAddr, AbortHandle) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let fake = Arc::clone(&self);
                tokio::spawn(async move {
                    let Some((head, body)) = read_request_text(&mut socket).await else {
                        return;
                    };
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    fake.requests
                        .lock()
                        .expect("fake broker lock")
                        .push(FakeBrokerRequest { head, body });
                    let n = fake.next.fetch_add(1, Ordering::SeqCst);
                    let answer = fake.script[n % fake.script.len()].clone();
                    let (status, body, length) = match answer {
                        FakeAnswer::Close => {
                            drop(socket);
                            return;
                        }
                        FakeAnswer::Reply { status, body } => {
                            let length = body.len();
                            (status, body, length)
                        }
                        FakeAnswer::CutShort {
                            content_length,
                            body,
                        } => (200, body, content_length),
                        FakeAnswer::LookerToken => {
                            let token =
                                sim_login(sim, "demo-analyst-id", "demo-analyst-secret").await;
                            let body = json!({"access_token": token, "token_type": "token", "expires_in": 3540});
                            let body = body.to_string();
                            let length = body.len();
                            (200, body, length)
                        }
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n{body}"
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (addr, task.abort_handle())
    }
}

/// Logs in to the simulator with API3 credentials, as the broker does.
pub async fn sim_login(sim: SocketAddr, client_id: &str, client_secret: &str) -> String {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let answer: Value = client
        .post(format!("http://{sim}/api/4.0/login"))
        .form(&[("client_id", client_id), ("client_secret", client_secret)])
        .send()
        .await
        .expect("simulator login")
        .json()
        .await
        .expect("simulator login JSON");
    answer["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// Reads one HTTP/1.1 request: (head, body by content-length).
async fn read_request_text(socket: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length: usize = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(str::to_owned))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some((head, buf[end + 4..end + 4 + length].to_vec()));
            }
        }
    }
}

/// A TCP listener that counts connections (and never answers): stands in for a
/// server a token's `jku`/`x5u` points at.
pub async fn connection_counter() -> (SocketAddr, Arc<AtomicUsize>, AbortHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (addr, count, task.abort_handle())
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for handle in [&self.fake_broker, &self.idp_proxy].into_iter().flatten() {
            handle.abort();
        }
        self.envoy.process.stop();
        for service in &mut self.services {
            service.stop();
        }
        if std::thread::panicking() {
            eprintln!("==== Envoy config: {} ====", self.envoy.config.display());
            eprintln!(
                "==== Envoy log (last 150 lines) ====\n{}",
                envoy_log_tail(&self.envoy.process.log, 150)
            );
            eprintln!(
                "==== Envoy access log ====\n{}",
                tail(&self.envoy.access_log, 40)
            );
            for service in &self.services {
                eprintln!(
                    "==== {} log (last 60 lines) ====\n{}",
                    service.name,
                    tail(&service.log, 60)
                );
            }
        }
    }
}

/// Sends a request (built for a gateway URL) and records what came back; usable from
/// spawned tasks, which cannot borrow the [`Gateway`].
pub async fn send_request(request: reqwest::RequestBuilder) -> Reply {
    let started = Instant::now();
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("request through Envoy failed: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    Reply {
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    }
}

/// What the client got back from the gateway.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub elapsed: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// The broker config for the tests: the broker's own embedded demo config
/// (`print-demo-config`) pointed at this test's simulator.
pub fn broker_config(broker: &Path, sim: SocketAddr) -> String {
    let out = Command::new(broker)
        .arg("print-demo-config")
        .output()
        .expect("run lookergate-broker print-demo-config");
    let demo = String::from_utf8(out.stdout).expect("demo config is UTF-8");
    let default_url = r#"looker_url = "http://127.0.0.1:10080""#;
    assert!(
        demo.contains(default_url),
        "the broker's demo config changed: {demo}"
    );
    assert!(
        demo.contains(GATEWAY_CREDENTIAL),
        "the broker's demo config has another gateway credential"
    );
    demo.replace(default_url, &format!(r#"looker_url = "http://{sim}""#))
}

pub fn demo_yaml() -> String {
    let path = repo_root().join("envoy/demo.yaml");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The demo plugin configuration, as written inline in envoy/demo.yaml.
pub fn demo_plugin_config() -> Value {
    let json =
        single_plugin_json("envoy/demo.yaml", &demo_yaml()).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("plugin JSON in envoy/demo.yaml: {e}"))
}

/// envoy/demo.yaml with the simulator, broker, IdP and wasm of this test, admin and
/// listener on port 0, then `edit` (a text edit of the demo's layout) and optionally
/// another plugin JSON.
fn envoy_config(
    sim: SocketAddr,
    broker: SocketAddr,
    idp: SocketAddr,
    wasm: &Path,
    edit: Option<fn(String) -> String>,
    plugin: Option<&Value>,
) -> String {
    let ports = DemoEnvoyPorts {
        admin: 0,
        listener: 0,
        ui: 0,
        looker: sim.port(),
        broker: broker.port(),
        idp: idp.port(),
    };
    let mut yaml = demo_envoy_yaml(&demo_yaml(), ports, wasm).unwrap_or_else(|e| panic!("{e}"));
    if let Some(edit) = edit {
        yaml = edit(yaml);
    }
    if let Some(plugin) = plugin {
        let json = serde_json::to_string_pretty(plugin).expect("plugin JSON");
        yaml = with_plugin_json("envoy/demo.yaml", &yaml, &json).unwrap_or_else(|e| panic!("{e}"));
    }
    yaml
}

pub fn start_envoy(bin: &Path, dir: &Path, yaml: &str) -> Envoy {
    // Unique per test process and gateway, so parallel Envoys never share hot-restart state.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base_id = (std::process::id() % 40_000) * 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 100;
    let config = dir.join("envoy.yaml");
    fs::write(&config, yaml).expect("write envoy config");
    let log = dir.join("envoy.log");
    let access_log = dir.join("access.log");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&config)
        .args(["--base-id", &base_id.to_string(), "--concurrency", "2"])
        // The access log is flushed every 10 s by default; tests read it right away.
        .args(["--file-flush-interval-msec", "100"])
        .args(["--log-level", "info", "--component-log-level"])
        // For debugging a failing test, e.g. `wasm:trace,http:debug,router:debug`.
        .arg(
            std::env::var("LOOKERGATE_E2E_ENVOY_COMPONENT_LOG")
                .unwrap_or_else(|_| "wasm:debug".to_owned()),
        )
        .arg("--admin-address-path")
        .arg(dir.join("admin.address"))
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(File::create(&access_log).expect("create access log"))
        .stderr(File::create(&log).expect("create envoy log"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start Envoy ({}): {e}", bin.display()));
    Envoy {
        process: Process {
            name: "envoy",
            child,
            log,
        },
        access_log,
        config,
        base_id,
    }
}

/// A second Envoy of a gateway ([`Gateway::start_peer`]); stopped on drop.
pub struct Peer {
    pub client: reqwest::Client,
    listener: SocketAddr,
    admin: SocketAddr,
    envoy: Envoy,
    _dir: ScratchDir,
}

impl Peer {
    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    /// A counter of this Envoy's `/stats` (0 when absent).
    pub async fn envoy_counter(&self, name: &str) -> u64 {
        let url = format!(
            "http://{}/stats?filter=^{}$",
            self.admin,
            name.replace('.', "\\.")
        );
        let text = match self.client.get(&url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(": "))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The end of this Envoy's log (for failure messages).
    pub fn log_tail(&self) -> String {
        envoy_log_tail(&self.envoy.process.log, 80)
    }
}

/// The cluster `lookergate_rls` (the rate limit service at `rls`; gRPC needs HTTP/2),
/// added to an Envoy config.
pub fn with_rls_cluster(yaml: &str, rls: SocketAddr) -> String {
    let cluster = format!(
        r#"  clusters:
  - name: lookergate_rls
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: lookergate_rls
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {ip}, port_value: {port} }}
"#,
        ip = rls.ip(),
        port = rls.port()
    );
    assert_eq!(
        yaml.matches("\n  clusters:\n").count(),
        1,
        "one clusters: list"
    );
    yaml.replacen("\n  clusters:\n", &format!("\n{cluster}"), 1)
}

/// Polls (with a deadline) until Envoy wrote its admin address and `/ready` says 200.
pub async fn wait_until_ready(envoy: &mut Envoy, dir: &Path) -> Result<SocketAddr, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + ENVOY_READY_DEADLINE;
    let address_file = dir.join("admin.address");
    let mut admin: Option<SocketAddr> = None;
    loop {
        if let Ok(Some(status)) = envoy.process.child.try_wait() {
            return Err(format!("Envoy exited with {status}"));
        }
        if admin.is_none() {
            admin = fs::read_to_string(&address_file)
                .ok()
                .and_then(|a| a.trim().parse().ok());
        }
        if let Some(admin) = admin {
            if let Ok(response) = client.get(format!("http://{admin}/ready")).send().await {
                if response.status().as_u16() == 200 {
                    return Ok(admin);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after {ENVOY_READY_DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The address Envoy bound for the demo listener `name` (configured on port 0): the API
/// listener `looker_api`, or `looker_ui` (Looker's UI host, TLS).
pub async fn listener_address(
    client: &reqwest::Client,
    admin: SocketAddr,
    name: &str,
) -> SocketAddr {
    let listeners: Value = client
        .get(format!("http://{admin}/listeners?format=json"))
        .send()
        .await
        .expect("admin /listeners")
        .json()
        .await
        .expect("admin /listeners JSON");
    let Some(listener) = listeners["listener_statuses"]
        .as_array()
        .and_then(|all| all.iter().find(|l| l["name"] == name))
    else {
        panic!("no listener {name:?} in {listeners}");
    };
    let socket = &listener["local_address"]["socket_address"];
    let (Some(ip), Some(port)) = (socket["address"].as_str(), socket["port_value"].as_u64()) else {
        panic!("no listener address in {listeners}");
    };
    format!("{ip}:{port}").parse().expect("listener address")
}

/// Starts Envoy with `plugin` as the plugin config and expects it never to serve: it
/// must exit, or at least not be ready within the deadline. Returns Envoy's log.
pub async fn envoy_refusing(plugin: Value) -> String {
    let paths = Paths::from_env();
    let dir = ScratchDir::new();
    let (sim, broker, idp) = (
        closed_port().await,
        closed_port().await,
        closed_port().await,
    );
    let yaml = envoy_config(sim, broker, idp, &paths.wasm, None, Some(&plugin));
    let mut envoy = start_envoy(&paths.envoy, &dir.0, &yaml);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !envoy.process.has_exited() && Instant::now() < deadline {
        let admin = fs::read_to_string(dir.0.join("admin.address"))
            .ok()
            .and_then(|a| a.trim().parse::<SocketAddr>().ok());
        if let Some(admin) = admin {
            if let Ok(response) = client.get(format!("http://{admin}/ready")).send().await {
                assert_ne!(
                    response.status().as_u16(),
                    200,
                    "Envoy became ready with an invalid plugin config; its log:\n{}",
                    envoy_log_tail(&envoy.process.log, 80)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    envoy.process.stop();
    fs::read_to_string(&envoy.process.log).unwrap_or_default()
}

/// `POST /__idp/fail` on the IdP at `idp`.
async fn set_idp_fail_mode(idp: SocketAddr, mode: &str) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = format!("http://{idp}/__idp/fail");
    let response = client
        .post(&url)
        .json(&json!({ "mode": mode }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    assert_eq!(response.status().as_u16(), 200, "POST {url} mode {mode}");
}

/// A TCP proxy to `upstream` that holds each piece the client sends for `delay` before
/// passing it on (answers flow back at once): every request costs `delay` more.
async fn delaying_proxy(upstream: SocketAddr, delay: Duration) -> (SocketAddr, AbortHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upward = async move {
                    let mut chunk = [0u8; 8192];
                    while let Ok(n) = client_read.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        if server_write.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_write.shutdown().await;
                };
                let downward = async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    let _ = client_write.shutdown().await;
                };
                tokio::join!(upward, downward);
            });
        }
    });
    (addr, task.abort_handle())
}

/// A local port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local addr")
}

/// Accepts connections and never answers (a hung broker).
async fn silent_server() -> (SocketAddr, AbortHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task.abort_handle())
}

/// Answers every request `200 OK` with a body that is not the broker's JSON.
async fn garbage_server() -> (SocketAddr, AbortHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_request(&mut socket).await;
                let body = "<html>this is not the broker</html>";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (addr, task.abort_handle())
}

/// Reads one HTTP/1.1 request (headers and a content-length body).
async fn read_request(socket: &mut tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
    }
}

// ---- issue 12: large JWKS (item 7) ----

impl Gateway {
    /// `POST /__idp/jwks_padding`: the IdP publishes `extra_keys` more RSA keys and gives
    /// every key an `x5c` certificate of `x5c_bytes` base64 characters, still signing with
    /// its current key (published last). Returns `{"keys", "bytes"}` of the new JWKS.
    pub async fn idp_pad_jwks(&self, extra_keys: usize, x5c_bytes: usize) -> Value {
        let url = self.idp_url("/__idp/jwks_padding");
        let body = json!({"extra_keys": extra_keys, "x5c_bytes": x5c_bytes});
        let response = self
            .client
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "POST {url} {body}");
        response.json().await.expect("jwks_padding answer is JSON")
    }
}
