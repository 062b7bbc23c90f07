//! Global rate limits: an admitted request under a rule with `scope: "global"` waits,
//! paused, for the rate limit service (RLS v3 over `dispatch_grpc_call`), then is
//! forwarded, answered 429, or — when the service cannot answer — refused with 503 or
//! judged by the local bucket, as the rule says.

use log::warn;

use super::audit::report_decision;
use super::request::check_rate_limit;
use super::{millis, Flow, Next, Stage, Worker, WAIT_GRACE};
use crate::callout::Callout;
use crate::config::{Gateway, RateLimitServiceSettings};
use crate::decision::{Audit, HeaderOp};
use crate::host::Host;
use crate::policy::LookerIdentity;
use crate::ratelimit::{self, OnUnavailable};
use crate::reply::Refusal;
use crate::rls::{self, Descriptor};

/// An admitted request, held while its global limit is checked.
#[derive(Debug)]
pub struct Admission {
    pub identity: LookerIdentity,
    pub subject: String,
    pub issuer: String,
    pub header_ops: Vec<HeaderOp>,
    pub audit: Audit,
    pub request_id: String,
    pub method: String,
}

/// The global check a request needs: its rule, descriptors and failure mode.
#[derive(Debug)]
pub struct GlobalCheck {
    pub rule: String,
    pub descriptors: Vec<Descriptor>,
    pub on_unavailable: OnUnavailable,
}

/// A request paused for the rate limit service.
#[derive(Debug)]
pub struct PendingLimit {
    pub admission: Admission,
    pub check: GlobalCheck,
    pub started_ms: u64,
    pub deadline_ms: u64,
}

impl GlobalCheck {
    /// The global check of the deciding rule, if its limit is global.
    pub fn of(gateway: &Gateway, issuer: &str, subject: &str, audit: &Audit) -> Option<Self> {
        let rule = audit.rule.as_deref().and_then(|r| gateway.policy.rule(r))?;
        let limit = rule.rate_limit.as_ref().filter(|l| l.is_global())?;
        let is_query = audit
            .operation
            .as_deref()
            .and_then(|id| gateway.operations.by_id(id))
            .is_some_and(|op| op.activity_type == "db_query");
        let principal = ratelimit::principal_key(issuer, subject);
        Some(GlobalCheck {
            rule: rule.name.clone(),
            descriptors: rls::descriptors(&rule.name, &principal, limit, is_query),
            on_unavailable: limit.on_unavailable(),
        })
    }
}

/// How the service's call ended.
enum Outcome {
    Answer(rls::Answer),
    Failed(String),
}

/// The answer to a gRPC callout: routed by its token (`status_code` 0 is OK).
pub fn on_grpc_call_answer<H: Host>(
    gateway: &Gateway,
    worker: &mut Worker,
    host: &H,
    callout: u32,
    status_code: u32,
    response_size: usize,
    current_context: u32,
) {
    let Some(Callout::RateLimit(owner)) = worker.callouts.remove(&callout) else {
        return; // not a gRPC call of ours (any more)
    };
    let outcome = if status_code != 0 {
        Outcome::Failed(format!("gRPC status {status_code}"))
    } else {
        let body = host.grpc_response(response_size, rls::MAX_RESPONSE_BYTES);
        if body.len() > rls::MAX_RESPONSE_BYTES {
            Outcome::Failed("answer too large".to_owned())
        } else {
            match rls::decode_response(&body) {
                Ok(answer) => Outcome::Answer(answer),
                Err(e) => Outcome::Failed(format!("malformed answer: {e}")),
            }
        }
    };
    let mut flow = Flow::new(gateway, worker, host);
    flow.on_rate_limit_answer(owner, outcome);
    host.switch_to(current_context);
}

impl<H: Host> Flow<'_, H> {
    /// Asks the rate limit service; the stream stays paused until it answers.
    pub(super) fn check_global_limit(
        &mut self,
        context_id: u32,
        admission: Admission,
        check: GlobalCheck,
        now_ms: u64,
    ) -> Next {
        let (gateway, host) = (self.gateway, self.host);
        // Config loading guarantees the service when a rule is global.
        let Some(service) = &gateway.rate_limit_service else {
            return self.limit_settled(
                context_id,
                admission,
                check,
                Outcome::Failed("no rate limit service configured".to_owned()),
                now_ms,
            );
        };
        match call_service(host, service, &check.descriptors) {
            Ok(callout) => {
                host.count("lookergate.ratelimit.global.calls", 1);
                self.worker
                    .callouts
                    .insert(callout, Callout::RateLimit(context_id));
                let stream = self.worker.stream(context_id);
                stream.callouts.push(callout);
                stream.stage = Stage::AwaitingRateLimit(Box::new(PendingLimit {
                    admission,
                    check,
                    started_ms: now_ms,
                    deadline_ms: now_ms + millis(service.timeout + WAIT_GRACE),
                }));
                Next::Pause
            }
            Err(reason) => self.limit_settled(
                context_id,
                admission,
                check,
                Outcome::Failed(reason),
                now_ms,
            ),
        }
    }

    /// The service answered (or failed) for stream `owner`: resume or answer it.
    fn on_rate_limit_answer(&mut self, owner: u32, outcome: Outcome) {
        let Some(stream) = self.worker.streams.get_mut(&owner) else {
            return; // the client went away
        };
        if !matches!(stream.stage, Stage::AwaitingRateLimit(_)) {
            return; // settled already (timed out on the tick)
        }
        let Stage::AwaitingRateLimit(pending) =
            std::mem::replace(&mut stream.stage, Stage::Refused)
        else {
            return;
        };
        let now_ms = self.host.now_ms();
        self.host.observe(
            "lookergate.ratelimit.global.latency_ms",
            now_ms.saturating_sub(pending.started_ms),
        );
        if !self.host.switch_to(owner) {
            return;
        }
        let PendingLimit {
            admission, check, ..
        } = *pending;
        if self.limit_settled(owner, admission, check, outcome, now_ms) == Next::Continue {
            if let Err(e) = self.host.resume() {
                warn!("lookergate[{owner}] resume failed: {}", e.0);
            }
        }
    }

    /// Applies the service's verdict (or its failure, as the rule says) to stream
    /// `context_id`, the host's current context.
    fn limit_settled(
        &mut self,
        context_id: u32,
        admission: Admission,
        check: GlobalCheck,
        outcome: Outcome,
        now_ms: u64,
    ) -> Next {
        let (gateway, host) = (self.gateway, self.host);
        let Admission {
            identity,
            subject,
            issuer,
            header_ops,
            mut audit,
            request_id,
            method,
        } = admission;
        let verdict = match outcome {
            Outcome::Answer(answer) if !answer.over_limit => {
                host.count("lookergate.ratelimit.global.ok", 1);
                Ok(())
            }
            Outcome::Answer(answer) => {
                host.count("lookergate.ratelimit.global.over_limit", 1);
                // The first descriptor over its limit names the budget and the wait.
                let over = answer
                    .statuses
                    .iter()
                    .zip(&check.descriptors)
                    .find(|(status, _)| status.over_limit);
                let (budget, reset_ms) = match over {
                    Some((status, descriptor)) => (descriptor.budget, status.reset_ms),
                    None => ("requests", 1000),
                };
                Err(Refusal::RateLimited {
                    rule: check.rule.clone(),
                    retry_after_secs: reset_ms.div_ceil(1000).max(1),
                    budget,
                })
            }
            Outcome::Failed(reason) => {
                host.count("lookergate.ratelimit.global.failure", 1);
                match check.on_unavailable {
                    OnUnavailable::Deny => {
                        host.count("lookergate.ratelimit.global.unavailable_denied", 1);
                        warn!("lookergate[{context_id}] request_id={request_id} rate limit service unavailable ({reason}); rule {} denies", check.rule);
                        Err(Refusal::RateLimitUnavailable {
                            rule: check.rule.clone(),
                        })
                    }
                    OnUnavailable::Local => {
                        host.count("lookergate.ratelimit.global.unavailable_local", 1);
                        warn!("lookergate[{context_id}] request_id={request_id} rate limit service unavailable ({reason}); rule {} falls back to the local bucket", check.rule);
                        check_rate_limit(gateway, host, &issuer, &subject, &audit, now_ms)
                    }
                }
            }
        };
        if let Err(refusal) = verdict {
            audit.verdict = "deny";
            audit.reason = Some(refusal.code().to_owned());
            report_decision(host, context_id, &request_id, &method, &audit);
            self.refuse(context_id, &refusal, &request_id);
            return Next::Pause;
        }
        report_decision(host, context_id, &request_id, &method, &audit);
        self.forward(
            context_id,
            &request_id,
            identity,
            subject,
            header_ops,
            audit,
            now_ms,
        )
    }

    /// Settles the requests whose service call outlived its deadline (the host's
    /// gRPC timeout answers first; this is the backstop).
    pub(super) fn expire_rate_limits(&mut self, now_ms: u64) {
        let overdue: Vec<u32> = self
            .worker
            .streams
            .iter()
            .filter_map(|(ctx, stream)| match &stream.stage {
                Stage::AwaitingRateLimit(pending) if now_ms >= pending.deadline_ms => Some(*ctx),
                _ => None,
            })
            .collect();
        for context_id in overdue {
            self.worker
                .callouts
                .retain(|_, kind| *kind != Callout::RateLimit(context_id));
            let reason = "no answer in time".to_owned();
            self.on_rate_limit_answer(context_id, Outcome::Failed(reason));
        }
    }
}

/// Sends `ShouldRateLimit` for `descriptors`; the callout token, or why it failed.
fn call_service<H: Host>(
    host: &H,
    service: &RateLimitServiceSettings,
    descriptors: &[Descriptor],
) -> Result<u32, String> {
    let message = rls::encode_request(&service.domain, descriptors);
    host.dispatch_grpc(
        &service.cluster,
        rls::SERVICE,
        rls::METHOD,
        &message,
        service.timeout,
    )
    .map_err(|e| e.0)
}
