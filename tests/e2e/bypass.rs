//! Issue 4's bypass battery through the real Envoy: request targets and headers that try
//! to make the policy see one path while Looker serves another. Every trick is refused,
//! or normalized and then exactly the matched path reaches Looker.

use crate::harness::{Gateway, Reply};
use crate::tokens;

/// What must happen to one request.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// The gateway's own 400 `bad_request` JSON.
    BadRequest,
    /// A 400, from the gateway or from Envoy's codec/HCM before the filter runs
    /// (encoded slashes: `path_with_escaped_slashes_action: REJECT_REQUEST`; raw NUL).
    Refused400,
    /// The gateway's 404 `not_found` JSON: not a Looker API operation.
    NotFound,
    /// The gateway's 403 or 404 JSON: the normalized path is not bob's to call.
    Denied,
    /// Forwarded, and Looker saw exactly this path.
    Forwarded(&'static str),
}

struct Case {
    target: String,
    headers: Vec<(&'static str, &'static str)>,
    want: Want,
}

fn case(target: &str, want: Want) -> Case {
    Case {
        target: target.to_owned(),
        headers: vec![],
        want,
    }
}

fn battery() -> Vec<Case> {
    use Want::*;
    let mut cases = vec![
        // dot segments, plain and encoded in every casing
        case("/api/4.0/dashboards/../users/1", BadRequest),
        case("/api/4.0/dashboards/./1", BadRequest),
        case("/api/4.0/dashboards/1/..", BadRequest),
        case("/api/4.0/dashboards/1/.", BadRequest),
        case("/api/4.0/dashboards/%2e%2e/users/1", BadRequest),
        case("/api/4.0/dashboards/%2E%2E/users/1", BadRequest),
        case("/api/4.0/dashboards/%2e%2E/users/1", BadRequest),
        case("/api/4.0/dashboards/.%2e/users/1", BadRequest),
        case("/api/4.0/dashboards/%2E./users/1", BadRequest),
        case("/api/4.0/dashboards/%2e/1", BadRequest),
        case("/api/4.0/looks/..", BadRequest),
        // double encoding
        case("/api/4.0/dashboards/%252e%252e/users/1", BadRequest),
        case("/api/4.0/dashboards/%252E%252E%252Fusers%252F1", BadRequest),
        case("/api/4.0/dashboards/1%252fusers", BadRequest),
        case("/api/4.0/dashboards/%25%32%65%25%32%65/users/1", BadRequest),
        // encoded slashes and backslashes
        case("/api/4.0/dashboards/..%2fusers/1", Refused400),
        case("/api/4.0/dashboards%2F1", Refused400),
        case("/api/4.0/dashboards/1%2f..%2f..%2fusers%2f1", Refused400),
        case("/api/4.0/dashboards/1%5c..%5cusers%5c1", Refused400),
        case("/api/4.0/dashboards/1%5C..%5Cusers", Refused400),
        case("/api/4.0/dashboards/1\\..\\..\\users\\1", Refused400),
        // NUL and control characters, encoded and raw
        case("/api/4.0/dashboards/1%00", BadRequest),
        case("/api/4.0/dashboards/1%00/../../users/1", BadRequest),
        case("/api/4.0/dashboards/1%0a", BadRequest),
        case("/api/4.0/dashboards/1%0D%0Ax-injected:%201", BadRequest),
        case("/api/4.0/dashboards/1%09", BadRequest),
        case("/api/4.0/dashboards/1%7f", BadRequest),
        case("/api/4.0/dashboards/1%1b", BadRequest),
        case("/api/4.0/dashboards/1\0", Refused400),
        case("/api/4.0/dashboards/1\u{1}", Refused400),
        case("/api/4.0/dashboards/1\u{7f}", Refused400),
        case("/api/4.0/dashboards/1?x=\u{1b}", Refused400),
        // duplicate slashes
        case("//api/4.0/dashboards/1", BadRequest),
        case("/api//4.0/dashboards/1", BadRequest),
        case("/api/4.0//dashboards/1", BadRequest),
        case("/api/4.0/dashboards//1", BadRequest),
        case("/api/4.0/dashboards/1//", BadRequest),
        case("/api/4.0/looks//..//users/1", BadRequest),
        // trailing slash: one is dropped, and the path without it is forwarded
        case("/api/4.0/dashboards/1/", Forwarded("/api/4.0/dashboards/1")),
        case("/api/4.0/user/", Forwarded("/api/4.0/user")),
        // case: Looker's routes are case-sensitive
        case("/api/4.0/DASHBOARDS/1", NotFound),
        case("/api/4.0/Dashboards/1", NotFound),
        case("/api/4.0/USER", NotFound),
        case("/API/4.0/users/1", Denied),
        case("/Api/4.0/dashboards/1", Denied),
        // unreserved characters are decoded before matching, and the decoded path forwarded
        case(
            "/api/4.0/d%61shboards/1",
            Forwarded("/api/4.0/dashboards/1"),
        ),
        case(
            "/api/4.0/dashboards/%31",
            Forwarded("/api/4.0/dashboards/1"),
        ),
        // bob (viewers-read: tags Dashboard, Look, User) may read a user: decoded, the
        // canonical path is forwarded; a tag no rule grants him stays denied, decoded.
        case("/api/4.0/%75sers/1", Forwarded("/api/4.0/users/1")),
        case("/api/4.0/%72oles/1", Denied),
        case("/api/4.0/%55SERS/1", NotFound),
        // query-string tricks
        case(
            "/api/4.0/dashboards/1?/../../users/1",
            Forwarded("/api/4.0/dashboards/1"),
        ),
        case(
            "/api/4.0/dashboards/1?x=%2f..%2fusers",
            Forwarded("/api/4.0/dashboards/1"),
        ),
        case("/api/4.0/users/1%3F/../../dashboards/1", BadRequest),
        case("/api/4.0/users/1%3f/dashboards/1", NotFound),
        // bob may read users (the User tag): the encoded '?' stays in the id Looker sees
        case(
            "/api/4.0/users/1%3F.json",
            Forwarded("/api/4.0/users/1%3F.json"),
        ),
        case("/api/4.0/roles/1%3F.json", Denied),
        case(
            "/api/4.0/dashboards/1%3F",
            Forwarded("/api/4.0/dashboards/1%3F"),
        ),
        case("/api/4.0/dashboards/1%23/../../users/1", BadRequest),
        case("/api/4.0/dashboards/1#/../../users/1", Refused400),
        case("/api/4.0/dashboards/1;/../../users/1", BadRequest),
        // absolute-form request targets
        case(
            "http://evil.example/api/4.0/dashboards/1",
            Forwarded("/api/4.0/dashboards/1"),
        ),
        case(
            "http://evil.example/api/4.0/users/1",
            Forwarded("/api/4.0/users/1"),
        ),
        case("http://evil.example/api/4.0/roles/1", Denied),
        case(
            "http://evil.example/api/4.0/dashboards/../users/1",
            BadRequest,
        ),
        case(
            "http://evil.example/api/4.0/dashboards/%2e%2e/users/1",
            BadRequest,
        ),
        case("http://evil.example//api/4.0/dashboards/1", BadRequest),
    ];
    // method overrides: refused whatever they ask for
    for header in [
        "x-http-method-override",
        "x-method-override",
        "x-http-method",
        "X-HTTP-Method-Override",
    ] {
        for method in ["DELETE", "GET"] {
            cases.push(Case {
                target: "/api/4.0/dashboards/1".to_owned(),
                headers: vec![(header, method)],
                want: BadRequest,
            });
        }
    }
    cases
}

fn check(case: &Case, reply: &Reply) -> Result<(), String> {
    let json_error = |status: u16, error: &str| -> Result<(), String> {
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
        let json = reply
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json"));
        let complete = ["reason", "request_id"]
            .iter()
            .all(|f| body[f].as_str().is_some_and(|v| !v.is_empty()));
        if reply.status == status && json && body["error"] == error && complete {
            Ok(())
        } else {
            Err(format!(
                "want {status} {error}, got {} {:?}",
                reply.status, reply.body
            ))
        }
    };
    match case.want {
        Want::BadRequest => json_error(400, "bad_request"),
        Want::Refused400 if reply.status == 400 => {
            // If the gateway answered, it answered by its contract.
            match reply.header("content-type") {
                Some(ct) if ct.starts_with("application/json") => json_error(400, "bad_request"),
                _ => Ok(()),
            }
        }
        Want::Refused400 => Err(format!("want 400, got {} {:?}", reply.status, reply.body)),
        Want::NotFound => json_error(404, "not_found"),
        Want::Denied if reply.status == 403 => json_error(403, "forbidden"),
        Want::Denied => json_error(404, "not_found"),
        Want::Forwarded(_) => match reply.status {
            // The gateway's own refusals are JSON with `error`; Looker's are not.
            400 | 401 | 403 | 413 | 429 | 503 if reply.body.contains("\"request_id\"") => Err(
                format!("the gateway refused it: {} {}", reply.status, reply.body),
            ),
            _ => Ok(()),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_battery_every_trick_is_refused_or_normalized() {
    let gw = Gateway::start().await;
    let bearer = format!("Bearer {}", tokens::valid("bob"));
    let mut failures = Vec::new();
    for case in battery() {
        gw.clear_looker_requests().await;
        let mut headers: Vec<(&str, &str)> = vec![("authorization", &bearer)];
        headers.extend(case.headers.iter().copied());
        let reply = gw.send_raw("GET", &case.target, &headers).await;
        let what = format!("GET {:?} {:?}", case.target, case.headers);
        if reply.elapsed > std::time::Duration::from_secs(2) {
            eprintln!(
                "SLOW {what}: {:?} {} {:?}",
                reply.elapsed, reply.status, reply.body
            );
        }
        if let Err(why) = check(&case, &reply) {
            failures.push(format!("{what}: {why}"));
        }
        let seen = gw.forwarded_requests().await;
        let paths: Vec<&str> = seen
            .iter()
            .map(|r| r["path"].as_str().unwrap_or("?"))
            .collect();
        match case.want {
            Want::Forwarded(path) if paths != [path] => {
                failures.push(format!(
                    "{what}: Looker should see exactly [{path}], saw {paths:?}"
                ));
            }
            Want::Forwarded(_) => {}
            _ if !seen.is_empty() => {
                failures.push(format!("{what}: refused, yet Looker saw {paths:?}"));
            }
            _ => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bypass cases failed:\n{}",
        failures.len(),
        battery().len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_case_and_unknown_methods_reach_no_operation() {
    let gw = Gateway::start().await;
    let bearer = format!("Bearer {}", tokens::valid("bob"));
    for method in ["get", "Get", "PROPFIND", "TRACE"] {
        let reply = gw
            .send_raw(
                method,
                "/api/4.0/dashboards/1",
                &[("authorization", &bearer)],
            )
            .await;
        assert!(
            (400..=405).contains(&reply.status) && reply.status != 401,
            "{method}: {} {}",
            reply.status,
            reply.body
        );
    }
    let seen = gw.forwarded_requests().await;
    assert!(seen.is_empty(), "Looker saw: {seen:#?}");
}
