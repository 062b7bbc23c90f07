//! Request-target hygiene: split `:path` into path and query, normalize the path,
//! refuse shapes that could make the policy see one path while Looker serves another,
//! and drop query parameters that carry credentials.

/// Why a request target is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

/// A request target the policy may match on: the path normalized (unreserved
/// characters percent-decoded), and the query as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTarget<'a> {
    pub path: String,
    pub query: Option<&'a str>,
}

impl RequestTarget<'_> {
    /// The target to forward: exactly the path that was matched, and the query.
    pub fn to_path(&self) -> String {
        match self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Splits and checks `:path`, and normalizes it: `%41` -> `A` for unreserved
/// characters (RFC 3986 section 2.3), every other escape kept (upper-cased). Envoy
/// normalizes before us when the listener sets `normalize_path`/`merge_slashes`; this
/// does not rely on that. Anything that could make the policy and Looker disagree on
/// the segments is refused rather than repaired.
pub fn parse_target(raw: &str) -> Result<RequestTarget<'_>, BadPath> {
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    if !path.starts_with('/') {
        return Err(BadPath("path must start with '/'"));
    }
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(BadPath("request target contains a control character"));
    }
    // RFC 3986 pchar, less ';' (path parameters: some servers strip `;...` before
    // routing, so `..;` would become `..` behind the policy's back).
    if !path.bytes().all(is_path_byte) {
        return Err(BadPath("path contains a character not allowed in a URI path (space, ';', '\\', '#', non-ASCII, ...)"));
    }
    let decoded = decode_unreserved(path)?;
    let body = decoded.strip_prefix('/').unwrap_or(&decoded);
    let segments: Vec<&str> = body.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => return Err(BadPath("path contains a '.' or '..' segment")),
            "" if i != last => return Err(BadPath("path contains an empty segment ('//')")),
            _ => {}
        }
    }
    // One trailing slash is dropped: Looker's routes have none, and the policy, the
    // operation table and Looker must all see the same path (it is what is forwarded).
    let mut path = decoded;
    if path.len() > 1 && path.ends_with('/') {
        path.pop();
    }
    Ok(RequestTarget { path, query })
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/%".contains(&b)
}

fn decode_unreserved(path: &str) -> Result<String, BadPath> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let hex = |at: usize| bytes.get(at).and_then(|c| char::from(*c).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            return Err(BadPath("path contains a malformed percent-escape"));
        };
        let value = u8::try_from(hi * 16 + lo).unwrap_or(0);
        match value {
            // Encoded '/', backslash and '%' would change how the path splits or decodes.
            b'/' | b'\\' | b'%' | b';' => {
                return Err(BadPath(
                    "path contains an encoded '/', backslash, '%' or ';'",
                ))
            }
            0x00..=0x1f | 0x7f => {
                return Err(BadPath("path contains an encoded control character"))
            }
            v if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => out.push(char::from(v)),
            _ => out.push_str(&format!("%{value:02X}")),
        }
        i += 3;
    }
    Ok(out)
}

/// Rebuilds the request target without `access_token` query parameters (Looker accepts
/// a token there; a client's must never reach it), however the name is escaped. Returns
/// `None` when nothing changes.
pub fn strip_access_token(target: &RequestTarget<'_>) -> Option<String> {
    let kept = crate::query::without_access_token(target.query?)?;
    Some(if kept.is_empty() {
        target.path.clone()
    } else {
        format!("{}?{kept}", target.path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_paths_normalized_and_refuses_tricks() {
        let ok = [
            ("/api/4.0/user", "/api/4.0/user"),
            ("/api/4.0/dashboards/1?fields=id", "/api/4.0/dashboards/1"),
            ("/", "/"),
            ("/api/4.0/looks/", "/api/4.0/looks"),
            ("/api/4.0/looks/?x=1", "/api/4.0/looks"),
            ("/api/4.0/x%20y", "/api/4.0/x%20y"),
            ("/api/4.0/%75ser", "/api/4.0/user"),
            (
                "/api/4.0/users/credential/email/a%40b.c",
                "/api/4.0/users/credential/email/a%40b.c",
            ),
            (
                "/api/4.0/users/credential/email/a%2bb",
                "/api/4.0/users/credential/email/a%2Bb",
            ),
        ];
        for (raw, want) in ok {
            assert_eq!(
                parse_target(raw).map(|t| t.path),
                Ok(want.to_owned()),
                "{raw}"
            );
        }
        let bad = [
            "api/4.0/user",
            "/api/4.0/../4.0/user",
            "/api/4.0/./user",
            "/api//4.0/user",
            "/api/4.0%2fuser",
            "/api/4.0%2Fuser",
            "/api/4.0/%2e%2e/user",
            "/api/4.0/%2E%2E/admin",
            "/api/4.0/%2e/user",
            "/api/4.0\\user",
            "/api/4.0/user%00",
            "/api/4.0/%252e",
            "/api/4.0/user\u{1}",
            "/api/4.0/user%",
            "/api/4.0/user%zz",
            "/api/4.0/user%0a",
            "/api/4.0/us\u{e9}r",
            "/api/4.0/user#frag",
            "/api/4.0/user?x=\u{7f}",
            // found by fuzzing: a literal space survived and was forwarded
            "/api/4.0/users/42/a b",
            "/api/4.0/user%41 x",
            // `..;` is `..` to servers that strip path parameters
            "/api/4.0/groups/..;/users",
            "/api/4.0/folders/%2e%2e;x/dashboards",
            "/api/4.0/users/.;/1",
            "/api/4.0/users/..%3b/1",
            "/api/4.0/a\"b",
            "/api/4.0/a<b>",
            "/api/4.0/a{b}",
            "/api/4.0/a|b",
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
