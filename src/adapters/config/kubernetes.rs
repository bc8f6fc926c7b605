//! `[kubernetes]`: the cluster meshroot runs in, for its duties there.

use std::path::Path;

use super::model::*;
use super::raw::*;
use super::values::Problems;
use super::values::*;

/// `[kubernetes]`: the cluster meshroot runs in, for its duties there.
pub(super) fn kubernetes(
    raw: RawKubernetes,
    meshes: &[MeshConfig],
    base: &Path,
    p: &mut Problems,
) -> KubernetesConfig {
    let mesh = raw
        .mesh
        .or_else(|| meshes.first().map(|m| m.name.clone()))
        .unwrap_or_default();
    if !meshes.iter().any(|m| m.name == mesh) {
        p.add(
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
        base,
        "kubernetes.kubeconfig",
        p,
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
        p.add(
            "kubernetes.identity".into(),
            "required when neither POD_NAME nor HOSTNAME is set".into(),
        );
    }
    let root_configmap_name = raw
        .root_configmap_name
        .unwrap_or_else(|| super::model::DEFAULT_ROOT_CONFIGMAP.to_owned());
    let crl_configmap_name = raw
        .crl_configmap_name
        .unwrap_or_else(|| super::model::DEFAULT_CRL_CONFIGMAP.to_owned());
    for (field, value) in [
        ("root_configmap_name", &root_configmap_name),
        ("crl_configmap_name", &crl_configmap_name),
    ] {
        // A ConfigMap's name: a DNS subdomain (RFC 1123), lowercase.
        if !super::values::is_dns_name(value) || value.chars().any(|c| c.is_ascii_uppercase()) {
            p.add(
                format!("kubernetes.{field}"),
                format!("{value:?} is not a ConfigMap name"),
            );
        }
    }
    for (field, value) in [("namespace", &namespace)] {
        if !is_mesh_name(value) {
            p.add(
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
            p.add(
                format!("kubernetes.istiod_revisions[{index}]"),
                format!("{revision:?} is not a revision name"),
            );
        }
    }
    let mut duration = |text: Option<String>, default, key: &str| {
        duration_setting(text.as_deref(), default, key, p)
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
        root_configmap_name,
        crl_configmap_name,
        cluster_trust_bundle: raw.cluster_trust_bundle.unwrap_or(false),
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
}
