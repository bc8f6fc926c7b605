//! CA keys in a PKCS#11 token (an HSM, a cloud KMS's PKCS#11 library, SoftHSM): opening a key
//! named by a PKCS#11 URI ([`uri`]), signing with it in the token ([`key`]), and generating
//! non-extractable keys there for `init` and `rotate`. The module is loaded at run time with
//! the `cryptoki` binding, once per process per module path; the PIN comes from a file or an
//! environment variable and is held as a secret (never in a URI, a log line or `Debug`).

pub mod key;
mod module;
pub mod uri;

use std::path::PathBuf;
use std::sync::Arc;

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::types::AuthPin;

use crate::domain::signing_key::{CaKey, TokenError, TokenKey as _};

use self::key::{classify, logged_in_session, Pkcs11Key, ED25519_PARAMS, P256_PARAMS};
use self::module::context;
use self::uri::KeyUri;

/// Where the module and the PIN come from (`[pkcs11]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// The PKCS#11 module (`.so`), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: Option<PathBuf>,
    pub pin: PinSource,
    /// Logged-in sessions each key keeps open for signing.
    pub sessions: usize,
}

/// The kind of key [`Pkcs11Settings::generate`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewKey {
    /// A CA key: ECDSA P-256.
    EcdsaP256,
    /// The audit key, which signs checkpoints (C2SP signed notes are Ed25519).
    Ed25519,
}

/// Where the user PIN is read from. The PIN itself is never configured inline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    File(PathBuf),
    Env(String),
}

/// Why a key in a token could not be opened or made.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    #[error(transparent)]
    Uri(#[from] uri::UriError),
    #[error("{uri}: no PKCS#11 module: set [pkcs11] module (or module-path in the URI)")]
    NoModule { uri: String },
    #[error("cannot load the PKCS#11 module {module}: {reason}")]
    Module { module: PathBuf, reason: String },
    #[error("cannot read the PKCS#11 PIN from {source_name}: {reason}")]
    Pin { source_name: String, reason: String },
    #[error("{uri}: {source}")]
    Token {
        uri: String,
        #[source]
        source: TokenError,
    },
    #[error(
        "{uri}: a key with this label already exists in the token; pass --force to add another"
    )]
    Exists { uri: String },
}

impl Pkcs11Error {
    /// True when the token (or its module) is missing rather than misconfigured: the process
    /// may be started again once it is back.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Token {
                source: TokenError::Unavailable(_),
                ..
            } | Self::Module { .. }
        )
    }
}

impl Pkcs11Settings {
    fn read_pin(&self) -> Result<AuthPin, Pkcs11Error> {
        let (source_name, text) = match &self.pin {
            PinSource::File(path) => (
                path.display().to_string(),
                std::fs::read_to_string(path).map_err(|e| e.kind().to_string()),
            ),
            PinSource::Env(name) => (
                format!("${name}"),
                std::env::var(name).map_err(|_| "not set".to_owned()),
            ),
        };
        let text = text.map_err(|reason| Pkcs11Error::Pin {
            source_name: source_name.clone(),
            reason,
        })?;
        let pin = text.trim_end_matches(['\n', '\r']);
        if pin.is_empty() {
            return Err(Pkcs11Error::Pin {
                source_name,
                reason: "it is empty".into(),
            });
        }
        Ok(AuthPin::new(pin.into()))
    }

    fn context_for(&self, uri: &KeyUri) -> Result<(PathBuf, Pkcs11), Pkcs11Error> {
        let module = uri
            .module_path
            .as_deref()
            .or(self.module.as_deref())
            .ok_or_else(|| Pkcs11Error::NoModule {
                uri: uri.to_string(),
            })?;
        let context = context(module).map_err(|reason| Pkcs11Error::Module {
            module: module.to_owned(),
            reason,
        })?;
        Ok((module.to_owned(), context))
    }

    /// Opens the key `uri` names, as a CA key.
    pub fn open(&self, uri: &str) -> Result<CaKey, Pkcs11Error> {
        let uri = KeyUri::parse(uri)?;
        let module = self.context_for(&uri)?;
        let pin = self.read_pin()?;
        let shown = uri.to_string();
        let key = Pkcs11Key::open(module, uri, pin, self.sessions).map_err(|source| {
            Pkcs11Error::Token {
                uri: shown.clone(),
                source,
            }
        })?;
        tracing::info!(key = %key.describe(), "a CA key in a PKCS#11 token is ready");
        Ok(CaKey::Token(Arc::new(key)))
    }

    /// Generates a key pair of `kind` in the token the URI names, labelled with its `object`:
    /// the private key sensitive and not extractable, so it never leaves the token. Refuses a
    /// label already in use unless `replace`.
    pub fn generate(&self, uri: &str, replace: bool, kind: NewKey) -> Result<CaKey, Pkcs11Error> {
        let parsed = KeyUri::parse(uri)?;
        let shown = parsed.to_string();
        let token_error = |source| Pkcs11Error::Token {
            uri: shown.clone(),
            source,
        };
        let label = parsed
            .object
            .clone()
            .ok_or_else(|| Pkcs11Error::Uri(uri::UriError::NoObject { uri: shown.clone() }))?;
        let (module, context) = self.context_for(&parsed)?;
        let pin = self.read_pin()?;
        let (session, _, _) =
            logged_in_session(&context, &parsed, &pin, true).map_err(token_error)?;
        // Any private key of this label (one, or several after rotations) is in use.
        let existing = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| token_error(classify("finding existing keys", e)))?;
        if !replace && !existing.is_empty() {
            return Err(Pkcs11Error::Exists { uri: shown });
        }
        let id = match &parsed.id {
            Some(id) => id.clone(),
            None => {
                let mut id = [0u8; 16];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
                    .map_err(|_| token_error(TokenError::Refused("no randomness".into())))?;
                id.to_vec()
            }
        };
        let (key_type, params, mechanism) = match kind {
            NewKey::EcdsaP256 => (KeyType::EC, P256_PARAMS, Mechanism::EccKeyPairGen),
            NewKey::Ed25519 => (
                KeyType::EC_EDWARDS,
                ED25519_PARAMS,
                Mechanism::EccEdwardsKeyPairGen,
            ),
        };
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::KeyType(key_type),
            Attribute::Verify(true),
            Attribute::EcParams(params.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(|e| token_error(classify("generating a key pair", e)))?;
        drop(session);
        // Open it by its id too, so a replaced label still names exactly the new key.
        let exact = parsed.with_id(id);
        let key =
            Pkcs11Key::open((module, context), exact, pin, self.sessions).map_err(token_error)?;
        tracing::info!(key = %key.describe(), ?kind, "generated a key in a PKCS#11 token");
        Ok(CaKey::Token(Arc::new(key)))
    }
}
