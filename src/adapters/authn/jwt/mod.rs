//! Kubernetes service-account tokens (JWTs) verified offline against each issuer's JWKS.
//!
//! Rules (RFC 7519 §4.1, Kubernetes projected token format): `alg` RS256 or ES256 (never `none`);
//! `iss` names a configured issuer, whose keys must verify the signature; `aud` contains an
//! accepted audience (default `istio-ca`); `exp` is required and `exp`/`nbf` allow at most
//! [`LEEWAY`]; `sub` is `system:serviceaccount:<namespace>:<name>`, and when the `kubernetes.io`
//! claim is present its namespace and service account name must agree with `sub`.
//!
//! A projected token bound to a pod names it in `kubernetes.io.pod` (and, from Kubernetes 1.30,
//! its node in `kubernetes.io.node`). The caller's pod is taken from there, so a node proxy
//! whose token is verified offline can still impersonate the workloads of its node: the pod is
//! then confirmed in the cluster, by name and uid, as after a TokenReview.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::{
    AuthFuture, AuthOutcome, AuthRequest, Authenticator, AuthenticatorKind, AuthnError,
    Authorization, Caller, PodRef,
};
use crate::domain::clock::{unix_seconds, Clock};
use crate::domain::identity::{SpiffeId, TrustDomain};
mod claims;
mod dev_token;
mod jwks;

use self::claims::{decode_json, Algorithm, Claims, Header, SERVICE_ACCOUNT_PREFIX};

pub use self::dev_token::*;
pub use self::jwks::*;

/// Clock skew tolerated on `exp` and `nbf`.
pub(crate) const LEEWAY: Duration = Duration::from_secs(60);
/// Tokens longer than this are refused unread.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A token issuer trusted for one mesh.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    pub issuer: String,
    pub mesh: String,
    pub trust_domain: TrustDomain,
    pub audiences: Vec<String>,
    pub keys: Vec<VerifyingKey>,
}

/// Verifies Kubernetes service-account JWTs offline.
pub struct JwtAuthenticator {
    issuers: HashMap<String, TrustedIssuer>,
    clock: Arc<dyn Clock>,
    /// Tokens whose signature and claims were verified, by SHA-256 of the token (never the
    /// token itself): a renewing proxy presents the same token many times, and its signature
    /// check is the costliest step of a request. Only the time claims are checked again.
    verified: std::sync::Mutex<HashMap<[u8; 32], VerifiedToken>>,
}

/// A verified token's caller and validity window.
#[derive(Clone)]
struct VerifiedToken {
    caller: Caller,
    expires: i64,
    not_before: Option<i64>,
}

/// Verified tokens remembered at most; beyond it, expired ones are dropped, then all.
const VERIFIED_CACHE_LIMIT: usize = 100_000;

impl JwtAuthenticator {
    /// `issuers` must have distinct `issuer` names (the config layer guarantees it).
    pub fn new(issuers: Vec<TrustedIssuer>, clock: Arc<dyn Clock>) -> Self {
        let issuers = issuers
            .into_iter()
            .map(|issuer| (issuer.issuer.clone(), issuer))
            .collect();
        Self {
            issuers,
            clock,
            verified: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Verifies one token and returns the caller it proves (from the cache of verified tokens
    /// when the same token was verified before and is still within its validity window).
    pub fn verify(&self, token: &str) -> Result<Caller, AuthnError> {
        let key = crate::domain::digest::sha256(token.as_bytes());
        let now = unix_seconds(self.clock.now());
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(entry) = cached {
            check_time(now, entry.expires, entry.not_before)?;
            return Ok(entry.caller);
        }
        let (caller, expires, not_before) = self.verify_uncached(token, now)?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= VERIFIED_CACHE_LIMIT {
            let leeway = LEEWAY.as_secs() as i64;
            verified.retain(|_, entry| now <= entry.expires.saturating_add(leeway));
            if verified.len() >= VERIFIED_CACHE_LIMIT {
                verified.clear();
            }
        }
        verified.insert(
            key,
            VerifiedToken {
                caller: caller.clone(),
                expires,
                not_before,
            },
        );
        Ok(caller)
    }

    /// Verifies one token from scratch: signature, then claims.
    fn verify_uncached(
        &self,
        token: &str,
        now: i64,
    ) -> Result<(Caller, i64, Option<i64>), AuthnError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthnError::TokenMalformed("longer than 16 KiB"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthnError::TokenMalformed("not three dot-separated parts"));
        };
        let header: Header = decode_json(header_b64, "header")?;
        let algorithm = match header.alg.as_str() {
            "RS256" => Algorithm::Rs256,
            "ES256" => Algorithm::Es256,
            other => return Err(AuthnError::TokenAlgorithmUnsupported(other.to_owned())),
        };
        // The claims are read before the signature is checked only to find the issuer's keys;
        // nothing in them is trusted until a key of that issuer verifies the signature.
        let claims: Claims = decode_json(claims_b64, "claims")?;
        let issuer = self
            .issuers
            .get(&claims.iss)
            .ok_or_else(|| AuthnError::TokenIssuerUnknown(claims.iss.clone()))?;
        let signature_bytes = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| AuthnError::TokenMalformed("signature is not base64url"))?;
        let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
        let verified = issuer
            .keys
            .iter()
            .filter(|key| key.algorithm() == algorithm)
            .filter(|key| match (&header.kid, key.kid()) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .any(|key| key.verify(signed.as_bytes(), &signature_bytes));
        if !verified {
            return Err(AuthnError::TokenSignatureInvalid);
        }

        let exp = claims.exp.ok_or(AuthnError::TokenMissingExpiry)?;
        check_time(now, exp, claims.nbf)?;
        if !claims
            .aud
            .iter()
            .any(|aud| issuer.audiences.iter().any(|accepted| accepted == aud))
        {
            return Err(AuthnError::TokenAudienceMismatch);
        }
        let (namespace, service_account) = claims
            .sub
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .ok_or(AuthnError::TokenSubjectInvalid)?;
        if let Some(kubernetes) = &claims.kubernetes {
            let agrees = kubernetes.namespace == namespace
                && kubernetes
                    .serviceaccount
                    .as_ref()
                    .is_none_or(|sa| sa.name == service_account);
            if !agrees {
                return Err(AuthnError::TokenClaimsInconsistent);
            }
        }
        let identity = SpiffeId::new(issuer.trust_domain.clone(), namespace, service_account)
            .map_err(|_| AuthnError::TokenSubjectInvalid)?;
        let pod = claims.kubernetes.as_ref().and_then(|kubernetes| {
            let pod = kubernetes.pod.as_ref()?;
            Some(PodRef {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                node: kubernetes
                    .node
                    .as_ref()
                    .map(|node| node.name.clone())
                    .unwrap_or_default(),
            })
        });
        let caller = Caller {
            authenticator: AuthenticatorKind::Jwt,
            mesh: issuer.mesh.clone(),
            identity,
            issuer: issuer.issuer.clone(),
            subject: claims.sub.clone(),
            cluster: String::new(),
            pod,
        };
        Ok((caller, exp, claims.nbf))
    }
}

/// `exp` and `nbf` against now, with [`LEEWAY`] for clock skew.
fn check_time(now: i64, exp: i64, nbf: Option<i64>) -> Result<(), AuthnError> {
    let leeway = LEEWAY.as_secs() as i64;
    if now > exp.saturating_add(leeway) {
        return Err(AuthnError::TokenExpired);
    }
    if nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
        return Err(AuthnError::TokenNotYetValid);
    }
    Ok(())
}

impl Authenticator for JwtAuthenticator {
    fn kind(&self) -> AuthenticatorKind {
        AuthenticatorKind::Jwt
    }

    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a> {
        let outcome = match &request.authorization {
            Authorization::Absent => AuthOutcome::NotApplicable,
            Authorization::Malformed => {
                AuthOutcome::Failed(AuthnError::MalformedAuthorizationHeader)
            }
            // Another token authenticator (TokenReview) may vouch for tokens of issuers this one
            // does not know, or for tokens that are not JWTs at all.
            Authorization::Bearer(_) if self.issuers.is_empty() => AuthOutcome::NotApplicable,
            Authorization::Bearer(token) => match self.verify(token.expose()) {
                Ok(caller) => AuthOutcome::Authenticated(caller),
                Err(
                    error @ (AuthnError::TokenIssuerUnknown(_) | AuthnError::TokenMalformed(_)),
                ) => AuthOutcome::Declined(error),
                Err(error) => AuthOutcome::Failed(error),
            },
        };
        Box::pin(std::future::ready(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::claims::{KubernetesClaim, NamedObject};
    use super::*;
    use crate::domain::clock::ManualClock;
    use ring::rand::SystemRandom;
    use ring::signature;
    use std::time::UNIX_EPOCH;

    const ISSUER: &str = "https://kubernetes.default.svc";
    const NOW: i64 = 1_800_000_000;

    fn setup() -> (DevTokenSigner, JwtAuthenticator) {
        let (signer, authenticator, _) = setup_with_clock();
        (signer, authenticator)
    }

    fn setup_with_clock() -> (DevTokenSigner, JwtAuthenticator, ManualClock) {
        let (signer, _) = DevTokenSigner::generate().unwrap();
        let keys = parse_jwks(&signer.jwks_json(), "test").unwrap();
        let issuer = TrustedIssuer {
            issuer: ISSUER.into(),
            mesh: "default".into(),
            trust_domain: TrustDomain::new("cluster.local").unwrap(),
            audiences: vec!["istio-ca".into()],
            keys,
        };
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(NOW as u64));
        let authenticator = JwtAuthenticator::new(vec![issuer], Arc::new(clock.clone()));
        (signer, authenticator, clock)
    }

    fn token(signer: &DevTokenSigner, issued_at: i64, audience: &str) -> String {
        signer
            .sign(&DevTokenClaims {
                issuer: ISSUER,
                audiences: &[audience.to_owned()],
                namespace: "shop",
                service_account: "cart",
                issued_at,
                lifetime: Duration::from_secs(3600),
                bound_pod: None,
            })
            .unwrap()
    }

    #[test]
    fn accepts_a_valid_token_and_derives_the_identity() {
        let (signer, authenticator) = setup();
        let caller = authenticator
            .verify(&token(&signer, NOW, "istio-ca"))
            .unwrap();
        assert_eq!(
            caller.identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/cart"
        );
        assert_eq!(caller.subject, "system:serviceaccount:shop:cart");
        assert_eq!(caller.mesh, "default");
    }

    #[test]
    fn applies_sixty_seconds_of_leeway_to_expiry_and_not_before() {
        let (signer, authenticator) = setup();
        // Expired 59 s ago: still accepted; 61 s ago: refused.
        assert!(authenticator
            .verify(&token(&signer, NOW - 3659, "istio-ca"))
            .is_ok());
        assert_eq!(
            authenticator.verify(&token(&signer, NOW - 3661, "istio-ca")),
            Err(AuthnError::TokenExpired)
        );
        assert!(authenticator
            .verify(&token(&signer, NOW + 59, "istio-ca"))
            .is_ok());
        assert_eq!(
            authenticator.verify(&token(&signer, NOW + 61, "istio-ca")),
            Err(AuthnError::TokenNotYetValid)
        );
    }

    #[test]
    fn a_remembered_token_still_expires_and_tampering_is_not_remembered() {
        let (signer, authenticator, clock) = setup_with_clock();
        let good = token(&signer, NOW, "istio-ca");
        let first = authenticator.verify(&good).unwrap();
        // Served from the cache of verified tokens: the same caller.
        assert_eq!(authenticator.verify(&good).unwrap(), first);
        assert_eq!(authenticator.verified.lock().unwrap().len(), 1);
        // A token differing in one signature byte is checked in full, and refused.
        let mut tampered = good.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            authenticator.verify(std::str::from_utf8(&tampered).unwrap()),
            Err(AuthnError::TokenSignatureInvalid)
        );
        assert_eq!(authenticator.verified.lock().unwrap().len(), 1);
        // Past exp (and the leeway), the remembered token is refused like any other.
        clock.advance(Duration::from_secs(3600 + 61));
        assert_eq!(authenticator.verify(&good), Err(AuthnError::TokenExpired));
    }

    #[test]
    fn refuses_wrong_audience_and_tampered_claims() {
        let (signer, authenticator) = setup();
        assert_eq!(
            authenticator.verify(&token(&signer, NOW, "kubernetes")),
            Err(AuthnError::TokenAudienceMismatch)
        );
        let good = token(&signer, NOW, "istio-ca");
        let parts: Vec<&str> = good.split('.').collect();
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let forged = claims.replace("shop", "bank");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(forged),
            parts[2]
        );
        assert_eq!(
            authenticator.verify(&tampered),
            Err(AuthnError::TokenSignatureInvalid)
        );
    }

    #[test]
    fn refuses_alg_none_and_garbage() {
        let (_, authenticator) = setup();
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let claims = URL_SAFE_NO_PAD.encode(r#"{"iss":"x","sub":"y"}"#);
        assert_eq!(
            authenticator.verify(&format!("{header}.{claims}.")),
            Err(AuthnError::TokenAlgorithmUnsupported("none".into()))
        );
        assert!(matches!(
            authenticator.verify("a.b"),
            Err(AuthnError::TokenMalformed(_))
        ));
    }

    #[test]
    fn refuses_token_from_another_key_of_an_unconfigured_issuer() {
        let (_, authenticator) = setup();
        let (stranger, _) = DevTokenSigner::generate().unwrap();
        assert_eq!(
            authenticator.verify(&token(&stranger, NOW, "istio-ca")),
            Err(AuthnError::TokenSignatureInvalid)
        );
        let other_issuer = stranger
            .sign(&DevTokenClaims {
                issuer: "https://elsewhere",
                audiences: &["istio-ca".to_owned()],
                namespace: "a",
                service_account: "b",
                issued_at: NOW,
                lifetime: Duration::from_secs(60),
                bound_pod: None,
            })
            .unwrap();
        assert_eq!(
            authenticator.verify(&other_issuer),
            Err(AuthnError::TokenIssuerUnknown("https://elsewhere".into()))
        );
    }

    /// Signs `claims` as an RS256 token, the algorithm of real Kubernetes service-account tokens.
    fn rs256_token(key: &ring::signature::RsaKeyPair, kid: &str, claims: &Claims) -> String {
        let header = serde_json::json!({ "alg": "RS256", "kid": kid });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
        );
        let mut signature_bytes = vec![0; key.public().modulus_len()];
        key.sign(
            &signature::RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut signature_bytes,
        )
        .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature_bytes))
    }

    fn service_account_claims(namespace: &str, kubernetes_namespace: &str) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: format!("system:serviceaccount:{namespace}:cart"),
            aud: vec!["istio-ca".into()],
            exp: Some(NOW + 3600),
            nbf: None,
            iat: Some(NOW),
            kubernetes: Some(KubernetesClaim {
                namespace: kubernetes_namespace.into(),
                serviceaccount: Some(NamedObject {
                    name: "cart".into(),
                    uid: "5f2c".into(),
                }),
                // A kubelet-projected token, as on Kubernetes 1.30 and later.
                pod: Some(NamedObject {
                    name: "cart-7d9f".into(),
                    uid: "a1b2".into(),
                }),
                node: Some(NamedObject {
                    name: "node-1".into(),
                    uid: "n1".into(),
                }),
            }),
        }
    }

    #[test]
    fn verifies_rs256_tokens_against_an_rsa_jwks_and_checks_the_kubernetes_claim() {
        use rsa::pkcs8::EncodePrivateKey as _;
        use rsa::traits::PublicKeyParts as _;
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let jwks = serde_json::json!({ "keys": [{
            "kty": "RSA", "kid": "k8s-1", "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
        }]});
        let keys = parse_jwks(&jwks.to_string(), "k8s").unwrap();
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(NOW as u64));
        let authenticator = JwtAuthenticator::new(
            vec![TrustedIssuer {
                issuer: ISSUER.into(),
                mesh: "default".into(),
                trust_domain: TrustDomain::new("cluster.local").unwrap(),
                audiences: vec!["istio-ca".into()],
                keys,
            }],
            Arc::new(clock),
        );
        let pkcs8 = private.to_pkcs8_der().unwrap();
        let key = ring::signature::RsaKeyPair::from_pkcs8(pkcs8.as_bytes()).unwrap();

        let good = rs256_token(&key, "k8s-1", &service_account_claims("shop", "shop"));
        let caller = authenticator.verify(&good).unwrap();
        assert_eq!(
            caller.identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/cart"
        );
        // The pod the token is bound to, for impersonation by a node proxy.
        assert_eq!(
            caller.pod,
            Some(PodRef {
                name: "cart-7d9f".into(),
                uid: "a1b2".into(),
                node: "node-1".into(),
            })
        );

        let inconsistent = rs256_token(&key, "k8s-1", &service_account_claims("shop", "bank"));
        assert_eq!(
            authenticator.verify(&inconsistent),
            Err(AuthnError::TokenClaimsInconsistent)
        );
        let wrong_kid = rs256_token(&key, "k8s-2", &service_account_claims("shop", "shop"));
        assert_eq!(
            authenticator.verify(&wrong_kid),
            Err(AuthnError::TokenSignatureInvalid)
        );
        let mut not_a_service_account = service_account_claims("shop", "shop");
        not_a_service_account.sub = "system:node:worker-1".into();
        not_a_service_account.kubernetes = None;
        assert_eq!(
            authenticator.verify(&rs256_token(&key, "k8s-1", &not_a_service_account)),
            Err(AuthnError::TokenSubjectInvalid)
        );
    }

    #[test]
    fn dev_signer_debug_hides_the_key() {
        let (signer, _) = DevTokenSigner::generate().unwrap();
        assert!(format!("{signer:?}").contains("<redacted>"));
    }
}
