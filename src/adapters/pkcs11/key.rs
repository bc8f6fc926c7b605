//! A private key in a PKCS#11 token, as the domain's [`TokenKey`]: found by its URI, it signs in
//! the token over a small pool of logged-in sessions, and is found again in a new session when
//! the token went away and came back.

use std::sync::Mutex;

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use der::asn1::{OctetStringRef, SequenceOf, UintRef};
use der::{Decode as _, Encode as _};

use crate::domain::signing_key::{TokenError, TokenKey, TokenKeyInfo};

use super::module::ModuleState;
use super::uri::KeyUri;

/// DER of the P-256 curve's OID (1.2.840.10045.3.1.7), as `CKA_EC_PARAMS` holds it.
pub(super) const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the P-384 curve's OID (1.3.132.0.34).
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER of Ed25519's OID (1.3.101.112, RFC 8410), as `CKA_EC_PARAMS` of an Edwards key holds it.
pub(super) const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// The same curve by name (`PrintableString "edwards25519"`), as PKCS#11 3.0 also allows.
const ED25519_NAME_PARAMS: &[u8] = b"\x13\x0cedwards25519";

/// How a key signs: ECDSA over a digest computed here, or pure Ed25519 over the message.
#[derive(Debug, Clone, Copy)]
enum Scheme {
    Ecdsa(&'static ring::digest::Algorithm),
    Ed25519,
}

/// A key in a token, ready to sign.
pub struct Pkcs11Key {
    module: std::path::PathBuf,
    context: Pkcs11,
    uri: KeyUri,
    pin: AuthPin,
    info: TokenKeyInfo,
    public_key: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
    scheme: Scheme,
    /// What this module's keys share: the gate against re-initialisation, and its generation.
    state: std::sync::Arc<ModuleState>,
    /// Logged-in sessions not in use, the key's handle in them, and the module generation they
    /// were opened in.
    idle: Mutex<Vec<Pooled>>,
    /// How many idle sessions are kept.
    pool: usize,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("uri", &self.uri.to_string())
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// An idle session, the key's handle in it, and the module generation it was opened in.
type Pooled = (Session, ObjectHandle, u64);

/// How a PKCS#11 failure counts: the token gone (wait for it) or a refusal (a configuration to
/// fix). A wrong or locked PIN is a refusal: it is never tried again, so no retry locks the
/// token.
pub(super) fn classify(what: &str, error: CkError) -> TokenError {
    match error {
        CkError::Pkcs11(
            rv @ (RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::SlotIdInvalid
            | RvError::ObjectHandleInvalid
            | RvError::KeyHandleInvalid
            | RvError::UserNotLoggedIn
            | RvError::GeneralError
            | RvError::FunctionFailed
            | RvError::CryptokiNotInitialized),
            function,
        ) => TokenError::Unavailable(format!("{what}: {function}: {rv:?}")),
        CkError::Pkcs11(rv, function) => TokenError::Refused(format!("{what}: {function}: {rv:?}")),
        other => TokenError::Unavailable(format!("{what}: {other}")),
    }
}

/// The slot whose token the URI names, and that token's label and serial.
pub(super) fn find_slot(
    context: &Pkcs11,
    uri: &KeyUri,
) -> Result<(Slot, String, String), TokenError> {
    let slots = context
        .get_slots_with_token()
        .map_err(|e| classify("listing the slots", e))?;
    for slot in slots {
        if uri.slot_id.is_some_and(|id| id != slot.id()) {
            continue;
        }
        let Ok(token) = context.get_token_info(slot) else {
            continue;
        };
        let matches = |wanted: &Option<String>, have: &str| {
            wanted
                .as_deref()
                .is_none_or(|wanted| wanted == have.trim_end())
        };
        if matches(&uri.token, token.label())
            && matches(&uri.serial, token.serial_number())
            && matches(&uri.manufacturer, token.manufacturer_id())
            && matches(&uri.model, token.model())
        {
            return Ok((
                slot,
                token.label().trim_end().to_owned(),
                token.serial_number().trim_end().to_owned(),
            ));
        }
    }
    Err(TokenError::Unavailable(format!(
        "no token matches {uri} (is it plugged in and initialised?)"
    )))
}

/// Opens a session on the URI's token and logs in; a user already logged in (by another
/// session of this process) is fine.
pub(super) fn logged_in_session(
    context: &Pkcs11,
    uri: &KeyUri,
    pin: &AuthPin,
    read_write: bool,
) -> Result<(Session, String, String), TokenError> {
    let (slot, label, serial) = find_slot(context, uri)?;
    let session = if read_write {
        context.open_rw_session(slot)
    } else {
        context.open_ro_session(slot)
    }
    .map_err(|e| classify("opening a session", e))?;
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(CkError::Pkcs11(
            rv @ (RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired),
            _,
        )) => {
            return Err(TokenError::Refused(format!(
                "logging in to token {label:?}: {rv:?} (not retried, so the token is not locked)"
            )))
        }
        Err(error) => return Err(classify("logging in", error)),
    }
    Ok((session, label, serial))
}

/// The one object of `class` the URI names in this session.
pub(super) fn find_object(
    session: &Session,
    uri: &KeyUri,
    class: ObjectClass,
) -> Result<ObjectHandle, TokenError> {
    let mut template = vec![Attribute::Class(class)];
    if let Some(label) = &uri.object {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    let found = session
        .find_objects(&template)
        .map_err(|e| classify("finding the key", e))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(TokenError::Refused(format!(
            "{uri}: no such {class} in the token"
        ))),
        _ => Err(TokenError::Refused(format!(
            "{uri}: {} objects of class {class} match; name one (add id=)",
            found.len()
        ))),
    }
}

impl Pkcs11Key {
    /// Finds the key the URI names, reads its public half and checks it can be used.
    pub(super) fn open(
        (module, context): (std::path::PathBuf, Pkcs11),
        uri: KeyUri,
        pin: AuthPin,
        pool: usize,
    ) -> Result<Self, TokenError> {
        let state = ModuleState::of(&module);
        let using = state.using();
        let generation = state.generation();
        let (session, token_label, token_serial) = logged_in_session(&context, &uri, &pin, false)?;
        let private = find_object(&session, &uri, ObjectClass::PRIVATE_KEY)?;
        let attributes = session
            .get_attributes(
                private,
                &[
                    AttributeType::KeyType,
                    AttributeType::Label,
                    AttributeType::Id,
                ],
            )
            .map_err(|e| classify("reading the key's attributes", e))?;
        let (mut key_type, mut key_label, mut key_id) = (None, String::new(), Vec::new());
        for attribute in attributes {
            match attribute {
                Attribute::KeyType(kind) => key_type = Some(kind),
                Attribute::Label(label) => key_label = String::from_utf8_lossy(&label).into_owned(),
                Attribute::Id(id) => key_id = id,
                _ => {}
            }
        }
        let edwards = match key_type {
            Some(KeyType::EC) => false,
            Some(KeyType::EC_EDWARDS) => true,
            _ => {
                return Err(TokenError::Refused(format!(
                    "{uri}: the key is neither an ECDSA nor an Ed25519 key (meshroot signs with \
                     ECDSA P-256 or P-384, and checkpoints with Ed25519, in a token)"
                )))
            }
        };
        // The public half: the public-key object of the same label or id.
        let public = find_object(&session, &uri, ObjectClass::PUBLIC_KEY)?;
        let attributes = session
            .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
            .map_err(|e| classify("reading the public key", e))?;
        let (mut params, mut point) = (Vec::new(), Vec::new());
        for attribute in attributes {
            match attribute {
                Attribute::EcParams(value) => params = value,
                Attribute::EcPoint(value) => point = value,
                _ => {}
            }
        }
        let (algorithm, scheme) = match (edwards, params.as_slice()) {
            (false, P256_PARAMS) => (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                Scheme::Ecdsa(&ring::digest::SHA256),
            ),
            (false, P384_PARAMS) => (
                &rcgen::PKCS_ECDSA_P384_SHA384,
                Scheme::Ecdsa(&ring::digest::SHA384),
            ),
            (true, ED25519_PARAMS | ED25519_NAME_PARAMS) => (&rcgen::PKCS_ED25519, Scheme::Ed25519),
            _ => {
                return Err(TokenError::Refused(format!(
                    "{uri}: the key's curve is none of P-256, P-384 and Ed25519"
                )))
            }
        };
        let public_key = match scheme {
            Scheme::Ecdsa(_) => ec_point(&point)?,
            Scheme::Ed25519 => edwards_point(&point)?,
        };
        let key = Self {
            module,
            context,
            info: TokenKeyInfo {
                token_label,
                token_serial,
                key_label,
                key_id: hex(&key_id),
            },
            uri,
            pin,
            public_key,
            algorithm,
            scheme,
            state: state.clone(),
            idle: Mutex::new(Vec::new()),
            pool: pool.max(1),
        };
        key.release((session, private, generation));
        drop(using);
        Ok(key)
    }

    /// An idle logged-in session of the module's current initialisation, or a new one. Call
    /// with the module's gate held.
    fn session(&self) -> Result<Pooled, TokenError> {
        let generation = self.state.generation();
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(pooled) if pooled.2 == generation => return Ok(pooled),
                Some(stale) => discard_stale(stale),
                None => break,
            }
        }
        let (session, _, _) = logged_in_session(&self.context, &self.uri, &self.pin, false)?;
        // The key was there when it was opened: not finding it now means the token is not the
        // one it was (removed, or another in its place), which its return mends.
        let private = find_object(&session, &self.uri, ObjectClass::PRIVATE_KEY).map_err(
            |error| match error {
                TokenError::Refused(why) => TokenError::Unavailable(why),
                unavailable => unavailable,
            },
        )?;
        Ok((session, private, generation))
    }

    fn release(&self, pooled: Pooled) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.pool {
            idle.push(pooled);
        }
    }

    /// Drops every idle session (after the token failed: they are dead).
    fn state_forget_sessions(&self) {
        let _using = self.state.using();
        self.forget_sessions();
    }

    /// Drops every idle session. Call with the module's gate held.
    fn forget_sessions(&self) {
        let generation = self.state.generation();
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        for pooled in idle {
            if pooled.2 != generation {
                discard_stale(pooled);
            }
        }
    }

    /// Signs `input` (the digest for ECDSA, the message for Ed25519) in one session.
    fn sign_once(&self, input: &[u8]) -> Result<Vec<u8>, TokenError> {
        let _using = self.state.using();
        let (session, key, generation) = self.session()?;
        let mechanism = match self.scheme {
            Scheme::Ecdsa(_) => Mechanism::Ecdsa,
            Scheme::Ed25519 => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        };
        match session.sign(&mechanism, key, input) {
            Ok(raw) => {
                self.release((session, key, generation));
                match self.scheme {
                    Scheme::Ecdsa(_) => ecdsa_der(&raw),
                    Scheme::Ed25519 if raw.len() == 64 => Ok(raw),
                    Scheme::Ed25519 => Err(TokenError::Refused(
                        "the token returned a malformed Ed25519 signature".into(),
                    )),
                }
            }
            Err(error) => Err(classify("signing", error)),
        }
    }
}

impl TokenKey for Pkcs11Key {
    fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, TokenError> {
        let digest;
        let input = match self.scheme {
            Scheme::Ecdsa(algorithm) => {
                digest = ring::digest::digest(algorithm, message);
                digest.as_ref()
            }
            Scheme::Ed25519 => message,
        };
        match self.sign_once(input) {
            Ok(signature) => Ok(signature),
            // A pooled session may have died with a token that has since come back: one more
            // try, in a new session.
            Err(TokenError::Unavailable(_)) => {
                self.state_forget_sessions();
                self.sign_once(input).inspect_err(|error| {
                    if matches!(error, TokenError::Unavailable(_)) {
                        self.state.reinitialize(&self.module, &self.context);
                    }
                })
            }
            Err(refused) => Err(refused),
        }
    }

    fn describe(&self) -> TokenKeyInfo {
        self.info.clone()
    }

    /// The key is found in a logged-in session (an idle one is used, so a healthy token costs
    /// one object search).
    fn health(&self) -> Result<(), TokenError> {
        let checked = {
            let _using = self.state.using();
            self.session().and_then(|(session, _, generation)| {
                match find_object(&session, &self.uri, ObjectClass::PRIVATE_KEY) {
                    Ok(key) => {
                        self.release((session, key, generation));
                        Ok(())
                    }
                    Err(TokenError::Refused(why)) => Err(TokenError::Unavailable(why)),
                    Err(unavailable) => Err(unavailable),
                }
            })
        };
        if matches!(checked, Err(TokenError::Unavailable(_))) {
            self.state_forget_sessions();
            self.state.reinitialize(&self.module, &self.context);
        }
        checked
    }
}

/// A session of an earlier initialisation of its module: its handle may now name another
/// key's session, so it is neither used nor closed (`C_Finalize` already ended it); only its
/// memory is left.
fn discard_stale(stale: Pooled) {
    std::mem::forget(stale);
}

/// The uncompressed point from `CKA_EC_POINT`: a DER OCTET STRING by the standard, the bare
/// point from some modules.
pub(super) fn ec_point(value: &[u8]) -> Result<Vec<u8>, TokenError> {
    if value.first() == Some(&0x04) && matches!(value.len(), 65 | 97) {
        return Ok(value.to_vec());
    }
    OctetStringRef::from_der(value)
        .map(|octets| octets.as_bytes().to_vec())
        .map_err(|_| TokenError::Refused("the token's EC point is malformed".into()))
}

/// The 32-byte Ed25519 public key from an Edwards key's `CKA_EC_POINT`: a DER OCTET STRING by
/// PKCS#11 3.0, the bare key from some modules.
pub(super) fn edwards_point(value: &[u8]) -> Result<Vec<u8>, TokenError> {
    if value.len() == 32 {
        return Ok(value.to_vec());
    }
    OctetStringRef::from_der(value)
        .ok()
        .map(|octets| octets.as_bytes().to_vec())
        .filter(|key| key.len() == 32)
        .ok_or_else(|| TokenError::Refused("the token's Ed25519 public key is malformed".into()))
}

/// X.509's ECDSA signature (`Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`, RFC 5480)
/// from PKCS#11's `r ‖ s`.
pub(super) fn ecdsa_der(raw: &[u8]) -> Result<Vec<u8>, TokenError> {
    let malformed = || TokenError::Refused("the token returned a malformed ECDSA signature".into());
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(malformed());
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut sequence: SequenceOf<UintRef<'_>, 2> = SequenceOf::new();
    for half in [r, s] {
        let integer = UintRef::new(half).map_err(|_| malformed())?;
        sequence.add(integer).map_err(|_| malformed())?;
    }
    sequence.to_der().map_err(|_| malformed())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_signatures_become_der_with_sign_bytes_and_no_leading_zeros() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r's top bit set: DER needs a leading zero
        raw[31] = 1;
        raw[63] = 2; // s = 2: leading zeros go
        let der = ecdsa_der(&raw).unwrap();
        assert_eq!(&der[..4], &[0x30, 38, 0x02, 33]);
        assert_eq!(der[4], 0x00);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 2]);
        assert!(ecdsa_der(&raw[..63]).is_err());
        assert!(ecdsa_der(&[]).is_err());
    }

    #[test]
    fn an_edwards_point_is_read_wrapped_or_bare_and_only_at_32_bytes() {
        let key = [7u8; 32];
        let mut wrapped = vec![0x04, 32];
        wrapped.extend_from_slice(&key);
        assert_eq!(edwards_point(&wrapped).unwrap(), key);
        assert_eq!(edwards_point(&key).unwrap(), key);
        assert!(edwards_point(&wrapped[..33]).is_err());
        assert!(edwards_point(&[0x04, 31, 0]).is_err());
    }

    #[test]
    fn an_ec_point_is_read_wrapped_or_bare() {
        let point: Vec<u8> = std::iter::once(4).chain([7u8; 64]).collect();
        let wrapped = [&[0x04, 65][..], &point].concat();
        assert_eq!(ec_point(&wrapped).unwrap(), point);
        assert_eq!(ec_point(&point).unwrap(), point);
        assert!(ec_point(&[0x30, 1, 0]).is_err());
    }
}
