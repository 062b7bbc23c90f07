//! A request's headers, body and trailers: decide, then forward with a Looker token
//! (cached, shared, or fetched from the broker) or refuse.

use log::warn;

use super::audit::report_decision;
use super::global::{Admission, GlobalCheck};
use super::{millis, Flow, Next, Stage, Worker, BODY_WAIT, WAIT_GRACE};
use crate::broker;
use crate::config::Gateway;
use crate::decision::{self, Audit, Decision, HeadDecision, HeaderOp, RequestHead};
use crate::host::Host;
use crate::keys::UnknownKid;
use crate::policy::embed::Endpoint;
use crate::policy::LookerIdentity;
use crate::ratelimit;
use crate::reply::Refusal;
use crate::tokens::{shared_key, CachedToken, Flight, Tokens, Waiter};

/// Handles a request's headers on context `context_id`.
pub fn on_request<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    context_id: u32,
    end_of_stream: bool,
) -> Next {
    let body = end_of_stream.then_some(0);
    Flow::new(gateway, worker, host).decide_request(context_id, body, false)
}

/// Handles request body data: buffers (bounded) until the end, then decides.
pub fn on_body<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    context_id: u32,
    body_size: usize,
    end_of_stream: bool,
) -> Next {
    let mut flow = Flow::new(gateway, worker, host);
    let stage = &mut flow.worker.stream(context_id).stage;
    match stage {
        Stage::AwaitingBody { .. } | Stage::AwaitingKeys { .. } => {}
        Stage::AwaitingEmbedBody { .. } => {
            return flow.embed_body(context_id, body_size, end_of_stream)
        }
        Stage::Forwarded => return Next::Continue,
        // Still waiting for the broker or the rate limit service, or answered locally:
        // body data must not resume the stream (it would go upstream without a Looker
        // token or past its limit; an embed request never goes upstream).
        Stage::AwaitingToken
        | Stage::AwaitingRateLimit { .. }
        | Stage::AwaitingEmbed { .. }
        | Stage::Refused
        | Stage::Headers => return Next::Pause,
    }
    if body_size > gateway.max_body_bytes {
        let request_id = match stage {
            Stage::AwaitingBody { request_id, .. } => std::mem::take(request_id),
            _ => String::new(),
        };
        let limit = gateway.max_body_bytes;
        flow.refuse(context_id, &Refusal::PayloadTooLarge { limit }, &request_id);
        return Next::Pause;
    }
    if let Stage::AwaitingKeys {
        body_size: size,
        body_complete,
    } = stage
    {
        *size = body_size;
        *body_complete = end_of_stream;
        return Next::Pause; // the decision waits for the keys; keep buffering
    }
    if !end_of_stream {
        return Next::Pause; // keep buffering
    }
    flow.judge_complete_body(context_id)
}

/// Request trailers: the end of the request. They never resume a stream the filter has
/// not decided (the SDK's default would `Continue` it, sending the client's request
/// upstream unchecked); where a body is awaited they end it. The client's trailers never
/// reach Looker.
pub fn on_trailers<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    context_id: u32,
) -> Next {
    let mut flow = Flow::new(gateway, worker, host);
    if let Err(e) = host.clear_request_trailers() {
        warn!(
            "lookergate[{context_id}] cannot remove the request trailers: {}",
            e.0
        );
        if matches!(flow.worker.stage(context_id), Some(Stage::Refused)) {
            flow.worker.keys.leave(context_id);
        } else {
            let reason = "request trailers are not accepted".into();
            flow.refuse(context_id, &Refusal::BadRequest { reason }, "");
        }
        return Next::Pause;
    }
    match &mut flow.worker.stream(context_id).stage {
        Stage::Forwarded => Next::Continue,
        Stage::AwaitingKeys { body_complete, .. } => {
            *body_complete = true;
            Next::Pause
        }
        Stage::AwaitingBody { .. } => flow.judge_complete_body(context_id),
        Stage::AwaitingEmbedBody { .. } => flow.complete_embed_body(context_id),
        Stage::AwaitingToken
        | Stage::AwaitingRateLimit { .. }
        | Stage::AwaitingEmbed { .. }
        | Stage::Refused
        | Stage::Headers => Next::Pause,
    }
}

impl<H: Host> Flow<'_, H> {
    /// Decides a request from its headers. `body`: the size of the complete body when it
    /// has all arrived (`Some(0)`: none), `None` while it is still coming. `retried`: the
    /// issuer's keys were just refetched, so an unknown `kid` is final.
    pub(super) fn decide_request(
        &mut self,
        context_id: u32,
        body: Option<usize>,
        retried: bool,
    ) -> Next {
        let (gateway, host) = (self.gateway, self.host);
        let now_ms = host.now_ms();
        let block = host.request_headers();
        let headers = block.pairs();
        let request = RequestHead::new(&headers);
        let request_id = decision::header(&headers, "x-request-id").unwrap_or_default();
        let keys = &mut self.worker.keys;
        let head = decision::decide_head(gateway, &mut keys.ring, request, now_ms / 1000);
        if let (false, HeadDecision::Decided(Decision::Refuse { refusal, audit })) =
            (retried, &head)
        {
            let issuer = audit.issuer.as_deref().unwrap_or("");
            match refusal {
                // Keys another worker fetched reach this one on its tick; don't 503 meanwhile.
                Refusal::KeysUnavailable if keys.pick_up_shared(gateway, host, issuer, now_ms) => {
                    return self.decide_request(context_id, body, true);
                }
                Refusal::InvalidToken {
                    code: "unknown_kid",
                    ..
                } => {
                    let callouts = &mut self.worker.callouts;
                    match keys
                        .wait_for_unknown_kid(gateway, host, callouts, issuer, context_id, now_ms)
                    {
                        UnknownKid::Retry => return self.decide_request(context_id, body, true),
                        UnknownKid::Wait => {
                            self.worker.stream(context_id).stage = Stage::AwaitingKeys {
                                body_size: body.unwrap_or(0),
                                body_complete: body.is_some(),
                            };
                            return Next::Pause;
                        }
                        UnknownKid::Refuse => {}
                    }
                }
                _ => {}
            }
        }
        let decision = match head {
            HeadDecision::Decided(decision) => decision,
            HeadDecision::Embed(call) => {
                return self.start_embed(context_id, request_id, request.method, call, body, now_ms)
            }
            HeadDecision::NeedBody(admitted) => match body {
                None => {
                    self.worker.stream(context_id).stage = Stage::AwaitingBody {
                        admitted,
                        request_id: request_id.to_owned(),
                        method: request.method.to_owned(),
                        since_ms: now_ms,
                    };
                    return Next::Pause;
                }
                Some(size) => {
                    let bytes = if size > gateway.max_body_bytes {
                        Err(Refusal::PayloadTooLarge {
                            limit: gateway.max_body_bytes,
                        })
                    } else if size == 0 {
                        Ok(Vec::new())
                    } else {
                        complete_body(gateway, host)
                    };
                    match bytes {
                        Ok(bytes) => decision::decide_body(gateway, *admitted, &bytes),
                        Err(refusal) => {
                            self.refuse(context_id, &refusal, request_id);
                            return Next::Pause;
                        }
                    }
                }
            },
        };
        self.proceed(context_id, request_id, request.method, decision, now_ms)
    }

    /// The awaited body is complete (its last data, or trailers): read it and decide.
    fn judge_complete_body(&mut self, context_id: u32) -> Next {
        let stage = std::mem::replace(&mut self.worker.stream(context_id).stage, Stage::Refused);
        let Stage::AwaitingBody {
            admitted,
            request_id,
            method,
            ..
        } = stage
        else {
            return Next::Pause;
        };
        let decision = match complete_body(self.gateway, self.host) {
            Ok(body) => decision::decide_body(self.gateway, *admitted, &body),
            Err(refusal) => {
                self.refuse(context_id, &refusal, &request_id);
                return Next::Pause;
            }
        };
        let now_ms = self.host.now_ms();
        self.proceed(context_id, &request_id, &method, decision, now_ms)
    }

    /// Applies a decision: refuse, forward with a cached token, or fetch one.
    fn proceed(
        &mut self,
        context_id: u32,
        request_id: &str,
        method: &str,
        decision: Decision,
        now_ms: u64,
    ) -> Next {
        let (gateway, host) = (self.gateway, self.host);
        let (identity, subject, header_ops, audit) = match decision {
            Decision::Refuse { refusal, audit } => {
                report_decision(host, context_id, request_id, method, &audit);
                let operation = audit.operation.as_deref().unwrap_or_default();
                if let Some(endpoint) = Endpoint::ALL
                    .into_iter()
                    .find(|e| e.operation() == operation)
                {
                    super::embed::count_outcome(host, endpoint, refusal.code());
                }
                self.refuse(context_id, &refusal, request_id);
                return Next::Pause;
            }
            Decision::Forward {
                identity,
                issuer,
                subject,
                header_ops,
                mut audit,
            } => {
                if let Some(global) = GlobalCheck::of(gateway, &issuer, &subject, &audit) {
                    let admitted = Admission {
                        identity,
                        subject,
                        issuer,
                        header_ops,
                        audit,
                        request_id: request_id.to_owned(),
                        method: method.to_owned(),
                    };
                    return self.check_global_limit(context_id, admitted, global, now_ms);
                }
                if let Err(refusal) =
                    check_rate_limit(gateway, host, &issuer, &subject, &audit, now_ms)
                {
                    audit.verdict = "deny";
                    audit.reason = Some(refusal.code().to_owned());
                    report_decision(host, context_id, request_id, method, &audit);
                    self.refuse(context_id, &refusal, request_id);
                    return Next::Pause;
                }
                report_decision(host, context_id, request_id, method, &audit);
                (identity, subject, header_ops, audit)
            }
        };
        self.forward(
            context_id, request_id, identity, subject, header_ops, audit, now_ms,
        )
    }

    /// Forwards an admitted request (its limits passed, its decision reported) with a
    /// cached Looker token, or asks the broker for one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &mut self,
        context_id: u32,
        request_id: &str,
        identity: LookerIdentity,
        subject: String,
        header_ops: Vec<HeaderOp>,
        audit: Audit,
        now_ms: u64,
    ) -> Next {
        let (gateway, host) = (self.gateway, self.host);
        if let Some(token) = find_token(&mut self.worker.tokens, host, &identity, now_ms) {
            if let Err(e) = host.apply(&decision::with_looker_token(header_ops, &token)) {
                warn!(
                    "lookergate[{context_id}] request_id={request_id} rewrite failed: {}",
                    e.0
                );
                let reason = "gateway rewrite failed".into();
                self.refuse(
                    context_id,
                    &Refusal::BrokerUnavailable { reason },
                    request_id,
                );
                return Next::Pause;
            }
            let stream = self.worker.stream(context_id);
            stream.stage = Stage::Forwarded;
            stream.forwarded = Some((identity, token));
            return Next::Continue;
        }
        host.count("lookergate.looker_token.cache_miss", 1);
        let waiter = Waiter {
            context_id,
            header_ops,
            request_id: request_id.to_owned(),
            rule: audit.rule.unwrap_or_default(),
            deadline_ms: now_ms + millis(gateway.broker.timeout + WAIT_GRACE),
        };
        self.worker.stream(context_id).stage = Stage::AwaitingToken;
        let Err(waiter) = self.worker.tokens.join(&identity, waiter) else {
            return Next::Pause; // a call for this identity is in flight here
        };
        let request = broker::token_request(&gateway.broker, &identity, &subject, request_id);
        match super::call_broker(gateway, host, request) {
            Ok(callout) => {
                host.count("lookergate.broker.calls", 1);
                let flight = Flight {
                    identity,
                    subject,
                    request_id: request_id.to_owned(),
                    callout: Some(callout),
                    waiters: vec![waiter],
                    started_ms: now_ms,
                    retried: false,
                };
                self.worker.start_flight(flight, callout, context_id);
            }
            Err(e) => {
                warn!(
                    "lookergate[{context_id}] request_id={request_id} broker dispatch failed: {}",
                    e.0
                );
                let reason = "cannot reach the token broker".into();
                self.refuse(
                    context_id,
                    &Refusal::BrokerUnavailable { reason },
                    request_id,
                );
            }
        }
        Next::Pause
    }

    /// Answers the requests whose body did not arrive in time: they must not be held
    /// forever. (It also catches an Envoy that never delivers body data after paused
    /// headers: the Wasm filter needs `allow_on_headers_stop_iteration: true` for query
    /// guardrails.)
    pub(super) fn expire_stalled_bodies(&mut self, now_ms: u64) {
        let stalled: Vec<(u32, String)> = self
            .worker
            .streams
            .iter()
            .filter_map(|(ctx, stream)| match &stream.stage {
                Stage::AwaitingBody {
                    since_ms,
                    request_id,
                    ..
                } if now_ms >= since_ms + millis(BODY_WAIT) => Some((*ctx, request_id.clone())),
                _ => None,
            })
            .collect();
        for (context_id, request_id) in stalled {
            warn!("lookergate[{context_id}] request_id={request_id} body not received within {BODY_WAIT:?}; check allow_on_headers_stop_iteration");
            self.refuse_waiter(context_id, &Refusal::BodyTimeout, &request_id);
        }
    }
}

/// The whole buffered request body, or 413 when it exceeds `max_body_bytes`. Read with
/// the limit as the length (the host returns what there is): the sizes proxy-wasm
/// reports per body callback are not the whole buffer on every host.
fn complete_body<H: Host>(gateway: &Gateway, host: &H) -> Result<Vec<u8>, Refusal> {
    let body = host.request_body(gateway.max_body_bytes.saturating_add(1));
    if body.len() > gateway.max_body_bytes {
        return Err(Refusal::PayloadTooLarge {
            limit: gateway.max_body_bytes,
        });
    }
    Ok(body)
}

/// Draws from the deciding rule's buckets for this principal (and its `db_query`
/// budget for query operations).
pub(super) fn check_rate_limit<H: Host>(
    gateway: &Gateway,
    host: &H,
    issuer: &str,
    subject: &str,
    audit: &Audit,
    now_ms: u64,
) -> Result<(), Refusal> {
    let Some(rule) = audit.rule.as_deref().and_then(|r| gateway.policy.rule(r)) else {
        return Ok(());
    };
    let Some(limit) = &rule.rate_limit else {
        return Ok(());
    };
    let limited = |retry_after_ms: u64, budget: &'static str| Refusal::RateLimited {
        rule: rule.name.clone(),
        retry_after_secs: retry_after_ms.div_ceil(1000).max(1),
        budget,
    };
    let principal = ratelimit::principal_key(issuer, subject);
    let key = |bucket: &str| format!("lookergate.rl.v2.{}.{bucket}.{principal}", rule.name);
    let is_query = audit
        .operation
        .as_deref()
        .and_then(|id| gateway.operations.by_id(id))
        .is_some_and(|op| op.activity_type == "db_query");
    if let (true, Some(per_minute)) = (is_query, limit.db_queries_per_minute) {
        ratelimit::take_shared(
            host,
            &key("db"),
            f64::from(per_minute) / 60.0,
            per_minute,
            now_ms,
        )
        .map_err(|ms| limited(ms, "db_query budget"))?;
    }
    ratelimit::take_shared(host, &key("req"), limit.per_second, limit.burst, now_ms)
        .map_err(|ms| limited(ms, "requests"))
}

/// The per-worker cache, then the shared data every worker sees.
fn find_token<H: Host>(
    tokens: &mut Tokens,
    host: &H,
    identity: &LookerIdentity,
    now_ms: u64,
) -> Option<String> {
    if let Some(token) = tokens.cached(identity, now_ms) {
        host.count("lookergate.looker_token.cache_hit", 1);
        return Some(token.to_owned());
    }
    let shared = host
        .shared_get(&shared_key(identity))
        .and_then(|bytes| CachedToken::decode(&bytes))?;
    if !shared.usable(now_ms) {
        return None;
    }
    host.count("lookergate.looker_token.shared_hit", 1);
    let token = shared.token.clone();
    tokens.store(identity, shared, now_ms);
    Some(token)
}
