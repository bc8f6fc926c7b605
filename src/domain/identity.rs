//! SPIFFE identities in Istio's form: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Rules implemented (SPIFFE ID standard §2): the scheme is exactly `spiffe`; the trust domain is
//! lowercase letters, digits, `.`, `-` and `_` (at most 255 bytes); every path segment is non-empty,
//! made of letters, digits, `.`, `-`, `_`, and is neither `.` nor `..`; the whole URI is at most
//! 2048 bytes. Istio adds the fixed shape `/ns/<ns>/sa/<sa>`.

use std::fmt;

const SCHEME: &str = "spiffe://";
const MAX_URI_BYTES: usize = 2048;
const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// Why a string is not a valid trust domain or Istio SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("not a spiffe:// URI")]
    WrongScheme,
    #[error("the URI is longer than {MAX_URI_BYTES} bytes")]
    TooLong,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")]
    TrustDomainTooLong,
    #[error("the trust domain may only hold lowercase letters, digits, '.', '-' and '_'")]
    InvalidTrustDomainCharacter,
    #[error("a path segment is empty, '.', '..' or holds a character outside [A-Za-z0-9._-]")]
    InvalidPathSegment,
    #[error("the path is not Istio's /ns/<namespace>/sa/<service-account>")]
    NotIstioForm,
    #[error("query and fragment are not allowed in a SPIFFE ID")]
    QueryOrFragment,
}

/// A validated SPIFFE trust domain, e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(name: &str) -> Result<Self, IdentityError> {
        if name.is_empty() {
            return Err(IdentityError::EmptyTrustDomain);
        }
        if name.len() > MAX_TRUST_DOMAIN_BYTES {
            return Err(IdentityError::TrustDomainTooLong);
        }
        let allowed = |c: char| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' || c == '_'
        };
        if !name.chars().all(allowed) {
            return Err(IdentityError::InvalidTrustDomainCharacter);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Istio workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an identity from its parts, checking each one.
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        check_segment(namespace)?;
        check_segment(service_account)?;
        let id = Self {
            trust_domain,
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        };
        if id.uri_len() > MAX_URI_BYTES {
            return Err(IdentityError::TooLong);
        }
        Ok(id)
    }

    /// Parses a URI in Istio's exact form.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        if uri.len() > MAX_URI_BYTES {
            return Err(IdentityError::TooLong);
        }
        let rest = uri.strip_prefix(SCHEME).ok_or(IdentityError::WrongScheme)?;
        if rest.contains(['?', '#']) {
            return Err(IdentityError::QueryOrFragment);
        }
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        let trust_domain = TrustDomain::new(trust_domain)?;
        let segments: Vec<&str> = path.split('/').collect();
        for segment in &segments {
            check_segment(segment)?;
        }
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => {
                Self::new(trust_domain, namespace, service_account)
            }
            _ => Err(IdentityError::NotIstioForm),
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    fn uri_len(&self) -> usize {
        SCHEME.len()
            + self.trust_domain.0.len()
            + "/ns/".len()
            + self.namespace.len()
            + "/sa/".len()
            + self.service_account.len()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// SPIFFE ID standard §2.2: segments are non-empty, not `.`/`..`, and use [A-Za-z0-9._-].
fn check_segment(segment: &str) -> Result<(), IdentityError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_';
    if segment.is_empty() || segment == "." || segment == ".." || !segment.chars().all(allowed) {
        return Err(IdentityError::InvalidPathSegment);
    }
    Ok(())
}

/// The names of SubjectAltName extensions, by kind: the one walk over a certificate's or a
/// CSR's names that every check uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AltNames<'a> {
    pub uris: Vec<&'a str>,
    pub dns: Vec<&'a str>,
    pub ip_addresses: usize,
    /// The IP addresses among them (4 or 16 bytes; others only count).
    pub ips: Vec<std::net::IpAddr>,
    pub emails: usize,
    /// Any other kind (directory names, other names, registered IDs, …).
    pub others: usize,
}

impl<'a> AltNames<'a> {
    /// Adds the names of one SubjectAltName extension.
    pub fn add(&mut self, names: &'a [x509_parser::extensions::GeneralName<'a>]) {
        use x509_parser::extensions::GeneralName;
        for name in names {
            match name {
                GeneralName::URI(uri) => self.uris.push(uri),
                GeneralName::DNSName(dns) => self.dns.push(dns),
                GeneralName::IPAddress(bytes) => {
                    self.ip_addresses += 1;
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        self.ips.push(std::net::IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        self.ips.push(std::net::IpAddr::from(v6));
                    }
                }
                GeneralName::RFC822Name(_) => self.emails += 1,
                _ => self.others += 1,
            }
        }
    }

    /// The names of every SubjectAltName extension of a parsed certificate, in order.
    pub fn of_certificate(certificate: &'a x509_parser::certificate::X509Certificate<'a>) -> Self {
        use x509_parser::extensions::ParsedExtension;
        let mut names = Self::default();
        for extension in certificate.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() {
                names.add(&san.general_names);
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_istio_identity() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/bookinfo-ratings").unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-ratings");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-ratings"
        );
    }

    #[test]
    fn rejects_malformed_identities() {
        let cases = [
            ("http://cluster.local/ns/a/sa/b", IdentityError::WrongScheme),
            (
                "spiffe://Cluster.Local/ns/a/sa/b",
                IdentityError::InvalidTrustDomainCharacter,
            ),
            ("spiffe:///ns/a/sa/b", IdentityError::EmptyTrustDomain),
            ("spiffe://td/ns/a/sa/", IdentityError::InvalidPathSegment),
            ("spiffe://td/ns/../sa/b", IdentityError::InvalidPathSegment),
            ("spiffe://td/ns/a b/sa/b", IdentityError::InvalidPathSegment),
            ("spiffe://td/ns/a/sa/b/extra", IdentityError::NotIstioForm),
            ("spiffe://td/namespace/a/sa/b", IdentityError::NotIstioForm),
            ("spiffe://td", IdentityError::InvalidPathSegment),
            ("spiffe://td/ns/a/sa/b?x=1", IdentityError::QueryOrFragment),
        ];
        for (uri, expected) in cases {
            assert_eq!(SpiffeId::parse(uri), Err(expected), "{uri}");
        }
    }

    #[test]
    fn rejects_identity_longer_than_2048_bytes() {
        let long = "a".repeat(2040);
        let uri = format!("spiffe://td/ns/{long}/sa/b");
        assert_eq!(SpiffeId::parse(&uri), Err(IdentityError::TooLong));
        let td = TrustDomain::new("td").unwrap();
        assert_eq!(SpiffeId::new(td, &long, "b"), Err(IdentityError::TooLong));
    }

    #[test]
    fn trust_domain_allows_underscore_and_dash() {
        assert!(TrustDomain::new("my_mesh-1.example").is_ok());
        assert_eq!(
            TrustDomain::new(&"a".repeat(256)),
            Err(IdentityError::TrustDomainTooLong)
        );
    }
}
