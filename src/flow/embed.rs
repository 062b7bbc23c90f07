//! The embed endpoints' requests (docs/embed.md): allowed by an embed rule, their body
//! read (bounded) where the endpoint needs one, then one broker call, and the answer
//! sent by the filter itself. Nothing of them ever goes upstream: every stage they pass
//! through keeps the stream paused until the local reply.

use log::{debug, warn};

use super::audit::report_decision;
use super::request::check_rate_limit;
use super::{millis, Flow, Next, Stage, WAIT_GRACE};
use crate::broker::{self, EmbedAnswer, EmbedAsk};
use crate::callout::Callout;
use crate::config::Gateway;
use crate::decision::EmbedCall;
use crate::host::Host;
use crate::policy::embed::{self, Endpoint};
use crate::reply::{LocalReply, Refusal};

/// The most body bytes an embed endpoint reads: its own bound, within `max_body_bytes`.
pub(super) fn body_limit(gateway: &Gateway) -> usize {
    gateway.max_body_bytes.min(embed::MAX_BODY_BYTES)
}

/// Counts an embed request's outcome: `lookergate.embed.<endpoint>.<outcome>`
/// (`ok`, or the refusal's code).
pub(super) fn count_outcome<H: Host>(host: &H, endpoint: Endpoint, outcome: &str) {
    let name = endpoint.operation().trim_start_matches("embed_");
    host.count(&format!("lookergate.embed.{name}.{outcome}"), 1);
}

/// The reply to the browser: the SDK's fields only (`SessionTokens` has no
/// `session_reference_token`), never cached.
fn answer_reply(answer: &EmbedAnswer) -> LocalReply {
    let headers = |json: bool| {
        let mut headers = vec![("cache-control", "no-store".to_owned())];
        if json {
            headers.push(("content-type", "application/json".to_owned()));
        }
        headers
    };
    match answer {
        EmbedAnswer::Tokens(tokens) => LocalReply {
            status: 200,
            headers: headers(true),
            body: serde_json::to_string(tokens).unwrap_or_default(),
        },
        EmbedAnswer::Url(url) => LocalReply {
            status: 200,
            headers: headers(true),
            body: serde_json::json!({ "url": url.url }).to_string(),
        },
        EmbedAnswer::Ended => LocalReply {
            status: 204,
            headers: headers(false),
            body: String::new(),
        },
    }
}

impl<H: Host> Flow<'_, H> {
    /// An embed endpoint's request was allowed: record it, draw from the rule's rate
    /// limit, then call the broker now or once the body it needs is complete (`body`:
    /// its size when complete, `None` while it is coming).
    pub(super) fn start_embed(
        &mut self,
        context_id: u32,
        request_id: &str,
        method: &str,
        mut call: Box<EmbedCall>,
        body: Option<usize>,
        now_ms: u64,
    ) -> Next {
        let (gateway, host) = (self.gateway, self.host);
        let principal = &call.principal;
        if let Err(refusal) = check_rate_limit(
            gateway,
            host,
            &principal.issuer,
            &principal.subject,
            &call.audit,
            now_ms,
        ) {
            call.audit.verdict = "deny";
            call.audit.reason = Some(refusal.code().to_owned());
            report_decision(host, context_id, request_id, method, &call.audit);
            count_outcome(host, call.endpoint, refusal.code());
            self.refuse(context_id, &refusal, request_id);
            return Next::Pause;
        }
        report_decision(host, context_id, request_id, method, &call.audit);
        host.record_audit(&[("lookergate_embed", call.record.as_str())]);
        if !call.endpoint.reads_body() {
            return self.call_embed_broker(context_id, request_id, &call, &[]);
        }
        let limit = body_limit(gateway);
        match body {
            None => {
                self.worker.stream(context_id).stage = Stage::AwaitingEmbedBody {
                    call,
                    request_id: request_id.to_owned(),
                    since_ms: now_ms,
                };
                Next::Pause
            }
            Some(size) if size > limit => {
                count_outcome(host, call.endpoint, "payload_too_large");
                self.refuse(context_id, &Refusal::PayloadTooLarge { limit }, request_id);
                Next::Pause
            }
            Some(size) => {
                let bytes = if size == 0 {
                    Vec::new()
                } else {
                    host.request_body(limit.saturating_add(1))
                };
                self.embed_body_read(context_id, request_id, &call, &bytes)
            }
        }
    }

    /// Body data for a request in [`Stage::AwaitingEmbedBody`]: bounded, buffered to
    /// its end, then the broker call.
    pub(super) fn embed_body(
        &mut self,
        context_id: u32,
        body_size: usize,
        end_of_stream: bool,
    ) -> Next {
        let limit = body_limit(self.gateway);
        if body_size > limit {
            let stage =
                std::mem::replace(&mut self.worker.stream(context_id).stage, Stage::Refused);
            if let Stage::AwaitingEmbedBody {
                call, request_id, ..
            } = stage
            {
                count_outcome(self.host, call.endpoint, "payload_too_large");
                self.refuse(context_id, &Refusal::PayloadTooLarge { limit }, &request_id);
            }
            return Next::Pause;
        }
        if !end_of_stream {
            return Next::Pause; // keep buffering
        }
        self.complete_embed_body(context_id)
    }

    /// The awaited body is complete (its last data, or trailers): read it, call the broker.
    pub(super) fn complete_embed_body(&mut self, context_id: u32) -> Next {
        let stage = std::mem::replace(&mut self.worker.stream(context_id).stage, Stage::Refused);
        let Stage::AwaitingEmbedBody {
            call, request_id, ..
        } = stage
        else {
            return Next::Pause;
        };
        let limit = body_limit(self.gateway);
        let bytes = self.host.request_body(limit.saturating_add(1));
        self.embed_body_read(context_id, &request_id, &call, &bytes)
    }

    fn embed_body_read(
        &mut self,
        context_id: u32,
        request_id: &str,
        call: &EmbedCall,
        bytes: &[u8],
    ) -> Next {
        let limit = body_limit(self.gateway);
        if bytes.len() > limit {
            count_outcome(self.host, call.endpoint, "payload_too_large");
            self.refuse(context_id, &Refusal::PayloadTooLarge { limit }, request_id);
            return Next::Pause;
        }
        self.call_embed_broker(context_id, request_id, call, bytes)
    }

    /// Sends the broker call; the stream stays paused until its answer (or the tick's
    /// deadline), and fails closed if it cannot be sent.
    fn call_embed_broker(
        &mut self,
        context_id: u32,
        request_id: &str,
        call: &EmbedCall,
        body: &[u8],
    ) -> Next {
        let (gateway, host) = (self.gateway, self.host);
        let ask = EmbedAsk {
            endpoint: call.endpoint,
            principal: &call.principal,
            profile: &call.profile,
            user: &call.user,
            request_id,
        };
        let sent = broker::embed_request(&gateway.broker, &ask, body).and_then(|request| {
            super::call_broker(gateway, host, request).map_err(|e| {
                warn!(
                    "lookergate[{context_id}] request_id={request_id} broker dispatch failed: {}",
                    e.0
                );
                Refusal::BrokerUnavailable {
                    reason: "cannot reach the token broker".to_owned(),
                }
            })
        });
        match sent {
            Ok(callout) => {
                let now_ms = host.now_ms();
                self.worker
                    .callouts
                    .insert(callout, Callout::Embed(context_id));
                let stream = self.worker.stream(context_id);
                stream.callouts.push(callout);
                stream.stage = Stage::AwaitingEmbed {
                    endpoint: call.endpoint,
                    rule: call.rule.clone(),
                    request_id: request_id.to_owned(),
                    started_ms: now_ms,
                    deadline_ms: now_ms + millis(gateway.broker.timeout + WAIT_GRACE),
                };
            }
            Err(refusal) => {
                count_outcome(host, call.endpoint, refusal.code());
                self.refuse(context_id, &refusal, request_id);
            }
        }
        Next::Pause
    }

    /// The broker answered the embed call of stream `owner` (status `None`: no answer or
    /// timeout): reply to it, then restore `current_context`.
    pub(super) fn on_embed_answer(
        &mut self,
        owner: u32,
        status: Option<u32>,
        body: &[u8],
        current_context: u32,
    ) {
        let host = self.host;
        let Some(stream) = self.worker.streams.get_mut(&owner) else {
            return;
        };
        if !matches!(stream.stage, Stage::AwaitingEmbed { .. }) {
            return; // answered already (refused meanwhile)
        }
        let Stage::AwaitingEmbed {
            endpoint,
            rule,
            request_id,
            started_ms,
            ..
        } = std::mem::replace(&mut stream.stage, Stage::Refused)
        else {
            return;
        };
        host.observe(
            "lookergate.embed.broker_latency_ms",
            host.now_ms().saturating_sub(started_ms),
        );
        match broker::parse_embed_response(endpoint, status, body, &rule) {
            Ok(answer) => {
                count_outcome(host, endpoint, "ok");
                debug!(
                    "lookergate[{owner}] request_id={request_id} {} answered by the broker",
                    endpoint.operation()
                );
                if host.switch_to(owner) {
                    if let Err(e) = host.send_reply(&answer_reply(&answer)) {
                        warn!(
                            "lookergate[{owner}] request_id={request_id} local reply failed: {}",
                            e.0
                        );
                    }
                }
            }
            Err(refusal) => {
                count_outcome(host, endpoint, refusal.code());
                warn!(
                    "lookergate[{owner}] request_id={request_id} {} failed: {}",
                    endpoint.operation(),
                    refusal.code()
                );
                self.refuse_waiter(owner, &refusal, &request_id);
            }
        }
        host.switch_to(current_context);
    }

    /// Answers the embed requests whose body or broker answer is overdue (Envoy's
    /// callout timeout normally answers first): none is held forever.
    pub(super) fn expire_embed(&mut self, now_ms: u64) {
        let overdue: Vec<(u32, Endpoint, String, Refusal)> = self
            .worker
            .streams
            .iter()
            .filter_map(|(ctx, stream)| match &stream.stage {
                Stage::AwaitingEmbed {
                    endpoint,
                    request_id,
                    deadline_ms,
                    ..
                } if now_ms >= *deadline_ms => Some((
                    *ctx,
                    *endpoint,
                    request_id.clone(),
                    Refusal::BrokerUnavailable {
                        reason: "timed out waiting for the token broker".to_owned(),
                    },
                )),
                Stage::AwaitingEmbedBody {
                    call,
                    request_id,
                    since_ms,
                } if now_ms >= since_ms + millis(super::BODY_WAIT) => Some((
                    *ctx,
                    call.endpoint,
                    request_id.clone(),
                    Refusal::BodyTimeout,
                )),
                _ => None,
            })
            .collect();
        for (context_id, endpoint, request_id, refusal) in overdue {
            count_outcome(self.host, endpoint, refusal.code());
            self.refuse_waiter(context_id, &refusal, &request_id);
        }
    }
}
