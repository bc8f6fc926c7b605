//! Issuer keys: JWKS documents (RFC 7517) read into the RS256/ES256 keys that verify tokens.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents};
use serde::{Deserialize, Serialize};

use super::claims::Algorithm;

/// A public key from a JWKS.
#[derive(Clone)]
pub enum VerifyingKey {
    Rs256 {
        kid: Option<String>,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Es256 {
        kid: Option<String>,
        /// Uncompressed SEC1 point (0x04 || x || y).
        point: Vec<u8>,
    },
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rs256 { kid, n, .. } => {
                write!(f, "Rs256 {{ kid: {kid:?}, bits: {} }}", n.len() * 8)
            }
            Self::Es256 { kid, .. } => write!(f, "Es256 {{ kid: {kid:?} }}"),
        }
    }
}

impl VerifyingKey {
    pub(super) fn kid(&self) -> Option<&str> {
        match self {
            Self::Rs256 { kid, .. } | Self::Es256 { kid, .. } => kid.as_deref(),
        }
    }

    pub(super) fn algorithm(&self) -> Algorithm {
        match self {
            Self::Rs256 { .. } => Algorithm::Rs256,
            Self::Es256 { .. } => Algorithm::Es256,
        }
    }

    pub(super) fn verify(&self, message: &[u8], signature_bytes: &[u8]) -> bool {
        match self {
            Self::Rs256 { n, e, .. } => RsaPublicKeyComponents { n, e }
                .verify(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    message,
                    signature_bytes,
                )
                .is_ok(),
            Self::Es256 { point, .. } => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature_bytes)
                    .is_ok()
            }
        }
    }
}

/// Why a JWKS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a JWKS document: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: key {index} is unusable: {reason}")]
    Key {
        path: String,
        index: usize,
        reason: &'static str,
    },
    #[error("{path} holds no usable keys")]
    Empty { path: String },
}

#[derive(Deserialize)]
pub(super) struct JwksDocument {
    pub(super) keys: Vec<JwkDocument>,
}

#[derive(Deserialize, Serialize)]
pub(super) struct JwkDocument {
    pub(super) kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub(super) key_use: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) e: Option<String>,
}

/// Reads a JWKS file (RFC 7517) holding RSA and P-256 keys.
pub fn load_jwks(path: &Path) -> Result<Vec<VerifyingKey>, JwksError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| JwksError::Read {
        path: display.clone(),
        source,
    })?;
    parse_jwks(&text, &display)
}

/// Parses a JWKS document; `origin` names it in errors.
pub fn parse_jwks(text: &str, origin: &str) -> Result<Vec<VerifyingKey>, JwksError> {
    let document: JwksDocument = serde_json::from_str(text).map_err(|source| JwksError::Json {
        path: origin.to_owned(),
        source,
    })?;
    let mut keys = Vec::new();
    for (index, jwk) in document.keys.into_iter().enumerate() {
        let bad = |reason| JwksError::Key {
            path: origin.to_owned(),
            index,
            reason,
        };
        if jwk.key_use.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let decode = |field: &Option<String>, name: &'static str| {
            field
                .as_deref()
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
                .ok_or(bad(name))
        };
        match jwk.kty.as_str() {
            "RSA" => {
                if jwk.alg.as_deref().is_some_and(|a| a != "RS256") {
                    continue;
                }
                keys.push(VerifyingKey::Rs256 {
                    kid: jwk.kid.clone(),
                    n: decode(&jwk.n, "RSA key without a valid 'n'")?,
                    e: decode(&jwk.e, "RSA key without a valid 'e'")?,
                });
            }
            "EC" => {
                if jwk.crv.as_deref() != Some("P-256")
                    || jwk.alg.as_deref().is_some_and(|a| a != "ES256")
                {
                    continue;
                }
                let x = decode(&jwk.x, "EC key without a valid 'x'")?;
                let y = decode(&jwk.y, "EC key without a valid 'y'")?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(bad("P-256 coordinates must be 32 bytes"));
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                keys.push(VerifyingKey::Es256 {
                    kid: jwk.kid.clone(),
                    point,
                });
            }
            _ => continue,
        }
    }
    if keys.is_empty() {
        return Err(JwksError::Empty {
            path: origin.to_owned(),
        });
    }
    Ok(keys)
}
