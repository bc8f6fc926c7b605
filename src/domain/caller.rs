//! Who asked: the authenticated caller, as the authenticators (`authn`) establish it and the
//! policy judges it. A value type, so the policy needs nothing from the authenticators.

use crate::domain::identity::SpiffeId;

/// Which authenticator accepted a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthenticatorKind {
    /// A verified client certificate carrying the caller's SPIFFE ID (renewal, VMs).
    ClientCert,
    /// A Kubernetes service-account JWT verified offline against a configured JWKS.
    Jwt,
    /// A bearer token reviewed by the Kubernetes API server of the caller's cluster.
    TokenReview,
}

impl AuthenticatorKind {
    pub(crate) const ALL: [Self; 3] = [Self::ClientCert, Self::Jwt, Self::TokenReview];

    pub fn name(&self) -> &'static str {
        match self {
            Self::ClientCert => "client-cert",
            Self::Jwt => "jwt",
            Self::TokenReview => "token-review",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// The pod a token is bound to: as a TokenReview attributed it, or as a verified projected
/// token's `kubernetes.io` claim names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub uid: String,
    /// The pod's node, when the credential names it (Kubernetes 1.30 and later); empty
    /// otherwise.
    pub node: String,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub authenticator: AuthenticatorKind,
    /// The mesh the credential belongs to (a token issuer belongs to exactly one mesh).
    pub mesh: String,
    /// The identity the caller may hold in that mesh.
    pub identity: SpiffeId,
    /// Token issuer (`iss`), when a token proved the caller.
    pub issuer: String,
    /// The authenticated subject, e.g. `system:serviceaccount:ns:sa`, or the certificate's
    /// SPIFFE ID.
    pub subject: String,
    /// The cluster whose API server reviewed the token (TokenReview); empty for a token
    /// verified offline.
    pub cluster: String,
    /// The caller's pod: from the TokenReview's `status.user.extra`, or from a verified
    /// projected token's `kubernetes.io.pod` claim.
    pub pod: Option<PodRef>,
}

/// A trusted node account, `<namespace>/<service-account>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAccount {
    pub namespace: String,
    pub service_account: String,
}

impl NodeAccount {
    /// Parses `<namespace>/<service-account>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (namespace, service_account) = text.split_once('/')?;
        if namespace.is_empty() || service_account.is_empty() || service_account.contains('/') {
            return None;
        }
        Some(Self {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }
}
