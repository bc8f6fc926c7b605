//! Wiring: config → CA material, authenticators, record store → the gRPC service on a TLS
//! listener; meshroot's own serving certificate, renewed before it expires; graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::authn::client_cert::{ClientCertAuthenticator, IdentityAnchors};
use crate::authn::impersonation::NodeAuthorizer;
use crate::authn::jwt::{self, JwksError, TrustedIssuer};
use crate::authn::token_review::{ClusterApi, ReviewCluster, TokenReviewAuthenticator};
use crate::authn::{Authenticator, AuthenticatorChain, AuthenticatorKind, JwtAuthenticator};
mod connections;

use crate::audit::checkpoint::AuditSigner;
use crate::clock::{Clock, SystemClock};
use crate::config::{ClusterConfig, Config, ConnectionConfig, KubernetesConfig, MeshConfig};
use crate::grpc::audit::AdminAccess;
use crate::grpc::CsrService;
use crate::identity::TrustDomain;
use crate::issuance::{CertificateAuthority, CurrentAuthority, IssueError, Mesh};
use crate::kubernetes::lease::LeaseSettings;
use crate::kubernetes::publish::{
    self, IssueFuture, MeshMaterial, PublishSettings, ServerCertificate,
};
use crate::kubernetes::{ClusterSetupError, KubeCluster};
use crate::metrics::Metrics;
use crate::monitoring::Monitor;
use crate::policy::MeshPolicy;
use crate::ratelimit::RateLimits;
use crate::record::StoreError;
use crate::signer::{self, files::CaFilesError};
use crate::store::SledStore;
use connections::ConnectionLimits;

/// The admin listener's idle timeout: long, since a live tail (`WatchRecords`) may see no new
/// record for hours.
const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
/// After a failed serving-certificate renewal, try again this soon.
const RENEWAL_RETRY: Duration = Duration::from_secs(60);
/// Renewals never follow each other faster than this (e.g. when the intermediate is about to
/// expire and every new serving certificate is clamped to it).
const MIN_RENEWAL_WAIT: Duration = Duration::from_secs(1);
/// How often the config file's modification time is checked.
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("mesh {mesh}: {source}")]
    CaMaterial {
        mesh: String,
        #[source]
        source: CaFilesError,
    },
    #[error("mesh {mesh}: token issuer {issuer}: {source}")]
    Jwks {
        mesh: String,
        issuer: String,
        #[source]
        source: JwksError,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot issue meshroot's serving certificate: {0}")]
    ServingCertificate(#[source] IssueError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("mesh {mesh}: cluster {cluster:?}: {source}")]
    Cluster {
        mesh: String,
        cluster: String,
        #[source]
        source: ClusterSetupError,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("audit key {path}: {reason}")]
    AuditKey { path: String, reason: String },
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("reading the issuance log: {0}")]
    Log(#[from] crate::audit::AuditError),
    #[error(
        "the record store failed while serving ({0}); meshroot stopped issuing and exits so its \
         supervisor restarts it: it serves again once the store can write (a full disk: free \
         space or grow the volume)"
    )]
    StoreFailed(StoreError),
    #[error("shut down, but {0} by the end of shutdown_grace")]
    ShutdownIncomplete(String),
    #[error(
        "mesh {mesh}: the trust bundle drops the root that {certificates} unexpired certificates \
         chain to (the last expires {until}); keep that root in root-cert.pem or extra_roots until \
         then, or set force_root_removal = true for this mesh"
    )]
    RootsInUse {
        mesh: String,
        certificates: u64,
        until: String,
    },
}

impl ServeError {
    /// The process exit code `meshroot serve` ends with for this error (README, "Commands").
    pub fn exit_code(&self) -> u8 {
        match self {
            // EX_TEMPFAIL: restart later; it will work once the disk has space.
            Self::StoreFailed(_) => EXIT_STORE_FAILED,
            Self::ShutdownIncomplete(_) => EXIT_SHUTDOWN_INCOMPLETE,
            _ => 1,
        }
    }
}

/// `meshroot serve` stopped because its record store could not write.
pub const EXIT_STORE_FAILED: u8 = 75;
/// `meshroot serve` stopped on a signal, but its last checkpoint or final flush was not written
/// within `shutdown_grace`.
pub const EXIT_SHUTDOWN_INCOMPLETE: u8 = 3;

/// A started server.
pub struct RunningServer {
    local_address: SocketAddr,
    admin_address: SocketAddr,
    store: Arc<SledStore>,
    root_bundle_pem: String,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
    admin_task: JoinHandle<Result<(), ServeError>>,
    /// The Lease election, which releases the Lease when it stops.
    election: Option<JoinHandle<()>>,
    audit: AuditPublisher,
    current: Arc<CurrentAuthority>,
    /// The config the server started with (its listener, store and serving certificate settings
    /// need a restart to change).
    config: Config,
    clock: Arc<dyn Clock>,
    /// One reload at a time.
    reloads: Arc<tokio::sync::Mutex<()>>,
    monitor: Monitor,
    limits: Arc<RateLimits>,
}

/// Why a reload was refused (the previous configuration keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Build(#[from] ServeError),
}

impl RunningServer {
    /// The bound address (useful with port 0).
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// The bound admin address (the audit API).
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// The record store the server writes to.
    pub fn store(&self) -> &Arc<SledStore> {
        &self.store
    }

    /// The primary mesh's trust bundle (what clients verify the serving certificate with).
    pub fn root_bundle_pem(&self) -> &str {
        &self.root_bundle_pem
    }

    /// Records the unauthenticated refusals counted since the last summary now (also done
    /// every [`REFUSAL_SUMMARY_INTERVAL`] and at shutdown); returns how many summary records.
    pub async fn record_refusal_summaries(&self) -> Result<usize, crate::issuance::IssueError> {
        self.current.get().record_refusal_summaries().await
    }

    /// Writes a checkpoint of every record now (also done periodically and at shutdown);
    /// returns the note, or None without an audit key.
    pub async fn checkpoint(&self) -> Result<Option<String>, ServeError> {
        self.audit.publish(&self.store).await
    }

    /// Reports NOT_SERVING (gRPC health, `/readyz`), stops accepting, lets requests in flight
    /// finish and then cuts the rest (a record already appended stays and is flushed; the
    /// client retries), writes the refusal summaries and a last checkpoint, and flushes the
    /// store. Every step has a deadline: the whole shutdown takes at most `shutdown_grace`
    /// (three quarters of it for requests in flight and the Lease, the rest for the final
    /// writes), whatever state the store is in. Returns
    /// [`ServeError::ShutdownIncomplete`] when the last checkpoint or the final flush was not
    /// written.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let grace = self.config.shutdown_grace;
        let start = tokio::time::Instant::now();
        let (requests_deadline, deadline) = (start + grace * 3 / 4, start + grace);
        let _ = tokio::time::timeout_at(requests_deadline, self.monitor.drain()).await;
        let _ = self.shutdown.send(true);
        let result = finish_by(self.task, requests_deadline, "CSR API").await;
        let admin = finish_by(self.admin_task, requests_deadline, "admin").await;
        // A leader releases its Lease, so another replica takes over at once rather than
        // after a lease duration.
        if let Some(election) = self.election {
            if tokio::time::timeout_at(requests_deadline, election)
                .await
                .is_err()
            {
                tracing::warn!("the Lease was not released within shutdown_grace");
            }
        }
        let mut unfinished = Vec::new();
        // Refusals counted since the last summary, so the trail of a flood is complete.
        let summaries = self.current.get();
        if tokio::time::timeout_at(deadline, summaries.record_refusal_summaries())
            .await
            .is_err()
        {
            tracing::error!("the last refusal summaries were not recorded within shutdown_grace");
        }
        match tokio::time::timeout_at(deadline, self.audit.publish(&self.store)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "final checkpoint failed");
                unfinished.push("the last checkpoint was not written");
            }
            Err(_) => {
                tracing::error!("final checkpoint not written within shutdown_grace");
                unfinished.push("the last checkpoint was not written");
            }
        }
        // sled's flush blocks, and may not return on a failed disk: on its own thread.
        let store = self.store.clone();
        let flush = tokio::task::spawn_blocking(move || store.flush());
        match tokio::time::timeout_at(deadline, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                tracing::error!(%error, "final flush of the record store failed");
                unfinished.push("the record store was not flushed");
            }
            Ok(Err(_)) | Err(_) => {
                tracing::error!(
                    "final flush of the record store did not finish within shutdown_grace"
                );
                unfinished.push("the record store was not flushed");
            }
        }
        result.and(admin)?;
        match unfinished.is_empty() {
            true => Ok(()),
            false => Err(ServeError::ShutdownIncomplete(unfinished.join(" and "))),
        }
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully; SIGHUP reloads the config.
    /// The handlers are `signals`, installed before the server started, so a signal that
    /// arrives at any moment after start is handled rather than ending the process abruptly.
    ///
    /// A failed write to the record store (a full disk, an I/O error) stops it too: meshroot
    /// cannot issue without its records, and sled does not recover in the same process. It
    /// then shuts down the same way and returns [`ServeError::StoreFailed`], so the process
    /// exits with [`EXIT_STORE_FAILED`] and its supervisor restarts it.
    pub async fn run_until_stopped(self, mut signals: Signals) -> Result<(), ServeError> {
        let store = self.store.clone();
        let store_failed = store.write_failure();
        tokio::pin!(store_failed);
        loop {
            let signal = tokio::select! {
                signal = signals.next() => signal,
                error = &mut store_failed => {
                    tracing::error!(
                        %error,
                        "the record store cannot write: stopping, for the supervisor to restart \
                         meshroot once the store can write again"
                    );
                    let shutdown = self.shutdown().await;
                    if let Err(error) = shutdown {
                        tracing::error!(%error, "shutdown after the store failure");
                    }
                    return Err(ServeError::StoreFailed(error));
                }
            };
            match signal {
                Signal::Stop => break,
                Signal::Reload => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = self.reload().await;
                }
            }
        }
        tracing::info!("shutting down");
        self.shutdown().await
    }

    /// Re-reads the config file and, if it is valid and its CA material loads, switches every
    /// new request to it: meshes, trust domains and aliases, TTLs, bundles, authentication.
    /// Listener, store and serving-certificate settings need a restart (a change is logged).
    /// On any error the running configuration stays, and the reason is logged and returned.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        reload(
            &self.config,
            &self.current,
            &self.store,
            &self.clock,
            (&self.monitor.metrics, &self.limits),
            &self.reloads,
        )
        .await
        .map(|_| ())
    }

    /// Reloads when the config file or any mesh's CA material (the files in `ca_dir`, the
    /// `extra_roots`) changes, checked every 2 s by modification time and size. A Kubernetes
    /// Secret volume swaps all its files at once, so an updated `cacerts` Secret is picked up
    /// whole; files copied by hand one at a time may be caught half-way, which is refused
    /// (the key does not match the certificate) and retried at the next change.
    fn watch_config_file(&self, mut shutdown: watch::Receiver<bool>) {
        let (mut config, current, store, clock, metrics, limits, reloads) = (
            self.config.clone(),
            self.current.clone(),
            self.store.clone(),
            self.clock.clone(),
            self.monitor.metrics.clone(),
            self.limits.clone(),
            self.reloads.clone(),
        );
        let running = self.config.clone();
        let mut last = fingerprint(&watched_files(&config));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|stopped| *stopped) => return,
                    _ = tokio::time::sleep(CONFIG_POLL) => {}
                }
                let now = fingerprint(&watched_files(&config));
                if now == last {
                    continue;
                }
                last = now;
                tracing::info!(file = %config.source.display(), "the config file or CA material changed: reloading");
                if let Ok(loaded) = reload(
                    &running,
                    &current,
                    &store,
                    &clock,
                    (&metrics, &limits),
                    &reloads,
                )
                .await
                {
                    config = loaded;
                    last = fingerprint(&watched_files(&config));
                }
            }
        });
    }
}

/// The files whose change triggers a reload: the config file, and each mesh's CA directory
/// (itself, for entries added or swapped, and every entry in it) and extra roots.
fn watched_files(config: &Config) -> Vec<std::path::PathBuf> {
    let mut files = vec![config.source.clone()];
    for mesh in &config.meshes {
        files.push(mesh.ca_dir.clone());
        if let Ok(entries) = std::fs::read_dir(&mesh.ca_dir) {
            let mut entries: Vec<_> = entries.flatten().map(|entry| entry.path()).collect();
            entries.sort();
            files.extend(entries);
        }
        files.extend(mesh.extra_root_paths());
    }
    files
}

/// A file's modification time and size, as far as it can be read.
type Seen = Option<(SystemTime, u64)>;

/// Modification time and size of each file (following symbolic links, as Kubernetes' Secret
/// volumes use them).
fn fingerprint(files: &[std::path::PathBuf]) -> Vec<(std::path::PathBuf, Seen)> {
    files
        .iter()
        .map(|path| {
            let seen = std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (path.clone(), seen)
        })
        .collect()
}

async fn reload(
    running: &Config,
    current: &CurrentAuthority,
    store: &Arc<SledStore>,
    clock: &Arc<dyn Clock>,
    (metrics, limits): (&Arc<Metrics>, &Arc<RateLimits>),
    reloads: &tokio::sync::Mutex<()>,
) -> Result<Config, ReloadError> {
    let _one_at_a_time = reloads.lock().await;
    let result = async {
        let config = Config::load(&running.source)?;
        if config.listen != running.listen
            || config.store != running.store
            || config.dns_names != running.dns_names
            || config.serving_certificate_ttl != running.serving_certificate_ttl
        {
            tracing::warn!(
                "listen, store, dns_names and serving_certificate_ttl changes take effect at the next restart"
            );
        }
        let authority = build_authority(&config, clock.clone(), store.clone(), metrics.clone())
            .await?
            .with_rate_limits(limits.clone());
        limits.set_rates(config.rate_limit.per_caller, config.rate_limit.per_namespace);
        limits.set_refusal_rates(
            config.rate_limit.refusals_recorded_per_peer,
            config.rate_limit.refusals_recorded,
        );
        current.replace(Arc::new(authority));
        Ok::<_, ReloadError>(config)
    }
    .await;
    match &result {
        Ok(config) => tracing::info!(
            meshes = ?config.meshes.iter().map(|m| (&m.name, m.trust_domain.as_str())).collect::<Vec<_>>(),
            "configuration reloaded"
        ),
        Err(error) => {
            tracing::error!(%error, "configuration reload refused; the previous configuration keeps serving")
        }
    }
    result
}

/// Builds everything from the config, binds the listener and starts serving.
pub async fn start(config: &Config) -> Result<RunningServer, ServeError> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// [`start`] with a given clock (tests).
pub async fn start_with_clock(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<RunningServer, ServeError> {
    let store = SledStore::open_with(
        &config.store,
        crate::store::StoreOptions {
            segment_records: config.audit.index_segment_records,
            cache_bytes: config.store_cache_mib << 20,
            ..crate::store::StoreOptions::default()
        },
    )?;
    let signer = load_audit_signer(&config.audit)?;
    let metrics = Metrics::new();
    let limits = Arc::new(RateLimits::new(
        config.rate_limit.per_caller,
        config.rate_limit.per_namespace,
        clock.clone(),
    ));
    limits.set_refusal_rates(
        config.rate_limit.refusals_recorded_per_peer,
        config.rate_limit.refusals_recorded,
    );
    let ca = build_authority(config, clock.clone(), store.clone(), metrics.clone())
        .await?
        .with_rate_limits(limits.clone());
    let current = Arc::new(CurrentAuthority::new(Arc::new(ca)));
    start_serving(config, clock, store, current, signer, (metrics, limits)).await
}

/// Everything a config describes that can change without a restart: meshes (CA material,
/// trust domains, aliases, TTLs, bundles) and authentication.
async fn build_authority(
    config: &Config,
    clock: Arc<dyn Clock>,
    store: Arc<SledStore>,
    metrics: Arc<Metrics>,
) -> Result<CertificateAuthority, ServeError> {
    let now = clock.now();
    let mut meshes = Vec::new();
    let mut issuers = Vec::new();
    let mut review_clusters = Vec::new();
    let mut cluster_apis: HashMap<String, Arc<dyn ClusterApi>> = HashMap::new();
    let mut client_cert_meshes = Vec::new();
    let mut anchors = IdentityAnchors::new();
    for mesh in &config.meshes {
        let authority = signer::files::load_signer(
            &mesh.name,
            mesh.trust_domain.clone(),
            &mesh.ca_dir,
            &mesh.extra_root_paths(),
            now,
        )
        .map_err(|source| ServeError::CaMaterial {
            mesh: mesh.name.clone(),
            source,
        })?;
        check_roots_in_use(&store, &mesh.name, &authority, now, mesh.force_root_removal)?;
        let trust_domains: Vec<TrustDomain> = std::iter::once(mesh.trust_domain.clone())
            .chain(mesh.trust_domain_aliases.iter().cloned())
            .collect();
        if mesh.token_issuers.is_empty() && mesh.clusters.is_empty() && !mesh.client_cert_auth {
            tracing::warn!(
                mesh = %mesh.name,
                "no authentication configured: every request for this mesh will be refused"
            );
        }
        authorize_issuers(&mut anchors, &store, mesh, &trust_domains)?;
        if mesh.client_cert_auth {
            client_cert_meshes.push((mesh.name.clone(), trust_domains.clone()));
        }
        for cluster in &mesh.clusters {
            let api: Arc<dyn ClusterApi> = Arc::new(connect_cluster(cluster).await.map_err(
                |source| ServeError::Cluster {
                    mesh: mesh.name.clone(),
                    cluster: cluster.id.clone(),
                    source,
                },
            )?);
            cluster_apis.insert(cluster.id.clone(), api.clone());
            review_clusters.push(ReviewCluster {
                id: cluster.id.clone(),
                mesh: mesh.name.clone(),
                trust_domain: mesh.trust_domain.clone(),
                audiences: cluster.audiences.clone(),
                api,
                timeout: cluster.review_timeout,
                max_concurrent_reviews: cluster.max_concurrent_reviews,
                cache_ttl: cluster.review_cache_ttl,
            });
        }
        for issuer in &mesh.token_issuers {
            let keys = jwt::load_jwks(&issuer.jwks).map_err(|source| ServeError::Jwks {
                mesh: mesh.name.clone(),
                issuer: issuer.issuer.clone(),
                source,
            })?;
            issuers.push(TrustedIssuer {
                issuer: issuer.issuer.clone(),
                mesh: mesh.name.clone(),
                trust_domain: mesh.trust_domain.clone(),
                audiences: issuer.audiences.clone(),
                keys,
            });
        }
        tracing::info!(
            mesh = %mesh.name,
            trust_domain = %mesh.trust_domain,
            ca_dir = %mesh.ca_dir.display(),
            intermediates = authority.intermediates().len(),
            roots = authority.roots().len(),
            "CA material loaded"
        );
        meshes.push(Mesh {
            policy: MeshPolicy {
                mesh: mesh.name.clone(),
                trust_domain: mesh.trust_domain.clone(),
                trust_domain_aliases: mesh.trust_domain_aliases.clone(),
                alias_issuance: mesh.alias_issuance,
                default_ttl: mesh.default_ttl,
                max_ttl: mesh.max_ttl,
                signer_not_after: authority.signing_not_after(),
            },
            signer: Arc::new(authority),
            node_accounts: mesh.trusted_node_accounts.clone(),
            trust_domains,
            clusters: mesh
                .clusters
                .iter()
                .map(|cluster| cluster.id.clone())
                .collect(),
        });
    }

    let mut jwt = Some(JwtAuthenticator::new(issuers, clock.clone()));
    let mut token_review = Some(
        TokenReviewAuthenticator::new(review_clusters, clock.clone()).with_metrics(metrics.clone()),
    );
    let anchors = Arc::new(anchors);
    let mut client_cert = Some(ClientCertAuthenticator::new(
        client_cert_meshes,
        anchors.clone(),
        clock.clone(),
    ));
    let mut authenticators: Vec<Box<dyn Authenticator>> = Vec::new();
    for kind in &config.authenticators {
        let next: Option<Box<dyn Authenticator>> = match kind {
            AuthenticatorKind::Jwt => jwt.take().map(|a| Box::new(a) as _),
            AuthenticatorKind::TokenReview => token_review.take().map(|a| Box::new(a) as _),
            AuthenticatorKind::ClientCert => client_cert.take().map(|a| Box::new(a) as _),
        };
        authenticators.extend(next);
    }
    let impersonation = NodeAuthorizer::new(cluster_apis, config.pod_cache_ttl, clock.clone());
    Ok(CertificateAuthority::new(
        meshes,
        AuthenticatorChain::new(authenticators),
        impersonation,
        store,
        clock,
    )
    .with_metrics(metrics)
    .with_identity_anchors(anchors))
}

/// Authorizes the issuers that may vouch for `mesh`'s trust domains (and aliases): every signing
/// intermediate the store remembers for the mesh (the current one was just remembered, earlier
/// ones are kept while certificates they signed are valid), and no root. Each extra root
/// vouches only for the trust domains configured for it.
fn authorize_issuers(
    anchors: &mut IdentityAnchors,
    store: &SledStore,
    mesh: &MeshConfig,
    trust_domains: &[TrustDomain],
) -> Result<(), ServeError> {
    let tls = |e: crate::authn::AuthnError| ServeError::Tls(format!("mesh {}: {e}", mesh.name));
    for chain in store.signers(&mesh.name)?.values() {
        let Some(signing) = chain.first() else {
            continue;
        };
        for trust_domain in trust_domains {
            anchors
                .authorize(trust_domain, &CertificateDer::from(signing.as_slice()))
                .map_err(tls)?;
        }
    }
    for root in &mesh.extra_roots {
        if root.vouches_for.is_empty() {
            continue;
        }
        let certificates = signer::files::certificates_required(&root.path).map_err(|source| {
            ServeError::CaMaterial {
                mesh: mesh.name.clone(),
                source,
            }
        })?;
        for certificate in &certificates {
            for trust_domain in &root.vouches_for {
                anchors.authorize(trust_domain, certificate).map_err(tls)?;
            }
        }
    }
    Ok(())
}

/// Remembers the mesh's signer, then refuses a trust bundle that no longer holds the root
/// of unexpired certificates meshroot issued (they would fail every handshake), unless forced.
/// Signers under a dropped root whose certificates have all expired are forgotten.
fn check_roots_in_use(
    store: &SledStore,
    mesh: &str,
    authority: &crate::signer::MeshSigner,
    now: SystemTime,
    force: bool,
) -> Result<(), ServeError> {
    use crate::audit::rotation::{self, InUse};
    use crate::audit::{OutcomeFilter, Query};
    store.remember_signer(mesh, &authority.signer_chain())?;
    let bundle: Vec<Vec<u8>> = authority.roots().iter().map(|r| r.to_vec()).collect();
    let stranded = rotation::stranded_signers(&store.signers(mesh)?, &bundle);
    if stranded.is_empty() {
        return Ok(());
    }
    let query = Query {
        mesh: Some(mesh.to_owned()),
        expires_after: Some(now),
        outcome: Some(OutcomeFilter::Issued),
        ..Query::default()
    };
    let mut in_use = InUse::default();
    let mut still_signing = std::collections::HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let page = store.query(&query, 4096, token.as_deref())?;
        for record in &page.records {
            if let crate::record::Outcome::Issued(issued) = &record.outcome {
                if issued.not_after > now && stranded.contains(&issued.intermediate_sha256) {
                    in_use.add(issued.not_after);
                    still_signing.insert(issued.intermediate_sha256.clone());
                }
            }
        }
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    for signer in stranded.iter().filter(|s| !still_signing.contains(*s)) {
        store.forget_signer(mesh, signer)?;
    }
    let Some(until) = in_use.until else {
        return Ok(());
    };
    let until = crate::clock::format_time(until);
    if force {
        tracing::warn!(
            mesh,
            certificates = in_use.certificates,
            until = %until,
            "force_root_removal: loading a trust bundle that the root of unexpired certificates is not in; they fail verification until they are renewed"
        );
        return Ok(());
    }
    Err(ServeError::RootsInUse {
        mesh: mesh.to_owned(),
        certificates: in_use.certificates,
        until,
    })
}

async fn start_serving(
    config: &Config,
    clock: Arc<dyn Clock>,
    store: Arc<SledStore>,
    current: Arc<CurrentAuthority>,
    signer: Option<Arc<AuditSigner>>,
    (metrics, limits): (Arc<Metrics>, Arc<RateLimits>),
) -> Result<RunningServer, ServeError> {
    let ca = current.get();
    let (health, health_service) = tonic_health::server::health_reporter();
    let mut monitor = Monitor::new(metrics, current.clone(), store.clone(), health);
    let (leader, leads) = watch::channel(false);
    if config.kubernetes.is_some() {
        monitor = monitor.with_leader(leads);
    }
    monitor.serve().await;
    let serving = Arc::new(ServingCertificate::default());
    let renew_at = serving
        .renew(&ca, &config.dns_names, config.serving_certificate_ttl)
        .await
        .map_err(ServeError::ServingCertificate)?;
    let root_bundle_pem = ca
        .primary_signer()
        .map(|a| a.root_bundle_pem().to_owned())
        .unwrap_or_default();

    let provider = tls_provider();
    let client_verifier = Arc::new(DeferredClientVerifier {
        provider: provider.clone(),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_client_cert_verifier(client_verifier as _)
        .with_cert_resolver(serving.clone());
    tls.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: istio-agent and ztunnel keep one connection and never resume (Go's
    // TLS client has no session cache unless configured), so the two TLS 1.3 tickets rustls
    // sends by default, and the cache behind them, were CPU and memory spent on every
    // handshake of a restart storm for nothing.
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let listener = connections::bind(config.listen).map_err(|source| ServeError::Bind {
        address: config.listen,
        source,
    })?;
    let local_address = listener.local_addr().map_err(|source| ServeError::Bind {
        address: config.listen,
        source,
    })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (connections, incoming) = mpsc::channel(256);
    tokio::spawn(connections::accept_loop(
        listener,
        acceptor,
        connections,
        ConnectionLimits::new(config.connections, config.max_concurrent_handshakes),
        shutdown_rx.clone(),
    ));
    tokio::spawn(renewal_loop(
        serving.clone(),
        current.clone(),
        config.dns_names.clone(),
        config.serving_certificate_ttl,
        renew_at,
        shutdown_rx.clone(),
    ));

    let audit = AuditPublisher {
        signer,
        file: config.audit.checkpoint_file.clone(),
        one_at_a_time: Arc::default(),
    };
    let (admin_address, admin_task) = start_admin(
        config,
        current.clone(),
        provider_for_admin(),
        serving.clone(),
        store.clone(),
        &audit,
        (&monitor, health_service.clone()),
        shutdown_rx.clone(),
    )
    .await?;
    let election = match &config.kubernetes {
        Some(kubernetes) => Some(
            start_cluster_duties(kubernetes, current.clone(), leader, shutdown_rx.clone()).await?,
        ),
        None => None,
    };
    tokio::spawn(checkpoint_loop(
        audit.clone(),
        store.clone(),
        config.audit.checkpoint_interval,
        shutdown_rx.clone(),
    ));
    tokio::spawn(refusal_summary_loop(
        current.clone(),
        REFUSAL_SUMMARY_INTERVAL,
        shutdown_rx.clone(),
    ));
    tokio::spawn(prune_loop(
        store.clone(),
        config.audit.retention,
        config.audit.prune_interval,
        clock.clone(),
        shutdown_rx.clone(),
    ));

    let mut stop = shutdown_rx.clone();
    let service = CsrService::new(
        current.clone(),
        config.max_concurrent_requests,
        config.connections.max_message_bytes,
    );
    let request_timeout = config.request_timeout;
    let connection_limits = config.connections;
    let task = tokio::spawn(async move {
        http2_limits(tonic::transport::Server::builder(), &connection_limits)
            .timeout(request_timeout)
            .add_service(service)
            .add_service(health_service)
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await
            .map_err(ServeError::from)
    });
    tracing::info!(address = %local_address, dns_names = ?config.dns_names, "meshroot is serving the Istio CSR API over TLS");
    tracing::info!(address = %admin_address, "meshroot is serving the audit API, /metrics, /healthz and /readyz");
    let server = RunningServer {
        local_address,
        admin_address,
        store,
        root_bundle_pem,
        shutdown,
        task,
        admin_task,
        audit,
        current,
        config: config.clone(),
        clock,
        reloads: Arc::new(tokio::sync::Mutex::new(())),
        monitor,
        limits,
        election,
    };
    server.watch_config_file(shutdown_rx);
    Ok(server)
}

/// Starts the elected replica's duties in its own cluster: the Lease election, and, while
/// leading, root distribution and istiod's certificate. Returns the election's task.
async fn start_cluster_duties(
    settings: &KubernetesConfig,
    current: Arc<CurrentAuthority>,
    leader: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, ServeError> {
    let cluster = KubeCluster::connect_for_watches(&settings.access, KUBERNETES_TIMEOUT)
        .await
        .map_err(|source| ServeError::Cluster {
            mesh: settings.mesh.clone(),
            cluster: "[kubernetes]".to_owned(),
            source,
        })?;
    let leads = leader.subscribe();
    let election = tokio::spawn(crate::kubernetes::lease::run(
        cluster.client(),
        LeaseSettings {
            namespace: settings.namespace.clone(),
            name: settings.lease_name.clone(),
            identity: settings.identity.clone(),
            duration: settings.lease_duration,
        },
        leader,
        shutdown.clone(),
    ));
    let publish = PublishSettings {
        namespace_selector: settings.namespace_selector.clone(),
        root_configmap: settings.root_configmap,
        istiod_tls: settings.istiod_tls,
        istiod_namespace: settings.namespace.clone(),
        istiod_revisions: settings.istiod_revisions.clone(),
        istiod_ttl: settings.istiod_tls_ttl,
        resync: settings.resync,
    };
    let mesh: Arc<dyn MeshMaterial> = Arc::new(PublishedMesh {
        current,
        mesh: settings.mesh.clone(),
        istiod_ttl: settings.istiod_tls_ttl,
    });
    if publish.root_configmap {
        tokio::spawn(publish::run_root_distribution(
            cluster.client(),
            publish.clone(),
            mesh.clone(),
            leads.clone(),
            shutdown.clone(),
        ));
    }
    if publish.istiod_tls {
        tokio::spawn(publish::run_istiod_certificate(
            cluster.client(),
            publish,
            mesh,
            leads,
            shutdown,
        ));
    }
    tracing::info!(namespace = %settings.namespace, lease = %settings.lease_name, identity = %settings.identity, "cluster duties started; they run on the elected replica");
    Ok(election)
}

/// The `[kubernetes]` mesh as the publisher sees it: read from the authority in force, so
/// reloads and rotations are published.
struct PublishedMesh {
    current: Arc<CurrentAuthority>,
    mesh: String,
    istiod_ttl: Duration,
}

impl MeshMaterial for PublishedMesh {
    fn bundle_pem(&self) -> Option<String> {
        let ca = self.current.get();
        ca.mesh_signer(&self.mesh)
            .map(|authority| authority.root_bundle_pem().to_owned())
    }

    fn intermediates_pem(&self) -> Option<String> {
        let ca = self.current.get();
        ca.mesh_signer(&self.mesh)
            .map(|authority| authority.intermediates_pem())
    }

    fn trust_domain(&self) -> Option<String> {
        let ca = self.current.get();
        ca.mesh_signer(&self.mesh)
            .map(|authority| authority.trust_domain().to_string())
    }

    fn issue_istiod<'a>(&'a self, dns_names: &'a [String], spiffe_id: &'a str) -> IssueFuture<'a> {
        Box::pin(async move {
            let identity = crate::identity::SpiffeId::parse(spiffe_id)
                .map_err(|e| format!("istiod's identity {spiffe_id}: {e}"))?;
            let ca = self.current.get();
            let (issued, key) = ca
                .issue_server_certificate(
                    &self.mesh,
                    dns_names,
                    Some(&identity),
                    self.istiod_ttl,
                    "istiod-tls",
                )
                .await
                .map_err(|e| e.to_string())?;
            let leaf_and_intermediates = issued
                .cert_chain
                .split_last()
                .map(|(_bundle, chain)| chain.concat())
                .unwrap_or_default();
            Ok(ServerCertificate {
                chain_pem: leaf_and_intermediates,
                key_pem: key.serialize_pem(),
                not_before: issued.not_before,
                not_after: issued.not_after,
            })
        })
    }
}

/// Connect and request timeout of the cluster-duties client.
const KUBERNETES_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for a listener's task to end by `deadline`, then aborts it.
async fn finish_by(
    mut task: JoinHandle<Result<(), ServeError>>,
    deadline: tokio::time::Instant,
    listener: &str,
) -> Result<(), ServeError> {
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(joined) => joined?,
        Err(_) => {
            tracing::warn!(
                listener,
                "requests still in flight at the end of shutdown_grace: closing their connections"
            );
            task.abort();
            Ok(())
        }
    }
}

/// Publishes signed checkpoints: into the store, and to the configured file.
#[derive(Clone)]
struct AuditPublisher {
    signer: Option<Arc<AuditSigner>>,
    file: std::path::PathBuf,
    /// The periodic checkpoint, an admin's and the final one at shutdown may coincide; they
    /// share the file's temporary sibling, so one publishes at a time.
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

impl AuditPublisher {
    async fn publish(&self, store: &SledStore) -> Result<Option<String>, ServeError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let _publishing = self.one_at_a_time.lock().await;
        let note = store.checkpoint(signer).await?;
        let current = tokio::fs::read_to_string(&self.file).await.ok();
        if current.as_deref() != Some(note.as_str()) {
            write_atomically(&self.file, note.as_bytes())
                .await
                .map_err(|error| ServeError::Store(StoreError::Write(Arc::new(error))))?;
            if let Some(checkpoint) = crate::audit::checkpoint::Checkpoint::parse_unverified(&note)
            {
                tracing::info!(
                    size = checkpoint.size,
                    root = %crate::digest::hex(&checkpoint.root),
                    file = %self.file.display(),
                    "checkpoint published"
                );
            }
        }
        Ok(Some(note))
    }
}

/// Writes a file by renaming a temporary one into place, so readers never see half of it.
async fn write_atomically(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    tokio::fs::write(&temporary, contents).await?;
    tokio::fs::rename(&temporary, path).await
}

fn load_audit_signer(
    audit: &crate::config::AuditConfig,
) -> Result<Option<Arc<AuditSigner>>, ServeError> {
    let Some(path) = &audit.key else {
        tracing::warn!("no audit key configured ([audit] key): checkpoints are not written");
        return Ok(None);
    };
    let failed = |reason: String| ServeError::AuditKey {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
        .map_err(|_| failed("not a PKCS#8 PEM private key".into()))?;
    let signer = AuditSigner::from_pkcs8(&audit.key_name, der.secret_pkcs8_der())
        .map_err(|e| failed(e.to_string()))?;
    Ok(Some(Arc::new(signer)))
}

async fn checkpoint_loop(
    audit: AuditPublisher,
    store: Arc<SledStore>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if audit.signer.is_none() {
        return;
    }
    loop {
        if let Err(error) = audit.publish(&store).await {
            tracing::error!(%error, "checkpoint failed; retrying at the next interval");
        }
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// How often unauthenticated refusals over the recorded rate are written as summary records.
pub const REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

async fn refusal_summary_loop(
    current: Arc<CurrentAuthority>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        // Failures are logged where they happen; the next period tries again.
        let _ = current.get().record_refusal_summaries().await;
    }
}

async fn prune_loop(
    store: Arc<SledStore>,
    policy: crate::audit::RetentionPolicy,
    interval: Duration,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (pass_store, now) = (store.clone(), clock.now());
        match tokio::task::spawn_blocking(move || pass_store.prune(&policy, now)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "pruning failed; retrying later"),
            Err(error) => tracing::error!(%error, "pruning task failed"),
        }
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

fn provider_for_admin() -> Arc<rustls::crypto::CryptoProvider> {
    tls_provider()
}

/// The TLS crypto of both listeners: ring's (its cipher suites, signatures and classical key
/// exchanges), plus the hybrid post-quantum key exchange X25519MLKEM768 from AWS-LC, which ring
/// does not have. istio-agent with `COMPLIANCE_POLICY=pqc` offers only that group, over TLS
/// 1.3. Among the key shares a client sends, its own preference decides (rustls answers the
/// first it supports): Go 1.24+ clients, which send the hybrid first, get it; clients that
/// offer only classical groups get X25519 or P-256 as before. The hybrid is listed right after
/// X25519 for clients that send no share for it and must be asked (HelloRetryRequest).
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
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

/// Binds the admin address and serves there the audit API, the gRPC health service and, over
/// HTTP/1.1 or HTTP/2, `/metrics`, `/healthz` and `/readyz`. On a loopback address in plain
/// text; elsewhere over TLS, where the audit API requires a client certificate that proves one
/// of `admin.allowed_identities` through the identity anchors (metrics and health need
/// none, so Prometheus and the kubelet can reach them; they reveal no identities).
#[allow(clippy::too_many_arguments)]
async fn start_admin(
    config: &Config,
    current: Arc<CurrentAuthority>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    serving: Arc<ServingCertificate>,
    store: Arc<SledStore>,
    audit: &AuditPublisher,
    (monitor, health): (&Monitor, HealthServer<impl Health>),
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
    let service = crate::grpc::audit::AuditApi::new(
        store,
        verifier_key,
        (!loopback).then(|| AdminAccess {
            allowed_identities: config.admin.allowed_identities.clone(),
            current,
        }),
        shutdown.clone(),
    );
    let mut stop = shutdown.clone();
    let until_stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let routes = tonic::service::Routes::new(service)
        .add_service(health)
        .into_axum_router()
        .merge(monitor.routes())
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND });
    let router = http2_limits(tonic::transport::Server::builder(), &config.connections)
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(routes));
    let task = if loopback {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, until_stopped)
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
            .with_cert_resolver(serving);
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let (connections, incoming) = mpsc::channel(64);
        // Counted apart from the CSR listener, so a flood there never starves the probes here.
        // A live tail may be quiet for long: no idle timeout on this listener.
        let limits = ConnectionConfig {
            idle_timeout: ADMIN_IDLE_TIMEOUT,
            ..config.connections
        };
        tokio::spawn(connections::accept_loop(
            listener,
            TlsAcceptor::from(Arc::new(tls)),
            connections,
            ConnectionLimits::new(limits, config.max_concurrent_handshakes),
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

/// HTTP/2 limits from `[connections]`: streams per connection, and flow-control windows small
/// enough that a connection can hold only a few request bodies' worth of unread data.
fn http2_limits(
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
async fn renewal_loop(
    serving: Arc<ServingCertificate>,
    current: Arc<CurrentAuthority>,
    dns_names: Vec<String>,
    lifetime: Duration,
    mut renew_at: SystemTime,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let ca = current.get();
        let wait = renew_at
            .duration_since(ca.clock().now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let ca = current.get();
        renew_at = match serving.renew(&ca, &dns_names, lifetime).await {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, "serving certificate renewal failed; retrying");
                ca.clock().now() + RENEWAL_RETRY
            }
        };
    }
}

/// meshroot's current serving certificate, swapped in place on renewal.
#[derive(Debug, Default)]
struct ServingCertificate(RwLock<Option<Arc<CertifiedKey>>>);

impl ServingCertificate {
    /// Issues a new certificate, installs it, and returns when to renew it: halfway between now
    /// and its NotAfter (NotBefore is backdated and does not count), never sooner than
    /// [`MIN_RENEWAL_WAIT`] from now.
    async fn renew(
        &self,
        ca: &CertificateAuthority,
        dns_names: &[String],
        lifetime: Duration,
    ) -> Result<SystemTime, IssueError> {
        let issued_at = ca.clock().now();
        let (issued, key) = ca.issue_serving_certificate(dns_names, lifetime).await?;
        let mut chain: Vec<CertificateDer<'static>> = vec![issued.der.clone()];
        if let Some(authority) = ca.primary_signer() {
            chain.extend(authority.intermediates().iter().cloned());
        }
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        ))
        .map_err(|_| IssueError::Signing(crate::signer::SigningError::ServingKey))?;
        let certified = Arc::new(CertifiedKey::new(chain, signing_key));
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

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.0.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

async fn connect_cluster(cluster: &ClusterConfig) -> Result<KubeCluster, ClusterSetupError> {
    KubeCluster::connect(&cluster.access, cluster.review_timeout).await
}

/// Requests a client certificate but leaves judging it to the client-certificate authenticator,
/// which checks the chain against the roots of the right mesh and records why it refuses one.
/// The handshake still proves the client holds the certificate's private key (the signature
/// checks below are rustls' own).
#[derive(Debug)]
struct DeferredClientVerifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
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

/// What a process signal asks of a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: shut down gracefully.
    Stop,
    /// SIGHUP: reload the configuration.
    Reload,
}

/// The process signal handlers `serve` reacts to. Install them before starting the server:
/// until a handler is installed, the signal's default action (ending the process) applies.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (needs a running tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
                hangup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The next signal received.
    pub async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => Signal::Stop,
                _ = self.interrupt.recv() => Signal::Stop,
                _ = self.hangup.recv() => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}
