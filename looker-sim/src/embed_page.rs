//! The Looker UI side of embedding, as the Embed SDK's iframe sees it (docs/embed.md,
//! "Simulator"): `/login/embed/{target}` redeems a one-time authentication token (or,
//! for signed SSO URLs, checks the signature) and redirects to the target; `/embed/
//! dashboards/{id}` checks the navigation token (or the SSO session cookie) and returns a
//! small self-contained dashboard page that speaks the SDK's `@looker/chatty` protocol
//! with the embedding window; the page reads its rows from `/api/internal/embed/...`
//! with the session's API token, filtered by the embed user's `region` attribute
//! (row-level security, fail closed: no attribute, no rows).
//!
//! The simulator serves plain HTTP; in the demo an Envoy TLS listener sits in front of
//! these paths, as the SDK only loads `https://` iframes.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::api::{error_body, json_reply};
use crate::demo;
use crate::embed::EmbedSession;
use crate::operations::percent_decode;
use crate::state::SimState;

const LOGIN_PREFIX: &str = "/login/embed/";
/// The model every demo dashboard reads (`thelook`); an embed user needs it in `models`.
const DEMO_MODEL: &str = "thelook";
/// Reported to the SDK in `page:changed` (it parses the major and minor version).
const LOOKER_VERSION: &str = "25.20.0";

/// `GET /login/embed/{target}?embed_authentication_token=...`.
pub(crate) async fn login(State(state): State<SimState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let encoded = parts
        .uri
        .path()
        .strip_prefix(LOGIN_PREFIX)
        .unwrap_or_default();
    let target = percent_decode(encoded);
    if !is_embed_target(&target) {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad embed target",
            "the embed target must be a path under /embed/",
        );
    }
    let params = query_params(&parts);
    let Some(token) = param(&params, "embed_authentication_token") else {
        return crate::embed_sso::login(&state, &parts, &target, &params);
    };
    let redeemed = state
        .world()
        .embed
        .redeem_authentication(token, Instant::now())
        .map(|s| s.id);
    match redeemed {
        Some(id) => {
            eprintln!("looker-sim: embed session {id} logged in");
            redirect(&target)
        }
        None => session_not_started(),
    }
}

pub(crate) fn session_not_started() -> Response {
    page(
        StatusCode::UNAUTHORIZED,
        "Embed login failed",
        "embed session could not be started",
    )
}

/// A target the login may redirect to: a path under `/embed/` (no `..` to climb out),
/// nothing a header or a browser could read as another origin.
fn is_embed_target(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or_default();
    target.starts_with("/embed/")
        && !path.split('/').any(|segment| segment == "..")
        && target.chars().all(|c| c.is_ascii_graphic() && c != '\\')
}

pub(crate) fn redirect(target: &str) -> Response {
    match HeaderValue::from_str(target) {
        Ok(location) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, location),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                ),
            ],
        )
            .into_response(),
        Err(_) => page(StatusCode::BAD_REQUEST, "Bad embed target", "bad target"),
    }
}

/// `GET /embed/dashboards/{id}?embed_domain=<origin>&embed_navigation_token=...`.
pub(crate) async fn dashboard(State(state): State<SimState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let id = parts
        .uri
        .path()
        .strip_prefix("/embed/dashboards/")
        .unwrap_or_default()
        .to_owned();
    let params = query_params(&parts);
    let Some(embed_domain) = param(&params, "embed_domain").filter(|d| is_origin(d)) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad embed domain",
            "embed_domain must be the embedding page's origin",
        );
    };
    let now = Instant::now();
    let world = state.world();
    // A navigation token when the URL has one (cookieless), else the SSO cookie.
    let (session, token_source) = match param(&params, "embed_navigation_token") {
        Some(token) => (world.embed.by_navigation_token(token, now), "sdk"),
        None => (
            crate::embed_sso::cookie_session(&world.embed, &parts, now),
            "cookie",
        ),
    };
    let Some(session) = session else {
        return page(
            StatusCode::UNAUTHORIZED,
            "Embed session not valid",
            "embed navigation token is not valid; the embed session may have ended",
        );
    };
    let Some(title) = demo::dashboard(&id)
        .and_then(|d| d.get("title").and_then(Value::as_str).map(str::to_owned))
    else {
        return page(StatusCode::NOT_FOUND, "Not found", "no such dashboard");
    };
    // The page's URL as the SDK hears of it: without the navigation token.
    let shown: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "embed_navigation_token")
        .collect();
    let url = match serde_urlencoded::to_string(shown) {
        Ok(query) if !query.is_empty() => format!("{}?{query}", parts.uri.path()),
        _ => parts.uri.path().to_owned(),
    };
    dashboard_page(session, &id, &title, &url, embed_domain, token_source)
}

/// `scheme://host[:port]` and nothing else: it goes into the page's CSP and is the
/// only origin the page posts its handshake to.
fn is_origin(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

fn dashboard_page(
    session: &EmbedSession,
    id: &str,
    title: &str,
    url: &str,
    embed_domain: &str,
    token_source: &str,
) -> Response {
    let region = session
        .user
        .user_attributes
        .get("region")
        .cloned()
        .unwrap_or_default();
    let config = json!({
        "dashboardId": id,
        "title": title,
        "url": url,
        "embedDomain": embed_domain,
        "lookerVersion": LOOKER_VERSION,
        "tokenSource": token_source,
    });
    let html = DASHBOARD_HTML
        .replace("{{title}}", &escape_html(title))
        .replace("{{user}}", &escape_html(&session.user.external_user_id))
        .replace("{{region}}", &escape_html(&region))
        .replace("{{config}}", &script_json(&config))
        .replace("{{script}}", DASHBOARD_JS);
    let csp = format!(
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors {embed_domain}"
    );
    let mut response = html_reply(StatusCode::OK, html);
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// `GET /api/internal/embed/dashboards/{id}/rows` with `Authorization: token <api_token>`:
/// the dashboard's orders the embed user may see.
pub(crate) async fn rows(State(state): State<SimState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let id = parts
        .uri
        .path()
        .strip_prefix("/api/internal/embed/dashboards/")
        .and_then(|rest| rest.strip_suffix("/rows"))
        .unwrap_or_default();
    let world = state.world();
    let session = api_token(&parts).and_then(|t| world.embed.by_api_token(t, Instant::now()));
    let Some(session) = session else {
        return no_store(json_reply(
            StatusCode::UNAUTHORIZED,
            &error_body("Requires authentication."),
        ));
    };
    let Some(dashboard) = demo::dashboard(id) else {
        return no_store(json_reply(StatusCode::NOT_FOUND, &error_body("Not found")));
    };
    if !session.user.models.iter().any(|m| m == DEMO_MODEL) {
        return no_store(json_reply(StatusCode::FORBIDDEN, &error_body("Forbidden")));
    }
    let regions = session.user.attribute_values("region");
    let rows: Vec<Value> = demo::orders()
        .into_iter()
        .filter(|row| {
            regions
                .iter()
                .any(|r| r.eq_ignore_ascii_case(row.user_region))
        })
        .map(|row| {
            json!({
                "id": row.id,
                "status": row.status,
                "state": row.user_state,
                "region": row.user_region,
            })
        })
        .collect();
    let body = json!({
        "dashboard": {"id": id, "title": dashboard.get("title")},
        "external_user_id": session.user.external_user_id,
        "region": session.user.user_attributes.get("region"),
        "rows": rows,
    });
    no_store(json_reply(StatusCode::OK, &body))
}

/// `Authorization: token X` (or `Bearer X`).
fn api_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let known = scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer");
    let token = token.trim();
    (known && !token.is_empty()).then_some(token)
}

pub(crate) fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn query_params(parts: &Parts) -> Vec<(String, String)> {
    serde_urlencoded::from_str(parts.uri.query().unwrap_or_default()).unwrap_or_default()
}

pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// A small HTML page for errors (status, title, one sentence).
pub(crate) fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p id=\"lookergate-embed-error\">{message}</p></body></html>\n",
        title = escape_html(title),
        message = escape_html(message),
    );
    let mut response = html_reply(status, html);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    response
}

fn html_reply(status: StatusCode, html: String) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The URL carries the navigation token: never send it on as a referrer.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON safe inside `<script type="application/json">`: no `<`, `>` or `&` that could
/// close the element.
fn script_json(value: &Value) -> String {
    value
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The dashboard page. Element ids are what the browser test reads.
const DASHBOARD_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{title}} - Looker (lookergate simulator)</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1rem; color: #222; }
  h1 { font-size: 1.2rem; margin: 0 0 .5rem; }
  .meta { font-size: .85rem; color: #555; margin: .2rem 0; }
  table { border-collapse: collapse; width: 100%; table-layout: fixed; margin-top: .5rem; }
  th, td { text-align: left; padding: .2rem .5rem; border-bottom: 1px solid #ddd; }
  table.columns { margin-bottom: 0; }
  table#lookergate-embed-rows { margin-top: 0; }
  #lookergate-embed-ended { color: #a00; font-weight: bold; }
</style>
</head>
<body>
<h1 id="lookergate-embed-title">{{title}}</h1>
<p class="meta">Embed user <b id="lookergate-embed-user">{{user}}</b>, region <b id="lookergate-embed-region">{{region}}</b></p>
<p class="meta">Status <b id="lookergate-embed-status">loading</b>, API token <b id="lookergate-embed-token">-</b>, token refreshes <b id="lookergate-embed-refreshes">0</b></p>
<p id="lookergate-embed-ended" hidden>session ended</p>
<table class="columns" aria-hidden="true"><tr><th>Order</th><th>Status</th><th>State</th><th>Region</th></tr></table>
<table id="lookergate-embed-rows"><tbody></tbody></table>
<script type="application/json" id="lookergate-embed-config">{{config}}</script>
<script>
{{script}}
</script>
</body>
</html>
"#;

/// The page's behaviour: the chatty handshake with the embedding window, token
/// requests, loading and rendering rows, and the events a Looker dashboard sends.
const DASHBOARD_JS: &str = r#"'use strict';
(() => {
  const config = JSON.parse(document.getElementById('lookergate-embed-config').textContent);
  const $ = (id) => document.getElementById(id);
  // @looker/chatty: client -> host Syn 0, Ack 1, Message 2, Response 4;
  // host -> client SynAck 0, Message 1, MessageWithResponse 2.
  const channel = new MessageChannel();
  const port = channel.port1;
  let connected = false;
  const pending = [];
  let apiToken = null;
  let rejectedToken = null;
  let answers = 0;
  let refreshes = 0;
  let timer = null;
  let loaded = false;
  let ended = false;

  const status = (text) => { $('lookergate-embed-status').textContent = text; };

  // Events wait for the handshake (a signed-URL page may load its rows before it).
  function send(eventName, detail) {
    const message = { action: 2, data: { eventName, payload: [detail] } };
    if (connected) port.postMessage(message); else pending.push(message);
  }

  port.onmessage = (event) => {
    const message = event.data || {};
    const data = message.data || {};
    if (message.action === 0) {
      connected = true;
      port.postMessage({ action: 1, data: {} });
      port.postMessage({ action: 2, data: { eventName: 'page:changed', payload: [{ type: 'page:changed', page: { type: 'dashboard', url: config.url, absoluteUrl: location.href, lookerVersion: config.lookerVersion } }] } });
      pending.splice(0).forEach((queued) => port.postMessage(queued));
      if (config.tokenSource !== 'cookie') requestTokens();
    } else if (message.action === 1 && data.eventName === 'session:tokens') {
      onTokens((data.payload || [])[0] || {});
    } else if (message.action === 2) {
      // Nothing here answers questions; say so instead of leaving the host waiting.
      port.postMessage({ action: 4, data: { eventName: data.eventName, payload: [], sequence: data.sequence } });
    }
  };

  async function requestTokens() {
    if (ended) return;
    if (apiToken) status('refreshing');
    if (config.tokenSource !== 'cookie') {
      send('session:tokens:request', {});
      return;
    }
    // Signed (SSO) embedding: the session cookie gets the API token.
    try {
      const response = await fetch('/api/internal/embed/session_token', { cache: 'no-store', credentials: 'same-origin' });
      onTokens(response.ok ? await response.json() : { session_reference_token_ttl: 0 });
    } catch (error) {
      status('error: ' + error.message);
    }
  }

  function onTokens(tokens) {
    clearTimeout(timer);
    if (tokens.session_reference_token_ttl === 0) {
      endSession();
      return;
    }
    if (!tokens.api_token || typeof tokens.api_token_ttl !== 'number') {
      status('error: no tokens');
      send('session:status', { type: 'session:status', session_ttl: 0, expired: false, interrupted: true, recoverable: true });
      timer = setTimeout(requestTokens, 5000);
      return;
    }
    answers += 1;
    if (answers > 1 && tokens.api_token !== apiToken) refreshes += 1;
    apiToken = tokens.api_token;
    $('lookergate-embed-refreshes').textContent = String(refreshes);
    fingerprint(apiToken).then((print) => { $('lookergate-embed-token').textContent = print; });
    send('session:status', { type: 'session:status', session_ttl: tokens.session_reference_token_ttl, expired: false, interrupted: false });
    timer = setTimeout(requestTokens, Math.max(tokens.api_token_ttl - 5, 2) * 1000);
    loadRows();
  }

  function endSession() {
    ended = true;
    clearTimeout(timer);
    status('ended');
    $('lookergate-embed-ended').hidden = false;
    $('lookergate-embed-rows').tBodies[0].replaceChildren();
    send('session:status', { type: 'session:status', session_ttl: 0, expired: true, interrupted: false });
    send('session:expired', { type: 'session:expired' });
  }

  async function loadRows() {
    const token = apiToken;
    let response;
    try {
      response = await fetch('/api/internal/embed/dashboards/' + encodeURIComponent(config.dashboardId) + '/rows', {
        headers: { Authorization: 'token ' + token }, cache: 'no-store',
      });
    } catch (error) {
      status('error: ' + error.message);
      return;
    }
    if (token !== apiToken || ended) return;
    if (response.status === 401) {
      // Expired API token: ask for new tokens once; the answer reloads the rows.
      if (rejectedToken === token) { status('error: api token rejected'); return; }
      rejectedToken = token;
      requestTokens();
      return;
    }
    if (!response.ok) {
      status('error: ' + response.status);
      return;
    }
    render((await response.json()).rows || []);
    status('ok');
    const dashboard = { id: config.dashboardId, title: config.title, url: config.url, absoluteUrl: location.href, dashboard_filters: {}, options: {} };
    if (!loaded) {
      loaded = true;
      send('dashboard:loaded', { type: 'dashboard:loaded', status: 'complete', dashboard });
      send('dashboard:run:start', { type: 'dashboard:run:start', dashboard });
      send('dashboard:run:complete', { type: 'dashboard:run:complete', status: 'complete', dashboard, tileStatuses: [] });
    }
    send('page:properties:changed', { type: 'page:properties:changed', height: document.documentElement.scrollHeight });
  }

  function render(rows) {
    const body = $('lookergate-embed-rows').tBodies[0];
    body.replaceChildren(...rows.map((row) => {
      const tr = document.createElement('tr');
      for (const value of [row.id, row.status, row.state, row.region]) {
        const td = document.createElement('td');
        td.textContent = String(value);
        tr.appendChild(td);
      }
      return tr;
    }));
  }

  async function fingerprint(text) {
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
    return Array.from(new Uint8Array(digest).slice(0, 4), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // Signed (SSO) pages have their session already; cookieless ones wait for the host.
  if (config.tokenSource === 'cookie') requestTokens();
  if (window.parent === window) {
    if (config.tokenSource !== 'cookie') status('error: not embedded');
    return;
  }
  window.parent.postMessage({ action: 0 }, config.embedDomain, [channel.port2]);
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_targets_are_checked_strictly() {
        for good in [
            "http://127.0.0.1:10070",
            "https://app.example",
            "https://[::1]:8443",
        ] {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "",
            "app.example",
            "https://",
            "https://app.example/",
            "https://a.example; script-src *",
            "javascript://x",
            "https://a.example,https://b.example",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
        assert!(is_embed_target("/embed/dashboards/1?sdk=3"));
        for bad in [
            "/embed",
            "/embed/../admin",
            "//evil.example/embed/",
            "/login",
            "/embed/\\x",
            "/embed/a b",
        ] {
            assert!(!is_embed_target(bad), "{bad}");
        }
    }

    #[test]
    fn page_text_is_escaped() {
        assert_eq!(
            escape_html("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
        assert_eq!(
            script_json(&json!({"t": "</script><b>&"})),
            r#"{"t":"\u003c/script\u003e\u003cb\u003e\u0026"}"#
        );
    }
}
