//! Progress bars for backup and restore steps on stderr (indicatif hides them when stderr is
//! not a terminal), paced to an optional rate limit in bytes per second.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Bars {
    current: Mutex<Option<(String, ProgressBar)>>,
    limit: Option<ortelius_backup::RateLimit>,
}

impl Bars {
    pub fn new(rate_limit: Option<u64>) -> Self {
        Self {
            current: Mutex::new(None),
            limit: rate_limit.map(ortelius_backup::RateLimit::new),
        }
    }

    pub fn update(&self, step: &str, done: u64, total: u64) {
        self.draw(step, done, total);
        if let Some(limit) = &self.limit {
            limit.pace(step, done);
        }
    }

    fn draw(&self, step: &str, done: u64, total: u64) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        if current.as_ref().map(|(s, _)| s.as_str()) != Some(step) {
            if let Some((_, bar)) = current.take() {
                bar.finish_and_clear();
            }
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{msg:>12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(step.to_owned());
            *current = Some((step.to_owned(), bar));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    pub fn finish(&self) {
        if let Ok(mut current) = self.current.lock() {
            if let Some((_, bar)) = current.take() {
                bar.finish_and_clear();
            }
        }
    }
}
