//! The one place where meshroot's errors become gRPC statuses. The issuance pipeline classifies
//! each failure once ([`IssueError::classify`]); this maps the class to a code and a message
//! that carries the request id and, for refusals, the stable reason: never internal text.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::issuance::{Answer, IssueError, RequestId};

/// Metadata key carrying the request id on error responses.
pub const REQUEST_ID_HEADER: &str = "x-meshroot-request-id";

/// The gRPC status for every way a request can fail. Istio clients retry Internal, Unavailable
/// and ResourceExhausted but never Unauthenticated or InvalidArgument, so final answers use
/// those.
pub fn status_for(error: &IssueError, request_id: &RequestId) -> Status {
    let (code, message) = match error.classify().answer {
        Answer::Unauthenticated => (
            Code::Unauthenticated,
            "request authenticate failure".to_owned(),
        ),
        Answer::InvalidCsr(reason) => (
            Code::InvalidArgument,
            format!("invalid certificate signing request: {reason}"),
        ),
        Answer::Refused(reason) => (
            Code::InvalidArgument,
            format!("certificate request refused: {reason}"),
        ),
        Answer::BackendUnavailable => (
            Code::Unavailable,
            "authentication backend unavailable; retry".to_owned(),
        ),
        // Retryable: istio-agent and ztunnel back off and try again.
        Answer::Throttled(scope) => (
            Code::ResourceExhausted,
            format!("rate limit exceeded for this {scope}; retry"),
        ),
        Answer::Internal => (Code::Internal, "internal error".to_owned()),
        Answer::Held(hold) => (
            Code::Unavailable,
            format!("this replica is not issuing now ({hold}); retry"),
        ),
    };
    let mut status = Status::new(code, format!("{message} (request id {request_id})"));
    if let Ok(value) = MetadataValue::try_from(request_id.as_str()) {
        status.metadata_mut().insert(REQUEST_ID_HEADER, value);
    }
    status
}

/// The answer when too many requests are in progress: retryable (istio-agent retries
/// RESOURCE_EXHAUSTED with backoff) and not recorded, since nothing was decided.
pub fn overloaded() -> Status {
    Status::new(Code::ResourceExhausted, "overloaded; retry")
}

/// The gRPC status for a failed audit request. A caller's own mistake (a bad filter or page
/// token, an unknown record) is explained; a store failure is logged and answered generically.
pub fn status_for_audit(error: &crate::adapters::store::AuditError) -> Status {
    use crate::adapters::store::AuditError;
    use crate::adapters::store::StoreError;
    match error {
        AuditError::Query(error) => Status::new(Code::InvalidArgument, error.to_string()),
        AuditError::NotFound(what) => Status::new(Code::NotFound, what.clone()),
        AuditError::Store(error @ StoreError::TooBroad { .. }) => {
            Status::new(Code::InvalidArgument, error.to_string())
        }
        AuditError::Store(error) => {
            tracing::error!(%error, "audit request failed");
            Status::new(Code::Internal, "internal error")
        }
    }
}

/// A revocation refused or failed: the operator's mistakes are INVALID_ARGUMENT (NOT_FOUND for
/// a serial no log holds); meshroot's own failures INTERNAL with the request id only.
pub(crate) fn status_for_revoke(error: &crate::issuance::revoke::RevokeError) -> Status {
    use crate::issuance::revoke::RevokeError as E;
    let code = match error {
        E::NotServed => Code::Unimplemented,
        E::UnknownReason(_)
        | E::NoFilter
        | E::NotIssued
        | E::InvalidFilter(_)
        | E::UnblockWithFilter
        | E::NotSpiffeId(_)
        | E::TimeOutOfRange(_)
        | E::TooMany(_) => Code::InvalidArgument,
        E::SerialNotFound { .. } => Code::NotFound,
        E::NotRecorded(_) | E::Interrupted => Code::Internal,
    };
    Status::new(code, error.to_string())
}

/// A client certificate that may not use the admin APIs.
pub(crate) fn admin_identity_refused() -> Status {
    Status::new(
        Code::PermissionDenied,
        "this client identity may not use the audit API",
    )
}

/// The status page's HTTP answer for an audit API refusal or failure: the status code and a
/// sentence for people, never the internal error text.
pub(crate) fn http_status_of(status: &Status) -> (u16, &'static str) {
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => (
            403,
            "this page needs a client certificate with an identity in admin.allowed_identities, \
             as the audit API does (open on a loopback admin address)",
        ),
        Code::Unavailable => (
            503,
            "the record store or a member is unavailable; try again",
        ),
        _ => (
            500,
            "the page could not be gathered; the server log says why",
        ),
    }
}

/// A cluster-wide audit request that cannot be answered as asked: an unknown member, a
/// sequence number without the member whose log it numbers, a page token from another
/// membership.
pub(crate) fn cluster_request_invalid(message: impl Into<String>) -> Status {
    Status::new(Code::InvalidArgument, message.into())
}

/// A member an audit request was forwarded to did not answer (retryable).
pub(crate) fn member_unavailable(member: &str, reason: &str) -> Status {
    Status::new(
        Code::Unavailable,
        format!("member {member} did not answer: {reason}"),
    )
}
