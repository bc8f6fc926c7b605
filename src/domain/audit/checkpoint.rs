//! Signed checkpoints of the audit log: the tree size and root hash (RFC 6962 tree head), as a
//! C2SP `tlog-checkpoint` body inside a C2SP `signed-note`, signed with Ed25519 by the audit key.
//!
//! These are the formats of Go's `golang.org/x/mod/sumdb/note` and of the transparency-log
//! ecosystem (Sigsum, Trillian Tessera, witnesses), so a published checkpoint can be checked with
//! their tools as well as with `meshroot audit verify`:
//!
//! ```text
//! <origin>\n<tree size>\n<base64 root hash>\n
//! \n
//! — <key name> <base64(key id ‖ Ed25519 signature)>\n
//! ```
//!
//! key id = SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]; a verifier key is shared as the
//! text `<key name>+<hex key id>+<base64(0x01 ‖ public key)>`.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

use crate::domain::audit::merkle::Hash;
use crate::domain::signing_key::{TokenKey, TokenKeyInfo};

/// The signature type byte of Ed25519 in signed notes.
const ED25519_TYPE: u8 = 0x01;
/// The em dash and space that start a signature line.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// A note with more signature lines than this is refused (as Go's `note.Open` does).
const MAX_SIGNATURES: usize = 100;

/// A tree head: how many records the log holds and the Merkle root over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Names the log (the audit key's name).
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint body (the text that is signed).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        )
    }

    /// The checkpoint in a note, without checking any signature (for display, or when no
    /// verifier key is at hand).
    pub fn parse_unverified(note: &str) -> Option<Self> {
        let split = note.find("\n\n")?;
        Self::parse_body(&note[..split + 1]).ok()
    }

    fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let mut lines = text.split('\n');
        let origin = lines.next().filter(|l| !l.is_empty());
        let size = lines.next().and_then(|l| {
            // Decimal without leading zeros (C2SP tlog-checkpoint).
            (!l.starts_with('0') || l == "0")
                .then(|| l.parse::<u64>().ok())
                .flatten()
        });
        let root = lines
            .next()
            .and_then(|l| BASE64.decode(l).ok())
            .and_then(|bytes| Hash::try_from(bytes.as_slice()).ok());
        match (origin, size, root) {
            (Some(origin), Some(size), Some(root)) => Ok(Self {
                origin: origin.to_owned(),
                size,
                root,
            }),
            _ => Err(CheckpointError::Malformed),
        }
    }
}

/// Why a checkpoint or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a signed checkpoint (malformed note)")]
    Malformed,
    #[error("the checkpoint carries no signature by key {0}")]
    NotSignedBy(String),
    #[error("the checkpoint's signature by {0} is invalid")]
    BadSignature(String),
    #[error("invalid verifier key: {0}")]
    BadVerifierKey(&'static str),
    #[error("invalid audit key: {0}")]
    BadSigningKey(&'static str),
    /// The audit key is in a token that did not sign (gone, or refusing): no checkpoint now.
    #[error("the audit key did not sign: {0}")]
    KeyUnavailable(String),
}

/// The audit key: signs checkpoints. Its `Debug` never shows the key.
pub struct AuditSigner {
    name: String,
    key: AuditKey,
    key_id: [u8; 4],
}

/// Where the audit key is: in memory (read from its PEM file), or in a PKCS#11 token.
enum AuditKey {
    Memory(Ed25519KeyPair),
    Token(Arc<dyn TokenKey>),
}

impl AuditKey {
    fn public_key(&self) -> &[u8] {
        match self {
            Self::Memory(key) => key.public_key().as_ref(),
            Self::Token(key) => key.public_key(),
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CheckpointError> {
        match self {
            Self::Memory(key) => Ok(key.sign(message).as_ref().to_vec()),
            Self::Token(key) => key
                .sign(message)
                .map_err(|error| CheckpointError::KeyUnavailable(error.to_string())),
        }
    }
}

impl fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("AuditSigner");
        debug
            .field("name", &self.name)
            .field("key_id", &crate::domain::digest::hex(&self.key_id));
        if let AuditKey::Token(key) = &self.key {
            debug.field("token", &key.describe());
        }
        debug.finish_non_exhaustive()
    }
}

impl AuditSigner {
    /// A new key named `name`; returns the signer and its PKCS#8 document (to store, secret).
    pub fn generate(name: &str) -> Result<(Self, Vec<u8>), CheckpointError> {
        check_name(name).map_err(CheckpointError::BadSigningKey)?;
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| CheckpointError::BadSigningKey("key generation failed"))?;
        let signer = Self::from_pkcs8(name, pkcs8.as_ref())?;
        Ok((signer, pkcs8.as_ref().to_vec()))
    }

    /// The key from a PKCS#8 (v1 or v2) Ed25519 document.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, CheckpointError> {
        check_name(name).map_err(CheckpointError::BadSigningKey)?;
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|_| CheckpointError::BadSigningKey("not an Ed25519 PKCS#8 key"))?;
        Ok(Self::with_key(name, AuditKey::Memory(key)))
    }

    /// The key in a token: it must be an Ed25519 key, which signs there.
    pub fn from_token(name: &str, key: Arc<dyn TokenKey>) -> Result<Self, CheckpointError> {
        check_name(name).map_err(CheckpointError::BadSigningKey)?;
        if key.algorithm() != &rcgen::PKCS_ED25519 || key.public_key().len() != 32 {
            return Err(CheckpointError::BadSigningKey(
                "the token key is not an Ed25519 key",
            ));
        }
        Ok(Self::with_key(name, AuditKey::Token(key)))
    }

    #[cfg(test)]
    fn new(name: &str, key: Ed25519KeyPair) -> Self {
        Self::with_key(name, AuditKey::Memory(key))
    }

    fn with_key(name: &str, key: AuditKey) -> Self {
        let key_id = key_id(name, key.public_key());
        Self {
            name: name.to_owned(),
            key,
            key_id,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The token that holds the key, when it is in one.
    pub fn token_key(&self) -> Option<TokenKeyInfo> {
        match &self.key {
            AuditKey::Memory(_) => None,
            AuditKey::Token(key) => Some(key.describe()),
        }
    }

    /// The verifier key text to publish beside checkpoints.
    pub fn verifier_key(&self) -> String {
        let mut typed = vec![ED25519_TYPE];
        typed.extend_from_slice(self.key.public_key());
        format!(
            "{}+{}+{}",
            self.name,
            crate::domain::digest::hex(&self.key_id),
            BASE64.encode(typed)
        )
    }

    /// The verifier for this key.
    pub fn verifier(&self) -> AuditVerifier {
        AuditVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            public_key: self.key.public_key().to_vec(),
        }
    }

    /// Signs `text` (which must end in a newline) as a signed note. Fails only when the key is
    /// in a token that does not sign now.
    pub(crate) fn sign_note(&self, text: &str) -> Result<String, CheckpointError> {
        let signature = self.key.sign(text.as_bytes())?;
        let mut blob = self.key_id.to_vec();
        blob.extend_from_slice(&signature);
        Ok(format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(blob)
        ))
    }

    /// A signed checkpoint note whose origin is the key's name.
    pub fn sign_checkpoint(&self, size: u64, root: Hash) -> Result<String, CheckpointError> {
        self.sign_note(
            &Checkpoint {
                origin: self.name.clone(),
                size,
                root,
            }
            .body(),
        )
    }
}

/// Checks notes signed by one audit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerifier {
    name: String,
    key_id: [u8; 4],
    public_key: Vec<u8>,
}

impl AuditVerifier {
    /// Parses a verifier key `<name>+<hex key id>+<base64(0x01 ‖ public key)>`.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let bad = CheckpointError::BadVerifierKey;
        let text = text.trim();
        let (name, rest) = text.split_once('+').ok_or(bad("expected NAME+KEYID+KEY"))?;
        let (id_hex, key_b64) = rest.split_once('+').ok_or(bad("expected NAME+KEYID+KEY"))?;
        check_name(name).map_err(bad)?;
        let key_id: [u8; 4] = crate::domain::digest::parse_hex(id_hex)
            .filter(|_| id_hex.len() == 8)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(bad("the key id is not 8 hex digits"))?;
        let typed = BASE64
            .decode(key_b64)
            .map_err(|_| bad("the key is not base64"))?;
        let (&kind, public_key) = typed.split_first().ok_or(bad("the key is empty"))?;
        if kind != ED25519_TYPE || public_key.len() != 32 {
            return Err(bad("only Ed25519 keys are supported"));
        }
        if key_id != self::key_id(name, public_key) {
            return Err(bad("the key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            key_id,
            public_key: public_key.to_vec(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens a signed note: returns its text if this key signed it.
    pub(crate) fn open_note<'a>(&self, note: &'a str) -> Result<&'a str, CheckpointError> {
        let split = note.rfind("\n\n").ok_or(CheckpointError::Malformed)?;
        let text = &note[..split + 1];
        let signatures = &note[split + 2..];
        if !signatures.ends_with('\n') || note.bytes().any(|b| b < 0x20 && b != b'\n') {
            return Err(CheckpointError::Malformed);
        }
        let lines: Vec<&str> = signatures[..signatures.len() - 1].split('\n').collect();
        if lines.len() > MAX_SIGNATURES {
            return Err(CheckpointError::Malformed);
        }
        for line in lines {
            let rest = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or(CheckpointError::Malformed)?;
            let (name, blob) = rest.split_once(' ').ok_or(CheckpointError::Malformed)?;
            let blob = BASE64
                .decode(blob)
                .map_err(|_| CheckpointError::Malformed)?;
            if blob.len() < 5 {
                return Err(CheckpointError::Malformed);
            }
            if name != self.name || blob[..4] != self.key_id {
                continue; // another signer (e.g. a witness cosignature)
            }
            return UnparsedPublicKey::new(&ED25519, &self.public_key)
                .verify(text.as_bytes(), &blob[4..])
                .map(|()| text)
                .map_err(|_| CheckpointError::BadSignature(self.name.clone()));
        }
        Err(CheckpointError::NotSignedBy(self.name.clone()))
    }

    /// Opens a signed checkpoint.
    pub fn open_checkpoint(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::parse_body(self.open_note(note)?)
    }

    /// The same key under another name: every member signs with the one audit key, each under
    /// its own log name (`MESHROOT_LOG_NAME`).
    pub fn named(&self, name: &str) -> Result<Self, CheckpointError> {
        check_name(name).map_err(CheckpointError::BadVerifierKey)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, &self.public_key),
            public_key: self.public_key.clone(),
        })
    }
}

/// The longest log name a member may share a checkpoint under.
pub const MAX_SHARED_LOG_NAME_BYTES: usize = 256;
/// The largest note a member may share (a checkpoint with a few cosignatures is ~300 bytes).
pub const MAX_SHARED_NOTE_BYTES: usize = 8 * 1024;
/// How many logs of one member are kept: each lost volume starts a new log; past this, a
/// member's new log names are refused (the store cannot be grown by fresh names).
pub(crate) const MAX_SHARED_LOGS_PER_MEMBER: usize = 64;

/// Why a checkpoint another member shares is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedCheckpointError {
    #[error("the log name is empty, longer than {MAX_SHARED_LOG_NAME_BYTES} bytes, or holds spaces, '+' or control characters")]
    LogName,
    #[error("the note is longer than {MAX_SHARED_NOTE_BYTES} bytes")]
    TooLarge,
    #[error("this replica has no audit key to verify a shared checkpoint with")]
    NoVerifier,
    #[error("the note is not a checkpoint of the named log signed by the audit key: {0}")]
    NotVerified(CheckpointError),
}

/// A checkpoint a member shares of its own log `log`: `note` must be a checkpoint of `log`
/// signed by the audit key (`verifier`, under the name `log`); an empty note shares nothing.
/// Returns the tree size and the note to keep.
pub fn check_shared(
    log: &str,
    note: &str,
    verifier: Option<&AuditVerifier>,
) -> Result<Option<(u64, String)>, SharedCheckpointError> {
    if log.len() > MAX_SHARED_LOG_NAME_BYTES || check_name(log).is_err() {
        return Err(SharedCheckpointError::LogName);
    }
    if note.len() > MAX_SHARED_NOTE_BYTES {
        return Err(SharedCheckpointError::TooLarge);
    }
    if note.is_empty() {
        return Ok(None);
    }
    let verifier = verifier
        .ok_or(SharedCheckpointError::NoVerifier)?
        .named(log)
        .map_err(SharedCheckpointError::NotVerified)?;
    let checkpoint = verifier
        .open_checkpoint(note)
        .map_err(SharedCheckpointError::NotVerified)?;
    if checkpoint.origin != log {
        return Err(SharedCheckpointError::NotVerified(
            CheckpointError::Malformed,
        ));
    }
    Ok(Some((checkpoint.size, note.to_owned())))
}

/// SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4].
fn key_id(name: &str, public_key: &[u8]) -> [u8; 4] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(name.as_bytes());
    context.update(&[b'\n', ED25519_TYPE]);
    context.update(public_key);
    let digest = context.finish();
    let mut id = [0u8; 4];
    id.copy_from_slice(&digest.as_ref()[..4]);
    id
}

/// Key names: non-empty, no spaces, no '+', no control characters.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
    {
        return Err("a key name is non-empty, without spaces or '+'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test vector: the example of Go's golang.org/x/mod/sumdb/note package documentation
    // (BSD-3-Clause), also used by the C2SP signed-note implementations: the signing key
    // "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz" (an
    // Ed25519 seed), its verifier key, and the note it signs.
    const PETER_SEED: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                              then you don't know what your problem is.\n";
    const PETER_NOTE_SIGNATURE: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    fn peter() -> AuditSigner {
        let seed = BASE64.decode(PETER_SEED).unwrap();
        assert_eq!(seed[0], ED25519_TYPE);
        let key = Ed25519KeyPair::from_seed_unchecked(&seed[1..]).unwrap();
        AuditSigner::new("PeterNeumann", key)
    }

    #[test]
    fn signs_and_opens_notes_exactly_like_go_sumdb_note() {
        let signer = peter();
        assert_eq!(signer.verifier_key(), PETER_VKEY);
        let note = signer.sign_note(PETER_TEXT).unwrap();
        assert_eq!(note, format!("{PETER_TEXT}\n{PETER_NOTE_SIGNATURE}"));
        let verifier = AuditVerifier::parse(PETER_VKEY).unwrap();
        assert_eq!(verifier.open_note(&note).unwrap(), PETER_TEXT);
        let edited = note.replace("cryptography", "cryptographY");
        assert_eq!(
            verifier.open_note(&edited),
            Err(CheckpointError::BadSignature("PeterNeumann".into()))
        );
    }

    /// A token key that signs with an Ed25519 key in memory, or fails as a removed token does.
    struct FakeToken {
        key: Ed25519KeyPair,
        algorithm: &'static rcgen::SignatureAlgorithm,
        present: std::sync::atomic::AtomicBool,
    }

    impl TokenKey for FakeToken {
        fn public_key(&self) -> &[u8] {
            self.key.public_key().as_ref()
        }
        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            self.algorithm
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, crate::domain::signing_key::TokenError> {
            if self.present.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(self.key.sign(message).as_ref().to_vec())
            } else {
                Err(crate::domain::signing_key::TokenError::Unavailable(
                    "removed".into(),
                ))
            }
        }
        fn describe(&self) -> TokenKeyInfo {
            TokenKeyInfo {
                token_label: "t".into(),
                ..TokenKeyInfo::default()
            }
        }
        fn health(&self) -> Result<(), crate::domain::signing_key::TokenError> {
            Ok(())
        }
    }

    #[test]
    fn an_audit_key_in_a_token_signs_the_same_notes_and_fails_cleanly_when_it_is_gone() {
        let seed = BASE64.decode(PETER_SEED).unwrap();
        let token = Arc::new(FakeToken {
            key: Ed25519KeyPair::from_seed_unchecked(&seed[1..]).unwrap(),
            algorithm: &rcgen::PKCS_ED25519,
            present: true.into(),
        });
        let signer = AuditSigner::from_token("PeterNeumann", token.clone()).unwrap();
        assert_eq!(signer.verifier_key(), PETER_VKEY);
        assert_eq!(
            signer.sign_note(PETER_TEXT).unwrap(),
            format!("{PETER_TEXT}\n{PETER_NOTE_SIGNATURE}")
        );
        assert_eq!(signer.token_key().unwrap().token_label, "t");
        assert!(format!("{signer:?}").contains("token"));
        token
            .present
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(
            signer.sign_checkpoint(1, [0; 32]),
            Err(CheckpointError::KeyUnavailable(_))
        ));
        // Only an Ed25519 key signs checkpoints.
        let ecdsa = Arc::new(FakeToken {
            key: Ed25519KeyPair::from_seed_unchecked(&seed[1..]).unwrap(),
            algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
            present: true.into(),
        });
        assert!(AuditSigner::from_token("PeterNeumann", ecdsa).is_err());
    }

    #[test]
    fn refuses_mangled_verifier_keys() {
        assert!(AuditVerifier::parse(PETER_VKEY).is_ok());
        // Wrong key id, unknown algorithm (with adjusted id), truncated, bad name.
        for bad in [
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq",
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann",
        ] {
            assert!(AuditVerifier::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checkpoints_round_trip_and_other_keys_are_refused() {
        let (signer, pkcs8) = AuditSigner::generate("meshroot-audit/test").unwrap();
        let root = crate::domain::audit::merkle::leaf_hash(b"x");
        let note = signer.sign_checkpoint(42, root).unwrap();
        assert!(note.starts_with("meshroot-audit/test\n42\n"));
        let verifier = AuditVerifier::parse(&signer.verifier_key()).unwrap();
        assert_eq!(
            verifier.open_checkpoint(&note).unwrap(),
            Checkpoint {
                origin: "meshroot-audit/test".into(),
                size: 42,
                root
            }
        );
        // The stored key signs the same way after a reload.
        let reloaded = AuditSigner::from_pkcs8("meshroot-audit/test", &pkcs8).unwrap();
        assert_eq!(reloaded.verifier(), verifier);
        // A note from another key with the same name is not accepted.
        let (other, _) = AuditSigner::generate("meshroot-audit/test").unwrap();
        assert!(verifier
            .open_checkpoint(&other.sign_checkpoint(42, root).unwrap())
            .is_err());
        // A changed size breaks the signature.
        let forged = note.replacen("\n42\n", "\n41\n", 1);
        assert!(verifier.open_checkpoint(&forged).is_err());
        assert!(format!("{signer:?}").contains("meshroot-audit/test"));
    }

    /// Issue 30, N4: what a member shares is a checkpoint of its named log signed by the audit
    /// key (under that log's name), within bounds; a forged or outsized note is refused.
    #[test]
    fn a_shared_checkpoint_must_be_signed_by_the_audit_key_and_within_bounds() {
        let (signer, pkcs8) = AuditSigner::generate("meshroot-audit/member-0").unwrap();
        let verifier = signer.verifier();
        // Member 1 signs with the same key under its own log name.
        let member_1 = AuditSigner::from_pkcs8("meshroot-audit/member-1", &pkcs8).unwrap();
        let note = member_1.sign_checkpoint(7, [3; 32]).unwrap();
        assert_eq!(
            check_shared("meshroot-audit/member-1", &note, Some(&verifier)).unwrap(),
            Some((7, note.clone()))
        );
        assert_eq!(
            check_shared("meshroot-audit/member-1", "", Some(&verifier)),
            Ok(None)
        );
        // The same note named as another log's, unsigned, signed by another key, or too big.
        assert!(check_shared("meshroot-audit/member-2", &note, Some(&verifier)).is_err());
        let forged = Checkpoint {
            origin: "meshroot-audit/member-1".into(),
            size: 1 << 40,
            root: [0; 32],
        }
        .body();
        let unsigned = format!("{forged}\n\u{2014} meshroot-audit/member-1 AAAAAAAAAAA=\n");
        let error = check_shared("meshroot-audit/member-1", &unsigned, Some(&verifier));
        assert!(
            matches!(error, Err(SharedCheckpointError::NotVerified(_))),
            "{error:?}"
        );
        let (stranger, _) = AuditSigner::generate("meshroot-audit/member-1").unwrap();
        let other_key = stranger.sign_checkpoint(1 << 40, [0; 32]).unwrap();
        assert!(check_shared("meshroot-audit/member-1", &other_key, Some(&verifier)).is_err());
        assert_eq!(
            check_shared("meshroot-audit/member-1", &note, None),
            Err(SharedCheckpointError::NoVerifier)
        );
        let long_name = "x".repeat(MAX_SHARED_LOG_NAME_BYTES + 1);
        assert_eq!(
            check_shared(&long_name, "", Some(&verifier)),
            Err(SharedCheckpointError::LogName)
        );
        assert_eq!(
            check_shared("a b", "", Some(&verifier)),
            Err(SharedCheckpointError::LogName)
        );
        let huge = format!("{note}{}", "x".repeat(MAX_SHARED_NOTE_BYTES));
        assert_eq!(
            check_shared("meshroot-audit/member-1", &huge, Some(&verifier)),
            Err(SharedCheckpointError::TooLarge)
        );
    }
}
