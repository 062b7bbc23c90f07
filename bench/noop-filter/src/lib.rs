//! The Wasm floor: a proxy-wasm HTTP filter that creates an HTTP context per request
//! and continues at once. What Envoy pays for any Wasm filter, with no work of ours.
//!
//! With a plugin configuration other than `{}` it is also the hostcall probe of
//! `make bench` (`bench/bench.py`, "what the hostcalls cost"): a comma-separated list of
//! the hostcalls lookergate makes per request, made here with no other work, so the
//! price of each is measured apart from our code:
//! `pairs` (the request header block), `time`, `auth` (set the `authorization` header),
//! `metric` (one counter increment), `prop` (one `set_property`), `status` (read
//! `:status` of the response). A name may repeat (`prop,prop,prop`).

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(NoopRoot { ops: Rc::new(Ops::default()) })
    });
}}

#[derive(Default)]
struct Ops {
    pairs: Cell<u32>,
    time: Cell<u32>,
    auth: Cell<u32>,
    metric: Cell<u32>,
    prop: Cell<u32>,
    status: Cell<u32>,
    metric_id: Cell<u32>,
}

struct NoopRoot {
    ops: Rc<Ops>,
}

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        let config = self
            .get_plugin_configuration()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_default();
        let _ = size;
        for op in config.split(',').map(str::trim) {
            let counter = match op {
                "pairs" => &self.ops.pairs,
                "time" => &self.ops.time,
                "auth" => &self.ops.auth,
                "metric" => &self.ops.metric,
                "prop" => &self.ops.prop,
                "status" => &self.ops.status,
                _ => continue, // "{}" and anything else: the plain floor
            };
            counter.set(counter.get() + 1);
        }
        if let Ok(id) = hostcalls::define_metric(MetricType::Counter, "noop.requests") {
            self.ops.metric_id.set(id);
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopStream {
            ops: Rc::clone(&self.ops),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NoopStream {
    ops: Rc<Ops>,
}

impl Context for NoopStream {}

impl HttpContext for NoopStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let ops = &self.ops;
        for _ in 0..ops.pairs.get() {
            let _ = hostcalls::get_map_bytes(proxy_wasm::types::MapType::HttpRequestHeaders);
        }
        for _ in 0..ops.time.get() {
            let _ = hostcalls::get_current_time();
        }
        for _ in 0..ops.auth.get() {
            let _ = hostcalls::set_map_value(
                proxy_wasm::types::MapType::HttpRequestHeaders,
                "authorization",
                Some("token 0123456789abcdef0123456789abcdef"),
            );
        }
        for _ in 0..ops.metric.get() {
            let _ = hostcalls::increment_metric(ops.metric_id.get(), 1);
        }
        for i in 0..ops.prop.get() {
            let name = [
                "noop_a", "noop_b", "noop_c", "noop_d", "noop_e", "noop_f", "noop_g",
            ];
            let _ = hostcalls::set_property(
                vec![name
                    .get(i as usize % name.len())
                    .copied()
                    .unwrap_or("noop_a")],
                Some(b"some-audit-value"),
            );
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for _ in 0..self.ops.status.get() {
            let _ = hostcalls::get_map_value(
                proxy_wasm::types::MapType::HttpResponseHeaders,
                ":status",
            );
        }
        Action::Continue
    }
}
