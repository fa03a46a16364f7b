//! Errors of CRM calls, classified by what the caller should do.

use std::time::Duration;

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later (rate limit, 5xx, timeout, connection trouble).
    Retryable,
    /// The CRM refused this request for good (validation); retrying cannot help.
    /// The message goes to the dead-letter state with the reason.
    Permanent,
    /// The CRM refuses this integration (blocked after abuse, unpaid, revoked):
    /// stop calling and surface a condition until a person acts.
    Fatal,
}

/// A failed CRM call.
#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    /// The CRM asked us to slow down (429); `retry_after` is when to try again.
    #[error("rate limited by the CRM (retry after {retry_after:?})")]
    RateLimited {
        /// How long the CRM asked us to wait.
        retry_after: Option<Duration>,
    },
    /// A transient failure: 5xx, connection refused, reset.
    #[error("the CRM is unavailable: {0}")]
    Unavailable(String),
    /// The request was sent but no answer came in time: the write may or may not
    /// have happened. Adapters resolve this before writing again.
    #[error("no answer from the CRM in time (the write may have happened): {0}")]
    InDoubt(String),
    /// The access token was refused (401): refresh it and try again.
    #[error("the CRM refused the access token: {0}")]
    Unauthorized(String),
    /// The refresh token is spent or revoked: a person must grant access again.
    #[error("reauthorization required: {0}")]
    ReauthorizationRequired(String),
    /// The CRM rejected the request (4xx validation): never retried.
    #[error("rejected by the CRM ({status}): {detail}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// What the CRM said, including field paths of validation errors.
        detail: String,
    },
    /// The CRM refuses this integration (403 after abuse, 402 unpaid).
    #[error("the CRM refuses this integration ({status}): {detail}")]
    Blocked {
        /// HTTP status.
        status: u16,
        /// What the CRM said.
        detail: String,
    },
    /// The CRM answered with something that does not follow its documented shape.
    #[error("unexpected answer from the CRM: {0}")]
    Protocol(String),
    /// The adapter is misconfigured (bad base URL, bad CA certificate, ...).
    #[error("configuration: {0}")]
    Config(String),
}

impl CrmError {
    /// What the caller should do about this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            CrmError::RateLimited { .. }
            | CrmError::Unavailable(_)
            | CrmError::InDoubt(_)
            | CrmError::Unauthorized(_)
            | CrmError::Protocol(_) => ErrorClass::Retryable,
            CrmError::Rejected { .. } => ErrorClass::Permanent,
            CrmError::Blocked { .. } | CrmError::ReauthorizationRequired(_) | CrmError::Config(_) => ErrorClass::Fatal,
        }
    }

    /// How long to wait before retrying, when the CRM said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CrmError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}
