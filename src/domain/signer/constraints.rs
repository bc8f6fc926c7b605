//! URI name constraints (RFC 5280 §4.2.1.10) on meshroot's intermediates.
//!
//! Every intermediate meshroot issues permits only URIs whose host is its mesh's trust domain or
//! one of its aliases, in a critical name-constraints extension. A SPIFFE ID's host is its trust
//! domain, so a leaked intermediate of mesh `a.example` cannot mint `spiffe://b.example/…` for a
//! verifier that honours the constraint, even though both meshes share one root.
//!
//! rustls-webpki does not implement URI constraints and fails closed: under any URI constraint it
//! refuses every URI SAN, matching or not (`subject_name/mod.rs`, "We currently don't support URI
//! constraints -- fail closed for now"). So where meshroot itself verifies with webpki (its re-check
//! of every leaf, client-certificate authentication), the constrained certificate is made an
//! anchor *without* its constraints ([`constraint_free_anchor`]) and the constraints are applied
//! here, by the rule of §4.2.1.10. webpki still checks everything else (signature, validity, key
//! usage, critical extensions). Only constraints of the URI form are taken over; a certificate that
//! constrains other forms keeps its constraints in the anchor, for webpki to enforce.

use rcgen::CustomExtension;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::domain::identity::TrustDomain;

/// id-ce-nameConstraints.
const NAME_CONSTRAINTS_OID: &[u64] = &[2, 5, 29, 30];

/// The data plane a mesh runs, which decides whether its intermediates may carry URI name
/// constraints. Envoy (BoringSSL), Go's crypto/x509 and openssl enforce them; ztunnel verifies
/// with rustls-webpki, which refuses every chain that carries one (RUSTSEC-2026-0098), as does
/// pyca/cryptography. So only a sidecar-only mesh gets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPlane {
    /// Envoy sidecars and gateways only: URI name constraints confine each intermediate.
    Sidecar,
    /// ztunnel (and waypoints): no URI name constraints.
    Ambient,
    /// Both, or not known yet: no URI name constraints. The default, since it cannot break a
    /// working mesh of either kind (a constrained chain breaks every ztunnel handshake).
    #[default]
    Mixed,
}

impl DataPlane {
    /// Whether intermediates for this data plane carry URI name constraints.
    pub fn uri_name_constraints(self) -> bool {
        self == Self::Sidecar
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sidecar => "sidecar",
            Self::Ambient => "ambient",
            Self::Mixed => "mixed",
        }
    }

    /// The choice and its consequence, in one line.
    pub(crate) fn consequence(self) -> &'static str {
        match self {
            Self::Sidecar => {
                "data plane sidecar: each intermediate may certify only URIs of its mesh's trust \
                 domains (URI name constraints); ztunnel (ambient) cannot verify such chains"
            }
            Self::Ambient | Self::Mixed => {
                "no URI name constraints, so ztunnel (rustls-webpki) accepts the chains; a \
                 sidecar-only mesh may confine each intermediate with --data-plane sidecar"
            }
        }
    }
}

/// Why constraints cannot be written or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConstraintError {
    #[error("a name constraint needs at least one trust domain")]
    NoTrustDomain,
    #[error("{0:?} cannot be written as a URI name constraint")]
    Unencodable(String),
    #[error("the certificate's name constraints cannot be parsed")]
    Unparsable,
}

/// The critical name-constraints extension that permits only URIs whose host is one of
/// `trust_domains`, encoded with the RustCrypto `x509-cert` types.
pub fn uri_name_constraints(
    trust_domains: &[TrustDomain],
) -> Result<CustomExtension, ConstraintError> {
    name_constraints(trust_domains, false)
}

/// A partner's cross-certificate's constraints: URIs of its trust domain, and DNS names only
/// under that name. Envoy's `match_subject_alt_names` (what istiod configures) matches DNS SANs
/// too, so without the DNS subtree a partner leaf whose DNS SAN reads `spiffe://<ours>/...`
/// would pass a sidecar's trust-domain check.
pub(crate) fn partner_name_constraints(
    trust_domain: &TrustDomain,
) -> Result<CustomExtension, ConstraintError> {
    name_constraints(std::slice::from_ref(trust_domain), true)
}

fn name_constraints(
    trust_domains: &[TrustDomain],
    with_dns: bool,
) -> Result<CustomExtension, ConstraintError> {
    use der::Encode as _;
    use x509_cert::ext::pkix::constraints::name::{GeneralSubtree, NameConstraints};
    use x509_cert::ext::pkix::name::GeneralName as Name;

    if trust_domains.is_empty() {
        return Err(ConstraintError::NoTrustDomain);
    }
    let mut subtrees: Vec<GeneralSubtree> = Vec::with_capacity(trust_domains.len() * 2);
    let mut add = |base: Name| {
        if !subtrees.iter().any(|s| s.base == base) {
            subtrees.push(GeneralSubtree {
                base,
                minimum: 0,
                maximum: None,
            });
        }
    };
    for trust_domain in trust_domains {
        let host = der::asn1::Ia5String::new(trust_domain.as_str())
            .map_err(|_| ConstraintError::Unencodable(trust_domain.to_string()))?;
        add(Name::UniformResourceIdentifier(host.clone()));
        if with_dns {
            add(Name::DnsName(host));
        }
    }
    let constraints = NameConstraints {
        permitted_subtrees: Some(subtrees),
        excluded_subtrees: None,
    };
    let content = constraints
        .to_der()
        .map_err(|e| ConstraintError::Unencodable(e.to_string()))?;
    let mut extension = CustomExtension::from_oid_content(NAME_CONSTRAINTS_OID, content);
    extension.set_criticality(true);
    Ok(extension)
}

/// The URI name constraints of one certificate: the hosts (or `.domain`s) permitted and
/// excluded, lower-cased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UriConstraints {
    permitted: Vec<String>,
    excluded: Vec<String>,
}

/// What a certificate's name-constraints extension holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Constraints {
    /// No name-constraints extension.
    None,
    /// Only URI subtrees (meshroot's own shape).
    UriOnly(UriConstraints),
    /// Subtrees of other name forms too: left to webpki.
    Other,
}

impl Constraints {
    /// Reads the name constraints of `certificate`.
    pub fn of_certificate(certificate: &X509Certificate<'_>) -> Result<Self, ConstraintError> {
        let mut found = Constraints::None;
        for extension in certificate.extensions() {
            if extension.oid.to_id_string() != "2.5.29.30" {
                continue;
            }
            let ParsedExtension::NameConstraints(parsed) = extension.parsed_extension() else {
                return Err(ConstraintError::Unparsable);
            };
            let mut uri = UriConstraints::default();
            let lists = [
                (&parsed.permitted_subtrees, &mut uri.permitted),
                (&parsed.excluded_subtrees, &mut uri.excluded),
            ];
            for (subtrees, into) in lists {
                for subtree in subtrees.iter().flatten() {
                    match subtree.base {
                        GeneralName::URI(base) => into.push(base.to_ascii_lowercase()),
                        _ => return Ok(Constraints::Other),
                    }
                }
            }
            found = Constraints::UriOnly(uri);
        }
        Ok(found)
    }

    /// The URI constraints, when that is all the certificate constrains.
    pub fn uri(&self) -> Option<&UriConstraints> {
        match self {
            Constraints::UriOnly(uri) => Some(uri),
            _ => None,
        }
    }
}

impl UriConstraints {
    /// The permitted hosts and domains.
    pub fn permitted(&self) -> &[String] {
        &self.permitted
    }

    /// Whether `uri` satisfies these constraints (RFC 5280 §4.2.1.10): its host matches one
    /// permitted subtree (when any is given) and no excluded one. A URI without a host never
    /// matches, so it is refused by any permitted subtree.
    pub fn permits(&self, uri: &str) -> bool {
        let host = uri_host(uri);
        let matches = |base: &String| host.as_deref().is_some_and(|h| host_matches(h, base));
        (self.permitted.is_empty() || self.permitted.iter().any(matches))
            && !self.excluded.iter().any(matches)
    }
}

/// §4.2.1.10: "When the constraint begins with a period, it MAY be expanded with one or more
/// labels … When the constraint does not begin with a period, it specifies a host."
fn host_matches(host: &str, base: &str) -> bool {
    match base.strip_prefix('.') {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|labels| labels.len() > 1 && labels.ends_with('.')),
        None => host == base,
    }
}

/// The host of `scheme://[userinfo@]host[:port]/…`, lower-cased; `None` without an authority.
pub(crate) fn uri_host(uri: &str) -> Option<String> {
    let (_, rest) = uri.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        host_port.split_once(']').map(|(h, _)| &h[1..])?
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// A webpki trust anchor for `der` and its URI constraints: without the name constraints when
/// they are of the URI form only (the caller applies them), unchanged otherwise.
pub fn constraint_free_anchor(
    der: &CertificateDer<'_>,
) -> Result<(TrustAnchor<'static>, Option<UriConstraints>), webpki::Error> {
    let mut anchor = webpki::anchor_from_trusted_cert(der)?.to_owned();
    let uri = parsed(der)
        .and_then(|certificate| Constraints::of_certificate(&certificate).ok())
        .and_then(|constraints| constraints.uri().cloned());
    if uri.is_some() {
        anchor.name_constraints = None;
    }
    Ok((anchor, uri))
}

/// The URI constraints of a certificate given as DER; `None` when it has none (or others).
pub fn uri_constraints_of(der: &[u8]) -> Option<UriConstraints> {
    parsed(der)
        .and_then(|certificate| Constraints::of_certificate(&certificate).ok())
        .and_then(|constraints| constraints.uri().cloned())
}

fn parsed(der: &[u8]) -> Option<X509Certificate<'_>> {
    use x509_parser::prelude::FromDer as _;
    X509Certificate::from_der(der).ok().map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn constrained_ca(trust_domains: &[TrustDomain]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .custom_extensions
            .push(uri_name_constraints(trust_domains).unwrap());
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn the_extension_is_critical_and_reads_back_as_uri_constraints() {
        let der = constrained_ca(&[td("a.example"), td("old.example"), td("a.example")]);
        let (_, certificate) = x509_parser::parse_x509_certificate(&der).unwrap();
        let extension = certificate
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "2.5.29.30")
            .unwrap();
        assert!(extension.critical);
        let constraints = Constraints::of_certificate(&certificate).unwrap();
        let uri = constraints.uri().unwrap();
        assert_eq!(uri.permitted(), ["a.example", "old.example"]);
        assert!(uri.excluded.is_empty());
        assert_eq!(uri_constraints_of(&der).as_ref(), Some(uri));
    }

    #[test]
    fn a_uri_is_permitted_by_its_host_only() {
        let uri = UriConstraints {
            permitted: vec!["a.example".into(), ".mesh.example".into()],
            excluded: vec!["bad.mesh.example".into()],
        };
        for ok in [
            "spiffe://a.example/ns/shop/sa/cart",
            "spiffe://A.Example/ns/x/sa/y",
            "https://user@a.example:8443/path",
            "spiffe://east.mesh.example/ns/x/sa/y",
        ] {
            assert!(uri.permits(ok), "{ok}");
        }
        for refused in [
            "spiffe://b.example/ns/shop/sa/cart",
            "spiffe://a.example.evil/ns/x/sa/y",
            "spiffe://xa.example/ns/x/sa/y",
            "spiffe://mesh.example/ns/x/sa/y",
            "spiffe://bad.mesh.example/ns/x/sa/y",
            "urn:a.example",
            "spiffe:///ns/x/sa/y",
        ] {
            assert!(!uri.permits(refused), "{refused}");
        }
    }

    #[test]
    fn the_anchor_drops_only_uri_constraints() {
        let der = constrained_ca(&[td("a.example")]);
        let plain = webpki::anchor_from_trusted_cert(&der).unwrap();
        assert!(plain.name_constraints.is_some());
        let (anchor, uri) = constraint_free_anchor(&der).unwrap();
        assert!(anchor.name_constraints.is_none());
        assert_eq!(uri.unwrap().permitted(), ["a.example"]);

        // A DNS constraint stays with webpki.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName("a.example".into())],
            excluded_subtrees: vec![],
        });
        let dns = params.self_signed(&key).unwrap().der().clone();
        let (anchor, uri) = constraint_free_anchor(&dns).unwrap();
        assert!(anchor.name_constraints.is_some());
        assert!(uri.is_none());
    }

    #[test]
    fn no_trust_domain_is_refused() {
        assert_eq!(
            uri_name_constraints(&[]).err(),
            Some(ConstraintError::NoTrustDomain)
        );
    }
}
