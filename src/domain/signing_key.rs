//! The key a CA signs with: a PEM key held in memory, or a key that never leaves a hardware
//! token (PKCS#11), reached through the [`TokenKey`] port. rcgen signs certificates and CRLs
//! with either through its `SigningKey` interface, so leaves, istiod intermediates, CRLs and
//! new intermediates are signed the same way whatever holds the key.

use std::fmt;
use std::sync::Arc;

use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};

use crate::domain::digest::sha256;
use crate::domain::record::KeyLocation;

/// A private key inside a token: it signs there and only its public half is ever read.
/// Implemented by the PKCS#11 adapter.
pub trait TokenKey: Send + Sync {
    /// The public key as a SubjectPublicKeyInfo's BIT STRING carries it (for ECDSA, the
    /// uncompressed point).
    fn public_key(&self) -> &[u8];
    /// The signature algorithm the key signs with.
    fn algorithm(&self) -> &'static SignatureAlgorithm;
    /// Signs `message` in the token (hashing it as the algorithm says) and returns the
    /// signature as X.509 carries it (DER `Ecdsa-Sig-Value` for ECDSA).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, TokenError>;
    /// Which token and object the key is, for records and logs.
    fn describe(&self) -> TokenKeyInfo;
    /// Whether the token answers now; the reason when it does not.
    fn health(&self) -> Result<(), TokenError>;
}

/// Which token and which object a key is: what a record of a CA key operation names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenKeyInfo {
    pub token_label: String,
    pub token_serial: String,
    pub key_label: String,
    /// `CKA_ID`, hex.
    pub key_id: String,
}

impl fmt::Display for TokenKeyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "token {:?} (serial {}), key {:?} (id {})",
            self.token_label, self.token_serial, self.key_label, self.key_id
        )
    }
}

/// Why a token did not sign. Carries no PIN and no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token or its module cannot be reached now (removed, not present, session lost):
    /// issuance waits for it.
    #[error("the token is unavailable: {0}")]
    Unavailable(String),
    /// The token answered but refused (a wrong PIN, a missing object, a mechanism it lacks).
    #[error("the token refused: {0}")]
    Refused(String),
}

/// A CA's signing key.
#[derive(Clone)]
pub enum CaKey {
    /// A key read from a PEM file (or generated in memory).
    Memory(Arc<KeyPair>),
    /// A key in a PKCS#11 token.
    Token(Arc<dyn TokenKey>),
}

impl CaKey {
    pub fn memory(key: KeyPair) -> Self {
        Self::Memory(Arc::new(key))
    }

    /// The token key, when the key lives in a token.
    pub fn token(&self) -> Option<&Arc<dyn TokenKey>> {
        match self {
            Self::Memory(_) => None,
            Self::Token(key) => Some(key),
        }
    }

    /// Where the key is, as a record of a CA key operation names it.
    pub fn location(&self) -> KeyLocation {
        let algorithm = format!("{:?}", PublicKeyData::algorithm(self))
            .trim_start_matches("PKCS_")
            .to_ascii_lowercase();
        let public_key_sha256 = sha256(&self.subject_public_key_info()).to_vec();
        match self {
            Self::Memory(_) => KeyLocation {
                custody: "file".into(),
                algorithm,
                public_key_sha256,
                ..KeyLocation::default()
            },
            Self::Token(key) => {
                let info = key.describe();
                KeyLocation {
                    custody: "token".into(),
                    token_label: info.token_label,
                    token_serial: info.token_serial,
                    key_label: info.key_label,
                    key_id: info.key_id,
                    algorithm,
                    public_key_sha256,
                }
            }
        }
    }

    /// Whether the key can sign now (a memory key always can).
    pub fn health(&self) -> Result<(), TokenError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Token(key) => key.health(),
        }
    }
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(key) => f
                .debug_struct("CaKey::Memory")
                .field("algorithm", key.algorithm())
                .finish_non_exhaustive(),
            Self::Token(key) => f
                .debug_struct("CaKey::Token")
                .field("key", &key.describe())
                .finish(),
        }
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::Memory(key) => key.der_bytes(),
            Self::Token(key) => key.public_key(),
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            Self::Memory(key) => key.algorithm(),
            Self::Token(key) => key.algorithm(),
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::Memory(key) => key.sign(message),
            Self::Token(key) => key.sign(message).map_err(|error| {
                tracing::warn!(key = %key.describe(), %error, "the token did not sign");
                rcgen::Error::RemoteKeyError
            }),
        }
    }
}
