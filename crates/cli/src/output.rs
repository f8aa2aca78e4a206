//! How results are printed: a line for people, or with `--json` one JSON object per result on
//! stdout (raw values: timestamps, milliseconds after the epoch, counts).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

/// Where a command's result goes.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as one JSON line, or `human()` as text.
    pub fn emit<T: Serialize + ?Sized>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> Result<()> {
        if self.json {
            println!(
                "{}",
                serde_json::to_string(value).context("cannot render the result as JSON")?
            );
        } else {
            println!("{}", human());
        }
        Ok(())
    }
}

/// Milliseconds after the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A moment (milliseconds after the epoch) as a UTC date-time, e.g. `2026-12-04 14:30:01 UTC`.
pub fn datetime(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || format!("{ms} ms after the epoch"),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

/// A span of milliseconds as `2d 3h`, `3m 12s`, `850ms`: the two largest units.
pub fn span(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let units = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, name) in units {
        if rest >= size || !parts.is_empty() {
            parts.push(format!("{}{name}", rest / size));
            rest %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// `2026-12-04 14:30:01 UTC (3m 12s ago)` or `… (in 1h 56m)`, relative to `now`.
pub fn moment(ms: u64, now: u64) -> String {
    if ms <= now {
        format!("{} ({} ago)", datetime(ms), span(now - ms))
    } else {
        format!("{} (in {})", datetime(ms), span(ms - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_read_as_dates_and_ages() {
        assert_eq!(datetime(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(datetime(1_796_394_601_000), "2026-12-04 14:30:01 UTC");
        assert_eq!(
            datetime(u64::MAX),
            format!("{} ms after the epoch", u64::MAX)
        );
        assert_eq!(span(850), "850ms");
        assert_eq!(span(192_000), "3m 12s");
        assert_eq!(span(3_600_000), "1h 0m");
        assert_eq!(span(2 * 86_400_000 + 3 * 3_600_000 + 5000), "2d 3h");
        assert_eq!(moment(1000, 61_000), "1970-01-01 00:00:01 UTC (1m 0s ago)");
        assert_eq!(moment(61_000, 1000), "1970-01-01 00:01:01 UTC (in 1m 0s)");
    }
}
