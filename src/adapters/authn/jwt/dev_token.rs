//! The local development token issuer (`meshroot token`): signs projected-token-shaped JWTs
//! with a key `init` made, for trying meshroot without a cluster.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};

use super::claims::{Claims, KubernetesClaim, NamedObject, SERVICE_ACCOUNT_PREFIX};
use super::jwks::JwkDocument;
use crate::domain::caller::PodRef;

/// A local development token issuer: signs Kubernetes-shaped service-account tokens with an
/// ES256 key. Only used when a mesh's config names its signing key.
pub struct DevTokenSigner {
    key: EcdsaKeyPair,
    kid: String,
}

impl fmt::Debug for DevTokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DevTokenSigner {{ kid: {:?}, key: <redacted> }}",
            self.kid
        )
    }
}

/// What a development token says.
#[derive(Debug, Clone)]
pub struct DevTokenClaims<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [String],
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub issued_at: i64,
    pub lifetime: Duration,
    /// The pod the token is bound to, as a kubelet-projected token names it.
    pub bound_pod: Option<&'a PodRef>,
}

/// Why a development signing key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DevSignerError {
    #[error("the key is not a PKCS#8 ECDSA P-256 private key")]
    Key,
    #[error("signing failed")]
    Sign,
}

impl DevTokenSigner {
    /// Generates a new P-256 key; returns the signer and its PKCS#8 DER (to be stored 0600).
    pub fn generate() -> Result<(Self, Vec<u8>), DevSignerError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| DevSignerError::Key)?;
        let der = pkcs8.as_ref().to_vec();
        Ok((Self::from_pkcs8(&der)?, der))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, DevSignerError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| DevSignerError::Key)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]);
        Ok(Self { key, kid })
    }

    /// The public JWKS document for this key.
    pub fn jwks_json(&self) -> String {
        let point = self.key.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        let jwk = JwkDocument {
            kty: "EC".into(),
            kid: Some(self.kid.clone()),
            alg: Some("ES256".into()),
            key_use: Some("sig".into()),
            crv: Some("P-256".into()),
            x: Some(URL_SAFE_NO_PAD.encode(x)),
            y: Some(URL_SAFE_NO_PAD.encode(y)),
            n: None,
            e: None,
        };
        serde_json::json!({ "keys": [jwk] }).to_string()
    }

    /// Signs a token shaped like a projected Kubernetes service-account token.
    pub fn sign(&self, claims: &DevTokenClaims<'_>) -> Result<String, DevSignerError> {
        let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": self.kid });
        let body = Claims {
            iss: claims.issuer.to_owned(),
            sub: format!(
                "{SERVICE_ACCOUNT_PREFIX}{}:{}",
                claims.namespace, claims.service_account
            ),
            aud: claims.audiences.to_vec(),
            exp: Some(claims.issued_at + claims.lifetime.as_secs() as i64),
            nbf: Some(claims.issued_at),
            iat: Some(claims.issued_at),
            kubernetes: Some(KubernetesClaim {
                namespace: claims.namespace.to_owned(),
                serviceaccount: Some(NamedObject {
                    name: claims.service_account.to_owned(),
                    uid: String::new(),
                }),
                pod: claims.bound_pod.map(|pod| NamedObject {
                    name: pod.name.clone(),
                    uid: pod.uid.clone(),
                }),
                node: claims
                    .bound_pod
                    .filter(|pod| !pod.node.is_empty())
                    .map(|pod| NamedObject {
                        name: pod.node.clone(),
                        uid: String::new(),
                    }),
            }),
        };
        let body = serde_json::to_vec(&body).map_err(|_| DevSignerError::Sign)?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(body)
        );
        let signature_bytes = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| DevSignerError::Sign)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature_bytes.as_ref())
        ))
    }
}
