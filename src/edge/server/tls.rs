//! TLS for the listeners: the crypto provider, meshroot's serving certificate and its renewal,
//! HTTP/2 limits, and the client-certificate verifier that defers judgement to the pipeline.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

use crate::adapters::config::{Config, ConnectionConfig};
use crate::domain::identity::SpiffeId;
use crate::edge::replicas::{MemberIdentity, MEMBER_SERVER_NAME};
use crate::issuance::{CertificateAuthority, CurrentAuthority, IssueError};

use super::background::sleep_until;

/// After a failed serving-certificate renewal, try again this soon.
const RENEWAL_RETRY: Duration = Duration::from_secs(60);
/// Renewals never follow each other faster than this (e.g. when the intermediate is about to
/// expire and every new serving certificate is clamped to it).
const MIN_RENEWAL_WAIT: Duration = Duration::from_secs(1);

pub(super) fn provider_for_admin() -> Arc<rustls::crypto::CryptoProvider> {
    tls_provider()
}

/// The TLS crypto of both listeners: ring's (its cipher suites, signatures and classical key
/// exchanges), plus the hybrid post-quantum key exchange X25519MLKEM768 from AWS-LC, which ring
/// does not have. istio-agent with `COMPLIANCE_POLICY=pqc` offers only that group, over TLS
/// 1.3. Among the key shares a client sends, its own preference decides (rustls answers the
/// first it supports): Go 1.24+ clients, which send the hybrid first, get it; clients that
/// offer only classical groups get X25519 or P-256 as before. The hybrid is listed right after
/// X25519 for clients that send no share for it and must be asked (HelloRetryRequest).
pub(crate) fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let hybrid = rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768;
    let position = provider
        .kx_groups
        .iter()
        .position(|group| group.name() == rustls::NamedGroup::X25519)
        .map_or(0, |x25519| x25519 + 1);
    provider.kx_groups.insert(position, hybrid);
    Arc::new(provider)
}

/// HTTP/2 limits from `[connections]`: streams per connection, and flow-control windows small
/// enough that a connection can hold only a few request bodies' worth of unread data.
pub(super) fn http2_limits(
    builder: tonic::transport::Server,
    limits: &ConnectionConfig,
) -> tonic::transport::Server {
    let stream_window = (limits.max_message_bytes as u32).max(65_535);
    builder
        .max_concurrent_streams(limits.max_streams)
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(stream_window.saturating_mul(4))
        .http2_max_pending_accept_reset_streams(Some(limits.max_streams as usize))
}

/// Re-issues the serving certificate at half its lifetime (from the current configuration).
pub(super) async fn renewal_loop(
    serving: Arc<ServingCertificate>,
    current: Arc<CurrentAuthority>,
    names: ServingNames,
    lifetime: Duration,
    mut renew_at: SystemTime,
    mut shutdown: watch::Receiver<bool>,
) {
    let signing = |ca: &CertificateAuthority| {
        ca.primary_signer()
            .and_then(|signer| signer.intermediates().first().cloned())
    };
    let mut signed_by = signing(&current.get());
    loop {
        let clock = current.get().clock().clone();
        let mut replaced = std::pin::pin!(current.replaced());
        replaced.as_mut().enable();
        let ca = current.get();
        // A new signing intermediate (a rotation): the member certificate is renewed at once,
        // so that it comes from an intermediate a member on a fresh volume knows. The serving
        // certificate keeps its schedule (clients may not hold the new root yet).
        if names.identity.is_some() && signing(&ca) != signed_by {
            tracing::info!("the signing intermediate changed: renewing the member certificate");
            signed_by = signing(&ca);
            if let Err(error) = serving.renew_member(&ca, &names, lifetime).await {
                tracing::error!(%error, "member certificate renewal failed; retrying at the next renewal");
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = sleep_until(clock.as_ref(), renew_at) => {}
            _ = replaced => continue,
        }
        let ca = current.get();
        signed_by = signing(&ca);
        renew_at = match serving.renew(&ca, &names, lifetime).await {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, "serving certificate renewal failed; retrying");
                ca.clock().now() + RENEWAL_RETRY
            }
        };
    }
}

/// meshroot's current serving certificate, swapped in place on renewal, and with `[replicas]`
/// this replica's client certificate towards the other members (renewed with it).
#[derive(Debug, Default)]
pub(super) struct ServingCertificate(
    pub(super) RwLock<Option<Arc<CertifiedKey>>>,
    pub(super) Arc<MemberIdentity>,
);

/// What the serving certificate names (DNS names) and, with `[replicas]`, meshroot's own SPIFFE
/// identity, which the member client certificate names.
#[derive(Debug, Clone, Default)]
pub(super) struct ServingNames {
    pub(super) dns_names: Vec<String>,
    pub(super) identity: Option<SpiffeId>,
}

impl ServingNames {
    pub(super) fn of(config: &Config, this_member: Option<&str>) -> Self {
        let mut dns_names = config.dns_names.clone();
        // The name the other members reach this one by (its member address's host).
        if let Some(host) = this_member
            .and_then(|m| m.rsplit_once(':'))
            .map(|(host, _)| host)
        {
            let is_name = host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('[');
            if is_name && !dns_names.iter().any(|n| n == host) {
                dns_names.push(host.to_owned());
            }
        }
        let identity = config
            .replicas
            .as_ref()
            .and_then(|replicas| SpiffeId::parse(&replicas.identity).ok());
        Self {
            dns_names,
            identity,
        }
    }
}

impl ServingCertificate {
    /// Issues a new certificate, installs it, and returns when to renew it: halfway between now
    /// and its NotAfter (NotBefore is backdated and does not count), never sooner than
    /// [`MIN_RENEWAL_WAIT`] from now.
    pub(super) async fn renew(
        &self,
        ca: &CertificateAuthority,
        names: &ServingNames,
        lifetime: Duration,
    ) -> Result<SystemTime, IssueError> {
        let issued_at = ca.clock().now();
        let (issued, key) = ca
            .issue_serving_certificate(&names.dns_names, lifetime)
            .await?;
        let mut chain: Vec<CertificateDer<'static>> = vec![issued.der.clone()];
        if let Some(authority) = ca.primary_signer() {
            chain.extend(authority.intermediates().iter().cloned());
        }
        self.renew_member(ca, names, lifetime).await?;
        let certified = Arc::new(CertifiedKey::new(chain, certified_key(&key)?));
        match self.0.write() {
            Ok(mut slot) => *slot = Some(certified),
            Err(poisoned) => *poisoned.into_inner() = Some(certified),
        }
        let remaining = issued
            .not_after
            .duration_since(issued_at)
            .unwrap_or_default();
        Ok(issued_at + (remaining / 2).max(MIN_RENEWAL_WAIT))
    }
}

impl ServingCertificate {
    /// With `[replicas]`, issues and installs a new member certificate.
    async fn renew_member(
        &self,
        ca: &CertificateAuthority,
        names: &ServingNames,
        lifetime: Duration,
    ) -> Result<(), IssueError> {
        if let Some(identity) = &names.identity {
            let (member, member_key) = ca.issue_member_certificate(identity, lifetime).await?;
            // The leaf alone: the members accept only a leaf signed directly by one of
            // meshroot's own intermediates, which they hold.
            self.1.set(Arc::new(CertifiedKey::new(
                vec![member.der.clone()],
                certified_key(&member_key)?,
            )));
        }
        Ok(())
    }
}

/// rustls' signing key for a key meshroot generated.
fn certified_key(key: &rcgen::KeyPair) -> Result<Arc<dyn rustls::sign::SigningKey>, IssueError> {
    rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        key.serialize_der(),
    )))
    .map_err(|_| IssueError::Signing(crate::domain::signer::SigningError::ServingKey))
}

/// The admin listener's certificates: the member certificate to a member that asks for
/// [`MEMBER_SERVER_NAME`] (it authenticates servers by the member rule), the serving
/// certificate to everyone else.
#[derive(Debug)]
pub(super) struct AdminCertificates(pub(super) Arc<ServingCertificate>);

impl ResolvesServerCert for AdminCertificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if client_hello.server_name() == Some(MEMBER_SERVER_NAME) {
            if let Some(member) = self.0 .1.get() {
                return Some(member);
            }
        }
        self.0.resolve(client_hello)
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.0.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Requests a client certificate but leaves judging it to the client-certificate authenticator,
/// which checks the chain against the roots of the right mesh and records why it refuses one.
/// The handshake still proves the client holds the certificate's private key (the signature
/// checks below are rustls' own).
#[derive(Debug)]
pub(super) struct DeferredClientVerifier {
    pub(super) provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::server::danger::ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
