//! The decision: from an authenticated [`Caller`], a parsed [`CertificateRequest`] and the mesh's
//! rules, either a [`Grant`] (exactly what will be signed) or a [`Denial`] with a reason.
//!
//! Pure: no I/O, time passed in. Rules, in the order they are checked:
//! 1. the caller belongs to this mesh;
//! 2. the subject is empty or istio-agent's single empty `O=` — no CN, nothing else;
//! 3. no CA request (BasicConstraints CA:TRUE, keyCertSign, cRLSign);
//! 4. no extensions besides SAN, KeyUsage, ExtendedKeyUsage, BasicConstraints;
//! 5. no DNS, IP, email or other SANs;
//! 6. exactly one URI SAN, an Istio SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`);
//! 7. its trust domain is the mesh's, and it equals the caller's identity exactly;
//! 8. it is not an identity meshroot keeps for itself (the `[replicas]` member identity).
//!
//! TTL: `requested <= 0` → the mesh default; above the mesh maximum → clamped to it (never an
//! error); NotAfter never past the signing certificate's NotAfter; NotBefore = now − 2 minutes.

use std::time::{Duration, SystemTime};

use crate::domain::caller::Caller;
use crate::domain::csr::{CertificateRequest, Subject, SubjectPublicKey};
use crate::domain::identity::{SpiffeId, TrustDomain};

/// NotBefore is backdated by this much to absorb clock skew between the CA and its peers.
pub(crate) const BACKDATE: Duration = Duration::from_secs(120);

/// A mesh's issuance rules.
#[derive(Debug, Clone)]
pub struct MeshPolicy {
    pub mesh: String,
    pub trust_domain: TrustDomain,
    /// Older or other names of the trust domain (migration), accepted in requests.
    pub trust_domain_aliases: Vec<TrustDomain>,
    /// What to sign when a request names an alias trust domain.
    pub alias_issuance: AliasIssuance,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// NotAfter of the mesh's signing certificate.
    pub signer_not_after: SystemTime,
    /// Identities meshroot keeps for itself (the `[replicas]` member identity): never issued
    /// to a client, so that only meshroot holds a certificate for them.
    pub reserved: Vec<SpiffeId>,
}

/// What to sign for a request in an alias trust domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AliasIssuance {
    /// Sign the alias identity the CSR asks for: un-restarted workloads keep working and move to
    /// the new trust domain when they restart.
    #[default]
    AsRequested,
    /// Sign the mesh's current trust domain: workloads move at their next renewal.
    Canonical,
}

impl MeshPolicy {
    /// Whether `trust_domain` is the mesh's or one of its aliases.
    pub fn serves(&self, trust_domain: &TrustDomain) -> bool {
        &self.trust_domain == trust_domain || self.trust_domain_aliases.contains(trust_domain)
    }
}

/// What the signer will put in the certificate. Only `decide` makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub mesh: String,
    /// The identity to sign.
    pub identity: SpiffeId,
    /// The identity the CSR asked for (differs from `identity` only under `Canonical`).
    pub requested: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The CSR's public key, to be certified.
    pub public_key: SubjectPublicKey,
}

/// What the policy decides on: who asks, what the CSR says, and how the request asks for it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub caller: &'a Caller,
    pub csr: &'a CertificateRequest,
    pub lifetime: Lifetime,
    pub naming: Naming,
    pub now: SystemTime,
}

/// The lifetime a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// The mesh default.
    MeshDefault,
    /// This many seconds, clamped to the mesh maximum (never an error).
    Seconds(u64),
}

impl Lifetime {
    /// From Istio's `validity_duration`: zero or negative means the mesh default.
    pub fn from_validity_duration(seconds: i64) -> Self {
        match u64::try_from(seconds) {
            Ok(seconds) if seconds > 0 => Self::Seconds(seconds),
            _ => Self::MeshDefault,
        }
    }
}

/// Which name an alias-trust-domain request is signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// As the mesh's [`AliasIssuance`] says.
    MeshRule,
    /// Exactly the identity the CSR asks for (impersonation: a node proxy asks for a workload's
    /// certificate and must get the name the workload will present).
    Exact,
}

/// Why a request was refused: a stable reason for records and metrics, and a detail for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason:?}: {detail}")]
pub struct Denial {
    pub reason: DenialReason,
    pub detail: String,
}

/// Every reason the policy refuses a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialReason {
    /// The caller's credential belongs to another mesh than the one asked.
    CallerMeshMismatch,
    /// A CN or any subject other than empty / `O=`.
    SubjectNotAllowed,
    /// The request asks for a CA certificate.
    CaRequested,
    /// An extension outside SAN, KU, EKU, BasicConstraints.
    UnknownExtension,
    DnsSan,
    IpSan,
    EmailSan,
    OtherSan,
    /// Not exactly one URI SAN.
    UriSanCount,
    /// The URI SAN is not an Istio SPIFFE ID.
    UriSanInvalid,
    /// The SPIFFE ID's trust domain is not the mesh's.
    TrustDomainMismatch,
    /// The SPIFFE ID is not the caller's identity.
    IdentityMismatch,
    /// The mesh's signing certificate has expired: nothing can be issued.
    SignerExpired,
    /// The identity is meshroot's own (the member identity).
    ReservedIdentity,
}

impl DenialReason {
    #[cfg(test)]
    /// Every reason, in declaration order.
    pub(crate) const ALL: [DenialReason; 14] = [
        Self::CallerMeshMismatch,
        Self::SubjectNotAllowed,
        Self::CaRequested,
        Self::UnknownExtension,
        Self::DnsSan,
        Self::IpSan,
        Self::EmailSan,
        Self::OtherSan,
        Self::UriSanCount,
        Self::UriSanInvalid,
        Self::TrustDomainMismatch,
        Self::IdentityMismatch,
        Self::SignerExpired,
        Self::ReservedIdentity,
    ];

    /// A stable, machine-readable reason for records and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::CallerMeshMismatch => "caller-mesh-mismatch",
            Self::SubjectNotAllowed => "csr-subject-not-allowed",
            Self::CaRequested => "csr-requests-ca",
            Self::UnknownExtension => "csr-unknown-extension",
            Self::DnsSan => "csr-dns-san",
            Self::IpSan => "csr-ip-san",
            Self::EmailSan => "csr-email-san",
            Self::OtherSan => "csr-other-san",
            Self::UriSanCount => "csr-uri-san-count",
            Self::UriSanInvalid => "csr-uri-san-invalid",
            Self::TrustDomainMismatch => "trust-domain-mismatch",
            Self::IdentityMismatch => "identity-mismatch",
            Self::SignerExpired => "signer-expired",
            Self::ReservedIdentity => "reserved-identity",
        }
    }
}

fn deny(reason: DenialReason, detail: impl Into<String>) -> Denial {
    Denial {
        reason,
        detail: detail.into(),
    }
}

/// Decides a request under a mesh's policy.
pub fn decide(policy: &MeshPolicy, request: &Request<'_>) -> Result<Grant, Denial> {
    use DenialReason as R;
    let Request {
        caller,
        csr: request,
        lifetime,
        naming,
        now,
    } = *request;
    if caller.mesh != policy.mesh {
        return Err(deny(
            R::CallerMeshMismatch,
            format!(
                "caller of mesh {:?} asked mesh {:?}",
                caller.mesh, policy.mesh
            ),
        ));
    }
    match &request.subject {
        Subject::Empty | Subject::EmptyOrganization => {}
        Subject::Other {
            text,
            has_common_name,
        } => {
            let what = if *has_common_name {
                "a common name"
            } else {
                "a subject"
            };
            return Err(deny(
                R::SubjectNotAllowed,
                format!("CSR carries {what}: {text}"),
            ));
        }
    }
    if request.requests_ca {
        return Err(deny(
            R::CaRequested,
            "CSR asks for CA:TRUE or certificate signing",
        ));
    }
    if let Some(oid) = request.unknown_extensions.first() {
        return Err(deny(
            R::UnknownExtension,
            format!("CSR asks for extension {oid}"),
        ));
    }
    if let Some(dns) = request.dns_sans.first() {
        return Err(deny(R::DnsSan, format!("CSR asks for DNS name {dns:?}")));
    }
    if request.ip_sans > 0 {
        return Err(deny(R::IpSan, "CSR asks for an IP address SAN"));
    }
    if request.email_sans > 0 {
        return Err(deny(R::EmailSan, "CSR asks for an email SAN"));
    }
    if request.other_sans > 0 {
        return Err(deny(R::OtherSan, "CSR asks for a SAN that is not a URI"));
    }
    let [uri] = request.uri_sans.as_slice() else {
        return Err(deny(
            R::UriSanCount,
            format!(
                "CSR has {} URI SANs, expected exactly one",
                request.uri_sans.len()
            ),
        ));
    };
    let requested = SpiffeId::parse(uri)
        .map_err(|e| deny(R::UriSanInvalid, format!("URI SAN {uri:?}: {e}")))?;
    if !policy.serves(requested.trust_domain()) {
        return Err(deny(
            R::TrustDomainMismatch,
            format!(
                "CSR asks for trust domain {:?}, mesh {:?} uses {:?} (aliases {:?})",
                requested.trust_domain().as_str(),
                policy.mesh,
                policy.trust_domain.as_str(),
                policy
                    .trust_domain_aliases
                    .iter()
                    .map(TrustDomain::as_str)
                    .collect::<Vec<_>>()
            ),
        ));
    }
    // Trust domain names of one mesh are interchangeable for the caller's workload: the
    // namespace and service account must be the caller's own.
    let same_workload = requested.namespace() == caller.identity.namespace()
        && requested.service_account() == caller.identity.service_account()
        && policy.serves(caller.identity.trust_domain());
    if !same_workload {
        return Err(deny(
            R::IdentityMismatch,
            format!("CSR asks for {requested}, caller is {}", caller.identity),
        ));
    }
    let identity = if requested.trust_domain() == &policy.trust_domain
        || naming == Naming::Exact
        || policy.alias_issuance == AliasIssuance::AsRequested
    {
        requested.clone()
    } else {
        SpiffeId::new(
            policy.trust_domain.clone(),
            requested.namespace(),
            requested.service_account(),
        )
        .map_err(|e| deny(R::UriSanInvalid, format!("{requested}: {e}")))?
    };
    // 8. Never an identity meshroot keeps for itself, under any of the mesh's names.
    if let Some(reserved) = policy.reserved.iter().find(|reserved| {
        reserved.namespace() == identity.namespace()
            && reserved.service_account() == identity.service_account()
            && policy.serves(reserved.trust_domain())
    }) {
        return Err(deny(
            R::ReservedIdentity,
            format!("{reserved} is meshroot's own member identity, never issued to a client"),
        ));
    }

    let ttl = match lifetime {
        Lifetime::MeshDefault => policy.default_ttl,
        Lifetime::Seconds(seconds) => Duration::from_secs(seconds).min(policy.max_ttl),
    };
    let not_after = (now + ttl).min(policy.signer_not_after);
    if not_after <= now {
        return Err(deny(
            R::SignerExpired,
            "the mesh's signing certificate has expired",
        ));
    }
    Ok(Grant {
        mesh: policy.mesh.clone(),
        identity,
        requested,
        not_before: now.checked_sub(BACKDATE).unwrap_or(now),
        not_after,
        public_key: request.public_key.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::caller::AuthenticatorKind;
    use crate::domain::csr::{KeyAlgorithm, SubjectPublicKey};
    use std::time::UNIX_EPOCH;

    const HOUR: Duration = Duration::from_secs(3600);

    /// The tests' shorthand: the request fields as Istio sends them.
    fn decide(
        caller: &Caller,
        csr: &CertificateRequest,
        policy: &MeshPolicy,
        validity_duration: i64,
        exact: bool,
        now: SystemTime,
    ) -> Result<Grant, Denial> {
        let naming = if exact {
            Naming::Exact
        } else {
            Naming::MeshRule
        };
        super::decide(
            policy,
            &Request {
                caller,
                csr,
                lifetime: Lifetime::from_validity_duration(validity_duration),
                naming,
                now,
            },
        )
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn policy() -> MeshPolicy {
        MeshPolicy {
            mesh: "default".into(),
            trust_domain: TrustDomain::new("cluster.local").unwrap(),
            trust_domain_aliases: Vec::new(),
            alias_issuance: AliasIssuance::AsRequested,
            default_ttl: 24 * HOUR,
            max_ttl: 7 * 24 * HOUR,
            signer_not_after: now() + 365 * 24 * HOUR,
            reserved: Vec::new(),
        }
    }

    fn caller() -> Caller {
        Caller {
            authenticator: AuthenticatorKind::Jwt,
            mesh: "default".into(),
            identity: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/cart").unwrap(),
            issuer: "iss".into(),
            subject: "system:serviceaccount:shop:cart".into(),
            cluster: String::new(),
            pod: None,
        }
    }

    fn agent_request() -> CertificateRequest {
        CertificateRequest {
            der_sha256: [0; 32],
            public_key: SubjectPublicKey {
                spki_der: vec![],
                algorithm: KeyAlgorithm::Rsa { bits: 2048 },
            },
            subject: Subject::EmptyOrganization,
            uri_sans: vec!["spiffe://cluster.local/ns/shop/sa/cart".into()],
            dns_sans: vec![],
            ip_sans: 0,
            email_sans: 0,
            other_sans: 0,
            san_critical: Some(true),
            requests_ca: false,
            unknown_extensions: vec![],
        }
    }

    fn reason_for(request: CertificateRequest) -> Option<DenialReason> {
        decide(&caller(), &request, &policy(), 0, false, now())
            .err()
            .map(|d| d.reason)
    }

    #[test]
    fn grants_the_callers_identity_with_default_ttl_and_backdated_start() {
        let grant = decide(&caller(), &agent_request(), &policy(), 0, false, now()).unwrap();
        assert_eq!(grant.identity, caller().identity);
        assert_eq!(grant.not_before, now() - BACKDATE);
        assert_eq!(grant.not_after, now() + 24 * HOUR);
    }

    #[test]
    fn accepts_ztunnel_shape_with_empty_subject_and_non_critical_san() {
        let mut request = agent_request();
        request.subject = Subject::Empty;
        request.san_critical = Some(false);
        assert!(decide(&caller(), &request, &policy(), 86400, false, now()).is_ok());
    }

    #[test]
    fn clamps_ttl_to_mesh_maximum_and_to_signer_expiry() {
        let grant = decide(
            &caller(),
            &agent_request(),
            &policy(),
            90 * 86400,
            false,
            now(),
        )
        .unwrap();
        assert_eq!(grant.not_after, now() + 7 * 24 * HOUR);
        let mut short_lived = policy();
        short_lived.signer_not_after = now() + HOUR;
        let grant = decide(
            &caller(),
            &agent_request(),
            &short_lived,
            86400,
            false,
            now(),
        )
        .unwrap();
        assert_eq!(grant.not_after, now() + HOUR);
        let grant = decide(&caller(), &agent_request(), &policy(), -5, false, now()).unwrap();
        assert_eq!(grant.not_after, now() + 24 * HOUR);
    }

    /// Issue 30, N13: the member identity is meshroot's own, never issued through the CSR
    /// API, under the trust domain or an alias.
    #[test]
    fn refuses_the_reserved_member_identity_even_to_its_own_service_account() {
        let mut reserving = policy();
        reserving.trust_domain_aliases = vec![TrustDomain::new("old.example").unwrap()];
        reserving.reserved = vec![SpiffeId::parse("spiffe://old.example/ns/shop/sa/cart").unwrap()];
        let denial = decide(&caller(), &agent_request(), &reserving, 0, false, now()).unwrap_err();
        assert_eq!(denial.reason, DenialReason::ReservedIdentity);
        reserving.reserved =
            vec![SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/other").unwrap()];
        assert!(decide(&caller(), &agent_request(), &reserving, 0, false, now()).is_ok());
    }

    #[test]
    fn refuses_when_the_signer_has_expired() {
        let mut expired = policy();
        expired.signer_not_after = now() - HOUR;
        let denial = decide(&caller(), &agent_request(), &expired, 0, false, now()).unwrap_err();
        assert_eq!(denial.reason, DenialReason::SignerExpired);
    }

    #[test]
    fn rejects_csr_whose_uri_san_names_another_service_account() {
        let mut request = agent_request();
        request.uri_sans = vec!["spiffe://cluster.local/ns/shop/sa/admin".into()];
        assert_eq!(reason_for(request), Some(DenialReason::IdentityMismatch));
    }

    #[test]
    fn rejects_each_disallowed_shape_with_its_own_reason() {
        type Mutation = fn(&mut CertificateRequest);
        let cases: Vec<(Mutation, DenialReason)> = vec![
            (
                |r| r.uri_sans = vec!["spiffe://other.domain/ns/shop/sa/cart".into()],
                DenialReason::TrustDomainMismatch,
            ),
            (|r| r.uri_sans.clear(), DenialReason::UriSanCount),
            (
                |r| {
                    r.uri_sans
                        .push("spiffe://cluster.local/ns/shop/sa/cart".into())
                },
                DenialReason::UriSanCount,
            ),
            (
                |r| r.uri_sans = vec!["https://example.com/".into()],
                DenialReason::UriSanInvalid,
            ),
            (
                |r| r.dns_sans = vec!["cart.shop.svc".into()],
                DenialReason::DnsSan,
            ),
            (|r| r.ip_sans = 1, DenialReason::IpSan),
            (|r| r.email_sans = 1, DenialReason::EmailSan),
            (|r| r.other_sans = 1, DenialReason::OtherSan),
            (
                |r| {
                    r.subject = Subject::Other {
                        text: "CN=cart".into(),
                        has_common_name: true,
                    }
                },
                DenialReason::SubjectNotAllowed,
            ),
            (|r| r.requests_ca = true, DenialReason::CaRequested),
            (
                |r| r.unknown_extensions = vec!["1.2.3.4".into()],
                DenialReason::UnknownExtension,
            ),
        ];
        for (mutate, expected) in cases {
            let mut request = agent_request();
            mutate(&mut request);
            assert_eq!(reason_for(request), Some(expected), "{expected:?}");
        }
    }

    /// A mesh migrating from `cluster.local` to `example.com`; the caller authenticated in the
    /// new trust domain; an un-restarted workload still asks for the old one.
    fn migration(mode: AliasIssuance) -> (MeshPolicy, Caller, CertificateRequest) {
        let mut policy = policy();
        policy.trust_domain = TrustDomain::new("example.com").unwrap();
        policy.trust_domain_aliases = vec![TrustDomain::new("cluster.local").unwrap()];
        policy.alias_issuance = mode;
        let mut caller = caller();
        caller.identity = SpiffeId::parse("spiffe://example.com/ns/shop/sa/cart").unwrap();
        (policy, caller, agent_request())
    }

    #[test]
    fn signs_the_alias_identity_as_requested_during_a_migration() {
        let (policy, caller, request) = migration(AliasIssuance::AsRequested);
        let grant = decide(&caller, &request, &policy, 0, false, now()).unwrap();
        assert_eq!(
            grant.identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/cart"
        );
        assert_eq!(grant.requested, grant.identity);
        let mut current = request.clone();
        current.uri_sans = vec!["spiffe://example.com/ns/shop/sa/cart".into()];
        let grant = decide(&caller, &current, &policy, 0, false, now()).unwrap();
        assert_eq!(
            grant.identity.to_string(),
            "spiffe://example.com/ns/shop/sa/cart"
        );
    }

    #[test]
    fn moves_alias_requests_to_the_canonical_trust_domain_unless_exact() {
        let (policy, caller, request) = migration(AliasIssuance::Canonical);
        let grant = decide(&caller, &request, &policy, 0, false, now()).unwrap();
        assert_eq!(
            grant.identity.to_string(),
            "spiffe://example.com/ns/shop/sa/cart"
        );
        assert_eq!(
            grant.requested.to_string(),
            "spiffe://cluster.local/ns/shop/sa/cart"
        );
        let exact = decide(&caller, &request, &policy, 0, true, now()).unwrap();
        assert_eq!(
            exact.identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/cart"
        );
    }

    #[test]
    fn aliases_never_open_another_workload_or_an_unlisted_trust_domain() {
        let (policy, caller, mut request) = migration(AliasIssuance::AsRequested);
        request.uri_sans = vec!["spiffe://cluster.local/ns/shop/sa/admin".into()];
        let denial = decide(&caller, &request, &policy, 0, false, now()).unwrap_err();
        assert_eq!(denial.reason, DenialReason::IdentityMismatch);
        request.uri_sans = vec!["spiffe://other.example/ns/shop/sa/cart".into()];
        let denial = decide(&caller, &request, &policy, 0, false, now()).unwrap_err();
        assert_eq!(denial.reason, DenialReason::TrustDomainMismatch);
    }

    #[test]
    fn rejects_caller_of_another_mesh() {
        let mut foreign = caller();
        foreign.mesh = "other".into();
        let denial = decide(&foreign, &agent_request(), &policy(), 0, false, now()).unwrap_err();
        assert_eq!(denial.reason, DenialReason::CallerMeshMismatch);
    }

    #[test]
    fn reason_codes_are_distinct_and_all_lists_every_reason() {
        // An exhaustive match: a new reason does not compile until it has a place in ALL.
        fn position(reason: DenialReason) -> usize {
            use DenialReason::*;
            match reason {
                CallerMeshMismatch => 0,
                SubjectNotAllowed => 1,
                CaRequested => 2,
                UnknownExtension => 3,
                DnsSan => 4,
                IpSan => 5,
                EmailSan => 6,
                OtherSan => 7,
                UriSanCount => 8,
                UriSanInvalid => 9,
                TrustDomainMismatch => 10,
                IdentityMismatch => 11,
                SignerExpired => 12,
                ReservedIdentity => 13,
            }
        }
        for (index, reason) in DenialReason::ALL.iter().enumerate() {
            assert_eq!(position(*reason), index, "{reason:?}");
        }
        let codes: std::collections::HashSet<_> =
            DenialReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), DenialReason::ALL.len());
    }
}
