//! The only door to the proxy: a `Host` trait with what the flow needs, and its
//! proxy-wasm implementation. Nothing else in the crate calls `proxy_wasm::hostcalls`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};

use crate::decision::HeaderOp;
use crate::reply::LocalReply;

/// A hostcall failed; the flow fails closed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError(pub String);

pub trait Host {
    /// Wall-clock time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// All request headers of the current stream, as (lower-case name, value).
    fn request_headers(&self) -> Vec<(String, String)>;
    fn apply(&self, ops: &[HeaderOp]) -> Result<(), HostError>;
    /// The buffered request body (the first `size` bytes).
    fn request_body(&self, size: usize) -> Vec<u8>;
    fn send_reply(&self, reply: &LocalReply) -> Result<(), HostError>;
    fn resume(&self) -> Result<(), HostError>;
    /// Starts an HTTP callout from the current context; returns its token.
    fn dispatch(&self, cluster: &str, headers: &[(&str, String)], body: &[u8], timeout: Duration)
        -> Result<u32, HostError>;
    /// The `:status` and body (at most `max_body` bytes) of the callout being answered.
    fn callout_response(&self, body_size: usize, max_body: usize) -> (Option<u32>, Vec<u8>);
    fn shared_get(&self, key: &str) -> Option<Vec<u8>>;
    fn shared_set(&self, key: &str, value: &[u8]) -> Result<(), HostError>;
    /// Shared data with its compare-and-swap version.
    fn shared_get_versioned(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes only if the version is still `cas` (`None`: the key must not exist yet
    /// or any version is fine, as the host defines); `false` when another writer won.
    fn shared_set_if(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
    /// Makes `context_id` the target of the following hostcalls; `false` if it is gone.
    fn switch_to(&self, context_id: u32) -> bool;
    /// Records the audit fields of the current request where the access log reads them.
    fn record_audit(&self, fields: &[(&'static str, &str)]);
    /// Adds `delta` to the counter `name` (created on first use).
    fn count(&self, name: &str, delta: u64);
    /// Records one value of the histogram `name` (created on first use).
    fn observe(&self, name: &str, value: u64);
}

/// The real host: Envoy (or any proxy-wasm host) through the SDK's hostcalls.
pub struct ProxyHost;

/// Hostcalls only the glue in `filter` needs (not part of the flow's `Host`).
impl ProxyHost {
    pub fn plugin_configuration(size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size).ok().flatten()
    }

    pub fn set_tick_period(period: Duration) -> bool {
        hostcalls::set_tick_period(period).is_ok()
    }

    /// The upstream response's `:status`.
    pub fn response_status() -> Option<u32> {
        hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status").ok().flatten().and_then(|s| s.parse().ok())
    }
}

fn host_err(what: &str) -> impl Fn(proxy_wasm::types::Status) -> HostError + '_ {
    move |status| HostError(format!("{what}: {status:?}"))
}

impl Host for ProxyHost {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
            .map(|headers| {
                headers
                    .into_iter()
                    .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn apply(&self, ops: &[HeaderOp]) -> Result<(), HostError> {
        for op in ops {
            match op {
                HeaderOp::Remove(name) => hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None),
                HeaderOp::Set(name, value) => {
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                }
            }
            .map_err(host_err("set request header"))?;
        }
        Ok(())
    }

    fn request_body(&self, size: usize) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size).ok().flatten().unwrap_or_default()
    }

    fn send_reply(&self, reply: &LocalReply) -> Result<(), HostError> {
        let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
            .map_err(host_err("send local reply"))
    }

    fn resume(&self) -> Result<(), HostError> {
        hostcalls::resume_http_request().map_err(host_err("resume request"))
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        hostcalls::dispatch_http_call(cluster, headers, Some(body), vec![], timeout)
            .map_err(host_err("dispatch broker call"))
    }

    fn callout_response(&self, body_size: usize, max_body: usize) -> (Option<u32>, Vec<u8>) {
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse().ok());
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(max_body.saturating_add(1)))
            .ok()
            .flatten()
            .unwrap_or_default();
        (status, body)
    }

    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        hostcalls::get_shared_data(key).ok().and_then(|(value, _cas)| value)
    }

    fn shared_set(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        hostcalls::set_shared_data(key, Some(value), None).map_err(host_err("set shared data"))
    }

    fn shared_get_versioned(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set_if(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }

    fn switch_to(&self, context_id: u32) -> bool {
        hostcalls::set_effective_context(context_id).is_ok()
    }

    fn record_audit(&self, fields: &[(&'static str, &str)]) {
        // Envoy stores these as filter state `wasm.<name>`: the access log prints them
        // with %FILTER_STATE(wasm.lookergate_subject:PLAIN)% and friends.
        for (name, value) in fields {
            let _ = hostcalls::set_property(vec![name], Some(value.as_bytes()));
        }
    }

    fn count(&self, name: &str, delta: u64) {
        if let Some(id) = metric_id(MetricType::Counter, name) {
            let _ = hostcalls::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
        }
    }

    fn observe(&self, name: &str, value: u64) {
        if let Some(id) = metric_id(MetricType::Histogram, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

thread_local! {
    /// Metric ids of this VM, defined on first use (each worker runs its own VM).
    static METRICS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

fn metric_id(kind: MetricType, name: &str) -> Option<u32> {
    METRICS.with(|metrics| {
        let mut metrics = metrics.borrow_mut();
        if let Some(id) = metrics.get(name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(kind, name).ok()?;
        metrics.insert(name.to_owned(), id);
        Some(id)
    })
}

/// Envoy's `verify_signature` foreign function (BoringSSL in the host), the fast path
/// for RSA and ECDSA signatures. Kept apart from [`Host`]: it serves `jwt`, not the flow.
pub struct EnvoyVerifySignature;

impl crate::jwt::ForeignCall for EnvoyVerifySignature {
    fn call(&self, arguments: &[u8]) -> Option<Vec<u8>> {
        hostcalls::call_foreign_function("verify_signature", Some(arguments)).ok().flatten()
    }
}

/// Probes the host's signature verification once and, for the algorithms it gets
/// right, installs it for this VM (worker). Returns the algorithms now verified by the host.
pub fn install_host_crypto() -> Vec<crate::jwt::Algorithm> {
    let verifier = crate::jwt::HostVerifier::probe(EnvoyVerifySignature);
    let enabled = verifier.enabled().to_vec();
    if enabled.is_empty() {
        crate::jwt::signature::uninstall();
    } else {
        crate::jwt::signature::install(std::rc::Rc::new(verifier));
    }
    enabled
}
