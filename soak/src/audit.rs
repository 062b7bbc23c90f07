//! What reached Looker, checked request by request: the simulator's `/__sim/requests`
//! (the last 10,000 only) is read and cleared every few seconds; each forwarded
//! `authorization: token X` is mapped to the Looker user of X by asking the simulator
//! itself (`GET /api/4.0/user` with that token, while it is still live), or, for a token
//! that expired first, by its fingerprint in the broker's audit log. A token must only
//! ever carry the requests of the one demo user whose Looker identity it belongs to.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use lookergate_proto::LookerIdentity;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::workload::{looker_user_of_identity, User, MIX};
use crate::Error;

/// The simulator's own record of this tool's lookups carries this `x-soak-user`.
const VERIFIER: &str = "soak-verifier";
const VIOLATIONS_KEPT: usize = 100;
/// The simulator's admin (DESIGN.md), whose session the broker uses for sudo lookups.
const ADMIN_USER_ID: u64 = 1;

#[derive(Deserialize)]
struct Recorded {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

#[derive(Default)]
struct TokenUse {
    /// Looker user id, once known, and how it was found.
    looker_user: Option<u64>,
    resolved_by: &'static str,
    /// Requests per `x-soak-user` that reached Looker with this token.
    requests: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub kind: &'static str,
    pub detail: String,
}

/// Per Looker identity: distinct tokens and requests that reached Looker with them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdentityUse {
    pub looker_user_id: u64,
    pub tokens: u64,
    pub requests: u64,
    /// `x-soak-user`s whose requests were carried (must be exactly the one expected).
    pub callers: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LookerSideReport {
    pub samples: u64,
    /// Requests of this tool seen by the simulator (excluding its own lookups).
    pub requests_seen: u64,
    /// Highest count one sample returned (10,000 would mean some were evicted unseen).
    pub largest_sample: u64,
    pub distinct_tokens: u64,
    pub resolved_via_sim: u64,
    pub resolved_via_broker_log: u64,
    pub unresolved_tokens: u64,
    /// The broker's own `GET /users/credential/email/...` (per-user sudo), not via Envoy.
    pub broker_lookups: u64,
    pub broker_lookup_tokens: u64,
    pub by_identity: BTreeMap<String, IdentityUse>,
    pub violations: u64,
    pub violation_examples: Vec<Violation>,
}

pub struct LookerAudit {
    client: reqwest::Client,
    sim: SocketAddr,
    tokens: HashMap<String, TokenUse>,
    /// Tokens of the broker's own lookups -> Looker user (when the simulator still knew it).
    admin_tokens: HashMap<String, Option<u64>>,
    report: LookerSideReport,
}

impl LookerAudit {
    pub fn new(sim: SocketAddr) -> Result<LookerAudit, Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(LookerAudit {
            client,
            sim,
            tokens: HashMap::new(),
            admin_tokens: HashMap::new(),
            report: LookerSideReport::default(),
        })
    }

    fn violation(&mut self, kind: &'static str, detail: String) {
        self.report.violations += 1;
        if self.report.violation_examples.len() < VIOLATIONS_KEPT {
            self.report
                .violation_examples
                .push(Violation { kind, detail });
        }
    }

    /// Reads and clears the simulator's request list, checks each request, and resolves
    /// tokens not seen before. Requests arriving between the read and the clear are lost
    /// to the audit (`requests_seen` vs. the client's count says how many).
    pub async fn sample(&mut self) -> Result<(), Error> {
        let url = format!("http://{}/__sim/requests", self.sim);
        let body = self.client.get(&url).send().await?.bytes().await?;
        // Clear first, parse after: the window in which requests go unseen stays short.
        self.client.delete(&url).send().await?;
        let recorded: Vec<Recorded> = serde_json::from_slice(&body)?;
        self.report.samples += 1;
        self.report.largest_sample = self.report.largest_sample.max(recorded.len() as u64);
        let mut fresh = Vec::new();
        for r in recorded {
            let caller = r.headers.get("x-soak-user").cloned().unwrap_or_default();
            if caller == VERIFIER {
                continue;
            }
            self.report.requests_seen += 1;
            let seq = r.headers.get("x-soak-seq").cloned().unwrap_or_default();
            let what = format!("seq {seq} {caller} {} {}", r.method, r.path);
            if let Some(name) = r
                .headers
                .iter()
                .find(|(_, v)| v.contains("eyJ"))
                .map(|(n, _)| n.clone())
            {
                self.violation(
                    "jwt_reached_looker",
                    format!("{what}: header {name} carries a JWT"),
                );
            }
            let Some(user) = User::from_name(&caller) else {
                // The broker's own per-user lookup (sudo path), straight to Looker: its
                // token must be the admin's, checked in `finish`.
                if caller.is_empty()
                    && r.method == "GET"
                    && r.path.starts_with("/api/4.0/users/credential/")
                {
                    self.report.broker_lookups += 1;
                    if let Some(t) = r
                        .headers
                        .get("authorization")
                        .and_then(|a| a.strip_prefix("token "))
                    {
                        if !self.admin_tokens.contains_key(t) {
                            let id = self.looker_user_via_sim(t).await;
                            self.admin_tokens.insert(t.to_owned(), id);
                        }
                    }
                    continue;
                }
                self.violation("untagged_request", format!("{what}: no known x-soak-user"));
                continue;
            };
            let must_be_refused = !MIX.iter().any(|c| {
                c.user == user && c.method == r.method && c.path == r.path && c.expect == 200
            });
            if must_be_refused {
                self.violation("refused_call_reached_looker", what.clone());
            }
            let token = match r
                .headers
                .get("authorization")
                .and_then(|a| a.strip_prefix("token "))
            {
                Some(t) => t.to_owned(),
                None => {
                    self.violation(
                        "no_looker_token",
                        format!(
                            "{what}: authorization {:?}",
                            r.headers
                                .get("authorization")
                                .map(|a| a.get(..12).unwrap_or(a))
                        ),
                    );
                    continue;
                }
            };
            let entry = self.tokens.entry(token.clone()).or_insert_with(|| {
                fresh.push(token);
                TokenUse::default()
            });
            *entry.requests.entry(caller).or_default() += 1;
        }
        for token in fresh {
            self.resolve_via_sim(&token).await;
        }
        Ok(())
    }

    /// Asks the simulator who the token is, while it is still live.
    async fn resolve_via_sim(&mut self, token: &str) {
        let id = self.looker_user_via_sim(token).await;
        if let (Some(id), Some(entry)) = (id, self.tokens.get_mut(token)) {
            entry.looker_user = Some(id);
            entry.resolved_by = "sim";
        }
    }

    async fn looker_user_via_sim(&self, token: &str) -> Option<u64> {
        let answer = self
            .client
            .get(format!("http://{}/api/4.0/user", self.sim))
            .header("authorization", format!("token {token}"))
            .header("x-soak-user", VERIFIER)
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["id"].as_str()?.parse().ok()),
            _ => None,
        }
    }

    /// Final pass: tokens the simulator no longer knew are looked up in the broker's audit
    /// log (SHA-256 fingerprint -> identity); then every token's callers are checked.
    pub fn finish(mut self, broker_log: &Path) -> LookerSideReport {
        let issued = broker_fingerprints(broker_log);
        let mut by_identity: BTreeMap<String, IdentityUse> = BTreeMap::new();
        let mut problems = Vec::new();
        for (token, usage) in &mut self.tokens {
            let fp = fingerprint(token);
            let logged = issued.get(&fp);
            if usage.looker_user.is_none() {
                if let Some(id) = logged.and_then(|identity| looker_user_of_identity(identity)) {
                    usage.looker_user = Some(id);
                    usage.resolved_by = "broker_log";
                }
            } else if let (Some(identity), Some(id)) = (logged, usage.looker_user) {
                // Both sources known: they must agree.
                if looker_user_of_identity(identity) != Some(id) {
                    problems.push(("sources_disagree", format!("token {fp}: simulator says Looker user {id}, broker issued it for {identity}")));
                }
            }
            match usage.resolved_by {
                "sim" => self.report.resolved_via_sim += 1,
                "broker_log" => self.report.resolved_via_broker_log += 1,
                _ => self.report.unresolved_tokens += 1,
            }
            let Some(id) = usage.looker_user else {
                problems.push((
                    "unresolved_token",
                    format!("token {fp} ({:?}): Looker user unknown", usage.requests),
                ));
                continue;
            };
            let identity = crate::workload::USERS
                .into_iter()
                .filter_map(User::looker_identity)
                .find(|i| i.user_id == id)
                .map_or_else(|| format!("looker-user-{id}"), |i| i.name.to_owned());
            let entry = by_identity.entry(identity).or_default();
            entry.looker_user_id = id;
            entry.tokens += 1;
            for (caller, n) in &usage.requests {
                entry.requests += n;
                entry.callers.insert(caller.clone());
                let expected = User::from_name(caller)
                    .and_then(User::looker_identity)
                    .map(|i| i.user_id);
                if expected != Some(id) {
                    problems.push((
                        "token_crossed_identities",
                        format!("token {fp} of Looker user {id} carried {n} request(s) of {caller} (expected Looker user {expected:?})"),
                    ));
                }
            }
        }
        self.report.broker_lookup_tokens = self.admin_tokens.len() as u64;
        for (token, id) in &self.admin_tokens {
            if self.tokens.contains_key(token) {
                problems.push((
                    "admin_token_forwarded",
                    format!(
                        "token {} of the broker's lookups also carried gateway requests",
                        fingerprint(token)
                    ),
                ));
            }
            if id.is_some_and(|id| id != ADMIN_USER_ID) {
                problems.push((
                    "lookup_not_as_admin",
                    format!(
                        "broker lookup with token {} of Looker user {id:?}",
                        fingerprint(token)
                    ),
                ));
            }
        }
        for (kind, detail) in problems {
            self.violation(kind, detail);
        }
        self.report.distinct_tokens = self.tokens.len() as u64;
        self.report.by_identity = by_identity;
        self.report
    }
}

/// First 8 hex of SHA-256, as the broker logs tokens.
fn fingerprint(token: &str) -> String {
    lookergate_proto::fingerprint(token.as_bytes())
}

/// `token_issued` audit lines of the broker: fingerprint -> identity (`role:analyst`,
/// `user:email:carol@example.com`).
fn broker_fingerprints(log: &Path) -> HashMap<String, String> {
    fingerprints_in(&std::fs::read_to_string(log).unwrap_or_default())
}

fn fingerprints_in(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["event"] != "token_issued" {
            continue;
        }
        // Named by the key the filter's audit records use; the broker logs the identity
        // as its JSON text.
        let text = v["identity"].as_str().unwrap_or_default();
        let identity = serde_json::from_str::<LookerIdentity>(text)
            .map_or_else(|_| text.to_owned(), |i| i.key());
        if let Some(fp) = v["token_fp"].as_str() {
            out.insert(fp.to_owned(), identity);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_the_brokers_first_8_hex_of_sha256() {
        assert_eq!(fingerprint("abc"), "ba7816bf");
    }

    #[test]
    fn audit_lines_of_the_broker_map_fingerprints_to_identities() {
        // As the broker writes them (tracing-subscriber JSON; the identity as JSON text).
        let log = r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","event":"starting","roles":"[\"analyst\"]"}
{"timestamp":"2026-01-01T00:00:01Z","level":"INFO","event":"token_issued","audit":true,"subject":"alice","identity":"{\"kind\":\"role\",\"name\":\"analyst\"}","token_fp":"0011aabb","cache":"login"}
{"timestamp":"2026-01-01T00:00:02Z","level":"INFO","event":"token_issued","audit":true,"subject":"carol","identity":"{\"kind\":\"user\",\"credential_type\":\"email\",\"credential_id\":\"Carol@Example.com\"}","token_fp":"ccdd0011","cache":"hit"}
{"timestamp":"2026-01-01T00:00:03Z","level":"INFO","event":"looker_login","token_fp":"99999999"}
not json"#;
        let found = fingerprints_in(log);
        assert_eq!(
            found,
            HashMap::from([
                ("0011aabb".to_owned(), "role:analyst".to_owned()),
                (
                    "ccdd0011".to_owned(),
                    "user:email:carol@example.com".to_owned()
                ),
            ])
        );
    }
}
