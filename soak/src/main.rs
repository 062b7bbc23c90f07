//! `lookergate-soak` (`make soak`): starts the whole gateway — Looker simulator with 30 s
//! tokens, broker, dev IdP, Envoy with the filter on 2 workers — measures its capacity for
//! a few seconds, then drives it at ~70% of that for the configured time with alice, bob,
//! carol and eve, while JWTs are re-minted every minute and the IdP rotates its key half
//! way. Checks every answer against the demo policy and everything that reached Looker
//! against the identity it had to reach it as; writes soak/last-run.json and the results
//! block of docs/SOAK.md. Exit 0 only if nothing went wrong.

// The indexing in this crate is serde_json's `value["key"]`, which yields Null when the
// key is absent and never panics; slices are read with `.get`.
#![allow(clippy::indexing_slicing)]

mod audit;
mod driver;
mod report;
mod stack;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::audit::LookerAudit;
use crate::driver::Driver;
use crate::report::{Event, RssSample};
use crate::stack::{Binaries, Stack};
use crate::workload::{TokenSource, Wallet, USERS};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "\
usage: lookergate-soak [--seconds N] [--rate R] [--probe-seconds N] [--probe-concurrency N]
                       [--jwt-ttl SECS] [--looker-token-ttl SECS] [--no-idp]
                       [--json FILE] [--markdown FILE] [--invocation TEXT]
  --seconds N            length of the soak (default 600)
  --rate R               requests per second (default: 70% of the measured capacity)
  --probe-seconds N      capacity probe length (default 5)
  --probe-concurrency N  connections (requests in flight) of the probe and the run (default 64)
  --jwt-ttl SECS         JWT lifetime; tokens are re-minted this often (default 60)
  --looker-token-ttl S   the simulator's Looker token lifetime (default 30)
  --no-idp               inline demo JWKS and `lookergate token`, even if the CLI has `idp`
  --json FILE            machine-readable results (default soak/last-run.json)
  --markdown FILE        results block replaced in FILE (default docs/SOAK.md)
  --invocation TEXT      the command to record as having produced the results
Binaries: LOOKERGATE_ENVOY, LOOKERGATE_WASM, LOOKERGATE_BROKER_BIN, LOOKERGATE_SIM_BIN,
LOOKERGATE_CLI_BIN (defaults: the repository's release builds and .venv/bin/envoy).";

pub struct Options {
    pub seconds: u64,
    pub rate: Option<f64>,
    pub probe_seconds: u64,
    pub probe_concurrency: usize,
    pub jwt_ttl: u64,
    pub looker_token_ttl: u64,
    pub idp: bool,
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub invocation: String,
}

/// Requests the open-loop run lets wait in the client for a connection; past it, due
/// requests are not sent (and counted).
const MAX_QUEUED: usize = 20_000;
const AUDIT_EVERY: Duration = Duration::from_millis(500);
const RSS_EVERY: Duration = Duration::from_secs(15);
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

fn parse_args(args: &[String]) -> Result<Options, String> {
    let root = stack::repo_root();
    let mut o = Options {
        seconds: 600,
        rate: None,
        probe_seconds: 5,
        probe_concurrency: 64,
        jwt_ttl: 60,
        looker_token_ttl: 30,
        idp: true,
        json: root.join("soak/last-run.json"),
        markdown: root.join("docs/SOAK.md"),
        invocation: format!("lookergate-soak {}", args.join(" ")),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--no-idp" {
            o.idp = false;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a whole number: {v}"))
        };
        match flag.as_str() {
            "--seconds" => o.seconds = number(value)?.max(1),
            "--rate" if value.is_empty() => {}
            "--rate" => {
                o.rate = Some(
                    value
                        .parse::<f64>()
                        .ok()
                        .filter(|r| *r > 0.0)
                        .ok_or(format!("--rate: not a positive number: {value}"))?,
                )
            }
            "--probe-seconds" => o.probe_seconds = number(value)?.max(1),
            "--probe-concurrency" => {
                o.probe_concurrency = usize::try_from(number(value)?.max(1)).unwrap_or(64)
            }
            "--jwt-ttl" => o.jwt_ttl = number(value)?.max(5),
            "--looker-token-ttl" => o.looker_token_ttl = number(value)?.max(2),
            "--json" => o.json = PathBuf::from(value),
            "--markdown" => o.markdown = PathBuf::from(value),
            "--invocation" => o.invocation.clone_from(value),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    Ok(o)
}

fn binaries() -> Binaries {
    let root = stack::repo_root();
    let pick = |var: &str, default: &str| {
        std::env::var_os(var).map_or_else(|| root.join(default), PathBuf::from)
    };
    Binaries {
        envoy: pick("LOOKERGATE_ENVOY", ".venv/bin/envoy"),
        wasm: pick(
            "LOOKERGATE_WASM",
            "target/wasm32-wasip1/release/lookergate.wasm",
        ),
        broker: pick("LOOKERGATE_BROKER_BIN", "target/release/lookergate-broker"),
        sim: pick("LOOKERGATE_SIM_BIN", "target/release/lookergate-looker-sim"),
        cli: pick("LOOKERGATE_CLI_BIN", "target/release/lookergate"),
    }
}

fn since(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 10.0).round() / 10.0
}

fn rss_sample(stack: &Stack, at_s: f64) -> RssSample {
    let kib = |name: &str| stack.process(name).and_then(stack::Process::rss_kib);
    RssSample {
        at_s,
        envoy_kib: kib("envoy"),
        broker_kib: kib("broker"),
        sim_kib: kib("looker-sim"),
        idp_kib: kib("idp"),
    }
}

async fn mint_all(source: &TokenSource, wallet: &Wallet, ttl: u64) -> Result<String, Error> {
    let mut kid = String::new();
    for user in USERS {
        let (jwt, k) = source.mint(user, ttl).await?;
        wallet.set(user, jwt);
        kid = k;
    }
    Ok(kid)
}

/// Polls (bounded) until alice is allowed: how long after `/ready`, and what came before.
async fn first_allowed(
    http: &reqwest::Client,
    listener: std::net::SocketAddr,
    wallet: &Wallet,
) -> Result<Value, Error> {
    let ready = Instant::now();
    let mut before: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for _ in 0..600 {
        let answer = http
            .get(format!("http://{listener}/api/4.0/user"))
            .bearer_auth(wallet.get(workload::User::Alice))
            .header("x-soak-user", "alice")
            .send()
            .await;
        let key = match answer {
            Ok(r) if r.status().as_u16() == 200 => {
                return Ok(
                    serde_json::json!({"ms_after_ready": ready.elapsed().as_millis() as u64, "answers_before": before}),
                );
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                format!(
                    "{status} {}",
                    body["reason"]
                        .as_str()
                        .unwrap_or("")
                        .split(':')
                        .next()
                        .unwrap_or("")
                )
            }
            Err(e) => format!("no answer: {e}"),
        };
        *before.entry(key).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("no request allowed within 30 s of Envoy being ready: {before:?}").into())
}

async fn soak(o: &Options) -> Result<report::Report, Error> {
    let bins = binaries();
    for (what, path) in [
        ("Envoy", &bins.envoy),
        ("wasm", &bins.wasm),
        ("broker", &bins.broker),
        ("simulator", &bins.sim),
        ("CLI", &bins.cli),
    ] {
        if !path.exists() {
            return Err(format!(
                "{what}: {} does not exist (`make soak` builds everything)",
                path.display()
            )
            .into());
        }
    }
    let dir = stack::repo_root().join("target/soak/run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let loadavg_before = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned();

    eprintln!(
        "soak: starting simulator (Looker tokens {}s), broker, IdP, Envoy in {}",
        o.looker_token_ttl,
        dir.display()
    );
    let mut stack = Stack::start(&bins, &dir, o.looker_token_ttl, o.idp).await?;
    let boot_rss = rss_sample(&stack, 0.0);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let source = match stack.idp {
        Some(idp) => TokenSource::Idp {
            base: format!("http://{idp}"),
            client: http.clone(),
        },
        None => TokenSource::Cli {
            bin: bins.cli.clone(),
        },
    };
    eprintln!(
        "soak: gateway on {} (admin {}), keys: {}",
        stack.listener,
        stack.admin,
        if stack.idp.is_some() {
            "OIDC discovery from the dev IdP"
        } else {
            "inline demo JWKS (no dev IdP)"
        }
    );

    let wallet = Arc::new(Wallet::default());
    let first_kid = mint_all(&source, &wallet, o.jwt_ttl).await?;
    let driver = Arc::new(Driver::new(
        stack.listener,
        Arc::clone(&wallet),
        o.probe_concurrency,
    )?);

    // Envoy is ready before the filter has fetched the issuer's keys: until then 503.
    let startup = first_allowed(&http, stack.listener, &wallet).await?;
    eprintln!(
        "soak: first request allowed {} ms after Envoy was ready ({})",
        startup["ms_after_ready"], startup["answers_before"]
    );

    // The Looker-side audit runs from here on, so the probe pays for it too.
    let stop = Arc::new(AtomicBool::new(false));
    let audit_deadline = Duration::from_secs(o.seconds + o.probe_seconds + 120);
    let boot = Instant::now();
    let auditor = {
        let stop = Arc::clone(&stop);
        let mut audit = LookerAudit::new(stack.sim)?;
        tokio::spawn(async move {
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) && boot.elapsed() < audit_deadline {
                tokio::time::sleep(AUDIT_EVERY).await;
                if let Err(e) = audit.sample().await {
                    errors += 1;
                    eprintln!("soak: audit sample failed: {e}");
                }
            }
            (audit, errors)
        })
    };

    // Warm-up (V8 tiers up, caches fill), then the capacity probe.
    let (warmup, _) = driver.probe(8, Duration::from_secs(3)).await;
    eprintln!(
        "soak: warm-up {} requests, {} problem(s)",
        warmup.total(),
        warmup.problem_count
    );
    let (probe, capacity) = driver
        .probe(o.probe_concurrency, Duration::from_secs(o.probe_seconds))
        .await;
    let rate = o.rate.unwrap_or((capacity * 0.7).max(1.0));
    eprintln!(
        "soak: capacity {capacity:.0} req/s at {} in flight ({} problem(s)); soaking at {rate:.0} req/s for {}s",
        o.probe_concurrency, probe.problem_count, o.seconds
    );

    // Envoy flushes its access log every second: wait, so the run's lines start here.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let access_offset = report::access_log_len(&stack.access_log);
    let length = Duration::from_secs(o.seconds);
    let start = Instant::now();
    let events = Arc::new(std::sync::Mutex::new(vec![Event {
        at_s: 0.0,
        what: format!("JWTs minted (kid {first_kid}, ttl {}s)", o.jwt_ttl),
    }]));
    let note = {
        let events = Arc::clone(&events);
        move |what: String| {
            eprintln!("soak: t={:.0}s {what}", since(start));
            if let Ok(mut e) = events.lock() {
                e.push(Event {
                    at_s: since(start),
                    what,
                });
            }
        }
    };

    // JWTs: re-minted every jwt_ttl; the IdP key rotated half way, then re-minted at once.
    let minter = {
        let (stop, wallet, note) = (Arc::clone(&stop), Arc::clone(&wallet), note.clone());
        let (ttl, rotate_at) = (o.jwt_ttl, length / 2);
        tokio::spawn(async move {
            let mut next_mint = Duration::from_secs(ttl);
            let mut rotated = !matches!(source, TokenSource::Idp { .. });
            let mut failures = 0u64;
            while !stop.load(Ordering::Relaxed) && start.elapsed() < length + Duration::from_secs(5)
            {
                let now = start.elapsed();
                if !rotated && now >= rotate_at {
                    rotated = true;
                    match source.rotate().await {
                        Ok(answer) => note(format!(
                            "IdP key rotated: new kid {}, published {}",
                            answer["kid"], answer["published"]
                        )),
                        Err(e) => {
                            failures += 1;
                            note(format!("IdP rotation FAILED: {e}"));
                        }
                    }
                    next_mint = now;
                }
                if now >= next_mint {
                    match mint_all(&source, &wallet, ttl).await {
                        Ok(kid) => note(format!("JWTs re-minted (kid {kid})")),
                        Err(e) => {
                            failures += 1;
                            note(format!("minting FAILED: {e}"));
                        }
                    }
                    next_mint = now + Duration::from_secs(ttl);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            failures
        })
    };

    let monitor = {
        let (stop, driver) = (Arc::clone(&stop), Arc::clone(&driver));
        let pids: Vec<(&'static str, u32)> = std::iter::once(&stack.envoy)
            .chain(&stack.services)
            .map(|p| (p.name, p.pid()))
            .collect();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut next_progress = PROGRESS_EVERY;
            while !stop.load(Ordering::Relaxed)
                && start.elapsed() < length + Duration::from_secs(30)
            {
                tokio::time::sleep(RSS_EVERY).await;
                let kib = |name: &str| {
                    pids.iter()
                        .find(|(n, _)| *n == name)
                        .and_then(|(_, pid)| report::rss_of_pid(*pid))
                };
                samples.push(RssSample {
                    at_s: since(start),
                    envoy_kib: kib("envoy"),
                    broker_kib: kib("broker"),
                    sim_kib: kib("looker-sim"),
                    idp_kib: kib("idp"),
                });
                if start.elapsed() >= next_progress {
                    next_progress += PROGRESS_EVERY;
                    eprintln!(
                        "soak: t={:.0}s sent {} ({:.0}/s), problems {}, envoy {} MiB, broker {} MiB",
                        since(start),
                        driver.sent(),
                        driver.sent() as f64 / start.elapsed().as_secs_f64(),
                        driver.problems(),
                        samples.last().and_then(|s| s.envoy_kib).unwrap_or(0) / 1024,
                        samples.last().and_then(|s| s.broker_kib).unwrap_or(0) / 1024,
                    );
                }
            }
            samples
        })
    };

    let start_rss = rss_sample(&stack, 0.0);
    // The same connection pool as the probe: the rate is the only difference.
    let tally = driver
        .run(rate, length, o.probe_concurrency, MAX_QUEUED)
        .await;
    let end_rss = rss_sample(&stack, since(start));
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mint_failures = minter.await.unwrap_or(1);
    let rss_series = monitor.await.unwrap_or_default();
    let (mut audit, audit_errors) = auditor.await.map_err(|e| format!("audit task: {e}"))?;
    // The last requests are recorded by now: one final sample.
    let audit_errors = audit_errors + u64::from(audit.sample().await.is_err());
    let casualties = stack.casualties();
    let broker_log = stack
        .process("broker")
        .map(|p| p.log.clone())
        .unwrap_or_default();
    let looker_side = audit.finish(&broker_log);

    let envoy_stats = report::envoy_stats(&http, stack.admin).await;
    let broker_metrics = report::broker_metrics(&http, stack.broker).await;
    let logins: Value = match http
        .get(format!("http://{}/__sim/logins", stack.sim))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let idp_stats = match stack.idp {
        Some(idp) => match http.get(format!("http://{idp}/__idp/stats")).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        },
        None => Value::Null,
    };
    let access = report::access_log_summary(&stack.access_log, access_offset);
    let envoy_log = report::log_findings(&stack.envoy.log);
    let events = events.lock().map(|e| e.clone()).unwrap_or_default();

    let report = report::Report::build(report::Inputs {
        options: o,
        started_unix,
        loadavg_before,
        idp: stack.idp.is_some(),
        capacity,
        probe_concurrency: o.probe_concurrency,
        startup,
        warmup,
        probe,
        rate,
        tally,
        looker_side,
        rss: report::RssReport {
            boot: boot_rss,
            start: start_rss,
            end: end_rss,
            series: rss_series,
        },
        events,
        mint_failures,
        audit_errors,
        casualties,
        envoy_stats,
        broker_metrics,
        logins: report::summarize_logins(&logins),
        idp_stats,
        access,
        envoy_log,
        run_dir: dir.clone(),
    });
    // A 10-minute access log is gigabytes; its summary is in the report. Kept on failure.
    if report.passed() {
        let _ = std::fs::remove_file(&stack.access_log);
    }
    drop(stack);
    Ok(report)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let report = match runtime.block_on(soak(&options)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak: FAILED to run: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    if let Err(e) = report.write(&options.json, &options.markdown) {
        eprintln!("soak: cannot write the results: {e}");
        return ExitCode::from(1);
    }
    eprintln!("{}", report.summary());
    eprintln!(
        "soak: results in {} and {}",
        options.json.display(),
        options.markdown.display()
    );
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
