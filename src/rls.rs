//! Global rate limits: the descriptors a rule's `rate_limit` becomes, and the two tiny
//! protobuf messages of Envoy's RLS v3 (`RateLimitRequest` out, `RateLimitResponse`
//! in), encoded and decoded by hand so the filter carries no protobuf runtime.
//!
//! Window mapping (fixed windows in the service, token buckets locally):
//! - `db_queries_per_minute: N` -> `activity=db_query`, N per MINUTE: exactly N `db_query`
//!   calls per window across every Envoy.
//! - `per_second: r, burst: b` -> two `activity=any` descriptors: max(b, ceil(r)) per
//!   SECOND (the burst, and a rate above it reachable) and max(b, ceil(60 r)) per MINUTE
//!   (the sustained rate). A bucket allows b + r t in any t; the windows allow at most
//!   that per window, up to twice the per-second figure across a window boundary.
//!
//! The `db_query` descriptor comes first: the service stops counting at the first one
//! over its limit, so a query refused for its budget does not use the request budget.

use crate::ratelimit::RateLimit;

/// gRPC service and method of `ShouldRateLimit`.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// The largest answer read: statuses for a handful of descriptors are a few dozen bytes.
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// `envoy.type.v3.RateLimitUnit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second = 1,
    Minute = 2,
}

/// One RLS descriptor: its entries and the limit it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub entries: Vec<(&'static str, String)>,
    pub requests_per_unit: u32,
    pub unit: Unit,
    /// What a 429 names when this descriptor is over its limit.
    pub budget: &'static str,
}

/// The descriptors of one request under `rule`'s limit for `principal`
/// (`ratelimit::principal_key`); `is_query`: the operation is a `db_query`.
pub fn descriptors(
    rule: &str,
    principal: &str,
    limit: &RateLimit,
    is_query: bool,
) -> Vec<Descriptor> {
    let entries = |activity: &str| {
        vec![
            ("rule", rule.to_owned()),
            ("principal", principal.to_owned()),
            ("activity", activity.to_owned()),
        ]
    };
    let mut out = Vec::with_capacity(3);
    if let (true, Some(per_minute)) = (is_query, limit.db_queries_per_minute) {
        out.push(Descriptor {
            entries: entries("db_query"),
            requests_per_unit: per_minute,
            unit: Unit::Minute,
            budget: "db_query budget",
        });
    }
    // per_second is validated to (0, 100000]: the casts cannot overflow.
    let per_second = limit.per_second.ceil() as u32;
    let per_minute = (limit.per_second * 60.0).ceil() as u32;
    out.push(Descriptor {
        entries: entries("any"),
        requests_per_unit: limit.burst.max(per_second),
        unit: Unit::Second,
        budget: "requests",
    });
    out.push(Descriptor {
        entries: entries("any"),
        requests_per_unit: limit.burst.max(per_minute),
        unit: Unit::Minute,
        budget: "requests",
    });
    out
}

/// `RateLimitRequest { domain, descriptors, hits_addend: 1 }` in protobuf.
pub fn encode_request(domain: &str, descriptors: &[Descriptor]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 96 * descriptors.len());
    put_bytes(&mut out, 1, domain.as_bytes());
    for d in descriptors {
        let mut descriptor = Vec::with_capacity(96);
        for (key, value) in &d.entries {
            let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
            put_bytes(&mut entry, 1, key.as_bytes());
            put_bytes(&mut entry, 2, value.as_bytes());
            put_bytes(&mut descriptor, 1, &entry);
        }
        let mut limit = Vec::with_capacity(8);
        put_varint_field(&mut limit, 1, u64::from(d.requests_per_unit));
        put_varint_field(&mut limit, 2, d.unit as u64);
        put_bytes(&mut descriptor, 2, &limit);
        put_bytes(&mut out, 2, &descriptor);
    }
    put_varint_field(&mut out, 3, 1);
    out
}

/// The answer: over the limit or not, and for each descriptor its code and reset time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub over_limit: bool,
    pub statuses: Vec<Status>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub over_limit: bool,
    pub limit_remaining: u32,
    pub reset_ms: u64,
}

/// RLS `Code`: 1 OK, 2 OVER_LIMIT (0 UNKNOWN is treated as a failed call).
const CODE_OK: u64 = 1;
const CODE_OVER_LIMIT: u64 = 2;

/// Decodes a `RateLimitResponse`; `Err` on malformed bytes or an UNKNOWN overall code.
pub fn decode_response(bytes: &[u8]) -> Result<Answer, &'static str> {
    let mut answer = Answer::default();
    let mut code = 0;
    let mut reader = Reader { bytes, at: 0 };
    while let Some((field, value)) = reader.field()? {
        match (field, value) {
            (1, Value::Varint(v)) => code = v,
            (2, Value::Bytes(status)) => answer.statuses.push(decode_status(status)?),
            _ => {}
        }
    }
    match code {
        CODE_OK => Ok(answer),
        CODE_OVER_LIMIT => {
            answer.over_limit = true;
            Ok(answer)
        }
        _ => Err("the rate limit service answered no code"),
    }
}

fn decode_status(bytes: &[u8]) -> Result<Status, &'static str> {
    let mut status = Status::default();
    let mut reader = Reader { bytes, at: 0 };
    while let Some((field, value)) = reader.field()? {
        match (field, value) {
            (1, Value::Varint(v)) => status.over_limit = v == CODE_OVER_LIMIT,
            (3, Value::Varint(v)) => status.limit_remaining = u32::try_from(v).unwrap_or(u32::MAX),
            (4, Value::Bytes(duration)) => status.reset_ms = decode_duration_ms(duration)?,
            _ => {}
        }
    }
    Ok(status)
}

/// `google.protobuf.Duration` in milliseconds (negative: 0).
fn decode_duration_ms(bytes: &[u8]) -> Result<u64, &'static str> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    let mut reader = Reader { bytes, at: 0 };
    while let Some((field, value)) = reader.field()? {
        match (field, value) {
            // int64/int32 on the wire: two's complement in a varint.
            (1, Value::Varint(v)) => seconds = v as i64,
            (2, Value::Varint(v)) => nanos = i64::from(v as i32),
            _ => {}
        }
    }
    let ms = seconds
        .saturating_mul(1000)
        .saturating_add(nanos / 1_000_000);
    Ok(u64::try_from(ms).unwrap_or(0))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed 32/64-bit: skipped.
    Fixed,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at).ok_or("truncated varint")?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.at.checked_add(n).ok_or("length overflow")?;
        let bytes = self.bytes.get(self.at..end).ok_or("truncated field")?;
        self.at = end;
        Ok(bytes)
    }

    /// The next field number and value; `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, &'static str> {
        if self.at >= self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            _ => return Err("unsupported wire type"),
        };
        Ok(Some((key >> 3, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: u32, db: Option<u32>) -> RateLimit {
        RateLimit {
            per_second,
            burst,
            db_queries_per_minute: db,
            scope: crate::ratelimit::Scope::Global,
            on_unavailable: None,
        }
    }

    #[test]
    fn budgets_map_to_fixed_windows() {
        let cases = [
            // (per_second, burst, db, is_query) -> [(activity, n, unit)]
            (
                5.0,
                10,
                Some(10),
                true,
                vec![
                    ("db_query", 10, Unit::Minute),
                    ("any", 10, Unit::Second),
                    ("any", 300, Unit::Minute),
                ],
            ),
            (
                5.0,
                10,
                Some(10),
                false,
                vec![("any", 10, Unit::Second), ("any", 300, Unit::Minute)],
            ),
            (
                100.0,
                1,
                None,
                true,
                vec![("any", 100, Unit::Second), ("any", 6000, Unit::Minute)],
            ),
            (
                0.01,
                5,
                None,
                false,
                vec![("any", 5, Unit::Second), ("any", 5, Unit::Minute)],
            ),
            (
                0.5,
                1,
                None,
                false,
                vec![("any", 1, Unit::Second), ("any", 30, Unit::Minute)],
            ),
        ];
        for (per_second, burst, db, is_query, expected) in cases {
            let got = descriptors("r", "p", &limit(per_second, burst, db), is_query);
            let got: Vec<(String, u32, Unit)> = got
                .iter()
                .map(|d| (d.entries[2].1.clone(), d.requests_per_unit, d.unit))
                .collect();
            let expected: Vec<(String, u32, Unit)> = expected
                .into_iter()
                .map(|(a, n, u)| (a.to_owned(), n, u))
                .collect();
            assert_eq!(
                got, expected,
                "{per_second}/s burst {burst} db {db:?} query {is_query}"
            );
        }
        let d = &descriptors("rule-a", "0011", &limit(1.0, 1, None), false)[0];
        assert_eq!(
            d.entries,
            vec![
                ("rule", "rule-a".to_owned()),
                ("principal", "0011".to_owned()),
                ("activity", "any".to_owned())
            ]
        );
    }

    #[test]
    fn request_encoding_is_protobuf() {
        let d = Descriptor {
            entries: vec![("rule", "r".to_owned())],
            requests_per_unit: 300,
            unit: Unit::Minute,
            budget: "requests",
        };
        let bytes = encode_request("lg", &[d]);
        let expected: Vec<u8> = vec![
            0x0a, 2, b'l', b'g', // domain
            0x12, 18, // descriptor
            0x0a, 9, 0x0a, 4, b'r', b'u', b'l', b'e', 0x12, 1, b'r', // entry
            0x12, 5, 0x08, 0xac, 0x02, 0x10, 2, // limit: 300, MINUTE
            0x18, 1, // hits_addend
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn responses_decode_and_garbage_is_an_error() {
        // overall OVER_LIMIT; one status: OVER_LIMIT, remaining 0, reset 41.5 s; an
        // unknown field (raw_body) skipped.
        let status = [
            0x08, 2, 0x18, 0, 0x22, 8, 0x08, 41, 0x10, 0x80, 0xca, 0xb5, 0xee, 0x01,
        ];
        let mut bytes = vec![0x08, 2, 0x12, status.len() as u8];
        bytes.extend_from_slice(&status);
        bytes.extend_from_slice(&[0x2a, 2, b'h', b'i']);
        assert_eq!(
            decode_response(&bytes),
            Ok(Answer {
                over_limit: true,
                statuses: vec![Status {
                    over_limit: true,
                    limit_remaining: 0,
                    reset_ms: 41_500
                }]
            })
        );
        assert_eq!(decode_response(&[0x08, 1]).map(|a| a.over_limit), Ok(false));
        for bad in [
            &[][..],
            &[0x08][..],
            &[0x08, 0][..],
            &[0x12, 5, 1][..],
            &[0x0b][..],
        ] {
            assert!(decode_response(bad).is_err(), "{bad:?}");
        }
    }
}
