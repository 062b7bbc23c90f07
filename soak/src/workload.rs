//! Who calls what: the demo users, the request mix with the status each call must get
//! under the demo policy, the Looker user each must reach Looker as, and their JWTs
//! (minted by the dev IdP's `/token`, or by `lookergate token` without it).

use std::path::PathBuf;
use std::process::Command;
use std::sync::RwLock;

use serde::Serialize;
use serde_json::{json, Value};

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum User {
    Alice,
    Bob,
    Carol,
    Eve,
}

pub const USERS: [User; 4] = [User::Alice, User::Bob, User::Carol, User::Eve];

impl User {
    pub fn name(self) -> &'static str {
        match self {
            User::Alice => "alice",
            User::Bob => "bob",
            User::Carol => "carol",
            User::Eve => "eve",
        }
    }

    pub fn from_name(name: &str) -> Option<User> {
        USERS.into_iter().find(|u| u.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The Looker identity the demo policy gives this user's allowed calls (DESIGN.md):
    /// role service accounts for alice and bob, carol herself; eve none.
    pub fn looker_identity(self) -> Option<LookerIdentity> {
        match self {
            User::Alice => Some(LookerIdentity {
                name: "role:analyst",
                user_id: 101,
            }),
            User::Bob => Some(LookerIdentity {
                name: "role:viewer",
                user_id: 102,
            }),
            User::Carol => Some(LookerIdentity {
                name: "user:email:carol@example.com",
                user_id: 203,
            }),
            User::Eve => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookerIdentity {
    /// As the filter's audit record names it.
    pub name: &'static str,
    /// The simulator's Looker user id.
    pub user_id: u64,
}

/// The Looker user id behind a broker identity as the broker's audit line names it.
pub fn looker_user_of_identity(identity: &str) -> Option<u64> {
    USERS
        .into_iter()
        .filter_map(User::looker_identity)
        .find(|i| i.name == identity)
        .map(|i| i.user_id)
}

/// One kind of request in the mix.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub user: User,
    pub method: &'static str,
    pub path: &'static str,
    pub body: Option<&'static str>,
    /// What the demo policy must answer (200 reaches Looker; 403 must not).
    pub expect: u16,
    /// Relative frequency in the mix.
    pub weight: u32,
}

const QUERY: &str = r#"{"model":"thelook","view":"orders","fields":["orders.status","orders.count"],"filters":{"orders.created_date":"30 days"},"limit":"10"}"#;

/// Allowed calls are chosen so the Looker identity is unambiguous: carol only uses the
/// operations of the demo's `carol-reads-as-herself` and `carol-queries-as-herself` rules.
pub const MIX: &[Call] = &[
    Call {
        user: User::Alice,
        method: "GET",
        path: "/api/4.0/dashboards/1",
        body: None,
        expect: 200,
        weight: 8,
    },
    Call {
        user: User::Alice,
        method: "GET",
        path: "/api/4.0/looks/1",
        body: None,
        expect: 200,
        weight: 6,
    },
    Call {
        user: User::Alice,
        method: "GET",
        path: "/api/4.0/user",
        body: None,
        expect: 200,
        weight: 6,
    },
    Call {
        user: User::Alice,
        method: "POST",
        path: "/api/4.0/queries/run/json",
        body: Some(QUERY),
        expect: 200,
        weight: 6,
    },
    Call {
        user: User::Bob,
        method: "GET",
        path: "/api/4.0/dashboards/1",
        body: None,
        expect: 200,
        weight: 10,
    },
    Call {
        user: User::Bob,
        method: "GET",
        path: "/api/4.0/looks/1",
        body: None,
        expect: 200,
        weight: 8,
    },
    Call {
        user: User::Bob,
        method: "GET",
        path: "/api/4.0/user",
        body: None,
        expect: 200,
        weight: 6,
    },
    Call {
        user: User::Bob,
        method: "POST",
        path: "/api/4.0/queries/run/json",
        body: Some(QUERY),
        expect: 403,
        weight: 3,
    },
    Call {
        user: User::Carol,
        method: "GET",
        path: "/api/4.0/dashboards/1",
        body: None,
        expect: 200,
        weight: 8,
    },
    Call {
        user: User::Carol,
        method: "GET",
        path: "/api/4.0/looks/1",
        body: None,
        expect: 200,
        weight: 6,
    },
    Call {
        user: User::Carol,
        method: "GET",
        path: "/api/4.0/user",
        body: None,
        expect: 200,
        weight: 6,
    },
    Call {
        user: User::Carol,
        method: "POST",
        path: "/api/4.0/queries/run/json",
        body: Some(QUERY),
        expect: 200,
        weight: 6,
    },
    Call {
        user: User::Eve,
        method: "GET",
        path: "/api/4.0/user",
        body: None,
        expect: 403,
        weight: 5,
    },
    Call {
        user: User::Eve,
        method: "GET",
        path: "/api/4.0/dashboards/1",
        body: None,
        expect: 403,
        weight: 4,
    },
    Call {
        user: User::Eve,
        method: "POST",
        path: "/api/4.0/queries/run/json",
        body: Some(QUERY),
        expect: 403,
        weight: 2,
    },
];

impl Call {
    pub fn label(&self) -> String {
        format!("{} {} {}", self.user.name(), self.method, self.path)
    }
}

/// The mix as a repeating sequence of `MIX` indexes, each call spread evenly through it
/// (smooth weighted round robin), so any window of the run has the same proportions.
pub fn schedule() -> Vec<usize> {
    let total: i64 = MIX.iter().map(|c| i64::from(c.weight)).sum();
    let mut current = vec![0i64; MIX.len()];
    let mut order = Vec::new();
    for _ in 0..total {
        for (c, call) in current.iter_mut().zip(MIX) {
            *c += i64::from(call.weight);
        }
        let best = (0..MIX.len())
            .max_by_key(|&i| (current.get(i).copied().unwrap_or(0), std::cmp::Reverse(i)))
            .unwrap_or(0);
        if let Some(c) = current.get_mut(best) {
            *c -= total;
        }
        order.push(best);
    }
    order
}

/// Where JWTs come from.
pub enum TokenSource {
    /// `POST {base}/token {"user", "ttl"}` on the dev IdP.
    Idp {
        base: String,
        client: reqwest::Client,
    },
    /// `lookergate token --user U --ttl T` (the embedded demo key).
    Cli { bin: PathBuf },
}

impl TokenSource {
    /// A JWT for `user` living `ttl` seconds, and the kid it was signed with.
    pub async fn mint(&self, user: User, ttl: u64) -> Result<(String, String), Error> {
        match self {
            TokenSource::Idp { base, client } => {
                let response = client
                    .post(format!("{base}/token"))
                    .json(&json!({"user": user.name(), "ttl": ttl}))
                    .send()
                    .await?;
                let status = response.status();
                let answer: Value = response.json().await?;
                match (status.as_u16(), answer["access_token"].as_str()) {
                    (200, Some(jwt)) => Ok((
                        jwt.to_owned(),
                        answer["kid"].as_str().unwrap_or("?").to_owned(),
                    )),
                    _ => Err(format!("IdP /token for {}: {status} {answer}", user.name()).into()),
                }
            }
            TokenSource::Cli { bin } => {
                let bin = bin.clone();
                let name = user.name();
                let output = tokio::task::spawn_blocking(move || {
                    Command::new(bin)
                        .args(["token", "--user", name, "--ttl", &ttl.to_string()])
                        .output()
                })
                .await??;
                if !output.status.success() {
                    return Err(format!(
                        "lookergate token --user {name}: {}",
                        String::from_utf8_lossy(&output.stderr)
                    )
                    .into());
                }
                Ok((
                    String::from_utf8_lossy(&output.stdout).trim().to_owned(),
                    "demo-2026".to_owned(),
                ))
            }
        }
    }

    pub async fn rotate(&self) -> Result<Value, Error> {
        match self {
            TokenSource::Idp { base, client } => {
                let response = client.post(format!("{base}/rotate")).send().await?;
                let status = response.status();
                let answer: Value = response.json().await?;
                if status.is_success() {
                    Ok(answer)
                } else {
                    Err(format!("IdP /rotate: {status} {answer}").into())
                }
            }
            TokenSource::Cli { .. } => Err("no IdP to rotate".into()),
        }
    }
}

/// The current JWT of each user; the minter replaces them, the senders read them.
#[derive(Default)]
pub struct Wallet {
    tokens: RwLock<[String; 4]>,
}

impl Wallet {
    pub fn get(&self, user: User) -> String {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens.get(user.index()).cloned().unwrap_or_default()
    }

    pub fn set(&self, user: User, jwt: String) {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = tokens.get_mut(user.index()) {
            *slot = jwt;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_the_weights() {
        let order = schedule();
        let total: u32 = MIX.iter().map(|c| c.weight).sum();
        assert_eq!(order.len(), total as usize);
        for (i, call) in MIX.iter().enumerate() {
            assert_eq!(
                order.iter().filter(|&&o| o == i).count(),
                call.weight as usize,
                "{}",
                call.label()
            );
        }
    }
}
