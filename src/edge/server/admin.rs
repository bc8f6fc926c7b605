//! The admin listener: health, readiness, metrics and the audit API over (mutual) TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::adapters::config::Config;
use crate::adapters::store::SledStore;
use crate::domain::identity::SpiffeId;
use crate::edge::grpc::audit_api::AdminAccess;
use crate::edge::replicas::Members;
use crate::issuance::CurrentAuthority;

use super::background::AuditPublisher;
use super::connections::{self, ConnectionLimits};
use super::error::ServeError;
use super::monitoring::Monitor;
use super::running::RunningServer;
use super::tls::{http2_limits, AdminCertificates, DeferredClientVerifier, ServingCertificate};

/// How often, at most, the admin listener pings an HTTP/2 client (and at least twice per idle
/// timeout): a live tail (`WatchRecords`) may see no new record for hours, and the client's
/// answers keep its connection from counting as idle; a client that stops answering for
/// [`ADMIN_KEEPALIVE_TIMEOUT`] (or the interval, if shorter) is dropped.
const ADMIN_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const ADMIN_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Binds the admin address and serves there the audit API, the gRPC health service and, over
/// HTTP/1.1 or HTTP/2, `/metrics`, `/healthz` and `/readyz`. On a loopback address in plain
/// text; elsewhere over TLS, where the audit API requires a client certificate that proves one
/// of `admin.allowed_identities` through the identity anchors (metrics and health need
/// none, so Prometheus and the kubelet can reach them; they reveal no identities).
#[allow(clippy::too_many_arguments)]
pub(super) async fn start_admin(
    config: &Config,
    current: Arc<CurrentAuthority>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    serving: Arc<ServingCertificate>,
    store: Arc<SledStore>,
    audit: &AuditPublisher,
    (monitor, health): (&Monitor, HealthServer<impl Health>),
    (members, crls): (Option<Arc<Members>>, Arc<super::crl::CrlKeeper>),
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<Result<(), ServeError>>), ServeError> {
    let address = config.admin.listen;
    let listener =
        connections::bind(address).map_err(|source| ServeError::Bind { address, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { address, source })?;
    let loopback = address.ip().is_loopback();
    let verifier_key = audit.signer.as_ref().map(|s| s.verifier_key());
    let current_for_revocation = current.clone();
    let current_for_page = current.clone();
    let api = crate::edge::grpc::audit_api::AuditApi::new(
        store,
        verifier_key,
        (!loopback).then(|| AdminAccess {
            roles: crate::adapters::authn::admin::AdminRoles {
                readers: config.admin.allowed_identities.clone(),
                revokers: config.admin.revokers.clone(),
                member: config
                    .replicas
                    .as_ref()
                    .and_then(|replicas| SpiffeId::parse(&replicas.identity).ok()),
            },
            current,
        }),
        shutdown.clone(),
        members,
        Some(crate::issuance::revoke::RevokeContext {
            current: current_for_revocation,
            publisher: crls.clone(),
            block_for: config.revocation.block_for,
        }),
    );
    let mut stop = shutdown.clone();
    let until_stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let routes =
        tonic::service::Routes::new(crate::edge::grpc::audit_api::AuditApi::service(api.clone()))
            .add_service(health)
            .into_axum_router()
            .merge(monitor.routes())
            .merge(crl_route(crls.clone()))
            .merge(status_page_route(api, current_for_page, monitor.clone()))
            .fallback(|| async { axum::http::StatusCode::NOT_FOUND });
    let ping = ADMIN_KEEPALIVE_INTERVAL.min(config.connections.idle_timeout / 2);
    let router = http2_limits(tonic::transport::Server::builder(), &config.connections)
        .http2_keepalive_interval(Some(ping))
        .http2_keepalive_timeout(Some(ADMIN_KEEPALIVE_TIMEOUT.min(ping)))
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(routes));
    // Counted apart from the CSR listener, so a flood there never starves the probes here.
    // The same idle and write timeouts: a quiet live tail answers the HTTP/2 pings above, so it
    // is not idle; an HTTP/1.1 scrape left open is.
    let limits = ConnectionLimits::new(config.connections, config.max_concurrent_handshakes);
    let task = if loopback {
        let (connections, incoming) = mpsc::channel(64);
        tokio::spawn(connections::accept_loop(
            listener,
            connections::Plain,
            connections,
            limits,
            shutdown,
        ));
        tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(ReceiverStream::new(incoming), until_stopped)
                .await
                .map_err(ServeError::from)
        })
    } else {
        // The handshake proves the client holds its certificate's key; whether the certificate
        // proves an allowed identity is the audit API's to judge, against the identity anchors
        // in force (never merely the trust bundle's roots).
        let verifier = Arc::new(DeferredClientVerifier {
            provider: provider.clone(),
        });
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ServeError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(AdminCertificates(serving)));
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let (connections, incoming) = mpsc::channel(64);
        tokio::spawn(connections::accept_loop(
            listener,
            TlsAcceptor::from(Arc::new(tls)),
            connections,
            limits,
            shutdown,
        ));
        tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(ReceiverStream::new(incoming), until_stopped)
                .await
                .map_err(ServeError::from)
        })
    };
    Ok((local, task))
}

/// `GET /crl`: `ca-crl.pem`, the same bytes as the file and the ConfigMap. CRLs are public, so
/// no client certificate is asked for.
fn crl_route(crls: Arc<super::crl::CrlKeeper>) -> axum::Router {
    axum::Router::new().route(
        "/crl",
        axum::routing::get(move || {
            let pem = crls.body();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/pem-certificate-chain",
                    )],
                    pem,
                )
            }
        }),
    )
}

/// `GET /ui`: the status page, under the audit API's access rule (open on loopback; elsewhere a
/// client certificate with an allowed identity), gathered through that API.
fn status_page_route(
    api: Arc<crate::edge::grpc::audit_api::AuditApi>,
    current: Arc<CurrentAuthority>,
    monitor: Monitor,
) -> axum::Router {
    axum::Router::new().route(
        "/ui",
        axum::routing::get(move |request: axum::extract::Request| {
            let (api, current, monitor) = (api.clone(), current.clone(), monitor.clone());
            async move {
                let extensions = request.extensions().clone();
                let store = monitor.store_status();
                let answer =
                    crate::edge::status_page::gather::page(&api, &current, store, extensions).await;
                (
                    axum::http::StatusCode::from_u16(answer.status)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                    [
                        (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        // Nothing on the page runs, loads or embeds anything.
                        (
                            axum::http::header::CONTENT_SECURITY_POLICY,
                            "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                        ),
                        (axum::http::header::CACHE_CONTROL, "no-store"),
                    ],
                    answer.body,
                )
            }
        }),
    )
}

impl RunningServer {
    /// What `/metrics` answers now.
    pub fn metrics_text(&self) -> String {
        self.monitor.scrape()
    }
}
