//! `[[mesh]]`: each mesh's trust domain, CA directory, lifetimes, token issuers, clusters,
//! aliases, extra roots and node accounts, and the names that must be unique across meshes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::*;
use super::raw::*;
use super::values::Problems;
use super::values::*;
use crate::domain::caller::{AuthenticatorKind, NodeAccount};
use crate::domain::identity::TrustDomain;
use crate::domain::policy::AliasIssuance;

/// Names that must be unique across meshes.
#[derive(Default)]
struct TakenNames {
    names: HashSet<String>,
    trust_domains: HashSet<TrustDomain>,
    issuers: HashSet<String>,
    cluster_ids: HashSet<String>,
}

/// Every `[[mesh]]`, then the checks across them.
pub(super) fn meshes(
    raw: Vec<RawMesh>,
    authenticators: &[AuthenticatorKind],
    base: &Path,
    p: &mut Problems,
) -> Vec<MeshConfig> {
    if raw.is_empty() {
        p.add("mesh".into(), "at least one [[mesh]] is required".into());
    }
    let mut taken = TakenNames::default();
    let meshes: Vec<MeshConfig> = raw
        .into_iter()
        .enumerate()
        .filter_map(|(index, mesh)| one_mesh(index, mesh, authenticators, base, &mut taken, p))
        .collect();
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
                    p.add(
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
    accepted_meshes(&meshes, p);
    super::federation::partners_are_foreign(&meshes, p);
    meshes
}

/// `accepts`: names of other configured meshes, each once; a mesh does not list itself (its own
/// trust domain and aliases are always accepted).
fn accepted_meshes(meshes: &[MeshConfig], p: &mut Problems) {
    for (index, mesh) in meshes.iter().enumerate() {
        let mut seen = HashSet::new();
        for (accepted_index, name) in mesh.accepts.iter().enumerate() {
            let key = format!("mesh[{index}].accepts[{accepted_index}]");
            if *name == mesh.name {
                p.add(
                    key,
                    format!("{name:?} is this mesh: its own trust domain is always accepted"),
                );
            } else if !meshes.iter().any(|other| other.name == *name) {
                p.add(key, format!("{name:?} is not the name of a [[mesh]]"));
            } else if !seen.insert(name) {
                p.add(key, format!("{name:?} is listed twice"));
            }
        }
    }
}

/// One `[[mesh]]`; None when its trust domain is unusable (the problem is recorded).
fn one_mesh(
    index: usize,
    mesh: RawMesh,
    authenticators: &[AuthenticatorKind],
    base: &Path,
    taken: &mut TakenNames,
    p: &mut Problems,
) -> Option<MeshConfig> {
    let key = |field: &str| format!("mesh[{index}].{field}");
    let name = match mesh.name {
        Some(name) if is_mesh_name(&name) => name,
        Some(name) => {
            p.add(
                key("name"),
                format!("{name:?}: use lowercase letters, digits and '-'"),
            );
            name
        }
        None => {
            p.add(key("name"), "is required".into());
            String::new()
        }
    };
    if !name.is_empty() && !taken.names.insert(name.clone()) {
        p.add(key("name"), format!("mesh {name:?} is defined twice"));
    }
    let trust_domain_text = mesh
        .trust_domain
        .unwrap_or_else(|| "cluster.local".to_owned());
    let trust_domain = match TrustDomain::new(&trust_domain_text) {
        Ok(td) => {
            if !taken.trust_domains.insert(td.clone()) {
                p.add(
                    key("trust_domain"),
                    format!("{trust_domain_text:?} is already used by another mesh"),
                );
            }
            Some(td)
        }
        Err(e) => {
            p.add(key("trust_domain"), format!("{trust_domain_text:?}: {e}"));
            None
        }
    };
    let ca_dir = match mesh.ca_dir {
        Some(dir) => base.join(dir),
        None => {
            p.add(key("ca_dir"), "is required".into());
            PathBuf::new()
        }
    };
    // The key in a token: as configured, or as the cacerts directory names it (`ca-key.uri`,
    // written by `init --pkcs11-token` and `rotate intermediate`).
    let key_uri_file = ca_dir.join("ca-key.uri");
    let signing_key = match mesh.signing_key {
        Some(uri) => Some(uri),
        None if key_uri_file.exists() => match std::fs::read_to_string(&key_uri_file) {
            Ok(text) => Some(text.trim().to_owned()),
            Err(error) => {
                p.add(
                    key("ca_dir"),
                    format!("{}: {error}", key_uri_file.display()),
                );
                None
            }
        },
        None => None,
    };
    let signing_key = signing_key.filter(|uri| {
        let parsed = crate::adapters::pkcs11::uri::KeyUri::parse(uri);
        if let Err(error) = &parsed {
            p.add(key("signing_key"), error.to_string());
        } else if ca_dir.join("ca-key.pem").exists() || ca_dir.join("tls.key").exists() {
            p.add(
                key("signing_key"),
                format!(
                    "names a key in a token, but {} also holds a key file: remove it, so no copy \
                     of the key lies on disk",
                    ca_dir.display()
                ),
            );
        }
        parsed.is_ok()
    });
    let default_ttl = duration_setting(
        mesh.default_ttl.as_deref(),
        DEFAULT_TTL,
        &key("default_ttl"),
        p,
    );
    let max_ttl = duration_setting(mesh.max_ttl.as_deref(), DEFAULT_MAX_TTL, &key("max_ttl"), p);
    if default_ttl > max_ttl {
        p.add(key("default_ttl"), "must not exceed max_ttl".into());
    }
    let token_issuers = token_issuers(index, mesh.token_issuer, base, taken, p);
    let clusters = clusters(index, mesh.cluster, base, taken, p);
    let trust_domain_aliases = aliases(
        index,
        mesh.trust_domain_aliases.unwrap_or_default(),
        trust_domain.as_ref(),
        taken,
        p,
    );
    let alias_issuance = match mesh.alias_issuance.as_deref() {
        None | Some("as-requested") => AliasIssuance::AsRequested,
        Some("canonical") => AliasIssuance::Canonical,
        Some(other) => {
            p.add(
                key("alias_issuance"),
                format!("{other:?} is not \"as-requested\" or \"canonical\""),
            );
            AliasIssuance::AsRequested
        }
    };
    let extra_roots = extra_roots(index, mesh.extra_roots.unwrap_or_default(), base, p);
    let trusted_node_accounts = node_accounts(
        index,
        mesh.trusted_node_accounts,
        authenticators,
        !token_issuers.is_empty(),
        !clusters.is_empty(),
        p,
    );
    trust_domain.map(|trust_domain| MeshConfig {
        name,
        trust_domain,
        ca_dir,
        signing_key,
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
        accepts: mesh.accepts.unwrap_or_default(),
        partners: super::federation::partners(index, mesh.partner, base, p),
    })
}

/// `[[mesh.token_issuer]]`: issuers whose tokens are verified offline; an issuer belongs to one
/// mesh.
fn token_issuers(
    index: usize,
    raw: Vec<RawTokenIssuer>,
    base: &Path,
    taken: &mut TakenNames,
    p: &mut Problems,
) -> Vec<TokenIssuerConfig> {
    let mut token_issuers = Vec::new();
    for (issuer_index, raw_issuer) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("mesh[{index}].token_issuer[{issuer_index}].{field}");
        let issuer = raw_issuer.issuer.unwrap_or_default();
        if issuer.is_empty() {
            p.add(key("issuer"), "is required".into());
        } else if !taken.issuers.insert(issuer.clone()) {
            p.add(
                key("issuer"),
                format!("{issuer:?} is configured twice; an issuer belongs to one mesh"),
            );
        }
        let jwks = match raw_issuer.jwks {
            Some(jwks) => base.join(jwks),
            None => {
                p.add(key("jwks"), "is required".into());
                PathBuf::new()
            }
        };
        let audiences = raw_issuer
            .audiences
            .unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_owned()]);
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            p.add(key("audiences"), "must hold non-empty audiences".into());
        }
        token_issuers.push(TokenIssuerConfig {
            issuer,
            jwks,
            audiences,
            dev_signing_key: raw_issuer.dev_signing_key.map(|p| base.join(p)),
        });
    }
    token_issuers
}

/// `[[mesh.cluster]]`: the clusters whose API servers review tokens and confirm pods; a cluster
/// belongs to one mesh.
fn clusters(
    index: usize,
    raw: Vec<RawCluster>,
    base: &Path,
    taken: &mut TakenNames,
    p: &mut Problems,
) -> Vec<ClusterConfig> {
    let mut clusters = Vec::new();
    for (cluster_index, raw_cluster) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("mesh[{index}].cluster[{cluster_index}].{field}");
        let id = raw_cluster
            .id
            .unwrap_or_else(|| DEFAULT_CLUSTER_ID.to_owned());
        if !taken.cluster_ids.insert(id.clone()) {
            p.add(
                key("id"),
                format!("cluster id {id:?} is configured twice; a cluster belongs to one mesh"),
            );
        }
        let access = cluster_access(
            raw_cluster.kubeconfig,
            raw_cluster.context,
            raw_cluster.in_cluster.unwrap_or(false),
            base,
            &key("kubeconfig"),
            p,
        );
        let audiences = raw_cluster
            .audiences
            .unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_owned()]);
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            p.add(key("audiences"), "must hold non-empty audiences".into());
        }
        let max_concurrent_reviews = raw_cluster
            .max_concurrent_reviews
            .unwrap_or(DEFAULT_MAX_CONCURRENT_REVIEWS);
        if max_concurrent_reviews == 0 {
            p.add(key("max_concurrent_reviews"), "must be at least 1".into());
        }
        let in_cluster = matches!(access, ClusterAccess::InCluster);
        let cacerts = raw_cluster.cacerts.unwrap_or(false).then(|| {
            let renew_at = raw_cluster.intermediate_renew_at.unwrap_or(0.5);
            let namespace = raw_cluster
                .cacerts_namespace
                .clone()
                .unwrap_or_else(|| "istio-system".to_owned());
            if !(renew_at > 0.0 && renew_at < 1.0) {
                p.add(
                    key("intermediate_renew_at"),
                    format!("{renew_at} is not a fraction between 0 and 1"),
                );
            }
            CacertsConfig {
                istiod_address: raw_cluster
                    .istiod_address
                    .clone()
                    .or_else(|| in_cluster.then(|| format!("istiod.{namespace}.svc:15012"))),
                istiod_probe_interval: duration_setting(
                    raw_cluster.istiod_probe_interval.as_deref(),
                    DEFAULT_ISTIOD_PROBE_INTERVAL,
                    &key("istiod_probe_interval"),
                    p,
                ),
                namespace,
                lifetime: duration_setting(
                    raw_cluster.intermediate_ttl.as_deref(),
                    DEFAULT_INTERMEDIATE_TTL,
                    &key("intermediate_ttl"),
                    p,
                ),
                renew_at,
            }
        });
        if cacerts.is_none()
            && (raw_cluster.cacerts_namespace.is_some()
                || raw_cluster.intermediate_ttl.is_some()
                || raw_cluster.intermediate_renew_at.is_some()
                || raw_cluster.istiod_address.is_some()
                || raw_cluster.istiod_probe_interval.is_some())
        {
            p.add(
                key("cacerts"),
                "cacerts_namespace, intermediate_ttl, intermediate_renew_at, istiod_address and \
                 istiod_probe_interval need cacerts = true"
                    .into(),
            );
        }
        clusters.push(ClusterConfig {
            id,
            access,
            audiences,
            review_timeout: duration_setting(
                raw_cluster.review_timeout.as_deref(),
                DEFAULT_REVIEW_TIMEOUT,
                &key("review_timeout"),
                p,
            ),
            review_cache_ttl: duration_setting(
                raw_cluster.review_cache_ttl.as_deref(),
                DEFAULT_REVIEW_CACHE_TTL,
                &key("review_cache_ttl"),
                p,
            ),
            max_concurrent_reviews,
            cacerts,
        });
    }
    clusters
}

/// How often a cluster's istiod is asked which intermediate it serves.
const DEFAULT_ISTIOD_PROBE_INTERVAL: Duration = Duration::from_secs(30);

/// A cluster intermediate's default lifetime: a year, as Istio's own plug-in example.
const DEFAULT_INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 86400);

/// `trust_domain_aliases`: other names of the mesh's trust domain, each naming one mesh only.
fn aliases(
    index: usize,
    raw: Vec<String>,
    own: Option<&TrustDomain>,
    taken: &mut TakenNames,
    p: &mut Problems,
) -> Vec<TrustDomain> {
    let mut trust_domain_aliases = Vec::new();
    for (alias_index, text) in raw.iter().enumerate() {
        let alias_key = format!("mesh[{index}].trust_domain_aliases[{alias_index}]");
        match TrustDomain::new(text) {
            Ok(alias) if Some(&alias) == own => p.add(
                alias_key,
                format!("{text:?} is the mesh's own trust domain"),
            ),
            Ok(alias) => {
                // A name must point at one mesh, or client certificates and
                // impersonation could not tell which mesh a workload belongs to.
                if !taken.trust_domains.insert(alias.clone()) {
                    p.add(
                        alias_key,
                        format!("{text:?} is already used by another mesh"),
                    );
                } else {
                    trust_domain_aliases.push(alias);
                }
            }
            Err(e) => p.add(alias_key, format!("{text:?}: {e}")),
        }
    }
    trust_domain_aliases
}

/// `extra_roots`: more roots for the bundle, each vouching for the trust domains named for it.
fn extra_roots(
    index: usize,
    raw: Vec<RawExtraRoot>,
    base: &Path,
    p: &mut Problems,
) -> Vec<ExtraRoot> {
    let mut extra_roots = Vec::new();
    for (root_index, root) in raw.into_iter().enumerate() {
        let (path, vouches) = match root {
            RawExtraRoot::Path(path) => (path, Vec::new()),
            RawExtraRoot::Bound(bound) => (bound.path, bound.vouches_for),
            RawExtraRoot::Other(value) => {
                let keys = value
                    .as_table()
                    .map(|table| table.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| value.type_str().to_owned());
                p.add(
                    format!("mesh[{index}].extra_roots[{root_index}]"),
                    format!(
                        "expected a file name or {{ path = \"...\", vouches_for = [...] }}, found {{ {keys} }}"
                    ),
                );
                continue;
            }
        };
        let mut vouches_for = Vec::new();
        for (td_index, text) in vouches.iter().enumerate() {
            match TrustDomain::new(text) {
                Ok(trust_domain) => vouches_for.push(trust_domain),
                Err(e) => p.add(
                    format!("mesh[{index}].extra_roots[{root_index}].vouches_for[{td_index}]"),
                    format!("{text:?}: {e}"),
                ),
            }
        }
        extra_roots.push(ExtraRoot {
            path: base.join(path),
            vouches_for,
        });
    }
    extra_roots
}

/// `trusted_node_accounts`: the node proxies that may ask for their workloads' certificates.
fn node_accounts(
    index: usize,
    raw: Option<Vec<String>>,
    authenticators: &[AuthenticatorKind],
    has_token_issuers: bool,
    has_clusters: bool,
    p: &mut Problems,
) -> Vec<NodeAccount> {
    let mut trusted_node_accounts = Vec::new();
    let accounts_configured = raw.is_some();
    let accounts = raw.unwrap_or_else(|| vec![DEFAULT_NODE_ACCOUNT.to_owned()]);
    // Node proxies configured to impersonate must be able to: their pod is confirmed in
    // one of the mesh's clusters, and some token authenticator must accept their token.
    if accounts_configured && !accounts.is_empty() {
        let token_authenticator = authenticators.contains(&AuthenticatorKind::TokenReview)
            || (authenticators.contains(&AuthenticatorKind::Jwt) && has_token_issuers);
        if !has_clusters {
            p.add(
                format!("mesh[{index}].trusted_node_accounts"),
                "node proxies' impersonation needs a [[mesh.cluster]] to confirm their \
                 pods in; add one, or set trusted_node_accounts = []"
                    .into(),
            );
        } else if !token_authenticator {
            p.add(
                format!("mesh[{index}].trusted_node_accounts"),
                "no authenticator in `authenticators` accepts this mesh's node proxies' \
                 tokens (add \"token-review\", or \"jwt\" with a [[mesh.token_issuer]])"
                    .into(),
            );
        }
    }
    for (account_index, text) in accounts.iter().enumerate() {
        match NodeAccount::parse(text) {
            Some(account) => trusted_node_accounts.push(account),
            None => p.add(
                format!("mesh[{index}].trusted_node_accounts[{account_index}]"),
                format!("{text:?} is not <namespace>/<service-account>"),
            ),
        }
    }
    trusted_node_accounts
}
