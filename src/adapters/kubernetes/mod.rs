//! The Kubernetes API servers meshroot talks to: TokenReview (`authentication.k8s.io/v1`), get
//! pod, list pods on a node — over `kube`'s client (TLS to the cluster's CA, credentials from a
//! kubeconfig or the in-cluster service account, pooled connections).
//!
//! RBAC the meshroot service account needs in each cluster: `tokenreviews` `create`
//! (authentication.k8s.io), `pods` `get` and `list` (core). In its own cluster, for the elected
//! replica's duties ([`lease`], [`publish`]): `leases` `get`, `create`, `update`
//! (coordination.k8s.io) and `secrets` `get`, `list`, `watch`, `create`, `update` in its
//! namespace; `namespaces` `list`, `watch` and `configmaps` `get`, `list`, `watch`, `create`,
//! `update` in every namespace. With `[replicas]` ([`members`]): `statefulsets` `get` (apps) in its
//! namespace. `deploy/base/rbac.yaml` grants exactly these, and
//! `tests/it/deploy.rs` checks the grants against the calls the code makes.

pub mod cacerts;
pub mod lease;
pub mod publish;
pub mod replica_set;

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::adapters::authn::token_review::{
    ApiError, ApiFuture, ClusterApi, PodInfo, ReviewStatus,
};
use crate::adapters::authn::BearerToken;

/// Why a cluster's API access could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterSetupError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster configuration: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("building the API client: {0}")]
    Client(#[source] kube::Error),
}

/// How to reach a cluster's API server.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Access<'a> {
    /// A kubeconfig file (remote clusters), optionally a context in it.
    Kubeconfig {
        path: &'a std::path::Path,
        context: Option<&'a str>,
    },
    /// The pod's own service account (the cluster meshroot runs in).
    InCluster,
}

/// One cluster's API server.
#[derive(Clone)]
pub(crate) struct KubeCluster {
    client: kube::Client,
}

impl KubeCluster {
    /// A client for `access` whose every call (connect, read, write) is bounded by `timeout`.
    pub async fn connect(access: Access<'_>, timeout: Duration) -> Result<Self, ClusterSetupError> {
        // Istio clients retry on their own; a hidden retry here would only add latency.
        Self::connect_with(access, timeout, timeout, false).await
    }

    /// A client for watches: connects and writes within `timeout`, but reads may wait as long
    /// as a watch stays open (the API server ends each watch within about five minutes).
    pub(crate) async fn connect_for_watches(
        access: Access<'_>,
        timeout: Duration,
    ) -> Result<Self, ClusterSetupError> {
        Self::connect_with(access, timeout, WATCH_READ_TIMEOUT, true).await
    }

    async fn connect_with(
        access: Access<'_>,
        timeout: Duration,
        read_timeout: Duration,
        retry: bool,
    ) -> Result<Self, ClusterSetupError> {
        let mut config = kube_config(access).await?;
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(read_timeout);
        config.write_timeout = Some(timeout);
        config.default_retry = retry;
        // kube's TLS asks rustls for the process-wide crypto provider, which rustls cannot
        // pick by itself when two are built in (ring, and AWS-LC for the post-quantum key
        // exchange of meshroot's own listeners): ring, as everywhere else. Installing it is
        // idempotent; a provider already installed stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = kube::Client::try_from(config).map_err(ClusterSetupError::Client)?;
        Ok(Self { client })
    }

    /// The API client (for the elected replica's duties).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }
}

/// Longer than the server-side timeout kube's watcher asks for (290 s).
const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(330);

/// The client configuration: a kubeconfig file (optionally a named context), or the pod's
/// service account (`KUBERNETES_SERVICE_HOST`, token and CA files under
/// `/var/run/secrets/kubernetes.io/serviceaccount`).
async fn kube_config(access: Access<'_>) -> Result<kube::Config, ClusterSetupError> {
    match access {
        Access::Kubeconfig { path, context } => {
            let kubeconfig_error = |source| ClusterSetupError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            let options = KubeConfigOptions {
                context: context.map(str::to_owned),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(kubeconfig_error)
        }
        Access::InCluster => kube::Config::incluster().map_err(ClusterSetupError::InCluster),
    }
}

/// An API error in a line for the log: the status code, reason and message for API answers.
pub(crate) fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!(
            "API server answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => other.to_string(),
    }
}

/// 409: a write raced another (stale resourceVersion) or the object already exists.
pub(crate) fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

fn api_error(error: kube::Error) -> ApiError {
    ApiError(describe(&error))
}

fn pod_info(pod: Pod) -> PodInfo {
    let spec = pod.spec.unwrap_or_default();
    PodInfo {
        namespace: pod.metadata.namespace.unwrap_or_default(),
        name: pod.metadata.name.unwrap_or_default(),
        uid: pod.metadata.uid.unwrap_or_default(),
        service_account: spec.service_account_name.unwrap_or_default(),
        node_name: spec.node_name.unwrap_or_default(),
        phase: pod.status.and_then(|s| s.phase).unwrap_or_default(),
    }
}

impl ClusterApi for KubeCluster {
    fn review_token<'a>(
        &'a self,
        token: &'a BearerToken,
        audiences: &'a [String],
    ) -> ApiFuture<'a, ReviewStatus> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.expose().to_owned()),
                    audiences: Some(audiences.to_vec()),
                },
                ..TokenReview::default()
            };
            let reviewed = Api::<TokenReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(api_error)?;
            let status = reviewed
                .status
                .ok_or_else(|| ApiError("the TokenReview came back without a status".into()))?;
            let user = status.user.unwrap_or_default();
            Ok(ReviewStatus {
                authenticated: status.authenticated.unwrap_or(false),
                username: user.username.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default().into_iter().collect(),
                audiences: status.audiences.unwrap_or_default(),
                error: status.error.unwrap_or_default(),
            })
        })
    }

    fn get_pod<'a>(&'a self, namespace: &'a str, name: &'a str) -> ApiFuture<'a, Option<PodInfo>> {
        Box::pin(async move {
            let pod = Api::<Pod>::namespaced(self.client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(api_error)?;
            Ok(pod.map(pod_info))
        })
    }

    fn pods_on_node<'a>(&'a self, node: &'a str) -> ApiFuture<'a, Vec<PodInfo>> {
        Box::pin(async move {
            let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
            let pods = Api::<Pod>::all(self.client.clone())
                .list(&params)
                .await
                .map_err(api_error)?;
            Ok(pods.items.into_iter().map(pod_info).collect())
        })
    }
}
