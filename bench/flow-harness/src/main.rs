//! Drives lookergate's request flow natively against a fake host, the way the filter
//! glue does (request headers, response headers, done), so that callgrind can count the
//! instructions our own code spends per request without V8 or Envoy in the way. It also
//! counts the hostcalls each request would make (their cost is in V8 and Envoy).
//!
//! `bench/flow-harness/run.sh` runs it under callgrind; by hand:
//! `lookergate-flow-harness warm|cold <requests>` (tokens and plugin config from
//! `bench/work/`, written by `make bench` or `BENCH_GEN_ONLY=1 python3 bench/bench.py`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use lookergate::config::Gateway;
use lookergate::decision::HeaderOp;
use lookergate::flow;
use lookergate::host::{HeaderBlock, Host, HostError};
use lookergate::jwt::{signature, ForeignCall, HostVerifier};
use lookergate::reply::LocalReply;
use lookergate::tokens::Worker;

/// A host that answers like Envoy on the bench's route and counts hostcalls by kind.
struct FakeHost {
    now_ms: u64,
    /// The request headers, serialized as Envoy hands them over.
    headers: RefCell<Vec<u8>>,
    /// The shared-data record of the Looker token every identity gets.
    looker_token: Vec<u8>,
    calls: RefCell<BTreeMap<&'static str, u64>>,
    replies: Cell<u64>,
}

impl FakeHost {
    fn hostcall(&self, kind: &'static str, n: u64) {
        *self.calls.borrow_mut().entry(kind).or_default() += n;
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.hostcall("get_current_time", 1);
        self.now_ms
    }
    fn request_headers(&self) -> HeaderBlock {
        self.hostcall("get_map(request headers)", 1);
        HeaderBlock::from_serialized(self.headers.borrow().to_vec())
    }
    fn apply(&self, ops: &[HeaderOp]) -> Result<(), HostError> {
        self.hostcall("set_map_value", ops.len() as u64);
        std::hint::black_box(ops);
        Ok(())
    }
    fn request_body(&self, _size: usize) -> Vec<u8> {
        self.hostcall("get_buffer", 1);
        Vec::new()
    }
    fn send_reply(&self, reply: &LocalReply) -> Result<(), HostError> {
        self.hostcall("send_http_response", 1);
        self.replies.set(self.replies.get() + 1);
        std::hint::black_box(reply);
        Ok(())
    }
    fn clear_request_trailers(&self) -> Result<(), HostError> {
        self.hostcall("set_map(request trailers)", 1);
        Ok(())
    }
    fn resume(&self) -> Result<(), HostError> {
        self.hostcall("resume", 1);
        Ok(())
    }
    fn dispatch(
        &self,
        _c: &str,
        _h: &[(&str, String)],
        _b: &[u8],
        _t: Duration,
    ) -> Result<u32, HostError> {
        panic!("the harness pre-shares every Looker token: no broker call expected")
    }
    fn callout_response(&self, _b: usize, _m: usize) -> (Option<u32>, Vec<u8>) {
        (None, Vec::new())
    }
    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        self.hostcall("get_shared_data", 1);
        key.starts_with("lookergate.looker_token.")
            .then(|| self.looker_token.clone())
    }
    fn shared_set(&self, _key: &str, _value: &[u8]) -> Result<(), HostError> {
        self.hostcall("set_shared_data", 1);
        Ok(())
    }
    fn shared_get_versioned(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        (self.shared_get(key), Some(1))
    }
    fn shared_set_if(&self, key: &str, value: &[u8], _cas: Option<u32>) -> bool {
        self.shared_set(key, value).is_ok()
    }
    fn switch_to(&self, _context_id: u32) -> bool {
        self.hostcall("set_effective_context", 1);
        true
    }
    fn record_audit(&self, fields: &[(&'static str, &str)]) {
        self.hostcall("set_property", fields.len() as u64);
        std::hint::black_box(fields);
    }
    fn count(&self, name: &str, _delta: u64) {
        self.hostcall("increment_metric", 1);
        std::hint::black_box(name);
    }
    fn observe(&self, name: &str, _value: u64) {
        self.hostcall("record_metric", 1);
        std::hint::black_box(name);
    }
}

/// Stands in for Envoy's `verify_signature`, so cold requests take the host-crypto path
/// without paying for crypto here: passes the probe (a text seen a second time is the
/// probe's corrupted copy), then says yes — the bench's tokens are all genuine.
#[derive(Default)]
struct NoCrypto {
    seen: RefCell<HashSet<Vec<u8>>>,
    probed: Cell<bool>,
    calls: Cell<u64>,
}

impl ForeignCall for NoCrypto {
    fn call(&self, arguments: &[u8]) -> Option<Vec<u8>> {
        self.calls.set(self.calls.get() + 1);
        if self.probed.get()
            || self
                .seen
                .borrow_mut()
                .insert(arguments[arguments.len() - 60..].to_vec())
        {
            return Some(vec![0x08, 0x01]);
        }
        Some(vec![0x12, 0x03, b'b', b'a', b'd'])
    }
}

fn work() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../work")
}

/// The lookergate plugin configuration `make bench` ran with.
fn plugin_config() -> String {
    let path = work().join("envoy-lookergate-warm.json");
    let envoy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).expect("bench/work/envoy-lookergate-warm.json"),
    )
    .unwrap();
    let filters = &envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"];
    let wasm = filters
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.wasm")
        .unwrap();
    wasm["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn tokens(pool: &str, n: usize) -> Vec<String> {
    let text =
        std::fs::read_to_string(work().join(format!("pool-{pool}.txt"))).expect("token pool");
    text.lines().take(n).map(str::to_owned).collect()
}

/// The proxy-wasm header map serialization (what `proxy_get_header_map_pairs` returns).
fn serialized(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (n, v) in pairs {
        out.extend((n.len() as u32).to_le_bytes());
        out.extend((v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend(n.as_bytes());
        out.push(0);
        out.extend(v.as_bytes());
        out.push(0);
    }
    out
}

/// wrk's request headers as Envoy hands them to the filter.
fn headers(context_id: u32, token: &str) -> Vec<u8> {
    let headers: Vec<(String, String)> = vec![
        (":authority".into(), "127.0.0.1:10000".into()),
        (":path".into(), "/api/4.0/dashboards/1".into()),
        (":method".into(), "GET".into()),
        (":scheme".into(), "http".into()),
        ("authorization".into(), format!("Bearer {token}")),
        ("x-forwarded-proto".into(), "http".into()),
        (
            "x-request-id".into(),
            format!("5f1d2c3a-8b4e-4a7f-9c6d-{context_id:012}"),
        ),
    ];
    serialized(&headers)
}

/// One request through the glue's three callbacks.
fn request(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &FakeHost,
    context_id: u32,
    headers: &[u8],
) {
    // What the host does: allocate in the module and copy the serialized map in.
    host.headers.borrow_mut().clear();
    host.headers.borrow_mut().extend_from_slice(headers);
    let next = flow::on_request(gateway, worker, host, context_id, true);
    assert_eq!(
        next,
        flow::Next::Continue,
        "request {context_id} was not forwarded"
    );
    host.hostcall("get_map_value(:status)", 1);
    flow::on_response(gateway, worker, host, context_id, Some(200));
    worker.leave(context_id);
}

/// The measured requests (callgrind: `--toggle-collect=*measured*`).
#[inline(never)]
fn measured(gateway: &Gateway, worker: &mut Worker, host: &FakeHost, requests: &[(u32, Vec<u8>)]) {
    // Not identical to `warm_up`, so that the linker keeps both (callgrind toggles on this one).
    std::hint::black_box("measured");
    for (context_id, headers) in requests {
        request(gateway, worker, host, *context_id, headers);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("warm");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let gateway = Gateway::load(plugin_config().as_bytes()).unwrap();
    let crypto = Rc::new(HostVerifier::probe(NoCrypto::default()));
    assert!(!crypto.enabled().is_empty(), "probe failed");
    crypto.call().probed.set(true);
    signature::install(crypto.clone());
    let host = FakeHost {
        now_ms,
        headers: RefCell::new(Vec::new()),
        looker_token: format!(
            "v1 {} {}",
            now_ms + 3_600_000,
            "lookerAccessToken0123456789abcdefghijklmn"
        )
        .into_bytes(),
        calls: RefCell::new(BTreeMap::new()),
        replies: Cell::new(0),
    };
    let mut worker = Worker::default();
    // Warm-up (not measured): warm verifies its pool once; cold fills the verified-token
    // cache to its bound, so measured requests also pay for evicting, as in `make bench`.
    let (warmup, measure) = match mode {
        "warm" => {
            let pool = tokens("warm", 200);
            let measure: Vec<String> = pool.iter().cycle().take(n).cloned().collect();
            (pool, measure)
        }
        "cold" => {
            let fill = std::env::var("HARNESS_COLD_FILL")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(10_000);
            let mut pool = tokens("cold-RS256", fill + n);
            let measure = pool.split_off(fill.min(pool.len()));
            (pool, measure)
        }
        other => panic!("mode {other}: warm or cold"),
    };
    let prepare = |tokens: &[String], first: u32| -> Vec<(u32, Vec<u8>)> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (first + i as u32, headers(first + i as u32, t)))
            .collect()
    };
    let (warmup, measure) = (prepare(&warmup, 2), prepare(&measure, 1_000_000));
    warm_up(&gateway, &mut worker, &host, &warmup);
    host.calls.borrow_mut().clear();
    let before = crypto.call().calls.get();
    measured(&gateway, &mut worker, &host, &measure);
    assert_eq!(host.replies.get(), 0, "a request was refused");
    println!(
        "mode {mode}: {} requests; foreign calls/request {:.2}",
        measure.len(),
        (crypto.call().calls.get() - before) as f64 / measure.len() as f64
    );
    let mut total = 0.0;
    for (kind, count) in host.calls.borrow().iter() {
        let per = *count as f64 / measure.len() as f64;
        total += per;
        println!("  hostcalls/request {kind}: {per:.2}");
    }
    println!("  hostcalls/request total (plus the foreign call): {total:.2}");
}

#[inline(never)]
fn warm_up(gateway: &Gateway, worker: &mut Worker, host: &FakeHost, requests: &[(u32, Vec<u8>)]) {
    for (context_id, headers) in requests {
        request(gateway, worker, host, *context_id, headers);
    }
}
