//! The gRPC edge: Istio's `IstioCertificateService` over tonic, and the one place where errors
//! become `tonic::Status`.
//!
//! Reads the `authorization` and `clusterid` metadata, the peer address and verified client
//! certificates, and `metadata["ImpersonatedIdentity"]`; ignores every other header (istio-agent
//! adds arbitrary `CA_HEADER_*` ones).

pub mod audit;
pub mod audit_api;
mod federation;
pub mod record_messages;
mod replicas;
pub mod revoke;
pub mod status;
pub mod wire;

use std::sync::Arc;

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status};

pub use self::status::{overloaded, status_for, status_for_audit, REQUEST_ID_HEADER};

use crate::adapters::authn::{AuthRequest, Authorization};
use crate::issuance::{CurrentAuthority, SigningRequest};
use crate::pb::istio::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use crate::pb::istio::{IstioCertificateRequest, IstioCertificateResponse};

/// The `metadata` Struct field ztunnel uses to ask for a workload's identity.
pub(crate) const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Istio's CSR service backed by the certificate authority in force.
pub(crate) struct CsrService {
    current: Arc<CurrentAuthority>,
}

impl CsrService {
    /// The service behind admission control: at most `max_concurrent_requests` requests are
    /// read, decoded and handled at once, each message at most `max_message_bytes`, so request
    /// bodies held in memory are bounded for the whole server.
    pub fn new(
        current: Arc<CurrentAuthority>,
        max_concurrent_requests: usize,
        max_message_bytes: usize,
    ) -> Admitted<IstioCertificateServiceServer<Self>> {
        Admitted {
            inner: IstioCertificateServiceServer::new(Self { current })
                .max_decoding_message_size(max_message_bytes),
            in_flight: Arc::new(tokio::sync::Semaphore::new(max_concurrent_requests)),
        }
    }
}

/// Admission control in front of a gRPC service: a request gets a slot *before* its body is
/// read. Beyond the limit the answer is RESOURCE_EXHAUSTED at once (istio-agent retries it with
/// backoff) and the body is never buffered, instead of a queue that grows until every request
/// times out or memory runs out.
#[derive(Clone)]
pub(crate) struct Admitted<S> {
    inner: S,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for Admitted<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
        > + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, S::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::debug!("overloaded: request refused with RESOURCE_EXHAUSTED");
            return Box::pin(std::future::ready(Ok(overloaded().into_http())));
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(permit);
            response
        })
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Admitted<S> {
    const NAME: &'static str = S::NAME;
}

#[tonic::async_trait]
impl IstioCertificateService for CsrService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let ca = self.current.get();
        let request_id = ca.new_request_id();
        let auth = auth_request(&request);
        let body = request.into_inner();
        let signing = SigningRequest {
            impersonated_identity: impersonated_identity(&body),
            csr_pem: body.csr,
            validity_seconds: body.validity_duration,
        };
        match ca.create_certificate(&request_id, &auth, &signing).await {
            Ok(issued) => Ok(Response::new(IstioCertificateResponse {
                cert_chain: issued.cert_chain,
            })),
            Err(error) => Err(status_for(&error, &request_id)),
        }
    }
}

fn auth_request<T>(request: &Request<T>) -> AuthRequest {
    let metadata = request.metadata();
    let header = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
    let tls = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
    AuthRequest {
        authorization: Authorization::from_header(header("authorization")),
        cluster_id: header("clusterid").unwrap_or_default().to_owned(),
        peer_address: tls.and_then(|info| info.get_ref().remote_addr()),
        peer_certificates: tls
            .and_then(|info| info.peer_certs())
            .map(|certs| certs.as_ref().clone())
            .unwrap_or_default(),
    }
}

/// The identity a node proxy asks for in `metadata["ImpersonatedIdentity"]`, if it asks for one
/// (public for the fuzz target that feeds it arbitrary `Struct`s).
pub fn impersonated_identity(request: &IstioCertificateRequest) -> Option<String> {
    use prost_types::value::Kind;
    let value = request
        .metadata
        .as_ref()?
        .fields
        .get(IMPERSONATED_IDENTITY)?;
    match &value.kind {
        Some(Kind::StringValue(identity)) => Some(identity.clone()),
        // Present but not a string: still an impersonation attempt, to be refused.
        _ => Some(String::new()),
    }
}

/// Allows an admin request only from a client certificate that proves a role with `right`
/// (`authn::admin`: readers and revokers through `anchors`, members by the member rule, each
/// certificate checked against the revocations in force); the identity it proved.
pub(crate) fn admin_identity_allowed<T>(
    request: &Request<T>,
    roles: &crate::adapters::authn::admin::AdminRoles,
    judges: &crate::adapters::authn::admin::Judges<'_>,
    right: crate::adapters::authn::admin::Right,
) -> Result<String, Status> {
    let certificates = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs());
    let chain = certificates.as_deref().map_or(&[][..], |c| c.as_slice());
    match crate::adapters::authn::admin::authorize(chain, roles, judges, right) {
        Ok((identity, _)) => Ok(identity.to_string()),
        Err(refusal) => {
            let detail = crate::domain::record::client_text(
                &refusal.to_string(),
                crate::domain::record::CLIENT_TEXT_BYTES,
            );
            tracing::warn!(reason = refusal.reason(), %detail, "admin API request refused");
            Err(status::admin_identity_refused())
        }
    }
}
