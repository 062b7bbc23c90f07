//! Prometheus metrics of the service (`--metrics-listen`): answers by code and the
//! number of limits registered.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Default)]
pub struct Metrics {
    /// `ShouldRateLimit` answers: ok, over_limit, unavailable, invalid, internal.
    pub answers: Family<CodeLabel, Counter>,
    pub limits_registered: Counter,
}

impl Metrics {
    pub fn count(&self, code: &'static str) {
        self.answers.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("lookergate_ratelimit");
        registry.register(
            "answers",
            "ShouldRateLimit answers by code",
            self.answers.clone(),
        );
        registry.register(
            "limits_registered",
            "Distinct limits registered with limitador",
            self.limits_registered.clone(),
        );
        registry
    }
}

/// The text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        text.clear();
    }
    text
}
