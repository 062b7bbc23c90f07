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

use lookergate_cli::{demo_envoy_yaml, replace_once, DemoEnvoyPorts};

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

/// More values of envoy/demo.yaml the soak replaces (the ports and the wasm path are
/// `lookergate_cli::demo_envoy_yaml`'s, shared with tests/e2e/harness.rs); each must occur
/// there exactly once.
const DEMO_ACCESS_LOGGER: &str = "- name: envoy.access_loggers.stdout";
const DEMO_ACCESS_LOG_TYPE: &str =
    r#""@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"#;
const DEMO_DISCOVERY: &str = r#""discovery": true,"#;
const DEMO_IDP_CLUSTER: &str = r#""cluster": "lookergate_idp","#;
/// The demo's per-principal rate limit on analysts' queries (10/s): at the soak's
/// hundreds of requests per second the allowed queries would be answered 429. The soak
/// measures the gateway under load, not its limiter, so every occurrence goes.
const DEMO_RATE_LIMIT: &str =
    r#""rate_limit": {"per_second": 10, "burst": 20, "db_queries_per_minute": 120},"#;

/// Where the filter gets the demo issuer's keys.
pub enum IssuerKeys {
    /// OIDC discovery from the dev IdP through the demo's `lookergate_idp` cluster.
    Discovery { idp: SocketAddr },
    /// The demo's JWKS inline in the plugin config (no dev IdP in this CLI).
    Inline(Value),
}

/// The soak's Envoy config: envoy/demo.yaml with free ports (0 for admin and listener,
/// which the soak reads back from the admin API), the given wasm, a file access log
/// (a 10-minute soak's log is gigabytes; stdout would be a pipe to drain), `keys`, and
/// no rate limit on the demo's query rules.
pub fn envoy_config(
    demo: &str,
    sim: SocketAddr,
    broker: SocketAddr,
    keys: &IssuerKeys,
    wasm: &Path,
    access_log: &Path,
) -> Result<String, Error> {
    // Without the IdP nothing uses its cluster; any port will do.
    let idp_port = match keys {
        IssuerKeys::Discovery { idp } => idp.port(),
        IssuerKeys::Inline(_) => sim.port(),
    };
    let issuer_keys = match keys {
        // The timed refresh (2m) also runs several times in a 10-minute soak.
        IssuerKeys::Discovery { .. } => {
            format!(r#"{DEMO_DISCOVERY} {DEMO_IDP_CLUSTER} "jwks_refresh": "2m","#)
        }
        IssuerKeys::Inline(jwks) => format!(r#""jwks": {jwks},"#),
    };
    let log_type_indent = indent_of(demo, DEMO_ACCESS_LOG_TYPE)?;
    let ports = DemoEnvoyPorts {
        admin: 0,
        listener: 0,
        ui: 0,
        looker: sim.port(),
        broker: broker.port(),
        idp: idp_port,
    };
    let mut yaml = demo_envoy_yaml(demo, ports, wasm)?;
    for (from, to) in [
        (
            DEMO_ACCESS_LOGGER.to_owned(),
            "- name: envoy.access_loggers.file".to_owned(),
        ),
        (
            DEMO_ACCESS_LOG_TYPE.to_owned(),
            format!(
                "\"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n\
                 {log_type_indent}path: \"{}\"",
                access_log.display()
            ),
        ),
        (
            format!(
                "{DEMO_DISCOVERY}\n{}{DEMO_IDP_CLUSTER}",
                indent_of(demo, DEMO_IDP_CLUSTER)?
            ),
            issuer_keys,
        ),
    ] {
        yaml = replace_once(&yaml, &from, &to)?;
    }
    if !yaml.contains(DEMO_RATE_LIMIT) {
        return Err(format!("envoy/demo.yaml has no `{DEMO_RATE_LIMIT}`").into());
    }
    let yaml = yaml.replace(DEMO_RATE_LIMIT, "");
    Ok(format!(
        "# Written by lookergate-soak (soak/src/stack.rs) from envoy/demo.yaml.\n{yaml}"
    ))
}

/// The leading whitespace of the one line of `text` that contains `needle`.
fn indent_of<'a>(text: &'a str, needle: &str) -> Result<&'a str, Error> {
    let mut lines = text.lines().filter(|l| l.contains(needle));
    match (lines.next(), lines.next()) {
        (Some(line), None) => Ok(line.strip_suffix(line.trim_start()).unwrap_or_default()),
        _ => Err(format!("envoy/demo.yaml must have exactly one line with `{needle}`").into()),
    }
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
            Some(idp) => IssuerKeys::Discovery { idp },
            None => {
                let demo = repo_root().join("envoy/demo/demo-jwks.json");
                IssuerKeys::Inline(serde_json::from_str(&fs::read_to_string(&demo)?)?)
            }
        };
        let access_log = dir.join("access.log");
        let demo = fs::read_to_string(repo_root().join("envoy/demo.yaml"))?;
        let yaml = envoy_config(&demo, sim, broker, &issuer_keys, &bins.wasm, &access_log)?;
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
            // The demo's TLS listener names its certificate relative to the repository.
            .current_dir(repo_root())
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
    // The API listener by name: the demo also has the Looker UI host's (TLS) listener.
    let socket = listeners["listener_statuses"]
        .as_array()
        .and_then(|all| all.iter().find(|l| l["name"] == "looker_api"))
        .map(|l| &l["local_address"]["socket_address"]);
    let socket = socket.unwrap_or(&Value::Null);
    match (socket["address"].as_str(), socket["port_value"].as_u64()) {
        (Some(ip), Some(port)) => Ok(format!("{ip}:{port}").parse()?),
        _ => Err(format!("no listener address in {listeners}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIM: &str = "127.0.0.1:41001";
    const BROKER: &str = "127.0.0.1:41002";
    const IDP: &str = "127.0.0.1:41003";

    fn demo() -> Result<String, Error> {
        Ok(fs::read_to_string(repo_root().join("envoy/demo.yaml"))?)
    }

    fn soak_config(demo: &str, keys: &IssuerKeys, wasm: &str) -> Result<String, Error> {
        envoy_config(
            demo,
            SIM.parse()?,
            BROKER.parse()?,
            keys,
            Path::new(wasm),
            Path::new("/tmp/soak run/access.log"),
        )
    }

    /// The plugin JSON of the soak's Envoy config.
    fn plugin_json(yaml: &str) -> Result<Value, Error> {
        let json = lookergate_cli::source::single_plugin_json("soak config", yaml)?;
        Ok(serde_json::from_str(&json)?)
    }

    /// Every `port_value: N` of the config, in order.
    fn ports(yaml: &str) -> Vec<u16> {
        yaml.split("port_value: ")
            .skip(1)
            .filter_map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    #[test]
    fn soak_config_is_the_demo_with_free_ports_the_given_wasm_and_a_file_access_log(
    ) -> Result<(), Error> {
        let demo = demo()?;
        let jwks: Value = serde_json::from_str(&fs::read_to_string(
            repo_root().join("envoy/demo/demo-jwks.json"),
        )?)?;
        let wasm = "/build/out/lookergate.wasm";
        for (keys, idp_port) in [
            (IssuerKeys::Discovery { idp: IDP.parse()? }, 41003),
            // Without the IdP its cluster points at the simulator; nothing uses it.
            (IssuerKeys::Inline(jwks.clone()), 41001),
        ] {
            let yaml = soak_config(&demo, &keys, wasm)?;
            // Admin, API listener, Looker UI listener, Looker, broker, IdP: none of the
            // demo's ports is left.
            assert_eq!(ports(&yaml), [0, 0, 0, 41001, 41002, idp_port]);
            assert!(!yaml.contains(lookergate_cli::DEMO_ENVOY_WASM_PATH));
            assert!(
                !yaml.contains("rate_limit"),
                "the soak's policy has no rate limit"
            );
            assert_eq!(yaml.matches(&format!("filename: {wasm}\n")).count(), 1);

            assert!(!yaml.contains("Stdout") && !yaml.contains("access_loggers.stdout"));
            assert!(yaml.contains("- name: envoy.access_loggers.file\n"));
            let log_type = yaml
                .lines()
                .find(|l| l.contains("access_loggers.file.v3.FileAccessLog"))
                .ok_or("no FileAccessLog")?;
            let indent = log_type
                .strip_suffix(log_type.trim_start())
                .unwrap_or_default();
            assert!(yaml.contains(&format!(
                "{log_type}\n{indent}path: \"/tmp/soak run/access.log\"\n{indent}log_format:\n"
            )));

            // The demo's cluster name is kept, and the plugin JSON is still JSON.
            assert!(yaml.contains("  - name: lookergate_idp\n"));
            let issuer = &plugin_json(&yaml)?["issuers"][0];
            assert_eq!(issuer["issuer"], "https://idp.lookergate.demo");
            match keys {
                IssuerKeys::Discovery { .. } => {
                    assert_eq!(issuer["discovery"], true);
                    assert_eq!(issuer["cluster"], "lookergate_idp");
                    assert_eq!(issuer["jwks_refresh"], "2m");
                    assert!(issuer.get("jwks").is_none());
                }
                IssuerKeys::Inline(_) => {
                    assert_eq!(issuer["jwks"], jwks);
                    assert!(issuer.get("discovery").is_none() && issuer.get("cluster").is_none());
                }
            }
        }
        Ok(())
    }

    #[test]
    fn the_demo_wasm_path_stays_when_it_is_the_one_given() -> Result<(), Error> {
        let wasm = "target/wasm32-wasip1/release/lookergate.wasm";
        let yaml = soak_config(&demo()?, &IssuerKeys::Discovery { idp: IDP.parse()? }, wasm)?;
        assert_eq!(
            yaml.matches(lookergate_cli::DEMO_ENVOY_WASM_PATH).count(),
            1
        );
        Ok(())
    }

    #[test]
    fn a_demo_value_missing_or_repeated_is_an_error_naming_it() -> Result<(), Error> {
        let demo = demo()?;
        let keys = IssuerKeys::Discovery { idp: IDP.parse()? };
        let wasm = "/build/out/lookergate.wasm";
        let missing = demo.replace(lookergate_cli::DEMO_ENVOY_ADMIN_PORT, "port_value: 9902 ");
        let repeated = format!("{demo}# {DEMO_ACCESS_LOGGER}\n");
        for (broken, named) in [
            (missing, lookergate_cli::DEMO_ENVOY_ADMIN_PORT),
            (repeated, DEMO_ACCESS_LOGGER),
        ] {
            let error = soak_config(&broken, &keys, wasm)
                .err()
                .ok_or("a broken demo.yaml was accepted")?
                .to_string();
            assert!(error.contains(named), "{error}");
        }
        Ok(())
    }
}
