//! Interruption: the build loop sets it on Ctrl-C or SIGTERM, long-running work polls it and stops, and the
//! error that says so is not a failure.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when the build is interrupted: long-running work polls it and stops.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// `Err(Cancelled)` once cancelled: `cancel.check()?` in a loop.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() { Err(Cancelled) } else { Ok(()) }
    }
}

/// The build was interrupted while this target ran; nothing was published.
#[derive(Debug)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}
impl std::error::Error for Cancelled {}

pub fn is_cancelled(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Cancelled>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn cancellation_is_seen_through_context() {
        let cancel = Cancel::default();
        assert!(cancel.check().is_ok());
        cancel.clone().cancel();
        let err = cancel.check().context("running").unwrap_err();
        assert!(is_cancelled(&err));
        assert!(!is_cancelled(&anyhow::anyhow!("other")));
    }
}
