//! Query strings read the way Looker's server reads them (Rack): pairs split on `&` and
//! `;`, names and values percent-decoded with `+` as a space, `name[key]` as a nested
//! parameter. A guardrail that reads `limit` one way while Looker reads it another is no
//! guardrail, so whatever two readers could disagree on is refused, not guessed.

/// One decoded `name=value` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: String,
}

impl Param {
    /// The name up to its first `[` (`f[orders.id]` -> `f`): what Rack keys it under.
    pub fn base(&self) -> &str {
        base_name(&self.name)
    }
}

/// The name up to its first `[`.
pub fn base_name(name: &str) -> &str {
    name.split('[').next().unwrap_or(name)
}

/// Why a query string cannot be read without ambiguity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub String);

/// Every pair of `query`, decoded. Refuses a malformed or non-UTF-8 escape, and `;`
/// separators (Rack 2 splits on them, Rack 3 does not: two readings of one string).
pub fn parse(query: &str) -> Result<Vec<Param>, Unreadable> {
    if query.contains(';') {
        return Err(Unreadable(
            "the query string uses ';' as a separator, which servers read differently".into(),
        ));
    }
    let mut params = Vec::new();
    for pair in query.split('&') {
        // Rack skips empty pairs (`a=1&&b=2`) and leading spaces after a separator.
        let pair = pair.trim_start_matches(' ');
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        params.push(Param {
            name: decode(name)?,
            value: decode(value)?,
        });
    }
    Ok(params)
}

/// Percent-decodes one component, `+` as a space.
pub fn decode(text: &str) -> Result<String, Unreadable> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |at: usize| bytes.get(at).and_then(|c| char::from(*c).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(Unreadable(format!(
                        "the query string has a malformed percent-escape in {text:?}"
                    )));
                };
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(0));
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| {
        Unreadable(format!(
            "the query string has an escape that is not UTF-8 in {text:?}"
        ))
    })
}

/// The pairs whose name, decoded, is not `access_token` (in any case, with or without
/// `[...]`), re-joined as received; `None` when there is none to drop. A pair whose name
/// cannot be decoded is kept: Looker cannot read it either.
pub fn without_access_token(query: &str) -> Option<String> {
    let is_token = |pair: &str| {
        let name = pair.split('=').next().unwrap_or("").trim_start_matches(' ');
        // Most names have nothing to decode: no allocation for them (every request with
        // a query string passes here).
        if !name.contains(['%', '+']) {
            return base_name(name).eq_ignore_ascii_case("access_token");
        }
        decode(name).is_ok_and(|n| base_name(&n).eq_ignore_ascii_case("access_token"))
    };
    if !query.split(['&', ';']).any(is_token) {
        return None;
    }
    let kept: Vec<&str> = query
        .split(['&', ';'])
        .filter(|p| !p.is_empty() && !is_token(p))
        .collect();
    Some(kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        parse(query)
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.value))
            .collect()
    }

    #[test]
    fn names_and_values_are_decoded_as_rack_decodes_them() {
        assert_eq!(
            pairs("%6cimit=1%30&f%5Borders.id%5D=a+b&&x"),
            vec![
                ("limit".to_owned(), "10".to_owned()),
                ("f[orders.id]".to_owned(), "a b".to_owned()),
                ("x".to_owned(), String::new()),
            ]
        );
        assert_eq!(base_name("f[orders.id]"), "f");
        assert_eq!(base_name("limit"), "limit");
    }

    #[test]
    fn ambiguous_query_strings_are_refused() {
        for bad in [
            "limit=1;limit=2",
            "limit=%zz",
            "limit=%4",
            "%ff=1",
            "a=%c3%28",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn access_token_is_dropped_however_its_name_is_spelled() {
        for query in [
            "access_token=x&fields=id",
            "%61ccess_token=x&fields=id",
            "ACCESS%5Ftoken=x&fields=id",
            "access_token[]=x&fields=id",
            "access_token=x;fields=id",
        ] {
            assert_eq!(
                without_access_token(query).as_deref(),
                Some("fields=id"),
                "{query}"
            );
        }
        assert_eq!(without_access_token("fields=id"), None);
        assert_eq!(without_access_token("access_token=x").as_deref(), Some(""));
    }
}
