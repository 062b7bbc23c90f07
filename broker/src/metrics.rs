//! Prometheus metrics, rendered by hand in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

const COUNTERS: &[(&str, &str)] = &[
    (
        "lookergate_broker_token_requests_total",
        "Token requests answered, by result",
    ),
    (
        "lookergate_broker_cache_hits_total",
        "Token requests served from the cache (including joined single-flight logins)",
    ),
    (
        "lookergate_broker_cache_misses_total",
        "Token requests that needed a Looker login",
    ),
    (
        "lookergate_broker_looker_logins_total",
        "Looker login attempts, by identity kind and result",
    ),
    (
        "lookergate_broker_errors_total",
        "Error answers, by error code",
    ),
    (
        "lookergate_broker_config_reloads_total",
        "Config reloads, by result",
    ),
    (
        "lookergate_broker_rotations_total",
        "API3 key rotations, by result",
    ),
];

const HISTOGRAMS: &[(&str, &str)] = &[
    (
        "lookergate_broker_looker_login_duration_seconds",
        "Time for one Looker login including retries",
    ),
    (
        "lookergate_broker_token_request_duration_seconds",
        "Time to answer /v1/token",
    ),
];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    counters: BTreeMap<(&'static str, String), u64>,
    histograms: BTreeMap<&'static str, Histogram>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner)
    }

    /// Increments `name` with labels given as `[(key, value)]`.
    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
        self.with(|i| *i.counters.entry((name, labels)).or_insert(0) += 1);
    }

    pub fn observe(&self, name: &'static str, d: Duration) {
        let secs = d.as_secs_f64();
        self.with(|i| {
            let h = i.histograms.entry(name).or_default();
            if h.counts.len() != BUCKETS.len() {
                h.counts = vec![0; BUCKETS.len()];
            }
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter_mut()) {
                if secs <= *bound {
                    *count += 1;
                }
            }
            h.sum += secs;
            h.count += 1;
        });
    }

    pub fn render(&self) -> String {
        let (counters, histograms) = self.with(|i| (i.counters.clone(), i.histograms.clone()));
        let mut out = String::new();
        for (name, help) in COUNTERS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let series: Vec<_> = counters.iter().filter(|((n, _), _)| n == name).collect();
            if series.is_empty() {
                let _ = writeln!(out, "{name} 0");
            }
            for ((_, labels), value) in series {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        for (name, help) in HISTOGRAMS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            let h = histograms.get(name).cloned().unwrap_or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{le=\"{bound}\"}} {}",
                    h.counts.get(i).copied().unwrap_or(0)
                );
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum {}", h.sum);
            let _ = writeln!(out, "{name}_count {}", h.count);
        }
        out
    }

    /// Current value of one counter series (tests and readiness details).
    pub fn counter(&self, name: &str, labels: &str) -> u64 {
        self.with(|i| {
            i.counters
                .iter()
                .find(|((n, l), _)| *n == name && l == labels)
                .map_or(0, |(_, v)| *v)
        })
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.inc(
            "lookergate_broker_errors_total",
            &[("code", "unauthorized")],
        );
        m.inc(
            "lookergate_broker_errors_total",
            &[("code", "unauthorized")],
        );
        m.observe(
            "lookergate_broker_looker_login_duration_seconds",
            Duration::from_millis(30),
        );
        let text = m.render();
        assert!(
            text.contains("lookergate_broker_errors_total{code=\"unauthorized\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lookergate_broker_cache_hits_total 0"),
            "{text}"
        );
        assert!(
            text.contains("lookergate_broker_looker_login_duration_seconds_bucket{le=\"0.025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("lookergate_broker_looker_login_duration_seconds_bucket{le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lookergate_broker_looker_login_duration_seconds_count 1"),
            "{text}"
        );
    }
}
