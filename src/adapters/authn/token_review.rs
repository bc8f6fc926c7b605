//! Kubernetes TokenReview: the bearer token is reviewed by the API server of the cluster named
//! by the `clusterid` header (`authentication.k8s.io/v1`, `spec.audiences` = the configured
//! audiences). Accepted only when `status.authenticated` is true, the user is in group
//! `system:serviceaccounts` and named `system:serviceaccount:<ns>:<sa>`; the pod name and uid come
//! from `status.user.extra` (`authentication.kubernetes.io/pod-name`, `…/pod-uid`).
//!
//! The API server is protected: positive reviews are cached by the SHA-256 of cluster id and
//! token (never the token) until the earlier of the token's `exp` and the cluster's cache limit;
//! concurrent requests with the same token share one review; reviews per cluster are bounded in
//! number and time. An API server that cannot answer makes the request fail as retryable.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tokio::sync::{OnceCell, Semaphore};

use super::{
    AuthFuture, AuthOutcome, AuthRequest, Authenticator, AuthenticatorKind, AuthnError,
    Authorization, BearerToken, Caller, PodRef,
};
use crate::domain::clock::Clock;
use crate::domain::identity::{SpiffeId, TrustDomain};
use crate::domain::metrics::Metrics;

pub(crate) const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
pub(crate) const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub(crate) const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
/// Set by Kubernetes 1.30 and later for tokens bound to a pod scheduled on a node.
pub(crate) const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// Above this many cached reviews, expired ones are swept on insert.
const CACHE_SWEEP_THRESHOLD: usize = 10_000;

/// A Kubernetes API server as meshroot uses it. The real one speaks HTTP (`kubernetes` module);
/// tests may substitute their own.
pub trait ClusterApi: Send + Sync {
    fn review_token<'a>(
        &'a self,
        token: &'a BearerToken,
        audiences: &'a [String],
    ) -> ApiFuture<'a, ReviewStatus>;
    fn get_pod<'a>(&'a self, namespace: &'a str, name: &'a str) -> ApiFuture<'a, Option<PodInfo>>;
    fn pods_on_node<'a>(&'a self, node: &'a str) -> ApiFuture<'a, Vec<PodInfo>>;
}

pub(crate) type ApiFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// The API server could not answer (unreachable, 5xx, refused our credentials, bad response).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ApiError(pub String);

/// `status` of a TokenReview.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewStatus {
    pub authenticated: bool,
    pub username: String,
    pub groups: Vec<String>,
    pub extra: HashMap<String, Vec<String>>,
    /// `status.audiences`: the audiences the token was found valid for (may be empty).
    pub audiences: Vec<String>,
    /// `status.error`, when the API server gave one.
    pub error: String,
}

/// What meshroot needs of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub node_name: String,
    /// `status.phase`, e.g. `Running`.
    pub phase: String,
}

/// One cluster whose API server reviews tokens for a mesh.
#[derive(Clone)]
pub(crate) struct ReviewCluster {
    /// The `clusterid` header value that selects it.
    pub id: String,
    pub mesh: String,
    pub trust_domain: TrustDomain,
    pub audiences: Vec<String>,
    pub api: Arc<dyn ClusterApi>,
    /// A review taking longer than this fails as unavailable.
    pub timeout: Duration,
    /// At most this many reviews in flight to this API server.
    pub max_concurrent_reviews: usize,
    /// Positive reviews are reused for at most this long (and never past the token's `exp`).
    pub cache_ttl: Duration,
}

struct Cluster {
    config: ReviewCluster,
    permits: Semaphore,
}

/// A review in flight or done; concurrent requests with the same token share it.
#[derive(Default)]
struct CacheEntry {
    result: OnceCell<Result<Reviewed, AuthnError>>,
}

#[derive(Clone)]
struct Reviewed {
    caller: Caller,
    expires_at: SystemTime,
}

/// The TokenReview authenticator over all configured clusters.
pub(crate) struct TokenReviewAuthenticator {
    clusters: HashMap<String, Cluster>,
    cache: Mutex<HashMap<[u8; 32], Arc<CacheEntry>>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl TokenReviewAuthenticator {
    /// `clusters` must have distinct ids (the config layer guarantees it).
    pub fn new(clusters: Vec<ReviewCluster>, clock: Arc<dyn Clock>) -> Self {
        let clusters = clusters
            .into_iter()
            .map(|config| {
                let permits = Semaphore::new(config.max_concurrent_reviews.max(1));
                (config.id.clone(), Cluster { config, permits })
            })
            .collect();
        Self {
            clusters,
            cache: Mutex::new(HashMap::new()),
            clock,
            metrics: Arc::default(),
        }
    }

    /// Reports review latencies and cache hits to `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    async fn authenticate_token(
        &self,
        cluster: &Cluster,
        token: &BearerToken,
    ) -> Result<Caller, AuthnError> {
        let key = cache_key(&cluster.config.id, token);
        let entry = self.entry(key);
        let mut reviewed_now = false;
        let reviewed = entry
            .result
            .get_or_init(|| {
                reviewed_now = true;
                self.review(cluster, token)
            })
            .await
            .clone();
        // Joining a review already in flight counts as a hit: no new call was made.
        self.metrics.token_review_cache(!reviewed_now);
        Ok(reviewed?.caller)
    }

    /// The cache entry to use: a live positive review, a review in flight, or a new one.
    fn entry(&self, key: [u8; 32]) -> Arc<CacheEntry> {
        let now = self.clock.now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let reusable = |entry: &CacheEntry| match entry.result.get() {
            None => true,
            Some(Ok(reviewed)) => reviewed.expires_at > now,
            Some(Err(_)) => false,
        };
        if let Some(entry) = cache.get(&key) {
            if reusable(entry) {
                return entry.clone();
            }
        }
        if cache.len() >= CACHE_SWEEP_THRESHOLD {
            // An unfinished entry is in flight only while a request holds it besides the cache;
            // one whose every request was cancelled mid-review is garbage (issue 14, D9).
            cache.retain(|_, entry| {
                reusable(entry) && (entry.result.initialized() || Arc::strong_count(entry) > 1)
            });
        }
        let entry = Arc::new(CacheEntry::default());
        cache.insert(key, entry.clone());
        entry
    }

    async fn review(&self, cluster: &Cluster, token: &BearerToken) -> Result<Reviewed, AuthnError> {
        let config = &cluster.config;
        let unavailable = |reason: String| AuthnError::ReviewUnavailable {
            cluster: config.id.clone(),
            reason,
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(config.timeout, async {
            let _permit = cluster
                .permits
                .acquire()
                .await
                .map_err(|_| ApiError("the review limiter is closed".into()))?;
            config.api.review_token(token, &config.audiences).await
        })
        .await;
        self.metrics.token_review(started.elapsed());
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let status = match answer {
            Err(_) => {
                tracing::warn!(cluster = %config.id, latency_ms, "token review timed out");
                return Err(unavailable(format!(
                    "no answer within {:?}",
                    config.timeout
                )));
            }
            Ok(Err(error)) => {
                tracing::warn!(cluster = %config.id, latency_ms, %error, "token review failed");
                return Err(unavailable(error.0));
            }
            Ok(Ok(status)) => status,
        };
        tracing::info!(
            cluster = %config.id,
            latency_ms,
            authenticated = status.authenticated,
            user = %status.username,
            "token review"
        );
        let caller = caller_from_review(config, &status)?;
        let now = self.clock.now();
        let mut expires_at = now + config.cache_ttl;
        if let Some(exp) = unverified_expiry(token.expose()) {
            expires_at = expires_at.min(exp);
        }
        Ok(Reviewed { caller, expires_at })
    }
}

/// Judges a review's status (pure).
fn caller_from_review(config: &ReviewCluster, status: &ReviewStatus) -> Result<Caller, AuthnError> {
    if !status.authenticated {
        let reason = if status.error.is_empty() {
            "status.authenticated is false".to_owned()
        } else {
            status.error.clone()
        };
        return Err(AuthnError::ReviewRejected {
            cluster: config.id.clone(),
            reason,
        });
    }
    // An audience-bound token is valid only for the audiences the API server lists back.
    if !status.audiences.is_empty()
        && !status
            .audiences
            .iter()
            .any(|a| config.audiences.contains(a))
    {
        return Err(AuthnError::ReviewRejected {
            cluster: config.id.clone(),
            reason: format!(
                "token audiences {:?} exclude {:?}",
                status.audiences, config.audiences
            ),
        });
    }
    if !status.groups.iter().any(|g| g == SERVICE_ACCOUNTS_GROUP) {
        return Err(AuthnError::ReviewNotServiceAccount(format!(
            "{:?} is not in group {SERVICE_ACCOUNTS_GROUP}",
            status.username
        )));
    }
    let malformed = || {
        AuthnError::ReviewNotServiceAccount(format!(
            "{:?} is not system:serviceaccount:<namespace>:<name>",
            status.username
        ))
    };
    let (namespace, service_account) = status
        .username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(malformed)?;
    let identity = SpiffeId::new(config.trust_domain.clone(), namespace, service_account)
        .map_err(|_| malformed())?;
    let first = |key: &str| status.extra.get(key).and_then(|v| v.first()).cloned();
    let pod = match (first(POD_NAME_EXTRA), first(POD_UID_EXTRA)) {
        (Some(name), Some(uid)) => Some(PodRef {
            name,
            uid,
            node: first(NODE_NAME_EXTRA).unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(Caller {
        authenticator: AuthenticatorKind::TokenReview,
        mesh: config.mesh.clone(),
        identity,
        issuer: String::new(),
        subject: status.username.clone(),
        cluster: config.id.clone(),
        pod,
    })
}

impl Authenticator for TokenReviewAuthenticator {
    fn kind(&self) -> AuthenticatorKind {
        AuthenticatorKind::TokenReview
    }

    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a> {
        Box::pin(async move {
            if self.clusters.is_empty() {
                return AuthOutcome::NotApplicable;
            }
            let token = match &request.authorization {
                Authorization::Absent => return AuthOutcome::NotApplicable,
                Authorization::Malformed => {
                    return AuthOutcome::Failed(AuthnError::MalformedAuthorizationHeader)
                }
                Authorization::Bearer(token) => token,
            };
            let Some(cluster) = self.clusters.get(&request.cluster_id) else {
                return AuthOutcome::Declined(AuthnError::ClusterUnknown(
                    request.cluster_id.clone(),
                ));
            };
            match self.authenticate_token(cluster, token).await {
                Ok(caller) => AuthOutcome::Authenticated(caller),
                Err(error) => AuthOutcome::Failed(error),
            }
        })
    }
}

fn cache_key(cluster: &str, token: &BearerToken) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(cluster.as_bytes());
    context.update(&[0]);
    context.update(token.expose().as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

/// The `exp` of a JWT, read without verifying it: only ever used to cache a review *less* long.
fn unverified_expiry(token: &str) -> Option<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Expiry {
        exp: Option<u64>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Expiry = serde_json::from_slice(&bytes).ok()?;
    crate::domain::clock::time_from_unix_seconds(i64::try_from(claims.exp?).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::ManualClock;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::UNIX_EPOCH;

    #[derive(Default)]
    struct FakeApi {
        status: Mutex<ReviewStatus>,
        calls: AtomicU64,
        delay: Option<Duration>,
        fail: bool,
    }

    impl ClusterApi for FakeApi {
        fn review_token<'a>(
            &'a self,
            _: &'a BearerToken,
            _: &'a [String],
        ) -> ApiFuture<'a, ReviewStatus> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if let Some(delay) = self.delay {
                    tokio::time::sleep(delay).await;
                }
                if self.fail {
                    return Err(ApiError("503 Service Unavailable".into()));
                }
                Ok(self.status.lock().unwrap().clone())
            })
        }
        fn get_pod<'a>(&'a self, _: &'a str, _: &'a str) -> ApiFuture<'a, Option<PodInfo>> {
            Box::pin(async { Ok(None) })
        }
        fn pods_on_node<'a>(&'a self, _: &'a str) -> ApiFuture<'a, Vec<PodInfo>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    fn good_status() -> ReviewStatus {
        ReviewStatus {
            authenticated: true,
            username: "system:serviceaccount:shop:cart".into(),
            groups: vec![SERVICE_ACCOUNTS_GROUP.into(), "system:authenticated".into()],
            extra: [
                (POD_NAME_EXTRA.to_owned(), vec!["cart-1".to_owned()]),
                (POD_UID_EXTRA.to_owned(), vec!["uid-1".to_owned()]),
            ]
            .into_iter()
            .collect(),
            audiences: vec!["istio-ca".into()],
            error: String::new(),
        }
    }

    fn setup(api: Arc<FakeApi>) -> (TokenReviewAuthenticator, ManualClock) {
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let cluster = ReviewCluster {
            id: "Kubernetes".into(),
            mesh: "default".into(),
            trust_domain: TrustDomain::new("cluster.local").unwrap(),
            audiences: vec!["istio-ca".into()],
            api,
            timeout: Duration::from_millis(200),
            max_concurrent_reviews: 4,
            cache_ttl: Duration::from_secs(60),
        };
        (
            TokenReviewAuthenticator::new(vec![cluster], Arc::new(clock.clone())),
            clock,
        )
    }

    fn request(token: &str, cluster: &str) -> AuthRequest {
        AuthRequest {
            authorization: Authorization::Bearer(BearerToken::new(token.into())),
            cluster_id: cluster.into(),
            ..AuthRequest::default()
        }
    }

    async fn outcome(
        authenticator: &TokenReviewAuthenticator,
        token: &str,
    ) -> Result<Caller, AuthnError> {
        match authenticator
            .authenticate(&request(token, "Kubernetes"))
            .await
        {
            AuthOutcome::Authenticated(caller) => Ok(caller),
            AuthOutcome::Failed(e) | AuthOutcome::Declined(e) => Err(e),
            AuthOutcome::NotApplicable => Err(AuthnError::MissingCredentials),
        }
    }

    /// Issue 14, D9: requests with unique garbage tokens, each cancelled while its review is in
    /// flight, once left an uninitialised entry apiece that no sweep removed.
    #[tokio::test]
    async fn reviews_cancelled_in_flight_leave_nothing_behind_in_the_cache() {
        let api = Arc::new(FakeApi {
            delay: Some(Duration::from_secs(3600)),
            ..FakeApi::default()
        });
        let (authenticator, _) = setup(api);
        for n in 0..=CACHE_SWEEP_THRESHOLD {
            // A zero timeout polls the request once (the review starts), then drops it.
            let cancelled = tokio::time::timeout(
                Duration::ZERO,
                outcome(&authenticator, &format!("garbage-{n}")),
            )
            .await;
            assert!(cancelled.is_err());
        }
        let cached = authenticator.cache.lock().unwrap().len();
        assert!(cached <= 1, "{cached} abandoned entries kept");
    }

    #[tokio::test]
    async fn accepts_a_service_account_and_keeps_its_pod() {
        let api = Arc::new(FakeApi::default());
        *api.status.lock().unwrap() = good_status();
        let (authenticator, _) = setup(api);
        let caller = outcome(&authenticator, "opaque-token").await.unwrap();
        assert_eq!(
            caller.identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/cart"
        );
        assert_eq!(
            caller.pod,
            Some(PodRef {
                name: "cart-1".into(),
                uid: "uid-1".into(),
                node: String::new(),
            })
        );
        assert_eq!(caller.cluster, "Kubernetes");
    }

    #[tokio::test]
    async fn refuses_unauthenticated_non_service_account_and_malformed_users() {
        let api = Arc::new(FakeApi::default());
        let (authenticator, _) = setup(api.clone());
        *api.status.lock().unwrap() = ReviewStatus {
            error: "token has been invalidated".into(),
            ..ReviewStatus::default()
        };
        assert!(matches!(
            outcome(&authenticator, "t1").await,
            Err(AuthnError::ReviewRejected { reason, .. }) if reason == "token has been invalidated"
        ));
        let mut wrong_group = good_status();
        wrong_group.groups = vec!["system:authenticated".into()];
        *api.status.lock().unwrap() = wrong_group;
        assert!(matches!(
            outcome(&authenticator, "t2").await,
            Err(AuthnError::ReviewNotServiceAccount(_))
        ));
        let mut malformed = good_status();
        malformed.username = "system:serviceaccount:only-namespace".into();
        *api.status.lock().unwrap() = malformed;
        assert!(matches!(
            outcome(&authenticator, "t3").await,
            Err(AuthnError::ReviewNotServiceAccount(_))
        ));
        assert_eq!(
            api.calls.load(Ordering::SeqCst),
            3,
            "negative reviews are not cached"
        );
        assert_eq!(
            outcome(&authenticator, "t1")
                .await
                .map(|_| ())
                .unwrap_err()
                .reason(),
            "token-review-not-service-account"
        );
        assert_eq!(api.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn caches_positive_reviews_until_the_earlier_of_ttl_and_exp() {
        let api = Arc::new(FakeApi::default());
        *api.status.lock().unwrap() = good_status();
        let (authenticator, clock) = setup(api.clone());
        outcome(&authenticator, "opaque").await.unwrap();
        outcome(&authenticator, "opaque").await.unwrap();
        assert_eq!(
            api.calls.load(Ordering::SeqCst),
            1,
            "second call served from cache"
        );
        clock.advance(Duration::from_secs(61));
        outcome(&authenticator, "opaque").await.unwrap();
        assert_eq!(
            api.calls.load(Ordering::SeqCst),
            2,
            "reviewed again after 60 s"
        );

        // A JWT whose exp is 10 s away is cached only 10 s.
        let now = crate::domain::clock::unix_seconds(clock.now());
        let claims = URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{}}}", now + 10));
        let jwt = format!("e30.{claims}.sig");
        outcome(&authenticator, &jwt).await.unwrap();
        clock.advance(Duration::from_secs(5));
        outcome(&authenticator, &jwt).await.unwrap();
        assert_eq!(api.calls.load(Ordering::SeqCst), 3);
        clock.advance(Duration::from_secs(6));
        outcome(&authenticator, &jwt).await.unwrap();
        assert_eq!(
            api.calls.load(Ordering::SeqCst),
            4,
            "past exp: reviewed again"
        );
    }

    #[tokio::test]
    async fn concurrent_requests_with_one_token_share_one_review() {
        let api = Arc::new(FakeApi {
            delay: Some(Duration::from_millis(20)),
            ..FakeApi::default()
        });
        *api.status.lock().unwrap() = good_status();
        let (authenticator, _) = setup(api.clone());
        let authenticator = Arc::new(authenticator);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let authenticator = authenticator.clone();
                tokio::spawn(async move { outcome(&authenticator, "same").await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(api.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn api_failures_and_timeouts_are_transient_and_unknown_clusters_declined() {
        let down = Arc::new(FakeApi {
            fail: true,
            ..FakeApi::default()
        });
        let (authenticator, _) = setup(down);
        let error = outcome(&authenticator, "t").await.unwrap_err();
        assert!(error.is_transient(), "{error}");
        let slow = Arc::new(FakeApi {
            delay: Some(Duration::from_secs(5)),
            ..FakeApi::default()
        });
        let (authenticator, _) = setup(slow);
        let error = outcome(&authenticator, "t").await.unwrap_err();
        assert_eq!(error.reason(), "token-review-unavailable");
        assert!(matches!(
            authenticator.authenticate(&request("t", "elsewhere")).await,
            AuthOutcome::Declined(AuthnError::ClusterUnknown(id)) if id == "elsewhere"
        ));
    }
}
