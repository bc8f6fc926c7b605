//! One typed, validated configuration: a TOML file plus a few environment overrides.
//!
//! Every setting is parsed before anything fails, and every problem is reported with its key and
//! the file it came from (style: linkerd2-proxy). Loading never binds a port or opens the store.
//! Relative paths are relative to the directory of the config file.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::authn::impersonation::NodeAccount;
use crate::authn::AuthenticatorKind;
use crate::clock::parse_duration;
use crate::identity::TrustDomain;
use crate::policy::AliasIssuance;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:15012";
pub const DEFAULT_DNS_NAMES: [&str; 2] = ["localhost", "meshroot.istio-system.svc"];
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
pub const DEFAULT_NODE_ACCOUNT: &str = "istio-system/ztunnel";
pub const DEFAULT_REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_REVIEW_CACHE_TTL: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_CONCURRENT_REVIEWS: usize = 32;
pub const DEFAULT_POD_CACHE_TTL: Duration = Duration::from_secs(5);
/// How long a stopping server waits for requests in flight (below Kubernetes' default 30 s
/// termination grace period, so the final flush and checkpoint still run before SIGKILL).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:15014";
/// A CSR request still unanswered after this is cancelled (CANCELLED, which clients retry).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Per authenticated caller: requests per second, and the burst (ztunnel asks for every pod
/// of its node at once when the node restarts).
pub const DEFAULT_CALLER_RATE: (f64, f64) = (20.0, 200.0);
/// Per namespace of the identities asked for.
pub const DEFAULT_NAMESPACE_RATE: (f64, f64) = (200.0, 2000.0);
/// Refusals of unauthenticated requests recorded one by one, per peer address (one a minute,
/// bursts of 10); the rest are counted into summary records.
pub const DEFAULT_REFUSALS_RECORDED_PER_PEER: (f64, f64) = (1.0 / 60.0, 10.0);
/// The same, over all peers together (one every 10 s, bursts of 60): with the summaries, a
/// flood costs the store at most about 1 KB/s (README, "Limits and hardening").
pub const DEFAULT_REFUSALS_RECORDED: (f64, f64) = (0.1, 60.0);
/// Where the Lease and `istiod-tls` live when neither the config nor `POD_NAMESPACE` says.
pub const DEFAULT_KUBERNETES_NAMESPACE: &str = "istio-system";
/// client-go's default `leaseDurationSeconds`.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Every namespace's ConfigMap and istiod's Secret are checked at least this often.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(600);
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 512;
pub const DEFAULT_MAX_CONCURRENT_HANDSHAKES: usize = 256;
pub const DEFAULT_STORE_CACHE_MIB: u64 = 64;
pub const DEFAULT_AUDIT_KEY_NAME: &str = "meshroot-audit";
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Environment variables that override the file.
pub const ENV_LISTEN: &str = "MESHROOT_LISTEN";
pub const ENV_STORE: &str = "MESHROOT_STORE";
pub const ENV_ADMIN_LISTEN: &str = "MESHROOT_ADMIN_LISTEN";

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
}

/// The audit log: checkpoint signing and retention.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The Ed25519 key (PKCS#8 PEM) that signs checkpoints; without it none are written.
    pub key: Option<PathBuf>,
    /// The key's name, which is also the checkpoint origin (names the log).
    pub key_name: String,
    /// Where the latest signed checkpoint is published (written atomically).
    pub checkpoint_file: PathBuf,
    pub checkpoint_interval: Duration,
    pub retention: crate::audit::RetentionPolicy,
    pub prune_interval: Duration,
    /// Records whose index entries are kept in memory before being written as one run
    /// (memory against the number of runs a query reads).
    pub index_segment_records: u64,
}

/// The admin listener: the audit API (and, later, metrics and health).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Client identities allowed on a non-loopback listener (mutual TLS).
    pub allowed_identities: Vec<String>,
}

/// Limits on connections and what each may hold (`[connections]`), for the CSR listener and,
/// separately counted, the admin listener. They answer connection floods, silent and slow
/// sockets, and oversized or unfinished request bodies (README, "Limits and hardening").
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
    /// Concurrent HTTP/2 streams per connection.
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
            max_streams: 32,
            max_message_bytes: 64 * 1024,
        }
    }
}

/// Token-bucket limits (`[rate_limit]`); a zero rate means no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    pub per_caller: crate::ratelimit::Rate,
    pub per_namespace: crate::ratelimit::Rate,
    /// Unauthenticated refusals recorded one by one, per peer address and overall; beyond
    /// them, refusals are counted into periodic summary records.
    pub refusals_recorded_per_peer: crate::ratelimit::Rate,
    pub refusals_recorded: crate::ratelimit::Rate,
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
}

impl MeshConfig {
    /// The files of `extra_roots`, in order.
    pub fn extra_root_paths(&self) -> Vec<PathBuf> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    dns_names: Option<Vec<String>>,
    serving_certificate_ttl: Option<String>,
    store: Option<String>,
    store_cache_mib: Option<u64>,
    max_concurrent_requests: Option<usize>,
    max_concurrent_handshakes: Option<usize>,
    authenticators: Option<Vec<String>>,
    pod_cache_ttl: Option<String>,
    shutdown_grace: Option<String>,
    request_timeout: Option<String>,
    rate_limit: Option<RawRateLimit>,
    connections: Option<RawConnections>,
    #[serde(default)]
    mesh: Vec<RawMesh>,
    audit: Option<RawAudit>,
    admin: Option<RawAdmin>,
    kubernetes: Option<RawKubernetes>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConnections {
    max_total: Option<usize>,
    max_per_peer: Option<usize>,
    max_handshakes_per_peer: Option<usize>,
    first_byte_timeout: Option<String>,
    handshake_timeout: Option<String>,
    preface_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_streams: Option<u32>,
    max_message_bytes: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_caller: Option<f64>,
    caller_burst: Option<f64>,
    per_namespace: Option<f64>,
    namespace_burst: Option<f64>,
    refusals_recorded_per_peer: Option<f64>,
    refusals_recorded_per_peer_burst: Option<f64>,
    refusals_recorded: Option<f64>,
    refusals_recorded_burst: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    mesh: Option<String>,
    kubeconfig: Option<String>,
    context: Option<String>,
    in_cluster: Option<bool>,
    namespace: Option<String>,
    lease_name: Option<String>,
    identity: Option<String>,
    lease_duration: Option<String>,
    root_configmap: Option<bool>,
    namespace_selector: Option<String>,
    istiod_tls: Option<bool>,
    istiod_revisions: Option<Vec<String>>,
    istiod_tls_ttl: Option<String>,
    resync: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    key: Option<String>,
    key_name: Option<String>,
    checkpoint_file: Option<String>,
    checkpoint_interval: Option<String>,
    issued_retention: Option<String>,
    denial_retention: Option<String>,
    prune_interval: Option<String>,
    index_segment_records: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    allowed_identities: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMesh {
    name: Option<String>,
    trust_domain: Option<String>,
    ca_dir: Option<String>,
    default_ttl: Option<String>,
    max_ttl: Option<String>,
    #[serde(default)]
    token_issuer: Vec<RawTokenIssuer>,
    #[serde(default)]
    cluster: Vec<RawCluster>,
    client_cert_auth: Option<bool>,
    trusted_node_accounts: Option<Vec<String>>,
    trust_domain_aliases: Option<Vec<String>>,
    alias_issuance: Option<String>,
    extra_roots: Option<Vec<RawExtraRoot>>,
    force_root_removal: Option<bool>,
}

/// `extra_roots` entries: a file, or `{ path = "...", vouches_for = ["trust.domain"] }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawExtraRoot {
    Path(String),
    Bound {
        path: String,
        #[serde(default)]
        vouches_for: Vec<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    id: Option<String>,
    kubeconfig: Option<String>,
    context: Option<String>,
    in_cluster: Option<bool>,
    audiences: Option<Vec<String>>,
    review_timeout: Option<String>,
    review_cache_ttl: Option<String>,
    max_concurrent_reviews: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenIssuer {
    issuer: Option<String>,
    jwks: Option<String>,
    audiences: Option<Vec<String>>,
    dev_signing_key: Option<String>,
}

impl Config {
    /// Reads and validates a config file, applying `MESHROOT_LISTEN` / `MESHROOT_STORE`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem {
                key: "(file)".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut config = Self::parse(&text, path, env(ENV_LISTEN), env(ENV_STORE))?;
        if let Some(admin) = env(ENV_ADMIN_LISTEN) {
            config.admin.listen = admin.parse().map_err(|_| ConfigError {
                file: path.to_owned(),
                problems: vec![Problem {
                    key: ENV_ADMIN_LISTEN.into(),
                    message: format!("{admin:?} is not an address:port"),
                }],
            })?;
        }
        Ok(config)
    }

    /// Parses config text; `path` names the file in errors and anchors relative paths.
    pub fn parse(
        text: &str,
        path: &Path,
        listen_override: Option<String>,
        store_override: Option<String>,
    ) -> Result<Self, ConfigError> {
        let fail = |problems| ConfigError {
            file: path.to_owned(),
            problems,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            fail(vec![Problem {
                key: "(syntax)".into(),
                message: e.to_string().trim().replace('\n', " "),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_owned();
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(Problem { key, message });

        let listen_text = listen_override
            .clone()
            .or(raw.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen_key = if listen_override.is_some() {
            ENV_LISTEN
        } else {
            "listen"
        };
        let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
            problem(
                listen_key.into(),
                format!("{listen_text:?} is not an address:port"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        });

        let dns_names = raw
            .dns_names
            .unwrap_or_else(|| DEFAULT_DNS_NAMES.iter().map(|s| s.to_string()).collect());
        if dns_names.is_empty() {
            problem(
                "dns_names".into(),
                "at least one DNS name is required".into(),
            );
        }
        for (index, name) in dns_names.iter().enumerate() {
            if !is_dns_name(name) {
                problem(
                    format!("dns_names[{index}]"),
                    format!("{name:?} is not a DNS name"),
                );
            }
        }
        let serving_certificate_ttl = duration_setting(
            raw.serving_certificate_ttl.as_deref(),
            DEFAULT_SERVING_TTL,
            "serving_certificate_ttl",
            &mut problem,
        );
        let store = match store_override.or(raw.store) {
            Some(store) => base.join(store),
            None => base.join("store"),
        };

        let mut at_least_one = |key: &str, value: Option<usize>, default: usize| {
            let value = value.unwrap_or(default);
            if value == 0 {
                problem(key.into(), "must be at least 1".into());
            }
            value
        };
        let max_concurrent_requests = at_least_one(
            "max_concurrent_requests",
            raw.max_concurrent_requests,
            DEFAULT_MAX_CONCURRENT_REQUESTS,
        );
        let max_concurrent_handshakes = at_least_one(
            "max_concurrent_handshakes",
            raw.max_concurrent_handshakes,
            DEFAULT_MAX_CONCURRENT_HANDSHAKES,
        );
        let store_cache_mib = raw.store_cache_mib.unwrap_or(DEFAULT_STORE_CACHE_MIB);
        if store_cache_mib < 8 {
            problem("store_cache_mib".into(), "must be at least 8".into());
        }
        let authenticators = match raw.authenticators {
            None => AuthenticatorKind::ALL.to_vec(),
            Some(names) => {
                let mut kinds = Vec::new();
                for (index, name) in names.iter().enumerate() {
                    match AuthenticatorKind::from_name(name) {
                        Some(kind) if !kinds.contains(&kind) => kinds.push(kind),
                        Some(_) => problem(
                            format!("authenticators[{index}]"),
                            format!("{name:?} is listed twice"),
                        ),
                        None => problem(
                            format!("authenticators[{index}]"),
                            format!(
                                "{name:?} is not one of \"client-cert\", \"jwt\", \"token-review\""
                            ),
                        ),
                    }
                }
                kinds
            }
        };
        let pod_cache_ttl = duration_setting(
            raw.pod_cache_ttl.as_deref(),
            DEFAULT_POD_CACHE_TTL,
            "pod_cache_ttl",
            &mut problem,
        );
        let shutdown_grace = duration_setting(
            raw.shutdown_grace.as_deref(),
            DEFAULT_SHUTDOWN_GRACE,
            "shutdown_grace",
            &mut problem,
        );
        let request_timeout = duration_setting(
            raw.request_timeout.as_deref(),
            DEFAULT_REQUEST_TIMEOUT,
            "request_timeout",
            &mut problem,
        );
        let raw_connections = raw.connections.unwrap_or_default();
        let defaults = ConnectionConfig::default();
        let mut count = |key: &str, value: Option<usize>, default: usize| {
            let value = value.unwrap_or(default);
            if value == 0 {
                problem(format!("connections.{key}"), "must be at least 1".into());
            }
            value
        };
        let mut connections = ConnectionConfig {
            max_total: count("max_total", raw_connections.max_total, defaults.max_total),
            max_per_peer: count(
                "max_per_peer",
                raw_connections.max_per_peer,
                defaults.max_per_peer,
            ),
            max_handshakes_per_peer: count(
                "max_handshakes_per_peer",
                raw_connections.max_handshakes_per_peer,
                defaults.max_handshakes_per_peer,
            ),
            max_streams: count(
                "max_streams",
                raw_connections.max_streams.map(|n| n as usize),
                defaults.max_streams as usize,
            ) as u32,
            max_message_bytes: defaults.max_message_bytes,
            ..defaults
        };
        connections.max_message_bytes = raw_connections
            .max_message_bytes
            .unwrap_or(defaults.max_message_bytes);
        if !(1024..=4 * 1024 * 1024).contains(&connections.max_message_bytes) {
            problem(
                "connections.max_message_bytes".into(),
                "must be between 1024 and 4194304".into(),
            );
        }
        for (key, text, slot) in [
            (
                "first_byte_timeout",
                raw_connections.first_byte_timeout.as_deref(),
                &mut connections.first_byte_timeout,
            ),
            (
                "handshake_timeout",
                raw_connections.handshake_timeout.as_deref(),
                &mut connections.handshake_timeout,
            ),
            (
                "preface_timeout",
                raw_connections.preface_timeout.as_deref(),
                &mut connections.preface_timeout,
            ),
            (
                "idle_timeout",
                raw_connections.idle_timeout.as_deref(),
                &mut connections.idle_timeout,
            ),
        ] {
            *slot = duration_setting(text, *slot, &format!("connections.{key}"), &mut problem);
        }
        let raw_rate = raw.rate_limit.unwrap_or_default();
        let mut rate = |per_second: Option<f64>,
                        burst: Option<f64>,
                        default: (f64, f64),
                        (rate_key, burst_key): (&str, &str)| {
            let per_second = per_second.unwrap_or(default.0);
            let burst = burst.unwrap_or(if per_second == default.0 {
                default.1
            } else {
                (per_second * 10.0).max(1.0)
            });
            if !(per_second.is_finite() && per_second >= 0.0) {
                problem(
                    format!("rate_limit.{rate_key}"),
                    "must be 0 (no limit) or a positive rate".into(),
                );
            } else if per_second > 0.0 && !(burst.is_finite() && burst >= 1.0) {
                problem(
                    format!("rate_limit.{burst_key}"),
                    "must be at least 1".into(),
                );
            }
            crate::ratelimit::Rate { per_second, burst }
        };
        let rate_limit = RateLimitConfig {
            per_caller: rate(
                raw_rate.per_caller,
                raw_rate.caller_burst,
                DEFAULT_CALLER_RATE,
                ("per_caller", "caller_burst"),
            ),
            per_namespace: rate(
                raw_rate.per_namespace,
                raw_rate.namespace_burst,
                DEFAULT_NAMESPACE_RATE,
                ("per_namespace", "namespace_burst"),
            ),
            refusals_recorded_per_peer: rate(
                raw_rate.refusals_recorded_per_peer,
                raw_rate.refusals_recorded_per_peer_burst,
                DEFAULT_REFUSALS_RECORDED_PER_PEER,
                (
                    "refusals_recorded_per_peer",
                    "refusals_recorded_per_peer_burst",
                ),
            ),
            refusals_recorded: rate(
                raw_rate.refusals_recorded,
                raw_rate.refusals_recorded_burst,
                DEFAULT_REFUSALS_RECORDED,
                ("refusals_recorded", "refusals_recorded_burst"),
            ),
        };
        let mut cluster_ids = HashSet::new();
        if raw.mesh.is_empty() {
            problem("mesh".into(), "at least one [[mesh]] is required".into());
        }
        let mut meshes = Vec::new();
        let mut names = HashSet::new();
        let mut trust_domains = HashSet::new();
        let mut issuers = HashSet::new();
        for (index, mesh) in raw.mesh.into_iter().enumerate() {
            let key = |field: &str| format!("mesh[{index}].{field}");
            let name = match mesh.name {
                Some(name) if is_mesh_name(&name) => name,
                Some(name) => {
                    problem(
                        key("name"),
                        format!("{name:?}: use lowercase letters, digits and '-'"),
                    );
                    name
                }
                None => {
                    problem(key("name"), "is required".into());
                    String::new()
                }
            };
            if !name.is_empty() && !names.insert(name.clone()) {
                problem(key("name"), format!("mesh {name:?} is defined twice"));
            }
            let trust_domain_text = mesh
                .trust_domain
                .unwrap_or_else(|| "cluster.local".to_owned());
            let trust_domain = match TrustDomain::new(&trust_domain_text) {
                Ok(td) => {
                    if !trust_domains.insert(td.clone()) {
                        problem(
                            key("trust_domain"),
                            format!("{trust_domain_text:?} is already used by another mesh"),
                        );
                    }
                    Some(td)
                }
                Err(e) => {
                    problem(key("trust_domain"), format!("{trust_domain_text:?}: {e}"));
                    None
                }
            };
            let ca_dir = match mesh.ca_dir {
                Some(dir) => base.join(dir),
                None => {
                    problem(key("ca_dir"), "is required".into());
                    PathBuf::new()
                }
            };
            let default_ttl = duration_setting(
                mesh.default_ttl.as_deref(),
                DEFAULT_TTL,
                &key("default_ttl"),
                &mut problem,
            );
            let max_ttl = duration_setting(
                mesh.max_ttl.as_deref(),
                DEFAULT_MAX_TTL,
                &key("max_ttl"),
                &mut problem,
            );
            if default_ttl > max_ttl {
                problem(key("default_ttl"), "must not exceed max_ttl".into());
            }
            let mut token_issuers = Vec::new();
            for (issuer_index, raw_issuer) in mesh.token_issuer.into_iter().enumerate() {
                let key =
                    |field: &str| format!("mesh[{index}].token_issuer[{issuer_index}].{field}");
                let issuer = raw_issuer.issuer.unwrap_or_default();
                if issuer.is_empty() {
                    problem(key("issuer"), "is required".into());
                } else if !issuers.insert(issuer.clone()) {
                    problem(
                        key("issuer"),
                        format!("{issuer:?} is configured twice; an issuer belongs to one mesh"),
                    );
                }
                let jwks = match raw_issuer.jwks {
                    Some(jwks) => base.join(jwks),
                    None => {
                        problem(key("jwks"), "is required".into());
                        PathBuf::new()
                    }
                };
                let audiences = raw_issuer
                    .audiences
                    .unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_owned()]);
                if audiences.is_empty() || audiences.iter().any(String::is_empty) {
                    problem(key("audiences"), "must hold non-empty audiences".into());
                }
                token_issuers.push(TokenIssuerConfig {
                    issuer,
                    jwks,
                    audiences,
                    dev_signing_key: raw_issuer.dev_signing_key.map(|p| base.join(p)),
                });
            }
            let mut clusters = Vec::new();
            for (cluster_index, raw_cluster) in mesh.cluster.into_iter().enumerate() {
                let key = |field: &str| format!("mesh[{index}].cluster[{cluster_index}].{field}");
                let id = raw_cluster
                    .id
                    .unwrap_or_else(|| DEFAULT_CLUSTER_ID.to_owned());
                if !cluster_ids.insert(id.clone()) {
                    problem(
                        key("id"),
                        format!(
                            "cluster id {id:?} is configured twice; a cluster belongs to one mesh"
                        ),
                    );
                }
                let access = cluster_access(
                    raw_cluster.kubeconfig,
                    raw_cluster.context,
                    raw_cluster.in_cluster.unwrap_or(false),
                    &base,
                    &key("kubeconfig"),
                    &mut problem,
                );
                let audiences = raw_cluster
                    .audiences
                    .unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_owned()]);
                if audiences.is_empty() || audiences.iter().any(String::is_empty) {
                    problem(key("audiences"), "must hold non-empty audiences".into());
                }
                let max_concurrent_reviews = raw_cluster
                    .max_concurrent_reviews
                    .unwrap_or(DEFAULT_MAX_CONCURRENT_REVIEWS);
                if max_concurrent_reviews == 0 {
                    problem(key("max_concurrent_reviews"), "must be at least 1".into());
                }
                clusters.push(ClusterConfig {
                    id,
                    access,
                    audiences,
                    review_timeout: duration_setting(
                        raw_cluster.review_timeout.as_deref(),
                        DEFAULT_REVIEW_TIMEOUT,
                        &key("review_timeout"),
                        &mut problem,
                    ),
                    review_cache_ttl: duration_setting(
                        raw_cluster.review_cache_ttl.as_deref(),
                        DEFAULT_REVIEW_CACHE_TTL,
                        &key("review_cache_ttl"),
                        &mut problem,
                    ),
                    max_concurrent_reviews,
                });
            }
            let mut trust_domain_aliases = Vec::new();
            for (alias_index, text) in mesh
                .trust_domain_aliases
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let alias_key = format!("mesh[{index}].trust_domain_aliases[{alias_index}]");
                match TrustDomain::new(text) {
                    Ok(alias) if Some(&alias) == trust_domain.as_ref() => problem(
                        alias_key,
                        format!("{text:?} is the mesh's own trust domain"),
                    ),
                    Ok(alias) => {
                        // A name must point at one mesh, or client certificates and
                        // impersonation could not tell which mesh a workload belongs to.
                        if !trust_domains.insert(alias.clone()) {
                            problem(
                                alias_key,
                                format!("{text:?} is already used by another mesh"),
                            );
                        } else {
                            trust_domain_aliases.push(alias);
                        }
                    }
                    Err(e) => problem(alias_key, format!("{text:?}: {e}")),
                }
            }
            let alias_issuance = match mesh.alias_issuance.as_deref() {
                None | Some("as-requested") => AliasIssuance::AsRequested,
                Some("canonical") => AliasIssuance::Canonical,
                Some(other) => {
                    problem(
                        key("alias_issuance"),
                        format!("{other:?} is not \"as-requested\" or \"canonical\""),
                    );
                    AliasIssuance::AsRequested
                }
            };
            let mut extra_roots = Vec::new();
            for (root_index, root) in mesh.extra_roots.unwrap_or_default().into_iter().enumerate() {
                let (path, vouches) = match root {
                    RawExtraRoot::Path(path) => (path, Vec::new()),
                    RawExtraRoot::Bound { path, vouches_for } => (path, vouches_for),
                };
                let mut vouches_for = Vec::new();
                for (td_index, text) in vouches.iter().enumerate() {
                    match TrustDomain::new(text) {
                        Ok(trust_domain) => vouches_for.push(trust_domain),
                        Err(e) => problem(
                            format!(
                                "mesh[{index}].extra_roots[{root_index}].vouches_for[{td_index}]"
                            ),
                            format!("{text:?}: {e}"),
                        ),
                    }
                }
                extra_roots.push(ExtraRoot {
                    path: base.join(path),
                    vouches_for,
                });
            }
            let mut trusted_node_accounts = Vec::new();
            let accounts_configured = mesh.trusted_node_accounts.is_some();
            let accounts = mesh
                .trusted_node_accounts
                .unwrap_or_else(|| vec![DEFAULT_NODE_ACCOUNT.to_owned()]);
            // Node proxies configured to impersonate must be able to: their pod is confirmed in
            // one of the mesh's clusters, and some token authenticator must accept their token.
            if accounts_configured && !accounts.is_empty() {
                let token_authenticator = authenticators.contains(&AuthenticatorKind::TokenReview)
                    || (authenticators.contains(&AuthenticatorKind::Jwt)
                        && !token_issuers.is_empty());
                if clusters.is_empty() {
                    problem(
                        key("trusted_node_accounts"),
                        "node proxies' impersonation needs a [[mesh.cluster]] to confirm their \
                         pods in; add one, or set trusted_node_accounts = []"
                            .into(),
                    );
                } else if !token_authenticator {
                    problem(
                        key("trusted_node_accounts"),
                        "no authenticator in `authenticators` accepts this mesh's node proxies' \
                         tokens (add \"token-review\", or \"jwt\" with a [[mesh.token_issuer]])"
                            .into(),
                    );
                }
            }
            for (account_index, text) in accounts.iter().enumerate() {
                match NodeAccount::parse(text) {
                    Some(account) => trusted_node_accounts.push(account),
                    None => problem(
                        format!("mesh[{index}].trusted_node_accounts[{account_index}]"),
                        format!("{text:?} is not <namespace>/<service-account>"),
                    ),
                }
            }
            if let Some(trust_domain) = trust_domain {
                meshes.push(MeshConfig {
                    name,
                    trust_domain,
                    ca_dir,
                    default_ttl,
                    max_ttl,
                    token_issuers,
                    clusters,
                    client_cert_auth: mesh.client_cert_auth.unwrap_or(false),
                    trusted_node_accounts,
                    trust_domain_aliases,
                    alias_issuance,
                    extra_roots,
                    force_root_removal: mesh.force_root_removal.unwrap_or(false),
                });
            }
        }
        // A mesh's extra root may vouch for its own trust domains or foreign ones (a partner's
        // auditors on the admin port), never for another mesh's: that mesh's own issuers do.
        for (index, mesh) in meshes.iter().enumerate() {
            for (root_index, root) in mesh.extra_roots.iter().enumerate() {
                for trust_domain in &root.vouches_for {
                    let owner = meshes.iter().find(|other| {
                        other.name != mesh.name
                            && (other.trust_domain == *trust_domain
                                || other.trust_domain_aliases.contains(trust_domain))
                    });
                    if let Some(owner) = owner {
                        problem(
                            format!("mesh[{index}].extra_roots[{root_index}].vouches_for"),
                            format!(
                                "{trust_domain} is mesh {:?}'s trust domain; only that mesh's own intermediates or extra roots may vouch for it",
                                owner.name
                            ),
                        );
                    }
                }
            }
        }
        let raw_audit = raw.audit.unwrap_or_default();
        let defaults = crate::audit::RetentionPolicy::default();
        let audit = AuditConfig {
            key: raw_audit.key.map(|key| base.join(key)),
            key_name: raw_audit
                .key_name
                .unwrap_or_else(|| DEFAULT_AUDIT_KEY_NAME.to_owned()),
            checkpoint_file: base.join(
                raw_audit
                    .checkpoint_file
                    .unwrap_or_else(|| "checkpoint.txt".to_owned()),
            ),
            checkpoint_interval: duration_setting(
                raw_audit.checkpoint_interval.as_deref(),
                DEFAULT_CHECKPOINT_INTERVAL,
                "audit.checkpoint_interval",
                &mut problem,
            ),
            retention: crate::audit::RetentionPolicy {
                issued_after_expiry: duration_setting(
                    raw_audit.issued_retention.as_deref(),
                    defaults.issued_after_expiry,
                    "audit.issued_retention",
                    &mut problem,
                ),
                denials: duration_setting(
                    raw_audit.denial_retention.as_deref(),
                    defaults.denials,
                    "audit.denial_retention",
                    &mut problem,
                ),
            },
            prune_interval: duration_setting(
                raw_audit.prune_interval.as_deref(),
                DEFAULT_PRUNE_INTERVAL,
                "audit.prune_interval",
                &mut problem,
            ),
            index_segment_records: raw_audit
                .index_segment_records
                .unwrap_or(crate::audit::SEGMENT_RECORDS),
        };
        if !(16..=1 << 20).contains(&audit.index_segment_records) {
            problem(
                "audit.index_segment_records".into(),
                format!(
                    "{} is not between 16 and 1048576",
                    audit.index_segment_records
                ),
            );
        }
        if audit.key_name.is_empty()
            || audit
                .key_name
                .chars()
                .any(|c| c.is_whitespace() || c == '+')
        {
            problem(
                "audit.key_name".into(),
                format!("{:?}: a name without spaces or '+'", audit.key_name),
            );
        }
        let raw_admin = raw.admin.unwrap_or_default();
        let admin_text = raw_admin
            .listen
            .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_owned());
        let admin_listen = admin_text.parse::<SocketAddr>().unwrap_or_else(|_| {
            problem(
                "admin.listen".into(),
                format!("{admin_text:?} is not an address:port"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        let allowed_identities = raw_admin.allowed_identities.unwrap_or_default();
        for (index, identity) in allowed_identities.iter().enumerate() {
            if crate::identity::SpiffeId::parse(identity).is_err() {
                problem(
                    format!("admin.allowed_identities[{index}]"),
                    format!("{identity:?} is not a spiffe://<td>/ns/<ns>/sa/<sa> identity"),
                );
            }
        }
        if !admin_listen.ip().is_loopback() && allowed_identities.is_empty() {
            problem(
                "admin.allowed_identities".into(),
                "required when admin.listen is not a loopback address (the audit API then \
                 requires mutual TLS from one of these identities)"
                    .into(),
            );
        }
        let kubernetes = raw.kubernetes.map(|raw| {
            let mesh = raw
                .mesh
                .or_else(|| meshes.first().map(|m| m.name.clone()))
                .unwrap_or_default();
            if !meshes.iter().any(|m| m.name == mesh) {
                problem(
                    "kubernetes.mesh".into(),
                    format!("{mesh:?} is not a configured [[mesh]]"),
                );
            }
            // In-cluster unless a kubeconfig is named.
            let in_cluster = raw.in_cluster.unwrap_or(raw.kubeconfig.is_none());
            let access = cluster_access(
                raw.kubeconfig,
                raw.context,
                in_cluster,
                &base,
                "kubernetes.kubeconfig",
                &mut problem,
            );
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let namespace = raw
                .namespace
                .or_else(|| env("POD_NAMESPACE"))
                .unwrap_or_else(|| DEFAULT_KUBERNETES_NAMESPACE.to_owned());
            let identity = raw
                .identity
                .or_else(|| env("POD_NAME"))
                .or_else(|| env("HOSTNAME"))
                .or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                })
                .unwrap_or_default();
            if identity.is_empty() {
                problem(
                    "kubernetes.identity".into(),
                    "required when neither POD_NAME nor HOSTNAME is set".into(),
                );
            }
            for (field, value) in [("namespace", &namespace)] {
                if !is_mesh_name(value) {
                    problem(
                        format!("kubernetes.{field}"),
                        format!("{value:?} is not a Kubernetes namespace name"),
                    );
                }
            }
            let revisions = raw
                .istiod_revisions
                .unwrap_or_else(|| vec!["default".to_owned()]);
            for (index, revision) in revisions.iter().enumerate() {
                if !is_mesh_name(revision) {
                    problem(
                        format!("kubernetes.istiod_revisions[{index}]"),
                        format!("{revision:?} is not a revision name"),
                    );
                }
            }
            let mut duration = |text: Option<String>, default, key: &str| {
                duration_setting(text.as_deref(), default, key, &mut problem)
            };
            KubernetesConfig {
                mesh,
                access,
                namespace,
                lease_name: raw.lease_name.unwrap_or_else(|| "meshroot".to_owned()),
                identity,
                lease_duration: duration(
                    raw.lease_duration,
                    DEFAULT_LEASE_DURATION,
                    "kubernetes.lease_duration",
                ),
                root_configmap: raw.root_configmap.unwrap_or(true),
                namespace_selector: raw.namespace_selector.unwrap_or_default(),
                istiod_tls: raw.istiod_tls.unwrap_or(true),
                istiod_revisions: revisions,
                istiod_tls_ttl: duration(
                    raw.istiod_tls_ttl,
                    DEFAULT_SERVING_TTL,
                    "kubernetes.istiod_tls_ttl",
                ),
                resync: duration(raw.resync, DEFAULT_RESYNC, "kubernetes.resync"),
            }
        });
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok(Self {
            source: path.to_owned(),
            listen,
            dns_names,
            serving_certificate_ttl,
            store,
            store_cache_mib,
            max_concurrent_requests,
            max_concurrent_handshakes,
            authenticators,
            pod_cache_ttl,
            shutdown_grace,
            request_timeout,
            rate_limit,
            connections,
            meshes,
            audit,
            admin: AdminConfig {
                listen: admin_listen,
                allowed_identities,
            },
            kubernetes,
        })
    }

    pub fn mesh(&self, name: &str) -> Option<&MeshConfig> {
        self.meshes.iter().find(|m| m.name == name)
    }
}

/// `kubeconfig` (+ `context`) or `in_cluster = true`: exactly one of them.
fn cluster_access(
    kubeconfig: Option<String>,
    context: Option<String>,
    in_cluster: bool,
    base: &Path,
    key: &str,
    problem: &mut impl FnMut(String, String),
) -> ClusterAccess {
    match (kubeconfig, in_cluster) {
        (Some(path), false) => ClusterAccess::Kubeconfig {
            path: base.join(path),
            context,
        },
        (None, true) => ClusterAccess::InCluster,
        (Some(_), true) => {
            problem(
                key.to_owned(),
                "give either kubeconfig or in_cluster = true, not both".into(),
            );
            ClusterAccess::InCluster
        }
        (None, false) => {
            problem(
                key.to_owned(),
                "a kubeconfig file, or in_cluster = true, is required".into(),
            );
            ClusterAccess::InCluster
        }
    }
}

fn duration_setting(
    text: Option<&str>,
    default: Duration,
    key: &str,
    problem: &mut impl FnMut(String, String),
) -> Duration {
    match text {
        None => default,
        Some(text) => match parse_duration(text) {
            Some(d) if !d.is_zero() => d,
            _ => {
                problem(
                    key.to_owned(),
                    format!("{text:?} is not a positive duration like \"24h\", \"7d\", \"90m\""),
                );
                default
            }
        },
    }
}

fn is_mesh_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// RFC 1123 host names (letters, digits, '-', dot-separated labels of 1–63 characters).
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/meshroot/meshroot.toml"), None, None)
    }

    const MINIMAL: &str = r#"
        [[mesh]]
        name = "default"
        ca_dir = "cacerts"
    "#;

    #[test]
    fn fills_defaults_and_anchors_paths_at_the_config_directory() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.store, PathBuf::from("/etc/meshroot/store"));
        let mesh = &config.meshes[0];
        assert_eq!(mesh.trust_domain.as_str(), "cluster.local");
        assert_eq!(mesh.ca_dir, PathBuf::from("/etc/meshroot/cacerts"));
        assert_eq!(mesh.default_ttl, DEFAULT_TTL);
        assert_eq!(mesh.max_ttl, DEFAULT_MAX_TTL);
    }

    #[test]
    fn reports_every_bad_key_at_once() {
        let error = parse(
            r#"
            listen = "nowhere"
            dns_names = ["bad name"]
            [[mesh]]
            name = "Default"
            trust_domain = "Upper.Case"
            default_ttl = "forever"
            [[mesh.token_issuer]]
            audiences = []
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listen",
                "dns_names[0]",
                "mesh[0].name",
                "mesh[0].trust_domain",
                "mesh[0].ca_dir",
                "mesh[0].default_ttl",
                "mesh[0].token_issuer[0].issuer",
                "mesh[0].token_issuer[0].jwks",
                "mesh[0].token_issuer[0].audiences",
            ]
        );
        assert!(error.to_string().contains("/etc/meshroot/meshroot.toml"));
    }

    #[test]
    fn refuses_duplicate_meshes_trust_domains_and_issuers() {
        let error = parse(
            r#"
            [[mesh]]
            name = "a"
            ca_dir = "a"
            [[mesh.token_issuer]]
            issuer = "https://k8s"
            jwks = "a.json"
            [[mesh]]
            name = "a"
            ca_dir = "b"
            [[mesh.token_issuer]]
            issuer = "https://k8s"
            jwks = "b.json"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "mesh[1].name",
                "mesh[1].trust_domain",
                "mesh[1].token_issuer[0].issuer"
            ]
        );
    }

    #[test]
    fn reads_clusters_authenticator_order_and_node_accounts() {
        let config = parse(
            r#"
            authenticators = ["token-review", "client-cert"]
            [[mesh]]
            name = "default"
            ca_dir = "cacerts"
            client_cert_auth = true
            [[mesh.cluster]]
            in_cluster = true
            [[mesh.cluster]]
            id = "west"
            kubeconfig = "west.kubeconfig"
            context = "admin@west"
            review_cache_ttl = "30s"
            "#,
        )
        .unwrap();
        assert_eq!(
            config.authenticators,
            [
                AuthenticatorKind::TokenReview,
                AuthenticatorKind::ClientCert
            ]
        );
        let mesh = &config.meshes[0];
        assert!(mesh.client_cert_auth);
        assert_eq!(
            mesh.trusted_node_accounts,
            [NodeAccount::parse(DEFAULT_NODE_ACCOUNT).unwrap()]
        );
        assert_eq!(mesh.clusters[0].id, DEFAULT_CLUSTER_ID);
        assert_eq!(mesh.clusters[0].access, ClusterAccess::InCluster);
        assert_eq!(mesh.clusters[0].review_cache_ttl, DEFAULT_REVIEW_CACHE_TTL);
        assert_eq!(
            mesh.clusters[1].access,
            ClusterAccess::Kubeconfig {
                path: PathBuf::from("/etc/meshroot/west.kubeconfig"),
                context: Some("admin@west".into())
            }
        );
        assert_eq!(mesh.clusters[1].review_cache_ttl, Duration::from_secs(30));
    }

    #[test]
    fn refuses_bad_clusters_and_authenticators() {
        let error = parse(
            r#"
            authenticators = ["jwt", "oidc", "jwt"]
            [[mesh]]
            name = "a"
            ca_dir = "a"
            trusted_node_accounts = ["ztunnel"]
            [[mesh.cluster]]
            [[mesh]]
            name = "b"
            trust_domain = "b.example"
            ca_dir = "b"
            [[mesh.cluster]]
            in_cluster = true
            kubeconfig = "x"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "authenticators[1]",
                "authenticators[2]",
                "mesh[0].cluster[0].kubeconfig",
                // Only jwt, and no token issuer: nothing accepts a node proxy's token.
                "mesh[0].trusted_node_accounts",
                "mesh[0].trusted_node_accounts[0]",
                "mesh[1].cluster[0].id",
                "mesh[1].cluster[0].kubeconfig",
            ]
        );
    }

    #[test]
    fn refuses_node_accounts_whose_impersonation_could_never_work() {
        let error = parse(
            r#"
            [[mesh]]
            name = "a"
            ca_dir = "a"
            trusted_node_accounts = ["istio-system/ztunnel"]
            [[mesh]]
            name = "b"
            trust_domain = "b.example"
            ca_dir = "b"
            trusted_node_accounts = []
            "#,
        )
        .unwrap_err();
        let problems: Vec<(&str, &str)> = error
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "mesh[0].trusted_node_accounts");
        assert!(problems[0].1.contains("[[mesh.cluster]]"), "{problems:?}");

        // With a cluster, either token authenticator will do, in any order.
        for authenticators in [
            r#"["jwt", "token-review"]"#,
            r#"["token-review", "jwt"]"#,
            r#"["token-review"]"#,
        ] {
            let config = parse(&format!(
                r#"
                authenticators = {authenticators}
                [[mesh]]
                name = "a"
                ca_dir = "a"
                trusted_node_accounts = ["istio-system/ztunnel"]
                [[mesh.cluster]]
                id = "west"
                in_cluster = true
                "#
            ));
            assert!(config.is_ok(), "{authenticators}: {:?}", config.err());
        }
    }

    #[test]
    fn an_extra_root_vouches_only_for_trust_domains_named_for_it_and_never_another_meshs() {
        let config = parse(
            r#"
            [[mesh]]
            name = "a"
            ca_dir = "a"
            trust_domain = "a.example"
            extra_roots = ["next.pem", { path = "partner.pem", vouches_for = ["partner.example"] }]
            "#,
        )
        .unwrap();
        assert_eq!(
            config.meshes[0].extra_roots[1],
            ExtraRoot {
                path: PathBuf::from("/etc/meshroot/partner.pem"),
                vouches_for: vec![TrustDomain::new("partner.example").unwrap()],
            }
        );
        assert!(config.meshes[0].extra_roots[0].vouches_for.is_empty());

        let error = parse(
            r#"
            [[mesh]]
            name = "a"
            ca_dir = "a"
            trust_domain = "a.example"
            extra_roots = [{ path = "b-root.pem", vouches_for = ["b.example", "Not Valid"] }]
            [[mesh]]
            name = "b"
            ca_dir = "b"
            trust_domain = "b.example"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "mesh[0].extra_roots[0].vouches_for[1]",
                "mesh[0].extra_roots[0].vouches_for"
            ],
            "{error}"
        );
    }

    #[test]
    fn aliases_name_one_mesh_only_and_issuance_modes_are_checked() {
        let config = parse(
            r#"
            [[mesh]]
            name = "a"
            ca_dir = "a"
            trust_domain = "example.com"
            trust_domain_aliases = ["cluster.local"]
            alias_issuance = "canonical"
            extra_roots = ["new-root.pem"]
            "#,
        )
        .unwrap();
        let mesh = &config.meshes[0];
        assert_eq!(
            mesh.trust_domain_aliases,
            [TrustDomain::new("cluster.local").unwrap()]
        );
        assert_eq!(mesh.alias_issuance, AliasIssuance::Canonical);
        assert_eq!(
            mesh.extra_roots,
            [ExtraRoot {
                path: PathBuf::from("/etc/meshroot/new-root.pem"),
                vouches_for: Vec::new(),
            }]
        );

        let error = parse(
            r#"
            [[mesh]]
            name = "a"
            ca_dir = "a"
            trust_domain = "a.example"
            trust_domain_aliases = ["a.example", "b.example"]
            alias_issuance = "sometimes"
            [[mesh]]
            name = "b"
            ca_dir = "b"
            trust_domain = "c.example"
            trust_domain_aliases = ["b.example"]
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "mesh[0].trust_domain_aliases[0]",
                "mesh[0].alias_issuance",
                "mesh[1].trust_domain_aliases[0]",
            ]
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let error = parse("listn = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(error.to_string().contains("listn"), "{error}");
    }

    #[test]
    fn environment_overrides_listen_and_store() {
        let config = Config::parse(
            MINIMAL,
            Path::new("/x/m.toml"),
            Some("127.0.0.1:9".into()),
            Some("/var/lib/meshroot".into()),
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9);
        assert_eq!(config.store, PathBuf::from("/var/lib/meshroot"));
        let error =
            Config::parse(MINIMAL, Path::new("/x/m.toml"), Some("bad".into()), None).unwrap_err();
        assert_eq!(error.problems[0].key, ENV_LISTEN);
    }

    #[test]
    fn kubernetes_duties_default_to_in_cluster_and_name_their_problems() {
        let config = parse(&format!(
            "{MINIMAL}\n[kubernetes]\nidentity = \"meshroot-0\"\nnamespace = \"mesh-system\"\n"
        ))
        .unwrap();
        let kubernetes = config.kubernetes.unwrap();
        assert_eq!(kubernetes.mesh, "default", "the first mesh");
        assert_eq!(kubernetes.access, ClusterAccess::InCluster);
        assert_eq!(kubernetes.namespace, "mesh-system");
        assert_eq!(kubernetes.lease_name, "meshroot");
        assert_eq!(kubernetes.lease_duration, DEFAULT_LEASE_DURATION);
        assert!(kubernetes.root_configmap && kubernetes.istiod_tls);
        assert_eq!(kubernetes.istiod_revisions, ["default"]);
        assert!(
            parse(MINIMAL).unwrap().kubernetes.is_none(),
            "off unless asked for"
        );

        let error = parse(&format!(
            "{MINIMAL}\n[kubernetes]\nmesh = \"other\"\nidentity = \"x\"\nnamespace = \"Bad_NS\"\n\
             lease_duration = \"soon\"\nistiod_revisions = [\"1.x\"]\nkubeconfig = \"k\"\nin_cluster = true\n"
        ))
        .unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "kubernetes.mesh",
                "kubernetes.kubeconfig",
                "kubernetes.namespace",
                "kubernetes.istiod_revisions[0]",
                "kubernetes.lease_duration"
            ]
        );
    }
}
