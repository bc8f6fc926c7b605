//! `ImpersonatedIdentity`: a node proxy (ztunnel) asks for the certificate of a workload on its
//! node. As in istiod, it is allowed only when:
//! 1. the caller's credential names its pod: a TokenReview attributed the token to a pod, or the
//!    token was verified offline and is a projected token bound to a pod (`kubernetes.io.pod`),
//!    so whichever token authenticator accepted ztunnel's token, impersonation works;
//! 2. its `<namespace>/<service-account>` is one of the mesh's trusted node accounts;
//! 3. the requested identity is an Istio SPIFFE ID in the mesh's trust domain or an alias;
//! 4. the caller's pod exists in its cluster with the uid its token names, on some node (the
//!    node the token names, when it names one); a token verified offline is looked up in the
//!    cluster its request names (`clusterid`), which must be one of the mesh's;
//! 5. at least one running pod of the requested service account is on that same node.
//!
//! Pod lookups go to the caller's cluster (get pod; list pods by `spec.nodeName`) and are cached
//! briefly. Every failure has its own reason; all are authentication failures.

pub use crate::domain::caller::NodeAccount;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::token_review::{ClusterApi, PodInfo};
use super::Caller;
use crate::domain::clock::Clock;
use crate::domain::identity::{SpiffeId, TrustDomain};

/// Why an impersonation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImpersonationError {
    #[error(
        "the caller's credential ({0}) names no pod; a node proxy must present its pod-bound \
         service-account token"
    )]
    NoPod(&'static str),
    #[error("the request names no cluster of this mesh (clusterid {0:?}) to confirm the caller's pod in")]
    NoCluster(String),
    #[error("{0} is not a trusted node account of this mesh")]
    UntrustedAccount(String),
    #[error("the impersonated identity {0:?} is not an Istio SPIFFE ID of this mesh")]
    InvalidIdentity(String),
    #[error("the caller's pod could not be confirmed: {0}")]
    CallerPod(String),
    #[error("no running pod of {identity} on node {node:?}")]
    NoPodOnNode { identity: String, node: String },
    #[error("pod lookup in cluster {cluster:?} failed: {reason}")]
    Lookup { cluster: String, reason: String },
}

impl ImpersonationError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoPod(_) => "impersonation-caller-pod-unknown",
            Self::NoCluster(_) => "impersonation-cluster-unknown",
            Self::UntrustedAccount(_) => "impersonation-untrusted-account",
            Self::InvalidIdentity(_) => "impersonation-identity-invalid",
            Self::CallerPod(_) => "impersonation-caller-pod-mismatch",
            Self::NoPodOnNode { .. } => "impersonation-no-pod-on-node",
            Self::Lookup { .. } => "impersonation-lookup-failed",
        }
    }
}

/// (cluster, namespace, pod name) → when the entry expires, and the pod if it exists.
type PodCache = HashMap<(String, String, String), (SystemTime, Option<PodInfo>)>;
/// (cluster, node) → when the entry expires, and the pods on the node.
type NodeCache = HashMap<(String, String), (SystemTime, Vec<PodInfo>)>;

/// Decides impersonation requests, looking pods up in the caller's cluster.
pub struct NodeAuthorizer {
    clusters: HashMap<String, Arc<dyn ClusterApi>>,
    cache_ttl: Duration,
    clock: Arc<dyn Clock>,
    pods: Mutex<PodCache>,
    nodes: Mutex<NodeCache>,
}

impl NodeAuthorizer {
    /// `clusters`: the API of each cluster id.
    pub fn new(
        clusters: HashMap<String, Arc<dyn ClusterApi>>,
        cache_ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            clusters,
            cache_ttl,
            clock,
            pods: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// The identity the caller may have a certificate for, or why not. `trust_domains`: the
    /// mesh's trust domain and its aliases.
    pub(crate) async fn authorize(
        &self,
        caller: &Caller,
        requested: &str,
        trust_domains: &[TrustDomain],
        trusted_accounts: &[NodeAccount],
    ) -> Result<SpiffeId, ImpersonationError> {
        let trusted = trusted_accounts.iter().any(|account| {
            account.namespace == caller.identity.namespace()
                && account.service_account == caller.identity.service_account()
        });
        if !trusted {
            return Err(ImpersonationError::UntrustedAccount(format!(
                "{}/{}",
                caller.identity.namespace(),
                caller.identity.service_account()
            )));
        }
        let identity = SpiffeId::parse(requested)
            .ok()
            .filter(|id| trust_domains.contains(id.trust_domain()))
            .ok_or_else(|| ImpersonationError::InvalidIdentity(requested.to_owned()))?;
        let pod_ref = caller
            .pod
            .as_ref()
            .ok_or(ImpersonationError::NoPod(caller.authenticator.name()))?;
        if caller.cluster.is_empty() {
            return Err(ImpersonationError::NoCluster(String::new()));
        }
        let api = self
            .clusters
            .get(&caller.cluster)
            .ok_or_else(|| ImpersonationError::NoCluster(caller.cluster.clone()))?;
        let lookup = |reason: String| ImpersonationError::Lookup {
            cluster: caller.cluster.clone(),
            reason,
        };
        let pod = self
            .pod(
                &caller.cluster,
                api.as_ref(),
                caller.identity.namespace(),
                &pod_ref.name,
            )
            .await
            .map_err(lookup)?
            .ok_or_else(|| {
                ImpersonationError::CallerPod(format!("pod {:?} does not exist", pod_ref.name))
            })?;
        if pod.uid != pod_ref.uid {
            return Err(ImpersonationError::CallerPod(format!(
                "pod {:?} has uid {:?}, the token was issued for {:?}",
                pod.name, pod.uid, pod_ref.uid
            )));
        }
        if pod.node_name.is_empty() {
            return Err(ImpersonationError::CallerPod(format!(
                "pod {:?} is not scheduled on a node",
                pod.name
            )));
        }
        if !pod_ref.node.is_empty() && pod_ref.node != pod.node_name {
            return Err(ImpersonationError::CallerPod(format!(
                "pod {:?} runs on node {:?}, its token names node {:?}",
                pod.name, pod.node_name, pod_ref.node
            )));
        }
        let on_node = self
            .pods_on_node(&caller.cluster, api.as_ref(), &pod.node_name)
            .await
            .map_err(lookup)?;
        let present = on_node.iter().any(|candidate| {
            candidate.namespace == identity.namespace()
                && candidate.service_account == identity.service_account()
                && candidate.phase == "Running"
        });
        if !present {
            return Err(ImpersonationError::NoPodOnNode {
                identity: identity.to_string(),
                node: pod.node_name,
            });
        }
        Ok(identity)
    }

    async fn pod(
        &self,
        cluster: &str,
        api: &dyn ClusterApi,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PodInfo>, String> {
        let key = (cluster.to_owned(), namespace.to_owned(), name.to_owned());
        let now = self.clock.now();
        if let Some((expires, pod)) = lock(&self.pods).get(&key) {
            if *expires > now {
                return Ok(pod.clone());
            }
        }
        let pod = api.get_pod(namespace, name).await.map_err(|e| e.0)?;
        let mut cache = lock(&self.pods);
        cache.retain(|_, (expires, _)| *expires > now);
        cache.insert(key, (now + self.cache_ttl, pod.clone()));
        Ok(pod)
    }

    async fn pods_on_node(
        &self,
        cluster: &str,
        api: &dyn ClusterApi,
        node: &str,
    ) -> Result<Vec<PodInfo>, String> {
        let key = (cluster.to_owned(), node.to_owned());
        let now = self.clock.now();
        if let Some((expires, pods)) = lock(&self.nodes).get(&key) {
            if *expires > now {
                return Ok(pods.clone());
            }
        }
        let pods = api.pods_on_node(node).await.map_err(|e| e.0)?;
        let mut cache = lock(&self.nodes);
        cache.retain(|_, (expires, _)| *expires > now);
        cache.insert(key, (now + self.cache_ttl, pods.clone()));
        Ok(pods)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_accounts() {
        assert_eq!(
            NodeAccount::parse("istio-system/ztunnel"),
            Some(NodeAccount {
                namespace: "istio-system".into(),
                service_account: "ztunnel".into()
            })
        );
        assert_eq!(NodeAccount::parse("ztunnel"), None);
        assert_eq!(NodeAccount::parse("a/b/c"), None);
        assert_eq!(NodeAccount::parse("/b"), None);
    }
}
