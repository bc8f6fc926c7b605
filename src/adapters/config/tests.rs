//! Configuration files against what `Config::parse` must accept and refuse, each problem named
//! with its key.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::domain::caller::{AuthenticatorKind, NodeAccount};
use crate::domain::identity::TrustDomain;
use crate::domain::policy::AliasIssuance;

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
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
    assert_eq!(config.leaf_signature_sample, DEFAULT_LEAF_SIGNATURE_SAMPLE);
}

#[test]
fn the_leaf_signature_sample_is_at_least_one() {
    let every = parse(&format!("leaf_signature_sample = 1\n{MINIMAL}")).unwrap();
    assert_eq!(every.leaf_signature_sample, 1);
    let error = parse(&format!("leaf_signature_sample = 0\n{MINIMAL}")).unwrap_err();
    let problems: Vec<(&str, &str)> = error
        .problems
        .iter()
        .map(|p| (p.key.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(problems, [("leaf_signature_sample", "must be at least 1")]);
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

#[test]
fn revocation_defaults_outlive_every_leaf_and_bad_values_are_named() {
    let config = parse(MINIMAL).unwrap();
    let revocation = &config.revocation;
    // The CRL of an intermediate rotated out must outlive every leaf it signed.
    assert_eq!(revocation.crl_validity, DEFAULT_MAX_TTL);
    assert_eq!(revocation.block_for, None);
    assert!(revocation.configmap);
    assert!(revocation.extra_crls.is_empty() && revocation.crl_file.is_none());

    let config = parse(&format!(
        "{MINIMAL}\n[revocation]\ncrl_file = \"crl/ca-crl.pem\"\nextra_crls = [\"root-crl.pem\"]\n\
         block_for = \"24h\"\ncrl_url = \"http://meshroot.istio-system.svc:15014/crl\"\n"
    ))
    .unwrap();
    let revocation = &config.revocation;
    assert_eq!(
        revocation.crl_file.as_deref(),
        Some(Path::new("/etc/meshroot/crl/ca-crl.pem"))
    );
    assert_eq!(
        revocation.extra_crls,
        [PathBuf::from("/etc/meshroot/root-crl.pem")]
    );
    assert_eq!(revocation.block_for, Some(Duration::from_secs(24 * 3600)));

    let error = parse(&format!(
        "{MINIMAL}\n[revocation]\ncrl_validity = \"1h\"\ncrl_url = \"ftp://x\"\nblock_for = \"soon\"\n"
    ))
    .unwrap_err();
    let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "revocation.crl_validity",
            "revocation.crl_url",
            "revocation.block_for"
        ],
        "{error}"
    );
}

#[test]
fn partners_are_foreign_trust_domains_at_https_urls_published_one_way() {
    let config = parse(
        r#"
        [[mesh]]
        name = "b"
        ca_dir = "b"
        trust_domain = "b.example"
        [[mesh.partner]]
        trust_domain = "p.example"
        bundle_url = "https://bundles.p.example:8443/p.example"
        endpoint_ca = "p-ca.pem"
        cross_certificates = "b/partners/p.pem"
        [[mesh.partner]]
        trust_domain = "q.example"
        bundle_url = "https://[::1]/q.example"
        unprotected = true
        [bundle_endpoint]
        listen = "0.0.0.0:8443"
        "#,
    )
    .unwrap();
    let partners = &config.meshes[0].partners;
    assert_eq!(partners.len(), 2);
    assert_eq!(
        partners[0].cross_certificates.as_deref(),
        Some(Path::new("/etc/meshroot/b/partners/p.pem"))
    );
    assert_eq!(
        partners[0].endpoint_ca.as_deref(),
        Some(Path::new("/etc/meshroot/p-ca.pem"))
    );
    assert!(partners[1].unprotected && partners[1].cross_certificates.is_none());
    let endpoint = config.bundle_endpoint.unwrap();
    assert_eq!(endpoint.listen.port(), 8443);
    assert_eq!(endpoint.refresh_hint, Duration::from_secs(300));

    let error = parse(
        r#"
        listen = "0.0.0.0:15012"
        [[mesh]]
        name = "a"
        ca_dir = "a"
        trust_domain = "a.example"
        [[mesh]]
        name = "b"
        ca_dir = "b"
        trust_domain = "b.example"
        [[mesh.partner]]
        trust_domain = "a.example"
        bundle_url = "http://bundles.a.example/a.example"
        [[mesh.partner]]
        trust_domain = "p.example"
        bundle_url = "https://user@bundles.p.example/"
        unprotected = true
        cross_certificates = "p.pem"
        [bundle_endpoint]
        listen = "0.0.0.0:15012"
        certificate = "web.crt"
        "#,
    )
    .unwrap_err();
    let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "mesh[1].partner[0].bundle_url",
            "mesh[1].partner[1].bundle_url",
            "mesh[1].partner[1].unprotected",
            "mesh[1].partner[0].trust_domain",
            "bundle_endpoint.listen",
            "bundle_endpoint.certificate",
        ],
        "{error}"
    );
}

#[test]
fn the_replica_group_is_replicas_and_its_old_name_cluster_still_reads_with_a_warning() {
    let section = |name: &str, members: &str| {
        format!(
            "{MINIMAL}\n[{name}]\nmembers = [{members}]\nself = \"127.0.0.1:15014\"\n\
             member_timeout = \"3s\"\n"
        )
    };
    let members = "\"127.0.0.1:15014\", \"127.0.0.2:15014\"";
    let current = parse(&section("replicas", members)).unwrap();
    let replicas = current.replicas.as_ref().unwrap();
    assert_eq!(replicas.members.len(), 2);
    assert_eq!(replicas.member_timeout, Duration::from_secs(3));
    assert!(current.deprecations.is_empty());

    // The old spelling: the same settings, and a warning that says what to write instead.
    let old = parse(&section("cluster", members)).unwrap();
    assert_eq!(
        old.replicas.as_ref().unwrap().members,
        current.replicas.as_ref().unwrap().members
    );
    assert_eq!(old.deprecations.len(), 1);
    assert!(old.deprecations[0].contains("[cluster] is now [replicas]"));
    // A problem names the key as the file spells it.
    let keys = |text: &str| -> Vec<String> {
        parse(text)
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| p.key)
            .collect()
    };
    assert_eq!(
        keys(&section("cluster", "")),
        ["cluster.members", "cluster.self"]
    );
    assert_eq!(
        keys(&section("replicas", "")),
        ["replicas.members", "replicas.self"]
    );
    // Both at once: refused.
    let both = format!(
        "{}\n[cluster]\nmembers = [{members}]\n",
        section("replicas", members)
    );
    assert_eq!(keys(&both), ["cluster"]);
}
