//! Every record the pipeline writes is built here, once, from the values the stages returned:
//! an issued certificate, a refusal, or a summary of refusals over the recorded rate.

use std::time::SystemTime;

use super::error::IssueError;
use super::request::RequestId;
use crate::domain::caller::{AuthenticatorKind, Caller};
use crate::domain::clock::format_time;
use crate::domain::csr::SubjectPublicKey;
use crate::domain::digest::sha256;
use crate::domain::identity::{SpiffeId, TrustDomain};
use crate::domain::ratelimit::SuppressedRefusals;
use crate::domain::record::{
    client_text, CallerRecord, DenialRecord, IssuedRecord, Outcome, Record, RefusalSummary,
    CLIENT_TEXT_BYTES, CLIENT_VALUE_BYTES,
};
use crate::domain::signer::{IssuedCertificate, MeshSigner};

/// What the pipeline learned about a request before it ended, stage by stage.
#[derive(Debug, Default)]
pub(super) struct Facts {
    /// The `clusterid` header, escaped and bounded (it is the client's text).
    pub cluster_id: String,
    pub peer_address: String,
    /// The authenticator that refused the caller, when one did.
    pub refused_by: Option<AuthenticatorKind>,
    /// The authenticated caller (for an impersonation, the node proxy itself).
    pub caller: Option<Caller>,
    /// SHA-256 of the CSR's DER, or of the bytes received when they did not parse.
    pub csr_sha256: Vec<u8>,
    /// The CSR's single URI SAN, escaped and bounded (it is the client's text).
    pub requested_spiffe_id: String,
}

impl Facts {
    /// The caller's mesh, once authenticated (a configured mesh's name, never a client's text).
    pub fn mesh(&self) -> &str {
        self.caller
            .as_ref()
            .map_or("", |caller| caller.mesh.as_str())
    }

    /// Who asked, as recorded.
    pub(crate) fn caller_record(&self) -> CallerRecord {
        let mut record = CallerRecord {
            cluster_id: self.cluster_id.clone(),
            peer_address: self.peer_address.clone(),
            authenticator: self
                .refused_by
                .map(|kind| kind.name().to_owned())
                .unwrap_or_default(),
            ..CallerRecord::default()
        };
        if let Some(caller) = &self.caller {
            record.authenticator = caller.authenticator.name().to_owned();
            // Verified, but still chosen by whoever minted the token: bounded and escaped.
            record.issuer = client_text(&caller.issuer, CLIENT_VALUE_BYTES);
            record.subject = client_text(&caller.subject, CLIENT_VALUE_BYTES);
            record.spiffe_id = caller.identity.to_string();
            if let Some(pod) = &caller.pod {
                record.pod_name = client_text(&pod.name, CLIENT_VALUE_BYTES);
                record.pod_uid = client_text(&pod.uid, CLIENT_VALUE_BYTES);
            }
        }
        record
    }
}

/// A signed certificate, as its record describes it.
#[derive(Debug, Clone, Copy)]
pub struct IssuedFacts<'a> {
    pub certificate: &'a IssuedCertificate,
    pub signer: &'a MeshSigner,
    /// The identity certified (None for meshroot's own DNS-only serving certificate).
    pub identity: Option<&'a SpiffeId>,
    /// The identity asked for (differs from `identity` only when an alias was moved).
    pub requested: Option<&'a SpiffeId>,
    /// The trust domain recorded: the certified identity's (an alias when one was granted as
    /// asked), or the signer's for meshroot's own certificates.
    pub trust_domain: &'a TrustDomain,
    pub dns_names: &'a [String],
    pub public_key: &'a SubjectPublicKey,
    /// Empty when meshroot made the key itself.
    pub csr_sha256: &'a [u8],
    pub requested_ttl_seconds: i64,
}

/// The record of an issued certificate.
pub fn issued_record(facts: IssuedFacts<'_>) -> IssuedRecord {
    let IssuedFacts {
        certificate,
        signer,
        identity,
        requested,
        trust_domain,
        dns_names,
        public_key,
        csr_sha256,
        requested_ttl_seconds,
    } = facts;
    let text = |id: Option<&SpiffeId>| id.map(ToString::to_string).unwrap_or_default();
    IssuedRecord {
        serial: certificate.serial.clone(),
        spiffe_id: text(identity),
        requested_spiffe_id: text(requested),
        dns_names: dns_names.to_vec(),
        mesh: signer.mesh().to_owned(),
        trust_domain: trust_domain.to_string(),
        namespace: identity
            .map(|id| id.namespace().to_owned())
            .unwrap_or_default(),
        service_account: identity
            .map(|id| id.service_account().to_owned())
            .unwrap_or_default(),
        not_before: certificate.not_before,
        not_after: certificate.not_after,
        key_algorithm: public_key.algorithm.name().to_owned(),
        key_bits: public_key.algorithm.bits(),
        public_key_sha256: sha256(&public_key.spki_der).to_vec(),
        csr_sha256: csr_sha256.to_vec(),
        intermediate_sha256: signer.signing_certificate_sha256().to_vec(),
        certificate_sha256: sha256(&certificate.der).to_vec(),
        requested_ttl_seconds,
        ca: None,
    }
}

/// The record of a refused request, or None when the failure is not a refusal (see
/// [`IssueError::classify`]).
pub(super) fn refusal_record(
    request_id: &RequestId,
    now: SystemTime,
    facts: &Facts,
    error: &IssueError,
) -> Option<Record> {
    let reason = error.classify().reason?;
    Some(Record::new(
        request_id.to_string(),
        now,
        facts.caller_record(),
        Outcome::Denied(DenialRecord {
            reason: reason.to_owned(),
            detail: error.detail(),
            mesh: facts.mesh().to_owned(),
            requested_spiffe_id: facts.requested_spiffe_id.clone(),
            csr_sha256: facts.csr_sha256.clone(),
            summary: None,
        }),
    ))
}

/// The record summarizing unauthenticated refusals over the rate recorded one by one.
pub(super) fn summary_record(
    request_id: &RequestId,
    now: SystemTime,
    suppressed: &SuppressedRefusals,
) -> Record {
    let detail = format!(
        "{} unauthenticated requests from {} refused ({}) from {} to {}; over the rate of \
         refusals recorded one by one, so summarized here",
        suppressed.count,
        suppressed.peer,
        suppressed.reason,
        format_time(suppressed.first),
        format_time(suppressed.last),
    );
    Record::new(
        request_id.to_string(),
        now,
        CallerRecord {
            peer_address: suppressed.peer.clone(),
            ..CallerRecord::default()
        },
        Outcome::Denied(DenialRecord {
            reason: suppressed.reason.to_owned(),
            detail,
            mesh: String::new(),
            requested_spiffe_id: String::new(),
            csr_sha256: Vec::new(),
            summary: Some(RefusalSummary {
                count: suppressed.count,
                first_at: suppressed.first,
                last_at: suppressed.last,
            }),
        }),
    )
}

/// The requested identity as recorded: the client's text, escaped and bounded.
pub(super) fn requested_identity(uri: &str) -> String {
    client_text(uri, CLIENT_TEXT_BYTES)
}
