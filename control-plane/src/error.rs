//! The admin API's one error type, [`AdminError`], and its one mapping to a gRPC status
//! (`From<AdminError> for Status`). Every refusal of an admin call, and of the token check
//! the config stream shares, is built here; the CLI turns the code into its exit code.
//!
//! ```text
//!   AdminError                           gRPC code           CLI exit
//!   InvalidArgument, InvalidField        InvalidArgument     1
//!   Rejected(CommandError::Invalid)      InvalidArgument     1
//!   Rejected(CommandError::Conflict)     Aborted             5
//!   Rejected(CommandError::NotFound)     NotFound            4
//!   NotFound, NotMember                  NotFound            4
//!   FailedPrecondition                   FailedPrecondition  1
//!   Unauthenticated, PermissionDenied    (the same)          3
//!   NotApplied (+ NOT_APPLIED metadata)  Unavailable         6
//!   Unavailable                          Unavailable         6
//!   Timeout                              DeadlineExceeded    6
//!   Internal                             Internal            1
//! ```
//!
//! Messages are lowercase with no trailing period; the CLI prints them as they are.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::raft_types::NodeId;
use crate::state::CommandError;

/// Metadata on an error that guarantees the call changed nothing, so it may be retried.
pub const NOT_APPLIED: &str = "x-tollgate-not-applied";

/// Why an admin call was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A malformed request as a whole (a document that does not parse, a missing key).
    #[error("{0}")]
    InvalidArgument(String),
    /// One field of the request is wrong.
    #[error("{field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// The state machine refused the command (invalid, a version conflict, a missing
    /// resource); its message is shown as it is.
    #[error(transparent)]
    Rejected(#[from] CommandError),
    /// `what` (e.g. "tenant acme") does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// A membership change names a node outside the cluster.
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    /// The cluster is not in a state that allows the call (not initialized, another master
    /// key, a peer that is not ready).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No token, or one this cluster does not know.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The token is known but may not do this: "{who} cannot {what}".
    #[error("{who} cannot {what}")]
    PermissionDenied { who: String, what: String },
    /// The call surely changed nothing (leadership moved under it): callers may retry.
    #[error("{0}; retry")]
    NotApplied(&'static str),
    /// No leader, no quorum, or Raft failed; the call may or may not have been applied.
    #[error("{0}")]
    Unavailable(String),
    /// Waiting for the cluster ran out of time.
    #[error("{0}")]
    Timeout(String),
    /// A bug or a local failure of this node (randomness, disk, encoding).
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidField {
            field,
            reason: reason.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    /// The gRPC code this error is answered with.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) | Self::InvalidField { .. } => Code::InvalidArgument,
            Self::Rejected(CommandError::Invalid(_)) => Code::InvalidArgument,
            Self::Rejected(CommandError::Conflict(_)) => Code::Aborted,
            Self::Rejected(CommandError::NotFound(_)) | Self::NotFound { .. } | Self::NotMember(_) => {
                Code::NotFound
            }
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::NotApplied(_) | Self::Unavailable(_) => Code::Unavailable,
            Self::Timeout(_) => Code::DeadlineExceeded,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        let mut status = Status::new(e.code(), e.to_string());
        if matches!(e, AdminError::NotApplied(_)) {
            status
                .metadata_mut()
                .insert(NOT_APPLIED, MetadataValue::from_static("1"));
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_are_what_the_cli_maps_to_exit_codes() {
        let cases = [
            (
                AdminError::invalid("label", "must be at most 200 characters"),
                Code::InvalidArgument,
                "label: must be at most 200 characters",
            ),
            (
                CommandError::Conflict("version 3 does not match the stored version 4".into()).into(),
                Code::Aborted,
                "version 3 does not match the stored version 4",
            ),
            (
                CommandError::Invalid(vec!["a".into(), "b".into()]).into(),
                Code::InvalidArgument,
                "a\nb",
            ),
            (
                AdminError::not_found("tenant acme"),
                Code::NotFound,
                "tenant acme not found",
            ),
            (AdminError::NotMember(9), Code::NotFound, "node 9 is not a member"),
            (
                AdminError::Unauthenticated("invalid token"),
                Code::Unauthenticated,
                "invalid token",
            ),
            (
                AdminError::PermissionDenied {
                    who: "a edge token".into(),
                    what: "do this".into(),
                },
                Code::PermissionDenied,
                "a edge token cannot do this",
            ),
            (
                AdminError::NotApplied("leadership changed"),
                Code::Unavailable,
                "leadership changed; retry",
            ),
            (
                AdminError::Timeout("node 2 did not catch up".into()),
                Code::DeadlineExceeded,
                "node 2 did not catch up",
            ),
        ];
        for (e, code, message) in cases {
            let not_applied = matches!(e, AdminError::NotApplied(_));
            let s = Status::from(e);
            assert_eq!((s.code(), s.message()), (code, message));
            assert_eq!(s.metadata().contains_key(NOT_APPLIED), not_applied, "{message}");
        }
    }
}
