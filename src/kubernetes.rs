//! The Kubernetes API servers meshroot talks to: TokenReview (`authentication.k8s.io/v1`), get
//! pod, list pods on a node — over `kube`'s client (TLS to the cluster's CA, credentials from a
//! kubeconfig or the in-cluster service account, pooled connections).
//!
//! RBAC the meshroot service account needs in each cluster: `tokenreviews` `create`
//! (authentication.k8s.io), `pods` `get` and `list` (core).

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::authn::token_review::{ApiError, ApiFuture, ClusterApi, PodInfo, ReviewStatus};
use crate::authn::BearerToken;

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

/// One cluster's API server.
#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
}

impl KubeCluster {
    /// From a kubeconfig file (remote clusters), optionally a named context.
    pub async fn from_kubeconfig(
        path: &Path,
        context: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ClusterSetupError> {
        let kubeconfig_error = |source| ClusterSetupError::Kubeconfig {
            path: path.display().to_string(),
            source,
        };
        let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
        let options = KubeConfigOptions {
            context,
            ..KubeConfigOptions::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(kubeconfig_error)?;
        Self::from_config(config, timeout)
    }

    /// The local cluster, from the pod's service account (`KUBERNETES_SERVICE_HOST`, token and CA
    /// files under `/var/run/secrets/kubernetes.io/serviceaccount`).
    pub fn in_cluster(timeout: Duration) -> Result<Self, ClusterSetupError> {
        let config = kube::Config::incluster().map_err(ClusterSetupError::InCluster)?;
        Self::from_config(config, timeout)
    }

    fn from_config(mut config: kube::Config, timeout: Duration) -> Result<Self, ClusterSetupError> {
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        // Istio clients retry on their own; a hidden retry here would only add latency.
        config.default_retry = false;
        let client = kube::Client::try_from(config).map_err(ClusterSetupError::Client)?;
        Ok(Self { client })
    }
}

fn api_error(error: kube::Error) -> ApiError {
    match error {
        kube::Error::Api(status) => ApiError(format!(
            "API server answered {} {}: {}",
            status.code, status.reason, status.message
        )),
        other => ApiError(other.to_string()),
    }
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
