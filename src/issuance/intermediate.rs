//! Cluster intermediates on the plug-in path: meshroot issues a cluster's istiod a CA
//! certificate under the mesh's signer, with a key made for it, and records it (cluster, mesh,
//! serial, validity, key fingerprint, the root it chains to) before handing it out.

use std::time::Duration;

use rcgen::{KeyPair, PublicKeyData as _};

use super::error::IssueError;
use super::pipeline::CertificateAuthority;
use super::record_builder::{issued_record, IssuedFacts};
use crate::domain::clock::format_time;
use crate::domain::csr::{KeyAlgorithm, SubjectPublicKey};
use crate::domain::digest::{hex, sha256};
use crate::domain::keys::certificate_pem;
use crate::domain::policy;
use crate::domain::record::{CallerRecord, IssuedCa, Outcome, Record};
use crate::domain::signer::intermediate::IntermediateSpec;
use crate::domain::signer::{IssuedCertificate, SigningError};

/// The caller subject of a cluster intermediate's record (meshroot issued it for itself).
pub const CLUSTER_INTERMEDIATE_SUBJECT: &str = "cluster-intermediate";

/// A cluster's istiod CA material, in Istio's `cacerts` layout. The key never appears in
/// `Debug` output.
pub struct ClusterCa {
    pub certificate: IssuedCertificate,
    /// `ca-cert.pem`.
    pub ca_cert_pem: String,
    /// `ca-key.pem` (PKCS#8).
    pub ca_key_pem: String,
    /// `cert-chain.pem`: the intermediate, the mesh's intermediates, the root.
    pub cert_chain_pem: String,
    /// `root-cert.pem`: the mesh's whole trust bundle.
    pub root_cert_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("serial", &hex(&self.certificate.serial))
            .field("not_after", &self.certificate.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Issues (and records) `cluster`'s istiod intermediate under `mesh`'s signer, valid for
    /// `lifetime` (clipped to the signer's), with a fresh P-256 key. Under a name-constrained
    /// mesh signer it is confined to the mesh's trust domain and aliases.
    pub(crate) async fn issue_cluster_intermediate(
        &self,
        mesh: &str,
        cluster: &str,
        lifetime: Duration,
    ) -> Result<ClusterCa, IssueError> {
        let served = self
            .meshes
            .get(mesh)
            .ok_or_else(|| IssueError::MeshNotServed(mesh.to_owned()))?;
        let signer = &served.signer;
        let key = KeyPair::generate().map_err(|e| IssueError::Signing(SigningError::Build(e)))?;
        let now = self.clock.now();
        let not_before = now.checked_sub(policy::BACKDATE).unwrap_or(now);
        let permitted = signer
            .name_constrained()
            .then_some(served.trust_domains.as_slice());
        let common_name = format!("istiod {cluster} (mesh {mesh})");
        let spec = IntermediateSpec {
            common_name: &common_name,
            permitted,
            not_before,
            not_after: now + lifetime,
        };
        let issued = signer.issue_intermediate(&spec, &key, now)?;
        let root = signer
            .issuing_root()
            .ok_or(IssueError::Signing(SigningError::CaCheck(
                "no root issues the mesh's chain",
            )))?;
        let request_id = self.new_request_id();
        let public_key = SubjectPublicKey {
            spki_der: key.subject_public_key_info(),
            algorithm: KeyAlgorithm::EcdsaP256,
        };
        let mut record = issued_record(IssuedFacts {
            certificate: &issued,
            signer,
            identity: None,
            requested: None,
            trust_domain: signer.trust_domain(),
            dns_names: &[],
            public_key: &public_key,
            csr_sha256: &[],
            requested_ttl_seconds: lifetime.as_secs() as i64,
        });
        record.ca = Some(IssuedCa {
            cluster: cluster.to_owned(),
            root_sha256: sha256(root).to_vec(),
            permitted_trust_domains: permitted
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect(),
        });
        let record = Record::new(
            request_id.to_string(),
            now,
            CallerRecord {
                authenticator: "meshroot-internal".to_owned(),
                subject: CLUSTER_INTERMEDIATE_SUBJECT.to_owned(),
                cluster_id: cluster.to_owned(),
                ..CallerRecord::default()
            },
            Outcome::Issued(record),
        );
        let sequence = self.records.append(record).await?;
        tracing::info!(
            request_id = %request_id,
            serial = %hex(&issued.serial),
            sequence,
            %mesh,
            %cluster,
            not_after = %format_time(issued.not_after),
            "cluster intermediate issued"
        );
        let ca_cert_pem = certificate_pem(&issued.der);
        let intermediates: String = issued
            .cert_chain
            .split_last()
            .map(|(_bundle, chain)| chain.concat())
            .unwrap_or_default();
        let cert_chain_pem = format!("{intermediates}{}", certificate_pem(root));
        let root_cert_pem = signer.root_bundle_pem().to_owned();
        Ok(ClusterCa {
            certificate: issued,
            ca_cert_pem,
            ca_key_pem: key.serialize_pem(),
            cert_chain_pem,
            root_cert_pem,
        })
    }
}
