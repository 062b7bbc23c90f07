//! The stack under test: the Looker simulator, the broker, the dev IdP and Envoy with the
//! filter, each a child process on free loopback ports with its log in the run directory,
//! stopped when dropped. Also what the report needs from them: PIDs' RSS and log files.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Error;

const SERVICE_READY_DEADLINE: Duration = Duration::from_secs(30);
/// Loading the wasm (V8 compiles it per worker) is slow on a busy 2-core machine.
const ENVOY_READY_DEADLINE: Duration = Duration::from_secs(90);

/// Where the binaries are (Makefile passes them; defaults are the repo's release paths).
pub struct Binaries {
    pub envoy: PathBuf,
    pub wasm: PathBuf,
    pub broker: PathBuf,
    pub sim: PathBuf,
    pub cli: PathBuf,
}

/// A child process writing to files in the run directory; SIGTERM, then SIGKILL, on drop.
pub struct Process {
    pub name: &'static str,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status), `None` once it exited.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// `Some(description)` when the process is gone.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
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

/// Starts a native lookergate service and reads its `listening on <addr>` line (DESIGN.md).
fn start_service(
    name: &'static str,
    bin: &Path,
    args: &[&str],
    dir: &Path,
) -> Result<(Process, SocketAddr), Error> {
    let log = dir.join(format!("{name}.log"));
    let stderr = File::create(&log)?;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {name} ({}): {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    let stdout_log = dir.join(format!("{name}.stdout"));
    // Keep draining stdout after the first line so the service never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        if let Ok(mut out) = File::create(stdout_log) {
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(out, "{line}");
            }
        }
    });
    let process = Process { name, child, log };
    let first = match rx.recv_timeout(SERVICE_READY_DEADLINE) {
        Ok(Some(Ok(line))) => line,
        other => {
            return Err(format!(
                "{name} did not print `listening on <addr>` ({other:?}); log {}:\n{}",
                process.log.display(),
                tail(&process.log, 30)
            )
            .into())
        }
    };
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| {
            format!("{name}: first stdout line is not `listening on <addr>`: {first:?}")
        })?;
    Ok((process, addr))
}

/// The last `lines` lines of a text file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let all: Vec<&str> = text.lines().filter(|l| !l.contains("]   ")).collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}

/// Broker config: the broker's own demo config (`print-demo-config`: demo roles and
/// sudo) against the simulator. `refresh_before` is shorter than the simulator's 30 s
/// token life so the broker's cache serves some asks.
fn broker_config(broker: &Path, sim: SocketAddr) -> Result<String, Error> {
    let out = Command::new(broker).arg("print-demo-config").output()?;
    let demo = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut config = demo.clone();
    for (from, to) in [
        (
            r#"looker_url = "http://127.0.0.1:10080""#.to_owned(),
            format!(r#"looker_url = "http://{sim}""#),
        ),
        (
            r#"refresh_before = "60s""#.to_owned(),
            r#"refresh_before = "10s""#.to_owned(),
        ),
    ] {
        if !config.contains(&from) {
            return Err(Error::from(format!(
                "the broker's demo config has no `{from}`: {demo}"
            )));
        }
        config = config.replace(&from, &to);
    }
    Ok(config)
}

pub struct Stack {
    pub sim: SocketAddr,
    pub broker: SocketAddr,
    /// `None`: no dev IdP in this build of the CLI; the issuer's keys are inline.
    pub idp: Option<SocketAddr>,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    pub access_log: PathBuf,
    pub base_id: u32,
    // Envoy first: stopped before what it talks to.
    pub envoy: Process,
    pub services: Vec<Process>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.envoy.stop();
        for service in &mut self.services {
            service.stop();
        }
        let _ = fs::remove_file(format!(
            "/dev/shm/envoy_shared_memory_{}",
            self.base_id * 10
        ));
    }
}

impl Stack {
    pub async fn start(
        bins: &Binaries,
        dir: &Path,
        sim_token_ttl: u64,
        want_idp: bool,
    ) -> Result<Stack, Error> {
        let ttl = sim_token_ttl.to_string();
        let (sim_process, sim) = start_service(
            "looker-sim",
            &bins.sim,
            &["--listen", "127.0.0.1:0", "--token-ttl", &ttl],
            dir,
        )?;
        let mut services = vec![sim_process];

        let broker_toml = dir.join("broker.toml");
        fs::write(&broker_toml, broker_config(&bins.broker, sim)?)?;
        let broker_toml = broker_toml.to_string_lossy().into_owned();
        let (broker_process, broker) = start_service(
            "broker",
            &bins.broker,
            &["--listen", "127.0.0.1:0", "--config", &broker_toml],
            dir,
        )?;
        services.push(broker_process);

        let idp = if want_idp && cli_has_idp(&bins.cli) {
            let (idp_process, idp) =
                start_service("idp", &bins.cli, &["idp", "--listen", "127.0.0.1:0"], dir)?;
            services.push(idp_process);
            Some(idp)
        } else {
            None
        };

        let issuer_keys = match idp {
            // The timed refresh (2m) also runs several times in a 10-minute soak.
            Some(_) => r#""discovery": true, "cluster": "idp", "jwks_refresh": "2m""#.to_owned(),
            None => {
                let demo = repo_root().join("envoy/demo/demo-jwks.json");
                let jwks: Value = serde_json::from_str(&fs::read_to_string(&demo)?)?;
                format!(r#""jwks": {jwks}"#)
            }
        };
        let access_log = dir.join("access.log");
        let template = fs::read_to_string(repo_root().join("soak/envoy.yaml"))?;
        let mut yaml = template;
        for (hole, value) in [
            ("@ISSUER_KEYS@", issuer_keys),
            ("@SIM_PORT@", sim.port().to_string()),
            ("@BROKER_PORT@", broker.port().to_string()),
            // Without the IdP nothing uses the cluster; any port will do.
            ("@IDP_PORT@", idp.unwrap_or(sim).port().to_string()),
            ("@WASM@", bins.wasm.display().to_string()),
            ("@ACCESS_LOG@", access_log.display().to_string()),
        ] {
            if !yaml.contains(hole) {
                return Err(format!("soak/envoy.yaml has no {hole}").into());
            }
            yaml = yaml.replace(hole, &value);
        }
        let envoy_config = dir.join("envoy.yaml");
        fs::write(&envoy_config, &yaml)?;

        // Unique per run and away from the e2e tests' range ((pid % 40000) * 100 + n).
        let base_id = 5_000_000 + std::process::id() % 100_000;
        let log = dir.join("envoy.log");
        let admin_file = dir.join("admin.address");
        let child = Command::new(&bins.envoy)
            .arg("-c")
            .arg(&envoy_config)
            .args([
                "--base-id",
                &base_id.to_string(),
                "--concurrency",
                "2",
                "--log-level",
                "info",
            ])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("envoy.stdout"))?)
            .stderr(File::create(&log)?)
            .spawn()
            .map_err(|e| format!("cannot start Envoy ({}): {e}", bins.envoy.display()))?;
        let mut envoy = Process {
            name: "envoy",
            child,
            log,
        };
        let admin = wait_until_ready(&mut envoy, &admin_file).await?;
        let listener = listener_address(admin).await?;
        Ok(Stack {
            sim,
            broker,
            idp,
            listener,
            admin,
            access_log,
            base_id,
            envoy,
            services,
        })
    }

    pub fn process(&self, name: &str) -> Option<&Process> {
        std::iter::once(&self.envoy)
            .chain(&self.services)
            .find(|p| p.name == name)
    }

    /// Processes that exited while they should be running, with how.
    pub fn casualties(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        for p in std::iter::once(&mut self.envoy).chain(self.services.iter_mut()) {
            if let Some(how) = p.exited() {
                gone.push(format!(
                    "{} exited: {how} (log {})",
                    p.name,
                    p.log.display()
                ));
            }
        }
        gone
    }
}

pub fn repo_root() -> PathBuf {
    let soak = Path::new(env!("CARGO_MANIFEST_DIR"));
    soak.parent().unwrap_or(soak).to_path_buf()
}

/// The dev IdP is a recent addition to the CLI: use it only if this build has it.
fn cli_has_idp(cli: &Path) -> bool {
    Command::new(cli)
        .arg("--help")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains("lookergate idp")
                || String::from_utf8_lossy(&o.stderr).contains("lookergate idp")
        })
        .unwrap_or(false)
}

fn http() -> Result<reqwest::Client, Error> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?)
}

/// Polls, with a deadline, until Envoy wrote its admin address and `/ready` says 200.
async fn wait_until_ready(envoy: &mut Process, admin_file: &Path) -> Result<SocketAddr, Error> {
    let client = http()?;
    let deadline = Instant::now() + ENVOY_READY_DEADLINE;
    let mut admin: Option<SocketAddr> = None;
    loop {
        if let Some(how) = envoy.exited() {
            return Err(format!("Envoy exited ({how}):\n{}", tail(&envoy.log, 60)).into());
        }
        if admin.is_none() {
            admin = fs::read_to_string(admin_file)
                .ok()
                .and_then(|a| a.trim().parse().ok());
        }
        if let Some(admin) = admin {
            if let Ok(r) = client.get(format!("http://{admin}/ready")).send().await {
                if r.status().as_u16() == 200 {
                    return Ok(admin);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "Envoy not ready after {ENVOY_READY_DEADLINE:?}:\n{}",
                tail(&envoy.log, 60)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn listener_address(admin: SocketAddr) -> Result<SocketAddr, Error> {
    let listeners: Value = http()?
        .get(format!("http://{admin}/listeners?format=json"))
        .send()
        .await?
        .json()
        .await?;
    let socket = &listeners["listener_statuses"][0]["local_address"]["socket_address"];
    match (socket["address"].as_str(), socket["port_value"].as_u64()) {
        (Some(ip), Some(port)) => Ok(format!("{ip}:{port}").parse()?),
        _ => Err(format!("no listener address in {listeners}").into()),
    }
}
