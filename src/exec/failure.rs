//! Failure categories: what is worth retrying, and what is an interruption rather than a failure.

use std::fmt;
use std::io::ErrorKind;
use std::time::Duration;

/// Marks an error as transient (a network blip, a busy server): retried with backoff.
#[derive(Debug)]
pub struct Transient(pub String);

impl fmt::Display for Transient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Transient {}

pub use crate::kind::cancel::{Cancelled, is_cancelled};

pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<Transient>()
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::TimedOut
                        | ErrorKind::Interrupted
                        | ErrorKind::BrokenPipe
                        | ErrorKind::WouldBlock
                )
            })
    })
}

/// Exponential backoff with full jitter: 0.25 s, 0.5 s, 1 s, … capped at 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(250).saturating_mul(1 << attempt.min(7)).min(Duration::from_secs(30));
    cap.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn classifies_through_context() {
        let reset: anyhow::Error = std::io::Error::from(ErrorKind::ConnectionReset).into();
        assert!(is_transient(&reset.context("uploading")));
        let missing: anyhow::Error = std::io::Error::from(ErrorKind::NotFound).into();
        assert!(!is_transient(&missing));
        let cancelled = Err::<(), _>(Cancelled).context("running").unwrap_err();
        assert!(is_cancelled(&cancelled));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(250));
        assert!(backoff(3) >= Duration::from_millis(1000));
        assert!(backoff(30) <= Duration::from_secs(30));
    }
}
