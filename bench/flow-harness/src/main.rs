//! Drives lookergate's request flow natively against the crate's fake host
//! (`host::fake`, counting only), the way the filter glue does (request headers,
//! response headers, done), so that callgrind can count the instructions our own code
//! spends per request without V8 or Envoy in the way. It also counts the hostcalls each
//! request would make (their cost is in V8 and Envoy).
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
use std::collections::HashSet;
use std::path::PathBuf;
use std::rc::Rc;

use lookergate::config::Gateway;
use lookergate::flow;
use lookergate::flow::Worker;
use lookergate::host::fake::{FakeHost, Hostcall};
use lookergate::host::HeaderBlock;
use lookergate::jwt::{signature, ForeignCall, HostVerifier};

/// The broker's answer for an identity seen for the first time (during the warm-up).
const BROKER_ANSWER: &str = r#"{"access_token":"lookerAccessToken0123456789abcdefghijklmn","token_type":"token","expires_in":3600}"#;

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

/// wrk's request headers as Envoy hands them to the filter.
fn headers(context_id: u32, token: &str) -> HeaderBlock {
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
    HeaderBlock::from_pairs(&headers)
}

/// One request through the glue's three callbacks.
fn request(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &FakeHost,
    context_id: u32,
    headers: &HeaderBlock,
) {
    // What the host does: a new stream whose serialized headers it copies into the module.
    host.set_request_headers(context_id, headers.clone());
    host.current.set(context_id);
    let next = flow::on_request(gateway, worker, host, context_id, true);
    assert_eq!(
        next,
        flow::Next::Continue,
        "request {context_id} was not forwarded"
    );
    host.hostcall(Hostcall::GetResponseStatus, 1);
    flow::on_response(gateway, worker, host, context_id, Some(200));
    worker.leave(context_id);
    host.end_stream(context_id);
}

/// The measured requests (callgrind: `--toggle-collect=*measured*`).
#[inline(never)]
fn measured(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &FakeHost,
    requests: &[(u32, HeaderBlock)],
) {
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
    let host = FakeHost::counting();
    host.now_ms.set(now_ms);
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
    let prepare = |tokens: &[String], first: u32| -> Vec<(u32, HeaderBlock)> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (first + i as u32, headers(first + i as u32, t)))
            .collect()
    };
    let (warmup, measure) = (prepare(&warmup, 2), prepare(&measure, 1_000_000));
    warm_up(&gateway, &mut worker, &host, &warmup);
    assert_eq!(
        host.calls(Hostcall::SendReply),
        0,
        "a warm-up request was refused"
    );
    host.reset_counts();
    let before = crypto.call().calls.get();
    measured(&gateway, &mut worker, &host, &measure);
    assert_eq!(host.calls(Hostcall::SendReply), 0, "a request was refused");
    assert_eq!(host.calls(Hostcall::Dispatch), 0, "a request called out");
    println!(
        "mode {mode}: {} requests; foreign calls/request {:.2}",
        measure.len(),
        (crypto.call().calls.get() - before) as f64 / measure.len() as f64
    );
    let mut total = 0.0;
    for kind in Hostcall::ALL.into_iter().filter(|k| host.calls(*k) > 0) {
        let (kind, count) = (kind.name(), host.calls(kind));
        let per = count as f64 / measure.len() as f64;
        total += per;
        println!("  hostcalls/request {kind}: {per:.2}");
    }
    println!("  hostcalls/request total (plus the foreign call): {total:.2}");
}

/// Like `measured`, except that the first request of each identity waits for the broker
/// (answered at once, as the glue delivers it), which puts its Looker token in the cache.
#[inline(never)]
fn warm_up(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &FakeHost,
    requests: &[(u32, HeaderBlock)],
) {
    for (context_id, headers) in requests {
        let context_id = *context_id;
        host.set_request_headers(context_id, headers.clone());
        host.current.set(context_id);
        if flow::on_request(gateway, worker, host, context_id, true) == flow::Next::Pause {
            let call = host
                .last_dispatched()
                .expect("paused without a broker call");
            assert_eq!(
                call.context_id, context_id,
                "request {context_id} was not forwarded"
            );
            let answer = BROKER_ANSWER.as_bytes();
            flow::on_callout(
                gateway,
                worker,
                host,
                call.callout,
                Some(200),
                answer,
                context_id,
            );
        }
        flow::on_response(gateway, worker, host, context_id, Some(200));
        worker.leave(context_id);
        host.end_stream(context_id);
    }
}
