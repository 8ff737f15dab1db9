//! The error markers lower layers raise where the category matters to the exit code; `cli::error` turns
//! every error into one `cli::Error` with its code.

use std::fmt;

/// A mistake on the command line found after parsing (a `--target` naming no step, a pipeline name that
/// matches no file): bad input, exit 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

/// A broken invariant: a bug in dsmake, not a problem with the input or the machine.
#[derive(Debug)]
pub struct Bug(pub String);

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Bug {}
