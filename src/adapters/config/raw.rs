//! The TOML file as written: every key optional, unknown keys refused. `parse` turns it into
//! a [`Config`](super::Config).

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<String>,
    pub(super) dns_names: Option<Vec<String>>,
    pub(super) serving_certificate_ttl: Option<String>,
    pub(super) store: Option<String>,
    pub(super) store_cache_mib: Option<u64>,
    pub(super) leaf_signature_sample: Option<u64>,
    pub(super) max_concurrent_requests: Option<usize>,
    pub(super) max_concurrent_handshakes: Option<usize>,
    pub(super) authenticators: Option<Vec<String>>,
    pub(super) pod_cache_ttl: Option<String>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) rate_limit: Option<RawRateLimit>,
    pub(super) connections: Option<RawConnections>,
    #[serde(default)]
    pub(super) mesh: Vec<RawMesh>,
    pub(super) audit: Option<RawAudit>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) kubernetes: Option<RawKubernetes>,
    pub(super) replicas: Option<RawReplicas>,
    /// The old name of `[replicas]`, read for one more release with a deprecation warning.
    pub(super) cluster: Option<RawReplicas>,
    pub(super) revocation: Option<RawRevocation>,
    pub(super) bundle_endpoint: Option<RawBundleEndpoint>,
    pub(super) pkcs11: Option<RawPkcs11>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPkcs11 {
    pub(super) module: Option<String>,
    pub(super) pin_file: Option<String>,
    pub(super) pin_env: Option<String>,
    pub(super) sessions: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBundleEndpoint {
    pub(super) listen: Option<String>,
    pub(super) refresh_hint: Option<String>,
    pub(super) certificate: Option<String>,
    pub(super) key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRevocation {
    pub(super) crl_file: Option<String>,
    pub(super) crl_validity: Option<String>,
    pub(super) extra_crls: Option<Vec<String>>,
    pub(super) crl_url: Option<String>,
    pub(super) block_for: Option<String>,
    pub(super) configmap: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplicas {
    pub(super) members: Option<Vec<String>>,
    pub(super) statefulset: Option<String>,
    pub(super) service: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) replicas: Option<u32>,
    pub(super) port: Option<u16>,
    #[serde(rename = "self")]
    pub(super) this_member: Option<String>,
    pub(super) identity: Option<String>,
    pub(super) member_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnections {
    pub(super) max_total: Option<usize>,
    pub(super) max_per_peer: Option<usize>,
    pub(super) max_handshakes_per_peer: Option<usize>,
    pub(super) first_byte_timeout: Option<String>,
    pub(super) handshake_timeout: Option<String>,
    pub(super) preface_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) write_timeout: Option<String>,
    pub(super) max_streams: Option<u32>,
    pub(super) max_message_bytes: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) per_caller: Option<f64>,
    pub(super) caller_burst: Option<f64>,
    pub(super) per_namespace: Option<f64>,
    pub(super) namespace_burst: Option<f64>,
    pub(super) refusals_recorded_per_peer: Option<f64>,
    pub(super) refusals_recorded_per_peer_burst: Option<f64>,
    pub(super) refusals_recorded: Option<f64>,
    pub(super) refusals_recorded_burst: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    pub(super) mesh: Option<String>,
    pub(super) kubeconfig: Option<String>,
    pub(super) context: Option<String>,
    pub(super) in_cluster: Option<bool>,
    pub(super) namespace: Option<String>,
    pub(super) lease_name: Option<String>,
    pub(super) identity: Option<String>,
    pub(super) lease_duration: Option<String>,
    pub(super) root_configmap: Option<bool>,
    pub(super) root_configmap_name: Option<String>,
    pub(super) crl_configmap_name: Option<String>,
    pub(super) cluster_trust_bundle: Option<bool>,
    pub(super) namespace_selector: Option<String>,
    pub(super) istiod_tls: Option<bool>,
    pub(super) istiod_revisions: Option<Vec<String>>,
    pub(super) istiod_tls_ttl: Option<String>,
    pub(super) resync: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) key: Option<String>,
    pub(super) signing_key: Option<String>,
    pub(super) key_name: Option<String>,
    pub(super) checkpoint_file: Option<String>,
    pub(super) checkpoint_interval: Option<String>,
    pub(super) issued_retention: Option<String>,
    pub(super) denial_retention: Option<String>,
    pub(super) prune_interval: Option<String>,
    pub(super) index_segment_records: Option<u64>,
    pub(super) volume_bytes: Option<u64>,
    pub(super) export: Option<RawExport>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExport {
    pub(super) jsonl_dir: Option<String>,
    pub(super) jsonl_max_file_mib: Option<u64>,
    pub(super) otlp_endpoint: Option<String>,
    pub(super) fail_closed_lag_records: Option<u64>,
    pub(super) readable_records: Option<bool>,
    pub(super) fail_closed_lag: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) allowed_identities: Option<Vec<String>>,
    pub(super) revokers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMesh {
    pub(super) name: Option<String>,
    pub(super) trust_domain: Option<String>,
    pub(super) ca_dir: Option<String>,
    pub(super) signing_key: Option<String>,
    pub(super) default_ttl: Option<String>,
    pub(super) max_ttl: Option<String>,
    #[serde(default)]
    pub(super) token_issuer: Vec<RawTokenIssuer>,
    #[serde(default)]
    pub(super) cluster: Vec<RawCluster>,
    pub(super) client_cert_auth: Option<bool>,
    pub(super) trusted_node_accounts: Option<Vec<String>>,
    pub(super) trust_domain_aliases: Option<Vec<String>>,
    pub(super) alias_issuance: Option<String>,
    pub(super) extra_roots: Option<Vec<RawExtraRoot>>,
    pub(super) force_root_removal: Option<bool>,
    pub(super) accepts: Option<Vec<String>>,
    #[serde(default)]
    pub(super) partner: Vec<RawPartner>,
}

/// `[[mesh.partner]]`: a trust domain outside the shared root, reached by its bundle endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPartner {
    pub(super) trust_domain: Option<String>,
    pub(super) bundle_url: Option<String>,
    pub(super) endpoint_ca: Option<String>,
    pub(super) cross_certificates: Option<String>,
    pub(super) unprotected: Option<bool>,
}

/// `extra_roots` entries: a file, or `{ path = "...", vouches_for = ["trust.domain"] }`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawExtraRoot {
    Path(String),
    Bound(RawBoundRoot),
    /// Anything else (a table with another key): named as a problem.
    Other(toml::Value),
}

/// `{ path = "...", vouches_for = [...] }`; an unknown key (`vouch_for`) is an error, not a
/// root that silently vouches for nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBoundRoot {
    pub(super) path: String,
    #[serde(default)]
    pub(super) vouches_for: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) id: Option<String>,
    pub(super) kubeconfig: Option<String>,
    pub(super) context: Option<String>,
    pub(super) in_cluster: Option<bool>,
    pub(super) audiences: Option<Vec<String>>,
    pub(super) review_timeout: Option<String>,
    pub(super) review_cache_ttl: Option<String>,
    pub(super) max_concurrent_reviews: Option<usize>,
    pub(super) cacerts: Option<bool>,
    pub(super) cacerts_namespace: Option<String>,
    pub(super) intermediate_ttl: Option<String>,
    pub(super) intermediate_renew_at: Option<f64>,
    pub(super) istiod_address: Option<String>,
    pub(super) istiod_probe_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokenIssuer {
    pub(super) issuer: Option<String>,
    pub(super) jwks: Option<String>,
    pub(super) audiences: Option<Vec<String>>,
    pub(super) dev_signing_key: Option<String>,
}
