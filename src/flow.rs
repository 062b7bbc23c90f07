//! The request flow over a [`Host`]: decide, find or fetch the Looker token, rewrite,
//! forward — or answer locally. Called by the thin proxy-wasm glue in `filter`.

use std::time::Duration;

use log::{debug, warn};

use crate::broker::{self, MAX_RESPONSE_BYTES};
use crate::config::Gateway;
use crate::decision::{self, Admitted, Audit, Decision, RequestHead};
use crate::host::Host;
use crate::keys::{FetchOutcome, Step, UnknownKid, MAX_DISCOVERY_BYTES, MAX_JWKS_BYTES};
use crate::policy::LookerIdentity;
use crate::ratelimit;
use crate::reply::Refusal;
use crate::tokens::{shared_key, CachedToken, Flight, Waiter, Worker};

/// What to tell the proxy after `on_http_request_headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    Pause,
}

/// Extra time a waiter is given past the broker timeout before the tick answers it.
const WAIT_GRACE: Duration = Duration::from_millis(1000);

/// Where a request stream is in the flow. Kept per worker by context id, so that a
/// callout answered on one context can move another context along.
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
    /// Allowed; paused until the broker answers. Body data must not move the stream.
    AwaitingToken,
    /// Answered locally (refused). Nothing more goes upstream.
    Refused,
    /// Forwarded with a Looker token.
    Forwarded,
}

/// How long a request may take to deliver the body a rule inspects.
const BODY_WAIT: Duration = Duration::from_secs(15);

/// Handles a request's headers on context `context_id`.
pub fn on_request<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    context_id: u32,
    end_of_stream: bool,
) -> Next {
    let body = end_of_stream.then_some(0);
    decide_request(gateway, worker, host, context_id, body, false)
}

/// Decides a request from its headers. `body`: the size of the complete body when it
/// has all arrived (`Some(0)`: none), `None` while it is still coming. `retried`: the
/// issuer's keys were just refetched, so an unknown `kid` is final.
fn decide_request<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    context_id: u32,
    body: Option<usize>,
    retried: bool,
) -> Next {
    let now_ms = host.now_ms();
    let block = host.request_headers();
    let headers = block.pairs();
    let request = RequestHead::new(&headers);
    let request_id = decision::header(&headers, "x-request-id").unwrap_or_default();
    let decision = match decision::decide_head(gateway, request, now_ms / 1000) {
        // Keys another worker fetched reach this one on its tick; don't 503 meanwhile.
        Decision::Refuse {
            refusal: Refusal::KeysUnavailable,
            audit,
        } if !retried
            && worker.keys.pick_up_shared(
                gateway,
                host,
                audit.issuer.as_deref().unwrap_or(""),
                now_ms,
            ) =>
        {
            return decide_request(gateway, worker, host, context_id, body, true);
        }
        Decision::Refuse {
            refusal:
                Refusal::InvalidToken {
                    code: "unknown_kid",
                    ..
                },
            audit,
        } if !retried => {
            let issuer = audit.issuer.clone().unwrap_or_default();
            match worker
                .keys
                .wait_for_unknown_kid(gateway, host, &issuer, context_id, now_ms)
            {
                UnknownKid::Retry => {
                    return decide_request(gateway, worker, host, context_id, body, true)
                }
                UnknownKid::Wait => {
                    let (body_size, body_complete) = (body.unwrap_or(0), body.is_some());
                    worker.stages.insert(
                        context_id,
                        Stage::AwaitingKeys {
                            body_size,
                            body_complete,
                        },
                    );
                    return Next::Pause;
                }
                UnknownKid::Refuse => decision::decide_head(gateway, request, now_ms / 1000),
            }
        }
        Decision::NeedBody(admitted) => match body {
            None => {
                let stage = Stage::AwaitingBody {
                    admitted,
                    request_id: request_id.to_owned(),
                    method: request.method.to_owned(),
                    since_ms: now_ms,
                };
                worker.stages.insert(context_id, stage);
                return Next::Pause;
            }
            Some(size) => {
                if size > gateway.max_body_bytes {
                    worker.stages.insert(context_id, Stage::Refused);
                    refuse(
                        host,
                        &Refusal::PayloadTooLarge {
                            limit: gateway.max_body_bytes,
                        },
                        request_id,
                    );
                    return Next::Pause;
                }
                let bytes = if size == 0 {
                    Vec::new()
                } else {
                    match complete_body(gateway, host) {
                        Ok(bytes) => bytes,
                        Err(refusal) => {
                            worker.stages.insert(context_id, Stage::Refused);
                            refuse(host, &refusal, request_id);
                            return Next::Pause;
                        }
                    }
                };
                decision::decide_body(gateway, *admitted, &bytes)
            }
        },
        other => other,
    };
    proceed(
        gateway,
        worker,
        host,
        context_id,
        request_id,
        request.method,
        decision,
        now_ms,
    )
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
    let stage = worker.stages.entry(context_id).or_default();
    match stage {
        Stage::AwaitingBody { .. } | Stage::AwaitingKeys { .. } => {}
        Stage::Forwarded => return Next::Continue,
        // Still waiting for the broker, or refused: body data must not resume the
        // stream (it would go upstream without a Looker token).
        Stage::AwaitingToken | Stage::Refused | Stage::Headers => return Next::Pause,
    }
    if body_size > gateway.max_body_bytes {
        let request_id = match std::mem::replace(stage, Stage::Refused) {
            Stage::AwaitingBody { request_id, .. } => request_id,
            _ => String::new(),
        };
        worker.keys.leave(context_id);
        refuse(
            host,
            &Refusal::PayloadTooLarge {
                limit: gateway.max_body_bytes,
            },
            &request_id,
        );
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
    judge_complete_body(gateway, worker, host, context_id)
}

/// The awaited body is complete (its last data, or trailers): read it and decide.
fn judge_complete_body<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    context_id: u32,
) -> Next {
    let Some(Stage::AwaitingBody {
        admitted,
        request_id,
        method,
        ..
    }) = worker.stages.insert(context_id, Stage::Refused)
    else {
        return Next::Pause;
    };
    let decision = match complete_body(gateway, host) {
        Ok(body) => decision::decide_body(gateway, *admitted, &body),
        Err(refusal) => {
            refuse(host, &refusal, &request_id);
            return Next::Pause;
        }
    };
    proceed(
        gateway,
        worker,
        host,
        context_id,
        &request_id,
        &method,
        decision,
        host.now_ms(),
    )
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
    if let Err(e) = host.clear_request_trailers() {
        warn!(
            "lookergate[{context_id}] cannot remove the request trailers: {}",
            e.0
        );
        worker.keys.leave(context_id);
        let previous = worker.stages.insert(context_id, Stage::Refused);
        if !matches!(previous, Some(Stage::Refused)) {
            refuse(
                host,
                &Refusal::BadRequest {
                    reason: "request trailers are not accepted".into(),
                },
                "",
            );
        }
        return Next::Pause;
    }
    let stage = worker.stages.entry(context_id).or_default();
    match stage {
        Stage::Forwarded => Next::Continue,
        Stage::AwaitingKeys { body_complete, .. } => {
            *body_complete = true;
            Next::Pause
        }
        Stage::AwaitingBody { .. } => judge_complete_body(gateway, worker, host, context_id),
        Stage::AwaitingToken | Stage::Refused | Stage::Headers => Next::Pause,
    }
}

/// What a callout answer is, found by its token before anything of it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callout {
    /// A broker call for a Looker token.
    Token,
    /// An issuer's key fetch (discovery document or JWKS).
    Keys(Step),
    /// A token-invalidation call to the broker (its answer is not used).
    Invalidate,
}

impl Callout {
    /// The largest answer body this kind accepts; a larger one is a failed call.
    pub fn max_body(self) -> usize {
        match self {
            Callout::Token => MAX_RESPONSE_BYTES,
            Callout::Keys(Step::Discovery) => MAX_DISCOVERY_BYTES,
            Callout::Keys(Step::Jwks) => MAX_JWKS_BYTES,
            Callout::Invalidate => 0,
        }
    }
}

/// The kind of the callout answered by `callout`; `None`: not one of ours (any more).
pub fn route(worker: &Worker, callout: u32) -> Option<Callout> {
    if worker.is_flight(callout) {
        return Some(Callout::Token);
    }
    if let Some(step) = worker.keys.fetch_step(callout) {
        return Some(Callout::Keys(step));
    }
    worker
        .invalidations_pending(callout)
        .then_some(Callout::Invalidate)
}

/// A callout answer as proxy-wasm delivers it: routed by its token to its kind, then
/// read with that kind's bound (`num_headers == 0`: no answer — reset or timeout).
#[allow(clippy::too_many_arguments)]
pub fn on_http_call_answer<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    callout: u32,
    num_headers: usize,
    body_size: usize,
    current_context: u32,
) {
    let Some(kind) = route(worker, callout) else {
        return;
    };
    let (status, body) = if num_headers == 0 || kind == Callout::Invalidate {
        (None, Vec::new())
    } else {
        host.callout_response(body_size, kind.max_body())
    };
    on_callout(
        gateway,
        worker,
        host,
        callout,
        status,
        &body,
        current_context,
    );
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
    if let Some(kind) = route(worker, callout) {
        answer(
            gateway,
            worker,
            host,
            kind,
            callout,
            status,
            body,
            current_context,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn answer<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    kind: Callout,
    callout: u32,
    status: Option<u32>,
    body: &[u8],
    current_context: u32,
) {
    match kind {
        Callout::Token => on_broker_answer(
            gateway,
            worker,
            host,
            callout,
            status,
            body,
            current_context,
        ),
        Callout::Invalidate => {
            worker.invalidated(callout);
        }
        Callout::Keys(_) => {
            let now_ms = host.now_ms();
            match worker
                .keys
                .on_answer(gateway, host, callout, status, body, now_ms)
            {
                FetchOutcome::NotOurs | FetchOutcome::Continuing => {}
                FetchOutcome::Done { waiters } => {
                    for waiter in waiters {
                        redecide_after_keys(gateway, worker, host, waiter.context_id);
                    }
                    host.switch_to(current_context);
                }
            }
        }
    }
}

/// Decides again a request that waited for keys (on its own context).
fn redecide_after_keys<H: Host>(gateway: &Gateway, worker: &mut Worker, host: &H, context_id: u32) {
    let body = match worker.stages.get(&context_id) {
        Some(Stage::AwaitingKeys {
            body_size,
            body_complete: true,
        }) => Some(*body_size),
        Some(Stage::AwaitingKeys { .. }) => None,
        _ => return, // no longer waiting
    };
    if !host.switch_to(context_id) {
        return;
    }
    if decide_request(gateway, worker, host, context_id, body, true) == Next::Continue {
        if let Err(e) = host.resume() {
            warn!("lookergate[{context_id}] resume failed: {}", e.0);
        }
    }
}

/// Applies a decision: refuse, forward with a cached token, or fetch one.
#[allow(clippy::too_many_arguments)]
fn proceed<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    context_id: u32,
    request_id: &str,
    method: &str,
    decision: Decision,
    now_ms: u64,
) -> Next {
    let (next, stage) = forward_or_refuse(
        gateway, worker, host, context_id, request_id, method, decision, now_ms,
    );
    worker.stages.insert(context_id, stage);
    next
}

#[allow(clippy::too_many_arguments)]
fn forward_or_refuse<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    context_id: u32,
    request_id: &str,
    method: &str,
    decision: Decision,
    now_ms: u64,
) -> (Next, Stage) {
    let refused = (Next::Pause, Stage::Refused);
    match decision {
        Decision::NeedBody(_) => {
            // decide_body never asks for the body again; fail closed if it ever did.
            refuse(
                host,
                &Refusal::BadRequest {
                    reason: "the request body could not be inspected".into(),
                },
                request_id,
            );
            refused
        }
        Decision::Refuse { refusal, audit } => {
            report_decision(host, context_id, request_id, method, &audit);
            refuse(host, &refusal, request_id);
            refused
        }
        Decision::Forward {
            identity,
            issuer,
            subject,
            header_ops,
            mut audit,
        } => {
            if let Err(refusal) = check_rate_limit(gateway, host, &issuer, &subject, &audit, now_ms)
            {
                audit.verdict = "deny";
                audit.reason = Some(refusal.code().to_owned());
                report_decision(host, context_id, request_id, method, &audit);
                refuse(host, &refusal, request_id);
                return refused;
            }
            report_decision(host, context_id, request_id, method, &audit);
            let rule = audit.rule.unwrap_or_default();
            if let Some(token) = find_token(worker, host, &identity, now_ms) {
                return match host.apply(&decision::with_looker_token(header_ops, &token)) {
                    Ok(()) => {
                        worker.forwarded.insert(context_id, (identity, token));
                        (Next::Continue, Stage::Forwarded)
                    }
                    Err(e) => {
                        warn!(
                            "lookergate[{context_id}] request_id={request_id} rewrite failed: {}",
                            e.0
                        );
                        refuse(
                            host,
                            &Refusal::BrokerUnavailable {
                                reason: "gateway rewrite failed".into(),
                            },
                            request_id,
                        );
                        refused
                    }
                };
            }
            host.count("lookergate.looker_token.cache_miss", 1);
            let deadline_ms = now_ms + millis(gateway.broker.timeout + WAIT_GRACE);
            let waiter = Waiter {
                context_id,
                header_ops,
                request_id: request_id.to_owned(),
                rule,
                deadline_ms,
            };
            let Err(waiter) = worker.join(&identity, waiter) else {
                return (Next::Pause, Stage::AwaitingToken); // a call for this identity is in flight here
            };
            let (headers, body) =
                broker::token_request(&gateway.broker, &identity, &subject, request_id);
            match host.dispatch(
                &gateway.broker.cluster,
                &headers,
                body.as_bytes(),
                gateway.broker.timeout,
            ) {
                Ok(callout) => {
                    host.count("lookergate.broker.calls", 1);
                    let flight = Flight {
                        identity,
                        subject,
                        request_id: request_id.to_owned(),
                        callout: Some(callout),
                        waiters: vec![waiter],
                        started_ms: now_ms,
                    };
                    worker.start(flight, Some(context_id));
                    (Next::Pause, Stage::AwaitingToken)
                }
                Err(e) => {
                    warn!("lookergate[{context_id}] request_id={request_id} broker dispatch failed: {}", e.0);
                    refuse(
                        host,
                        &Refusal::BrokerUnavailable {
                            reason: "cannot reach the token broker".into(),
                        },
                        request_id,
                    );
                    refused
                }
            }
        }
    }
}

/// Draws from the deciding rule's buckets for this principal (and its `db_query`
/// budget for query operations).
fn check_rate_limit<H: Host>(
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
    worker: &mut Worker,
    host: &H,
    identity: &LookerIdentity,
    now_ms: u64,
) -> Option<String> {
    if let Some(token) = worker.cached(identity, now_ms) {
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
    worker.store(identity, shared, now_ms);
    Some(token)
}

/// The broker answered callout `callout` (status `None`: no answer / timeout).
/// Resumes or refuses every request waiting on it, then restores `current_context`.
pub fn on_broker_answer<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    callout: u32,
    status: Option<u32>,
    body: &[u8],
    current_context: u32,
) {
    let Some(flight) = worker.finish(callout) else {
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
            worker.store(&flight.identity, cached, now_ms);
            for waiter in flight.waiters {
                if !host.switch_to(waiter.context_id) {
                    continue; // the client went away
                }
                let ops = decision::with_looker_token(waiter.header_ops, &answer.access_token);
                worker.forwarded.insert(
                    waiter.context_id,
                    (flight.identity.clone(), answer.access_token.clone()),
                );
                worker.stages.insert(waiter.context_id, Stage::Forwarded);
                let resumed = host.apply(&ops).and_then(|()| host.resume());
                if let Err(e) = resumed {
                    worker.stages.insert(waiter.context_id, Stage::Refused);
                    warn!(
                        "lookergate[{}] request_id={} resume failed: {}",
                        waiter.context_id, waiter.request_id, e.0
                    );
                    refuse(
                        host,
                        &Refusal::BrokerUnavailable {
                            reason: "gateway rewrite failed".into(),
                        },
                        &waiter.request_id,
                    );
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
                worker.stages.insert(waiter.context_id, Stage::Refused);
                if host.switch_to(waiter.context_id) {
                    let refusal = match &refusal {
                        Refusal::NoLookerUser { .. } => Refusal::NoLookerUser {
                            rule: waiter.rule.clone(),
                        },
                        other => other.clone(),
                    };
                    refuse(host, &refusal, &waiter.request_id);
                }
            }
        }
    }
    host.switch_to(current_context);
}

/// Looker answered a forwarded request. A 401 means Looker no longer accepts the token
/// we injected (revoked or expired early): drop it from this worker's cache and from
/// shared data, and ask the broker to drop it too, so the next request gets a fresh one.
pub fn on_response<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    context_id: u32,
    status: Option<u32>,
) {
    let Some((identity, token)) = worker.forwarded.remove(&context_id) else {
        return;
    };
    if status != Some(401) {
        return;
    }
    warn!(
        "lookergate[{context_id}] Looker rejected token {} of {}; invalidating it",
        crate::fingerprint(token.as_bytes()),
        identity.key()
    );
    host.count("lookergate.looker_token.rejected_by_looker", 1);
    if worker.cached(&identity, host.now_ms()) == Some(token.as_str()) {
        worker.forget(&identity);
    }
    let key = shared_key(&identity);
    let (value, cas) = host.shared_get_versioned(&key);
    if value
        .as_deref()
        .and_then(CachedToken::decode)
        .is_some_and(|t| t.token == token)
    {
        // Only if it is still the token that failed: a newer one stays.
        let expired = CachedToken {
            token,
            refresh_at_ms: 0,
        };
        host.shared_set_if(&key, &expired.encode(), cas);
    }
    let (headers, body) = broker::invalidate_request(&gateway.broker, &identity);
    match host.dispatch(
        &gateway.broker.cluster,
        &headers,
        body.as_bytes(),
        gateway.broker.timeout,
    ) {
        Ok(callout) => worker.invalidating(callout),
        Err(_) => warn!(
            "lookergate[{context_id}] cannot ask the broker to invalidate the token of {}",
            identity.key()
        ),
    }
}

/// Periodic work on the root context: re-send broker calls whose owner went away,
/// and answer requests that waited past their deadline.
pub fn on_tick<H: Host>(gateway: &Gateway, worker: &mut Worker, host: &H, root_context: u32) {
    let now_ms = host.now_ms();
    let woken = worker.keys.tick(gateway, host, root_context, now_ms);
    for waiter in woken.into_iter().chain(worker.keys.overdue(now_ms)) {
        redecide_after_keys(gateway, worker, host, waiter.context_id);
    }
    // A body that never arrives must not hold a request forever. (It also catches an
    // Envoy that never delivers body data after paused headers: the Wasm filter needs
    // `allow_on_headers_stop_iteration: true` for query guardrails.)
    let stalled: Vec<u32> = worker
        .stages
        .iter()
        .filter(|(_, stage)| matches!(stage, Stage::AwaitingBody { since_ms, .. } if now_ms >= since_ms + millis(BODY_WAIT)))
        .map(|(ctx, _)| *ctx)
        .collect();
    for context_id in stalled {
        if let Some(Stage::AwaitingBody { request_id, .. }) =
            worker.stages.insert(context_id, Stage::Refused)
        {
            warn!("lookergate[{context_id}] request_id={request_id} body not received within {BODY_WAIT:?}; check allow_on_headers_stop_iteration");
            if host.switch_to(context_id) {
                refuse(host, &Refusal::BodyTimeout, &request_id);
            }
        }
    }
    for flight in worker.orphans() {
        host.switch_to(root_context);
        let (headers, body) = broker::token_request(
            &gateway.broker,
            &flight.identity,
            &flight.subject,
            &flight.request_id,
        );
        match host.dispatch(
            &gateway.broker.cluster,
            &headers,
            body.as_bytes(),
            gateway.broker.timeout,
        ) {
            Ok(callout) => {
                host.count("lookergate.broker.calls", 1);
                worker.adopt(&flight.identity, callout, host.now_ms());
            }
            Err(e) => {
                warn!("lookergate broker re-dispatch failed: {}", e.0);
                for waiter in worker.abandon(&flight.identity) {
                    worker.stages.insert(waiter.context_id, Stage::Refused);
                    if host.switch_to(waiter.context_id) {
                        refuse(
                            host,
                            &Refusal::BrokerUnavailable {
                                reason: "cannot reach the token broker".into(),
                            },
                            &waiter.request_id,
                        );
                    }
                }
            }
        }
    }
    for waiter in worker.overdue(host.now_ms()) {
        worker.stages.insert(waiter.context_id, Stage::Refused);
        if host.switch_to(waiter.context_id) {
            refuse(
                host,
                &Refusal::BrokerUnavailable {
                    reason: "timed out waiting for the token broker".into(),
                },
                &waiter.request_id,
            );
        }
    }
    host.switch_to(root_context);
}

fn refuse<H: Host>(host: &H, refusal: &Refusal, request_id: &str) {
    if let Err(e) = host.send_reply(&refusal.to_reply(request_id)) {
        warn!(
            "lookergate request_id={request_id} local reply failed: {}",
            e.0
        );
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Logs, counts and records for the access log what was decided. Never a token.
fn report_decision<H: Host>(
    host: &H,
    context_id: u32,
    request_id: &str,
    method: &str,
    audit: &Audit,
) {
    let shadows = if audit.shadows.is_empty() {
        std::borrow::Cow::Borrowed("-")
    } else {
        audit.shadows.join(",").into()
    };
    let fields = [
        ("lookergate_verdict", audit.verdict),
        (
            "lookergate_subject",
            audit.subject.as_deref().unwrap_or("-"),
        ),
        ("lookergate_issuer", audit.issuer.as_deref().unwrap_or("-")),
        ("lookergate_groups", audit.groups.as_deref().unwrap_or("-")),
        (
            "lookergate_operation",
            audit.operation.as_deref().unwrap_or("-"),
        ),
        ("lookergate_rule", audit.rule.as_deref().unwrap_or("-")),
        (
            "lookergate_identity",
            audit.identity.as_deref().unwrap_or("-"),
        ),
        ("lookergate_reason", audit.reason.as_deref().unwrap_or("-")),
        ("lookergate_shadow", shadows.as_ref()),
    ];
    // Unset fields print as "-" in the access log anyway: skip their hostcalls.
    let mut set = fields;
    let mut n = 0;
    for field in fields {
        if field.1 != "-" {
            if let Some(slot) = set.get_mut(n) {
                *slot = field;
                n += 1;
            }
        }
    }
    host.record_audit(set.get(..n).unwrap_or_default());
    match audit.verdict {
        "allow" => host.count("lookergate.decision.allow", 1),
        _ => host.count(
            &format!(
                "lookergate.decision.deny.{}",
                audit.reason.as_deref().unwrap_or("unknown")
            ),
            1,
        ),
    }
    for shadow in &audit.shadows {
        host.count(
            &format!("lookergate.shadow.{}", shadow.replace(':', ".would_")),
            1,
        );
    }
    let level = if audit.verdict == "allow" && audit.shadows.is_empty() {
        log::Level::Debug
    } else {
        log::Level::Info
    };
    if log::log_enabled!(level) {
        let line = fields
            .iter()
            .map(|(k, v)| format!("{}={v}", k.trim_start_matches("lookergate_")))
            .collect::<Vec<_>>()
            .join(" ");
        log::log!(
            level,
            "lookergate[{context_id}] request_id={request_id} method={method} {line}"
        );
    }
}

#[cfg(test)]
mod tests {
    //! The flow against a fake host that records effects: what each request context
    //! was told (rewrite + resume, or a local reply) and which callouts were made.
    use super::*;
    use crate::decision::HeaderOp;
    use crate::host::fake::FakeHost;
    use crate::host::HeaderBlock;
    use crate::testkeys::{sign_rs256, TestIssuer};
    use serde_json::json;

    struct Rig {
        gateway: Gateway,
        worker: Worker,
        host: FakeHost,
        idp: TestIssuer,
    }

    const ROOT: u32 = 1;

    impl Rig {
        fn new() -> Rig {
            let idp = TestIssuer::new();
            let config = json!({
                "issuers": [{"issuer": idp.iss, "audiences": ["looker-api"], "jwks": idp.jwks}],
                "policy": {"rules": [
                    {"name": "analysts", "paths": ["/api/4.0/**"], "when": [{"claim": "groups", "contains": "analysts"}], "allow": {"role": "analyst"}},
                    {"name": "people", "paths": ["/api/4.0/**"], "when": [{"claim": "groups", "contains": "people"}], "allow": {"user": {}}},
                    {"name": "guarded-queries", "operations": ["run_inline_query"], "when": [{"claim": "groups", "contains": "querying"}],
                     "query": {"models": ["thelook"], "max_limit": 100}, "allow": {"role": "analyst"}}
                ]},
                "max_body_bytes": 2048,
                "broker": {"cluster": "lookergate_broker", "credential": "gateway-secret-0123456789", "timeout": "2s"}
            });
            let gateway = Gateway::load(config.to_string().as_bytes()).unwrap();
            let host = FakeHost::recording();
            host.set_clock_to_now();
            *host.clusters.borrow_mut() = Some(vec!["lookergate_broker".to_owned()]);
            Rig {
                gateway,
                worker: Worker::default(),
                host,
                idp,
            }
        }

        fn request(&mut self, context_id: u32, groups: &[&str]) -> Next {
            self.start(context_id, groups, "GET", "/api/4.0/user", true)
        }

        fn start(
            &mut self,
            context_id: u32,
            groups: &[&str],
            method: &str,
            path: &str,
            eos: bool,
        ) -> Next {
            let jwt = sign_rs256(
                &self.idp,
                json!({"sub": "alice", "email": "a@x", "email_verified": true, "groups": groups, "aud": "looker-api"}),
            );
            let headers = vec![
                (":method".to_owned(), method.to_owned()),
                (":path".to_owned(), path.to_owned()),
                ("x-request-id".to_owned(), format!("req-{context_id}")),
                ("authorization".to_owned(), format!("Bearer {jwt}")),
            ];
            self.host
                .set_request_headers(context_id, HeaderBlock::from_pairs(&headers));
            self.host.current.set(context_id);
            on_request(&self.gateway, &mut self.worker, &self.host, context_id, eos)
        }

        fn body(&mut self, context_id: u32, body: &str, eos: bool) -> Next {
            self.host
                .body
                .borrow_mut()
                .extend_from_slice(body.as_bytes());
            self.host.current.set(context_id);
            let size = self.host.body.borrow().len();
            on_body(
                &self.gateway,
                &mut self.worker,
                &self.host,
                context_id,
                size,
                eos,
            )
        }

        fn answer(&mut self, callout: u32, status: Option<u32>, body: &str, current: u32) {
            self.host.current.set(current);
            on_callout(
                &self.gateway,
                &mut self.worker,
                &self.host,
                callout,
                status,
                body.as_bytes(),
                current,
            );
        }

        fn authorization(&self, context_id: u32) -> Option<String> {
            self.host
                .applied
                .borrow()
                .get(&context_id)?
                .iter()
                .rev()
                .find_map(|op| match op {
                    HeaderOp::Set(n, v) if n == "authorization" => Some(v.clone()),
                    _ => None,
                })
        }

        fn status(&self, context_id: u32) -> Option<u32> {
            self.host
                .replies
                .borrow()
                .get(&context_id)
                .map(|r| r.status)
        }
    }

    const TOKEN_OK: &str = r#"{"access_token":"LOOKER1","token_type":"token","expires_in":3600}"#;

    #[test]
    fn concurrent_first_requests_share_one_callout_and_all_resume() {
        let mut rig = Rig::new();
        for ctx in 10..30 {
            assert_eq!(rig.request(ctx, &["analysts"]), Next::Pause);
        }
        assert_eq!(
            rig.host.dispatched.borrow().len(),
            1,
            "one broker call for 20 requests"
        );
        rig.answer(1, Some(200), TOKEN_OK, 10);
        for ctx in 10..30 {
            assert_eq!(
                rig.authorization(ctx).as_deref(),
                Some("token LOOKER1"),
                "ctx {ctx}"
            );
        }
        assert_eq!(rig.host.resumed.borrow().len(), 20);
        let audit = rig.host.audits.borrow()[&10].clone();
        assert_eq!(audit["lookergate_verdict"], "allow");
        assert_eq!(audit["lookergate_subject"], "alice");
        assert_eq!(audit["lookergate_operation"], "me");
        assert_eq!(audit["lookergate_rule"], "analysts");
        assert_eq!(audit["lookergate_identity"], "role:analyst");
        assert_eq!(audit["lookergate_groups"], "analysts");
        assert_eq!(rig.host.counters.borrow()["lookergate.decision.allow"], 20);
        assert_eq!(rig.host.counters.borrow()["lookergate.broker.calls"], 1);
        // Cached now: the next request continues at once, no callout.
        assert_eq!(rig.request(40, &["analysts"]), Next::Continue);
        assert_eq!(rig.authorization(40).as_deref(), Some("token LOOKER1"));
        assert_eq!(rig.host.dispatched.borrow().len(), 1);
    }

    #[test]
    fn another_worker_reuses_the_shared_token() {
        let mut rig = Rig::new();
        rig.request(10, &["analysts"]);
        rig.answer(1, Some(200), TOKEN_OK, 10);
        // A fresh worker (another VM) with the same shared data.
        rig.worker = Worker::default();
        assert_eq!(rig.request(11, &["analysts"]), Next::Continue);
        assert_eq!(rig.authorization(11).as_deref(), Some("token LOOKER1"));
        assert_eq!(rig.host.dispatched.borrow().len(), 1);
    }

    #[test]
    fn broker_failure_answers_every_waiter_with_503_and_forwards_nothing() {
        let mut rig = Rig::new();
        rig.request(10, &["analysts"]);
        rig.request(11, &["analysts"]);
        rig.answer(1, None, "", 10);
        for ctx in [10, 11] {
            assert_eq!(rig.status(ctx), Some(503));
            assert_eq!(rig.authorization(ctx), None);
        }
        assert!(rig.host.resumed.borrow().is_empty());
        // Not cached: the next request calls the broker again.
        rig.request(12, &["analysts"]);
        assert_eq!(rig.host.dispatched.borrow().len(), 2);
    }

    #[test]
    fn dispatch_failure_fails_closed_at_once() {
        let mut rig = Rig::new();
        rig.host.fail_dispatch.set(true);
        assert_eq!(rig.request(10, &["analysts"]), Next::Pause);
        assert_eq!(rig.status(10), Some(503));
        // No flight is left behind for the next request to join: it calls the broker.
        rig.host.fail_dispatch.set(false);
        assert_eq!(rig.request(11, &["analysts"]), Next::Pause);
        assert_eq!(rig.host.dispatched.borrow().len(), 1);
    }

    #[test]
    fn unknown_looker_user_is_403_naming_the_rule() {
        let mut rig = Rig::new();
        rig.request(10, &["people"]);
        assert!(rig.host.dispatched.borrow()[0]
            .body
            .contains(r#""credential_id":"a@x""#));
        rig.answer(
            1,
            Some(403),
            r#"{"error":"no_looker_user","message":"x"}"#,
            10,
        );
        assert_eq!(rig.status(10), Some(403));
        let body: serde_json::Value =
            serde_json::from_str(&rig.host.replies.borrow()[&10].body).unwrap();
        assert_eq!(body["rule"], "people");
        assert!(body["reason"]
            .as_str()
            .unwrap()
            .starts_with("no_looker_user"));
    }

    #[test]
    fn owner_gone_redispatches_from_root_and_overdue_waiters_get_503() {
        let mut rig = Rig::new();
        rig.request(10, &["analysts"]);
        rig.request(11, &["analysts"]);
        rig.worker.leave(10);
        rig.host.gone.borrow_mut().push(10);
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
        let dispatched = rig.host.dispatched.borrow().clone();
        assert_eq!(dispatched.len(), 2);
        assert_eq!(
            dispatched[1].context_id, ROOT,
            "re-sent from the root context"
        );
        rig.answer(2, Some(200), TOKEN_OK, ROOT);
        assert_eq!(rig.authorization(11).as_deref(), Some("token LOOKER1"));
        // A waiter whose call never comes back is answered by the tick.
        rig.host.shared.borrow_mut().clear();
        rig.worker = Worker::default();
        rig.request(20, &["people"]);
        rig.host.now_ms.set(rig.host.now_ms.get() + 3_001);
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
        assert_eq!(rig.status(20), Some(503));
        assert_eq!(rig.host.current.get(), ROOT);
    }

    #[test]
    fn denied_and_unauthenticated_requests_never_reach_the_broker() {
        let mut rig = Rig::new();
        rig.request(10, &["nobody"]);
        assert_eq!(rig.status(10), Some(403));
        rig.host.set_request_headers(
            11,
            HeaderBlock::from_pairs(&[(":method", "GET"), (":path", "/api/4.0/user")]),
        );
        rig.host.current.set(11);
        assert_eq!(
            on_request(&rig.gateway, &mut rig.worker, &rig.host, 11, true),
            Next::Pause
        );
        assert_eq!(rig.status(11), Some(401));
        assert!(rig.host.dispatched.borrow().is_empty());
        assert!(rig.host.applied.borrow().is_empty());
    }

    #[test]
    fn guarded_query_waits_for_the_body_then_is_judged_on_it() {
        let mut rig = Rig::new();
        assert_eq!(
            rig.start(
                10,
                &["querying"],
                "POST",
                "/api/4.0/queries/run/json",
                false
            ),
            Next::Pause
        );
        assert!(matches!(
            rig.worker.stages.get(&10),
            Some(Stage::AwaitingBody { .. })
        ));
        assert!(
            rig.host.dispatched.borrow().is_empty(),
            "no broker call before the verdict"
        );
        assert_eq!(
            rig.body(10, r#"{"model":"thelook","view":"orders","#, false),
            Next::Pause
        );
        assert_eq!(rig.body(10, r#""limit":"50"}"#, true), Next::Pause);
        assert_eq!(
            rig.host.dispatched.borrow().len(),
            1,
            "allowed: token fetched"
        );
        rig.answer(1, Some(200), TOKEN_OK, 10);
        assert_eq!(rig.authorization(10).as_deref(), Some("token LOOKER1"));
    }

    #[test]
    fn guarded_query_violations_oversize_and_garbage_are_refused() {
        let cases: [(&str, u32, &str); 3] = [
            (
                r#"{"model":"thelook","view":"orders","limit":"5000"}"#,
                403,
                "query.limit",
            ),
            (r#"{"model":"secret","view":"orders"}"#, 403, "query.model"),
            ("not json", 400, "JSON"),
        ];
        for (i, (body, status, needle)) in cases.into_iter().enumerate() {
            let mut rig = Rig::new();
            let ctx = 10 + i as u32;
            rig.start(
                ctx,
                &["querying"],
                "POST",
                "/api/4.0/queries/run/json",
                false,
            );
            rig.body(ctx, body, true);
            assert_eq!(rig.status(ctx), Some(status), "{body}");
            assert!(
                rig.host.replies.borrow()[&ctx].body.contains(needle),
                "{body}"
            );
            assert!(rig.host.dispatched.borrow().is_empty());
        }
        let mut rig = Rig::new();
        rig.start(
            30,
            &["querying"],
            "POST",
            "/api/4.0/queries/run/json",
            false,
        );
        rig.body(30, &"x".repeat(2049), false);
        assert_eq!(rig.status(30), Some(413));
        assert!(matches!(rig.worker.stages.get(&30), Some(Stage::Refused)));
    }

    /// One worker's (one VM's) gateway for `remote_rig`'s issuer: its own key set.
    fn remote_gateway(idp: &TestIssuer) -> Gateway {
        let config = json!({
            "issuers": [{"issuer": idp.iss, "audiences": ["looker-api"], "jwks_uri": "https://idp.test/keys", "cluster": "idp",
                         "unknown_kid_refetch": "30s"}],
            "policy": {"rules": [{"name": "all", "paths": ["/api/4.0/**"], "allow": {"role": "analyst"}}]},
            "broker": {"cluster": "lookergate_broker", "credential": "gateway-secret-0123456789"}
        });
        Gateway::load(config.to_string().as_bytes()).unwrap()
    }

    fn remote_rig() -> Rig {
        let idp = TestIssuer::new();
        let gateway = remote_gateway(&idp);
        // Key fetches go to the IdP's cluster, broker calls to the broker's: any cluster.
        let host = FakeHost::recording();
        host.set_clock_to_now();
        Rig {
            gateway,
            worker: Worker::default(),
            host,
            idp,
        }
    }

    #[test]
    fn remote_keys_are_fetched_shared_and_refetched_on_an_unknown_kid() {
        let mut rig = remote_rig();
        // Before any fetch: 503 with Retry-After, never a 401.
        rig.request(10, &[]);
        assert_eq!(rig.status(10), Some(503));
        assert!(rig.host.replies.borrow()[&10]
            .headers
            .iter()
            .any(|(n, _)| *n == "retry-after"));
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
        let fetch = rig.host.dispatched.borrow().last().cloned().unwrap();
        assert_eq!(fetch.context_id, ROOT, "timed fetch from the root context");
        rig.answer(1, Some(200), &rig.idp.jwks.to_string(), ROOT);
        let next = rig.request(11, &[]);
        assert_eq!(
            rig.host.replies.borrow().get(&11).map(|r| r.body.clone()),
            None
        );
        assert_eq!(next, Next::Pause, "verified; now waiting for the broker");
        assert_eq!(rig.status(11), None);
        // Another worker (fresh VM) picks the keys up from shared data without fetching.
        let calls = rig.host.dispatched.borrow().len();
        let mut other = Worker::default();
        std::mem::swap(&mut rig.worker, &mut other);
        assert_eq!(
            rig.request(15, &[]),
            Next::Pause,
            "a worker without keys takes the shared ones at once"
        );
        assert_eq!(rig.status(15), None);
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
        assert_eq!(
            rig.host.dispatched.borrow().len(),
            calls + 1,
            "lease held, keys shared: only the broker call"
        );
        std::mem::swap(&mut rig.worker, &mut other);

        // The IdP rotates: a token under the new kid waits for one refetch, then passes.
        rig.idp = TestIssuer::rotated();
        assert_eq!(rig.request(12, &[]), Next::Pause);
        assert_eq!(rig.request(13, &[]), Next::Pause);
        let refetches: Vec<_> = rig
            .host
            .dispatched
            .borrow()
            .iter()
            .filter(|d| d.body.is_empty())
            .cloned()
            .collect();
        assert_eq!(
            refetches.len(),
            2,
            "initial fetch + one refetch for two requests"
        );
        let refetch_id = rig.host.next_callout.get();
        // A malformed answer would keep the old keys; this one is the rotated set.
        rig.answer(refetch_id, Some(200), &rig.idp.jwks.to_string(), 12);
        assert_eq!(
            rig.status(12),
            None,
            "no refusal: decided again with the new keys"
        );
        assert_eq!(rig.status(13), None);
        assert!(matches!(
            rig.worker.stages.get(&13),
            Some(Stage::AwaitingToken)
        ));
        // Another unknown kid within the refetch interval is refused at once, no fetch:
        // a storm of random kids costs at most one fetch per interval.
        let before = rig.host.dispatched.borrow().len();
        rig.idp = TestIssuer::new(); // kid test-1 is gone from the rotated set
        for ctx in 14..40 {
            rig.request(ctx, &[]);
            assert_eq!(rig.status(ctx), Some(401), "ctx {ctx}");
        }
        let fetches_after = rig
            .host
            .dispatched
            .borrow()
            .iter()
            .skip(before)
            .filter(|d| d.body.is_empty())
            .count();
        assert_eq!(fetches_after, 0);
    }

    #[test]
    fn malformed_or_failed_jwks_keeps_the_last_good_keys() {
        let mut rig = remote_rig();
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
        rig.answer(1, Some(200), &rig.idp.jwks.to_string(), ROOT);
        for (status, body) in [
            (Some(200), "{not json"),
            (Some(200), r#"{"keys":[]}"#),
            (Some(500), ""),
            (None, ""),
        ] {
            // Force a refresh attempt now.
            let callout = {
                rig.host.now_ms.set(rig.host.now_ms.get() + 601_000);
                rig.host
                    .shared
                    .borrow_mut()
                    .retain(|k, _| !k.contains("jwks_lease"));
                on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
                rig.host.next_callout.get()
            };
            rig.answer(callout, status, body, ROOT);
            rig.host.now_ms.set(rig.host.now_ms.get() + 120_000); // past any backoff
        }
        // Tokens are signed with the real clock; keys are still the good ones.
        rig.host.set_clock_to_now();
        assert_eq!(rig.request(20, &[]), Next::Pause);
        assert_eq!(
            rig.status(20),
            None,
            "still verified with the last good keys"
        );
    }

    #[test]
    fn rate_limit_gives_429_with_retry_after_and_recovers() {
        let mut rig = Rig::new();
        let idp = TestIssuer::new();
        let config = json!({
            "issuers": [{"issuer": idp.iss, "audiences": ["looker-api"], "jwks": idp.jwks}],
            "policy": {"rules": [{"name": "limited", "paths": ["/api/4.0/**"], "allow": {"role": "analyst"},
                                  "rate_limit": {"per_second": 1, "burst": 2}}]},
            "broker": {"cluster": "lookergate_broker", "credential": "gateway-secret-0123456789"}
        });
        rig.gateway = Gateway::load(config.to_string().as_bytes()).unwrap();
        rig.request(10, &[]);
        rig.request(11, &[]);
        rig.request(12, &[]);
        assert_eq!(
            (rig.status(10), rig.status(11)),
            (None, None),
            "burst of 2 allowed"
        );
        assert_eq!(rig.status(12), Some(429));
        let reply = rig.host.replies.borrow()[&12].clone();
        assert!(
            reply.headers.contains(&("retry-after", "1".to_owned())),
            "{:?}",
            reply.headers
        );
        assert!(reply.body.contains("limited"));
        rig.host.now_ms.set(rig.host.now_ms.get() + 1000);
        rig.request(13, &[]);
        assert_eq!(rig.status(13), None, "a token refilled after a second");
    }

    #[test]
    fn looker_rejecting_our_token_invalidates_it_everywhere() {
        let mut rig = Rig::new();
        rig.request(10, &["analysts"]);
        rig.answer(1, Some(200), TOKEN_OK, 10);
        assert_eq!(rig.request(11, &["analysts"]), Next::Continue);
        on_response(&rig.gateway, &mut rig.worker, &rig.host, 10, Some(200));
        assert_eq!(
            rig.host.dispatched.borrow().len(),
            1,
            "a 200 changes nothing"
        );
        rig.host.current.set(11);
        on_response(&rig.gateway, &mut rig.worker, &rig.host, 11, Some(401));
        let dispatched = rig.host.dispatched.borrow().clone();
        assert_eq!(dispatched.len(), 2);
        assert!(
            dispatched[1].body.contains(r#""kind":"role""#),
            "invalidate names the identity: {}",
            dispatched[1].body
        );
        // The next request asks the broker for a fresh token instead of reusing the dead one.
        assert_eq!(rig.request(12, &["analysts"]), Next::Pause);
        assert_eq!(rig.host.dispatched.borrow().len(), 3);
        rig.answer(
            3,
            Some(200),
            r#"{"access_token":"LOOKER2","expires_in":3600}"#,
            12,
        );
        assert_eq!(rig.authorization(12).as_deref(), Some("token LOOKER2"));
    }

    #[test]
    fn body_data_never_resumes_a_request_still_waiting_for_its_token() {
        let mut rig = Rig::new();
        // Allowed at the headers, body still coming, token not yet there.
        assert_eq!(
            rig.start(10, &["analysts"], "GET", "/api/4.0/user", false),
            Next::Pause
        );
        assert!(matches!(
            rig.worker.stages.get(&10),
            Some(Stage::AwaitingToken)
        ));
        assert_eq!(
            rig.body(10, "{}", true),
            Next::Pause,
            "body data must not move the stream"
        );
        assert!(rig.host.resumed.borrow().is_empty());
        rig.answer(1, Some(200), TOKEN_OK, 10);
        assert_eq!(rig.host.resumed.borrow().as_slice(), &[10]);
        assert_eq!(
            rig.body(10, "", true),
            Next::Continue,
            "forwarded: the rest flows"
        );
        // A refused request swallows its body too.
        rig.start(11, &["nobody"], "GET", "/api/4.0/user", false);
        assert_eq!(rig.body(11, "x", true), Next::Pause);
    }

    #[test]
    fn a_body_that_never_arrives_is_answered_408() {
        let mut rig = Rig::new();
        rig.start(
            10,
            &["querying"],
            "POST",
            "/api/4.0/queries/run/json",
            false,
        );
        rig.host.now_ms.set(rig.host.now_ms.get() + 15_000);
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
        assert_eq!(rig.status(10), Some(408));
        assert!(rig.host.dispatched.borrow().is_empty());
    }

    #[test]
    fn rotated_key_on_another_worker_waits_for_that_workers_refetch() {
        // Found by the soak: while worker A refetched, worker B refused the new kid.
        let mut rig = remote_rig();
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
        rig.answer(1, Some(200), &rig.idp.jwks.to_string(), ROOT);
        let mut worker_b = Worker::default();
        std::mem::swap(&mut rig.worker, &mut worker_b);
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT); // B syncs the shared keys
        std::mem::swap(&mut rig.worker, &mut worker_b);

        rig.host.now_ms.set(rig.host.now_ms.get() + 1000);
        rig.idp = TestIssuer::rotated();
        assert_eq!(
            rig.request(20, &[]),
            Next::Pause,
            "worker A: unknown kid, refetching"
        );
        let refetch = rig.host.next_callout.get();
        std::mem::swap(&mut rig.worker, &mut worker_b);
        assert_eq!(
            rig.request(21, &[]),
            Next::Pause,
            "worker B: waits for A's refetch"
        );
        assert_eq!(rig.status(21), None, "not refused");
        std::mem::swap(&mut rig.worker, &mut worker_b);
        rig.answer(refetch, Some(200), &rig.idp.jwks.to_string(), 20);
        std::mem::swap(&mut rig.worker, &mut worker_b);
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
        assert_eq!(
            rig.status(21),
            None,
            "decided again with the new keys, no 401"
        );
        assert!(matches!(
            rig.worker.stages.get(&21),
            Some(Stage::AwaitingToken)
        ));
        // Once that refetch is done, a kid still unknown is refused at once on B too.
        rig.idp = TestIssuer::new();
        rig.request(22, &[]);
        assert_eq!(rig.status(22), Some(401));
    }

    #[test]
    fn a_waiter_wakes_even_when_a_later_request_installed_the_shared_keys() {
        // Found by the soak: worker B's request 21 waits for A's refetch; A shares the
        // keys; B's next request (23) finds them shared and installs them itself. B's
        // tick must still wake 21 — it used to sit until its deadline (~4 s). Each
        // worker has its own VM, so its own gateway (key set) and worker state.
        let mut rig = remote_rig();
        let mut b = (Worker::default(), remote_gateway(&rig.idp));
        let swap = |rig: &mut Rig, b: &mut (Worker, Gateway)| {
            std::mem::swap(&mut rig.worker, &mut b.0);
            std::mem::swap(&mut rig.gateway, &mut b.1);
        };
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
        rig.answer(1, Some(200), &rig.idp.jwks.to_string(), ROOT);
        swap(&mut rig, &mut b);
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT); // B syncs the shared keys
        swap(&mut rig, &mut b);

        rig.host.now_ms.set(rig.host.now_ms.get() + 1000);
        rig.idp = TestIssuer::rotated();
        assert_eq!(
            rig.request(20, &[]),
            Next::Pause,
            "A: unknown kid, refetching"
        );
        let refetch = rig.host.next_callout.get();
        swap(&mut rig, &mut b);
        assert_eq!(
            rig.request(21, &[]),
            Next::Pause,
            "B: waits for A's refetch"
        );
        assert!(matches!(
            rig.worker.stages.get(&21),
            Some(Stage::AwaitingKeys { .. })
        ));
        swap(&mut rig, &mut b);
        rig.answer(refetch, Some(200), &rig.idp.jwks.to_string(), 20);
        swap(&mut rig, &mut b);
        rig.host.now_ms.set(rig.host.now_ms.get() + 5);
        assert_eq!(
            rig.request(23, &[]),
            Next::Pause,
            "B: shared keys taken at once"
        );
        assert!(matches!(
            rig.worker.stages.get(&23),
            Some(Stage::AwaitingToken)
        ));
        assert!(matches!(
            rig.worker.stages.get(&21),
            Some(Stage::AwaitingKeys { .. })
        ));
        rig.host.now_ms.set(rig.host.now_ms.get() + 500);
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
        assert_eq!(rig.status(21), None, "not refused");
        assert!(
            matches!(rig.worker.stages.get(&21), Some(Stage::AwaitingToken)),
            "21 decided again on the first tick, not at its deadline: {:?}",
            rig.worker.stages.get(&21)
        );
    }

    fn trailers(rig: &mut Rig, context_id: u32) -> Next {
        rig.host.current.set(context_id);
        on_trailers(&rig.gateway, &mut rig.worker, &rig.host, context_id)
    }

    #[test]
    fn trailers_never_resume_an_undecided_request_and_end_an_awaited_body() {
        let mut rig = Rig::new();
        // Waiting for the broker: trailers keep it paused; the token resumes it.
        assert_eq!(rig.request(10, &["analysts"]), Next::Pause);
        assert_eq!(trailers(&mut rig, 10), Next::Pause);
        assert!(rig.host.resumed.borrow().is_empty());
        assert_eq!(rig.authorization(10), None, "nothing forwarded yet");
        rig.answer(1, Some(200), TOKEN_OK, 10);
        assert_eq!(*rig.host.resumed.borrow(), vec![10]);
        assert_eq!(rig.authorization(10).as_deref(), Some("token LOOKER1"));
        // Refused: trailers change nothing.
        rig.request(20, &[]);
        assert_eq!(rig.status(20), Some(403));
        assert_eq!(trailers(&mut rig, 20), Next::Pause);
        // Forwarded at once (cached token): trailers go on, emptied.
        assert_eq!(rig.request(30, &["analysts"]), Next::Continue);
        assert_eq!(trailers(&mut rig, 30), Next::Continue);
        assert_eq!(*rig.host.trailers_cleared.borrow(), vec![10, 20, 30]);

        // A guarded query whose body ends with trailers: judged on that body.
        let path = "/api/4.0/queries/run/json";
        assert_eq!(
            rig.start(40, &["querying"], "POST", path, false),
            Next::Pause
        );
        assert_eq!(
            rig.body(
                40,
                r#"{"model":"other","view":"orders","limit":"10"}"#,
                false
            ),
            Next::Pause
        );
        assert_eq!(trailers(&mut rig, 40), Next::Pause);
        assert_eq!(rig.status(40), Some(403), "the body was judged");
        rig.host.body.borrow_mut().clear();
        assert_eq!(
            rig.start(41, &["querying"], "POST", path, false),
            Next::Pause
        );
        rig.body(
            41,
            r#"{"model":"thelook","view":"orders","limit":"10"}"#,
            false,
        );
        assert_eq!(trailers(&mut rig, 41), Next::Continue);
        assert_eq!(rig.status(41), None);
        assert_eq!(rig.authorization(41).as_deref(), Some("token LOOKER1"));
        // Trailers with no body at all: an empty body, which is no query.
        rig.host.body.borrow_mut().clear();
        assert_eq!(
            rig.start(42, &["querying"], "POST", path, false),
            Next::Pause
        );
        assert_eq!(trailers(&mut rig, 42), Next::Pause);
        assert_eq!(rig.status(42), Some(400));
    }

    #[test]
    fn a_body_larger_than_its_last_reported_size_is_still_bounded() {
        let mut rig = Rig::new();
        let path = "/api/4.0/queries/run/json";
        assert_eq!(
            rig.start(10, &["querying"], "POST", path, false),
            Next::Pause
        );
        rig.body(10, r#"{"model":"thelook","#, false);
        // More data buffered than any callback reported, then the end (trailers).
        rig.host
            .body
            .borrow_mut()
            .extend_from_slice(&vec![b' '; rig.gateway.max_body_bytes]);
        assert_eq!(trailers(&mut rig, 10), Next::Pause);
        assert_eq!(rig.status(10), Some(413));
    }

    #[test]
    fn callout_answers_are_routed_by_token_and_read_with_their_own_bound() {
        let mut rig = remote_rig();
        on_tick(&rig.gateway, &mut rig.worker, &rig.host, ROOT);
        let jwks = rig.idp.jwks.to_string();
        // A JWKS well above the broker's 16 KiB cap: read whole, with the JWKS bound.
        let mut big: serde_json::Value = rig.idp.jwks.clone();
        let padding = "A".repeat(40 * 1024);
        big["keys"].as_array_mut().unwrap().push(
            json!({"kty": "RSA", "kid": "padding", "n": padding, "e": "AQAB", "x5c": ["MIIB"]}),
        );
        let big = big.to_string();
        assert!(big.len() > MAX_RESPONSE_BYTES && big.len() < MAX_JWKS_BYTES);
        assert!(jwks.len() < big.len());
        *rig.host.callout_body.borrow_mut() = big.clone().into_bytes();
        assert_eq!(route(&rig.worker, 1), Some(Callout::Keys(Step::Jwks)));
        on_http_call_answer(
            &rig.gateway,
            &mut rig.worker,
            &rig.host,
            1,
            3,
            big.len(),
            ROOT,
        );
        assert_eq!(*rig.host.read_bounds.borrow(), vec![MAX_JWKS_BYTES]);
        assert_eq!(
            rig.host.counters.borrow().get(&format!(
                "lookergate.jwks.fetch_ok.{}",
                crate::keys::metric_name(&rig.idp.iss)
            )),
            Some(&1),
            "{:?}",
            rig.host.counters.borrow()
        );
        // The token is now verified and waits for the broker: its callout is a token call.
        assert_eq!(rig.request(10, &[]), Next::Pause);
        let broker_call = rig.host.next_callout.get();
        assert_eq!(route(&rig.worker, broker_call), Some(Callout::Token));
        *rig.host.callout_body.borrow_mut() = TOKEN_OK.as_bytes().to_vec();
        rig.host.current.set(10);
        on_http_call_answer(
            &rig.gateway,
            &mut rig.worker,
            &rig.host,
            broker_call,
            2,
            TOKEN_OK.len(),
            10,
        );
        assert_eq!(
            rig.host.read_bounds.borrow().last(),
            Some(&MAX_RESPONSE_BYTES)
        );
        assert_eq!(rig.authorization(10).as_deref(), Some("token LOOKER1"));
        // An answer nobody is waiting for is not read at all.
        let reads = rig.host.read_bounds.borrow().len();
        on_http_call_answer(&rig.gateway, &mut rig.worker, &rig.host, 999, 2, 10, ROOT);
        assert_eq!(rig.host.read_bounds.borrow().len(), reads);
    }
}
