//! Why a request did not get a certificate, and the one classification of every failure: what
//! is recorded, what is counted, how it is logged and what the client is told all come from
//! [`IssueError::classify`]. The gRPC edge turns [`Answer`] into a status (`grpc::status`).

use crate::adapters::authn::impersonation::ImpersonationError;
use crate::adapters::authn::AuthnError;
use crate::domain::csr::CsrError;
use crate::domain::metrics::{FailureLabel, CA_NOT_READY, CERT_GEN_ERROR};
use crate::domain::policy::{Denial, DenialReason};
use crate::domain::ratelimit::Scope;
use crate::domain::record::{client_text, RecordError, CLIENT_TEXT_BYTES};
use crate::domain::signer::SigningError;

use super::holds::Hold;

/// Why a request did not get a certificate.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("authentication failed: {0}")]
    Authn(#[from] AuthnError),
    #[error("the CSR was refused: {0}")]
    Csr(#[from] CsrError),
    #[error("the request was denied: {0}")]
    Denied(#[from] Denial),
    #[error("impersonation refused: {0}")]
    Impersonation(#[from] ImpersonationError),
    #[error("the caller's mesh {0:?} is not served here")]
    MeshNotServed(String),
    #[error("signing failed: {0}")]
    Signing(#[from] SigningError),
    #[error("the record could not be stored: {0}")]
    Store(#[from] RecordError),
    #[error("the {} rate limit is exceeded", .0.name())]
    RateLimited(Scope),
    #[error("not issuing now ({})", .0.code())]
    Held(Hold),
    #[error("{0}")]
    Revoked(RevokedRefusal),
}

/// A refusal because of a revocation (`meshroot revoke`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokedRefusal {
    /// The identity asked for is blocked.
    #[error("{identity} was revoked at {since} ({reason}); new certificates are refused {until}")]
    Identity {
        identity: String,
        since: String,
        reason: &'static str,
        until: String,
    },
    /// The client certificate that authenticated the renewal was revoked.
    #[error("the client certificate (serial {serial}) was revoked at {at} ({reason})")]
    Certificate {
        serial: String,
        at: String,
        reason: &'static str,
    },
}

impl RevokedRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Identity { .. } => "identity-revoked",
            Self::Certificate { .. } => "certificate-revoked",
        }
    }
}

/// What a failure is, decided once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    /// The recorded reason of a refusal; None for what is not a decision about the request
    /// (meshroot's own failures, rate limits), which gets no denial record: under a flood that
    /// would be the very load the limit exists to shed.
    pub reason: Option<&'static str>,
    /// How the metrics count it.
    pub failure: FailureLabel,
    /// What the client is told.
    pub answer: Answer,
}

/// What the client is told. Istio clients retry INTERNAL, UNAVAILABLE and RESOURCE_EXHAUSTED
/// but never UNAUTHENTICATED or INVALID_ARGUMENT, so final answers use those. Only stable
/// reason codes ever reach the client, never an error's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Final: the caller is not who the request needs (UNAUTHENTICATED).
    Unauthenticated,
    /// Final: the CSR cannot be read (INVALID_ARGUMENT, with the reason).
    InvalidCsr(&'static str),
    /// Final: the CSR asks for what the policy never grants (INVALID_ARGUMENT, with the reason).
    Refused(&'static str),
    /// Retryable: the authentication backend did not answer (UNAVAILABLE).
    BackendUnavailable,
    /// Retryable: over the rate limit of this scope (RESOURCE_EXHAUSTED).
    Throttled(&'static str),
    /// Retryable: meshroot's own failure (INTERNAL).
    Internal,
    /// Retryable: this replica holds issuance until a condition clears (UNAVAILABLE, with the
    /// hold's code).
    Held(&'static str),
}

impl IssueError {
    /// The one classification of this failure.
    pub(crate) fn classify(&self) -> Classification {
        let (reason, failure, answer) = match self {
            Self::Authn(error) => (
                Some(error.reason()),
                FailureLabel::Authentication,
                if error.is_transient() {
                    Answer::BackendUnavailable
                } else {
                    Answer::Unauthenticated
                },
            ),
            Self::Impersonation(error) => (
                Some(error.reason()),
                FailureLabel::Authentication,
                Answer::Unauthenticated,
            ),
            Self::Csr(error) => (
                Some(error.reason()),
                FailureLabel::CsrParsing,
                Answer::InvalidCsr(error.reason()),
            ),
            Self::Denied(denial) => {
                let code = denial.reason.code();
                let failure = match denial.reason {
                    DenialReason::UriSanCount | DenialReason::UriSanInvalid => {
                        FailureLabel::IdExtraction
                    }
                    DenialReason::SignerExpired => FailureLabel::Internal(CA_NOT_READY),
                    _ => FailureLabel::Policy,
                };
                let answer = match denial.reason {
                    DenialReason::CallerMeshMismatch
                    | DenialReason::TrustDomainMismatch
                    | DenialReason::IdentityMismatch
                    | DenialReason::ReservedIdentity => Answer::Unauthenticated,
                    DenialReason::SubjectNotAllowed
                    | DenialReason::CaRequested
                    | DenialReason::UnknownExtension
                    | DenialReason::DnsSan
                    | DenialReason::IpSan
                    | DenialReason::EmailSan
                    | DenialReason::OtherSan
                    | DenialReason::UriSanCount
                    | DenialReason::UriSanInvalid => Answer::Refused(code),
                    DenialReason::SignerExpired => Answer::Internal,
                };
                (Some(code), failure, answer)
            }
            // Another replica may still sign: UNAVAILABLE sends the client there.
            Self::Signing(SigningError::Unhealthy) => (
                None,
                FailureLabel::Internal(CA_NOT_READY),
                Answer::Held("signer-unhealthy"),
            ),
            // The key's token is gone for now: asking again (here, once it is back, or at
            // another replica) helps.
            Self::Signing(SigningError::KeyUnavailable) => (
                None,
                FailureLabel::Internal(CA_NOT_READY),
                Answer::Held("signing-key-unavailable"),
            ),
            Self::MeshNotServed(_) => {
                (None, FailureLabel::Internal(CA_NOT_READY), Answer::Internal)
            }
            Self::Signing(_) | Self::Store(_) => (
                None,
                FailureLabel::Internal(CERT_GEN_ERROR),
                Answer::Internal,
            ),
            Self::Held(hold) => (
                None,
                FailureLabel::Internal(CA_NOT_READY),
                Answer::Held(hold.code()),
            ),
            // Final: asking again does not help until an operator lifts the block.
            Self::Revoked(revoked) => (
                Some(revoked.reason()),
                FailureLabel::Policy,
                Answer::Unauthenticated,
            ),
            Self::RateLimited(scope) => (
                None,
                FailureLabel::Throttled(scope.name()),
                Answer::Throttled(scope.name()),
            ),
        };
        Classification {
            reason,
            failure,
            answer,
        }
    }

    /// The recorded reason of a refusal, or None for internal failures and rate limits.
    pub fn denial_reason(&self) -> Option<&'static str> {
        self.classify().reason
    }

    /// The detail kept in a denial record and logged: the error's own text (never secrets:
    /// tokens and keys are not part of any error). It may quote what a client sent (a CSR's
    /// subject or SAN), so it is escaped and bounded like every client value.
    pub fn detail(&self) -> String {
        match self {
            Self::Denied(denial) => client_text(&denial.detail, CLIENT_TEXT_BYTES),
            other => client_text(&other.to_string(), CLIENT_TEXT_BYTES),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signer that stopped after a faulty signature sends clients to another replica
    /// (UNAVAILABLE, which istio-agent retries); other signing failures are INTERNAL.
    #[test]
    fn an_unhealthy_signer_is_unavailable_not_internal() {
        let unhealthy = IssueError::Signing(SigningError::Unhealthy).classify();
        assert_eq!(unhealthy.answer, Answer::Held("signer-unhealthy"));
        assert_eq!(unhealthy.reason, None);
        let other = IssueError::Signing(SigningError::Profile("validity")).classify();
        assert_eq!(other.answer, Answer::Internal);
    }

    /// Istio's counters: a CSR without one readable identity is an ID-extraction error; a
    /// failure after a request was accepted is a sign error of Istio's type.
    #[test]
    fn failures_are_counted_under_istios_error_types() {
        let denied = |reason| {
            IssueError::Denied(Denial {
                reason,
                detail: String::new(),
            })
            .classify()
        };
        assert_eq!(
            denied(DenialReason::UriSanCount).failure,
            FailureLabel::IdExtraction
        );
        assert_eq!(
            denied(DenialReason::UriSanInvalid).failure,
            FailureLabel::IdExtraction
        );
        assert_eq!(denied(DenialReason::DnsSan).failure, FailureLabel::Policy);
        let expired = denied(DenialReason::SignerExpired);
        assert_eq!(expired.failure, FailureLabel::Internal(CA_NOT_READY));
        assert_eq!(expired.reason, Some("signer-expired"), "still recorded");
        for (error, expected) in [
            (
                IssueError::Signing(SigningError::Unhealthy),
                FailureLabel::Internal(CA_NOT_READY),
            ),
            (
                IssueError::MeshNotServed("a".into()),
                FailureLabel::Internal(CA_NOT_READY),
            ),
            (
                IssueError::Held(Hold::ExportLag),
                FailureLabel::Internal(CA_NOT_READY),
            ),
            (
                IssueError::Signing(SigningError::IdentityCheck),
                FailureLabel::Internal(CERT_GEN_ERROR),
            ),
        ] {
            assert_eq!(error.classify().failure, expected, "{error}");
        }
    }
}
