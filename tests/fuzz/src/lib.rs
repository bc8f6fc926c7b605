//! What the fuzz targets share: the fixed mesh, caller and JWT issuer they check inputs against.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshroot::adapters::authn::jwt::{self, DevTokenSigner, JwtAuthenticator, TrustedIssuer};
use meshroot::adapters::authn::{AuthenticatorKind, Caller};
use meshroot::domain::clock::ManualClock;
use meshroot::domain::identity::{SpiffeId, TrustDomain};
use meshroot::domain::policy::{AliasIssuance, MeshPolicy};

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The fuzzers' "now" (2027-01-15).
pub const NOW: u64 = 1_800_000_000;

pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

/// The mesh the CSR checks run against, with an alias trust domain.
pub fn policy() -> MeshPolicy {
    const HOUR: Duration = Duration::from_secs(3600);
    MeshPolicy {
        mesh: "default".into(),
        trust_domain: trust_domain("cluster.local"),
        trust_domain_aliases: vec![trust_domain("old.example")],
        alias_issuance: AliasIssuance::AsRequested,
        default_ttl: 24 * HOUR,
        max_ttl: 7 * 24 * HOUR,
        signer_not_after: now() + 365 * 24 * HOUR,
        reserved: Vec::new(),
    }
}

fn trust_domain(name: &str) -> TrustDomain {
    match TrustDomain::new(name) {
        Ok(trust_domain) => trust_domain,
        Err(error) => panic!("fixed trust domain {name}: {error}"),
    }
}

/// The workload the CSRs are checked for: `shop/cart`.
pub fn caller() -> Caller {
    let identity = match SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/cart") {
        Ok(identity) => identity,
        Err(error) => panic!("fixed identity: {error}"),
    };
    Caller {
        authenticator: AuthenticatorKind::Jwt,
        mesh: "default".into(),
        identity,
        issuer: ISSUER.into(),
        subject: "system:serviceaccount:shop:cart".into(),
        cluster: String::new(),
        pod: None,
    }
}

/// The signer whose tokens the JWT fuzzer's authenticator trusts, from a fixed key, so seeds
/// signed by `seed` stay valid.
pub fn signer() -> &'static DevTokenSigner {
    static SIGNER: OnceLock<DevTokenSigner> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let pkcs8 = include_bytes!("../corpus/dev-issuer-key.pk8");
        match DevTokenSigner::from_pkcs8(pkcs8) {
            Ok(signer) => signer,
            Err(error) => panic!("fixed key: {error}"),
        }
    })
}

/// An authenticator trusting [`signer`]'s keys for [`ISSUER`], at [`NOW`].
pub fn authenticator() -> &'static JwtAuthenticator {
    static AUTHENTICATOR: OnceLock<JwtAuthenticator> = OnceLock::new();
    AUTHENTICATOR.get_or_init(|| {
        let keys = match jwt::parse_jwks(&signer().jwks_json(), "fuzz") {
            Ok(keys) => keys,
            Err(error) => panic!("fixed JWKS: {error}"),
        };
        JwtAuthenticator::new(
            vec![TrustedIssuer {
                issuer: ISSUER.into(),
                mesh: "default".into(),
                trust_domain: trust_domain("cluster.local"),
                audiences: vec!["istio-ca".into()],
                keys,
            }],
            Arc::new(ManualClock::at(now())),
        )
    })
}

/// The audit key the checkpoint-sharing target verifies with (a fixed Ed25519 key, so the
/// seeds it signs stay valid), under the log name `name`.
pub fn audit_signer(name: &str) -> meshroot::domain::audit::checkpoint::AuditSigner {
    let pkcs8 = include_bytes!("../corpus/audit-key.pk8");
    match meshroot::domain::audit::checkpoint::AuditSigner::from_pkcs8(name, pkcs8) {
        Ok(signer) => signer,
        Err(error) => panic!("the fixed audit key: {error}"),
    }
}
