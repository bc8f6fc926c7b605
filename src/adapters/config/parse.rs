//! Validating the raw file into a [`Config`]: every setting checked, every problem collected
//! with its key before anything fails. One function per section of the file.

use super::kubernetes::kubernetes;
use super::mesh::meshes;
use super::raw::*;
use super::values::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::*;
use crate::domain::caller::AuthenticatorKind;

/// The top-level settings: the CSR listener, the store, limits, authenticators, timeouts.
struct Server {
    listen: SocketAddr,
    dns_names: Vec<String>,
    serving_certificate_ttl: Duration,
    store: PathBuf,
    store_cache_mib: u64,
    leaf_signature_sample: u64,
    max_concurrent_requests: usize,
    max_concurrent_handshakes: usize,
    authenticators: Vec<AuthenticatorKind>,
    pod_cache_ttl: Duration,
    shutdown_grace: Duration,
    request_timeout: Duration,
}

impl Config {
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
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| {
            fail(vec![Problem {
                key: "(syntax)".into(),
                message: e.to_string().trim().replace('\n', " "),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_owned();
        let mut problems = Problems::default();
        let p = &mut problems;
        let server = server(&mut raw, listen_override, store_override, &base, p);
        let connections = connections(raw.connections.unwrap_or_default(), p);
        let rate_limit = rate_limit(raw.rate_limit.unwrap_or_default(), p);
        let meshes = meshes(raw.mesh, &server.authenticators, &base, p);
        let audit = audit(raw.audit.unwrap_or_default(), &base, p);
        let mut deprecations = Vec::new();
        let (section, raw_replicas) = match (raw.replicas.take(), raw.cluster.take()) {
            (Some(replicas), Some(_)) => {
                p.add(
                    "cluster".into(),
                    "is the old name of [replicas]: give one of them".into(),
                );
                ("replicas", Some(replicas))
            }
            (None, Some(cluster)) => {
                deprecations.push(
                    "[cluster] is now [replicas] (the same keys): rename the section; [cluster] \
                     is read for one more release"
                        .to_owned(),
                );
                ("cluster", Some(cluster))
            }
            (replicas, None) => ("replicas", replicas),
        };
        let admin = admin(raw.admin.unwrap_or_default(), raw_replicas.is_some(), p);
        let kubernetes = raw.kubernetes.map(|raw| kubernetes(raw, &meshes, &base, p));
        let revocation = super::revocation::revocation(
            raw.revocation.take().unwrap_or_default(),
            &meshes,
            &base,
            p,
        );
        let replicas = raw_replicas.map(|raw| {
            super::replicas::replicas_section(
                section,
                raw,
                admin.listen.port(),
                meshes.first().map(|mesh| &mesh.trust_domain),
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty()),
                p,
            )
        });
        let bundle_endpoint = raw.bundle_endpoint.take().and_then(|raw| {
            super::federation::bundle_endpoint(raw, (server.listen, admin.listen), &base, p)
        });
        let pkcs11 = super::pkcs11::pkcs11(raw.pkcs11.take(), &meshes, &audit, &base, p);
        if !problems.0.is_empty() {
            return Err(fail(problems.0));
        }
        let Server {
            listen,
            dns_names,
            serving_certificate_ttl,
            store,
            store_cache_mib,
            leaf_signature_sample,
            max_concurrent_requests,
            max_concurrent_handshakes,
            authenticators,
            pod_cache_ttl,
            shutdown_grace,
            request_timeout,
        } = server;
        Ok(Self {
            source: path.to_owned(),
            listen,
            dns_names,
            serving_certificate_ttl,
            store,
            store_cache_mib,
            leaf_signature_sample,
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
            admin,
            kubernetes,
            replicas,
            deprecations,
            revocation,
            bundle_endpoint,
            pkcs11,
        })
    }
}

fn server(
    raw: &mut RawConfig,
    listen_override: Option<String>,
    store_override: Option<String>,
    base: &Path,
    p: &mut Problems,
) -> Server {
    let listen_text = listen_override
        .clone()
        .or(raw.listen.take())
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen_key = if listen_override.is_some() {
        ENV_LISTEN
    } else {
        "listen"
    };
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        p.add(
            listen_key.into(),
            format!("{listen_text:?} is not an address:port"),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });

    let dns_names = raw
        .dns_names
        .take()
        .unwrap_or_else(|| DEFAULT_DNS_NAMES.iter().map(|s| s.to_string()).collect());
    if dns_names.is_empty() {
        p.add(
            "dns_names".into(),
            "at least one DNS name is required".into(),
        );
    }
    // Each entry is a DNS name or an IP address (a VM's CA_ADDR, a load balancer's address),
    // which the serving certificate carries as an IP SAN: istio-agent checks an IP address
    // against IP SANs only.
    for (index, name) in dns_names.iter().enumerate() {
        if name.parse::<std::net::IpAddr>().is_err() && !is_dns_name(name) {
            p.add(
                format!("dns_names[{index}]"),
                format!("{name:?} is neither a DNS name nor an IP address"),
            );
        }
    }
    let serving_certificate_ttl = duration_setting(
        raw.serving_certificate_ttl.as_deref(),
        DEFAULT_SERVING_TTL,
        "serving_certificate_ttl",
        p,
    );
    let store = match store_override.or(raw.store.take()) {
        Some(store) => base.join(store),
        None => base.join("store"),
    };

    let mut at_least_one = |key: &str, value: Option<usize>, default: usize| {
        let value = value.unwrap_or(default);
        if value == 0 {
            p.add(key.into(), "must be at least 1".into());
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
    let leaf_signature_sample = at_least_one(
        "leaf_signature_sample",
        raw.leaf_signature_sample
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        DEFAULT_LEAF_SIGNATURE_SAMPLE as usize,
    ) as u64;
    let store_cache_mib = raw.store_cache_mib.unwrap_or(DEFAULT_STORE_CACHE_MIB);
    if store_cache_mib < 8 {
        p.add("store_cache_mib".into(), "must be at least 8".into());
    }
    let authenticators = match raw.authenticators.take() {
        None => AuthenticatorKind::ALL.to_vec(),
        Some(names) => {
            let mut kinds = Vec::new();
            for (index, name) in names.iter().enumerate() {
                match AuthenticatorKind::from_name(name) {
                    Some(kind) if !kinds.contains(&kind) => kinds.push(kind),
                    Some(_) => p.add(
                        format!("authenticators[{index}]"),
                        format!("{name:?} is listed twice"),
                    ),
                    None => p.add(
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
        p,
    );
    let shutdown_grace = duration_setting(
        raw.shutdown_grace.as_deref(),
        DEFAULT_SHUTDOWN_GRACE,
        "shutdown_grace",
        p,
    );
    let request_timeout = duration_setting(
        raw.request_timeout.as_deref(),
        DEFAULT_REQUEST_TIMEOUT,
        "request_timeout",
        p,
    );
    Server {
        listen,
        dns_names,
        serving_certificate_ttl,
        store,
        store_cache_mib,
        leaf_signature_sample,
        max_concurrent_requests,
        max_concurrent_handshakes,
        authenticators,
        pod_cache_ttl,
        shutdown_grace,
        request_timeout,
    }
}

/// `[connections]`: limits and timeouts of client connections.
fn connections(raw_connections: RawConnections, p: &mut Problems) -> ConnectionConfig {
    let defaults = ConnectionConfig::default();
    let mut count = |key: &str, value: Option<usize>, default: usize| {
        let value = value.unwrap_or(default);
        if value == 0 {
            p.add(format!("connections.{key}"), "must be at least 1".into());
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
        p.add(
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
        (
            "write_timeout",
            raw_connections.write_timeout.as_deref(),
            &mut connections.write_timeout,
        ),
    ] {
        *slot = duration_setting(text, *slot, &format!("connections.{key}"), p);
    }
    if connections.max_per_peer > connections.max_total {
        p.add(
            "connections.max_per_peer".into(),
            format!(
                "{} is more than connections.max_total ({}): one peer could take every connection",
                connections.max_per_peer, connections.max_total
            ),
        );
    }
    if connections.max_streams > 100_000 {
        p.add(
            "connections.max_streams".into(),
            "must be at most 100000".into(),
        );
    }
    connections
}

/// `[rate_limit]`: token buckets per caller and namespace, and the rates refusals are recorded at.
fn rate_limit(raw_rate: RawRateLimit, p: &mut Problems) -> RateLimitConfig {
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
            p.add(
                format!("rate_limit.{rate_key}"),
                "must be 0 (no limit) or a positive rate".into(),
            );
        } else if per_second > 0.0 && !(burst.is_finite() && burst >= 1.0) {
            p.add(
                format!("rate_limit.{burst_key}"),
                "must be at least 1".into(),
            );
        }
        crate::domain::ratelimit::Rate { per_second, burst }
    };
    RateLimitConfig {
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
    }
}

/// `[audit]`: the audit key, checkpoints, retention and the index segment size.
fn audit(raw_audit: RawAudit, base: &Path, p: &mut Problems) -> AuditConfig {
    let defaults = crate::domain::audit::RetentionPolicy::default();
    let audit = AuditConfig {
        key: raw_audit.key.map(|key| base.join(key)),
        signing_key: raw_audit.signing_key,
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
            p,
        ),
        retention: crate::domain::audit::RetentionPolicy {
            issued_after_expiry: duration_setting(
                raw_audit.issued_retention.as_deref(),
                defaults.issued_after_expiry,
                "audit.issued_retention",
                p,
            ),
            denials: duration_setting(
                raw_audit.denial_retention.as_deref(),
                defaults.denials,
                "audit.denial_retention",
                p,
            ),
        },
        prune_interval: duration_setting(
            raw_audit.prune_interval.as_deref(),
            DEFAULT_PRUNE_INTERVAL,
            "audit.prune_interval",
            p,
        ),
        index_segment_records: raw_audit
            .index_segment_records
            .unwrap_or(crate::domain::audit::SEGMENT_RECORDS),
        volume_bytes: raw_audit.volume_bytes,
        export: match raw_audit.export {
            Some(raw) => {
                if raw.jsonl_dir.is_none() && raw.otlp_endpoint.is_none() {
                    p.add(
                        "audit.export".into(),
                        "names no sink: set jsonl_dir or otlp_endpoint, or remove the table".into(),
                    );
                }
                export(raw, base, p)
            }
            None => export(RawExport::default(), base, p),
        },
    };
    if !(16..=1 << 20).contains(&audit.index_segment_records) {
        p.add(
            "audit.index_segment_records".into(),
            format!(
                "{} is not between 16 and 1048576",
                audit.index_segment_records
            ),
        );
    }
    if audit.key.is_some() && audit.signing_key.is_some() {
        p.add(
            "audit.signing_key".into(),
            "give the audit key once: key (a PEM file) or signing_key (a key in a PKCS#11 token)"
                .into(),
        );
    }
    if let Some(Err(error)) = audit
        .signing_key
        .as_deref()
        .map(crate::adapters::pkcs11::uri::KeyUri::parse)
    {
        p.add("audit.signing_key".into(), error.to_string());
    }
    if audit.key_name.is_empty()
        || audit
            .key_name
            .chars()
            .any(|c| c.is_whitespace() || c == '+')
    {
        p.add(
            "audit.key_name".into(),
            format!("{:?}: a name without spaces or '+'", audit.key_name),
        );
    }
    audit
}

/// `[admin]`: the admin listener and who may use the audit API.
fn admin(raw_admin: RawAdmin, replicas: bool, p: &mut Problems) -> AdminConfig {
    let admin_text = raw_admin
        .listen
        .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_owned());
    let admin_listen = admin_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        p.add(
            "admin.listen".into(),
            format!("{admin_text:?} is not an address:port"),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let identities = |key: &str, list: Option<Vec<String>>, p: &mut Problems| {
        let list = list.unwrap_or_default();
        for (index, identity) in list.iter().enumerate() {
            if crate::domain::identity::SpiffeId::parse(identity).is_err() {
                p.add(
                    format!("admin.{key}[{index}]"),
                    format!("{identity:?} is not a spiffe://<td>/ns/<ns>/sa/<sa> identity"),
                );
            }
        }
        list
    };
    let allowed_identities = identities("allowed_identities", raw_admin.allowed_identities, p);
    let revokers = identities("revokers", raw_admin.revokers, p);
    if !admin_listen.ip().is_loopback()
        && allowed_identities.is_empty()
        && revokers.is_empty()
        && !replicas
    {
        p.add(
            "admin.allowed_identities".into(),
            "required when admin.listen is not a loopback address (the audit API then \
             requires mutual TLS from one of these identities, or of admin.revokers), unless \
             [replicas] admits the members by their own identity"
                .into(),
        );
    }
    AdminConfig {
        listen: admin_listen,
        allowed_identities,
        revokers,
    }
}

/// `[audit.export]`.
fn export(raw: RawExport, base: &Path, p: &mut Problems) -> ExportConfig {
    let mib = raw.jsonl_max_file_mib.unwrap_or(DEFAULT_EXPORT_FILE_MIB);
    if !(1..=1 << 20).contains(&mib) {
        p.add(
            "audit.export.jsonl_max_file_mib".into(),
            format!("{mib} is not between 1 and 1048576"),
        );
    }
    if let Some(endpoint) = &raw.otlp_endpoint {
        // Plain OTLP/gRPC to a Collector beside meshroot (a sidecar or in-cluster Service).
        let authority = endpoint.strip_prefix("http://");
        if !authority.is_some_and(|a| !a.is_empty() && !a.contains(char::is_whitespace)) {
            p.add(
                "audit.export.otlp_endpoint".into(),
                format!("{endpoint:?} is not an http://HOST:PORT URI"),
            );
        }
    }
    let fail_closed_lag = raw.fail_closed_lag.as_deref().map(|text| {
        duration_setting(
            Some(text),
            Duration::ZERO,
            "audit.export.fail_closed_lag",
            p,
        )
    });
    let sinks = raw.jsonl_dir.is_some() || raw.otlp_endpoint.is_some();
    if !sinks && (raw.fail_closed_lag_records.is_some() || fail_closed_lag.is_some()) {
        p.add(
            "audit.export.fail_closed_lag_records".into(),
            "fail-closed export needs a sink (jsonl_dir or otlp_endpoint)".into(),
        );
    }
    ExportConfig {
        jsonl_dir: raw.jsonl_dir.map(|dir| base.join(dir)),
        jsonl_max_file_bytes: mib << 20,
        otlp_endpoint: raw.otlp_endpoint,
        fail_closed_lag_records: raw.fail_closed_lag_records,
        fail_closed_lag,
        readable_records: raw.readable_records.unwrap_or(false),
    }
}
