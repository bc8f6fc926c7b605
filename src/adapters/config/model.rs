//! What a validated configuration holds: the defaults, the environment overrides' names, and
//! one type per section of the file. `parse.rs` and the section files build it; `Config::load`
//! (in the module above) reads it from disk.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::domain::caller::{AuthenticatorKind, NodeAccount};
use crate::domain::identity::TrustDomain;
use crate::domain::policy::AliasIssuance;

pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:15012";
pub(crate) const DEFAULT_DNS_NAMES: [&str; 2] = ["localhost", "meshroot.istio-system.svc"];
pub(crate) const DEFAULT_AUDIENCE: &str = "istio-ca";
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
pub(crate) const DEFAULT_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
pub(crate) const DEFAULT_SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
pub(crate) const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
pub(crate) const DEFAULT_NODE_ACCOUNT: &str = "istio-system/ztunnel";
pub(crate) const DEFAULT_REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_REVIEW_CACHE_TTL: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_MAX_CONCURRENT_REVIEWS: usize = 32;
pub(crate) const DEFAULT_POD_CACHE_TTL: Duration = Duration::from_secs(5);
/// How long a stopping server waits for requests in flight (below Kubernetes' default 30 s
/// termination grace period, so the final flush and checkpoint still run before SIGKILL).
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
pub(crate) const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:15014";
/// A CSR request still unanswered after this is cancelled (CANCELLED, which clients retry).
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Per authenticated caller: requests per second, and the burst (ztunnel asks for every pod
/// of its node at once when the node restarts).
pub(crate) const DEFAULT_CALLER_RATE: (f64, f64) = (20.0, 200.0);
/// Per namespace of the identities asked for.
pub(crate) const DEFAULT_NAMESPACE_RATE: (f64, f64) = (200.0, 2000.0);
/// Refusals of unauthenticated requests recorded one by one, per peer address (one a minute,
/// bursts of 10); the rest are counted into summary records.
pub(crate) const DEFAULT_REFUSALS_RECORDED_PER_PEER: (f64, f64) = (1.0 / 60.0, 10.0);
/// The same, over all peers together (one every 10 s, bursts of 60): with the summaries, a
/// flood costs the store at most about 1 KB/s (docs/hardening.md).
pub(crate) const DEFAULT_REFUSALS_RECORDED: (f64, f64) = (0.1, 60.0);
/// Istio's default names of the ConfigMaps istio-agent reads the mesh root from, and the CRLs
/// (Istio >= 1.27 and >= 1.29 can rename them: `[kubernetes] root_configmap_name`,
/// `crl_configmap_name`).
pub(crate) const DEFAULT_ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
pub(crate) const DEFAULT_CRL_CONFIGMAP: &str = "istio-ca-crl";
/// Where the Lease and `istiod-tls` live when neither the config nor `POD_NAMESPACE` says.
pub(crate) const DEFAULT_KUBERNETES_NAMESPACE: &str = "istio-system";
/// client-go's default `leaseDurationSeconds`.
pub(crate) const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Every namespace's ConfigMap and istiod's Secret are checked at least this often.
pub(crate) const DEFAULT_RESYNC: Duration = Duration::from_secs(600);
pub(crate) const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 512;
pub(crate) const DEFAULT_MAX_CONCURRENT_HANDSHAKES: usize = 256;
pub(crate) const DEFAULT_STORE_CACHE_MIB: u64 = 64;
/// An ECDSA signer verifies the signature of 1 leaf in this many (and the first after each key
/// load); an RSA signer verifies every leaf (docs/request-path.md, the design note).
pub(crate) const DEFAULT_LEAF_SIGNATURE_SAMPLE: u64 = 64;
pub(crate) const DEFAULT_AUDIT_KEY_NAME: &str = "meshroot-audit";
pub(crate) const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
/// `[audit.export] jsonl_max_file_mib`.
pub(crate) const DEFAULT_EXPORT_FILE_MIB: u64 = 64;
pub(crate) const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Environment variables that override the file.
pub(crate) const ENV_LISTEN: &str = "MESHROOT_LISTEN";
pub(crate) const ENV_STORE: &str = "MESHROOT_STORE";
pub(crate) const ENV_ADMIN_LISTEN: &str = "MESHROOT_ADMIN_LISTEN";
/// This replica's `[replicas]` member entry (overrides `replicas.self`).
pub(crate) const ENV_MEMBER: &str = "MESHROOT_MEMBER";
/// This replica's log name (overrides `audit.key_name`): a new name starts a new log, the way
/// out after its volume was lost or rolled back (docs/operations/run-several-replicas.md).
pub(crate) const ENV_LOG_NAME: &str = "MESHROOT_LOG_NAME";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    pub listen: SocketAddr,
    /// DNS names in meshroot's serving certificate (the host part of istio-agent's `CA_ADDR`).
    pub dns_names: Vec<String>,
    /// Lifetime of meshroot's own serving certificate; renewed at half of it.
    pub serving_certificate_ttl: Duration,
    /// The sled directory for issuance records.
    pub store: PathBuf,
    /// Memory for sled's page cache (MiB): more makes audit queries on large logs faster.
    pub store_cache_mib: u64,
    /// An ECDSA signer verifies the signature of the first leaf after each key load and then
    /// of 1 leaf in this many (1: every leaf); RSA signers verify every leaf.
    pub leaf_signature_sample: u64,
    /// CSR requests handled at once; more are answered RESOURCE_EXHAUSTED (clients retry).
    pub max_concurrent_requests: usize,
    /// TLS handshakes in progress at once; further connections wait to be accepted.
    pub max_concurrent_handshakes: usize,
    /// The order in which authenticators are tried; the first success wins.
    pub authenticators: Vec<AuthenticatorKind>,
    /// How long pod lookups for impersonation are reused.
    pub pod_cache_ttl: Duration,
    /// On SIGTERM, how long requests and streams in flight may run before they are cut.
    pub shutdown_grace: Duration,
    /// A CSR request still unanswered after this is cancelled.
    pub request_timeout: Duration,
    pub rate_limit: RateLimitConfig,
    pub connections: ConnectionConfig,
    pub meshes: Vec<MeshConfig>,
    pub audit: AuditConfig,
    pub admin: AdminConfig,
    pub kubernetes: Option<KubernetesConfig>,
    /// `[replicas]` (formerly `[cluster]`): the other replicas that together are one CA.
    pub replicas: Option<ReplicasConfig>,
    /// Settings spelt the old way, each with what to write instead (logged when the file is
    /// loaded; each old spelling is read for one more release).
    pub deprecations: Vec<String>,
    /// `[revocation]`: CRLs and how long a revoked identity is refused.
    pub revocation: RevocationConfig,
    /// `[bundle_endpoint]`: a SPIFFE bundle per trust domain, if served.
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// `[pkcs11]`: the module and PIN for keys in a token.
    pub pkcs11: Option<crate::adapters::pkcs11::Pkcs11Settings>,
}

/// `[bundle_endpoint]`: `GET /<trust domain>` answers that trust domain's SPIFFE bundle, read
/// only and unauthenticated, over HTTPS (the `https_web` profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpointConfig {
    pub listen: SocketAddr,
    /// `spiffe_refresh_hint`.
    pub refresh_hint: Duration,
    /// A certificate and key to serve with (a Web PKI certificate); None: meshroot's own
    /// serving certificate.
    pub certificate: Option<(PathBuf, PathBuf)>,
}

/// `[revocation]` (docs/operations/revoke-a-certificate.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationConfig {
    /// Where `ca-crl.pem` is written (for VMs and tests), if anywhere.
    pub crl_file: Option<PathBuf>,
    /// nextUpdate − thisUpdate of every CRL meshroot signs; at least the longest leaf lifetime
    /// of any mesh, so a retired intermediate's last CRL outlives every leaf it signed.
    pub crl_validity: Duration,
    /// CRLs meshroot does not sign (the root's, a partner's), published with its own.
    pub extra_crls: Vec<PathBuf>,
    /// Named as the CRL distribution point of every workload leaf, if set (where `GET /crl`
    /// answers).
    pub crl_url: Option<String>,
    /// How long a revoked identity is refused new certificates (None: until lifted).
    pub block_for: Option<Duration>,
    /// Keep the `istio-ca-crl` ConfigMap beside `istio-ca-root-cert` (with `[kubernetes]`).
    pub configmap: bool,
}

/// `[replicas]`: every member's admin address, ready or not (docs/operations/run-several-replicas.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicasConfig {
    /// The members' admin addresses (HOST:PORT), this replica's among them.
    pub members: Vec<String>,
    /// This replica's entry in `members`, when given (`self`, `$MESHROOT_MEMBER`).
    pub this_member: Option<String>,
    /// The SPIFFE identity members prove to each other on the admin port (their serving
    /// certificates carry it); always allowed on the audit API.
    pub identity: String,
    /// How long a member has to answer before it counts as missing.
    pub member_timeout: Duration,
    /// The StatefulSet the members were derived from, if they were.
    pub statefulset: Option<StatefulSetMembers>,
}

/// Members derived from a StatefulSet: `NAME-<i>.SERVICE.NAMESPACE.svc:PORT` for every ordinal
/// below the larger of `replicas` and the StatefulSet's `spec.replicas` (read from the API
/// with `[kubernetes]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatefulSetMembers {
    pub name: String,
    pub service: String,
    pub namespace: String,
    pub port: u16,
    pub replicas: u32,
}

/// The audit log: checkpoint signing and retention.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The Ed25519 key (PKCS#8 PEM) that signs checkpoints; without it (or `signing_key`)
    /// none are written.
    pub key: Option<PathBuf>,
    /// The audit key in a PKCS#11 token instead (an Ed25519 key, named by a PKCS#11 URI).
    pub signing_key: Option<String>,
    /// The key's name, which is also the checkpoint origin (names the log).
    pub key_name: String,
    /// Where the latest signed checkpoint is published (written atomically).
    pub checkpoint_file: PathBuf,
    pub checkpoint_interval: Duration,
    pub retention: crate::domain::audit::RetentionPolicy,
    pub prune_interval: Duration,
    /// Records whose index entries are kept in memory before being written as one run
    /// (memory against the number of runs a query reads).
    pub index_segment_records: u64,
    /// The bytes the record store may take on its volume, when it shares the disk; without
    /// it, the file system's size and free space (the capacity forecast).
    pub volume_bytes: Option<u64>,
    /// `[audit.export]`: where the log is shipped.
    pub export: ExportConfig,
}

/// `[audit.export]`: sinks every record and checkpoint is shipped to, at least once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportConfig {
    /// Rotated JSON-lines files, for a log shipper (Fluent Bit, Vector).
    pub jsonl_dir: Option<PathBuf>,
    /// A file is rotated once it would grow past this.
    pub jsonl_max_file_bytes: u64,
    /// An OpenTelemetry Collector's OTLP/gRPC endpoint (`http://collector:4317`).
    pub otlp_endpoint: Option<String>,
    /// Opt-in: refuse issuance (UNAVAILABLE, which clients retry) while a sink is more than
    /// this many records behind...
    pub fail_closed_lag_records: Option<u64>,
    /// ...or its oldest unshipped record is older than this.
    pub fail_closed_lag: Option<Duration>,
    /// Also write each record as readable JSON (`record`) beside the stored bytes: for
    /// searching in Loki or Elasticsearch without decoding, at a CPU cost per record.
    pub readable_records: bool,
}

/// The admin listener: the audit API (and, later, metrics and health).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Client identities that may read on a non-loopback listener (mutual TLS): the audit
    /// API's queries, proofs and checkpoints, and `/ui`.
    pub allowed_identities: Vec<String>,
    /// Client identities that may also revoke, block and lift blocks (`meshroot revoke`).
    pub revokers: Vec<String>,
}

/// Limits on connections and what each may hold (`[connections]`), for the CSR listener and,
/// separately counted, the admin listener. They answer connection floods, silent and slow
/// sockets, and oversized or unfinished request bodies (docs/hardening.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Open connections at once on a listener; more are closed at accept.
    pub max_total: usize,
    /// Open connections at once from one peer address.
    pub max_per_peer: usize,
    /// TLS handshakes in progress at once from one peer address.
    pub max_handshakes_per_peer: usize,
    /// A connection that sends no byte this long after accept is closed (no handshake slot is
    /// taken before its first byte).
    pub first_byte_timeout: Duration,
    /// A TLS handshake that takes longer than this is abandoned.
    pub handshake_timeout: Duration,
    /// After TLS, a connection that sends no HTTP/2 preface this long is closed.
    pub preface_timeout: Duration,
    /// A connection on which nothing is read or written this long is closed (clients reconnect
    /// on their next request).
    pub idle_timeout: Duration,
    /// A connection on which a write makes no progress this long (its peer reads nothing) is
    /// closed, and what was queued for it freed.
    pub write_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection. ztunnel sends a whole node's requests over one
    /// connection, so a few requests waiting on a slow API must not hold up the rest; what a
    /// connection can buffer is bounded by its flow-control window, not by this.
    pub max_streams: u32,
    /// The largest gRPC request message accepted (a CSR request is a few KB).
    pub max_message_bytes: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_total: 4096,
            max_per_peer: 256,
            max_handshakes_per_peer: 64,
            first_byte_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            preface_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(30),
            max_streams: 1024,
            max_message_bytes: 64 * 1024,
        }
    }
}

/// Token-bucket limits (`[rate_limit]`); a zero rate means no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    pub per_caller: crate::domain::ratelimit::Rate,
    pub per_namespace: crate::domain::ratelimit::Rate,
    /// Unauthenticated refusals recorded one by one, per peer address and overall; beyond
    /// them, refusals are counted into periodic summary records.
    pub refusals_recorded_per_peer: crate::domain::ratelimit::Rate,
    pub refusals_recorded: crate::domain::ratelimit::Rate,
}

/// The elected replica's duties in the cluster meshroot runs in (`[kubernetes]`).
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// The mesh whose trust bundle and intermediate are published.
    pub mesh: String,
    pub access: ClusterAccess,
    /// Where the Lease and `istiod-tls` live.
    pub namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease.
    pub identity: String,
    pub lease_duration: Duration,
    /// Keep `istio-ca-root-cert` in namespaces.
    pub root_configmap: bool,
    /// Its name: Istio ≥ 1.27 can rename it (`values.global.trustBundleName`).
    pub root_configmap_name: String,
    /// The CRLs' ConfigMap's name: Istio ≥ 1.29 can rename it (`values.pilot.crlConfigMapName`).
    pub crl_configmap_name: String,
    /// Keep the ClusterTrustBundle `istio.io:istiod-ca:root-cert` (certificates.k8s.io/v1beta1).
    pub cluster_trust_bundle: bool,
    /// Only namespaces matching this label selector (empty: all).
    pub namespace_selector: String,
    /// Keep the `istiod-tls` Secret.
    pub istiod_tls: bool,
    pub istiod_revisions: Vec<String>,
    pub istiod_tls_ttl: Duration,
    pub resync: Duration,
}

#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub name: String,
    pub trust_domain: TrustDomain,
    /// Istio `cacerts` layout or `kubernetes.io/tls` layout.
    pub ca_dir: PathBuf,
    /// A PKCS#11 URI naming the intermediate's key in a token (`[pkcs11]`), which then stands
    /// instead of the key file in `ca_dir`: as configured, or as `ca_dir/ca-key.uri` says.
    pub signing_key: Option<String>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub token_issuers: Vec<TokenIssuerConfig>,
    /// Clusters whose API servers review tokens (and look up pods) for this mesh.
    pub clusters: Vec<ClusterConfig>,
    /// Whether a client certificate of this mesh authenticates its holder.
    pub client_cert_auth: bool,
    /// Accounts allowed to ask for `ImpersonatedIdentity` (node proxies).
    pub trusted_node_accounts: Vec<NodeAccount>,
    /// Other names of the trust domain accepted in requests (migration).
    pub trust_domain_aliases: Vec<TrustDomain>,
    pub alias_issuance: AliasIssuance,
    /// Roots added to the mesh's trust bundle (a new root during rotation, federated meshes).
    pub extra_roots: Vec<ExtraRoot>,
    /// Load a trust bundle even though unexpired certificates chain to none of its roots.
    pub force_root_removal: bool,
    /// The other meshes (by name) whose workloads this mesh's proxies accept as peers: their
    /// trust domains go into this mesh's `meshConfig.caCertificates[].trustDomains` and its
    /// trust-domain AuthorizationPolicy (`meshroot istio config`). Acceptance is one way.
    pub accepts: Vec<String>,
    /// `[[mesh.partner]]`: trust domains outside the shared root this mesh accepts, each
    /// reached through its SPIFFE bundle endpoint.
    pub partners: Vec<PartnerConfig>,
}

/// A partner trust domain of a mesh (docs/meshes.md, "Partners outside the shared root").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerConfig {
    pub trust_domain: TrustDomain,
    /// Its SPIFFE bundle endpoint (`https://`, the `https_web` profile).
    pub bundle_url: String,
    /// Roots that verify the endpoint's certificate (None: the system's roots).
    pub endpoint_ca: Option<PathBuf>,
    /// Cross-certificates of the partner's roots under our root, name-constrained to its trust
    /// domain (`meshroot partner certify`): what the mesh's proxies get instead of the
    /// partner's roots.
    pub cross_certificates: Option<PathBuf>,
    /// Publish the partner's fetched roots themselves to the mesh's proxies (for data planes
    /// that cannot take a name-constrained cross-certificate, ztunnel's): they can then vouch
    /// for any identity there. Logged at every start.
    pub unprotected: bool,
}

impl MeshConfig {
    /// The files of `extra_roots`, in order.
    pub(crate) fn extra_root_paths(&self) -> Vec<PathBuf> {
        self.extra_roots
            .iter()
            .map(|root| root.path.clone())
            .collect()
    }
}

/// A root added to a mesh's trust bundle. Being in the bundle lets workloads verify peers under
/// it; it authenticates callers (client certificates, admin mutual TLS) only for the trust
/// domains in `vouches_for`, none by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraRoot {
    pub path: PathBuf,
    pub vouches_for: Vec<TrustDomain>,
}

/// A Kubernetes cluster of a mesh.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The `clusterid` header value that selects this cluster.
    pub id: String,
    pub access: ClusterAccess,
    pub audiences: Vec<String>,
    pub review_timeout: Duration,
    pub review_cache_ttl: Duration,
    pub max_concurrent_reviews: usize,
    /// Keep this cluster's istiod intermediate in its `cacerts` Secret (the plug-in path).
    pub cacerts: Option<CacertsConfig>,
}

/// A cluster's `cacerts` Secret, kept by meshroot.
#[derive(Debug, Clone, PartialEq)]
pub struct CacertsConfig {
    /// Where the Secret lives (istiod's namespace).
    pub namespace: String,
    /// The intermediate's lifetime (clipped to the mesh signer's).
    pub lifetime: Duration,
    /// Renewed once this fraction of its lifetime has passed.
    pub renew_at: f64,
    /// istiod's TLS address (`host:15012`), asked which intermediate it serves; default for
    /// the cluster meshroot runs in: `istiod.<namespace>.svc:15012`.
    pub istiod_address: Option<String>,
    pub istiod_probe_interval: Duration,
}

/// How meshroot reaches a cluster's API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAccess {
    /// A kubeconfig file (remote clusters), optionally a context in it.
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
    },
    /// The pod's own service account (the cluster meshroot runs in).
    InCluster,
}

#[derive(Debug, Clone)]
pub struct TokenIssuerConfig {
    /// The `iss` claim.
    pub issuer: String,
    /// JWKS file with the issuer's public keys.
    pub jwks: PathBuf,
    pub audiences: Vec<String>,
    /// Only for a local development issuer: the ES256 key `meshroot token` signs with.
    pub dev_signing_key: Option<PathBuf>,
}

/// Every problem found in a config file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

/// One problem, at one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration {}:", self.file.display())?;
        for problem in &self.problems {
            write!(f, "\n  {}: {}", problem.key, problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Why the audit key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("audit key {key}: {reason}")]
    Key { key: String, reason: String },
    #[error("the audit key in a PKCS#11 token: {0}")]
    Token(#[source] crate::adapters::pkcs11::Pkcs11Error),
}

impl AuditKeyError {
    /// True when the audit key's token is missing (start again once it is back).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Token(error) if error.is_unavailable())
    }
}
