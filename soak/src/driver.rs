//! Load: a short closed-loop probe at full concurrency to measure capacity, then an
//! open-loop run at a fixed rate (requests are started on schedule whether or not earlier
//! ones finished, so latency is measured from when a request was due, not when it went).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};

use crate::workload::{schedule, Call, Wallet, MIX};
use crate::Error;

/// Longest a request may take before it counts as a transport error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Problems kept verbatim for the report (all are counted).
const PROBLEMS_KEPT: usize = 100;

/// What one request got.
struct Outcome {
    call: usize,
    /// 0: no HTTP answer (connection error, timeout).
    status: u16,
    /// From when it was due (open loop) or sent (closed loop), to the end of the body.
    latency_us: u64,
    /// Since the start of the phase.
    at: Duration,
    problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub at_s: f64,
    pub call: String,
    pub status: u16,
    pub detail: String,
}

#[derive(Default)]
pub struct Bucket {
    pub requests: u64,
    pub problems: u64,
    pub latencies_us: Vec<u32>,
}

/// Everything a phase produced, folded as outcomes arrive.
#[derive(Default)]
pub struct Tally {
    pub statuses: Vec<BTreeMap<u16, u64>>,
    /// Latencies (µs) of calls that must reach Looker, and of calls the gateway refuses.
    pub forwarded_us: Vec<u32>,
    pub denied_us: Vec<u32>,
    pub problems: Vec<Problem>,
    pub problem_count: u64,
    /// `"<status> <reason code>"` of unexpected answers -> count.
    pub problem_kinds: BTreeMap<String, u64>,
    /// Per `bucket_s` of the phase (by when requests were due).
    pub timeline: BTreeMap<u64, Bucket>,
    pub bucket_s: u64,
    /// Due but not sent because `max_in_flight` requests were outstanding.
    pub not_sent: u64,
    pub elapsed: Duration,
}

impl Tally {
    fn new(bucket_s: u64) -> Tally {
        Tally {
            statuses: vec![BTreeMap::new(); MIX.len()],
            bucket_s: bucket_s.max(1),
            ..Tally::default()
        }
    }

    fn add(&mut self, o: Outcome) {
        if let Some(counts) = self.statuses.get_mut(o.call) {
            *counts.entry(o.status).or_default() += 1;
        }
        let us = u32::try_from(o.latency_us).unwrap_or(u32::MAX);
        match MIX.get(o.call) {
            Some(call) if call.expect == 200 => self.forwarded_us.push(us),
            _ => self.denied_us.push(us),
        }
        let bucket = self
            .timeline
            .entry(o.at.as_secs() / self.bucket_s * self.bucket_s)
            .or_default();
        bucket.requests += 1;
        bucket.latencies_us.push(us);
        if let Some(detail) = o.problem {
            bucket.problems += 1;
            self.problem_count += 1;
            *self
                .problem_kinds
                .entry(kind(o.status, &detail))
                .or_default() += 1;
            if self.problems.len() < PROBLEMS_KEPT {
                self.problems.push(Problem {
                    at_s: o.at.as_secs_f64(),
                    call: MIX.get(o.call).map(Call::label).unwrap_or_default(),
                    status: o.status,
                    detail,
                });
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.statuses.iter().flat_map(|s| s.values()).sum()
    }

    /// Requests by status over the whole mix (0 = no answer).
    pub fn by_status(&self) -> BTreeMap<u16, u64> {
        let mut all = BTreeMap::new();
        for counts in &self.statuses {
            for (status, n) in counts {
                *all.entry(*status).or_default() += n;
            }
        }
        all
    }

    /// Calls that must be refused and got a 2xx.
    pub fn wrong_2xx(&self) -> u64 {
        self.count(|call, status| call.expect != 200 && (200..300).contains(&status))
    }

    pub fn count_5xx(&self) -> u64 {
        self.count(|_, status| status >= 500)
    }

    pub fn count(&self, pick: impl Fn(&Call, u16) -> bool) -> u64 {
        MIX.iter()
            .zip(&self.statuses)
            .flat_map(|(call, counts)| {
                counts
                    .iter()
                    .filter(|(s, _)| pick(call, **s))
                    .map(|(_, n)| *n)
            })
            .sum()
    }
}

/// Sends the mix to the gateway.
pub struct Driver {
    client: reqwest::Client,
    base: String,
    wallet: Arc<Wallet>,
    seq: AtomicU64,
    problems: AtomicU64,
    order: Vec<usize>,
}

impl Driver {
    pub fn new(
        listener: std::net::SocketAddr,
        wallet: Arc<Wallet>,
        max_in_flight: usize,
    ) -> Result<Driver, Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(max_in_flight)
            .build()?;
        Ok(Driver {
            client,
            base: format!("http://{listener}"),
            wallet,
            seq: AtomicU64::new(0),
            problems: AtomicU64::new(0),
            order: schedule(),
        })
    }

    /// Requests sent so far (also the last `x-soak-seq`).
    pub fn sent(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// Answers that were not what the call must get, so far.
    pub fn problems(&self) -> u64 {
        self.problems.load(Ordering::Relaxed)
    }

    /// Sends the next call of the mix; `due` is when it was meant to start.
    async fn send_next(&self, due: Instant, phase_start: Instant) -> Outcome {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let slot = usize::try_from(seq).unwrap_or(0) % self.order.len().max(1);
        let index = self.order.get(slot).copied().unwrap_or(0);
        let Some(call) = MIX.get(index) else {
            return Outcome {
                call: index,
                status: 0,
                latency_us: 0,
                at: Duration::ZERO,
                problem: Some("no such call".into()),
            };
        };
        let url = format!("{}{}", self.base, call.path);
        let mut request = match call.method {
            "POST" => self.client.post(url),
            _ => self.client.get(url),
        };
        request = request
            .bearer_auth(self.wallet.get(call.user))
            .header("x-soak-user", call.user.name())
            .header("x-soak-seq", seq.to_string());
        if let Some(body) = call.body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let (status, problem) = match request.send().await {
            Err(e) => (0, Some(format!("no answer: {e}"))),
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.bytes().await;
                let problem = match body {
                    Err(e) => Some(format!("body: {e}")),
                    Ok(body) => check(call, status, &body),
                };
                (status, problem)
            }
        };
        let end = Instant::now();
        if problem.is_some() {
            self.problems.fetch_add(1, Ordering::Relaxed);
        }
        Outcome {
            call: index,
            status,
            latency_us: u64::try_from(end.saturating_duration_since(due).as_micros())
                .unwrap_or(u64::MAX),
            at: due.saturating_duration_since(phase_start),
            problem,
        }
    }

    /// Closed loop: `concurrency` senders back to back for `length`. Returns the tally
    /// and the answered requests per second.
    pub async fn probe(self: &Arc<Self>, concurrency: usize, length: Duration) -> (Tally, f64) {
        let (tx, rx) = mpsc::unbounded_channel();
        let collector = tokio::spawn(collect(rx, length.as_secs()));
        let start = Instant::now();
        let end = start + length;
        let mut senders = Vec::new();
        for _ in 0..concurrency {
            let driver = Arc::clone(self);
            let tx = tx.clone();
            senders.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let outcome = driver.send_next(Instant::now(), start).await;
                    if tx.send(outcome).is_err() {
                        break;
                    }
                }
            }));
        }
        drop(tx);
        for s in senders {
            let _ = s.await;
        }
        let elapsed = start.elapsed();
        let mut tally = collector.await.unwrap_or_else(|_| Tally::new(1));
        tally.elapsed = elapsed;
        let answered = tally.total() - tally.by_status().get(&0).copied().unwrap_or(0);
        let rate = answered as f64 / elapsed.as_secs_f64().max(0.001);
        (tally, rate)
    }

    /// Open loop: `rate` requests per second for `length` over at most `connections`
    /// requests at once (a client's connection pool: past it, due requests queue in the
    /// client, and their wait counts in their latency); more than `max_queued` waiting
    /// are not sent at all (counted).
    pub async fn run(
        self: &Arc<Self>,
        rate: f64,
        length: Duration,
        connections: usize,
        max_queued: usize,
    ) -> Tally {
        let (tx, rx) = mpsc::unbounded_channel();
        // About ten slices of the run, at least 10 s each: latency over time.
        let collector = tokio::spawn(collect(rx, (length.as_secs() / 10).max(10)));
        let pool = Arc::new(Semaphore::new(connections));
        let queue = Arc::new(Semaphore::new(max_queued));
        let start = Instant::now();
        let mut issued: u64 = 0;
        let mut not_sent: u64 = 0;
        let mut ticker = tokio::time::interval(Duration::from_millis(5));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let total = (rate * length.as_secs_f64()) as u64;
        while issued < total {
            ticker.tick().await;
            let due_now = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
            while issued < due_now {
                let due = start + Duration::from_secs_f64(issued as f64 / rate);
                issued += 1;
                let Ok(queued) = Arc::clone(&queue).try_acquire_owned() else {
                    not_sent += 1;
                    continue;
                };
                let (driver, tx, pool) = (Arc::clone(self), tx.clone(), Arc::clone(&pool));
                tokio::spawn(async move {
                    let Ok(connection) = pool.acquire_owned().await else {
                        return;
                    };
                    let outcome = driver.send_next(due, start).await;
                    drop((connection, queued));
                    let _ = tx.send(outcome);
                });
            }
        }
        drop(tx);
        // Every sender holds the channel: the collector ends when the last one finished.
        let mut tally = collector.await.unwrap_or_else(|_| Tally::new(1));
        tally.not_sent = not_sent;
        tally.elapsed = start.elapsed();
        tally
    }
}

async fn collect(mut rx: mpsc::UnboundedReceiver<Outcome>, bucket_s: u64) -> Tally {
    let mut tally = Tally::new(bucket_s);
    while let Some(outcome) = rx.recv().await {
        tally.add(outcome);
    }
    tally
}

/// `"401 unknown_kid"`: the status and the gateway's reason code, from a problem's detail.
fn kind(status: u16, detail: &str) -> String {
    let code = detail
        .split_once("\"reason\":\"")
        .and_then(|(_, rest)| rest.split([':', '"']).next())
        .unwrap_or(if status == 0 { "no answer" } else { "-" });
    format!("{status} {code}")
}

/// `None` when the answer is what the call must get; otherwise why not.
fn check(call: &Call, status: u16, body: &[u8]) -> Option<String> {
    let excerpt = || String::from_utf8_lossy(body.get(..300).unwrap_or(body)).into_owned();
    if status != call.expect {
        return Some(format!(
            "expected {}, got {status}: {}",
            call.expect,
            excerpt()
        ));
    }
    // The simulator's `me` describes the token's user: the identity as Looker saw it.
    if status == 200 && call.path == "/api/4.0/user" {
        let expected = call.user.looker_identity().map(|i| i.user_id);
        let seen = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["id"].as_u64().or_else(|| v["id"].as_str()?.parse().ok()));
        if seen != expected {
            return Some(format!(
                "/user answered Looker user {seen:?}, expected {expected:?}"
            ));
        }
    }
    None
}

/// Latency percentiles in milliseconds.
pub fn percentiles(samples: &mut [u32]) -> BTreeMap<&'static str, f64> {
    samples.sort_unstable();
    let mut out = BTreeMap::new();
    if samples.is_empty() {
        return out;
    }
    for (name, q) in [
        ("p50", 0.50),
        ("p90", 0.90),
        ("p99", 0.99),
        ("p99.9", 0.999),
        ("max", 1.0),
    ] {
        let rank = ((samples.len() as f64) * q).ceil() as usize;
        let index = rank.saturating_sub(1).min(samples.len() - 1);
        let us = samples.get(index).copied().unwrap_or(0);
        out.insert(name, (f64::from(us) / 10.0).round() / 100.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_in_milliseconds() {
        let mut us: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        let p = percentiles(&mut us);
        assert_eq!(
            (p["p50"], p["p99"], p["p99.9"], p["max"]),
            (500.0, 990.0, 999.0, 1000.0)
        );
        assert!(percentiles(&mut []).is_empty());
    }

    #[test]
    fn a_refused_call_that_succeeds_is_a_problem_and_me_must_name_the_right_user() {
        let eve = MIX
            .iter()
            .find(|c| c.user == crate::workload::User::Eve)
            .copied()
            .unwrap_or(MIX[0]);
        assert!(check(&eve, 200, b"{}").is_some());
        assert!(check(&eve, 403, b"{}").is_none());
        let me = MIX
            .iter()
            .find(|c| c.user == crate::workload::User::Carol && c.path == "/api/4.0/user")
            .copied()
            .unwrap_or(MIX[0]);
        assert!(check(&me, 200, br#"{"id": "203"}"#).is_none());
        assert!(check(&me, 200, br#"{"id": "101"}"#).is_some());
    }
}
