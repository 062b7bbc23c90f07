//! The request flow over a [`Host`]: decide, find or fetch the Looker token, rewrite,
//! forward — or answer locally. Called by the thin proxy-wasm glue in `filter`.
//!
//! `request`: a request's headers, body and trailers; `callout`: the answers to the
//! worker's callouts, and its tick; `response`: Looker's answer; `audit`: what is
//! recorded of each decision. The worker's state is here: one record per stream.

use std::collections::HashMap;
use std::time::Duration;

use log::warn;

use crate::callout::{Callout, Callouts};
use crate::config::Gateway;
use crate::decision::{Admitted, EmbedCall};
use crate::host::{Host, HostError};
use crate::keys::KeyState;
use crate::policy::embed::Endpoint;
use crate::policy::LookerIdentity;
use crate::reply::Refusal;
use crate::tokens::{Flight, Tokens};

mod audit;
mod callout;
mod embed;
#[cfg(test)]
mod embed_tests;
mod global;
#[cfg(test)]
mod global_tests;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use callout::{max_body, on_callout, on_http_call_answer, on_tick, route};
pub use global::on_grpc_call_answer;
pub use request::{on_body, on_request, on_trailers};
pub use response::on_response;

/// What to tell the proxy after a request callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    Pause,
}

/// Extra time a waiter is given past the broker timeout before the tick answers it.
const WAIT_GRACE: Duration = Duration::from_millis(1000);

/// How long a request may take to deliver the body a rule inspects.
const BODY_WAIT: Duration = Duration::from_secs(15);

/// Where a request stream is in the flow.
#[derive(Debug, Default)]
pub enum Stage {
    #[default]
    Headers,
    /// Headers held back while the body a rule inspects is buffered.
    AwaitingBody {
        admitted: Box<Admitted>,
        request_id: String,
        method: String,
        since_ms: u64,
    },
    /// Headers held back while the issuer's keys are refetched (unknown `kid`); the
    /// body, if any, keeps buffering meanwhile.
    AwaitingKeys {
        body_size: usize,
        body_complete: bool,
    },
    /// Allowed by the policy; paused until the rate limit service answers for the
    /// rule's global limit. Body data must not move the stream.
    AwaitingRateLimit(Box<global::PendingLimit>),
    /// Allowed; paused until the broker answers. Body data must not move the stream.
    AwaitingToken,
    /// An embed endpoint's request, allowed, buffering the body it reads.
    AwaitingEmbedBody {
        call: Box<EmbedCall>,
        request_id: String,
        since_ms: u64,
    },
    /// An embed endpoint's request, paused until the broker answers; then the filter
    /// replies itself. Body data must not move the stream.
    AwaitingEmbed {
        endpoint: Endpoint,
        rule: String,
        request_id: String,
        started_ms: u64,
        deadline_ms: u64,
    },
    /// Answered locally (refused, or an embed endpoint's answer). Nothing more goes
    /// upstream.
    Refused,
    /// Forwarded with a Looker token.
    Forwarded,
}

/// One request stream of this worker, kept by context id so that a callout answered
/// on one context can move another along. Dropped whole when the stream ends.
#[derive(Debug, Default)]
pub struct Stream {
    pub stage: Stage,
    /// The identity and Looker token it was forwarded with (for a Looker 401).
    pub forwarded: Option<(LookerIdentity, String)>,
    /// Broker callouts sent from its context: Envoy cancels them when it ends.
    pub callouts: Vec<u32>,
}

/// Per-worker state (one VM per worker): its streams, the callouts awaiting an answer,
/// Looker tokens and the issuers' keys.
#[derive(Debug, Default)]
pub struct Worker {
    pub streams: HashMap<u32, Stream>,
    /// Every callout in flight, by token, with what it is for.
    pub callouts: Callouts,
    pub tokens: Tokens,
    pub keys: KeyState,
}

impl Worker {
    /// Where stream `context_id` is, if the flow has seen it.
    pub fn stage(&self, context_id: u32) -> Option<&Stage> {
        self.streams.get(&context_id).map(|s| &s.stage)
    }

    fn stream(&mut self, context_id: u32) -> &mut Stream {
        self.streams.entry(context_id).or_default()
    }

    /// Records a broker flight whose callout `callout` was sent from context `owner`.
    pub fn start_flight(&mut self, flight: Flight, callout: u32, owner: u32) {
        self.callouts
            .insert(callout, Callout::Token(flight.identity.key()));
        self.stream(owner).callouts.push(callout);
        self.tokens.start(flight);
    }

    /// Gives an orphaned flight the callout re-sent from the root context.
    pub fn adopt_flight(&mut self, identity: &LookerIdentity, callout: u32, now_ms: u64) {
        self.callouts
            .insert(callout, Callout::Token(identity.key()));
        self.tokens.adopt(identity, callout, now_ms);
    }

    /// Gives identity `key`'s flight the callout of its retry, sent from context `owner`
    /// (the root context owns no stream: nothing to record there).
    pub fn retry_flight(&mut self, key: &str, callout: u32, owner: u32) {
        self.callouts
            .insert(callout, Callout::Token(key.to_owned()));
        if let Some(stream) = self.streams.get_mut(&owner) {
            stream.callouts.push(callout);
        }
        self.tokens.retry(key, callout);
    }

    /// Removes and returns the flight that broker callout `callout` answers.
    #[cfg(test)]
    pub fn finish_flight(&mut self, callout: u32) -> Option<Flight> {
        match self.callouts.remove(&callout) {
            Some(Callout::Token(key)) => self.tokens.finish(&key, callout),
            Some(other) => {
                self.callouts.insert(callout, other);
                None
            }
            None => None,
        }
    }

    /// A request context ends: its record goes, it stops waiting, and a broker call it
    /// sent is lost (Envoy cancels a context's callouts with it), so its flight must be
    /// re-sent.
    pub fn leave(&mut self, context_id: u32) {
        if let Some(stream) = self.streams.remove(&context_id) {
            for callout in stream.callouts {
                // Any other kind (a global-limit call among them) has no one left to answer.
                if let Some(Callout::Token(key)) = self.callouts.remove(&callout) {
                    self.tokens.orphan(&key);
                }
            }
        }
        self.tokens.leave(context_id);
        self.keys.leave(context_id);
    }
}

/// What every step of the flow works with.
struct Flow<'a, H: Host> {
    gateway: &'a Gateway,
    worker: &'a mut Worker,
    host: &'a H,
}

impl<'a, H: Host> Flow<'a, H> {
    fn new(gateway: &'a Gateway, worker: &'a mut Worker, host: &'a H) -> Self {
        Flow {
            gateway,
            worker,
            host,
        }
    }

    /// Refuses stream `context_id`, the host's current context: it stops waiting for
    /// anything, nothing more of it goes upstream, and the client gets the reply.
    fn refuse(&mut self, context_id: u32, refusal: &Refusal, request_id: &str) {
        self.worker.stream(context_id).stage = Stage::Refused;
        self.worker.tokens.leave(context_id);
        self.worker.keys.leave(context_id);
        if let Err(e) = self.host.send_reply(&refusal.to_reply(request_id)) {
            warn!(
                "lookergate[{context_id}] request_id={request_id} local reply failed: {}",
                e.0
            );
        }
    }

    /// [`Flow::refuse`] for a stream waiting on another context, if it is still there.
    fn refuse_waiter(&mut self, context_id: u32, refusal: &Refusal, request_id: &str) {
        if self.host.switch_to(context_id) {
            self.refuse(context_id, refusal, request_id);
        } else if let Some(stream) = self.worker.streams.get_mut(&context_id) {
            stream.stage = Stage::Refused;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sends a broker request (`broker::token_request` / `invalidate_request`) to the broker
/// cluster with its timeout; returns the callout token.
fn call_broker<H: Host>(
    gateway: &Gateway,
    host: &H,
    request: (Vec<(&'static str, String)>, String),
) -> Result<u32, HostError> {
    call_broker_within(gateway, host, request, gateway.broker.timeout)
}

/// [`call_broker`] with the time left of a call's budget as its timeout.
fn call_broker_within<H: Host>(
    gateway: &Gateway,
    host: &H,
    (headers, body): (Vec<(&'static str, String)>, String),
    timeout: Duration,
) -> Result<u32, HostError> {
    host.dispatch(&gateway.broker.cluster, &headers, body.as_bytes(), timeout)
}
