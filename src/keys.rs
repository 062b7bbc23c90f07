//! Remote signing keys: fetch an issuer's JWKS (directly or through OIDC discovery)
//! through an Envoy cluster, share it with every worker through shared data, refresh
//! it on a timer, refetch at once (rate limited) when a token names an unknown `kid`,
//! and keep the last good keys when the IdP fails — up to a maximum staleness.
//!
//! Shared data (one copy per Envoy, seen by every worker's VM):
//! - `lookergate.jwks.v1.<issuer>` = `<fetched_at_ms>\n<jwks json>`; its CAS is the version
//! - `lookergate.jwks_lease.v1.<issuer>` = `<until_ms>`: the worker doing the timed refresh
//! - `lookergate.jwks_refetch.v1.<issuer>` = `<at_ms>`: last unknown-`kid` refetch

use std::collections::HashMap;
use std::time::Duration;

use log::{info, warn};
use serde::Deserialize;

use crate::callout::{Callout, Callouts};
use crate::config::{FetchUrl, Gateway, Issuer};
use crate::host::Host;
use crate::jwt::KeySet;
use crate::keyring::KeyRing;

/// Largest JWKS accepted: a real tenant's (Entra ID: ~10 RSA keys with `x5c`
/// certificate chains) is 15-25 KB; this leaves room for several times that.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Largest OIDC discovery document accepted (real ones are 2-10 KB).
pub const MAX_DISCOVERY_BYTES: usize = 64 * 1024;

/// An issuer's fetch in flight (its kind is in the worker's callouts).
#[derive(Debug, Clone)]
struct Fetch {
    callout: u32,
    started_ms: u64,
}

/// A request paused until its issuer's keys are refetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyWaiter {
    pub context_id: u32,
    pub deadline_ms: u64,
    /// The shared-keys version this worker had installed when the request parked: keys
    /// installed since (by any path) wake it.
    pub seen_version: Option<u32>,
}

/// One issuer's fetch state on this worker.
#[derive(Debug, Default)]
struct IssuerState {
    /// CAS of the shared record last installed here.
    installed_version: Option<u32>,
    fetched_at_ms: u64,
    fetch: Option<Fetch>,
    waiters: Vec<KeyWaiter>,
    /// Earliest time for the next timed refresh attempt by this worker.
    next_refresh_ms: u64,
    failures: u32,
    /// `jwks_uri` found by discovery.
    discovered: Option<FetchUrl>,
}

/// Per-worker keys: the verifiers in use, and the fetch state of each remote issuer.
#[derive(Debug, Default)]
pub struct KeyState {
    /// What this worker verifies tokens with (the decision reads it).
    pub ring: KeyRing,
    issuers: HashMap<String, IssuerState>,
}

/// What became of a fetch answer, for the caller to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Discovery answered; the JWKS fetch has been sent.
    Continuing,
    /// Done (fresh keys or not): these requests should be decided again.
    Done { waiters: Vec<KeyWaiter> },
}

#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

fn shared_key(kind: &str, issuer: &str) -> String {
    format!("lookergate.{kind}.v1.{issuer}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn parse_u64(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

impl KeyState {
    fn state(&mut self, issuer: &str) -> &mut IssuerState {
        self.issuers.entry(issuer.to_owned()).or_default()
    }

    /// Installs keys another worker (or an earlier VM) shared, if newer than ours,
    /// and drops keys older than the issuer's maximum staleness.
    /// Returns the requests that waited for keys another worker fetched: decide them again.
    pub fn sync<H: Host>(&mut self, gateway: &Gateway, host: &H, now_ms: u64) -> Vec<KeyWaiter> {
        let mut woken = Vec::new();
        for issuer in gateway.issuers.iter().filter(|i| i.remote.is_some()) {
            self.sync_one(issuer, host, now_ms);
            let state = self.state(&issuer.issuer);
            if state.fetch.is_none() {
                // Keys newer than a waiter saw: installed now, or earlier by a request
                // that found them shared (found by the soak: such waiters sat until their
                // deadline, ~4 s, at every key rotation).
                let version = state.installed_version;
                woken.extend(take_waiters(&mut state.waiters, |w| {
                    w.seen_version != version
                }));
            }
        }
        woken
    }

    /// Installs the issuer's shared keys if newer than this worker's; `true` if it did.
    pub fn pick_up_shared<H: Host>(
        &mut self,
        gateway: &Gateway,
        host: &H,
        issuer: &str,
        now_ms: u64,
    ) -> bool {
        match gateway
            .issuers
            .iter()
            .find(|i| i.issuer == issuer && i.remote.is_some())
        {
            Some(issuer) => self.sync_one(issuer, host, now_ms),
            None => false,
        }
    }

    fn sync_one<H: Host>(&mut self, issuer: &Issuer, host: &H, now_ms: u64) -> bool {
        let Some(remote) = &issuer.remote else {
            return false;
        };
        let state = self.issuers.entry(issuer.issuer.clone()).or_default();
        let (value, cas) = host.shared_get_versioned(&shared_key("jwks", &issuer.issuer));
        let mut installed = false;
        if let (Some(value), Some(cas)) = (value, cas) {
            if state.installed_version != Some(cas) {
                state.installed_version = Some(cas);
                if let Some((fetched_at_ms, keys)) = decode_record(&value) {
                    self.ring.install(issuer, keys);
                    state.fetched_at_ms = fetched_at_ms;
                    installed = true;
                }
            }
        }
        if self.ring.has(&issuer.issuer)
            && now_ms.saturating_sub(state.fetched_at_ms) > millis(remote.max_stale)
        {
            warn!("lookergate: keys of {} are older than jwks_max_stale; refusing its tokens until a fetch succeeds", issuer.issuer);
            self.ring.remove(&issuer.issuer);
        }
        installed
    }

    /// Timed refresh (root context): the worker that wins the shared lease fetches.
    /// Returns the requests to decide again (keys arrived from another worker).
    pub fn tick<H: Host>(
        &mut self,
        gateway: &Gateway,
        host: &H,
        callouts: &mut Callouts,
        root_context: u32,
        now_ms: u64,
    ) -> Vec<KeyWaiter> {
        let woken = self.sync(gateway, host, now_ms);
        for issuer in &gateway.issuers {
            let Some(remote) = &issuer.remote else {
                continue;
            };
            let has_keys = self.ring.has(&issuer.issuer);
            let state = self.state(&issuer.issuer);
            if let Some(fetch) = &state.fetch {
                // A fetch whose owner went away never answers: forget it after its timeout.
                if now_ms > fetch.started_ms + millis(remote.timeout) + 1000 {
                    callouts.remove(&fetch.callout);
                    state.fetch = None;
                } else {
                    continue;
                }
            }
            let due = if has_keys {
                state.fetched_at_ms + millis(remote.refresh)
            } else {
                0 // no keys: fetch as soon as allowed
            };
            if now_ms < due.max(state.next_refresh_ms) {
                continue;
            }
            if !take_lease(host, &issuer.issuer, now_ms, millis(remote.timeout) + 1000) {
                state.next_refresh_ms = now_ms + 1000; // another worker is on it; look again soon
                continue;
            }
            host.switch_to(root_context);
            self.start(issuer, host, callouts, now_ms);
        }
        woken
    }

    /// A token named a `kid` this issuer's keys lack: refetch now (rate limited across
    /// workers) and make the request wait for it. Returns `false` when the request
    /// should be refused instead (rate limited, or the fetch could not be sent).
    pub fn wait_for_unknown_kid<H: Host>(
        &mut self,
        gateway: &Gateway,
        host: &H,
        callouts: &mut Callouts,
        issuer_name: &str,
        context_id: u32,
        now_ms: u64,
    ) -> UnknownKid {
        let Some(issuer) = gateway.issuers.iter().find(|i| i.issuer == issuer_name) else {
            return UnknownKid::Refuse;
        };
        let Some(remote) = &issuer.remote else {
            return UnknownKid::Refuse;
        };
        // Another worker may already have fetched the rotated keys.
        if self.sync_one(issuer, host, now_ms) {
            return UnknownKid::Retry;
        }
        let deadline_ms = now_ms + millis(remote.timeout) + 1000;
        let state = self.state(&issuer.issuer);
        let seen_version = state.installed_version;
        if state.fetch.is_some() {
            state.waiters.push(KeyWaiter {
                context_id,
                deadline_ms,
                seen_version,
            });
            return UnknownKid::Wait;
        }
        match take_refetch_slot(
            host,
            &issuer.issuer,
            now_ms,
            millis(remote.unknown_kid_refetch),
        ) {
            RefetchSlot::Ours => {}
            // Another worker is refetching right now: wait for its keys (shared data,
            // picked up by this worker's tick) instead of refusing a rotated key.
            // Only while that refetch is still in flight: once its keys are shared
            // (fetched at or after it started) the kid is simply unknown.
            RefetchSlot::Busy { since_ms }
                if now_ms < since_ms + millis(remote.timeout) + 1000
                    && self.state(&issuer.issuer).fetched_at_ms < since_ms =>
            {
                let deadline_ms = since_ms + millis(remote.timeout) + 1000;
                self.state(&issuer.issuer).waiters.push(KeyWaiter {
                    context_id,
                    deadline_ms,
                    seen_version,
                });
                return UnknownKid::Wait;
            }
            RefetchSlot::Busy { .. } => return UnknownKid::Refuse,
        }
        host.count(
            &format!(
                "lookergate.jwks.unknown_kid_refetch.{}",
                metric_name(&issuer.issuer)
            ),
            1,
        );
        if self.start(issuer, host, callouts, now_ms) {
            self.state(&issuer.issuer).waiters.push(KeyWaiter {
                context_id,
                deadline_ms,
                seen_version,
            });
            UnknownKid::Wait
        } else {
            UnknownKid::Refuse
        }
    }

    /// Sends the next fetch for `issuer` from the current context.
    fn start<H: Host>(
        &mut self,
        issuer: &Issuer,
        host: &H,
        callouts: &mut Callouts,
        now_ms: u64,
    ) -> bool {
        let Some(remote) = &issuer.remote else {
            return false;
        };
        let state = self.state(&issuer.issuer);
        let name = issuer.issuer.clone();
        let (url, kind) = match (&remote.jwks_url, &state.discovered, &remote.discovery_url) {
            (Some(url), _, _) | (None, Some(url), _) => (url.clone(), Callout::Keys(name)),
            (None, None, Some(discovery)) => (discovery.clone(), Callout::Discovery(name)),
            (None, None, None) => return false,
        };
        match dispatch(host, &remote.cluster, &url, remote.timeout) {
            Some(callout) => {
                state.fetch = Some(Fetch {
                    callout,
                    started_ms: now_ms,
                });
                callouts.insert(callout, kind);
                true
            }
            None => {
                warn!(
                    "lookergate: cannot send the key fetch for {} through cluster {:?}",
                    issuer.issuer, remote.cluster
                );
                backoff(state, remote.refresh, now_ms);
                false
            }
        }
    }

    /// The issuer whose fetch `callout` answers, with its fetch taken out of flight.
    fn answered<'g>(
        &mut self,
        gateway: &'g Gateway,
        issuer: &str,
        callout: u32,
    ) -> Option<&'g Issuer> {
        let issuer = gateway
            .issuers
            .iter()
            .find(|i| i.issuer == issuer && i.remote.is_some())?;
        let state = self.issuers.get_mut(issuer.issuer.as_str())?;
        // Only the fetch in flight: one forgotten at its timeout has left the callouts.
        if state.fetch.as_ref().map(|f| f.callout) != Some(callout) {
            return None;
        }
        state.fetch = None;
        Some(issuer)
    }

    /// The discovery document of `issuer` arrived (status `None`: no answer): send the
    /// JWKS fetch it names.
    #[allow(clippy::too_many_arguments)]
    pub fn on_discovery<H: Host>(
        &mut self,
        gateway: &Gateway,
        host: &H,
        callouts: &mut Callouts,
        issuer: &str,
        callout: u32,
        status: Option<u32>,
        body: &[u8],
        now_ms: u64,
    ) -> FetchOutcome {
        let Some(issuer) = self.answered(gateway, issuer, callout) else {
            return FetchOutcome::Done { waiters: vec![] };
        };
        let result = ok_body(status, body, MAX_DISCOVERY_BYTES).and_then(|body| {
            serde_json::from_slice::<Discovery>(body)
                .map_err(|_| "the discovery document has no jwks_uri".to_owned())
                .and_then(|d| FetchUrl::parse(&d.jwks_uri))
        });
        let result = match result {
            Ok(url) => {
                self.state(&issuer.issuer).discovered = Some(url);
                if self.start(issuer, host, callouts, now_ms) {
                    return FetchOutcome::Continuing;
                }
                Err("cannot send the JWKS fetch".to_owned())
            }
            Err(e) => Err(e),
        };
        self.finish(issuer, host, result, now_ms)
    }

    /// The JWKS of `issuer` arrived (status `None`: no answer): install and share it.
    #[allow(clippy::too_many_arguments)]
    pub fn on_jwks<H: Host>(
        &mut self,
        gateway: &Gateway,
        host: &H,
        issuer: &str,
        callout: u32,
        status: Option<u32>,
        body: &[u8],
        now_ms: u64,
    ) -> FetchOutcome {
        let Some(issuer) = self.answered(gateway, issuer, callout) else {
            return FetchOutcome::Done { waiters: vec![] };
        };
        let result = ok_body(status, body, MAX_JWKS_BYTES).and_then(|body| {
            let (keys, skipped) = serde_json::from_slice::<serde_json::Value>(body)
                .map_err(|_| "the JWKS is not JSON".to_owned())
                .and_then(|v| KeySet::from_jwks(&v).map_err(|e| e.to_string()))?;
            for w in &skipped {
                warn!("lookergate: JWKS of {}: {w}", issuer.issuer);
            }
            let count = keys.len();
            let mut record = format!("{now_ms}\n").into_bytes();
            record.extend_from_slice(body);
            if let Err(e) = host.shared_set(&shared_key("jwks", &issuer.issuer), &record) {
                warn!(
                    "lookergate: cannot share the keys of {}: {}",
                    issuer.issuer, e.0
                );
            }
            let (_, cas) = host.shared_get_versioned(&shared_key("jwks", &issuer.issuer));
            self.ring.install(issuer, keys);
            let state = self.state(&issuer.issuer);
            state.installed_version = cas;
            state.fetched_at_ms = now_ms;
            state.failures = 0;
            state.next_refresh_ms = 0;
            let metric = metric_name(&issuer.issuer);
            host.observe(&format!("lookergate.jwks.keys.{metric}"), count as u64);
            info!(
                "lookergate: fetched {count} signing key(s) of {}",
                issuer.issuer
            );
            Ok(())
        });
        self.finish(issuer, host, result, now_ms)
    }

    /// A fetch ended (fresh keys or not): count it, back off on failure, and hand back
    /// the requests that waited for it.
    fn finish<H: Host>(
        &mut self,
        issuer: &Issuer,
        host: &H,
        result: Result<(), String>,
        now_ms: u64,
    ) -> FetchOutcome {
        let metric = metric_name(&issuer.issuer);
        let state = self.state(&issuer.issuer);
        match result {
            Ok(()) => host.count(&format!("lookergate.jwks.fetch_ok.{metric}"), 1),
            Err(reason) => {
                // Keep the last good keys; try again with backoff.
                warn!(
                    "lookergate: key fetch for {} failed: {reason}; keeping the last good keys",
                    issuer.issuer
                );
                host.count(&format!("lookergate.jwks.fetch_failed.{metric}"), 1);
                if let Some(remote) = &issuer.remote {
                    backoff(state, remote.refresh, now_ms);
                }
            }
        }
        FetchOutcome::Done {
            waiters: std::mem::take(&mut state.waiters),
        }
    }

    /// A request context ends: it stops waiting for keys.
    pub fn leave(&mut self, context_id: u32) {
        for state in self.issuers.values_mut() {
            state.waiters.retain(|w| w.context_id != context_id);
        }
    }

    /// Removes and returns the key waiters whose deadline has passed.
    pub fn overdue(&mut self, now_ms: u64) -> Vec<KeyWaiter> {
        let mut late = Vec::new();
        for state in self.issuers.values_mut() {
            late.extend(take_waiters(&mut state.waiters, |w| {
                w.deadline_ms <= now_ms
            }));
        }
        late
    }
}

/// The body of a 200 answer within `bound`, or why there is none.
fn ok_body(status: Option<u32>, body: &[u8], bound: usize) -> Result<&[u8], String> {
    match status {
        Some(200) if body.len() <= bound => Ok(body),
        Some(200) => Err(format!("the IdP's document exceeds {bound} bytes")),
        Some(status) => Err(format!("the IdP answered {status}")),
        None => Err("the IdP answered nothing (timeout or reset)".to_owned()),
    }
}

/// Removes and returns the waiters `pick` selects, keeping the others in order.
fn take_waiters(waiters: &mut Vec<KeyWaiter>, pick: impl Fn(&KeyWaiter) -> bool) -> Vec<KeyWaiter> {
    let (taken, kept) = waiters.drain(..).partition(|w| pick(w));
    *waiters = kept;
    taken
}

/// What to do with a request whose token names an unknown `kid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKid {
    /// Newer keys were installed: decide again now.
    Retry,
    /// A refetch is under way: the request waits for it.
    Wait,
    /// Refuse with 401 `unknown_kid`.
    Refuse,
}

fn backoff(state: &mut IssuerState, refresh: Duration, now_ms: u64) {
    state.failures = state.failures.saturating_add(1);
    let delay = 1000u64
        .saturating_mul(1 << state.failures.min(10))
        .min(millis(refresh));
    state.next_refresh_ms = now_ms + delay;
}

fn decode_record(value: &[u8]) -> Option<(u64, KeySet)> {
    let split = value.iter().position(|b| *b == b'\n')?;
    let fetched_at_ms = parse_u64(value.get(..split)?)?;
    let jwks: serde_json::Value = serde_json::from_slice(value.get(split + 1..)?).ok()?;
    let (keys, _) = KeySet::from_jwks(&jwks).ok()?;
    Some((fetched_at_ms, keys))
}

fn take_lease<H: Host>(host: &H, issuer: &str, now_ms: u64, hold_ms: u64) -> bool {
    let key = shared_key("jwks_lease", issuer);
    let (value, cas) = host.shared_get_versioned(&key);
    if value
        .as_deref()
        .and_then(parse_u64)
        .is_some_and(|until| until > now_ms)
    {
        return false;
    }
    host.shared_set_if(&key, (now_ms + hold_ms).to_string().as_bytes(), cas)
}

/// Who may refetch an issuer's keys for an unknown `kid` now.
enum RefetchSlot {
    Ours,
    /// Taken at `since_ms` (by another worker, or too recently).
    Busy {
        since_ms: u64,
    },
}

fn take_refetch_slot<H: Host>(
    host: &H,
    issuer: &str,
    now_ms: u64,
    interval_ms: u64,
) -> RefetchSlot {
    let key = shared_key("jwks_refetch", issuer);
    let (value, cas) = host.shared_get_versioned(&key);
    if let Some(at) = value
        .as_deref()
        .and_then(parse_u64)
        .filter(|at| now_ms < at + interval_ms)
    {
        return RefetchSlot::Busy { since_ms: at };
    }
    if host.shared_set_if(&key, now_ms.to_string().as_bytes(), cas) {
        RefetchSlot::Ours
    } else {
        RefetchSlot::Busy { since_ms: now_ms } // another worker won the race just now
    }
}

fn dispatch<H: Host>(host: &H, cluster: &str, url: &FetchUrl, timeout: Duration) -> Option<u32> {
    let headers = [
        (":method", "GET".to_owned()),
        (":path", url.path.clone()),
        (":authority", url.authority.clone()),
        ("accept", "application/json".to_owned()),
    ];
    host.dispatch(cluster, &headers, b"", timeout).ok()
}

/// Issuer URL as a metric name segment.
pub(crate) fn metric_name(issuer: &str) -> String {
    issuer
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! Key fetching against the fake host: what was dispatched, what was shared, which
    //! keys each worker ends up verifying with.
    use super::*;
    use crate::host::fake::FakeHost;
    use crate::testkeys::{sign_rs256, TestIssuer};
    use serde_json::json;

    const ROOT: u32 = 1;
    const ISS: &str = "https://idp.test";

    /// One worker's (VM's) gateway: the issuer's keys come from `keys` (JSON fields of
    /// the issuer: `jwks_uri` or `discovery`, plus timings).
    fn gateway(keys: serde_json::Value) -> Gateway {
        let mut issuer = json!({"issuer": ISS, "audiences": ["looker-api"], "cluster": "idp"});
        for (name, value) in keys.as_object().unwrap() {
            issuer[name] = value.clone();
        }
        let config = json!({
            "issuers": [issuer],
            "policy": {"rules": [{"name": "all", "paths": ["/api/4.0/**"], "allow": {"role": "analyst"}}]},
            "broker": {"cluster": "lookergate_broker", "credential": "gateway-secret-0123456789"}
        });
        Gateway::load(config.to_string().as_bytes()).unwrap()
    }

    fn direct() -> Gateway {
        gateway(
            json!({"jwks_uri": "https://keys.idp.test/jwks", "jwks_timeout": "100ms", "jwks_refresh": "60s"}),
        )
    }

    fn host() -> FakeHost {
        let host = FakeHost::recording();
        host.set_clock_to_now();
        *host.clusters.borrow_mut() = Some(vec!["idp".to_owned()]);
        host
    }

    /// One worker's keys and the callouts they sent (the flow's worker holds both).
    #[derive(Default)]
    struct Worker {
        keys: KeyState,
        callouts: Callouts,
    }

    impl Worker {
        fn tick(&mut self, g: &Gateway, h: &FakeHost, root: u32, now: u64) -> Vec<KeyWaiter> {
            self.keys.tick(g, h, &mut self.callouts, root, now)
        }

        fn wait_for_unknown_kid(
            &mut self,
            g: &Gateway,
            h: &FakeHost,
            iss: &str,
            context_id: u32,
            now: u64,
        ) -> UnknownKid {
            self.keys
                .wait_for_unknown_kid(g, h, &mut self.callouts, iss, context_id, now)
        }

        fn pick_up_shared(&mut self, g: &Gateway, h: &FakeHost, iss: &str, now: u64) -> bool {
            self.keys.pick_up_shared(g, h, iss, now)
        }

        fn leave(&mut self, context_id: u32) {
            self.keys.leave(context_id)
        }

        fn overdue(&mut self, now: u64) -> Vec<KeyWaiter> {
            self.keys.overdue(now)
        }
    }

    /// Does the worker's key set for the issuer verify a token of `idp`?
    fn verifies(keys: &mut Worker, gateway: &Gateway, idp: &TestIssuer, host: &FakeHost) -> bool {
        let token = sign_rs256(idp, json!({"sub": "alice", "aud": "looker-api"}));
        keys.keys
            .ring
            .verify(&gateway.issuers[0], &token, host.now_ms.get() / 1000)
            .is_ok()
    }

    fn jwks_record(host: &FakeHost) -> Option<String> {
        let record = host
            .shared
            .borrow()
            .get(&shared_key("jwks", ISS))
            .cloned()?;
        Some(String::from_utf8(record).unwrap())
    }

    /// Answers the last callout as the IdP would, routed by its kind as the flow does,
    /// then returns the outcome.
    fn answer(
        keys: &mut Worker,
        gateway: &Gateway,
        host: &FakeHost,
        status: Option<u32>,
        body: &str,
    ) -> FetchOutcome {
        let callout = host.last_dispatched().unwrap().callout;
        let (body, now) = (body.as_bytes(), host.now_ms.get());
        match keys.callouts.remove(&callout) {
            Some(Callout::Discovery(iss)) => keys.keys.on_discovery(
                gateway,
                host,
                &mut keys.callouts,
                &iss,
                callout,
                status,
                body,
                now,
            ),
            Some(Callout::Keys(iss)) => keys
                .keys
                .on_jwks(gateway, host, &iss, callout, status, body, now),
            other => panic!("callout {callout} is not a key fetch: {other:?}"),
        }
    }

    #[test]
    fn discovery_is_fetched_first_then_the_jwks_it_names() {
        let (gateway, host, mut keys) = (
            gateway(json!({"discovery": true})),
            host(),
            Worker::default(),
        );
        let idp = TestIssuer::new();
        keys.tick(&gateway, &host, ROOT, host.now_ms.get());
        let discovery = host.last_dispatched().unwrap();
        assert_eq!(discovery.cluster, "idp");
        assert_eq!(discovery.context_id, ROOT);
        assert_eq!(discovery.header(":authority"), Some("idp.test"));
        assert_eq!(
            discovery.header(":path"),
            Some("/.well-known/openid-configuration")
        );
        assert_eq!(
            keys.callouts.get(&discovery.callout),
            Some(&Callout::Discovery(ISS.into()))
        );

        let doc = json!({"issuer": ISS, "jwks_uri": "https://keys.idp.test/v1/jwks"}).to_string();
        assert_eq!(
            answer(&mut keys, &gateway, &host, Some(200), &doc),
            FetchOutcome::Continuing
        );
        let jwks = host.last_dispatched().unwrap();
        assert_eq!(jwks.cluster, "idp");
        assert_eq!(jwks.header(":authority"), Some("keys.idp.test"));
        assert_eq!(jwks.header(":path"), Some("/v1/jwks"));
        assert_eq!(
            keys.callouts.get(&jwks.callout),
            Some(&Callout::Keys(ISS.into()))
        );
        assert_eq!(keys.callouts.get(&discovery.callout), None, "answered");
        assert!(!keys.keys.ring.has(ISS));

        let outcome = answer(&mut keys, &gateway, &host, Some(200), &idp.jwks.to_string());
        assert_eq!(outcome, FetchOutcome::Done { waiters: vec![] });
        assert!(verifies(&mut keys, &gateway, &idp, &host));
        let record = jwks_record(&host).unwrap();
        assert_eq!(
            record.split_once('\n').map(|(at, _)| at.to_owned()),
            Some(host.now_ms.get().to_string()),
            "shared with its fetch time"
        );
        assert_eq!(
            host.counters.borrow()["lookergate.jwks.fetch_ok.idp_test"],
            1
        );
        assert_eq!(
            host.observed.borrow()["lookergate.jwks.keys.idp_test"],
            vec![1]
        );
        assert_eq!(host.dispatched.borrow().len(), 2);
        // The discovered URL is remembered: the next refresh goes straight to the JWKS.
        host.now_ms.set(host.now_ms.get() + 600_000);
        keys.tick(&gateway, &host, ROOT, host.now_ms.get());
        assert_eq!(
            host.last_dispatched().unwrap().header(":path"),
            Some("/v1/jwks")
        );
    }

    #[test]
    fn answers_over_their_bound_are_refused() {
        let idp = TestIssuer::new();
        // JSON may end in whitespace: pad a valid document to exactly `len` bytes.
        let padded = |doc: String, len: usize| format!("{doc}{}", " ".repeat(len - doc.len()));
        let jwks = idp.jwks.to_string();
        for (len, accepted) in [(MAX_JWKS_BYTES, true), (MAX_JWKS_BYTES + 1, false)] {
            let (gateway, host, mut keys) = (direct(), host(), Worker::default());
            keys.tick(&gateway, &host, ROOT, host.now_ms.get());
            answer(
                &mut keys,
                &gateway,
                &host,
                Some(200),
                &padded(jwks.clone(), len),
            );
            assert_eq!(
                verifies(&mut keys, &gateway, &idp, &host),
                accepted,
                "JWKS of {len} bytes"
            );
            assert_eq!(
                jwks_record(&host).is_some(),
                accepted,
                "JWKS of {len} bytes"
            );
            let failed = host
                .counters
                .borrow()
                .get("lookergate.jwks.fetch_failed.idp_test")
                .copied();
            assert_eq!(failed, (!accepted).then_some(1), "JWKS of {len} bytes");
        }
        let doc = json!({"jwks_uri": "https://keys.idp.test/jwks"}).to_string();
        for (len, accepted) in [
            (MAX_DISCOVERY_BYTES, true),
            (MAX_DISCOVERY_BYTES + 1, false),
        ] {
            let (gateway, host, mut keys) = (
                gateway(json!({"discovery": true})),
                host(),
                Worker::default(),
            );
            keys.tick(&gateway, &host, ROOT, host.now_ms.get());
            let outcome = answer(
                &mut keys,
                &gateway,
                &host,
                Some(200),
                &padded(doc.clone(), len),
            );
            let jwks_sent = host.dispatched.borrow().len() == 2;
            assert_eq!(jwks_sent, accepted, "discovery document of {len} bytes");
            assert_eq!(outcome == FetchOutcome::Continuing, accepted, "{len} bytes");
        }
    }

    #[test]
    fn failed_fetches_back_off_doubling_up_to_the_refresh_interval() {
        let (gateway, host, mut keys) = (direct(), host(), Worker::default());
        let idp = TestIssuer::new();
        keys.tick(&gateway, &host, ROOT, host.now_ms.get());
        let mut sent = 1;
        // jwks_refresh is 60s: 2s, 4s, ... then capped at 60s.
        for delay in [2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000] {
            answer(&mut keys, &gateway, &host, Some(503), "");
            let failed_at = host.now_ms.get();
            keys.tick(&gateway, &host, ROOT, failed_at + delay - 1);
            assert_eq!(
                host.dispatched.borrow().len(),
                sent,
                "not before {delay} ms"
            );
            host.now_ms.set(failed_at + delay);
            keys.tick(&gateway, &host, ROOT, host.now_ms.get());
            sent += 1;
            assert_eq!(
                host.dispatched.borrow().len(),
                sent,
                "again after {delay} ms"
            );
        }
        // Success resets the backoff: the next failure waits 2s again.
        answer(&mut keys, &gateway, &host, Some(200), &idp.jwks.to_string());
        assert!(verifies(&mut keys, &gateway, &idp, &host));
        host.now_ms.set(host.now_ms.get() + 60_000);
        keys.tick(&gateway, &host, ROOT, host.now_ms.get());
        assert_eq!(host.dispatched.borrow().len(), sent + 1, "timed refresh");
        answer(&mut keys, &gateway, &host, None, "");
        assert!(
            verifies(&mut keys, &gateway, &idp, &host),
            "the last good keys stay"
        );
        keys.tick(&gateway, &host, ROOT, host.now_ms.get() + 2_000);
        assert_eq!(host.dispatched.borrow().len(), sent + 2);
        assert_eq!(
            host.counters.borrow()["lookergate.jwks.fetch_failed.idp_test"],
            8
        );
    }

    #[test]
    fn keys_another_worker_shared_are_installed_without_a_fetch() {
        let host = host();
        let (gateway_a, mut a) = (direct(), Worker::default());
        let (gateway_b, mut b) = (direct(), Worker::default());
        let (idp, rotated) = (TestIssuer::new(), TestIssuer::rotated());
        a.tick(&gateway_a, &host, ROOT, host.now_ms.get());
        answer(&mut a, &gateway_a, &host, Some(200), &idp.jwks.to_string());
        assert!(b
            .tick(&gateway_b, &host, ROOT, host.now_ms.get())
            .is_empty());
        assert!(verifies(&mut b, &gateway_b, &idp, &host), "B took A's keys");
        assert_eq!(host.dispatched.borrow().len(), 1, "B fetched nothing");
        assert!(
            !b.pick_up_shared(&gateway_b, &host, ISS, host.now_ms.get()),
            "nothing newer"
        );

        // A refetches the rotated set; B, seeing the new kid, takes it instead of fetching.
        host.now_ms.set(host.now_ms.get() + 60_000);
        a.tick(&gateway_a, &host, ROOT, host.now_ms.get());
        answer(
            &mut a,
            &gateway_a,
            &host,
            Some(200),
            &rotated.jwks.to_string(),
        );
        let now = host.now_ms.get();
        assert_eq!(
            b.wait_for_unknown_kid(&gateway_b, &host, ISS, 20, now),
            UnknownKid::Retry
        );
        assert!(verifies(&mut b, &gateway_b, &rotated, &host));
        assert!(!verifies(&mut b, &gateway_b, &idp, &host));
        assert_eq!(host.dispatched.borrow().len(), 2, "still only A's fetches");
    }

    #[test]
    fn an_unknown_kid_refetches_once_and_overdue_waiters_are_handed_back() {
        let (gateway, host, mut keys) = (direct(), host(), Worker::default());
        let idp = TestIssuer::new();
        keys.tick(&gateway, &host, ROOT, host.now_ms.get());
        answer(&mut keys, &gateway, &host, Some(200), &idp.jwks.to_string());
        let now = host.now_ms.get() + 1_000;
        host.now_ms.set(now);
        assert_eq!(
            keys.wait_for_unknown_kid(&gateway, &host, ISS, 10, now),
            UnknownKid::Wait
        );
        assert_eq!(
            keys.wait_for_unknown_kid(&gateway, &host, ISS, 11, now),
            UnknownKid::Wait
        );
        assert_eq!(
            keys.wait_for_unknown_kid(&gateway, &host, ISS, 12, now),
            UnknownKid::Wait
        );
        assert_eq!(
            host.dispatched.borrow().len(),
            2,
            "one refetch for three requests"
        );
        assert_eq!(
            host.counters.borrow()["lookergate.jwks.unknown_kid_refetch.idp_test"],
            1
        );
        keys.leave(12);
        // Deadline: the fetch timeout (100ms) and a second of grace.
        assert!(keys.overdue(now + 1_099).is_empty());
        let late: Vec<u32> = keys
            .overdue(now + 1_100)
            .iter()
            .map(|w| w.context_id)
            .collect();
        assert_eq!(late, vec![10, 11]);
        assert!(keys.overdue(now + 5_000).is_empty(), "handed back once");
        // The answer comes late: nobody is left to wake.
        let outcome = answer(&mut keys, &gateway, &host, Some(200), &idp.jwks.to_string());
        assert_eq!(outcome, FetchOutcome::Done { waiters: vec![] });
        // Within unknown_kid_refetch (30s) another unknown kid is refused, not refetched.
        assert_eq!(
            keys.wait_for_unknown_kid(&gateway, &host, ISS, 13, now + 2_000),
            UnknownKid::Refuse
        );
        assert_eq!(host.dispatched.borrow().len(), 2);
    }
}
