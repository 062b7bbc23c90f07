//! Answers to the worker's callouts, routed by their token to their kind before
//! anything of them is read, and the worker's tick.

use std::time::Duration;

use log::{debug, warn};

use super::{Flow, Next, Stage, Worker};
use crate::broker::{self, MAX_RESPONSE_BYTES};
use crate::callout::Callout;
use crate::config::Gateway;
use crate::decision;
use crate::host::Host;
use crate::keys::{FetchOutcome, MAX_DISCOVERY_BYTES, MAX_JWKS_BYTES};
use crate::reply::Refusal;
use crate::tokens::{shared_key, CachedToken};

/// A token call's retry is sent only with at least this much of `broker.timeout` left.
const MIN_RETRY_BUDGET: Duration = Duration::from_millis(100);

/// The largest answer body a kind accepts; a larger one is a failed call.
pub fn max_body(kind: &Callout) -> usize {
    match kind {
        Callout::Token(_) => MAX_RESPONSE_BYTES,
        Callout::Discovery(_) => MAX_DISCOVERY_BYTES,
        Callout::Keys(_) => MAX_JWKS_BYTES,
        Callout::Invalidate => 0,
        Callout::Embed(_) => MAX_RESPONSE_BYTES,
        Callout::RateLimit(_) => crate::rls::MAX_RESPONSE_BYTES,
    }
}

/// The kind of the callout answered by `callout`; `None`: not one of ours (any more).
pub fn route(worker: &Worker, callout: u32) -> Option<&Callout> {
    worker.callouts.get(&callout)
}

/// A callout answer as proxy-wasm delivers it: routed by its token to its kind, then
/// read with that kind's bound (`num_headers == 0`: no answer — reset or timeout).
pub fn on_http_call_answer<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    callout: u32,
    num_headers: usize,
    body_size: usize,
    current_context: u32,
) {
    let Some(kind) = worker.callouts.remove(&callout) else {
        return;
    };
    let (status, body) = if num_headers == 0 || kind == Callout::Invalidate {
        (None, Vec::new())
    } else {
        host.callout_response(body_size, max_body(&kind))
    };
    Flow::new(gateway, worker, host).answer(kind, callout, status, &body, current_context);
}

/// Any callout answer whose body was read: routed by its token (see [`route`]).
pub fn on_callout<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    callout: u32,
    status: Option<u32>,
    body: &[u8],
    current_context: u32,
) {
    if let Some(kind) = worker.callouts.remove(&callout) {
        Flow::new(gateway, worker, host).answer(kind, callout, status, body, current_context);
    }
}

/// Periodic work on the root context: refresh keys, re-send broker calls whose owner
/// went away, and answer requests that waited past their deadline.
pub fn on_tick<H: Host>(gateway: &Gateway, worker: &mut Worker, host: &H, root_context: u32) {
    let now_ms = host.now_ms();
    let woken = worker
        .keys
        .tick(gateway, host, &mut worker.callouts, root_context, now_ms);
    let mut flow = Flow::new(gateway, worker, host);
    for waiter in woken.into_iter().chain(flow.worker.keys.overdue(now_ms)) {
        flow.redecide_after_keys(waiter.context_id);
    }
    flow.expire_stalled_bodies(now_ms);
    flow.expire_embed(now_ms);
    flow.expire_rate_limits(now_ms);
    for flight in flow.worker.tokens.orphans() {
        host.switch_to(root_context);
        let request = broker::token_request(
            &gateway.broker,
            &flight.identity,
            &flight.subject,
            &flight.request_id,
        );
        match super::call_broker(gateway, host, request) {
            Ok(callout) => {
                host.count("lookergate.broker.calls", 1);
                flow.worker
                    .adopt_flight(&flight.identity, callout, host.now_ms());
            }
            Err(e) => {
                warn!("lookergate broker re-dispatch failed: {}", e.0);
                for waiter in flow.worker.tokens.abandon(&flight.identity) {
                    let reason = "cannot reach the token broker".into();
                    let refusal = Refusal::BrokerUnavailable { reason };
                    flow.refuse_waiter(waiter.context_id, &refusal, &waiter.request_id);
                }
            }
        }
    }
    for waiter in flow.worker.tokens.overdue(host.now_ms()) {
        let reason = "timed out waiting for the token broker".into();
        let refusal = Refusal::BrokerUnavailable { reason };
        flow.refuse_waiter(waiter.context_id, &refusal, &waiter.request_id);
    }
    host.switch_to(root_context);
}

impl<H: Host> Flow<'_, H> {
    /// Hands an answer to its kind's handler; each trusts the routing.
    fn answer(
        &mut self,
        kind: Callout,
        callout: u32,
        status: Option<u32>,
        body: &[u8],
        current_context: u32,
    ) {
        let (gateway, host) = (self.gateway, self.host);
        let now_ms = host.now_ms();
        let keys = &mut self.worker.keys;
        let outcome = match kind {
            Callout::Token(key) => {
                return self.on_broker_answer(&key, callout, status, body, current_context)
            }
            // Answered through `on_grpc_call_answer`; never an HTTP answer.
            Callout::Invalidate | Callout::RateLimit(_) => return,
            Callout::Embed(owner) => {
                return self.on_embed_answer(owner, status, body, current_context)
            }
            Callout::Discovery(issuer) => {
                let callouts = &mut self.worker.callouts;
                keys.on_discovery(
                    gateway, host, callouts, &issuer, callout, status, body, now_ms,
                )
            }
            Callout::Keys(issuer) => {
                keys.on_jwks(gateway, host, &issuer, callout, status, body, now_ms)
            }
        };
        if let FetchOutcome::Done { waiters } = outcome {
            for waiter in waiters {
                self.redecide_after_keys(waiter.context_id);
            }
            host.switch_to(current_context);
        }
    }

    /// Decides again a request that waited for keys (on its own context).
    fn redecide_after_keys(&mut self, context_id: u32) {
        let body = match self.worker.stage(context_id) {
            Some(Stage::AwaitingKeys {
                body_size,
                body_complete: true,
            }) => Some(*body_size),
            Some(Stage::AwaitingKeys { .. }) => None,
            _ => return, // no longer waiting
        };
        if !self.host.switch_to(context_id) {
            return;
        }
        if self.decide_request(context_id, body, true) == Next::Continue {
            if let Err(e) = self.host.resume() {
                warn!("lookergate[{context_id}] resume failed: {}", e.0);
            }
        }
    }

    /// The broker answered the token call `callout` for identity `key` (status `None`:
    /// no answer / timeout). Resumes or refuses every request waiting on it, then
    /// restores `current_context`.
    fn on_broker_answer(
        &mut self,
        key: &str,
        callout: u32,
        status: Option<u32>,
        body: &[u8],
        current_context: u32,
    ) {
        if self.retry_token_call(key, callout, status, body, current_context) {
            return;
        }
        let (gateway, host) = (self.gateway, self.host);
        let Some(flight) = self.worker.tokens.finish(key, callout) else {
            return;
        };
        let now_ms = host.now_ms();
        host.observe(
            "lookergate.broker.latency_ms",
            now_ms.saturating_sub(flight.started_ms),
        );
        let answer = broker::parse_token_response(status, body, "");
        if let Err(refusal) = &answer {
            host.count(&format!("lookergate.broker.failure.{}", refusal.code()), 1);
        }
        match answer {
            Ok(answer) => {
                debug!(
                    "lookergate broker issued token {} for {} ({} waiting)",
                    crate::fingerprint(answer.access_token.as_bytes()),
                    flight.identity.key(),
                    flight.waiters.len()
                );
                let cached = CachedToken::new(
                    answer.access_token.clone(),
                    now_ms,
                    Duration::from_secs(answer.expires_in_secs),
                    gateway.refresh_before,
                );
                if let Err(e) = host.shared_set(&shared_key(&flight.identity), &cached.encode()) {
                    warn!(
                        "lookergate cannot share the token of {}: {}",
                        flight.identity.key(),
                        e.0
                    );
                }
                self.worker.tokens.store(&flight.identity, cached, now_ms);
                for waiter in flight.waiters {
                    if !host.switch_to(waiter.context_id) {
                        continue; // the client went away
                    }
                    let ops = decision::with_looker_token(waiter.header_ops, &answer.access_token);
                    let stream = self.worker.stream(waiter.context_id);
                    stream.stage = Stage::Forwarded;
                    stream.forwarded = Some((flight.identity.clone(), answer.access_token.clone()));
                    if let Err(e) = host.apply(&ops).and_then(|()| host.resume()) {
                        warn!(
                            "lookergate[{}] request_id={} resume failed: {}",
                            waiter.context_id, waiter.request_id, e.0
                        );
                        let reason = "gateway rewrite failed".into();
                        let refusal = Refusal::BrokerUnavailable { reason };
                        self.refuse(waiter.context_id, &refusal, &waiter.request_id);
                    }
                }
            }
            Err(refusal) => {
                warn!(
                    "lookergate broker call for {} failed: {} ({} waiting)",
                    flight.identity.key(),
                    refusal.code(),
                    flight.waiters.len()
                );
                for waiter in flight.waiters {
                    let refusal = match &refusal {
                        Refusal::NoLookerUser { .. } => Refusal::NoLookerUser {
                            rule: waiter.rule.clone(),
                        },
                        other => other.clone(),
                    };
                    self.refuse_waiter(waiter.context_id, &refusal, &waiter.request_id);
                }
            }
        }
        host.switch_to(current_context);
    }

    /// Sends a failed token call (`broker::worth_retrying`) once more, from the context
    /// that owned it, with what is left of `broker.timeout`; `true` if it went out.
    /// Nothing is forwarded meanwhile: the waiters stay paused until an answer or their
    /// deadline.
    fn retry_token_call(
        &mut self,
        key: &str,
        callout: u32,
        status: Option<u32>,
        body: &[u8],
        current_context: u32,
    ) -> bool {
        let (gateway, host) = (self.gateway, self.host);
        let Some(flight) = self.worker.tokens.in_flight(key, callout) else {
            return false;
        };
        let spent = Duration::from_millis(host.now_ms().saturating_sub(flight.started_ms));
        let left = gateway.broker.timeout.saturating_sub(spent);
        if flight.retried || left < MIN_RETRY_BUDGET || !broker::worth_retrying(status, body) {
            return false;
        }
        let request = broker::token_request(
            &gateway.broker,
            &flight.identity,
            &flight.subject,
            &flight.request_id,
        );
        host.switch_to(current_context);
        match super::call_broker_within(gateway, host, request, left) {
            Ok(retry) => {
                debug!("lookergate broker call for {key} retried with {left:?} left");
                host.count("lookergate.broker.calls", 1);
                host.count("lookergate.broker.retries", 1);
                self.worker.retry_flight(key, retry, current_context);
                true
            }
            Err(e) => {
                warn!("lookergate broker retry for {key} not sent: {}", e.0);
                false
            }
        }
    }
}
