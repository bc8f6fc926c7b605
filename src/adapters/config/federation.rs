//! `[bundle_endpoint]`: the SPIFFE bundle endpoint (docs/meshes.md).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::model::BundleEndpointConfig;
use super::raw::RawBundleEndpoint;
use super::values::duration_setting;
use super::values::Problems;
use crate::domain::identity::TrustDomain;

/// `spiffe_refresh_hint` by default: SPIRE's bundle endpoint default, five minutes.
pub(crate) const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);

/// `[bundle_endpoint]`, on a listener of its own: not the CSR port, not the admin address.
pub(super) fn bundle_endpoint(
    raw: RawBundleEndpoint,
    (listen, admin): (SocketAddr, SocketAddr),
    base: &Path,
    p: &mut Problems,
) -> Option<BundleEndpointConfig> {
    let text = match raw.listen {
        Some(text) => text,
        None => {
            p.add("bundle_endpoint.listen".into(), "is required".into());
            return None;
        }
    };
    let address = match text.parse::<SocketAddr>() {
        Ok(address) => address,
        Err(_) => {
            p.add(
                "bundle_endpoint.listen".into(),
                format!("{text:?} is not an address:port"),
            );
            return None;
        }
    };
    for (other, name) in [(listen, "listen (the CSR API)"), (admin, "admin.listen")] {
        if address.port() != 0 && address.port() == other.port() {
            p.add(
                "bundle_endpoint.listen".into(),
                format!(
                    "port {} is {name}'s: the bundle endpoint has a listener of its own",
                    address.port()
                ),
            );
        }
    }
    let refresh_hint = duration_setting(
        raw.refresh_hint.as_deref(),
        DEFAULT_REFRESH_HINT,
        "bundle_endpoint.refresh_hint",
        p,
    );
    let certificate = match (raw.certificate, raw.key) {
        (Some(certificate), Some(key)) => Some((base.join(certificate), base.join(key))),
        (None, None) => None,
        _ => {
            p.add(
                "bundle_endpoint.certificate".into(),
                "certificate and key go together (a Web PKI certificate for the https_web \
                 profile); leave both out to serve with meshroot's own serving certificate"
                    .into(),
            );
            None
        }
    };
    Some(BundleEndpointConfig {
        listen: address,
        refresh_hint,
        certificate,
    })
}

/// `[[mesh.partner]]` of mesh `index`.
pub(super) fn partners(
    index: usize,
    raw: Vec<super::raw::RawPartner>,
    base: &Path,
    p: &mut Problems,
) -> Vec<super::model::PartnerConfig> {
    let mut partners: Vec<super::model::PartnerConfig> = Vec::new();
    for (partner_index, raw) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("mesh[{index}].partner[{partner_index}].{field}");
        let trust_domain = match raw.trust_domain.as_deref().map(TrustDomain::new) {
            Some(Ok(td)) => td,
            Some(Err(e)) => {
                p.add(key("trust_domain"), e.to_string());
                continue;
            }
            None => {
                p.add(key("trust_domain"), "is required".into());
                continue;
            }
        };
        if partners
            .iter()
            .any(|other| other.trust_domain == trust_domain)
        {
            p.add(
                key("trust_domain"),
                format!("{trust_domain} is listed twice"),
            );
        }
        let bundle_url = raw.bundle_url.unwrap_or_default();
        if !valid_https_url(&bundle_url) {
            p.add(
                key("bundle_url"),
                format!("{bundle_url:?} is not an https:// URL with a host (SPIFFE's https_web profile)"),
            );
        }
        let unprotected = raw.unprotected.unwrap_or(false);
        if unprotected && raw.cross_certificates.is_some() {
            p.add(
                key("unprotected"),
                "a partner is published either through cross_certificates or, unprotected, by its \
                 own roots; not both"
                    .into(),
            );
        }
        partners.push(super::model::PartnerConfig {
            trust_domain,
            bundle_url,
            endpoint_ca: raw.endpoint_ca.map(|path| base.join(path)),
            cross_certificates: raw.cross_certificates.map(|path| base.join(path)),
            unprotected,
        });
    }
    partners
}

/// An `https://host[:port]/...` URL: a DNS name or an IP address, no user information.
fn valid_https_url(url: &str) -> bool {
    let Some(authority) = url
        .strip_prefix("https://")
        .and_then(|rest| rest.split(['/', '?', '#']).next())
    else {
        return false;
    };
    let (host_ok, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((ip, rest)) = bracketed.split_once(']') else {
            return false;
        };
        let port = match rest {
            "" => None,
            rest => match rest.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        (ip.parse::<std::net::Ipv6Addr>().is_ok(), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        (host_ok, port)
    };
    host_ok && port.is_none_or(|port| port.parse::<u16>().is_ok_and(|p| p != 0))
}

/// A partner's trust domain is foreign: not one of meshroot's own meshes' names or aliases
/// (those are vouched for by meshroot's own intermediates only).
pub(super) fn partners_are_foreign(meshes: &[super::model::MeshConfig], p: &mut Problems) {
    for (index, mesh) in meshes.iter().enumerate() {
        for (partner_index, partner) in mesh.partners.iter().enumerate() {
            let owner = meshes.iter().find(|m| {
                m.trust_domain == partner.trust_domain
                    || m.trust_domain_aliases.contains(&partner.trust_domain)
            });
            if let Some(owner) = owner {
                p.add(
                    format!("mesh[{index}].partner[{partner_index}].trust_domain"),
                    format!(
                        "{} is mesh {:?}'s own: a mesh of this meshroot is accepted with                          `accepts`, never fetched as a partner",
                        partner.trust_domain, owner.name
                    ),
                );
            }
        }
    }
}
