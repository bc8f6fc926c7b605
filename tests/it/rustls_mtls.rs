//! The Envoy gateway test's cases again, with rustls on both ends (fast, no external binary):
//! mesh B's gateway requires a client certificate chaining to the shared root and accepts only
//! the SPIFFE IDs of trusted trust domains; mesh A's workload verifies the gateway's SPIFFE ID.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;

use common::*;
use meshroot::domain::signer::constraints::DataPlane;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use x509_parser::prelude::FromDer as _;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn key_der(pem: &str) -> PrivateKeyDer<'static> {
    use rustls_pki_types::pem::PemObject as _;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn uri_of(certificate: &CertificateDer<'_>) -> String {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(certificate).unwrap();
    meshroot::domain::identity::AltNames::of_certificate(&parsed)
        .uris
        .join(",")
}

/// Verifies a server by its SPIFFE ID, as Istio's sidecars do, instead of a DNS name.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Vec<rustls_pki_types::TrustAnchor<'static>>,
    expected: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let leaf = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::General("bad certificate".into()))?;
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::General(format!("{e:?}")))?;
        if uri_of(end_entity) != self.expected {
            return Err(rustls::Error::General("unexpected SPIFFE ID".into()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Mesh B's gateway: mTLS required against `root_pem`; answers `URI=<peer id>` for peers of a
/// trusted trust domain and closes on the others.
async fn start_gateway(
    root_pem: &str,
    identity: (String, String),
    trusted: &'static [&'static str],
) -> u16 {
    let mut roots = rustls::RootCertStore::empty();
    for root in certificates(root_pem) {
        roots.add(root).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(&identity.0), key_der(&identity.1))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| uri_of(&c[0]))
                    .unwrap_or_default();
                let trusted_peer = trusted
                    .iter()
                    .any(|td| peer.starts_with(&format!("spiffe://{td}/")));
                if trusted_peer {
                    let _ = tls.write_all(format!("URI={peer}").as_bytes()).await;
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// Mesh A's side: connects with `identity`, expecting the gateway's SPIFFE ID. Returns what the
/// gateway answered, or None when the exchange was refused.
async fn call_gateway(port: u16, root_pem: &str, identity: &(String, String)) -> Option<String> {
    let roots = certificates(root_pem)
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
        .collect();
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            roots,
            expected: GATEWAY_ID.into(),
            provider: provider(),
        }))
        .with_client_auth_cert(certificates(&identity.0), key_der(&identity.1))
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("gateway.b.example").unwrap(), tcp)
        .await
        .ok()?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.ok()?;
    (!answer.is_empty()).then_some(answer)
}

/// A rustls data plane (ztunnel verifies peers with rustls-webpki 0.103, the line ztunnel
/// pins) needs intermediates without URI name constraints: what `meshroot init` makes for
/// `--data-plane ambient` and `mixed` (the default). See the test below for `sidecar`.
#[tokio::test]
async fn rustls_gateway_of_mesh_b_accepts_mesh_a_and_tells_meshes_apart_by_trust_domain() {
    let CrossMesh {
        root_pem: root,
        gateway,
        cart,
        legacy,
        untrusted,
        foreign,
        ..
    } = CrossMesh::issue(DataPlane::Ambient.uri_name_constraints()).await;
    let port = start_gateway(&root, gateway, &["a.example", "a-old.example", "b.example"]).await;
    assert_eq!(
        call_gateway(port, &root, &cart).await.as_deref(),
        Some("URI=spiffe://a.example/ns/shop/sa/cart")
    );
    assert_eq!(
        call_gateway(port, &root, &legacy).await.as_deref(),
        Some("URI=spiffe://a-old.example/ns/shop/sa/legacy")
    );
    assert_eq!(
        call_gateway(port, &root, &untrusted).await,
        None,
        "untrusted trust domain"
    );
    assert_eq!(
        call_gateway(port, &root, &foreign).await,
        None,
        "foreign root"
    );
}

/// Why ambient meshes opt out of name constraints: rustls-webpki (ztunnel's verifier) does not
/// implement URI name constraints and refuses every workload certificate under an intermediate
/// that carries one, even one the constraint permits. If this starts passing the other way,
/// webpki has learnt URI constraints and the advice in docs/meshes.md can change.
#[tokio::test]
async fn a_rustls_peer_refuses_every_workload_under_uri_constrained_intermediates() {
    let CrossMesh {
        root_pem: root,
        gateway,
        cart,
        ..
    } = CrossMesh::issue(DataPlane::Sidecar.uri_name_constraints()).await;
    let port = start_gateway(&root, gateway, &["a.example", "b.example"]).await;
    assert_eq!(call_gateway(port, &root, &cart).await, None);
}
