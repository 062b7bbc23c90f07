//! Request-target hygiene: split `:path` into path and query, refuse shapes that could
//! make the policy see one path while Looker serves another, and drop query parameters
//! that carry credentials.

/// Why a request target is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

/// A request target the policy may match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTarget<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// Splits and checks `:path`. Envoy normalizes before us when the listener sets
/// `normalize_path`/`merge_slashes`; this check does not rely on that.
pub fn parse_target(raw: &str) -> Result<RequestTarget<'_>, BadPath> {
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    if !path.starts_with('/') {
        return Err(BadPath("path must start with '/'"));
    }
    if path.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\' || b == b'#') {
        return Err(BadPath("path contains a control character, '\\' or '#'"));
    }
    let lower = path.to_ascii_lowercase();
    // Encoded '/', '\', '.', '%' or NUL would let the policy and Looker disagree on segments.
    for encoded in ["%2f", "%5c", "%2e", "%25", "%00"] {
        if lower.contains(encoded) {
            return Err(BadPath("path contains an encoded '/', '\\', '.', '%' or NUL"));
        }
    }
    let body = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = body.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => return Err(BadPath("path contains a '.' or '..' segment")),
            "" if i != last => return Err(BadPath("path contains an empty segment ('//')")),
            _ => {}
        }
    }
    Ok(RequestTarget { path, query })
}

/// Rebuilds the request target without `access_token` query parameters (Looker accepts
/// a token there; a client's must never reach it). Returns `None` when nothing changes.
pub fn strip_access_token(target: &RequestTarget<'_>) -> Option<String> {
    let query = target.query?;
    let is_token = |pair: &&str| {
        let name = pair.split('=').next().unwrap_or("");
        name.eq_ignore_ascii_case("access_token") || name.eq_ignore_ascii_case("access%5ftoken")
    };
    if !query.split('&').any(|p| is_token(&p)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !p.is_empty() && !is_token(p)).collect();
    Some(if kept.is_empty() {
        target.path.to_owned()
    } else {
        format!("{}?{}", target.path, kept.join("&"))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_paths_and_refuses_tricks() {
        let ok = ["/api/4.0/user", "/api/4.0/dashboards/1?fields=id", "/", "/api/4.0/looks/", "/api/4.0/x%20y"];
        for raw in ok {
            assert!(parse_target(raw).is_ok(), "{raw} should be accepted");
        }
        let bad = [
            "api/4.0/user",
            "/api/4.0/../4.0/user",
            "/api/4.0/./user",
            "/api//4.0/user",
            "/api/4.0%2fuser",
            "/api/4.0%2Fuser",
            "/api/4.0/%2e%2e/user",
            "/api/4.0\\user",
            "/api/4.0/user%00",
            "/api/4.0/%252e",
            "/api/4.0/user\u{1}",
        ];
        for raw in bad {
            assert!(parse_target(raw).is_err(), "{raw} should be refused");
        }
    }

    #[test]
    fn access_token_query_parameters_are_removed() {
        let cases = [
            ("/a", None),
            ("/a?x=1", None),
            ("/a?access_token=abc", Some("/a")),
            ("/a?x=1&access_token=abc&y=2", Some("/a?x=1&y=2")),
            ("/a?ACCESS_TOKEN=abc&access_token", Some("/a")),
            ("/a?access%5Ftoken=abc&x", Some("/a?x")),
            ("/a?access_tokens=1", None),
        ];
        for (raw, want) in cases {
            let target = parse_target(raw).unwrap();
            assert_eq!(strip_access_token(&target).as_deref(), want, "{raw}");
        }
    }
}
