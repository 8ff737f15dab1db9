//! How a command ends: one type, whose exhaustive [`Error::exit_code`] is the only place exit codes come
//! from. Commands return `anyhow::Result<()>`; an outcome that is not success (targets failed, `plan --check`
//! found work) is one of these variants inside it, and any other error is put in its category by what it
//! carries (`Error::classify`).

use crate::error::{Bug, UsageError};
use crate::kind::{Cancelled, SettingError};
use crate::pipeline::Diagnostic;
use std::fmt;

pub const EXIT_CODES: &str = "\
Exit codes:
  0    success (for `plan --check`: nothing to build)
  1    one or more targets failed
  2    bad command line, pipeline file or remote file
  3    store, file system, network or other environment error; a step that cannot be planned (unavailable)
  4    `plan --check`: targets would be built
  75   `dsmake worker`: the target failed with a transient error (EX_TEMPFAIL: a scheduler may retry it)
  101  an internal error (a bug in dsmake: please report it)
  130  interrupted (Ctrl-C or SIGTERM); finished targets are kept";

#[derive(Debug)]
pub enum Error {
    /// Targets failed; the build's summary named them.
    TargetsFailed { failed: usize },
    /// `plan --check`: this many targets would be built (or the plan waits on unknown shard counts).
    WouldBuild { targets: usize },
    /// Steps that what was asked for needs could not be planned (the plan or summary said which and why).
    Unavailable { steps: Vec<(String, String)> },
    /// Ctrl-C or SIGTERM stopped the work.
    Interrupted,
    /// `dsmake worker`: the target failed for a reason that may pass.
    Transient(anyhow::Error),
    /// A mistake on the command line, in a pipeline file or in a remote file.
    BadInput(anyhow::Error),
    /// The store, the file system, the network, a remote service.
    Environment(anyhow::Error),
    /// A bug: a panic or a broken invariant.
    Internal(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::TargetsFailed { .. } => 1,
            Error::BadInput(_) => 2,
            Error::Environment(_) | Error::Unavailable { .. } => 3,
            Error::WouldBuild { .. } => 4,
            Error::Transient(_) => 75,
            Error::Internal(_) => 101,
            Error::Interrupted => 130,
        }
    }

    /// Puts an error in its category by what it carries.
    pub fn classify(e: anyhow::Error) -> Error {
        if e.is::<Error>() {
            return e.downcast::<Error>().unwrap_or_else(Error::Environment);
        }
        let chain = || e.chain();
        if chain().any(|c| c.is::<Bug>()) {
            Error::Internal(format!("{e:#}"))
        } else if chain().any(|c| c.is::<Diagnostic>() || c.is::<UsageError>() || c.is::<SettingError>()) {
            Error::BadInput(e)
        } else if chain().any(|c| c.is::<Cancelled>()) {
            Error::Interrupted
        } else {
            Error::Environment(e)
        }
    }

    /// What to print on stderr, if anything: outcomes the command already reported print nothing.
    pub fn message(&self) -> Option<String> {
        match self {
            Error::TargetsFailed { .. } | Error::WouldBuild { .. } | Error::Interrupted => None,
            // A diagnostic is printed whole (file:line:col, the source line, the help); context added
            // around it stays out of the way.
            Error::BadInput(e) => Some(match e.chain().find_map(|c| c.downcast_ref::<Diagnostic>()) {
                Some(d) => format!("error: {d}"),
                None => match e.chain().find_map(|c| c.downcast_ref::<UsageError>()) {
                    Some(u) => format!("error: {u}"),
                    None => format!("error: {e:#}"),
                },
            }),
            Error::Transient(e) | Error::Environment(e) => Some(format!("error: {e:#}")),
            Error::Unavailable { steps } => Some(
                steps
                    .iter()
                    .map(|(step, why)| format!("error: step `{step}` cannot be planned now: {why}"))
                    .collect::<Vec<_>>()
                    .join("\n")
                    + "\n(everything that does not read it was planned)",
            ),
            Error::Internal(what) => Some(format!(
                "error: internal error: {what}\nThis is a bug in dsmake, not in your pipeline or data: please report \
                 it with the command you ran and this message."
            )),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TargetsFailed { failed } => write!(f, "{failed} targets failed"),
            Error::WouldBuild { targets } => write!(f, "{targets} targets would be built"),
            Error::Interrupted => f.write_str("interrupted"),
            Error::Unavailable { steps } => {
                write!(f, "unavailable steps: {}", steps.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(", "))
            }
            Error::Transient(e) | Error::BadInput(e) | Error::Environment(e) => write!(f, "{e:#}"),
            Error::Internal(what) => write!(f, "internal error: {what}"),
        }
    }
}
impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn categories_come_from_what_an_error_carries() {
        let usage = Err::<(), _>(UsageError("no step `x`".into())).context("planning").unwrap_err();
        assert_eq!(Error::classify(usage).exit_code(), 2);
        let setting = anyhow::Error::from(SettingError::new("model", "unknown model"));
        assert_eq!(Error::classify(setting).exit_code(), 2);
        let io = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(Error::classify(io).exit_code(), 3);
        let cancelled = Err::<(), _>(Cancelled).context("building images/00000").unwrap_err();
        assert_eq!(Error::classify(cancelled).exit_code(), 130);
        let bug = anyhow::Error::from(Bug("step made an invalid shard id".into()));
        let bug = Error::classify(bug);
        assert_eq!(bug.exit_code(), 101);
        assert!(bug.message().is_some_and(|m| m.contains("please report")));
        let outcome = anyhow::Error::from(Error::WouldBuild { targets: 3 });
        assert_eq!(Error::classify(outcome).exit_code(), 4);
    }
}
