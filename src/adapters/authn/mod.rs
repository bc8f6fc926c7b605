//! Authentication: turns what arrived with a request (bearer token, `clusterid`, peer address,
//! verified client certificate) into a [`Caller`] — who is asking, proven how, for which mesh.
//!
//! Authenticators run in a configured order and the first that succeeds wins, as in istiod. One
//! that does not apply (no token for a token authenticator) steps aside. If none succeeds, the
//! reported failure is the first from an authenticator that recognised the credential as its
//! own, else the first from one that declined it (a token from an unknown issuer, a cluster id it
//! does not serve), else "no credentials".

pub mod admin;
pub mod client_cert;
pub mod impersonation;
pub mod jwt;
pub mod token_review;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use rustls_pki_types::CertificateDer;

pub use crate::domain::caller::{AuthenticatorKind, Caller, PodRef};

/// A bearer token. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// The token text; only authenticators should call this.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// The `authorization` header of a request.
#[derive(Debug, Clone, Default)]
pub enum Authorization {
    /// No header (a pod without a token; only mTLS can identify it).
    #[default]
    Absent,
    Bearer(BearerToken),
    /// A header that is not `Bearer <token>`.
    Malformed,
}

impl Authorization {
    /// Reads the header value, if any.
    pub fn from_header(value: Option<&str>) -> Self {
        match value.map(bearer_token_from_header) {
            None => Self::Absent,
            Some(Ok(token)) => Self::Bearer(token),
            Some(Err(_)) => Self::Malformed,
        }
    }
}

/// Everything about a request that can prove who sent it.
#[derive(Debug, Clone, Default)]
pub struct AuthRequest {
    pub authorization: Authorization,
    /// The `clusterid` header as sent (istio-agent always sends it, possibly empty).
    pub cluster_id: String,
    pub peer_address: Option<SocketAddr>,
    /// The client certificate chain, already verified by the TLS layer (leaf first).
    pub peer_certificates: Vec<CertificateDer<'static>>,
}

/// Why a caller could not be authenticated. Every variant has its own recorded reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("no credentials: no bearer token and no client certificate")]
    MissingCredentials,
    #[error("the authorization header is not 'Bearer <token>'")]
    MalformedAuthorizationHeader,
    #[error("the token is not a well-formed JWT: {0}")]
    TokenMalformed(&'static str),
    #[error("token algorithm {0:?} is not accepted (RS256, ES256)")]
    TokenAlgorithmUnsupported(String),
    #[error("token issuer {0:?} is not configured")]
    TokenIssuerUnknown(String),
    #[error("the token signature does not verify with any key of the issuer")]
    TokenSignatureInvalid,
    #[error("the token has expired")]
    TokenExpired,
    #[error("the token is not valid yet")]
    TokenNotYetValid,
    #[error("the token carries no exp claim")]
    TokenMissingExpiry,
    #[error("the token's audience does not include an accepted audience")]
    TokenAudienceMismatch,
    #[error("the token subject is not system:serviceaccount:<namespace>:<name>")]
    TokenSubjectInvalid,
    #[error("the token's kubernetes.io claim disagrees with its subject")]
    TokenClaimsInconsistent,
    #[error("no cluster {0:?} is configured for token reviews")]
    ClusterUnknown(String),
    #[error("the API server of cluster {cluster:?} did not authenticate the token: {reason}")]
    ReviewRejected { cluster: String, reason: String },
    #[error("the reviewed user is not a service account: {0}")]
    ReviewNotServiceAccount(String),
    #[error("the API server of cluster {cluster:?} could not review the token: {reason}")]
    ReviewUnavailable { cluster: String, reason: String },
    #[error("the client certificate does not chain to the roots of a mesh that accepts client certificates: {0}")]
    ClientCertUntrusted(String),
    #[error("the client certificate does not carry exactly one Istio SPIFFE ID: {0}")]
    ClientCertIdentity(String),
    #[error("trust domain {0:?} is not served with client-certificate authentication")]
    ClientCertTrustDomain(String),
    #[error("the client certificate (serial {serial}) was revoked at {at} ({reason})")]
    ClientCertRevoked {
        serial: String,
        at: String,
        reason: &'static str,
    },
}

impl AuthnError {
    /// A stable, machine-readable reason for records and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing-credentials",
            Self::MalformedAuthorizationHeader => "authorization-header-malformed",
            Self::TokenMalformed(_) => "token-malformed",
            Self::TokenAlgorithmUnsupported(_) => "token-algorithm-unsupported",
            Self::TokenIssuerUnknown(_) => "token-issuer-unknown",
            Self::TokenSignatureInvalid => "token-signature-invalid",
            Self::TokenExpired => "token-expired",
            Self::TokenNotYetValid => "token-not-yet-valid",
            Self::TokenMissingExpiry => "token-missing-expiry",
            Self::TokenAudienceMismatch => "token-audience-mismatch",
            Self::TokenSubjectInvalid => "token-subject-invalid",
            Self::TokenClaimsInconsistent => "token-claims-inconsistent",
            Self::ClusterUnknown(_) => "cluster-unknown",
            Self::ReviewRejected { .. } => "token-review-unauthenticated",
            Self::ReviewNotServiceAccount(_) => "token-review-not-service-account",
            Self::ReviewUnavailable { .. } => "token-review-unavailable",
            Self::ClientCertUntrusted(_) => "client-cert-untrusted",
            Self::ClientCertIdentity(_) => "client-cert-identity",
            Self::ClientCertTrustDomain(_) => "client-cert-trust-domain",
            Self::ClientCertRevoked { .. } => "client-cert-revoked",
        }
    }

    /// The authenticator that reached this verdict (None when none applied).
    pub fn authenticator(&self) -> Option<AuthenticatorKind> {
        match self {
            Self::MissingCredentials | Self::MalformedAuthorizationHeader => None,
            Self::TokenMalformed(_)
            | Self::TokenAlgorithmUnsupported(_)
            | Self::TokenIssuerUnknown(_)
            | Self::TokenSignatureInvalid
            | Self::TokenExpired
            | Self::TokenNotYetValid
            | Self::TokenMissingExpiry
            | Self::TokenAudienceMismatch
            | Self::TokenSubjectInvalid
            | Self::TokenClaimsInconsistent => Some(AuthenticatorKind::Jwt),
            Self::ClusterUnknown(_)
            | Self::ReviewRejected { .. }
            | Self::ReviewNotServiceAccount(_)
            | Self::ReviewUnavailable { .. } => Some(AuthenticatorKind::TokenReview),
            Self::ClientCertUntrusted(_)
            | Self::ClientCertIdentity(_)
            | Self::ClientCertTrustDomain(_)
            | Self::ClientCertRevoked { .. } => Some(AuthenticatorKind::ClientCert),
        }
    }

    /// Whether the failure is the authenticator's (its backend is down), not the caller's:
    /// clients should retry.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Self::ReviewUnavailable { .. })
    }
}

/// What one authenticator made of a request.
#[derive(Debug)]
pub enum AuthOutcome {
    /// This authenticator has nothing to judge (e.g. no token was sent).
    NotApplicable,
    Authenticated(Caller),
    /// The credential is this authenticator's kind, but not one it can vouch for (a token from an
    /// issuer it does not know, a cluster id it does not serve); another may still accept it.
    Declined(AuthnError),
    /// The credential is this authenticator's own and it is bad.
    Failed(AuthnError),
}

pub(crate) type AuthFuture<'a> = Pin<Box<dyn Future<Output = AuthOutcome> + Send + 'a>>;

/// One way of proving who a caller is. Asynchronous so that authenticators that must ask a
/// remote system (the Kubernetes TokenReview API) fit the same seam as offline ones.
pub trait Authenticator: Send + Sync {
    fn kind(&self) -> AuthenticatorKind;
    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a>;
}

/// The configured authenticators, tried in order.
pub struct AuthenticatorChain {
    authenticators: Vec<Box<dyn Authenticator>>,
}

impl AuthenticatorChain {
    pub fn new(authenticators: Vec<Box<dyn Authenticator>>) -> Self {
        Self { authenticators }
    }

    /// The first success wins; otherwise the first failure, else the first refusal, else
    /// `MissingCredentials`.
    pub(crate) async fn authenticate(&self, request: &AuthRequest) -> Result<Caller, AuthnError> {
        let mut first_failure = None;
        let mut first_declined = None;
        for authenticator in &self.authenticators {
            match authenticator.authenticate(request).await {
                AuthOutcome::Authenticated(caller) => return Ok(caller),
                AuthOutcome::Failed(error) => {
                    first_failure.get_or_insert(error);
                }
                AuthOutcome::Declined(error) => {
                    first_declined.get_or_insert(error);
                }
                AuthOutcome::NotApplicable => {}
            }
        }
        Err(first_failure
            .or(first_declined)
            .unwrap_or(AuthnError::MissingCredentials))
    }
}

/// Reads `authorization: Bearer <token>`. The scheme is case-insensitive (RFC 7235 §2.1).
pub(crate) fn bearer_token_from_header(value: &str) -> Result<BearerToken, AuthnError> {
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(AuthnError::MalformedAuthorizationHeader)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthnError::MalformedAuthorizationHeader);
    }
    Ok(BearerToken::new(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::identity::SpiffeId;

    #[test]
    fn bearer_token_debug_is_redacted() {
        let token = BearerToken::new("secret.token.value".into());
        assert_eq!(format!("{token:?}"), "BearerToken(<redacted>)");
        let request = AuthRequest {
            authorization: Authorization::Bearer(token),
            ..AuthRequest::default()
        };
        assert!(!format!("{request:?}").contains("secret"));
    }

    #[test]
    fn reads_bearer_scheme_case_insensitively() {
        assert_eq!(
            bearer_token_from_header("bearer abc").map(|t| t.expose().to_owned()),
            Ok("abc".to_owned())
        );
        assert_eq!(
            bearer_token_from_header("Basic abc").err(),
            Some(AuthnError::MalformedAuthorizationHeader)
        );
        assert_eq!(
            bearer_token_from_header("Bearer").err(),
            Some(AuthnError::MalformedAuthorizationHeader)
        );
    }

    struct Fixed(fn() -> AuthOutcome);

    impl Authenticator for Fixed {
        fn kind(&self) -> AuthenticatorKind {
            AuthenticatorKind::Jwt
        }
        fn authenticate<'a>(&'a self, _: &'a AuthRequest) -> AuthFuture<'a> {
            let outcome = (self.0)();
            Box::pin(async move { outcome })
        }
    }

    fn caller() -> Caller {
        Caller {
            authenticator: AuthenticatorKind::Jwt,
            mesh: "m".into(),
            identity: SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap(),
            issuer: "i".into(),
            subject: "s".into(),
            cluster: String::new(),
            pod: None,
        }
    }

    #[tokio::test]
    async fn chain_returns_first_success_after_failures() {
        let chain = AuthenticatorChain::new(vec![
            Box::new(Fixed(|| AuthOutcome::Failed(AuthnError::TokenExpired))),
            Box::new(Fixed(|| AuthOutcome::Authenticated(caller()))),
        ]);
        assert_eq!(
            chain.authenticate(&AuthRequest::default()).await,
            Ok(caller())
        );
    }

    #[tokio::test]
    async fn chain_prefers_a_real_failure_over_a_declined_credential() {
        let chain = AuthenticatorChain::new(vec![
            Box::new(Fixed(|| {
                AuthOutcome::Declined(AuthnError::TokenIssuerUnknown("x".into()))
            })),
            Box::new(Fixed(|| AuthOutcome::Failed(AuthnError::TokenExpired))),
        ]);
        assert_eq!(
            chain.authenticate(&AuthRequest::default()).await,
            Err(AuthnError::TokenExpired)
        );
        let declined = AuthenticatorChain::new(vec![Box::new(Fixed(|| {
            AuthOutcome::Declined(AuthnError::ClusterUnknown("c".into()))
        }))]);
        assert_eq!(
            declined.authenticate(&AuthRequest::default()).await,
            Err(AuthnError::ClusterUnknown("c".into()))
        );
    }

    #[tokio::test]
    async fn chain_reports_first_failure_or_missing_credentials() {
        let chain = AuthenticatorChain::new(vec![
            Box::new(Fixed(|| AuthOutcome::NotApplicable)),
            Box::new(Fixed(|| AuthOutcome::Failed(AuthnError::TokenExpired))),
            Box::new(Fixed(|| {
                AuthOutcome::Failed(AuthnError::TokenSignatureInvalid)
            })),
        ]);
        assert_eq!(
            chain.authenticate(&AuthRequest::default()).await,
            Err(AuthnError::TokenExpired)
        );
        let empty = AuthenticatorChain::new(vec![Box::new(Fixed(|| AuthOutcome::NotApplicable))]);
        assert_eq!(
            empty.authenticate(&AuthRequest::default()).await,
            Err(AuthnError::MissingCredentials)
        );
    }
}
