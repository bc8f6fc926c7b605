//! A mesh's signer: its intermediate (or root) key and certificate, the chain up to the
//! shared root, and the trust bundle. It issues leaves from a [`Grant`] only — it never sees a CSR
//! or a caller — and checks every leaf again before it leaves (as SPIRE's `credvalidator` does).
//!
//! Chain shape served to Istio clients (contract §1): `[leaf, intermediates one per element
//! (signing certificate first), root bundle]`; every element ends in `\n`; a root never appears
//! among the intermediates.

pub mod check;
pub mod constraints;
pub mod crl;
mod error;
pub use self::error::SigningError;
pub mod files;
pub mod intermediate;
pub mod material;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, TrustAnchor};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use self::check::{check_profile, verify_path, Expected, LeafProfile, LeafSubject};
use self::material::{
    check_links, intermediates_of, issuing_root, path_constraints, to_system_time, CaMaterial,
    MaterialError,
};
use crate::domain::digest::sha256;
use crate::domain::identity::{SpiffeId, TrustDomain};
use crate::domain::keys::certificate_pem;
use crate::domain::policy::Grant;
use crate::domain::signing_key::CaKey;

/// A signed leaf and the chain to return with it.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub der: CertificateDer<'static>,
    /// Serial number, big-endian, as encoded (positive, at most 16 bytes).
    pub serial: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// `[leaf, intermediates…, root bundle]`, each element PEM ending in `\n`.
    pub cert_chain: Vec<String>,
}

/// One mesh's signer: its signing key and certificate, the served chain and the bundle.
pub struct MeshSigner {
    mesh: String,
    trust_domain: TrustDomain,
    issuer: Issuer<'static, CaKey>,
    /// The signing certificate as a trust anchor, for verifying issued leaves' signatures
    /// (without its URI name constraints, which webpki cannot apply: see [`constraints`]).
    signing_anchor: TrustAnchor<'static>,
    /// What every issued leaf must show (issuer, key identifier, the URI name constraints on
    /// the path from the signing certificate to its root, …), checked on every leaf.
    profile: LeafProfile,
    /// Leaves signed since the key was loaded: the first is always verified.
    leaves_signed: AtomicU64,
    /// Verify the signature of 1 leaf in this many (1: every leaf; always 1 for RSA).
    verify_every: u64,
    /// Leaves whose signature was verified since the key was loaded.
    leaves_verified: AtomicU64,
    /// Set when a leaf's signature failed to verify: nothing more is signed with this key.
    unhealthy: AtomicBool,
    /// The signing certificate (DER), and how many CA certificates may follow it in a path
    /// (its BasicConstraints pathLenConstraint; `None`: unlimited).
    signing_certificate: CertificateDer<'static>,
    signing_path_len: Option<u32>,
    /// The root of the bundle that issued the topmost served intermediate (or the signing
    /// certificate itself when it is a root).
    issuing_root: Option<CertificateDer<'static>>,
    signing_certificate_sha256: [u8; 32],
    signing_not_after: SystemTime,
    /// Non-root certificates from the signing certificate upwards.
    intermediates: Vec<CertificateDer<'static>>,
    intermediates_pem: Vec<String>,
    roots: Vec<CertificateDer<'static>>,
    root_bundle_pem: String,
    rng: SystemRandom,
    /// An RSA signing key: a signature takes milliseconds, too long for an async worker.
    slow_signer: bool,
    /// The signing key (also inside `issuer`), for its health and its token's name.
    key: CaKey,
    /// Named in every workload leaf as its CRL distribution point (`[revocation] crl_url`).
    crl_distribution_point: Option<String>,
}

impl std::fmt::Debug for MeshSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshSigner")
            .field("mesh", &self.mesh)
            .field("trust_domain", &self.trust_domain)
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl MeshSigner {
    /// Checks CA material and builds the authority: the signing certificate is a valid CA now,
    /// the key matches it, `cert-chain.pem` links it to a root in `root-cert.pem`, and a probe
    /// leaf verifies through the served chain with rustls-webpki.
    pub fn new(
        mesh: &str,
        trust_domain: TrustDomain,
        material: CaMaterial,
        now: SystemTime,
    ) -> Result<Self, MaterialError> {
        let CaMaterial {
            signing_certificate,
            signing_key,
            chain,
            mut roots,
        } = material;
        // One bundle, each root once, in the order given (root-cert.pem, then extra roots).
        let mut seen = std::collections::HashSet::new();
        roots.retain(|root| seen.insert(root.as_ref().to_vec()));
        let (_, signing) = X509Certificate::from_der(&signing_certificate)
            .map_err(|_| MaterialError::SigningCertificateUnparsable)?;
        if !signing.is_ca() {
            return Err(MaterialError::NotCa);
        }
        if let Ok(Some(usage)) = signing.key_usage() {
            if !usage.value.key_cert_sign() {
                return Err(MaterialError::NoCertSignUsage);
            }
        }
        if signing.public_key().raw != signing_key.subject_public_key_info().as_slice() {
            return Err(MaterialError::KeyMismatch);
        }
        let validity = signing.validity();
        let now_unix = crate::domain::clock::unix_seconds(now);
        if now_unix < validity.not_before.timestamp() || now_unix >= validity.not_after.timestamp()
        {
            return Err(MaterialError::NotValidNow {
                not_before: validity.not_before.to_string(),
                not_after: validity.not_after.to_string(),
            });
        }
        let signing_not_after = to_system_time(validity.not_after.timestamp());
        let signing_path_len = match signing.basic_constraints() {
            Ok(Some(constraints)) => constraints.value.path_len_constraint,
            _ => None,
        };
        if roots.is_empty() {
            return Err(MaterialError::NoRoots);
        }
        let intermediates = intermediates_of(&signing_certificate, &chain, &roots)?;
        check_links(&intermediates, &roots)?;

        let algorithm = signing_key.algorithm();
        // A token's signature is a blocking call into its module (a network HSM's takes
        // milliseconds), so it goes where RSA signatures go: off the async workers.
        let slow_signer = signing_key.token().is_some()
            || [
                &rcgen::PKCS_RSA_SHA256,
                &rcgen::PKCS_RSA_SHA384,
                &rcgen::PKCS_RSA_SHA512,
            ]
            .contains(&algorithm);
        let key = signing_key.clone();
        let issuer = Issuer::from_ca_cert_der(&signing_certificate, signing_key)
            .map_err(|_| MaterialError::SigningCertificateUnparsable)?;
        let (signing_anchor, _) = constraints::constraint_free_anchor(&signing_certificate)
            .map_err(|_| MaterialError::SigningCertificateUnparsable)?;
        let issuing_root = issuing_root(&signing_certificate, &intermediates, &roots);
        // No certificate outlives any certificate above it (Istio 1.30, #59768): the earliest
        // NotAfter of the whole chain, the issuing root included, bounds every leaf and every
        // cluster intermediate.
        let signing_not_after = intermediates
            .iter()
            .chain(issuing_root.iter())
            .filter_map(|der| X509Certificate::from_der(der).ok())
            .map(|(_, certificate)| to_system_time(certificate.validity().not_after.timestamp()))
            .fold(signing_not_after, SystemTime::min);
        let path_constraints =
            path_constraints(&signing_certificate, &intermediates, issuing_root.as_ref());
        let profile = LeafProfile::new(&signing, algorithm, path_constraints);
        let intermediates_pem = intermediates.iter().map(|c| certificate_pem(c)).collect();
        let root_bundle_pem = roots.iter().map(|c| certificate_pem(c)).collect();
        let authority = Self {
            mesh: mesh.to_owned(),
            trust_domain,
            issuer,
            signing_certificate_sha256: sha256(&signing_certificate),
            signing_anchor,
            profile,
            leaves_signed: AtomicU64::new(0),
            verify_every: 1,
            leaves_verified: AtomicU64::new(0),
            unhealthy: AtomicBool::new(false),
            signing_certificate,
            signing_path_len,
            issuing_root,
            signing_not_after,
            intermediates,
            intermediates_pem,
            roots,
            root_bundle_pem,
            rng: SystemRandom::new(),
            slow_signer,
            key,
            crl_distribution_point: None,
        };
        authority.check_permits(&authority.trust_domain)?;
        authority.probe(now).map_err(MaterialError::Probe)?;
        Ok(authority)
    }

    /// Adds certificates to the published bundle (the tail of every `cert_chain`, the root
    /// ConfigMap, the ClusterTrustBundle, `cacerts`' `root-cert.pem`) after the roots: partners'
    /// cross-certificates, or, opted in, their roots. They are not this signer's roots: nothing
    /// it issues chains to them, the SPIFFE bundle endpoint does not serve them, and the
    /// rotation gate does not count them.
    pub(crate) fn with_published(mut self, extra: &[CertificateDer<'static>]) -> Self {
        for certificate in extra {
            let pem = certificate_pem(certificate);
            if !self.root_bundle_pem.contains(&pem) {
                self.root_bundle_pem.push_str(&pem);
            }
        }
        self
    }

    /// Names `url` as the CRL distribution point of every workload leaf (where `GET /crl`
    /// answers, for verifiers that fetch CRLs).
    pub(crate) fn with_crl_distribution_point(mut self, url: Option<String>) -> Self {
        self.profile = self.profile.with_crl_distribution_point(url.clone());
        self.crl_distribution_point = url;
        self
    }

    /// Verifies the signature of the first leaf after the key was loaded and then of 1 leaf in
    /// `every` (an ECDSA signer); an RSA signer verifies every leaf whatever `every` says, as a
    /// faulty RSA-CRT signature would leak its key (docs/request-path.md, the design note).
    pub(crate) fn with_signature_sample(mut self, every: u64) -> Self {
        self.verify_every = if self.slow_signer { 1 } else { every.max(1) };
        // The first leaf after the key was loaded is verified (the probe was, too).
        self.leaves_signed = AtomicU64::new(0);
        self.leaves_verified = AtomicU64::new(0);
        self
    }

    /// Whether a leaf's signature failed to verify: the signer then refuses to sign, and the
    /// server is not ready, until the key is loaded again.
    pub(crate) fn is_unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::Relaxed)
    }

    pub fn mesh(&self) -> &str {
        &self.mesh
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Refuses a trust domain (the mesh's own, or an alias) that the URI name constraints on
    /// this signer's path do not permit: every leaf for it would fail the check before it leaves.
    pub(crate) fn check_permits(&self, trust_domain: &TrustDomain) -> Result<(), MaterialError> {
        let uri = format!("spiffe://{trust_domain}/");
        match self.profile.constraints().iter().find(|c| !c.permits(&uri)) {
            None => Ok(()),
            Some(constraints) => Err(MaterialError::OutsideNameConstraints {
                trust_domain: trust_domain.to_string(),
                permitted: constraints.permitted().join(", "),
            }),
        }
    }

    /// Refuses when the signing certificate may not have CA certificates below it (pathlen 0):
    /// the clusters' istiod intermediates could not be issued.
    pub(crate) fn check_may_issue_ca(&self) -> Result<(), MaterialError> {
        match self.signing_path_len {
            Some(0) => Err(MaterialError::NoCaBelow),
            _ => Ok(()),
        }
    }

    /// The earliest NotAfter of the signing chain (the signing certificate, the intermediates
    /// above it, the issuing root): nothing this signer issues lives past it.
    pub fn signing_not_after(&self) -> SystemTime {
        self.signing_not_after
    }

    /// SHA-256 of the signing certificate (DER): which intermediate signed a record's leaf.
    pub(crate) fn signing_certificate_sha256(&self) -> [u8; 32] {
        self.signing_certificate_sha256
    }

    /// The served intermediates (DER), signing certificate first; no roots.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// The root the served chain ends at.
    pub(crate) fn issuing_root(&self) -> Option<&CertificateDer<'static>> {
        self.issuing_root.as_ref()
    }

    /// Whether URI name constraints confine what this signer certifies.
    pub(crate) fn name_constrained(&self) -> bool {
        !self.profile.constraints().is_empty()
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The signing certificate and the intermediates above it (DER), as records' signers are
    /// remembered; just the signing certificate when it is itself a root.
    pub(crate) fn signer_chain(&self) -> Vec<Vec<u8>> {
        if self.intermediates.is_empty() {
            return self
                .roots
                .iter()
                .filter(|root| {
                    crate::domain::digest::sha256(root) == self.signing_certificate_sha256
                })
                .map(|root| root.to_vec())
                .collect();
        }
        self.intermediates.iter().map(|der| der.to_vec()).collect()
    }

    /// The served intermediates, PEM, signing certificate first (concatenated).
    pub(crate) fn intermediates_pem(&self) -> String {
        self.intermediates_pem.concat()
    }

    /// The trust bundle, PEM: the last element of every `cert_chain`.
    pub fn root_bundle_pem(&self) -> &str {
        &self.root_bundle_pem
    }

    /// Whether the signing key can sign now: always for a key in memory; for a key in a token,
    /// whether the token answers and holds it.
    pub fn key_health(&self) -> Result<(), crate::domain::signing_key::TokenError> {
        self.key.health()
    }

    /// Where the signing key is (a file, or a token's object), as a CA key record names it.
    pub fn key_location(&self) -> crate::domain::record::KeyLocation {
        self.key.location()
    }

    /// The signing certificate (DER) and its issuer's: the next intermediate up, or the root
    /// the chain ends at; for a signing certificate that is itself a root, itself twice.
    pub(crate) fn signing_certificate_and_issuer(&self) -> Option<(&[u8], &[u8])> {
        let signing = self.intermediates.first().or(self.issuing_root.as_ref())?;
        let issuer = self
            .intermediates
            .get(1)
            .or(self.issuing_root.as_ref())
            .unwrap_or(signing);
        Some((signing.as_ref(), issuer.as_ref()))
    }

    /// The token and object of the signing key, when it is in a token.
    pub fn token_key(&self) -> Option<crate::domain::signing_key::TokenKeyInfo> {
        self.key.token().map(|key| key.describe())
    }

    /// Whether signing takes long (an RSA key: 0.5 ms for 2048 bits, 4 ms for 4096 with ring; a key in a
    /// token: a call into its module),
    /// so callers should sign on a blocking thread rather than an async worker.
    pub(crate) fn signs_slowly(&self) -> bool {
        self.slow_signer
    }

    /// Issues a workload certificate exactly as granted, checked before it is returned.
    pub fn issue_workload(
        &self,
        grant: &Grant,
        now: SystemTime,
    ) -> Result<IssuedCertificate, SigningError> {
        let key = rcgen::SubjectPublicKeyInfo::from_der(&grant.public_key.spki_der)
            .map_err(SigningError::PublicKey)?;
        self.issue(
            LeafSubject::Workload(&grant.identity),
            &key,
            grant.not_before,
            grant.not_after,
            now,
        )
    }

    /// Issues a TLS server certificate for `dns_names` (meshroot's own; with `identity`,
    /// istiod's).
    pub(crate) fn issue_server(
        &self,
        dns_names: &[String],
        identity: Option<&SpiffeId>,
        key: &KeyPair,
        not_before: SystemTime,
        not_after: SystemTime,
        now: SystemTime,
    ) -> Result<IssuedCertificate, SigningError> {
        self.issue(
            LeafSubject::Server(dns_names, identity),
            key,
            not_before,
            not_after.min(self.signing_not_after),
            now,
        )
    }

    fn issue(
        &self,
        subject: LeafSubject<'_>,
        public_key: &impl PublicKeyData,
        not_before: SystemTime,
        not_after: SystemTime,
        now: SystemTime,
    ) -> Result<IssuedCertificate, SigningError> {
        if self.is_unhealthy() {
            return Err(SigningError::Unhealthy);
        }
        let serial = self.random_serial()?;

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        match subject {
            LeafSubject::Workload(identity) => {
                // An empty subject makes rcgen mark the SAN critical (RFC 5280 §4.2.1.6).
                params.subject_alt_names = vec![SanType::URI(
                    identity
                        .to_string()
                        .try_into()
                        .map_err(SigningError::Build)?,
                )];
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ];
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
                if let Some(url) = &self.crl_distribution_point {
                    params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                        uris: vec![url.clone()],
                    }];
                }
            }
            LeafSubject::Server(dns_names, identity) => {
                // An IP address is an IP SAN (what a client reaching us by address checks);
                // anything else a DNS name.
                params.subject_alt_names = dns_names
                    .iter()
                    .map(|name| match name.parse::<std::net::IpAddr>() {
                        Ok(ip) => Ok(SanType::IpAddress(ip)),
                        Err(_) => Ok(SanType::DnsName(
                            name.clone().try_into().map_err(SigningError::Build)?,
                        )),
                    })
                    .collect::<Result<_, SigningError>>()?;
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                if let Some(identity) = identity {
                    params.subject_alt_names.push(SanType::URI(
                        identity
                            .to_string()
                            .try_into()
                            .map_err(SigningError::Build)?,
                    ));
                    params
                        .extended_key_usages
                        .push(ExtendedKeyUsagePurpose::ClientAuth);
                }
            }
        }
        let certificate = params
            .signed_by(public_key, &self.issuer)
            .map_err(SigningError::signing)?;
        let der = certificate.der().clone();
        let public_key = public_key.subject_public_key_info();
        let expected = Expected {
            subject,
            serial: &serial,
            public_key: &public_key,
            not_before,
            not_after,
        };
        self.check_issued(&der, &expected, now)?;
        let cert_chain = self.chain_of(&der);
        Ok(IssuedCertificate {
            der,
            serial: serial.to_vec(),
            not_before,
            not_after,
            cert_chain,
        })
    }

    /// The chain served with a certificate this signer issued: it, the intermediates, the
    /// bundle.
    fn chain_of(&self, der: &CertificateDer<'_>) -> Vec<String> {
        let mut cert_chain = Vec::with_capacity(self.intermediates_pem.len() + 2);
        cert_chain.push(certificate_pem(der));
        cert_chain.extend(self.intermediates_pem.iter().cloned());
        cert_chain.push(self.root_bundle_pem.clone());
        cert_chain
    }

    /// A serial number. RFC 5280 §4.1.2.2: positive, at most 20 octets; CA/B asks for ≥ 64
    /// random bits. 16 random bytes with the top bit cleared and the next set: always exactly 16
    /// bytes.
    fn random_serial(&self) -> Result<[u8; 16], SigningError> {
        let mut serial = [0u8; 16];
        self.rng
            .fill(&mut serial)
            .map_err(|_| SigningError::Randomness)?;
        serial[0] = (serial[0] & 0x7f) | 0x40;
        Ok(serial)
    }

    /// The checks before a leaf leaves: its encoded bytes against what was granted, always
    /// ([`check_profile`]); its signature and path with rustls-webpki against the signing
    /// certificate (whose own path to the roots was verified when the signer was built, and
    /// again by the probe) for the first leaf after the key was loaded, every leaf of an RSA
    /// signer, 1 in `verify_every` of an ECDSA signer's, and every server certificate. A
    /// signature that does not verify marks the signer unhealthy: it signs nothing more.
    fn check_issued(
        &self,
        der: &CertificateDer<'static>,
        expected: &Expected<'_>,
        now: SystemTime,
    ) -> Result<(), SigningError> {
        check_profile(der, &self.profile, expected)?;
        let signed = self.leaves_signed.fetch_add(1, Ordering::Relaxed);
        let server = matches!(expected.subject, LeafSubject::Server(..));
        if !(server || signed.is_multiple_of(self.verify_every)) {
            return Ok(());
        }
        let verified = verify_path(
            der,
            std::slice::from_ref(&self.signing_anchor),
            &[],
            expected.subject,
            now,
        );
        if let Err(SigningError::Verify(error)) = &verified {
            if !bad_signature(error) {
                return verified;
            }
            self.unhealthy.store(true, Ordering::SeqCst);
            tracing::error!(
                mesh = %self.mesh,
                %error,
                "a leaf this signer made did not verify: it signs nothing more until its key is \
                 loaded again"
            );
        }
        if verified.is_ok() {
            self.leaves_verified.fetch_add(1, Ordering::Relaxed);
        }
        verified
    }

    #[cfg(test)]
    /// How many issued leaves' signatures were verified since the key was loaded.
    pub(crate) fn leaves_verified(&self) -> u64 {
        self.leaves_verified.load(Ordering::Relaxed)
    }

    /// Issues a leaf for a throwaway key (which passes the check every leaf passes, name
    /// constraints included) and verifies it through the full served chain to the roots, exactly
    /// as a peer would. Under URI name constraints webpki refuses every URI, so there the links
    /// above the signing certificate stand on [`check_links`] (signatures, checked at load).
    fn probe(&self, now: SystemTime) -> Result<(), SigningError> {
        let key = KeyPair::generate().map_err(SigningError::Build)?;
        let identity = SpiffeId::new(self.trust_domain.clone(), "meshroot-selftest", "probe")
            .map_err(|_| SigningError::IdentityCheck)?;
        let subject = LeafSubject::Workload(&identity);
        let not_after = (now + Duration::from_secs(600)).min(self.signing_not_after);
        let issued = self.issue(subject, &key, now, not_after, now)?;
        if self.name_constrained() {
            return Ok(());
        }
        let anchors = self
            .roots
            .iter()
            .map(|root| webpki::anchor_from_trusted_cert(root).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SigningError::Verify)?;
        verify_path(&issued.der, &anchors, &self.intermediates, subject, now)
    }
}

/// Whether webpki refused a leaf for its signature (not, say, for a signing certificate that
/// has expired): the key or its arithmetic is at fault, and the signer must stop.
fn bad_signature(error: &webpki::Error) -> bool {
    matches!(
        error,
        webpki::Error::InvalidSignatureForPublicKey
            | webpki::Error::SignatureAlgorithmMismatch
            | webpki::Error::UnsupportedSignatureAlgorithmContext(_)
            | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::csr::{KeyAlgorithm, SubjectPublicKey};
    use crate::domain::keys::KeyType;
    use crate::edge::cli::init::{init, InitOptions};

    /// A mesh `a` whose intermediate has a key of `key_type`, loaded as a signer.
    fn signer(key_type: KeyType, sample: u64) -> (tempfile::TempDir, MeshSigner) {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let trust_domain = TrustDomain::new("a.example").unwrap();
        init(
            &InitOptions {
                dir: dir.path().to_owned(),
                meshes: vec![("a".into(), trust_domain.clone())],
                key_type,
                dev_issuer: false,
                name_constraints: true,
                intermediate_path_len: 0,
                force: false,
                workloads: crate::domain::capacity::DEFAULT_WORKLOADS,
                token: None,
            },
            now,
        )
        .unwrap();
        let signer =
            files::load_signer("a", trust_domain, &dir.path().join("a"), &[], None, now).unwrap();
        (dir, signer.with_signature_sample(sample))
    }

    fn grant(now: SystemTime) -> Grant {
        let key = KeyPair::generate().unwrap();
        let identity = SpiffeId::parse("spiffe://a.example/ns/shop/sa/cart").unwrap();
        Grant {
            mesh: "a".into(),
            identity: identity.clone(),
            requested: identity,
            not_before: now,
            not_after: now + Duration::from_secs(3600),
            public_key: SubjectPublicKey {
                spki_der: key.subject_public_key_info(),
                algorithm: KeyAlgorithm::EcdsaP256,
            },
        }
    }

    /// Issue 31 (Istio 1.30, #59768): an intermediate that expires in an hour under a root that
    /// expires in half an hour signs nothing that outlives the root.
    #[test]
    fn leaves_are_clamped_to_the_earliest_expiry_of_the_whole_chain() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer};
        let now = SystemTime::now();
        let at = |seconds: u64| time::OffsetDateTime::from(now + Duration::from_secs(seconds));
        let root_key = KeyPair::generate().unwrap();
        let mut root = CertificateParams::default();
        root.distinguished_name
            .push(rcgen::DnType::CommonName, "short-lived root");
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.not_before = at(0) - time::Duration::minutes(5);
        root.not_after = at(1800);
        let root_der = root.self_signed(&root_key).unwrap().der().clone();
        let root_issuer = Issuer::new(root, root_key);
        let key = KeyPair::generate().unwrap();
        let mut intermediate = CertificateParams::default();
        intermediate
            .distinguished_name
            .push(rcgen::DnType::CommonName, "intermediate");
        intermediate.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        intermediate.not_before = at(0) - time::Duration::minutes(5);
        intermediate.not_after = at(3600);
        let intermediate_der = intermediate
            .signed_by(&key, &root_issuer)
            .unwrap()
            .der()
            .clone();
        let dir = tempfile::tempdir().unwrap();
        let pem = |der: &[u8]| crate::domain::keys::certificate_pem(der);
        std::fs::write(dir.path().join("ca-cert.pem"), pem(&intermediate_der)).unwrap();
        std::fs::write(dir.path().join("ca-key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("root-cert.pem"), pem(&root_der)).unwrap();
        std::fs::write(
            dir.path().join("cert-chain.pem"),
            format!("{}{}", pem(&intermediate_der), pem(&root_der)),
        )
        .unwrap();
        let trust_domain = TrustDomain::new("a.example").unwrap();
        let signer = files::load_signer("a", trust_domain, dir.path(), &[], None, now).unwrap();
        let root_not_after = crate::domain::clock::from_unix_seconds(at(1800).unix_timestamp());
        assert_eq!(signer.signing_not_after(), root_not_after);
        let mut grant = grant(now);
        grant.not_after = grant.not_after.min(signer.signing_not_after());
        let leaf = signer.issue_workload(&grant, now).unwrap();
        assert!(
            leaf.not_after <= root_not_after,
            "the leaf outlives the root"
        );
    }

    #[test]
    fn an_ecdsa_signer_verifies_the_first_leaf_and_then_one_in_the_sample() {
        let (_dir, signer) = signer(KeyType::EcdsaP256, 64);
        let now = SystemTime::now();
        let grant = grant(now);
        signer.issue_workload(&grant, now).unwrap();
        assert_eq!(
            signer.leaves_verified(),
            1,
            "the first leaf after the key load"
        );
        for _ in 1..130 {
            signer.issue_workload(&grant, now).unwrap();
        }
        assert_eq!(signer.leaves_verified(), 3, "leaves 0, 64 and 128 of 130");

        let (_dir, every) = self::signer(KeyType::EcdsaP256, 1);
        for _ in 0..5 {
            every.issue_workload(&grant, now).unwrap();
        }
        assert_eq!(every.leaves_verified(), 5);
    }

    #[test]
    fn an_rsa_signer_verifies_every_leaf_whatever_the_sample() {
        let (_dir, signer) = signer(KeyType::Rsa2048, 64);
        let now = SystemTime::now();
        let grant = grant(now);
        for _ in 0..3 {
            signer.issue_workload(&grant, now).unwrap();
        }
        assert_eq!(signer.leaves_verified(), 3);
    }

    /// A leaf whose signature does not verify (what a fault in the signing arithmetic makes)
    /// marks the signer unhealthy: it refuses to sign anything more, not just that request.
    #[test]
    fn a_signature_that_does_not_verify_stops_the_signer() {
        let (_dir, signer) = signer(KeyType::EcdsaP256, 64);
        let now = SystemTime::now();
        let grant = grant(now);
        let issued = signer.issue_workload(&grant, now).unwrap();
        assert!(!signer.is_unhealthy());

        let mut faulty = issued.der.to_vec();
        let last = faulty.len() - 1;
        faulty[last] ^= 0x01;
        let expected = Expected {
            subject: LeafSubject::Workload(&grant.identity),
            serial: &issued.serial,
            public_key: &grant.public_key.spki_der,
            not_before: grant.not_before,
            not_after: grant.not_after,
        };
        // Leaf 64 of the sample: verified.
        signer.leaves_signed.store(64, Ordering::SeqCst);
        let result = signer.check_issued(&CertificateDer::from(faulty), &expected, now);
        assert!(matches!(result, Err(SigningError::Verify(_))), "{result:?}");
        assert!(signer.is_unhealthy());
        let refused = signer.issue_workload(&grant, now);
        assert!(
            matches!(refused, Err(SigningError::Unhealthy)),
            "{refused:?}"
        );
    }
}
