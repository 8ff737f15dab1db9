//! Which S3 errors are worth retrying, and which mean "not there" or "someone else was first".

use crate::retry::Transient;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// HTTP status of a service error, if the request got that far.
pub fn status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

pub fn is_precondition_failed<E>(err: &SdkError<E>) -> bool {
    status(err) == Some(412)
}

pub fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    status(err) == Some(404) || matches!(err.as_service_error().and_then(|e| e.code()), Some("NoSuchKey" | "NotFound"))
}

/// Error codes that a retry may get past whatever the status (S3 sends RequestTimeout with 400), as the SDK's
/// own retry classifier has them.
const TRANSIENT_CODES: &[&str] = &[
    "RequestTimeout",
    "RequestTimeoutException",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
];

/// Turns an SDK error into an error that says what failed, marked transient when a retry may succeed:
/// connection failures and timeouts, 5xx, 429, and throttling or timeout codes (503 SlowDown, 400
/// RequestTimeout).
pub fn describe<E>(err: SdkError<E>, what: &str) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let transient = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(service) => {
            status(&err).is_some_and(|s| s >= 500 || s == 429)
                || service.err().code().is_some_and(|code| TRANSIENT_CODES.contains(&code))
        }
        _ => false,
    };
    let detail = match err.as_service_error() {
        Some(service) => {
            format!("{} ({})", service.code().unwrap_or("error"), service.message().unwrap_or("no message"))
        }
        None => format!("{}", aws_smithy_types::error::display::DisplayErrorContext(&err)),
    };
    let status = status(&err).map(|s| format!("HTTP {s}: ")).unwrap_or_default();
    let message = format!("{what}: {status}{detail}");
    let hint = match crate::store::s3::errors::status(&err) {
        Some(401 | 403) => "\n  (check the credentials: AWS_PROFILE / AWS_ACCESS_KEY_ID, and the bucket policy)",
        Some(301) => "\n  (the bucket is in another region: set AWS_REGION or `region` in the remote file)",
        _ => "",
    };
    if transient { anyhow::Error::new(Transient(message)) } else { anyhow::anyhow!("{message}{hint}") }
}
