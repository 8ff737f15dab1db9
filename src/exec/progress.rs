//! Progress for people: a bar on a terminal, one line per event otherwise (or with -v).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Duration;

#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    verbose: bool,
}

impl Progress {
    pub fn new(total: u64, show: bool, verbose: bool) -> Self {
        let bar = if show {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress { bar, verbose }
    }

    pub fn start(&self, target: &str) {
        self.bar.set_message(target.to_string());
    }

    pub fn done(&self, target: &str, seconds: f64) {
        self.bar.inc(1);
        if self.verbose {
            self.line(&format!("built {target} ({seconds:.2}s)"));
        }
    }

    pub fn retry(&self, target: &str, attempt: u32, error: &str) {
        self.line(&format!("retrying {target} (attempt {}) after: {error}", attempt + 1));
    }

    pub fn fail(&self, target: &str, error: &str) {
        self.bar.inc(1);
        self.line(&format!("error: {target} failed: {error}"));
    }

    fn line(&self, text: &str) {
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
