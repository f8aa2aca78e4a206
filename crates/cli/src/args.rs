//! Parsers for option values (durations, rates), with clear messages and no overflow.

use std::time::Duration;

/// Parses durations like `90s`, `15m`, `2h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m or 2h"))?;
    let scale: u64 = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} has an unknown unit; use s, m, h or d")),
    };
    // Ten years is far beyond any lease or run this tool is for; larger values are typos.
    const MAX_SECS: u64 = 10 * 365 * 86_400;
    match n.checked_mul(scale) {
        Some(secs) if secs <= MAX_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(format!("{text:?} is too long; at most ten years (3650d)")),
    }
}

/// Parses a rate like `512K`, `50M` or `1G` (per second, binary units) into bytes per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text
        .trim()
        .trim_end_matches("/s")
        .trim_end_matches(['B', 'b']);
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a rate like 512K, 50M or 1G (per second)"))?;
    let scale: u64 = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return Err(format!("{text:?} has an unknown unit; use K, M or G")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("{text:?} must be a positive rate")),
        Some(rate) => Ok(rate),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_and_rates_parse_and_absurd_ones_are_refused() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("5124095576030432h")
            .unwrap_err()
            .contains("too long"));
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("3w").unwrap_err().contains("unknown unit"));
        assert_eq!(parse_rate("50M").unwrap(), 50 << 20);
        assert!(parse_rate("0").is_err() && parse_rate("99999999999999G").is_err());
    }
}
