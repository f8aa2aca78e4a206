//! Progress reports and rate limiting of the long steps (checksums, copies, loads).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Receives progress of the long steps: (step, bytes done, bytes in total).
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

/// A [`Progress`] that ignores everything.
pub fn no_progress(_step: &str, _done: u64, _total: u64) {}

/// Throttles a step to `bytes_per_sec`: call [`RateLimit::pace`] with the bytes done so far
/// (e.g. from a [`Progress`] callback) and it sleeps while the step is ahead of the rate.
pub struct RateLimit {
    bytes_per_sec: u64,
    started: Mutex<Option<(String, Instant)>>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            started: Mutex::new(None),
        }
    }

    /// Sleeps until `done` bytes of `step` are within the rate since the step began.
    pub fn pace(&self, step: &str, done: u64) {
        let since = {
            let Ok(mut started) = self.started.lock() else {
                return;
            };
            match started.as_ref() {
                Some((s, t)) if s == step => *t,
                _ => {
                    let now = Instant::now();
                    *started = Some((step.to_owned(), now));
                    now
                }
            }
        };
        let allowed = Duration::from_secs_f64(done as f64 / self.bytes_per_sec as f64);
        let elapsed = since.elapsed();
        if allowed > elapsed {
            std::thread::sleep(allowed - elapsed);
        }
    }
}
