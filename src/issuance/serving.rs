//! Server certificates meshroot issues itself (its own serving certificate, istiod's): signed
//! from a mesh's intermediate with a fresh P-256 key and recorded like every other issuance.

use std::time::Duration;

use rcgen::{KeyPair, PublicKeyData as _};

use super::error::IssueError;
use super::pipeline::CertificateAuthority;
use super::record_builder::{issued_record, IssuedFacts};
use crate::domain::clock::format_time;
use crate::domain::csr::{KeyAlgorithm, SubjectPublicKey};
use crate::domain::digest::hex;
use crate::domain::identity::SpiffeId;
use crate::domain::policy;
use crate::domain::record::{CallerRecord, Outcome, Record};
use crate::domain::signer::{IssuedCertificate, SigningError};

impl CertificateAuthority {
    /// Issues (and records) meshroot's own TLS serving certificate for `dns_names` from the
    /// primary mesh's intermediate, with a fresh P-256 key. It names no URI: a verifier that
    /// cannot process URI name constraints (rustls-webpki refuses every URI under one) still
    /// accepts it through a constrained intermediate.
    pub(crate) async fn issue_serving_certificate(
        &self,
        dns_names: &[String],
        lifetime: Duration,
    ) -> Result<(IssuedCertificate, KeyPair), IssueError> {
        self.issue_server_certificate(
            &self.primary_mesh,
            dns_names,
            None,
            lifetime,
            "serving-certificate",
        )
        .await
    }

    /// Issues (and records) this replica's client certificate towards the other members:
    /// meshroot's own SPIFFE identity only, from the primary mesh's intermediate. The members
    /// verify it as they verify any client certificate, name constraints included.
    pub(crate) async fn issue_member_certificate(
        &self,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<(IssuedCertificate, KeyPair), IssueError> {
        self.issue_server_certificate(
            &self.primary_mesh,
            &[],
            Some(identity),
            lifetime,
            "member-certificate",
        )
        .await
    }

    /// Issues (and records) a server certificate from `mesh`'s intermediate with a fresh P-256
    /// key: DNS names and, for istiod, its SPIFFE identity. `purpose` is recorded as the
    /// caller's subject (meshroot itself asked).
    pub(crate) async fn issue_server_certificate(
        &self,
        mesh: &str,
        dns_names: &[String],
        identity: Option<&SpiffeId>,
        lifetime: Duration,
        purpose: &str,
    ) -> Result<(IssuedCertificate, KeyPair), IssueError> {
        let signer = self
            .mesh_signer(mesh)
            .ok_or_else(|| IssueError::MeshNotServed(mesh.to_owned()))?;
        let key = KeyPair::generate().map_err(|e| IssueError::Signing(SigningError::Build(e)))?;
        let now = self.clock.now();
        let not_before = now.checked_sub(policy::BACKDATE).unwrap_or(now);
        let issued =
            signer.issue_server(dns_names, identity, &key, not_before, now + lifetime, now)?;
        let request_id = self.new_request_id();
        let public_key = SubjectPublicKey {
            spki_der: key.subject_public_key_info(),
            algorithm: KeyAlgorithm::EcdsaP256,
        };
        let record = Record::new(
            request_id.to_string(),
            now,
            CallerRecord {
                authenticator: "meshroot-internal".to_owned(),
                subject: purpose.to_owned(),
                ..CallerRecord::default()
            },
            Outcome::Issued(issued_record(IssuedFacts {
                certificate: &issued,
                signer,
                identity,
                requested: identity,
                trust_domain: signer.trust_domain(),
                dns_names,
                public_key: &public_key,
                csr_sha256: &[],
                requested_ttl_seconds: lifetime.as_secs() as i64,
            })),
        );
        let sequence = self.records.append(record).await?;
        tracing::info!(
            request_id = %request_id,
            serial = %hex(&issued.serial),
            sequence,
            purpose,
            dns_names = ?dns_names,
            identity = %identity.map(ToString::to_string).unwrap_or_default(),
            not_after = %format_time(issued.not_after),
            "server certificate issued"
        );
        Ok((issued, key))
    }
}
