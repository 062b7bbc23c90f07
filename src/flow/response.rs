//! Looker's answer to a forwarded request.

use log::warn;

use super::Worker;
use crate::broker;
use crate::callout::Callout;
use crate::config::Gateway;
use crate::host::Host;
use crate::tokens::{shared_key, CachedToken};

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
    let Some(stream) = worker.streams.get_mut(&context_id) else {
        return;
    };
    let Some((identity, token)) = stream.forwarded.take() else {
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
    if worker.tokens.cached(&identity, host.now_ms()) == Some(token.as_str()) {
        worker.tokens.forget(&identity);
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
    let request = broker::invalidate_request(&gateway.broker, &identity);
    match super::call_broker(gateway, host, request) {
        Ok(callout) => {
            // Its answer is not read; the stream's end drops it if it never comes.
            worker.callouts.insert(callout, Callout::Invalidate);
            worker.stream(context_id).callouts.push(callout);
        }
        Err(_) => warn!(
            "lookergate[{context_id}] cannot ask the broker to invalidate the token of {}",
            identity.key()
        ),
    }
}
