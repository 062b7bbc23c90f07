//! lookergate's global rate limit service: Envoy's RLS v3 (`ShouldRateLimit`) on
//! Kuadrant's limitador, counters in Redis (shared by every replica) or in memory.
//!
//! The caller's policy is the single source of truth: each descriptor carries its limit
//! in its `limit` override. A limit is registered with limitador the first time it is
//! seen (namespace = the request's domain; one counter per value of the descriptor's
//! entries) and remembered. See README.md for the design.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use limitador::counter::Counter;
use limitador::errors::LimitadorError;
use limitador::limit::{Context, Expression, Limit, Namespace, Predicate};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::{AsyncRateLimiter, CheckResult, RateLimiter};
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

pub mod metrics;

use metrics::Metrics;

/// The context variable every limit's condition compares with its own signature, so
/// that a limit applies only to descriptors that carry exactly that limit.
const SIGNATURE_VARIABLE: &str = "lookergate_limit";

/// Where the counters live.
pub enum Counters {
    /// One process only: tests and a single gateway.
    Memory(RateLimiter),
    /// Shared by every replica of the service; each check is one Redis script call.
    Redis(RedisCounters),
}

/// The Redis limiter and how to make it again: after a storage error the next call
/// reconnects with a fresh connection (redis' connection manager can stay stuck in its
/// reconnect backoff after Redis restarts), carrying the registered limits over.
pub struct RedisCounters {
    url: String,
    limiter: Mutex<Arc<AsyncRateLimiter>>,
    broken: std::sync::atomic::AtomicBool,
}

impl RedisCounters {
    fn current(&self) -> Option<Arc<AsyncRateLimiter>> {
        self.limiter.lock().ok().map(|l| Arc::clone(&l))
    }

    /// A fresh connection with the limits of the current limiter; `false` if Redis
    /// cannot be reached yet.
    async fn reconnect(&self) -> bool {
        let Ok(storage) = AsyncRedisStorage::new(&self.url).await else {
            return false;
        };
        let fresh = AsyncRateLimiter::new_with_storage(Box::new(storage));
        let Some(old) = self.current() else {
            return false;
        };
        for namespace in old.get_namespaces() {
            for limit in old.get_limits(&namespace) {
                fresh.add_limit(limit);
            }
        }
        if let Ok(mut current) = self.limiter.lock() {
            *current = Arc::new(fresh);
        }
        self.broken
            .store(false, std::sync::atomic::Ordering::Relaxed);
        true
    }
}

impl Counters {
    pub fn memory() -> Counters {
        Counters::Memory(RateLimiter::new(10_000))
    }

    /// Connects to Redis (`redis://host:port`); fails if it cannot be reached now.
    /// Later outages are answered per call (UNAVAILABLE) and healed by reconnecting.
    pub async fn redis(url: &str) -> Result<Counters, String> {
        let storage = AsyncRedisStorage::new(url)
            .await
            .map_err(|e| format!("cannot connect to Redis: {e}"))?;
        Ok(Counters::Redis(RedisCounters {
            url: url.to_owned(),
            limiter: Mutex::new(Arc::new(AsyncRateLimiter::new_with_storage(Box::new(
                storage,
            )))),
            broken: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    fn add_limit(&self, limit: Limit) {
        match self {
            Counters::Memory(limiter) => limiter.add_limit(limit),
            Counters::Redis(redis) => redis.current().is_some_and(|l| l.add_limit(limit)),
        };
    }

    async fn check(
        &self,
        namespace: &Namespace,
        ctx: &Context<'_>,
        delta: u64,
        consume: bool,
    ) -> Result<CheckResult, CheckError> {
        let result = match (self, consume) {
            (Counters::Memory(l), true) => l.check_rate_limited_and_update(namespace, ctx, delta),
            (Counters::Memory(l), false) => l.is_rate_limited(namespace, ctx, delta),
            (Counters::Redis(redis), consume) => {
                use std::sync::atomic::Ordering;
                if redis.broken.load(Ordering::Relaxed) && !redis.reconnect().await {
                    return Err(CheckError::Unavailable("Redis unreachable".into()));
                }
                let Some(l) = redis.current() else {
                    return Err(CheckError::Internal("limiter lock poisoned".into()));
                };
                let result = if consume {
                    l.check_rate_limited_and_update(namespace, ctx, delta).await
                } else {
                    l.is_rate_limited(namespace, ctx, delta).await
                };
                if matches!(result, Err(LimitadorError::StorageError(_))) {
                    redis.broken.store(true, Ordering::Relaxed);
                }
                result
            }
        };
        result.map_err(|e| match e {
            LimitadorError::StorageError(e) => CheckError::Unavailable(e.to_string()),
            e => CheckError::Internal(e.to_string()),
        })
    }

    /// A call that did not answer in time: reconnect before the next one.
    fn mark_broken(&self) {
        if let Counters::Redis(redis) = self {
            redis
                .broken
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Why a request got no answer from the counters.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("counter storage unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<CheckError> for Status {
    fn from(e: CheckError) -> Status {
        match e {
            CheckError::Invalid(m) => Status::invalid_argument(m),
            CheckError::Unavailable(m) => Status::unavailable(m),
            CheckError::Internal(m) => Status::internal(m),
        }
    }
}

/// The RLS: limitador counters plus the limits registered so far.
pub struct RateLimitServer {
    counters: Counters,
    /// Signatures of the limits already registered with limitador.
    registered: Mutex<HashSet<String>>,
    /// How long one descriptor's counter call may take before the answer is UNAVAILABLE.
    storage_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// One descriptor, validated: its limit, its entries and how many hits it adds.
struct Checked {
    signature: String,
    entries: HashMap<String, String>,
    requests_per_unit: u32,
    unit: Unit,
    hits: u64,
}

impl RateLimitServer {
    pub fn new(counters: Counters, storage_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        RateLimitServer {
            counters,
            registered: Mutex::new(HashSet::new()),
            storage_timeout,
            metrics,
        }
    }

    /// The gRPC service to mount on a tonic server.
    pub fn into_service(self) -> RateLimitServiceServer<RateLimitServer> {
        RateLimitServiceServer::new(self)
    }

    /// Answers one `ShouldRateLimit`: each descriptor with a limit is counted (in order);
    /// once one is over its limit, the rest are only read, so a refused request does not
    /// use up the other budgets.
    pub async fn decide(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, CheckError> {
        if request.domain.is_empty() {
            return Err(CheckError::Invalid("domain is empty".into()));
        }
        let namespace = Namespace::from(request.domain.as_str());
        let default_hits = u64::from(request.hits_addend.max(1));
        let mut statuses = Vec::with_capacity(request.descriptors.len());
        let mut over = false;
        for descriptor in &request.descriptors {
            let Some(checked) = validate(descriptor, default_hits)? else {
                // No limit override: the caller's policy sets none, so nothing to count.
                statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                });
                continue;
            };
            self.register(&namespace, &checked)?;
            let mut ctx = Context::from(HashMap::from([(
                SIGNATURE_VARIABLE.to_owned(),
                checked.signature.clone(),
            )]));
            ctx.list_binding("descriptors".to_owned(), vec![checked.entries.clone()]);
            let check = self.counters.check(&namespace, &ctx, checked.hits, !over);
            let result = match tokio::time::timeout(self.storage_timeout, check).await {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    self.counters.mark_broken();
                    return Err(CheckError::Unavailable(format!(
                        "no answer within {:?}",
                        self.storage_timeout
                    )));
                }
            };
            over |= result.limited;
            statuses.push(status_of(&checked, &result));
        }
        let overall = if over { Code::OverLimit } else { Code::Ok };
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        })
    }

    /// Registers the descriptor's limit with limitador the first time it is seen.
    fn register(&self, namespace: &Namespace, checked: &Checked) -> Result<(), CheckError> {
        let mut registered = self
            .registered
            .lock()
            .map_err(|_| CheckError::Internal("limit registry poisoned".into()))?;
        if registered.contains(&checked.signature) {
            return Ok(());
        }
        let condition =
            Predicate::parse(format!("{SIGNATURE_VARIABLE} == \"{}\"", checked.signature))
                .map_err(|e| CheckError::Internal(format!("limit condition: {e}")))?;
        let mut variables = Vec::with_capacity(checked.entries.len());
        for key in checked.entries.keys() {
            let variable = Expression::parse(format!("descriptors[0][\"{key}\"]"))
                .map_err(|e| CheckError::Internal(format!("limit variable: {e}")))?;
            variables.push(variable);
        }
        let limit = Limit::new(
            namespace.as_ref(),
            u64::from(checked.requests_per_unit),
            unit_seconds(checked.unit),
            [condition],
            variables,
        );
        self.counters.add_limit(limit);
        self.metrics.limits_registered.inc();
        debug!(limit = %checked.signature, "registered limit");
        registered.insert(checked.signature.clone());
        Ok(())
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitServer {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        match self.decide(&request).await {
            Ok(response) => {
                let code = if response.overall_code == Code::OverLimit as i32 {
                    "over_limit"
                } else {
                    "ok"
                };
                self.metrics.count(code);
                Ok(Response::new(response))
            }
            Err(e) => {
                let code = match &e {
                    CheckError::Invalid(_) => "invalid",
                    CheckError::Unavailable(_) => "unavailable",
                    CheckError::Internal(_) => "internal",
                };
                self.metrics.count(code);
                warn!(domain = %request.domain, error = %e, "ShouldRateLimit failed");
                Err(e.into())
            }
        }
    }
}

/// The descriptor's limit and entries; `None` when it carries no limit override.
fn validate(
    descriptor: &RateLimitDescriptor,
    default_hits: u64,
) -> Result<Option<Checked>, CheckError> {
    let Some(limit) = &descriptor.limit else {
        return Ok(None);
    };
    if descriptor.is_negative_hits {
        return Err(CheckError::Invalid(
            "is_negative_hits is not supported".into(),
        ));
    }
    let unit = match RateLimitUnit::try_from(limit.unit) {
        Ok(RateLimitUnit::Second) => Unit::Second,
        Ok(RateLimitUnit::Minute) => Unit::Minute,
        Ok(RateLimitUnit::Hour) => Unit::Hour,
        Ok(RateLimitUnit::Day) => Unit::Day,
        _ => {
            return Err(CheckError::Invalid(format!(
                "limit unit {} is not supported (SECOND, MINUTE, HOUR, DAY)",
                limit.unit
            )))
        }
    };
    if descriptor.entries.is_empty() {
        return Err(CheckError::Invalid("a descriptor has no entries".into()));
    }
    let mut entries = HashMap::with_capacity(descriptor.entries.len());
    let mut keys = Vec::with_capacity(descriptor.entries.len());
    for entry in &descriptor.entries {
        // Keys go into CEL source (the limit's variables): only plain names.
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if entry.key.is_empty() || !entry.key.chars().all(plain) {
            return Err(CheckError::Invalid(format!(
                "descriptor key {:?} is not a plain name ([A-Za-z0-9_.-])",
                entry.key
            )));
        }
        if entries
            .insert(entry.key.clone(), entry.value.clone())
            .is_some()
        {
            return Err(CheckError::Invalid(format!(
                "descriptor key {:?} appears twice",
                entry.key
            )));
        }
        keys.push(entry.key.as_str());
    }
    keys.sort_unstable();
    let hits = match &descriptor.hits_addend {
        Some(h) if h.value > 0 => h.value,
        _ => default_hits,
    };
    Ok(Some(Checked {
        signature: format!(
            "{}/{}/{}",
            limit.requests_per_unit,
            unit_seconds(unit),
            keys.join(",")
        ),
        entries,
        requests_per_unit: limit.requests_per_unit,
        unit,
        hits,
    }))
}

fn unit_seconds(unit: Unit) -> u64 {
    match unit {
        Unit::Second => 1,
        Unit::Minute => 60,
        Unit::Hour => 3600,
        Unit::Day => 86_400,
        // Never built by `validate`.
        _ => 1,
    }
}

/// A descriptor's status from its (single) counter.
fn status_of(checked: &Checked, result: &CheckResult) -> DescriptorStatus {
    let counter: Option<&Counter> = result.counters.first();
    let remaining = counter
        .and_then(Counter::remaining)
        .unwrap_or(u64::from(checked.requests_per_unit));
    let reset = counter
        .and_then(Counter::expires_in)
        .unwrap_or(Duration::from_secs(unit_seconds(checked.unit)));
    DescriptorStatus {
        code: if result.limited {
            Code::OverLimit as i32
        } else {
            Code::Ok as i32
        },
        current_limit: Some(RateLimit {
            name: String::new(),
            requests_per_unit: checked.requests_per_unit,
            unit: checked.unit as i32,
        }),
        limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(ProtoDuration {
            seconds: i64::try_from(reset.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(reset.subsec_nanos()).unwrap_or(0),
        }),
        quota: None,
    }
}

/// Serves the RLS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: RateLimitServer,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), String> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .add_service(server.into_service())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| format!("gRPC server: {e}"))
}
