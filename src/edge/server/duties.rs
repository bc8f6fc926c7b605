//! The Kubernetes duties of the elected replica: publishing each mesh's trust bundle
//! (`istio-ca-root-cert`, the ClusterTrustBundle) and istiod's serving certificate, under a
//! Lease.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::adapters::config::ClusterAccess;
use crate::adapters::config::{ClusterConfig, Config, KubernetesConfig};
use crate::adapters::kubernetes;
use crate::adapters::kubernetes::cacerts::{
    CacertsFiles, CacertsFuture, CacertsSettings, CacertsSource, IstiodProbe,
};
use crate::adapters::kubernetes::lease::LeaseSettings;
use crate::adapters::kubernetes::publish::{
    self, IssueFuture, MeshMaterial, PublishSettings, ServerCertificate,
};
use crate::adapters::kubernetes::{ClusterSetupError, KubeCluster};
use crate::issuance::CurrentAuthority;

use super::error::ServeError;

/// Starts the elected replica's duties in its own cluster: the Lease election, and, while
/// leading, root distribution and istiod's certificate. Returns the election's task.
pub(super) async fn start_cluster_duties(
    settings: &KubernetesConfig,
    current: Arc<CurrentAuthority>,
    leader: watch::Sender<bool>,
    crls: Option<Arc<super::crl::CrlKeeper>>,
    (background, shutdown): (&TaskTracker, watch::Receiver<bool>),
) -> Result<JoinHandle<()>, ServeError> {
    let (metrics, clock) = (
        current.get().metrics().clone(),
        current.get().clock().clone(),
    );
    let cluster = KubeCluster::connect_for_watches(access(&settings.access), KUBERNETES_TIMEOUT)
        .await
        .map_err(|source| ServeError::Cluster {
            mesh: settings.mesh.clone(),
            cluster: "[kubernetes]".to_owned(),
            source,
        })?;
    let leads = leader.subscribe();
    let election = tokio::spawn(crate::adapters::kubernetes::lease::run(
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
        root_configmap_name: settings.root_configmap_name.clone(),
        crl_configmap_name: settings.crl_configmap_name.clone(),
        cluster_trust_bundle: settings.cluster_trust_bundle,
        istiod_tls: settings.istiod_tls,
        istiod_namespace: settings.namespace.clone(),
        istiod_revisions: settings.istiod_revisions.clone(),
        resync: settings.resync,
    };
    let mesh: Arc<dyn MeshMaterial> = Arc::new(PublishedMesh {
        current,
        mesh: settings.mesh.clone(),
        namespace: settings.namespace.clone(),
        istiod_ttl: settings.istiod_tls_ttl,
    });
    if publish.root_configmap {
        background.spawn(publish::run_root_distribution(
            cluster.client(),
            publish.clone(),
            mesh.clone(),
            leads.clone(),
            shutdown.clone(),
        ));
    }
    if let (true, Some(crls)) = (publish.root_configmap, crls) {
        background.spawn(publish::run_crl_distribution(
            cluster.client(),
            publish.clone(),
            Box::new(move || crls.current().for_istio().map(str::to_owned)),
            Box::new(move |_namespace| {
                let at = crate::domain::clock::unix_seconds(clock.now());
                metrics.revocation(|g| {
                    g.published.insert("configmap".into(), at);
                });
            }),
            leads.clone(),
            shutdown.clone(),
        ));
    }
    if publish.cluster_trust_bundle {
        background.spawn(publish::run_cluster_trust_bundle(
            cluster.client(),
            publish.clone(),
            mesh.clone(),
            leads.clone(),
            shutdown.clone(),
        ));
    }
    if publish.istiod_tls {
        background.spawn(publish::run_istiod_certificate(
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
pub(super) struct PublishedMesh {
    current: Arc<CurrentAuthority>,
    mesh: String,
    /// istiod's namespace (where `istiod-tls` is kept).
    namespace: String,
    istiod_ttl: Duration,
}

impl MeshMaterial for PublishedMesh {
    fn istiod_certificate_kept(&self, validity: Option<(SystemTime, SystemTime)>) {
        let kept = validity.map(|(from, to)| crate::domain::metrics::IstiodTls {
            mesh: self.mesh.clone(),
            namespace: self.namespace.clone(),
            not_before: crate::domain::clock::unix_seconds(from),
            not_after: crate::domain::clock::unix_seconds(to),
        });
        self.current.get().metrics().istiod_tls(kept);
    }

    fn bundle_pem(&self) -> Option<String> {
        let ca = self.current.get();
        // Only a bundle the cluster confirmed is published.
        if ca.holds().is_set(crate::issuance::Hold::ClusterGate) {
            return None;
        }
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
            let identity = crate::domain::identity::SpiffeId::parse(spiffe_id)
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
pub(super) const KUBERNETES_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for a listener's task to end by `deadline`, then aborts it.
pub(super) async fn finish_by(
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

pub(super) async fn connect_cluster(
    cluster: &ClusterConfig,
) -> Result<KubeCluster, ClusterSetupError> {
    KubeCluster::connect(access(&cluster.access), cluster.review_timeout).await
}

/// The configured way to reach a cluster, as the Kubernetes client takes it.
pub(super) fn access(configured: &ClusterAccess) -> kubernetes::Access<'_> {
    match configured {
        ClusterAccess::Kubeconfig { path, context } => kubernetes::Access::Kubeconfig {
            path,
            context: context.as_deref(),
        },
        ClusterAccess::InCluster => kubernetes::Access::InCluster,
    }
}

/// Starts keeping the `cacerts` Secret of every `[[mesh.cluster]]` with `cacerts = true`: on
/// the elected replica with `[kubernetes]`, on this one otherwise.
pub(super) async fn start_cacerts_duties(
    config: &Config,
    current: Arc<CurrentAuthority>,
    leads: watch::Receiver<bool>,
    crls: Arc<super::crl::CrlKeeper>,
    (background, shutdown): (&TaskTracker, watch::Receiver<bool>),
) -> Result<(), ServeError> {
    for mesh in &config.meshes {
        for cluster in &mesh.clusters {
            let Some(cacerts) = &cluster.cacerts else {
                continue;
            };
            let api = KubeCluster::connect_for_watches(access(&cluster.access), KUBERNETES_TIMEOUT)
                .await
                .map_err(|source| ServeError::Cluster {
                    mesh: mesh.name.clone(),
                    cluster: cluster.id.clone(),
                    source,
                })?;
            let source: Arc<dyn CacertsSource> = Arc::new(ClusterIntermediates {
                current: current.clone(),
                mesh: mesh.name.clone(),
                cluster: cluster.id.clone(),
                lifetime: cacerts.lifetime,
                crls: crls.clone(),
            });
            background.spawn(kubernetes::cacerts::run_cacerts(
                api.client(),
                CacertsSettings {
                    cluster: cluster.id.clone(),
                    namespace: cacerts.namespace.clone(),
                    renew_at: cacerts.renew_at,
                    resync: DEFAULT_CACERTS_RESYNC,
                    istiod: cacerts.istiod_address.clone().map(|address| IstiodProbe {
                        address,
                        interval: cacerts.istiod_probe_interval,
                    }),
                    crl_validity: config.revocation.crl_validity,
                },
                source,
                leads.clone(),
                shutdown.clone(),
            ));
        }
    }
    Ok(())
}

/// Everything is checked again this often, events or not.
const DEFAULT_CACERTS_RESYNC: Duration = Duration::from_secs(600);

/// A cluster's intermediates as the `cacerts` keeper sees them: issued from the mesh in force.
struct ClusterIntermediates {
    current: Arc<CurrentAuthority>,
    mesh: String,
    cluster: String,
    lifetime: Duration,
    crls: Arc<super::crl::CrlKeeper>,
}

impl CacertsSource for ClusterIntermediates {
    fn bundle_pem(&self) -> Option<String> {
        let ca = self.current.get();
        if ca.holds().is_set(crate::issuance::Hold::ClusterGate) {
            return None;
        }
        ca.mesh_signer(&self.mesh)
            .map(|signer| signer.root_bundle_pem().to_owned())
    }

    fn chain_tail_pem(&self) -> Option<String> {
        let ca = self.current.get();
        let signer = ca.mesh_signer(&self.mesh)?;
        let root = signer.issuing_root()?;
        Some(format!(
            "{}{}",
            signer.intermediates_pem(),
            crate::domain::keys::certificate_pem(root)
        ))
    }

    fn now(&self) -> SystemTime {
        self.current.get().clock().now()
    }

    fn report_istiod(&self, current: Option<bool>) {
        self.current
            .get()
            .metrics()
            .istiod_intermediate(&self.cluster, current);
    }

    fn crl_pem(&self) -> Option<String> {
        self.crls.current().for_istio().map(str::to_owned)
    }

    fn revoked(&self, serial: &[u8]) -> bool {
        self.current.get().revocations().revoked(serial).is_some()
    }

    fn report_intermediate(&self, der: Option<&[u8]>) {
        let ca = self.current.get();
        let mut kept = ca
            .metrics()
            .cluster_intermediates
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (self.mesh.clone(), self.cluster.clone());
        match der.and_then(crate::domain::audit::rotation::validity_of) {
            Some(validity) => kept.insert(key, validity),
            None => kept.remove(&key),
        };
    }

    fn report_crl_published(&self) {
        let ca = self.current.get();
        let at = crate::domain::clock::unix_seconds(ca.clock().now());
        ca.metrics().revocation(|g| {
            g.published.insert(format!("cacerts/{}", self.cluster), at);
        });
    }

    fn issue(&self) -> CacertsFuture<'_> {
        Box::pin(async move {
            let ca = self.current.get();
            let issued = ca
                .issue_cluster_intermediate(&self.mesh, &self.cluster, self.lifetime)
                .await
                .map_err(|e| e.to_string())?;
            Ok(CacertsFiles {
                ca_cert_pem: issued.ca_cert_pem,
                ca_key_pem: issued.ca_key_pem,
                cert_chain_pem: issued.cert_chain_pem,
                root_cert_pem: issued.root_cert_pem,
            })
        })
    }
}
