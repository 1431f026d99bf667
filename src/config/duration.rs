//! Human-readable durations in config files: `"500ms"`, `"30s"`, `"5m"`, `"4h"`, `"5d"`.
//!
//! A bare number is refused on purpose: `timeout = 30` is ambiguous (seconds? milliseconds?)
//! and an operator who guesses wrong should hear about it at start-up, not in production.

use std::time::Duration;

/// Parses `NUMBER UNIT` where UNIT is one of `ms`, `s`, `m`, `h`, `d`.
///
/// # Errors
/// A message naming what is wrong, for the config loader to prefix with the key.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("\"{text}\" has no unit (use ms, s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" does not start with a whole number"))?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("\"{other}\" is not a unit (use ms, s, m, h or d)")),
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("\"{text}\" is too long"))
}

/// Serde adapter so config structs can hold a `Duration` written as text.
pub(crate) mod serde_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Deserializes a duration written as `"30s"` and friends.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86400)));
    }

    #[test]
    fn refusals() {
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
