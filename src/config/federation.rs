//! `[bundle_endpoint]`: the SPIFFE bundle endpoint (README, "Several meshes, one root").

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::parse::Problems;
use super::raw::RawBundleEndpoint;
use super::values::duration_setting;
use super::BundleEndpointConfig;

/// `spiffe_refresh_hint` by default: SPIRE's bundle endpoint default, five minutes.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);

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
