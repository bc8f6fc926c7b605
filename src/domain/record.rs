//! Issuance and denial records as the core sees them, and the seam to durable storage.
//!
//! The core builds a [`Record`] for every decision and hands it to a [`RecordSink`], which must
//! not return before the record is durable. The sled-backed sink lives in `store`; the core never
//! sees sled types.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use crate::domain::clock::format_time;
use crate::domain::digest::hex;
use crate::domain::digest::sha256;

/// The current record format version (see `proto/meshroot/store/v1/record.proto`).
pub(crate) const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Append order; assigned by the store.
    pub sequence: u64,
    #[serde(serialize_with = "rfc3339")]
    pub recorded_at: SystemTime,
    pub request_id: String,
    pub caller: CallerRecord,
    pub outcome: Outcome,
}

/// Who asked. Fields are empty when unknown (e.g. authentication failed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CallerRecord {
    pub authenticator: String,
    pub issuer: String,
    pub subject: String,
    pub cluster_id: String,
    pub peer_address: String,
    /// The caller's own identity (for an impersonation, the node proxy's).
    pub spiffe_id: String,
    /// The caller's pod, as the TokenReview named it.
    pub pod_name: String,
    pub pod_uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "one record per request, moved once; boxing would only add an allocation"
)]
pub enum Outcome {
    Issued(IssuedRecord),
    Denied(DenialRecord),
    Revoked(RevocationRecord),
    Federated(FederationRecord),
    CaKey(CaKeyRecord),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedRecord {
    #[serde(serialize_with = "hex_bytes")]
    pub serial: Vec<u8>,
    /// Empty for meshroot's own serving certificates.
    pub spiffe_id: String,
    /// What the CSR asked for; differs from `spiffe_id` when an alias request was moved to the
    /// mesh's current trust domain.
    pub requested_spiffe_id: String,
    /// DNS names, for meshroot's own serving certificates.
    pub dns_names: Vec<String>,
    pub mesh: String,
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
    #[serde(serialize_with = "rfc3339")]
    pub not_before: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub not_after: SystemTime,
    pub key_algorithm: String,
    pub key_bits: u32,
    #[serde(serialize_with = "hex_bytes")]
    pub public_key_sha256: Vec<u8>,
    #[serde(serialize_with = "hex_bytes")]
    pub csr_sha256: Vec<u8>,
    #[serde(serialize_with = "hex_bytes")]
    pub intermediate_sha256: Vec<u8>,
    #[serde(serialize_with = "hex_bytes")]
    pub certificate_sha256: Vec<u8>,
    pub requested_ttl_seconds: i64,
    /// Set when the certificate is a CA (a cluster's istiod intermediate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<IssuedCa>,
}

/// What a record of a CA certificate adds: whose it is and where it chains.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IssuedCa {
    /// The cluster whose istiod holds it.
    pub cluster: String,
    /// SHA-256 of the root its chain ends at.
    #[serde(serialize_with = "hex_bytes")]
    pub root_sha256: Vec<u8>,
    /// The trust domains its URIs are confined to (empty: unconstrained).
    pub permitted_trust_domains: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DenialRecord {
    /// Machine-readable reason, e.g. `csr-signature-invalid`.
    pub reason: String,
    pub detail: String,
    pub mesh: String,
    pub requested_spiffe_id: String,
    #[serde(serialize_with = "hex_bytes")]
    pub csr_sha256: Vec<u8>,
    /// Set when this record stands for several unauthenticated refusals that were over the
    /// rate recorded one by one (docs/hardening.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<RefusalSummary>,
}

/// A revocation (`meshroot revoke`): which certificates, why, and which identities are refused
/// new certificates. The record's caller is who asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RevocationRecord {
    /// RFC 5280 CRLReason, by name (`key-compromise`; empty: unspecified).
    pub reason: String,
    pub comment: String,
    /// The filter that selected the certificates, for people.
    pub selector: String,
    pub certificates: Vec<RevokedCertificate>,
    /// SPIFFE IDs refused new certificates...
    pub blocked: Vec<String>,
    /// ...until then (None: until lifted).
    #[serde(serialize_with = "serialize_optional_time")]
    pub blocked_until: Option<SystemTime>,
    /// SPIFFE IDs whose block this record lifts.
    pub unblocked: Vec<String>,
}

/// A partner's SPIFFE bundle as a mesh trusts it from now on (`[[mesh.partner]]`): recorded on
/// the first fetch and on every change. The record's caller is empty (meshroot itself).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FederationRecord {
    /// The mesh that accepts the partner.
    pub mesh: String,
    /// The partner's trust domain.
    pub trust_domain: String,
    pub bundle_url: String,
    /// The bundle's `spiffe_sequence`.
    pub sequence: u64,
    /// SHA-256 of each X.509 authority, in the bundle's order.
    #[serde(serialize_with = "hex_list")]
    pub authorities_sha256: Vec<Vec<u8>>,
    /// Authorities the previous bundle did not hold, and previous ones now gone.
    #[serde(serialize_with = "hex_list")]
    pub added_sha256: Vec<Vec<u8>>,
    #[serde(serialize_with = "hex_list")]
    pub removed_sha256: Vec<Vec<u8>>,
    /// The authorities a cross-certificate in force binds to the partner's trust domain.
    #[serde(serialize_with = "hex_list")]
    pub cross_certified_sha256: Vec<Vec<u8>>,
    /// The partner's roots are published raw (`unprotected = true`).
    pub unprotected: bool,
}

/// `CaKeyRecord::event` of a CA certificate `meshroot init` made.
pub const CA_KEY_CREATED: &str = "created";
/// `CaKeyRecord::event` of an intermediate a server takes into service that its log did not
/// name yet (after `rotate intermediate`, or a cacerts Secret made elsewhere).
pub const CA_KEY_IN_SERVICE: &str = "in_service";

/// A CA certificate made, or taken into service, and where its key is: which token, which
/// object (label and id), or a file. The record's caller is empty (meshroot itself).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CaKeyRecord {
    /// [`CA_KEY_CREATED`] or [`CA_KEY_IN_SERVICE`].
    pub event: String,
    /// `root` or `intermediate`.
    pub role: String,
    /// The mesh an intermediate serves (empty for the root).
    pub mesh: String,
    #[serde(serialize_with = "hex_bytes")]
    pub certificate_sha256: Vec<u8>,
    /// The issuer's certificate (the root's own for the root).
    #[serde(serialize_with = "hex_bytes")]
    pub issuer_sha256: Vec<u8>,
    pub subject: String,
    #[serde(serialize_with = "hex_bytes")]
    pub serial: Vec<u8>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Where the certificate's private key is.
    pub key: KeyLocation,
    /// Where the key that signed it is; None when not known here (a root kept offline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<KeyLocation>,
}

/// Where a CA's private key is: a PEM file (`custody` "file"), or an object in a PKCS#11 token
/// ("token", with the token's label and serial and the object's label and id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyLocation {
    pub custody: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token_label: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token_serial: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key_label: String,
    /// `CKA_ID`, hex.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    /// e.g. `ecdsa_p256_sha256`.
    pub algorithm: String,
    /// SHA-256 of the SubjectPublicKeyInfo.
    #[serde(serialize_with = "hex_bytes")]
    pub public_key_sha256: Vec<u8>,
}

impl std::fmt::Display for KeyLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.custody == "token" {
            write!(
                f,
                "token {:?} (serial {}), key {:?} (id {})",
                self.token_label, self.token_serial, self.key_label, self.key_id
            )
        } else {
            write!(f, "{}", self.custody)
        }
    }
}

/// One revoked certificate, with what its CRL entry needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevokedCertificate {
    #[serde(serialize_with = "hex_bytes")]
    pub serial: Vec<u8>,
    /// The signing certificate's SHA-256: the CRL that lists it.
    #[serde(serialize_with = "hex_bytes")]
    pub intermediate_sha256: Vec<u8>,
    #[serde(serialize_with = "rfc3339")]
    pub not_after: SystemTime,
    pub spiffe_id: String,
    pub mesh: String,
    /// The member whose log holds its issuance (empty: this replica's own).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub member: String,
}

/// How many refusals a summary record stands for, and when they happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusalSummary {
    pub count: u64,
    #[serde(serialize_with = "rfc3339")]
    pub first_at: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub last_at: SystemTime,
}

impl Record {
    /// A record not yet stored (the store assigns its sequence number).
    pub fn new(
        request_id: String,
        recorded_at: SystemTime,
        caller: CallerRecord,
        outcome: Outcome,
    ) -> Self {
        Self {
            sequence: 0,
            recorded_at,
            request_id,
            caller,
            outcome,
        }
    }

    pub fn spiffe_id(&self) -> &str {
        match &self.outcome {
            Outcome::Issued(issued) => &issued.spiffe_id,
            Outcome::Denied(denied) => &denied.requested_spiffe_id,
            Outcome::Revoked(_) | Outcome::Federated(_) | Outcome::CaKey(_) => "",
        }
    }

    pub fn serial(&self) -> Option<&[u8]> {
        match &self.outcome {
            Outcome::Issued(issued) => Some(&issued.serial),
            Outcome::Denied(_)
            | Outcome::Revoked(_)
            | Outcome::Federated(_)
            | Outcome::CaKey(_) => None,
        }
    }
}

/// Why a record could not be stored: the sink's own error, kept whole for the log. Never a
/// client's business (it is answered as an internal error).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(Arc<dyn std::error::Error + Send + Sync>);

impl RecordError {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }
}

pub type AppendFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, RecordError>> + Send + 'a>>;

/// Durable storage for records.
pub trait RecordSink: Send + Sync {
    /// Stores the record (its `sequence` is assigned here) and resolves, with the sequence
    /// number, only once the record is durable.
    fn append(&self, record: Record) -> AppendFuture<'_>;
}

/// Serializes an optional time as RFC 3339 text or null.
pub(crate) fn serialize_optional_time<S: Serializer>(
    time: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.serialize_str(&format_time(*time)),
        None => serializer.serialize_none(),
    }
}

fn rfc3339<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_time(*time))
}

fn hex_bytes<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex(bytes))
}

fn hex_list<S: Serializer>(list: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(list.iter().map(|bytes| hex(bytes)))
}

/// At most this many bytes of a short value a client chose (cluster ID, token subject and
/// issuer, pod name) are logged or recorded.
pub const CLIENT_VALUE_BYTES: usize = 256;
/// At most this many bytes of a longer one (a requested SPIFFE ID, a refusal's detail).
pub(crate) const CLIENT_TEXT_BYTES: usize = 512;

/// A value that came from a client, made safe to log and to record: control characters, line
/// and paragraph separators and bidirectional-format characters are escaped (`\n`,
/// `\u{202e}`; a backslash as `\\`), so no client can forge a log line or hide text; and it
/// is at most `limit` bytes. A longer value keeps a prefix and then says how long the original
/// was and its SHA-256 (`…[12000 bytes, sha256:…]`), so two records of the same value still
/// match.
pub(crate) fn client_text(value: &str, limit: usize) -> String {
    let escaped = escape_client_text(value);
    if escaped.len() <= limit {
        return escaped;
    }
    let suffix = format!(
        "…[{} bytes, sha256:{}]",
        value.len(),
        hex(&sha256(value.as_bytes()))
    );
    let mut end = limit.saturating_sub(suffix.len());
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    let mut text = escaped[..end].to_owned();
    text.push_str(&suffix);
    text
}

fn escape_client_text(value: &str) -> String {
    let unsafe_char = |c: char| {
        c == '\\'
            || c.is_control()
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
            )
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    if !value.chars().any(unsafe_char) {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_escapes_what_could_forge_or_hide_a_log_line() {
        assert_eq!(client_text("shop-east", 64), "shop-east");
        assert_eq!(
            client_text("O=x\nFAKE LOG LINE level=ERROR\r\u{1b}[31m", 256),
            "O=x\\nFAKE LOG LINE level=ERROR\\r\\u{1b}[31m"
        );
        assert_eq!(client_text("a\\nb", 64), "a\\\\nb");
        assert_eq!(
            client_text("x\u{202e}gpj.exe\u{2028}", 64),
            "x\\u{202e}gpj.exe\\u{2028}"
        );
        // Printable text in any script passes unchanged.
        assert_eq!(client_text("ns/café-日本", 64), "ns/café-日本");
    }

    #[test]
    fn client_text_truncates_to_its_limit_and_keeps_the_length_and_hash() {
        let long = "é".repeat(6000);
        let text = client_text(&long, CLIENT_VALUE_BYTES);
        assert!(text.len() <= CLIENT_VALUE_BYTES, "{} bytes", text.len());
        assert!(text.starts_with("éé"));
        let hash = hex(&sha256(long.as_bytes()));
        assert!(
            text.ends_with(&format!("…[12000 bytes, sha256:{hash}]")),
            "{text}"
        );
        // Escaping counts toward the limit: newlines cannot smuggle in more bytes.
        let text = client_text(&"\n".repeat(10_000), CLIENT_TEXT_BYTES);
        assert!(text.len() <= CLIENT_TEXT_BYTES);
        assert!(!text.contains('\n'));
    }
}
