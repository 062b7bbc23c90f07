//! HTTP client for the few Looker API 4.0 calls the broker makes, with bounded retries.
//!
//! Every operation gets a total time budget (`retry_budget`) that stays under the
//! gateway's broker timeout; single attempts are capped by `looker_timeout`.

use crate::config::{Api3Credentials, LookerCa, LookerId};
use crate::secret::Secret;
use reqwest::{header, Method, RequestBuilder, Response, StatusCode, Url};
use serde::Deserialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, thiserror::Error)]
pub enum LookerError {
    /// A definitive 4xx answer (not 429); what it means depends on the call.
    #[error("Looker answered {status}")]
    Status { status: u16 },
    #[error("Looker unavailable: {0}")]
    Unavailable(String),
    #[error("unexpected answer from Looker: {0}")]
    Malformed(String),
}

/// A Looker session token as returned by `login`.
#[derive(Debug, Clone)]
pub struct LookerToken {
    pub access_token: Secret,
    pub expires_in: Duration,
}

#[derive(Deserialize)]
struct LoginAnswer {
    access_token: String,
    expires_in: u64,
}

/// A freshly created API3 key (the only time Looker shows its secret).
#[derive(Debug, Clone)]
pub struct NewApi3Key {
    pub id: String,
    pub credentials: Api3Credentials,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Api3KeyInfo {
    pub id: LookerId,
    pub client_id: String,
}

#[derive(Deserialize)]
struct NewKeyAnswer {
    id: LookerId,
    client_id: String,
    client_secret: String,
}

/// Looker's answer to `acquire_embed_cookieless_session` and
/// `generate_tokens_for_cookieless_session` (the latter has no authentication token).
/// `session_reference_token` never leaves the broker.
#[derive(Deserialize)]
pub struct EmbedSessionAnswer {
    #[serde(default)]
    pub authentication_token: Option<String>,
    #[serde(default)]
    pub authentication_token_ttl: Option<u64>,
    #[serde(default)]
    pub navigation_token: Option<String>,
    #[serde(default)]
    pub navigation_token_ttl: Option<u64>,
    #[serde(default)]
    pub api_token: Option<String>,
    #[serde(default)]
    pub api_token_ttl: Option<u64>,
    #[serde(default)]
    pub session_reference_token: Option<Secret>,
    #[serde(default)]
    pub session_reference_token_ttl: Option<u64>,
}

/// A freshly created SSO embed secret (the only time Looker shows it).
#[derive(Debug, Clone)]
pub struct NewEmbedSecret {
    pub id: String,
    pub secret: Secret,
}

#[derive(Deserialize)]
struct EmbedSecretAnswer {
    id: LookerId,
    secret: Option<Secret>,
}

#[derive(Deserialize)]
struct UserAnswer {
    id: LookerId,
}

/// Whether a request may be sent again after an ambiguous failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Safe to repeat (login, reads, deletes).
    Always,
    /// Creates something: repeat only when Looker certainly did not process it.
    OnlyUnprocessed,
}

const MAX_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct LookerClient {
    http: reqwest::Client,
    base: Url,
    attempt_timeout: Duration,
    retry_budget: Duration,
}

impl LookerClient {
    /// Trusts the platform's store, the compiled-in webpki roots, and `ca` when given.
    pub fn new(
        base: Url,
        attempt_timeout: Duration,
        retry_budget: Duration,
        ca: Option<&LookerCa>,
    ) -> Result<Self, LookerError> {
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = ca {
            let certs = ca.certificates().map_err(|e| {
                LookerError::Unavailable(format!("looker_ca_file {}: {e}", ca.path.display()))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .connect_timeout(attempt_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("lookergate-broker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LookerError::Unavailable(format!("cannot build HTTP client: {e}")))?;
        Ok(LookerClient {
            http,
            base,
            attempt_timeout,
            retry_budget,
        })
    }

    /// `{base}/api/4.0/{segments...}`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<Url, LookerError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| LookerError::Malformed("looker_url cannot be a base URL".into()))?
            .pop_if_empty()
            .extend(["api", "4.0"])
            .extend(segments);
        Ok(url)
    }

    /// `POST /login` with API3 credentials (form-encoded, as Looker expects).
    pub async fn login(&self, creds: &Api3Credentials) -> Result<LookerToken, LookerError> {
        let url = self.url(&["login"])?;
        let form = [
            ("client_id", creds.client_id.as_str()),
            ("client_secret", creds.client_secret.expose()),
        ];
        let resp = self
            .send(Replay::Always, || self.http.post(url.clone()).form(&form))
            .await?;
        parse_login(resp).await
    }

    /// `POST /login/{user_id}` as admin: a session for that user (sudo).
    pub async fn login_user(
        &self,
        admin: &Secret,
        user_id: &str,
        associative: bool,
    ) -> Result<LookerToken, LookerError> {
        let mut url = self.url(&["login", user_id])?;
        url.query_pairs_mut()
            .append_pair("associative", if associative { "true" } else { "false" });
        let resp = self
            .send(Replay::Always, || {
                self.authed(Method::POST, url.clone(), admin)
            })
            .await?;
        parse_login(resp).await
    }

    /// `GET /users/credential/{type}/{id}` -> the Looker user id, `None` on 404.
    pub async fn find_user_by_credential(
        &self,
        admin: &Secret,
        credential_type: &str,
        credential_id: &str,
    ) -> Result<Option<String>, LookerError> {
        let mut url = self.url(&["users", "credential", credential_type, credential_id])?;
        url.query_pairs_mut().append_pair("fields", "id");
        let resp = self
            .send(Replay::Always, || {
                self.authed(Method::GET, url.clone(), admin)
            })
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let user: UserAnswer = read_json(resp).await?;
                Ok(Some(user.id.0))
            }
            s => Err(LookerError::Status { status: s.as_u16() }),
        }
    }

    /// `POST /users/{user_id}/credentials_api3`.
    pub async fn create_api3(
        &self,
        admin: &Secret,
        user_id: &str,
    ) -> Result<NewApi3Key, LookerError> {
        let url = self.url(&["users", user_id, "credentials_api3"])?;
        let resp = self
            .send(Replay::OnlyUnprocessed, || {
                self.authed(Method::POST, url.clone(), admin)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(LookerError::Status {
                status: resp.status().as_u16(),
            });
        }
        let key: NewKeyAnswer = read_json(resp).await?;
        Ok(NewApi3Key {
            id: key.id.0,
            credentials: Api3Credentials {
                client_id: key.client_id,
                client_secret: Secret::new(key.client_secret),
            },
        })
    }

    /// `GET /users/{user_id}/credentials_api3`.
    pub async fn list_api3(
        &self,
        admin: &Secret,
        user_id: &str,
    ) -> Result<Vec<Api3KeyInfo>, LookerError> {
        let url = self.url(&["users", user_id, "credentials_api3"])?;
        let resp = self
            .send(Replay::Always, || {
                self.authed(Method::GET, url.clone(), admin)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(LookerError::Status {
                status: resp.status().as_u16(),
            });
        }
        read_json(resp).await
    }

    /// `DELETE /users/{user_id}/credentials_api3/{id}`; an already deleted key counts as deleted.
    pub async fn delete_api3(
        &self,
        admin: &Secret,
        user_id: &str,
        key_id: &str,
    ) -> Result<(), LookerError> {
        let url = self.url(&["users", user_id, "credentials_api3", key_id])?;
        let resp = self
            .send(Replay::Always, || {
                self.authed(Method::DELETE, url.clone(), admin)
            })
            .await?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            s => Err(LookerError::Status { status: s.as_u16() }),
        }
    }

    /// `POST /embed/cookieless_session/acquire` with `body` (Looker's
    /// `EmbedCookielessSessionAcquire`). Not replayed after an ambiguous failure: it
    /// creates a session.
    pub async fn acquire_embed_session(
        &self,
        token: &Secret,
        body: &serde_json::Value,
    ) -> Result<EmbedSessionAnswer, LookerError> {
        let url = self.url(&["embed", "cookieless_session", "acquire"])?;
        let resp = self
            .send(Replay::OnlyUnprocessed, || {
                self.authed(Method::POST, url.clone(), token).json(body)
            })
            .await?;
        ok_json(resp).await
    }

    /// `PUT /embed/cookieless_session/generate_tokens` with `body` (Looker's
    /// `EmbedCookielessSessionGenerateTokens`).
    pub async fn generate_embed_tokens(
        &self,
        token: &Secret,
        body: &serde_json::Value,
    ) -> Result<EmbedSessionAnswer, LookerError> {
        let url = self.url(&["embed", "cookieless_session", "generate_tokens"])?;
        let resp = self
            .send(Replay::Always, || {
                self.authed(Method::PUT, url.clone(), token).json(body)
            })
            .await?;
        ok_json(resp).await
    }

    /// `DELETE /embed/cookieless_session/{session_reference_token}` (the segment
    /// percent-encoded); an unknown session counts as deleted.
    pub async fn delete_embed_session(
        &self,
        token: &Secret,
        reference: &Secret,
    ) -> Result<(), LookerError> {
        let url = self.url(&["embed", "cookieless_session", reference.expose()])?;
        let resp = self
            .send(Replay::Always, || {
                self.authed(Method::DELETE, url.clone(), token)
            })
            .await?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            s => Err(LookerError::Status { status: s.as_u16() }),
        }
    }

    /// `POST /embed_config/secrets`: a new SSO embed secret signing with `algorithm`.
    pub async fn create_embed_secret(
        &self,
        token: &Secret,
        algorithm: &str,
    ) -> Result<NewEmbedSecret, LookerError> {
        let url = self.url(&["embed_config", "secrets"])?;
        let body =
            serde_json::json!({"algorithm": algorithm, "secret_type": "SSO", "enabled": true});
        let resp = self
            .send(Replay::OnlyUnprocessed, || {
                self.authed(Method::POST, url.clone(), token).json(&body)
            })
            .await?;
        let answer: EmbedSecretAnswer = ok_json(resp).await?;
        match answer.secret {
            Some(secret) if !secret.is_empty() => Ok(NewEmbedSecret {
                id: answer.id.0,
                secret,
            }),
            _ => Err(LookerError::Malformed(
                "the new embed secret has no secret".into(),
            )),
        }
    }

    /// `DELETE /embed_config/secrets/{id}`; an already deleted secret counts as deleted.
    pub async fn delete_embed_secret(&self, token: &Secret, id: &str) -> Result<(), LookerError> {
        let url = self.url(&["embed_config", "secrets", id])?;
        let resp = self
            .send(Replay::Always, || {
                self.authed(Method::DELETE, url.clone(), token)
            })
            .await?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            s => Err(LookerError::Status { status: s.as_u16() }),
        }
    }

    fn authed(&self, method: Method, url: Url, token: &Secret) -> RequestBuilder {
        self.http
            .request(method, url)
            .header(header::AUTHORIZATION, format!("token {}", token.expose()))
    }

    /// Sends with retries on transport errors, 5xx and 429 until the budget runs out.
    /// Returns the first answer that is not retryable; never a 5xx/429.
    async fn send(
        &self,
        replay: Replay,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, LookerError> {
        let deadline = Instant::now() + self.retry_budget;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(LookerError::Unavailable(
                    "no time left to call Looker".into(),
                ));
            }
            let timeout = remaining.min(self.attempt_timeout);
            let (why, retry_after) = match build().timeout(timeout).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retryable = status == StatusCode::TOO_MANY_REQUESTS
                        || (status.is_server_error()
                            && (replay == Replay::Always
                                || status == StatusCode::SERVICE_UNAVAILABLE));
                    if !retryable {
                        if status.is_server_error() {
                            return Err(LookerError::Unavailable(format!(
                                "Looker answered {status}"
                            )));
                        }
                        return Ok(resp);
                    }
                    (format!("Looker answered {status}"), retry_after(&resp))
                }
                Err(e) => {
                    let why = if e.is_timeout() {
                        format!("Looker did not answer within {}ms", timeout.as_millis())
                    } else if e.is_connect() {
                        "cannot connect to Looker".to_string()
                    } else {
                        format!("request to Looker failed: {}", without_url(&e))
                    };
                    // A timed-out create may have been applied; don't repeat it.
                    if replay == Replay::OnlyUnprocessed && !e.is_connect() {
                        return Err(LookerError::Unavailable(why));
                    }
                    (why, None)
                }
            };
            if attempt >= MAX_ATTEMPTS {
                return Err(LookerError::Unavailable(format!(
                    "{why} (after {attempt} attempts)"
                )));
            }
            let delay = retry_after.unwrap_or_else(|| backoff(attempt));
            if Instant::now() + delay >= deadline {
                return Err(LookerError::Unavailable(format!(
                    "{why} (gave up after {attempt} attempts)"
                )));
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// Exponential backoff with up to 25% jitter so many brokers don't retry in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(10))
        .min(MAX_BACKOFF);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// `Retry-After` in seconds (the HTTP-date form is rare for APIs and ignored).
fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// reqwest errors include the URL; ours hold no secrets, but keep messages short.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<looker>");
    }
    s
}

async fn parse_login(resp: Response) -> Result<LookerToken, LookerError> {
    if !resp.status().is_success() {
        return Err(LookerError::Status {
            status: resp.status().as_u16(),
        });
    }
    let answer: LoginAnswer = read_json(resp).await?;
    if answer.access_token.is_empty() {
        return Err(LookerError::Malformed("empty access_token".into()));
    }
    Ok(LookerToken {
        access_token: Secret::new(answer.access_token),
        expires_in: Duration::from_secs(answer.expires_in),
    })
}

/// The JSON body of a 2xx answer, else the status as [`LookerError::Status`].
async fn ok_json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, LookerError> {
    if !resp.status().is_success() {
        return Err(LookerError::Status {
            status: resp.status().as_u16(),
        });
    }
    read_json(resp).await
}

async fn read_json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, LookerError> {
    let bytes = resp.bytes().await.map_err(|e| {
        if e.is_timeout() {
            LookerError::Unavailable("Looker answer timed out".into())
        } else {
            LookerError::Unavailable(format!("reading Looker answer: {}", without_url(&e)))
        }
    })?;
    // serde_json errors name the position, never the content.
    serde_json::from_slice(&bytes).map_err(|e| LookerError::Malformed(e.to_string()))
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
    fn urls_encode_segments() {
        let base = Url::parse("http://looker:19999/").ok();
        let client = base.and_then(|b| {
            LookerClient::new(b, Duration::from_secs(1), Duration::from_secs(2), None).ok()
        });
        let Some(client) = client else {
            panic!("client")
        };
        let url = client
            .url(&["users", "credential", "email", "a b?x=1#@example.com"])
            .map(|u| u.to_string());
        assert_eq!(
            url.ok().as_deref(),
            Some("http://looker:19999/api/4.0/users/credential/email/a%20b%3Fx=1%23@example.com")
        );
    }

    /// A Looker stand-in whose `/login` answers 429 with `Retry-After: {retry_after}` `fail` times.
    async fn throttling_looker(
        fail: usize,
        retry_after: &'static str,
    ) -> Option<(LookerClient, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
        use axum::http::HeaderValue;
        use axum::response::IntoResponse;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let app = axum::Router::new().route(
            "/api/4.0/login",
            axum::routing::post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < fail {
                        let mut r = StatusCode::TOO_MANY_REQUESTS.into_response();
                        r.headers_mut()
                            .insert("retry-after", HeaderValue::from_static(retry_after));
                        r
                    } else {
                        axum::Json(serde_json::json!({"access_token": "t", "expires_in": 3600}))
                            .into_response()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
        let addr = listener.local_addr().ok()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        let base = Url::parse(&format!("http://{addr}")).ok()?;
        let client = LookerClient::new(
            base,
            Duration::from_secs(1),
            Duration::from_millis(1500),
            None,
        )
        .ok()?;
        Some((client, calls))
    }

    fn creds() -> Api3Credentials {
        Api3Credentials {
            client_id: "id".into(),
            client_secret: Secret::new("secret"),
        }
    }

    #[tokio::test]
    async fn retry_after_is_honoured_within_the_budget() {
        let Some((client, calls)) = throttling_looker(1, "1").await else {
            panic!("server")
        };
        let started = Instant::now();
        let result = client.login(&creds()).await;
        assert!(result.is_ok(), "{result:?}");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn retry_after_beyond_the_budget_fails_at_once() {
        let Some((client, calls)) = throttling_looker(1, "30").await else {
            panic!("server")
        };
        let started = Instant::now();
        let result = client.login(&creds()).await;
        assert!(
            matches!(result, Err(LookerError::Unavailable(_))),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(
            backoff(1) >= Duration::from_millis(100) && backoff(1) <= Duration::from_millis(125)
        );
        assert!(backoff(3) >= Duration::from_millis(400));
        assert!(backoff(30) <= Duration::from_millis(1250));
    }
}
