//! CA certificates a mesh's signer issues below itself: each cluster's istiod intermediate on the
//! plug-in path (Istio's `cacerts`). Like every leaf, each is checked again before it leaves: it
//! must be exactly the CA certificate asked for, signed by the mesh's signing key.

use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    PublicKeyData, SerialNumber,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use super::constraints::{self, Constraints};
use super::{IssuedCertificate, MeshSigner, SigningError};
use crate::domain::identity::TrustDomain;

/// What a cluster's intermediate is to be.
#[derive(Debug, Clone, Copy)]
pub struct IntermediateSpec<'a> {
    /// The subject's common name, e.g. `istiod cluster-a (mesh a)`.
    pub common_name: &'a str,
    /// The trust domains its URIs are confined to (the mesh's and its aliases); `None` leaves
    /// the name constraints out (for verifiers that cannot process them).
    pub permitted: Option<&'a [TrustDomain]>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl MeshSigner {
    /// Issues a CA certificate (pathlen 0: it signs only leaves) for `public_key`, clipped to
    /// this signer's own validity. Refused when the signing certificate may not have CA
    /// certificates below it, or when a permitted trust domain falls outside the name
    /// constraints above (the certificate would be useless for it).
    pub fn issue_intermediate(
        &self,
        spec: &IntermediateSpec<'_>,
        public_key: &impl PublicKeyData,
        now: SystemTime,
    ) -> Result<IssuedCertificate, SigningError> {
        if self.signing_path_len == Some(0) {
            return Err(SigningError::PathLength);
        }
        if let Some(permitted) = spec.permitted {
            for trust_domain in permitted {
                if self.check_permits(trust_domain).is_err() {
                    return Err(SigningError::NameConstraint);
                }
            }
        }
        let not_after = spec.not_after.min(self.signing_not_after);
        let serial = self.random_serial()?;

        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "meshroot");
        name.push(DnType::CommonName, spec.common_name);
        params.distinguished_name = name;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = time::OffsetDateTime::from(spec.not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        if let Some(permitted) = spec.permitted {
            params.custom_extensions.push(
                constraints::uri_name_constraints(permitted)
                    .map_err(|_| SigningError::CaCheck("name constraints unencodable"))?,
            );
        }
        let certificate = params
            .signed_by(public_key, &self.issuer)
            .map_err(SigningError::signing)?;
        let der = certificate.der().clone();
        self.check_intermediate(&der, spec, public_key, now)?;
        let cert_chain = self.chain_of(&der);
        Ok(IssuedCertificate {
            der,
            serial: serial.to_vec(),
            not_before: spec.not_before,
            not_after,
            cert_chain,
        })
    }

    /// The issued CA certificate is what was asked: signed by the signing key, issued by the
    /// signing certificate's subject, a pathlen-0 CA for keyCertSign, for `public_key`, named
    /// `common_name`, valid at `now`, with exactly the requested URI constraints.
    fn check_intermediate(
        &self,
        der: &[u8],
        spec: &IntermediateSpec<'_>,
        public_key: &impl PublicKeyData,
        now: SystemTime,
    ) -> Result<(), SigningError> {
        let (_, issued) =
            X509Certificate::from_der(der).map_err(|_| SigningError::CaCheck("unparsable"))?;
        let (_, signing) = X509Certificate::from_der(&self.signing_certificate)
            .map_err(|_| SigningError::CaCheck("signing certificate unparsable"))?;
        if issued.verify_signature(Some(signing.public_key())).is_err() {
            return Err(SigningError::CaCheck("signature"));
        }
        if issued.issuer().as_raw() != signing.subject().as_raw() {
            return Err(SigningError::CaCheck("issuer name"));
        }
        match issued.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca && bc.value.path_len_constraint == Some(0) => {}
            _ => return Err(SigningError::CaCheck("basic constraints")),
        }
        match issued.key_usage() {
            Ok(Some(usage)) if usage.value.key_cert_sign() => {}
            _ => return Err(SigningError::CaCheck("key usage")),
        }
        if issued.public_key().raw != public_key.subject_public_key_info().as_slice() {
            return Err(SigningError::CaCheck("public key"));
        }
        let named = issued
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok());
        if named != Some(spec.common_name) {
            return Err(SigningError::CaCheck("subject"));
        }
        let now = crate::domain::clock::unix_seconds(now);
        let validity = issued.validity();
        if now < validity.not_before.timestamp() || now >= validity.not_after.timestamp() {
            return Err(SigningError::CaCheck("validity"));
        }
        let constraints = Constraints::of_certificate(&issued)
            .map_err(|_| SigningError::CaCheck("name constraints unparsable"))?;
        let expected: Option<Vec<String>> = spec.permitted.map(|permitted| {
            let mut names: Vec<String> = Vec::new();
            for td in permitted {
                let td = td.as_str().to_ascii_lowercase();
                if !names.contains(&td) {
                    names.push(td);
                }
            }
            names
        });
        let found = match &constraints {
            Constraints::None => None,
            Constraints::UriOnly(uri) => Some(uri.permitted().to_vec()),
            Constraints::Other => return Err(SigningError::CaCheck("name constraints")),
        };
        if found != expected {
            return Err(SigningError::CaCheck("name constraints"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::keys::KeyType;
    use crate::edge::cli::init::{init, InitOptions};
    use std::time::Duration;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    /// A mesh `a` (a.example) whose intermediate has pathlen `path_len`, loaded as a signer.
    fn signer(path_len: u8) -> (tempfile::TempDir, MeshSigner) {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        init(
            &InitOptions {
                dir: dir.path().to_owned(),
                meshes: vec![("a".into(), td("a.example"))],
                key_type: KeyType::EcdsaP256,
                dev_issuer: false,
                name_constraints: true,
                intermediate_path_len: path_len,
                force: false,
                workloads: crate::domain::capacity::DEFAULT_WORKLOADS,
                token: None,
            },
            now,
        )
        .unwrap();
        let signer = crate::domain::signer::files::load_signer(
            "a",
            td("a.example"),
            &dir.path().join("a"),
            &[],
            None,
            now,
        )
        .unwrap();
        (dir, signer)
    }

    fn spec<'a>(permitted: Option<&'a [TrustDomain]>) -> IntermediateSpec<'a> {
        let now = SystemTime::now();
        IntermediateSpec {
            common_name: "istiod cluster-a (mesh a)",
            permitted,
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(86400),
        }
    }

    #[test]
    fn a_cluster_intermediate_is_a_constrained_pathlen_0_ca_under_the_mesh() {
        let (_dir, signer) = signer(1);
        let key = rcgen::KeyPair::generate().unwrap();
        let permitted = [td("a.example")];
        let issued = signer
            .issue_intermediate(&spec(Some(&permitted)), &key, SystemTime::now())
            .unwrap();
        let (_, parsed) = X509Certificate::from_der(&issued.der).unwrap();
        let bc = parsed.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert_eq!(
            Constraints::of_certificate(&parsed)
                .unwrap()
                .uri()
                .unwrap()
                .permitted(),
            ["a.example"]
        );
        // The chain: the new intermediate, the mesh's, then the bundle.
        assert_eq!(issued.cert_chain.len(), 3);

        // A leaf the cluster's istiod would sign verifies under it (webpki, the URI constraint
        // applied as meshroot does).
        let issuer = rcgen::Issuer::from_ca_cert_der(&issued.der, key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://a.example/ns/shop/sa/cart".try_into().unwrap(),
        )];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
        let (anchor, uri) = constraints::constraint_free_anchor(&issued.der).unwrap();
        webpki::EndEntityCert::try_from(leaf.der())
            .unwrap()
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &[anchor],
                &[],
                rustls_pki_types::UnixTime::now(),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .unwrap();
        assert!(uri.unwrap().permits("spiffe://a.example/ns/shop/sa/cart"));
    }

    #[test]
    fn a_mesh_intermediate_with_pathlen_0_issues_no_ca() {
        let (_dir, signer) = signer(0);
        let key = rcgen::KeyPair::generate().unwrap();
        let result = signer.issue_intermediate(&spec(None), &key, SystemTime::now());
        assert!(
            matches!(result, Err(SigningError::PathLength)),
            "{result:?}"
        );
    }

    #[test]
    fn a_trust_domain_outside_the_meshs_constraint_is_refused() {
        let (_dir, signer) = signer(1);
        let key = rcgen::KeyPair::generate().unwrap();
        let permitted = [td("b.example")];
        let result = signer.issue_intermediate(&spec(Some(&permitted)), &key, SystemTime::now());
        assert!(
            matches!(result, Err(SigningError::NameConstraint)),
            "{result:?}"
        );
    }
}
