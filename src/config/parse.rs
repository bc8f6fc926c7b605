//! Validating the raw file into a [`Config`]: every setting checked, every problem collected
//! with its key before anything fails.

use super::raw::*;
use super::values::*;
#[allow(unused_imports)]
use super::*;

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
}
