//! The other replicas of a `[replicas]`: who they are, and asking them over their admin port.
//!
//! Members talk to each other through the audit API on the admin listener. Off loopback that
//! is mutual TLS, both ways by one rule (`authn::client_cert::verify_member`): a member asks
//! for the server name [`MEMBER_SERVER_NAME`], the other answers with its member certificate,
//! and each accepts the other's certificate only if it names the member identity
//! (`replicas.identity`), was signed directly by one of meshroot's own signing intermediates of
//! the primary mesh, and is not revoked. Never by DNS name against the published trust bundle:
//! that bundle holds partner roots, and the cluster intermediates meshroot keeps for istiod
//! may mint any DNS name. On loopback (one machine, tests) it is plain HTTP/2, like every
//! loopback admin client.
//!
//! A member that does not answer within `replicas.member_timeout` is *missing*: every cluster
//! question says which members are missing, and the caller decides (the rotation gate refuses,
//! an audit answer is marked incomplete). Nothing here is on the issuance path.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};

use crate::adapters::authn::client_cert::{verify_member, Usage};
use crate::domain::identity::SpiffeId;

use crate::adapters::config::ReplicasConfig;
use crate::issuance::CurrentAuthority;
use crate::pb::audit as api;
use crate::pb::audit::audit_service_client::AuditServiceClient;

/// The server name (SNI) a member asks for when it connects to another member; that member
/// then answers with its member certificate instead of its serving certificate. Under the
/// reserved `.invalid` top-level domain (RFC 2606), so it is never a real host's name.
pub(crate) const MEMBER_SERVER_NAME: &str = "member.meshroot.invalid";

/// This replica's member certificate (its chain and key), replaced on every renewal: presented
/// as a client to the other members, and as a server to a member that asks for
/// [`MEMBER_SERVER_NAME`].
#[derive(Default)]
pub(crate) struct MemberIdentity(RwLock<Option<Arc<CertifiedKey>>>);

impl std::fmt::Debug for MemberIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberIdentity(<certificate and key redacted>)")
    }
}

impl MemberIdentity {
    /// Installs a new chain and key.
    pub fn set(&self, certified: Arc<CertifiedKey>) {
        match self.0.write() {
            Ok(mut slot) => *slot = Some(certified),
            Err(poisoned) => *poisoned.into_inner() = Some(certified),
        }
    }

    /// The member certificate in force, if one was issued yet.
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        match self.0.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesClientCert for MemberIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// A member that did not answer a cluster question, and why (for people).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub member: String,
    pub reason: String,
}

impl Missing {
    pub fn to_message(&self) -> api::MissingMember {
        api::MissingMember {
            member: self.member.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// Names missing members for a message: `a (timed out), b (connection refused)`.
pub(crate) fn describe_missing(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| format!("{} ({})", m.member, m.reason))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The members of this replica's cluster, and how to ask them.
pub struct Members {
    /// Grows when the StatefulSet scales up; never shrinks by itself.
    members: RwLock<Vec<String>>,
    this: Option<String>,
    timeout: Duration,
    /// Mutual TLS with this crypto (the admin listener is off loopback), or plain HTTP/2 on
    /// loopback (None).
    tls: Option<Arc<rustls::crypto::CryptoProvider>>,
    identity: Arc<MemberIdentity>,
    /// The member identity (`replicas.identity`) the other members must prove.
    member: Option<SpiffeId>,
    current: Arc<CurrentAuthority>,
    /// By member: whether it answered the last request this replica made of it (any answer,
    /// an error status included) or could not be reached in time (`meshroot_member_reachable`).
    reached: RwLock<BTreeMap<String, bool>>,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field("members", &self.all())
            .field("this", &self.this)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Members {
    pub fn new(
        config: &ReplicasConfig,
        this: Option<String>,
        tls: Option<Arc<rustls::crypto::CryptoProvider>>,
        identity: Arc<MemberIdentity>,
        current: Arc<CurrentAuthority>,
    ) -> Self {
        Self {
            members: RwLock::new(config.members.clone()),
            this,
            timeout: config.member_timeout,
            tls,
            identity,
            member: SpiffeId::parse(&config.identity).ok(),
            current,
            reached: RwLock::default(),
        }
    }

    /// The other members asked so far, and whether each answered the last time.
    pub(crate) fn reachability(&self) -> Vec<(String, bool)> {
        let reached = self.reached.read().unwrap_or_else(|p| p.into_inner());
        self.others()
            .into_iter()
            .filter_map(|member| Some((member.clone(), *reached.get(&member)?)))
            .collect()
    }

    /// Every member, this one included, in configuration order.
    pub fn all(&self) -> Vec<String> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adopts `members` if it adds members (a scale-up); a shorter list changes nothing: a
    /// member is removed only by the configuration.
    pub fn grow(&self, members: Vec<String>) -> bool {
        let mut current = self.members.write().unwrap_or_else(|p| p.into_inner());
        let adds = members.iter().any(|m| !current.contains(m));
        if adds && members.len() >= current.len() && current.iter().all(|m| members.contains(m)) {
            tracing::info!(?members, "the cluster has new members");
            *current = members;
            return true;
        }
        false
    }

    /// This replica's own entry, when known.
    pub fn this(&self) -> Option<&str> {
        self.this.as_deref()
    }

    /// Whether `member` is this replica.
    pub(crate) fn is_this(&self, member: &str) -> bool {
        self.this.as_deref() == Some(member)
    }

    /// Whether `member` is one of the members.
    pub fn contains(&self, member: &str) -> bool {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|m| m == member)
    }

    /// Every member but this one.
    pub fn others(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|m| !self.is_this(m))
            .collect()
    }

    /// A client of `member`'s audit API.
    pub async fn connect(&self, member: &str) -> Result<AuditServiceClient<Channel>, String> {
        let endpoint = Endpoint::from_shared(format!("http://{member}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        let channel = if let Some(provider) = self.tls.clone() {
            let member_identity = self
                .member
                .clone()
                .ok_or("replicas.identity is not a SPIFFE identity")?;
            let verifier = Arc::new(MemberServerVerifier {
                current: self.current.clone(),
                member: member_identity,
                provider: provider.clone(),
            });
            let mut tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_cert_resolver(self.identity.clone());
            tls.alpn_protocols = vec![b"h2".to_vec()];
            let connector = MemberConnector {
                tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                address: member.to_owned(),
            };
            endpoint.connect_with_connector(connector).await
        } else {
            endpoint.connect().await
        };
        let channel = channel.map_err(|e| connect_error(&e))?;
        Ok(AuditServiceClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// Asks every other member at once; each answer or why it is missing, in member order.
    pub(crate) async fn ask_others<T, F, Fut>(&self, ask: F) -> Vec<(String, Result<T, String>)>
    where
        F: Fn(AuditServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let members = self.others();
        let asks = members.iter().map(|member| self.ask(member, &ask));
        let answers = futures_util::future::join_all(asks).await;
        members.into_iter().zip(answers).collect()
    }

    /// Asks one member, within the member timeout.
    pub async fn ask<T, F, Fut>(&self, member: &str, ask: &F) -> Result<T, String>
    where
        F: Fn(AuditServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        // Reached: connected, and an answer came back (an error status is an answer).
        let work = async {
            let client = self.connect(member).await.map_err(|e| (false, e))?;
            ask(client).await.map_err(|status| {
                let answer = format!("answered {:?}: {}", status.code(), status.message());
                (true, answer)
            })
        };
        let (reached, result) = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(answer)) => (true, Ok(answer)),
            Ok(Err((reached, reason))) => (reached, Err(reason)),
            Err(_) => (false, Err(format!("no answer within {:?}", self.timeout))),
        };
        self.reached
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(member.to_owned(), reached);
        result
    }
}

/// A connection error with its cause (tonic's own text is only "transport error").
fn connect_error(error: &tonic::transport::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Judges the certificate a member answers with, by the member rule (never by DNS name).
struct MemberServerVerifier {
    current: Arc<CurrentAuthority>,
    member: SpiffeId,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for MemberServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberServerVerifier")
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for MemberServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = self.current.get();
        verify_member(
            end_entity,
            &self.member,
            ca.member_anchors(),
            ca.revocations(),
            ca.clock().now(),
            Usage::Server,
        )
        .map(|()| ServerCertVerified::assertion())
        .map_err(|error| {
            tracing::warn!(
                reason = error.reason(),
                %error,
                "a member answered with a certificate that is not a member's: refused"
            );
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )
        })
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

/// Opens a TCP connection to a member and completes TLS with [`MEMBER_SERVER_NAME`].
#[derive(Clone)]
struct MemberConnector {
    tls: tokio_rustls::TlsConnector,
    address: String,
}

type MemberStream = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl Service<Uri> for MemberConnector {
    type Response = MemberStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<MemberStream, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (tls, address) = (self.tls.clone(), self.address.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(MEMBER_SERVER_NAME).map_err(std::io::Error::other)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// A request scope asking only the replica it is sent to (what members ask each other).
pub(crate) fn local_scope() -> Option<api::Scope> {
    Some(api::Scope {
        member: String::new(),
        local: true,
    })
}
