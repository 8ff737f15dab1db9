//! Failure categories: what is an interruption rather than a failure. What is worth retrying, and how often,
//! is `crate::retry`'s.

use std::fmt;

// Where they were; new code names `crate::retry`.
pub use crate::retry::{Transient, is_transient};

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
    fn classifies_through_context() {
        let cancelled = Err::<(), _>(Cancelled).context("running").unwrap_err();
        assert!(is_cancelled(&cancelled));
        let reset: anyhow::Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(!is_cancelled(&reset));
    }
}
