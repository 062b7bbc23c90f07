//! A [`Host`] for tests and the bench harness (feature `test-util`): it keeps what the
//! flow did to each request context — headers applied, local replies, resumes, trailers
//! cleared, audit fields — and the callouts it made, the shared data it wrote (with CAS
//! versions) and its metrics, so that tests assert on effects, never on hostcall order.
//! It counts every hostcall by kind; [`FakeHost::counting`] keeps only the counts, for
//! the bench, which measures the flow's own CPU against a host that does nothing costly.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use super::{HeaderBlock, Host, HostError};
use crate::http::{HeaderOp, LocalReply};

/// The hostcalls a filter makes, by kind (the proxy-wasm ABI call behind each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hostcall {
    GetCurrentTime,
    GetRequestHeaders,
    SetRequestHeader,
    GetRequestBody,
    SendReply,
    ClearRequestTrailers,
    Resume,
    Dispatch,
    GetCalloutResponse,
    DispatchGrpc,
    GetGrpcResponse,
    GetSharedData,
    SetSharedData,
    SetEffectiveContext,
    SetProperty,
    IncrementMetric,
    RecordMetric,
    /// The upstream response's `:status` (read by the glue, not through [`Host`]).
    GetResponseStatus,
}

impl Hostcall {
    pub const ALL: [Hostcall; 18] = [
        Hostcall::GetCurrentTime,
        Hostcall::GetRequestHeaders,
        Hostcall::SetRequestHeader,
        Hostcall::GetRequestBody,
        Hostcall::SendReply,
        Hostcall::ClearRequestTrailers,
        Hostcall::Resume,
        Hostcall::Dispatch,
        Hostcall::GetCalloutResponse,
        Hostcall::DispatchGrpc,
        Hostcall::GetGrpcResponse,
        Hostcall::GetSharedData,
        Hostcall::SetSharedData,
        Hostcall::SetEffectiveContext,
        Hostcall::SetProperty,
        Hostcall::IncrementMetric,
        Hostcall::RecordMetric,
        Hostcall::GetResponseStatus,
    ];

    /// The ABI call's name, as the bench reports it.
    pub fn name(self) -> &'static str {
        match self {
            Hostcall::GetCurrentTime => "get_current_time",
            Hostcall::GetRequestHeaders => "get_map(request headers)",
            Hostcall::SetRequestHeader => "set_map_value",
            Hostcall::GetRequestBody => "get_buffer",
            Hostcall::SendReply => "send_http_response",
            Hostcall::ClearRequestTrailers => "set_map(request trailers)",
            Hostcall::Resume => "resume",
            Hostcall::Dispatch => "dispatch_http_call",
            Hostcall::GetCalloutResponse => "get_buffer(callout response)",
            Hostcall::DispatchGrpc => "dispatch_grpc_call",
            Hostcall::GetGrpcResponse => "get_buffer(gRPC response)",
            Hostcall::GetSharedData => "get_shared_data",
            Hostcall::SetSharedData => "set_shared_data",
            Hostcall::SetEffectiveContext => "set_effective_context",
            Hostcall::SetProperty => "set_property",
            Hostcall::IncrementMetric => "increment_metric",
            Hostcall::RecordMetric => "record_metric",
            Hostcall::GetResponseStatus => "get_map_value(:status)",
        }
    }
}

/// A callout the flow started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    /// The token `dispatch` returned.
    pub callout: u32,
    /// The context that was current when it was sent (its owner).
    pub context_id: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub timeout: Duration,
}

impl Dispatched {
    /// The first value of header `name` (`:path`, `:authority`, ...).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A gRPC call the flow started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcDispatched {
    pub callout: u32,
    /// The context that was current when it was sent (its owner).
    pub context_id: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub message: Vec<u8>,
    pub timeout: Duration,
}

/// The fake host. Fields are public: a test sets the world up (clock, headers, body,
/// callout answers, failing dispatch, contexts gone) and reads the effects back.
pub struct FakeHost {
    /// Whether effects are kept (tests) or only counted (the bench).
    record: bool,
    calls: [Cell<u64>; Hostcall::ALL.len()],
    pub now_ms: Cell<u64>,
    /// The context the following hostcalls act on (`switch_to`, or set by the test).
    pub current: Cell<u32>,
    /// Each context's request headers, as the host serializes them.
    headers: RefCell<Vec<(u32, HeaderBlock)>>,
    /// The buffered request body `request_body` reads (any context).
    pub body: RefCell<Vec<u8>>,
    pub applied: RefCell<HashMap<u32, Vec<HeaderOp>>>,
    pub replies: RefCell<HashMap<u32, LocalReply>>,
    pub resumed: RefCell<Vec<u32>>,
    pub trailers_cleared: RefCell<Vec<u32>>,
    pub dispatched: RefCell<Vec<Dispatched>>,
    /// `dispatch` fails (no such cluster, or the host refuses) while set.
    pub fail_dispatch: Cell<bool>,
    /// The clusters `dispatch` knows (`None`: any); Envoy refuses a call to another one.
    pub clusters: RefCell<Option<Vec<String>>>,
    /// The last callout token handed out.
    pub next_callout: Cell<u32>,
    /// What `callout_response` serves: the answer's `:status` and body...
    pub callout_status: Cell<Option<u32>>,
    pub callout_body: RefCell<Vec<u8>>,
    /// ... and the bound (`max_body`) of each read.
    pub read_bounds: RefCell<Vec<usize>>,
    pub grpc_dispatched: RefCell<Vec<GrpcDispatched>>,
    /// `dispatch_grpc` fails while set.
    pub fail_grpc_dispatch: Cell<bool>,
    /// What `grpc_response` serves.
    pub grpc_body: RefCell<Vec<u8>>,
    pub shared: RefCell<HashMap<String, Vec<u8>>>,
    /// Each shared key's CAS version, bumped by every write.
    pub versions: RefCell<HashMap<String, u32>>,
    /// Contexts that went away: `switch_to` fails for them.
    pub gone: RefCell<Vec<u32>>,
    pub audits: RefCell<HashMap<u32, HashMap<String, String>>>,
    pub counters: RefCell<HashMap<String, u64>>,
    pub observed: RefCell<HashMap<String, Vec<u64>>>,
}

impl Default for FakeHost {
    fn default() -> FakeHost {
        FakeHost::with_recording(true)
    }
}

impl FakeHost {
    /// A host that keeps every effect (for tests).
    pub fn recording() -> FakeHost {
        FakeHost::with_recording(true)
    }

    /// A host that only counts hostcalls by kind and keeps no effects, so that it costs
    /// next to nothing per call (for the bench). Shared data and callouts still work.
    pub fn counting() -> FakeHost {
        FakeHost::with_recording(false)
    }

    fn with_recording(record: bool) -> FakeHost {
        FakeHost {
            record,
            calls: Default::default(),
            now_ms: Cell::new(0),
            current: Cell::new(0),
            headers: RefCell::new(Vec::new()),
            body: RefCell::new(Vec::new()),
            applied: RefCell::default(),
            replies: RefCell::default(),
            resumed: RefCell::default(),
            trailers_cleared: RefCell::default(),
            dispatched: RefCell::default(),
            fail_dispatch: Cell::new(false),
            clusters: RefCell::new(None),
            next_callout: Cell::new(0),
            callout_status: Cell::new(Some(200)),
            callout_body: RefCell::default(),
            read_bounds: RefCell::default(),
            grpc_dispatched: RefCell::default(),
            fail_grpc_dispatch: Cell::new(false),
            grpc_body: RefCell::default(),
            shared: RefCell::default(),
            versions: RefCell::default(),
            gone: RefCell::default(),
            audits: RefCell::default(),
            counters: RefCell::default(),
            observed: RefCell::default(),
        }
    }

    /// Counts `n` hostcalls of `kind` (the harness counts the glue's own this way).
    pub fn hostcall(&self, kind: Hostcall, n: u64) {
        if let Some(count) = self.calls.get(kind as usize) {
            count.set(count.get() + n);
        }
    }

    /// How many hostcalls of `kind` were made since the last [`FakeHost::reset_counts`].
    pub fn calls(&self, kind: Hostcall) -> u64 {
        self.calls.get(kind as usize).map_or(0, Cell::get)
    }

    pub fn reset_counts(&self) {
        for count in &self.calls {
            count.set(0);
        }
    }

    /// The wall clock as the fake's `now_ms`.
    pub fn set_clock_to_now(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.now_ms.set(now);
    }

    /// Context `context_id`'s request headers, from now on.
    pub fn set_request_headers(&self, context_id: u32, block: HeaderBlock) {
        let mut headers = self.headers.borrow_mut();
        match headers.iter_mut().find(|(id, _)| *id == context_id) {
            Some((_, old)) => *old = block,
            None => headers.push((context_id, block)),
        }
    }

    /// Context `context_id`'s stream is over: its headers are gone.
    pub fn end_stream(&self, context_id: u32) {
        self.headers
            .borrow_mut()
            .retain(|(id, _)| *id != context_id);
    }

    /// The last callout sent.
    pub fn last_dispatched(&self) -> Option<Dispatched> {
        self.dispatched.borrow().last().cloned()
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.hostcall(Hostcall::GetCurrentTime, 1);
        self.now_ms.get()
    }

    fn request_headers(&self) -> HeaderBlock {
        self.hostcall(Hostcall::GetRequestHeaders, 1);
        let current = self.current.get();
        self.headers
            .borrow()
            .iter()
            .find(|(id, _)| *id == current)
            .map(|(_, block)| block.clone())
            .unwrap_or_default()
    }

    fn apply(&self, ops: &[HeaderOp]) -> Result<(), HostError> {
        self.hostcall(Hostcall::SetRequestHeader, ops.len() as u64);
        if self.record {
            self.applied
                .borrow_mut()
                .entry(self.current.get())
                .or_default()
                .extend(ops.iter().cloned());
        } else {
            std::hint::black_box(ops);
        }
        Ok(())
    }

    fn request_body(&self, size: usize) -> Vec<u8> {
        self.hostcall(Hostcall::GetRequestBody, 1);
        let body = self.body.borrow();
        body.get(..size.min(body.len()))
            .unwrap_or_default()
            .to_vec()
    }

    fn send_reply(&self, reply: &LocalReply) -> Result<(), HostError> {
        self.hostcall(Hostcall::SendReply, 1);
        if self.record {
            let previous = self
                .replies
                .borrow_mut()
                .insert(self.current.get(), reply.clone());
            assert!(
                previous.is_none(),
                "context {} answered twice",
                self.current.get()
            );
        } else {
            std::hint::black_box(reply);
        }
        Ok(())
    }

    fn clear_request_trailers(&self) -> Result<(), HostError> {
        self.hostcall(Hostcall::ClearRequestTrailers, 1);
        if self.record {
            self.trailers_cleared.borrow_mut().push(self.current.get());
        }
        Ok(())
    }

    fn resume(&self) -> Result<(), HostError> {
        self.hostcall(Hostcall::Resume, 1);
        if self.record {
            self.resumed.borrow_mut().push(self.current.get());
        }
        Ok(())
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.hostcall(Hostcall::Dispatch, 1);
        if self.fail_dispatch.get() {
            return Err(HostError("dispatch refused".into()));
        }
        if let Some(known) = self.clusters.borrow().as_ref() {
            if !known.iter().any(|c| c == cluster) {
                return Err(HostError(format!("no cluster {cluster:?}")));
            }
        }
        let callout = self.next_callout.get() + 1;
        self.next_callout.set(callout);
        self.dispatched.borrow_mut().push(Dispatched {
            callout,
            context_id: self.current.get(),
            cluster: cluster.to_owned(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
            timeout,
        });
        Ok(callout)
    }

    fn callout_response(&self, body_size: usize, max_body: usize) -> (Option<u32>, Vec<u8>) {
        self.hostcall(Hostcall::GetCalloutResponse, 1);
        self.read_bounds.borrow_mut().push(max_body);
        let body = self.callout_body.borrow();
        let take = body_size.min(max_body.saturating_add(1)).min(body.len());
        (
            self.callout_status.get(),
            body.get(..take).unwrap_or_default().to_vec(),
        )
    }

    fn dispatch_grpc(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.hostcall(Hostcall::DispatchGrpc, 1);
        if self.fail_grpc_dispatch.get() {
            return Err(HostError("gRPC dispatch refused".into()));
        }
        if let Some(known) = self.clusters.borrow().as_ref() {
            if !known.iter().any(|c| c == cluster) {
                return Err(HostError(format!("no cluster {cluster:?}")));
            }
        }
        let callout = self.next_callout.get() + 1;
        self.next_callout.set(callout);
        self.grpc_dispatched.borrow_mut().push(GrpcDispatched {
            callout,
            context_id: self.current.get(),
            cluster: cluster.to_owned(),
            service: service.to_owned(),
            method: method.to_owned(),
            message: message.to_vec(),
            timeout,
        });
        Ok(callout)
    }

    fn grpc_response(&self, size: usize, max: usize) -> Vec<u8> {
        self.hostcall(Hostcall::GetGrpcResponse, 1);
        let body = self.grpc_body.borrow();
        let take = size.min(max.saturating_add(1)).min(body.len());
        body.get(..take).unwrap_or_default().to_vec()
    }

    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        self.hostcall(Hostcall::GetSharedData, 1);
        self.shared.borrow().get(key).cloned()
    }

    fn shared_set(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        self.hostcall(Hostcall::SetSharedData, 1);
        self.shared.borrow_mut().insert(key.into(), value.into());
        *self.versions.borrow_mut().entry(key.into()).or_default() += 1;
        Ok(())
    }

    fn shared_get_versioned(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.hostcall(Hostcall::GetSharedData, 1);
        (
            self.shared.borrow().get(key).cloned(),
            self.versions.borrow().get(key).copied(),
        )
    }

    fn shared_set_if(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let current = self.versions.borrow().get(key).copied();
        if cas.is_some() && cas != current {
            self.hostcall(Hostcall::SetSharedData, 1);
            return false;
        }
        self.shared_set(key, value).is_ok()
    }

    fn switch_to(&self, context_id: u32) -> bool {
        self.hostcall(Hostcall::SetEffectiveContext, 1);
        if self.gone.borrow().contains(&context_id) {
            return false;
        }
        self.current.set(context_id);
        true
    }

    fn record_audit(&self, fields: &[(&'static str, &str)]) {
        self.hostcall(Hostcall::SetProperty, fields.len() as u64);
        if self.record {
            let mut audits = self.audits.borrow_mut();
            let entry = audits.entry(self.current.get()).or_default();
            entry.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        } else {
            std::hint::black_box(fields);
        }
    }

    fn count(&self, name: &str, delta: u64) {
        self.hostcall(Hostcall::IncrementMetric, 1);
        if self.record {
            *self
                .counters
                .borrow_mut()
                .entry(name.to_owned())
                .or_default() += delta;
        } else {
            std::hint::black_box(name);
        }
    }

    fn observe(&self, name: &str, value: u64) {
        self.hostcall(Hostcall::RecordMetric, 1);
        if self.record {
            self.observed
                .borrow_mut()
                .entry(name.to_owned())
                .or_default()
                .push(value);
        } else {
            std::hint::black_box(name);
        }
    }
}
