//! Fetching a partner's SPIFFE bundle document (SPIFFE Trust Domain and Bundle, `https_web`
//! profile): `GET` over HTTPS, the server authenticated by Web PKI (the system's roots) or by
//! the roots configured for that endpoint, bounded in time and size.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::domain::federation::bundle::MAX_BUNDLE_BYTES;

/// Why a fetch failed, in words fit for a log line, `/ui` and a metric's reason: never the
/// body the endpoint sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("{0:?} is not an https:// URL with a host")]
    Url(String),
    #[error("the endpoint's roots: {0}")]
    Roots(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("TLS with {0}: {1}")]
    Tls(String, String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the endpoint answered {0}")]
    Status(u16),
    #[error("the body is larger than {MAX_BUNDLE_BYTES} bytes or broke off")]
    Body,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// `https://host[:port]/path` split into (host, port, path and query).
fn split(url: &str) -> Result<(String, u16, String), FetchError> {
    let bad = || FetchError::Url(url.to_owned());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            (host, port.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    Ok((host.to_owned(), port, path.to_owned()))
}

/// The roots that authenticate the endpoint: `endpoint_ca`'s certificates, or the system's.
fn roots(endpoint_ca: Option<&Path>) -> Result<rustls::RootCertStore, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    match endpoint_ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| FetchError::Roots(format!("{}: {e}", path.display())))?;
            for certificate in CertificateDer::pem_slice_iter(&pem) {
                let certificate = certificate
                    .map_err(|_| FetchError::Roots(format!("{}: not PEM", path.display())))?;
                roots
                    .add(certificate)
                    .map_err(|e| FetchError::Roots(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for certificate in native.certs {
                let _ = roots.add(certificate);
            }
        }
    }
    if roots.is_empty() {
        return Err(FetchError::Roots("no root certificate".into()));
    }
    Ok(roots)
}

/// `GET url`, answered 200 with at most [`MAX_BUNDLE_BYTES`], within `timeout` in all.
pub async fn fetch(
    url: &str,
    endpoint_ca: Option<&Path>,
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    tokio::time::timeout(timeout, fetch_unbounded(url, endpoint_ca))
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

async fn fetch_unbounded(url: &str, endpoint_ca: Option<&Path>) -> Result<Vec<u8>, FetchError> {
    let (host, port, path) = split(url)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls(host.clone(), e.to_string()))?
        .with_root_certificates(roots(endpoint_ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.clone()).map_err(|_| FetchError::Url(url.to_owned()))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| FetchError::Connect(format!("{host}:{port}"), e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Tls(host.clone(), e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::USER_AGENT, "meshroot")
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        if response.status() != hyper::StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_BUNDLE_BYTES)
            .collect()
            .await
            .map_err(|_| FetchError::Body)?;
        Ok(body.to_bytes().to_vec())
    }
    .await;
    driver.abort();
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            split("https://bundles.example/p.example").unwrap(),
            ("bundles.example".into(), 443, "/p.example".into())
        );
        assert_eq!(
            split("https://127.0.0.1:8443/x?y=1").unwrap(),
            ("127.0.0.1".into(), 8443, "/x?y=1".into())
        );
        assert_eq!(
            split("https://[::1]:9/").unwrap(),
            ("::1".into(), 9, "/".into())
        );
        for bad in ["http://a/", "https://", "https://u@h/", "https://h:99999/"] {
            assert!(split(bad).is_err(), "{bad}");
        }
    }
}
