//! The SPIFFE bundle endpoint (`[bundle_endpoint]`): `GET /<trust domain>` answers that trust
//! domain's bundle (SPIFFE Trust Domain and Bundle §4), read only and unauthenticated, on a
//! listener of its own, over HTTPS (the `https_web` profile: meshroot's serving certificate, or a
//! Web PKI certificate from files).
//!
//! The bundle's authorities are the mesh's trust bundle as it is in force: the same roots, in
//! the same order, as the last element of every CSR answer, `istio-ca-root-cert`, the
//! ClusterTrustBundle and `cacerts`' `root-cert.pem` (`MeshSigner::roots`). Its sequence is kept
//! in the store (`SledStore::served_bundle_sequence`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::SystemTime;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse as _;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::adapters::config::BundleEndpointConfig;
use crate::adapters::config::Config;
use crate::adapters::store::SledStore;
use crate::domain::federation::bundle::{authorities_sha256, content_sequence, SpiffeBundle};
use crate::domain::identity::TrustDomain;
use crate::issuance::CurrentAuthority;

use super::connections::{self, ConnectionLimits};
use super::error::ServeError;
use super::tls::{http2_limits, tls_provider, ServingCertificate};

/// Binds `[bundle_endpoint] listen` and serves the bundles there.
pub(super) async fn start_bundle_endpoint(
    config: &Config,
    endpoint: &BundleEndpointConfig,
    current: Arc<CurrentAuthority>,
    store: Arc<SledStore>,
    serving: Arc<ServingCertificate>,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<Result<(), ServeError>>), ServeError> {
    let address = endpoint.listen;
    let listener =
        connections::bind(address).map_err(|source| ServeError::Bind { address, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { address, source })?;
    let resolver: Arc<dyn ResolvesServerCert> = match &endpoint.certificate {
        Some((certificate, key)) => {
            let files = FileCertificate::new(certificate.clone(), key.clone());
            // Refuse to start with files that do not load, rather than on the first handshake.
            files.load().map_err(ServeError::Tls)?;
            Arc::new(files)
        }
        None => serving,
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(tls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let refresh_hint = endpoint.refresh_hint;
    let routes = axum::Router::new()
        .route(
            "/{trust_domain}",
            axum::routing::get(
                move |axum::extract::Path(trust_domain): axum::extract::Path<String>| {
                    let (current, store) = (current.clone(), store.clone());
                    async move { answer(&current, &store, &trust_domain, refresh_hint) }
                },
            ),
        )
        .fallback(|| async { StatusCode::NOT_FOUND });
    let router = http2_limits(tonic::transport::Server::builder(), &config.connections)
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(routes));
    // Counted apart from the other listeners: a flood of partners never starves issuance.
    let limits = ConnectionLimits::new(config.connections, config.max_concurrent_handshakes);
    let (connections, incoming) = mpsc::channel(64);
    tokio::spawn(connections::accept_loop(
        listener,
        TlsAcceptor::from(Arc::new(tls)),
        connections,
        limits,
        shutdown.clone(),
    ));
    let mut stop = shutdown;
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await
            .map_err(ServeError::from)
    });
    tracing::info!(address = %local, "meshroot is serving SPIFFE bundles (GET /<trust domain>)");
    Ok((local, task))
}

/// One bundle: 200 with the document, 404 for a trust domain meshroot does not serve, 503 when
/// the sequence cannot be kept (the store), never a partial answer.
fn answer(
    current: &CurrentAuthority,
    store: &SledStore,
    requested: &str,
    refresh_hint: Duration,
) -> axum::response::Response {
    let Ok(trust_domain) = TrustDomain::new(requested) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let ca = current.get();
    let Some((mesh, signer)) = ca.mesh_of_trust_domain(&trust_domain) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let authorities = signer.roots().to_vec();
    // One sequence per mesh: its trust domain and aliases serve the same roots.
    let sequence = match store.served_bundle_sequence(
        signer.trust_domain().as_str(),
        authorities_sha256(&authorities),
        content_sequence(&authorities),
    ) {
        Ok(sequence) => sequence,
        Err(error) => {
            tracing::error!(%mesh, %error, "the bundle's sequence cannot be kept: answering 503");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the bundle is unavailable\n",
            )
                .into_response();
        }
    };
    let bundle = SpiffeBundle {
        trust_domain,
        authorities,
        sequence,
        refresh_hint: Some(refresh_hint),
    };
    match bundle.to_json() {
        Ok(document) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            document,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%mesh, %error, "a root cannot be written as a JWK: answering 503");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the bundle is unavailable\n",
            )
                .into_response()
        }
    }
}

/// A certificate and key from files (a Web PKI certificate that cert-manager or ACME renews),
/// loaded again when either file changes.
#[derive(Debug)]
struct FileCertificate {
    certificate: PathBuf,
    key: PathBuf,
    loaded: Mutex<Option<(Option<SystemTime>, Arc<CertifiedKey>)>>,
}

impl FileCertificate {
    fn new(certificate: PathBuf, key: PathBuf) -> Self {
        Self {
            certificate,
            key,
            loaded: Mutex::new(None),
        }
    }

    /// The later modification time of the two files.
    fn changed_at(&self) -> Option<SystemTime> {
        [&self.certificate, &self.key]
            .iter()
            .filter_map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .max()
    }

    fn load(&self) -> Result<Arc<CertifiedKey>, String> {
        let changed = self.changed_at();
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, key)) = loaded.as_ref() {
            if *at == changed {
                return Ok(key.clone());
            }
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read(&self.certificate)?)
                .collect::<Result<_, _>>()
                .map_err(|_| format!("{}: not PEM certificates", self.certificate.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key)?)
            .map_err(|_| format!("{}: not a PEM private key", self.key.display()))?;
        let certified = CertifiedKey::from_der(chain, key, &tls_provider())
            .map_err(|e| format!("{}: {e}", self.certificate.display()))?;
        let certified = Arc::new(certified);
        *loaded = Some((changed, certified.clone()));
        Ok(certified)
    }
}

impl ResolvesServerCert for FileCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.load() {
            Ok(key) => Some(key),
            Err(error) => {
                tracing::error!(%error, "the bundle endpoint's certificate cannot be loaded");
                // The last one that loaded, while the files are being replaced.
                let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
                loaded.as_ref().map(|(_, key)| key.clone())
            }
        }
    }
}
