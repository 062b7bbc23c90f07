//! Prometheus metrics (`prometheus-client`, OpenMetrics text at `/metrics`): counters end
//! in `_total`, durations are histograms in seconds, and `lookergate_broker_build_info`
//! carries the version.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// `result="ok"`, `"error"`, `"applied"`, ...
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// A Looker login: which kind of identity (`role`, `admin`, `sudo`) and how it went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

/// An error answer's code (`unauthorized`, `looker_unavailable`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

/// An embed endpoint call (`acquire`, `generate_tokens`, `logout`, `sso_url`) and how it
/// ended: `ok`, `joined` (acquire joined a live session), `ended` (Looker ended the
/// session), or the error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EmbedLabels {
    pub endpoint: &'static str,
    pub outcome: &'static str,
}

/// A shared store operation (`token_get`, `token_put`, `lock`, `invalidate`,
/// `credentials`, `heartbeat`, `subscribe`, `rotation`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// The shared store's counters (`[store]`), cloned into the token cache.
#[derive(Clone, Default)]
pub struct StoreMetrics {
    /// Local misses answered by a token in the shared store.
    pub hits: Counter,
    /// Local misses the shared store could not answer either (a login followed).
    pub misses: Counter,
    /// Requests that waited for another replica's (or request's) login lock.
    pub lock_waits: Counter,
    /// Failed store operations, by operation.
    pub errors: Family<OpLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The broker's metrics; each field is one metric family of the registry.
pub struct Metrics {
    registry: Registry,
    /// Token requests answered, by result.
    pub token_requests: Family<ResultLabel, Counter>,
    /// Token requests served from the cache (including joined single-flight logins).
    pub cache_hits: Counter,
    /// Token requests that needed a Looker login.
    pub cache_misses: Counter,
    /// Looker login attempts, by identity kind and result.
    pub looker_logins: Family<LoginLabels, Counter>,
    /// Error answers, by error code.
    pub errors: Family<CodeLabel, Counter>,
    /// Config reloads, by result.
    pub config_reloads: Family<ResultLabel, Counter>,
    /// API3 key rotations, by result.
    pub rotations: Family<ResultLabel, Counter>,
    /// Embed endpoint calls, by endpoint and outcome.
    pub embed_requests: Family<EmbedLabels, Counter>,
    /// Embed sessions the broker holds (live or not yet swept).
    pub embed_sessions: Gauge,
    /// Embed secret rotations, by result.
    pub embed_secret_rotations: Family<ResultLabel, Counter>,
    /// The shared store (`[store]`); zero without one.
    pub store: StoreMetrics,
    looker_login_duration: Histogram,
    token_request_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let buckets = || Histogram::new(BUCKETS);
        let mut m = Metrics {
            registry: Registry::with_prefix("lookergate_broker"),
            token_requests: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            looker_logins: Family::default(),
            errors: Family::default(),
            config_reloads: Family::default(),
            rotations: Family::default(),
            embed_requests: Family::default(),
            embed_sessions: Gauge::default(),
            embed_secret_rotations: Family::default(),
            store: StoreMetrics::default(),
            looker_login_duration: buckets(),
            token_request_duration: buckets(),
        };
        let r = &mut m.registry;
        // Handles share their values with the registry's clones (Arc inside).
        r.register(
            "build",
            "The broker's version",
            Info::new(BuildLabels {
                version: crate::VERSION,
            }),
        );
        r.register(
            "token_requests",
            "Token requests answered, by result",
            m.token_requests.clone(),
        );
        r.register(
            "cache_hits",
            "Token requests served from the cache (including joined single-flight logins)",
            m.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Token requests that needed a Looker login",
            m.cache_misses.clone(),
        );
        r.register(
            "looker_logins",
            "Looker login attempts, by identity kind and result",
            m.looker_logins.clone(),
        );
        r.register("errors", "Error answers, by error code", m.errors.clone());
        r.register(
            "config_reloads",
            "Config reloads, by result",
            m.config_reloads.clone(),
        );
        r.register(
            "rotations",
            "API3 key rotations, by result",
            m.rotations.clone(),
        );
        r.register(
            "embed_requests",
            "Embed endpoint calls, by endpoint and outcome",
            m.embed_requests.clone(),
        );
        r.register(
            "embed_sessions",
            "Embed sessions the broker holds",
            m.embed_sessions.clone(),
        );
        r.register(
            "embed_secret_rotations",
            "Embed secret rotations, by result",
            m.embed_secret_rotations.clone(),
        );
        r.register(
            "store_hits",
            "Local cache misses answered by the shared store",
            m.store.hits.clone(),
        );
        r.register(
            "store_misses",
            "Local cache misses the shared store could not answer",
            m.store.misses.clone(),
        );
        r.register(
            "store_lock_waits",
            "Token requests that waited for another replica's login",
            m.store.lock_waits.clone(),
        );
        r.register(
            "store_errors",
            "Failed shared store operations, by operation",
            m.store.errors.clone(),
        );
        r.register_with_unit(
            "looker_login_duration",
            "Time for one Looker login including retries",
            Unit::Seconds,
            m.looker_login_duration.clone(),
        );
        r.register_with_unit(
            "token_request_duration",
            "Time to answer /v1/token",
            Unit::Seconds,
            m.token_request_duration.clone(),
        );
        m
    }
}

impl Metrics {
    pub fn observe_looker_login(&self, d: Duration) {
        self.looker_login_duration.observe(d.as_secs_f64());
    }

    pub fn observe_token_request(&self, d: Duration) {
        self.token_request_duration.observe(d.as_secs_f64());
    }

    /// The OpenMetrics text exposition of every metric ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoding error would leave the text short.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_the_version() {
        let m = Metrics::default();
        let unauthorized = CodeLabel {
            code: "unauthorized",
        };
        m.errors.get_or_create(&unauthorized).inc();
        m.errors.get_or_create(&unauthorized).inc();
        m.looker_logins
            .get_or_create(&LoginLabels {
                kind: "role",
                result: "ok",
            })
            .inc();
        m.observe_looker_login(Duration::from_millis(30));
        let text = m.render();
        for line in [
            "lookergate_broker_errors_total{code=\"unauthorized\"} 2",
            "lookergate_broker_looker_logins_total{kind=\"role\",result=\"ok\"} 1",
            "lookergate_broker_cache_hits_total 0",
            "lookergate_broker_embed_sessions 0",
            "lookergate_broker_looker_login_duration_seconds_bucket{le=\"0.025\"} 0",
            "lookergate_broker_looker_login_duration_seconds_bucket{le=\"0.05\"} 1",
            "lookergate_broker_looker_login_duration_seconds_count 1",
            "# TYPE lookergate_broker_token_request_duration_seconds histogram",
            "lookergate_broker_token_request_duration_seconds_count 0",
            &format!(
                "lookergate_broker_build_info{{version=\"{}\"}} 1",
                crate::VERSION
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
