//! The soak's results: gathered from the driver, the Looker-side audit, the processes
//! (RSS), Envoy (stats, access log, log), the broker (metrics), the simulator (logins) and
//! the IdP (stats); judged; written as soak/last-run.json and as the results block of
//! docs/SOAK.md (between the `soak:results` markers, the prose around it is kept).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use serde_json::{json, Value};

use crate::audit::LookerSideReport;
use crate::driver::{percentiles, Tally};
use crate::workload::{User, MIX};
use crate::{Error, Options};

const BEGIN: &str =
    "<!-- soak:results:begin (written by `make soak`; edits inside are overwritten) -->";
const END: &str = "<!-- soak:results:end -->";
/// RSS counts as flat if it grew less than this fraction, or less than `FLAT_SLACK_KIB`.
const FLAT_GROWTH: f64 = 0.20;
const FLAT_SLACK_KIB: u64 = 16 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_s: f64,
    pub what: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RssSample {
    pub at_s: f64,
    pub envoy_kib: Option<u64>,
    pub broker_kib: Option<u64>,
    pub sim_kib: Option<u64>,
    pub idp_kib: Option<u64>,
}

pub struct RssReport {
    pub boot: RssSample,
    pub start: RssSample,
    pub end: RssSample,
    pub series: Vec<RssSample>,
}

pub fn rss_of_pid(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// What the access log says about the soak's requests (from `offset`: the run only).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AccessSummary {
    pub lines: u64,
    /// subject -> status -> count.
    pub by_subject_status: BTreeMap<String, BTreeMap<String, u64>>,
    /// subject -> Looker identity (allowed requests) -> count.
    pub identity_by_subject: BTreeMap<String, BTreeMap<String, u64>>,
    /// Allowed requests whose audit identity is not the subject's.
    pub identity_mismatches: u64,
    /// Envoy response flags other than `-` -> count.
    pub response_flags: BTreeMap<String, u64>,
    pub deny_reasons: BTreeMap<String, u64>,
    pub examples_5xx: Vec<Value>,
}

pub fn access_log_summary(path: &Path, offset: u64) -> AccessSummary {
    let mut s = AccessSummary::default();
    let Ok(mut file) = fs::File::open(path) else {
        return s;
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return s;
    }
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        s.lines += 1;
        let text = |k: &str| {
            v[k].as_str()
                .map_or_else(|| v[k].to_string(), str::to_owned)
        };
        let (subject, status, identity) = (
            text("lookergate_subject"),
            text("status"),
            text("lookergate_identity"),
        );
        *s.by_subject_status
            .entry(subject.clone())
            .or_default()
            .entry(status.clone())
            .or_default() += 1;
        if text("lookergate_verdict") == "allow" {
            *s.identity_by_subject
                .entry(subject.clone())
                .or_default()
                .entry(identity.clone())
                .or_default() += 1;
            let expected = User::from_name(&subject)
                .and_then(User::looker_identity)
                .map(|i| i.name);
            if expected != Some(identity.as_str()) {
                s.identity_mismatches += 1;
            }
        } else {
            let reason = text("lookergate_reason");
            let code = reason.split(':').next().unwrap_or("-").to_owned();
            *s.deny_reasons.entry(code).or_default() += 1;
        }
        let flags = text("flags");
        if flags != "-" {
            *s.response_flags.entry(flags).or_default() += 1;
        }
        if status.starts_with('5') && s.examples_5xx.len() < 20 {
            s.examples_5xx.push(v);
        }
    }
    s
}

pub fn access_log_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Envoy log lines at warning or above (start-up noise aside), counted, a few kept.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogFindings {
    pub warnings: u64,
    pub errors: u64,
    pub examples: Vec<String>,
    /// `lookergate: fetched N signing key(s)` lines: JWKS fetches by the filter.
    pub key_fetch_lines: Vec<String>,
}

pub fn log_findings(path: &Path) -> LogFindings {
    let mut f = LogFindings::default();
    let Ok(file) = fs::File::open(path) else {
        return f;
    };
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        let level = if line.contains("][warning][") {
            f.warnings += 1;
            true
        } else if line.contains("][error][") || line.contains("][critical][") {
            f.errors += 1;
            true
        } else {
            false
        };
        if level && f.examples.len() < 20 {
            f.examples.push(line.clone());
        }
        if line.contains("signing key(s) of") && f.key_fetch_lines.len() < 50 {
            f.key_fetch_lines.push(line);
        }
    }
    f
}

/// The filter's metrics and Envoy's request counters from the admin `/stats`.
pub async fn envoy_stats(http: &reqwest::Client, admin: SocketAddr) -> BTreeMap<String, u64> {
    let filter = r"^wasmcustom\.lookergate\.|^cluster\.(looker|lookergate_idp|lookergate_broker)\.upstream_rq_(total|[2345]xx|timeout)$|^http\.looker_api\.downstream_rq_([2345]xx|total)$|^wasm\.";
    let text = match http
        .get(format!("http://{admin}/stats"))
        .query(&[("filter", filter)])
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?)))
        .collect()
}

/// The broker's Prometheus counters (no histogram buckets).
pub async fn broker_metrics(http: &reqwest::Client, broker: SocketAddr) -> BTreeMap<String, f64> {
    let text = match http.get(format!("http://{broker}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

/// `/__sim/logins`: (who, ok) -> count.
pub fn summarize_logins(logins: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in logins.as_array().into_iter().flatten() {
        let who = match (l["client_id"].as_str(), l["sudo_user_id"].as_str()) {
            (Some(c), _) => c.to_owned(),
            (None, Some(u)) => format!("sudo:{u}"),
            _ => l["sudo_user_id"].to_string(),
        };
        let ok = if l["ok"] == true { "ok" } else { "failed" };
        *out.entry(format!("{who} {ok}")).or_default() += 1;
    }
    out
}

pub struct Inputs<'a> {
    pub options: &'a Options,
    pub started_unix: u64,
    pub loadavg_before: String,
    pub idp: bool,
    pub capacity: f64,
    pub probe_concurrency: usize,
    pub startup: Value,
    pub warmup: Tally,
    pub probe: Tally,
    pub rate: f64,
    pub tally: Tally,
    pub looker_side: LookerSideReport,
    pub rss: RssReport,
    pub events: Vec<Event>,
    pub mint_failures: u64,
    pub audit_errors: u64,
    pub casualties: Vec<String>,
    pub envoy_stats: BTreeMap<String, u64>,
    pub broker_metrics: BTreeMap<String, f64>,
    pub logins: BTreeMap<String, u64>,
    pub idp_stats: Value,
    pub access: AccessSummary,
    pub envoy_log: LogFindings,
    pub run_dir: PathBuf,
}

pub struct Report {
    json: Value,
    failures: Vec<String>,
    markdown: String,
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// Is memory flat from `start` to `end`? (growth fraction, flat)
fn flatness(start: Option<u64>, end: Option<u64>) -> (Option<f64>, bool) {
    match (start, end) {
        (Some(s), Some(e)) if s > 0 => {
            let growth = (e as f64 - s as f64) / s as f64;
            (
                Some(growth),
                growth < FLAT_GROWTH || e.saturating_sub(s) < FLAT_SLACK_KIB,
            )
        }
        _ => (None, true),
    }
}

/// `YYYY-MM-DD HH:MM UTC` without a date library (civil-from-days, H. Hinnant).
pub fn utc(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .current_dir(crate::stack::repo_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The filter that ran: the tree may hold others' uncommitted work, so name the binary.
fn wasm_identity(wasm: &Path) -> Value {
    use sha2::{Digest, Sha256};
    let bytes = fs::read(wasm).unwrap_or_default();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let modified = fs::metadata(wasm)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| utc(d.as_secs()));
    json!({"path": wasm, "bytes": bytes.len(), "sha256": sha, "built": modified})
}

fn envoy_version(envoy: &Path) -> String {
    Command::new(envoy)
        .arg("--version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.split_whitespace()
                .find(|w| w.contains("/1."))
                .map(|w| w.split('/').nth(1).unwrap_or(w).to_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

impl Report {
    pub fn build(i: Inputs<'_>) -> Report {
        let o = i.options;
        let mut tally = i.tally;
        let total = tally.total();
        let by_status = tally.by_status();
        let achieved = total as f64 / tally.elapsed.as_secs_f64().max(0.001);
        let ok = |t: &Tally| t.count(|c, s| c.expect == 200 && s == 200);
        // The audit runs through warm-up, probe and soak.
        let forwarded_ok = ok(&tally) + ok(&i.warmup) + ok(&i.probe);
        let lat_fwd = percentiles(&mut tally.forwarded_us);
        let lat_deny = percentiles(&mut tally.denied_us);
        let transport = by_status.get(&0).copied().unwrap_or(0);
        let (count_5xx, wrong_2xx) = (tally.count_5xx(), tally.wrong_2xx());
        let ls = &i.looker_side;
        let coverage = if forwarded_ok > 0 {
            ls.requests_seen as f64 * 100.0 / forwarded_ok as f64
        } else {
            0.0
        };

        let rss_max = |f: fn(&RssSample) -> Option<u64>| {
            i.rss
                .series
                .iter()
                .chain([&i.rss.start, &i.rss.end])
                .filter_map(f)
                .max()
        };
        // The baseline is taken once the run's connections and caches exist (the first
        // sample at least a quarter of the run, at most 60 s, in), not at the first request.
        let settle = (o.seconds as f64 / 4.0).min(60.0);
        let warm = i
            .rss
            .series
            .iter()
            .find(|s| s.at_s >= settle)
            .cloned()
            .unwrap_or_else(|| i.rss.start.clone());
        let (envoy_growth, envoy_flat) = flatness(warm.envoy_kib, i.rss.end.envoy_kib);
        let (broker_growth, broker_flat) = flatness(warm.broker_kib, i.rss.end.broker_kib);

        let mut failures = Vec::new();
        let mut fail = |cond: bool, what: String| {
            if cond {
                failures.push(what);
            }
        };
        fail(
            count_5xx > 0,
            format!("{count_5xx} answer(s) with a 5xx status"),
        );
        fail(
            wrong_2xx > 0,
            format!("{wrong_2xx} request(s) that must be refused got a 2xx"),
        );
        fail(
            transport > 0,
            format!("{transport} request(s) without an HTTP answer"),
        );
        let other = tally
            .problem_count
            .saturating_sub(count_5xx + wrong_2xx + transport);
        let kinds: Vec<String> = tally
            .problem_kinds
            .iter()
            .map(|(k, n)| format!("{n} × {k}"))
            .collect();
        fail(
            other > 0,
            format!(
                "{other} other answer(s) not as the policy says: {}",
                kinds.join(", ")
            ),
        );
        let mut warnings = Vec::new();
        if tally.not_sent > 0 {
            warnings.push(format!(
                "rate not held: {} due request(s) not sent, {} already queued in the client",
                tally.not_sent,
                crate::MAX_QUEUED
            ));
        }
        if i.warmup.problem_count + i.probe.problem_count > 0 {
            warnings.push(format!(
                "{} unexpected answer(s) in warm-up and probe",
                i.warmup.problem_count + i.probe.problem_count
            ));
        }
        fail(
            ls.violations > 0,
            format!("{} violation(s) in what reached Looker", ls.violations),
        );
        fail(
            i.access.identity_mismatches > 0,
            format!(
                "{} access-log line(s) with the wrong Looker identity",
                i.access.identity_mismatches
            ),
        );
        fail(
            !i.casualties.is_empty(),
            format!("process(es) died: {}", i.casualties.join("; ")),
        );
        fail(
            i.mint_failures > 0,
            format!("{} JWT minting/rotation failure(s)", i.mint_failures),
        );
        fail(
            i.audit_errors > 0,
            format!("{} failed read(s) of /__sim/requests", i.audit_errors),
        );
        fail(
            ls.largest_sample >= 10_000,
            "a /__sim/requests sample hit the 10,000 cap: requests were evicted unseen".to_owned(),
        );
        fail(
            !envoy_flat,
            format!(
                "Envoy RSS not flat: {} -> {} MiB",
                mib(warm.envoy_kib),
                mib(i.rss.end.envoy_kib)
            ),
        );
        fail(
            !broker_flat,
            format!(
                "broker RSS not flat: {} -> {} MiB",
                mib(warm.broker_kib),
                mib(i.rss.end.broker_kib)
            ),
        );
        fail(
            i.envoy_log.errors > 0,
            format!("{} error line(s) in Envoy's log", i.envoy_log.errors),
        );

        let date = utc(i.started_unix);
        let commit = git(&["rev-parse", "--short", "HEAD"]);
        let dirty = git(&["status", "--porcelain"]).lines().count();
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let envoy = envoy_version(&crate::binaries().envoy);
        let per_call: Vec<Value> = MIX
            .iter()
            .zip(&tally.statuses)
            .map(|(c, s)| json!({"call": c.label(), "expect": c.expect, "statuses": s}))
            .collect();
        let bucket_s = tally.bucket_s;
        let timeline: Vec<Value> = tally
            .timeline
            .iter_mut()
            .map(|(t, b)| {
                let rate = b.requests as f64 / bucket_s as f64;
                json!({"t_s": t, "requests": b.requests, "req_per_s": rate.round() as u64, "problems": b.problems, "latency_ms": percentiles(&mut b.latencies_us)})
            })
            .collect();
        let json = json!({
            "tool": "lookergate-soak",
            "command": o.invocation,
            "date_utc": date,
            "started_unix": i.started_unix,
            "git": {"commit": commit, "uncommitted_files": dirty},
            "wasm": wasm_identity(&crate::binaries().wasm),
            "machine": {"cpus": nproc, "loadavg_before": i.loadavg_before},
            "config": {
                "seconds": o.seconds, "rate_requested": o.rate, "envoy_version": envoy, "envoy_workers": 2,
                "looker_token_ttl_s": o.looker_token_ttl, "jwt_ttl_s": o.jwt_ttl, "jwt_reminted_every_s": o.jwt_ttl,
                "issuer_keys": if i.idp { "OIDC discovery from the dev IdP through Envoy cluster lookergate_idp" } else { "inline demo JWKS (no dev IdP)" },
                "idp_rotation": i.idp,
                "broker_refresh_before_s": 10, "filter_refresh_before_s": 60, "connections": o.probe_concurrency, "max_queued": crate::MAX_QUEUED,
            },
            "startup": i.startup,
            "warmup": {"requests": i.warmup.total(), "by_status": i.warmup.by_status(), "problems": i.warmup.problem_count, "problem_examples": i.warmup.problems.iter().take(5).collect::<Vec<_>>()},
            "capacity": {
                "req_per_s": i.capacity.round() as u64, "concurrency": i.probe_concurrency, "probe_seconds": o.probe_seconds,
                "probe_requests": i.probe.total(), "probe_by_status": i.probe.by_status(), "probe_problems": i.probe.problem_count, "probe_problem_examples": i.probe.problems.iter().take(5).collect::<Vec<_>>(),
            },
            "run": {
                "target_rate": i.rate.round() as u64, "achieved_rate": (achieved * 10.0).round() / 10.0,
                "elapsed_s": (tally.elapsed.as_secs_f64() * 10.0).round() / 10.0,
                "total_requests": total, "by_status": by_status, "count_5xx": count_5xx, "wrong_2xx": wrong_2xx,
                "no_answer": transport, "unexpected_answers": tally.problem_count, "unexpected_by_kind": tally.problem_kinds, "not_sent": tally.not_sent,
                "per_call": per_call,
                "latency_ms": {"forwarded": lat_fwd, "refused": lat_deny},
                "timeline": timeline,
                "problem_examples": tally.problems,
            },
            "looker_side": {"forwarded_ok_by_client": forwarded_ok, "audit_coverage_pct": (coverage * 100.0).round() / 100.0, "audit": ls},
            "rss_kib": {
                "boot": i.rss.boot, "start": i.rss.start, "warm": warm, "end": i.rss.end,
                "max": {"envoy": rss_max(|s| s.envoy_kib), "broker": rss_max(|s| s.broker_kib), "sim": rss_max(|s| s.sim_kib), "idp": rss_max(|s| s.idp_kib)},
                "envoy_growth": envoy_growth, "broker_growth": broker_growth, "envoy_flat": envoy_flat, "broker_flat": broker_flat,
                "series": i.rss.series,
            },
            "events": i.events,
            "jwt_mint_failures": i.mint_failures,
            "envoy": {"stats": i.envoy_stats, "access_log": i.access, "log": i.envoy_log},
            "broker_metrics": i.broker_metrics,
            "looker_logins": i.logins,
            "idp_stats": i.idp_stats,
            "casualties": i.casualties,
            "logs_dir": i.run_dir,
            "passed": failures.is_empty(),
            "failures": failures,
            "warnings": warnings,
        });
        let markdown = markdown(&json);
        Report {
            json,
            failures,
            markdown,
        }
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn summary(&self) -> String {
        let j = &self.json;
        let r = &j["run"];
        let mut s = format!(
            "soak: {} requests at {} req/s (capacity {}), by status {}, 5xx {}, wrong 2xx {}, Looker-side violations {}; latency forwarded {}",
            r["total_requests"], r["achieved_rate"], j["capacity"]["req_per_s"], r["by_status"], r["count_5xx"], r["wrong_2xx"],
            j["looker_side"]["audit"]["violations"], r["latency_ms"]["forwarded"]
        );
        if self.failures.is_empty() {
            s.push_str("\nsoak: PASSED");
        } else {
            let _ = write!(s, "\nsoak: FAILED:\n  - {}", self.failures.join("\n  - "));
        }
        s
    }

    pub fn write(&self, json_path: &Path, markdown_path: &Path) -> Result<(), Error> {
        if let Some(parent) = json_path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(json_path, serde_json::to_string_pretty(&self.json)? + "\n")?;
        let existing = fs::read_to_string(markdown_path).unwrap_or_default();
        let block = format!("{BEGIN}\n{}{END}", self.markdown);
        let updated = match (existing.find(BEGIN), existing.find(END)) {
            (Some(b), Some(e)) if b < e => {
                format!("{}{block}{}", &existing[..b], &existing[e + END.len()..])
            }
            _ => format!("{existing}\n{block}\n"),
        };
        fs::write(markdown_path, updated)?;
        Ok(())
    }
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn kib_mib(v: &Value) -> String {
    mib(v.as_u64())
}

fn markdown(j: &Value) -> String {
    let mut m = String::new();
    let r = &j["run"];
    let c = &j["config"];
    let ls = &j["looker_side"];
    let a = &ls["audit"];
    let verdict = if j["passed"] == true {
        "**PASS**".to_owned()
    } else {
        "**FAIL**".to_owned()
    };
    let _ = writeln!(m, "## Last run\n");
    let _ = writeln!(m, "- **Command**: `{}`", num(&j["command"]));
    let _ = writeln!(
        m,
        "- **Date**: {} (commit `{}`, {} uncommitted file(s) in the tree; lookergate.wasm built {}, sha256 `{}`)",
        num(&j["date_utc"]),
        num(&j["git"]["commit"]),
        num(&j["git"]["uncommitted_files"]),
        num(&j["wasm"]["built"]),
        num(&j["wasm"]["sha256"]).get(..16).unwrap_or("-")
    );
    let _ = writeln!(
        m,
        "- **Machine**: {} CPUs shared with other work (load average before: {}); Envoy {} with {} workers",
        num(&j["machine"]["cpus"]),
        num(&j["machine"]["loadavg_before"]),
        num(&c["envoy_version"]),
        num(&c["envoy_workers"])
    );
    let _ = writeln!(
        m,
        "- **Churn**: Looker tokens live {} s; JWTs live {} s and are re-minted every {} s; issuer keys: {}{}",
        num(&c["looker_token_ttl_s"]),
        num(&c["jwt_ttl_s"]),
        num(&c["jwt_reminted_every_s"]),
        num(&c["issuer_keys"]),
        if c["idp_rotation"] == true { "; the IdP rotates its signing key half way" } else { "; no key rotation (no dev IdP)" }
    );
    let _ = writeln!(m, "- **Verdict**: {verdict}");
    for f in j["failures"].as_array().into_iter().flatten() {
        let _ = writeln!(m, "  - {}", num(f));
    }
    for w in j["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(m, "  - (warning) {}", num(w));
    }

    let _ = writeln!(m, "\n### Load\n\n| | |\n|---|---|");
    let answers: Vec<String> = j["startup"]["answers_before"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{v}× {k}"))
        .collect();
    let _ = writeln!(
        m,
        "| start-up: first allowed request after Envoy's `/ready` | {} ms (before it: {}) |",
        num(&j["startup"]["ms_after_ready"]),
        if answers.is_empty() {
            "nothing".to_owned()
        } else {
            answers.join(", ")
        }
    );
    let cap = &j["capacity"];
    let _ = writeln!(
        m,
        "| capacity (closed loop, {} s, {} in flight) | {} req/s |",
        num(&cap["probe_seconds"]),
        num(&cap["concurrency"]),
        num(&cap["req_per_s"])
    );
    let _ = writeln!(
        m,
        "| soak rate (open loop) | {} req/s target, {} achieved, for {} s |",
        num(&r["target_rate"]),
        num(&r["achieved_rate"]),
        num(&r["elapsed_s"])
    );
    let _ = writeln!(m, "| requests | {} |", num(&r["total_requests"]));
    let statuses: Vec<String> = r["by_status"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let _ = writeln!(m, "| by status | {} |", statuses.join(", "));
    let _ = writeln!(m, "| 5xx | {} |", num(&r["count_5xx"]));
    let _ = writeln!(
        m,
        "| wrong 2xx (a refused call that succeeded) | {} |",
        num(&r["wrong_2xx"])
    );
    let _ = writeln!(
        m,
        "| any answer not as the policy says | {} |",
        num(&r["unexpected_answers"])
    );
    let _ = writeln!(
        m,
        "| no answer / not sent (more than 20,000 queued in the client) | {} / {} |",
        num(&r["no_answer"]),
        num(&r["not_sent"])
    );

    let _ = writeln!(m, "\n### Latency (ms, from when each request was due)\n\n| | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|");
    for (name, key) in [
        ("forwarded to Looker", "forwarded"),
        ("refused by the gateway", "refused"),
    ] {
        let l = &r["latency_ms"][key];
        let _ = writeln!(
            m,
            "| {name} | {} | {} | {} | {} | {} |",
            num(&l["p50"]),
            num(&l["p90"]),
            num(&l["p99"]),
            num(&l["p99.9"]),
            num(&l["max"])
        );
    }

    let _ = writeln!(m, "\nOver time (all calls):\n\n| from t= | req/s | p50 | p99 | max | unexpected answers |\n|---|---|---|---|---|---|");
    for b in r["timeline"].as_array().into_iter().flatten() {
        let l = &b["latency_ms"];
        let _ = writeln!(
            m,
            "| {} s | {} | {} | {} | {} | {} |",
            num(&b["t_s"]),
            num(&b["req_per_s"]),
            num(&l["p50"]),
            num(&l["p99"]),
            num(&l["max"]),
            num(&b["problems"])
        );
    }

    let _ = writeln!(
        m,
        "\n### Per call\n\n| call | must get | got |\n|---|---|---|"
    );
    for call in r["per_call"].as_array().into_iter().flatten() {
        let got: Vec<String> = call["statuses"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            m,
            "| `{}` | {} | {} |",
            num(&call["call"]),
            num(&call["expect"]),
            got.join(", ")
        );
    }

    let _ = writeln!(m, "\n### What reached Looker\n");
    let _ = writeln!(
        m,
        "Every forwarded request's `authorization: token X`, mapped to the Looker user of X by the simulator (`GET /api/4.0/user` with X) or, once X had expired, by its fingerprint in the broker's audit log.\n"
    );
    let _ = writeln!(m, "| Looker identity | Looker user | distinct tokens | requests | sent by |\n|---|---|---|---|---|");
    for (identity, u) in a["by_identity"].as_object().into_iter().flatten() {
        let callers: Vec<String> = u["callers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(num)
            .collect();
        let _ = writeln!(
            m,
            "| `{identity}` | {} | {} | {} | {} |",
            num(&u["looker_user_id"]),
            num(&u["tokens"]),
            num(&u["requests"]),
            callers.join(", ")
        );
    }
    let _ = writeln!(
        m,
        "\n- audited {} of the {} requests the client saw forwarded ({} %; the rest fell between a read and the clear of `/__sim/requests`), in {} samples (largest {})",
        num(&a["requests_seen"]),
        num(&ls["forwarded_ok_by_client"]),
        num(&ls["audit_coverage_pct"]),
        num(&a["samples"]),
        num(&a["largest_sample"])
    );
    let _ = writeln!(
        m,
        "- tokens: {} distinct; identified by the simulator {}, by the broker log {}, unidentified {}",
        num(&a["distinct_tokens"]),
        num(&a["resolved_via_sim"]),
        num(&a["resolved_via_broker_log"]),
        num(&a["unresolved_tokens"])
    );
    let _ = writeln!(
        m,
        "- the broker's own user lookups (per-user sudo, straight to Looker, not through the gateway): {} with {} admin token(s)",
        num(&a["broker_lookups"]),
        num(&a["broker_lookup_tokens"])
    );
    let _ = writeln!(m, "- **violations: {}** (a token carrying another user's request, a refused call or a JWT reaching Looker, a request without a Looker token)", num(&a["violations"]));
    for v in a["violation_examples"]
        .as_array()
        .into_iter()
        .flatten()
        .take(10)
    {
        let _ = writeln!(m, "  - `{}`: {}", num(&v["kind"]), num(&v["detail"]));
    }
    let acc = &j["envoy"]["access_log"];
    let _ = writeln!(
        m,
        "- Envoy's access log (audit record), soak phase: {} lines, {} with an identity other than the subject's",
        num(&acc["lines"]),
        num(&acc["identity_mismatches"])
    );

    let _ = writeln!(m, "\n### Token churn\n");
    for e in j["events"].as_array().into_iter().flatten() {
        if !num(&e["what"]).starts_with("JWTs re-minted") {
            let _ = writeln!(m, "- t={} s: {}", num(&e["at_s"]), num(&e["what"]));
        }
    }
    let remints = j["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| num(&e["what"]).starts_with("JWTs re-minted"))
        .count();
    let _ = writeln!(
        m,
        "- JWTs re-minted {remints} time(s); minting failures: {}",
        num(&j["jwt_mint_failures"])
    );
    let logins: Vec<String> = j["looker_logins"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let _ = writeln!(
        m,
        "- Looker logins (simulator, whole run incl. probe): {}",
        logins.join(", ")
    );
    let stats = &j["envoy"]["stats"];
    let stat_line: Vec<String> = stats
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| {
            k.contains("lookergate.looker_token")
                || k.contains("lookergate.broker.calls")
                || k.contains("lookergate.jwks")
                || k.contains("lookergate.broker.failure")
        })
        .map(|(k, v)| format!("`{}` {v}", k.trim_start_matches("wasmcustom.")))
        .collect();
    let _ = writeln!(m, "- filter counters (whole run): {}", stat_line.join(", "));
    if j["idp_stats"].is_object() {
        let s = &j["idp_stats"];
        let _ = writeln!(
            m,
            "- IdP: {} discovery and {} JWKS fetches, {} tokens issued, {} rotation(s), published kids {}",
            num(&s["discovery_requests"]),
            num(&s["jwks_requests"]),
            num(&s["tokens_issued"]),
            num(&s["rotations"]),
            s["published_kids"]
        );
    }

    let rss = &j["rss_kib"];
    let _ = writeln!(
        m,
        "\n### Memory (RSS, MiB)\n\n| process | after boot | soak start | t={} s (baseline) | soak end | max | growth baseline→end |\n|---|---|---|---|---|---|---|",
        num(&rss["warm"]["at_s"])
    );
    for (name, key) in [
        ("Envoy", "envoy"),
        ("broker", "broker"),
        ("Looker simulator", "sim"),
        ("dev IdP", "idp"),
    ] {
        let field = format!("{key}_kib");
        let growth = rss
            .get(format!("{key}_growth"))
            .and_then(Value::as_f64)
            .map_or_else(
                || match (rss["warm"][&field].as_f64(), rss["end"][&field].as_f64()) {
                    (Some(s), Some(e)) if s > 0.0 => format!("{:+.1} %", (e - s) * 100.0 / s),
                    _ => "-".to_owned(),
                },
                |g| format!("{:+.1} %", g * 100.0),
            );
        let _ = writeln!(
            m,
            "| {name} | {} | {} | {} | {} | {} | {growth} |",
            kib_mib(&rss["boot"][&field]),
            kib_mib(&rss["start"][&field]),
            kib_mib(&rss["warm"][&field]),
            kib_mib(&rss["end"][&field]),
            kib_mib(&rss["max"][key])
        );
    }
    let log = &j["envoy"]["log"];
    let _ = writeln!(
        m,
        "\n### Logs\n\n- Envoy log: {} warning(s), {} error(s)",
        num(&log["warnings"]),
        num(&log["errors"])
    );
    for e in log["examples"].as_array().into_iter().flatten().take(8) {
        let _ = writeln!(m, "  - `{}`", num(e).chars().take(300).collect::<String>());
    }
    let _ = writeln!(
        m,
        "- processes that died: {}",
        j["casualties"].as_array().map_or(0, Vec::len)
    );
    let _ = writeln!(m, "- full figures: `soak/last-run.json`; logs of this run: `target/soak/run/` (Envoy, broker, simulator, IdP; Envoy's access log only if the run failed)\n");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_unix_seconds_as_a_calendar_date() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_795_926_698), "2026-11-29 04:31 UTC");
    }

    #[test]
    fn rss_is_flat_below_the_growth_or_the_slack() {
        assert!(flatness(Some(100_000), Some(115_000)).1, "15 %");
        assert!(
            flatness(Some(4_000), Some(8_000)).1,
            "doubled but only 4 MiB"
        );
        assert!(!flatness(Some(100_000), Some(130_000)).1, "30 % and 29 MiB");
    }
}
