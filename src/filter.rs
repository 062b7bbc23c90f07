//! The proxy-wasm glue: contexts that hand every callback to `flow` with the real host.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::config::Gateway;
use crate::flow::{self, Next, Worker};
use crate::host::{Host, ProxyHost};
use crate::jwt::{signature, Algorithm, ForeignCall, HostVerifier};

/// How often the root context re-sends orphaned broker calls and expires waiters.
const TICK: Duration = Duration::from_millis(500);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(GatewayRoot { context_id, gateway: None, worker: Rc::new(RefCell::new(Worker::default())) })
    });
}}

struct GatewayRoot {
    context_id: u32,
    gateway: Option<Rc<Gateway>>,
    /// Token cache and in-flight broker calls of this worker (one VM per worker).
    worker: Rc<RefCell<Worker>>,
}

impl Context for GatewayRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(gateway) = &self.gateway else { return };
        let mut worker = self.worker.borrow_mut();
        flow::on_http_call_answer(
            gateway,
            &mut worker,
            &ProxyHost,
            token_id,
            num_headers,
            body_size,
            self.context_id,
        );
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(gateway) = &self.gateway else { return };
        let mut worker = self.worker.borrow_mut();
        flow::on_grpc_call_answer(
            gateway,
            &mut worker,
            &ProxyHost,
            token_id,
            status_code,
            response_size,
            self.context_id,
        );
    }
}

impl RootContext for GatewayRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        info!(
            "lookergate: host signature verification for {:?}",
            install_host_crypto()
        );
        let bytes = match ProxyHost::plugin_configuration(plugin_configuration_size) {
            Some(bytes) => bytes,
            None => {
                error!("lookergate: invalid plugin configuration: it is empty (a JSON object is required)");
                return false;
            }
        };
        match Gateway::load(&bytes) {
            Ok(gateway) => {
                for warning in &gateway.warnings {
                    warn!("lookergate: {warning}");
                }
                // The broker credential appears only as its fingerprint.
                info!(
                    "lookergate {}: configured with {} issuer(s), {} rule(s), broker cluster {:?}, broker credential sha256:{}",
                    crate::VERSION,
                    gateway.issuers.len(),
                    gateway.policy.rules().len(),
                    gateway.broker.cluster,
                    crate::fingerprint(gateway.broker.credential.expose().as_bytes())
                );
                self.gateway = Some(Rc::new(gateway));
                // Operators see the running version in /stats: lookergate.version.<x_y_z>.
                ProxyHost.count(
                    &format!("lookergate.version.{}", crate::VERSION.replace('.', "_")),
                    1,
                );
                if !ProxyHost::set_tick_period(TICK) {
                    warn!("lookergate: cannot set the tick period; stuck broker calls rely on the callout timeout");
                }
                true
            }
            Err(e) => {
                error!("lookergate: invalid plugin configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(gateway) = &self.gateway else { return };
        let mut worker = self.worker.borrow_mut();
        flow::on_tick(gateway, &mut worker, &ProxyHost, self.context_id);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let gateway = self.gateway.clone()?;
        Some(Box::new(GatewayStream {
            context_id,
            gateway,
            worker: Rc::clone(&self.worker),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct GatewayStream {
    context_id: u32,
    gateway: Rc<Gateway>,
    worker: Rc<RefCell<Worker>>,
}

impl Context for GatewayStream {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let mut worker = self.worker.borrow_mut();
        flow::on_http_call_answer(
            &self.gateway,
            &mut worker,
            &ProxyHost,
            token_id,
            num_headers,
            body_size,
            self.context_id,
        );
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let mut worker = self.worker.borrow_mut();
        flow::on_grpc_call_answer(
            &self.gateway,
            &mut worker,
            &ProxyHost,
            token_id,
            status_code,
            response_size,
            self.context_id,
        );
    }

    fn on_done(&mut self) -> bool {
        self.worker.borrow_mut().leave(self.context_id);
        true
    }
}

impl HttpContext for GatewayStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let mut worker = self.worker.borrow_mut();
        let next = flow::on_request(
            &self.gateway,
            &mut worker,
            &ProxyHost,
            self.context_id,
            end_of_stream,
        );
        action(next)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let status = ProxyHost::response_status();
        let mut worker = self.worker.borrow_mut();
        flow::on_response(
            &self.gateway,
            &mut worker,
            &ProxyHost,
            self.context_id,
            status,
        );
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let mut worker = self.worker.borrow_mut();
        let next = flow::on_body(
            &self.gateway,
            &mut worker,
            &ProxyHost,
            self.context_id,
            body_size,
            end_of_stream,
        );
        action(next)
    }

    // Without this the SDK's default (`Continue`) would resume a request still paused
    // for its body, its issuer's keys or the broker: unchecked, with the client's JWT.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let mut worker = self.worker.borrow_mut();
        let next = flow::on_trailers(&self.gateway, &mut worker, &ProxyHost, self.context_id);
        action(next)
    }
}

/// Envoy's `verify_signature` foreign function (BoringSSL in the host), the fast path
/// for RSA and ECDSA signatures. Kept apart from [`Host`]: it serves `jwt`, not the flow.
struct EnvoyVerifySignature;

impl ForeignCall for EnvoyVerifySignature {
    fn call(&self, arguments: &[u8]) -> Option<Vec<u8>> {
        ProxyHost::call_foreign_function("verify_signature", arguments)
    }
}

/// Probes the host's signature verification once and, for the algorithms it gets
/// right, installs it for this VM (worker). Returns the algorithms now verified by the host.
fn install_host_crypto() -> Vec<Algorithm> {
    let verifier = HostVerifier::probe(EnvoyVerifySignature);
    let enabled = verifier.enabled().to_vec();
    if enabled.is_empty() {
        signature::uninstall();
    } else {
        signature::install(Rc::new(verifier));
    }
    enabled
}

fn action(next: Next) -> Action {
    match next {
        Next::Continue => Action::Continue,
        Next::Pause => Action::Pause,
    }
}
