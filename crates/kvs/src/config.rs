//! Shared pieces of the backends' config blocks.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `500ms`, `10s`, `2m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" | "" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

/// A config timeout or interval (`deserialize_with`): a number of seconds or a string
/// [`parse_duration`] reads, between 1 ms and 1 h.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    let parsed = match Raw::deserialize(d)? {
        Raw::Secs(s) => Some(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t),
    };
    match parsed {
        Some(d) if !d.is_zero() && d <= Duration::from_secs(3600) => Ok(d),
        _ => Err(serde::de::Error::custom(
            "expected a duration between 1ms and 1h, like 10s or 500ms",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units_and_reject_the_rest() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 10s "), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        for bad in ["", "s", "10h", "-1s", "1.5s", "99999999999999999999m"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(
            parse_duration(&format!("{}m", u64::MAX / 2)),
            None,
            "overflow is refused"
        );
    }
}
