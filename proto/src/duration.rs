//! Durations written the way operators write them: `"500ms"`, `"30s"`, `"10m"`, `"1h"`,
//! `"7d"` (the filter's plugin config and the broker's config alike).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// What [`parse`] accepts, as a JSON Schema `pattern` (the plugin config's schema puts it
/// on every duration field).
pub const PATTERN: &str = r"^\s*[0-9]+(ms|s|m|h|d)\s*$";

/// Parses `"<digits><unit>"` with unit `ms`, `s`, `m`, `h` or `d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} has no unit (use ms, s, m, h or d)"))?;
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("duration {text:?} does not start with a whole number"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "duration {text:?} has unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

/// serde adapter: `#[serde(deserialize_with = "duration::deserialize")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_unit_and_rejects_the_rest() {
        let cases: &[(&str, Option<u64>)] = &[
            ("500ms", Some(500)),
            ("30s", Some(30_000)),
            ("2m", Some(120_000)),
            ("1h", Some(3_600_000)),
            ("7d", Some(604_800_000)),
            ("0s", Some(0)),
            (" 5m ", Some(300_000)),
            ("30", None),
            ("60", None),
            ("s", None),
            ("1.5s", None),
            ("-1s", None),
            ("10y", None),
            ("99999999999999999999d", None),
        ];
        for (text, want) in cases {
            let got = parse(text).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, *want, "parse({text:?})");
        }
    }

    proptest! {
        #[test]
        fn written_durations_round_trip(value in 0u64..1_000_000, unit in 0usize..5) {
            let (name, millis) = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)][unit];
            prop_assert_eq!(parse(&format!("{value}{name}")), Ok(Duration::from_millis(value * millis)));
        }

        /// What the schema's pattern lets through, `parse` accepts (short of overflow),
        /// and the other way round.
        #[test]
        fn the_schema_pattern_and_the_parser_agree(text in r"\s?[0-9]{0,4}(ms|s|m|h|d|x|\.5s|)\s?") {
            let pattern = regex::Regex::new(PATTERN).unwrap();
            prop_assert_eq!(parse(&text).is_ok(), pattern.is_match(&text), "{:?}", text);
        }
    }
}
