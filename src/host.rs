//! The only door to the proxy: a `Host` trait with what the flow needs, and its
//! proxy-wasm implementation. Nothing else in the crate calls `proxy_wasm::hostcalls`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};

use crate::http::{HeaderOp, LocalReply};

#[cfg(any(test, feature = "test-util"))]
pub mod fake;

/// A hostcall failed; the flow fails closed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError(pub String);

pub trait Host {
    /// Wall-clock time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// All request headers of the current stream, in one block read in place.
    fn request_headers(&self) -> HeaderBlock;
    fn apply(&self, ops: &[HeaderOp]) -> Result<(), HostError>;
    /// The buffered request body (the first `size` bytes).
    fn request_body(&self, size: usize) -> Vec<u8>;
    fn send_reply(&self, reply: &LocalReply) -> Result<(), HostError>;
    /// Removes every request trailer of the current stream (Looker reads none).
    fn clear_request_trailers(&self) -> Result<(), HostError>;
    fn resume(&self) -> Result<(), HostError>;
    /// Starts an HTTP callout from the current context; returns its token.
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// The `:status` and body (at most `max_body` bytes) of the callout being answered.
    fn callout_response(&self, body_size: usize, max_body: usize) -> (Option<u32>, Vec<u8>);
    /// Starts a unary gRPC call (`service`/`method`, the serialized request `message`)
    /// to `cluster` from the current context; returns its token.
    fn dispatch_grpc(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// The response message of the gRPC call being answered (at most `max` bytes + 1,
    /// so a caller sees that it was larger).
    fn grpc_response(&self, size: usize, max: usize) -> Vec<u8>;
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
        hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
    }

    pub fn set_tick_period(period: Duration) -> bool {
        hostcalls::set_tick_period(period).is_ok()
    }

    /// Calls the host's foreign function `name` (e.g. Envoy's `verify_signature`).
    pub fn call_foreign_function(name: &str, arguments: &[u8]) -> Option<Vec<u8>> {
        hostcalls::call_foreign_function(name, Some(arguments))
            .ok()
            .flatten()
    }

    /// The upstream response's `:status`.
    pub fn response_status() -> Option<u32> {
        hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse().ok())
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

    fn request_headers(&self) -> HeaderBlock {
        HeaderBlock::from_serialized(
            raw::header_map_pairs(MapType::HttpRequestHeaders).unwrap_or_default(),
        )
    }

    fn apply(&self, ops: &[HeaderOp]) -> Result<(), HostError> {
        for op in ops {
            match op {
                HeaderOp::Remove(name) => {
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None)
                }
                HeaderOp::Set(name, value) => {
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                }
            }
            .map_err(host_err("set request header"))?;
        }
        Ok(())
    }

    fn request_body(&self, size: usize) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn send_reply(&self, reply: &LocalReply) -> Result<(), HostError> {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
            .map_err(host_err("send local reply"))
    }

    fn clear_request_trailers(&self) -> Result<(), HostError> {
        hostcalls::set_map(MapType::HttpRequestTrailers, vec![])
            .map_err(host_err("remove request trailers"))
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
        let body = hostcalls::get_buffer(
            BufferType::HttpCallResponseBody,
            0,
            body_size.min(max_body.saturating_add(1)),
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        (status, body)
    }

    fn dispatch_grpc(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        hostcalls::dispatch_grpc_call(cluster, service, method, vec![], Some(message), timeout)
            .map_err(host_err("dispatch gRPC call"))
    }

    fn grpc_response(&self, size: usize, max: usize) -> Vec<u8> {
        hostcalls::get_buffer(
            BufferType::GrpcReceiveBuffer,
            0,
            size.min(max.saturating_add(1)),
        )
        .ok()
        .flatten()
        .unwrap_or_default()
    }

    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        hostcalls::get_shared_data(key)
            .ok()
            .and_then(|(value, _cas)| value)
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
            raw::set_property(name, value.as_bytes());
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

/// A header map as proxy-wasm serializes it — a little-endian `u32` count, then each
/// pair's name and value lengths (`u32` each), then each name and value followed by a
/// NUL — kept as the one buffer the host wrote, and read in place: no copy per header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderBlock {
    bytes: Vec<u8>,
}

impl HeaderBlock {
    pub fn from_serialized(bytes: Vec<u8>) -> HeaderBlock {
        HeaderBlock { bytes }
    }

    /// The block a host would send for these pairs (for fakes and tests).
    pub fn from_pairs<N: AsRef<str>, V: AsRef<str>>(pairs: &[(N, V)]) -> HeaderBlock {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(u32::MAX).to_le_bytes());
        for (name, value) in pairs {
            for part in [name.as_ref(), value.as_ref()] {
                bytes.extend_from_slice(
                    &u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes(),
                );
            }
        }
        for (name, value) in pairs {
            for part in [name.as_ref(), value.as_ref()] {
                bytes.extend_from_slice(part.as_bytes());
                bytes.push(0);
            }
        }
        HeaderBlock { bytes }
    }

    /// Every (name, value) in order. Names and values that are not UTF-8 are read
    /// lossily (U+FFFD), as before; a malformed block yields the pairs up to the damage.
    pub fn pairs(&self) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        let bytes = self.bytes.as_slice();
        let word = |at: usize| -> Option<usize> {
            let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
            usize::try_from(u32::from_le_bytes(b)).ok()
        };
        let Some(count) = word(0) else {
            return Vec::new();
        };
        let mut pairs = Vec::with_capacity(count.min(bytes.len() / 10));
        let mut at = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(4))
            .unwrap_or(usize::MAX);
        for i in 0..count {
            let lengths = i.checked_mul(8).and_then(|n| n.checked_add(4));
            let Some((name_len, value_len)) =
                lengths.and_then(|l| Some((word(l)?, word(l.checked_add(4)?)?)))
            else {
                break;
            };
            let Some((name, after_name)) = part(bytes, at, name_len) else {
                break;
            };
            let Some((value, after_value)) = part(bytes, after_name, value_len) else {
                break;
            };
            at = after_value;
            pairs.push((text(name), text(value)));
        }
        pairs
    }
}

/// UTF-8 in place; lossily (U+FFFD) otherwise. `from_utf8` first: it is much faster than
/// the lossy scan on the valid text that nearly every header is.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// `len` bytes at `at`, and where the next part starts (past this one's NUL).
fn part(bytes: &[u8], at: usize, len: usize) -> Option<(&[u8], usize)> {
    let end = at.checked_add(len)?;
    Some((bytes.get(at..end)?, end.checked_add(1)?))
}

/// Raw hostcalls the SDK only offers with a copy per item.
mod raw {
    use proxy_wasm::types::MapType;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
    }

    /// Sets the one-segment property `name` (a one-element path is just its bytes), without
    /// the SDK's two allocations per call. Failures are ignored, as before.
    pub(super) fn set_property(name: &str, value: &[u8]) {
        // SAFETY: both pointers are valid for their lengths for the duration of the call;
        // the host only reads them.
        unsafe {
            proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len());
        }
    }

    /// The serialized header map, as the host wrote it (one allocation, no per-header copy).
    pub(super) fn header_map_pairs(map_type: MapType) -> Option<Vec<u8>> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer it obtained from this module's
        // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes) and its size;
        // we take ownership of it exactly once, as the SDK's own `get_map_bytes` does.
        unsafe {
            if proxy_get_header_map_pairs(map_type as u32, &mut data, &mut size) != 0
                || data.is_null()
            {
                return None;
            }
            Some(Vec::from_raw_parts(data, size, size))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(block: &HeaderBlock) -> Vec<(String, String)> {
        block
            .pairs()
            .into_iter()
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn header_block_reads_pairs_in_order_with_repeats_and_empty_values() {
        let pairs = [
            (":method", "GET"),
            ("authorization", "Bearer a"),
            ("authorization", "Bearer b"),
            ("x-empty", ""),
        ];
        let block = HeaderBlock::from_pairs(&pairs);
        let expected: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(owned(&block), expected);
        assert!(
            block
                .pairs()
                .iter()
                .all(|(n, v)| matches!((n, v), (Cow::Borrowed(_), Cow::Borrowed(_)))),
            "no copies"
        );
        assert!(HeaderBlock::default().pairs().is_empty());
        assert!(HeaderBlock::from_pairs::<&str, &str>(&[])
            .pairs()
            .is_empty());
    }

    #[test]
    fn header_block_reads_invalid_utf8_lossily_like_before() {
        let mut block = HeaderBlock::from_pairs(&[("x-bad", "ab"), ("x-ok", "c")]);
        let at = block.bytes.windows(3).position(|w| w == b"ab\0").unwrap();
        block.bytes[at] = 0xff;
        assert_eq!(
            owned(&block),
            vec![
                ("x-bad".into(), "\u{fffd}b".into()),
                ("x-ok".into(), "c".into())
            ]
        );
    }

    #[test]
    fn header_block_that_is_cut_short_or_lies_about_sizes_yields_what_is_whole() {
        let pairs = [("a", "1"), ("bb", "22"), ("ccc", "")];
        let block = HeaderBlock::from_pairs(&pairs);
        // Where each pair's value ends (its NUL aside): from there on the pair is whole.
        let mut at = 4 + 8 * pairs.len();
        let ends: Vec<usize> = pairs
            .iter()
            .map(|(name, value)| {
                at += name.len() + 1 + value.len() + 1;
                at - 1
            })
            .collect();
        for len in 0..=block.bytes.len() {
            let cut = HeaderBlock::from_serialized(block.bytes[..len].to_vec());
            let whole = ends.iter().filter(|end| **end <= len).count();
            let expected: Vec<(String, String)> = pairs[..whole]
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            assert_eq!(
                owned(&cut),
                expected,
                "cut at {len} of {}",
                block.bytes.len()
            );
        }
        let mut huge = block.bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderBlock::from_serialized(huge).pairs().is_empty());
        let mut long_value = block.bytes.clone();
        long_value[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert!(HeaderBlock::from_serialized(long_value).pairs().is_empty());
    }
}
