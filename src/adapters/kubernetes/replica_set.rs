//! What the replicas of a `[replicas]` keep in their own Kubernetes API: how many the
//! StatefulSet runs (its `spec.replicas`), and each replica's latest signed checkpoint in one
//! ConfigMap, one key per replica, so what a log had committed to outlives its volume even if
//! every other member's does not.
//!
//! RBAC: `statefulsets` `get` (apps) in meshroot's namespace; the ConfigMap is covered by the
//! `configmaps` grant the root distribution already needs.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};

/// The ConfigMap that holds every replica's latest checkpoint.
pub(crate) const CHECKPOINTS_CONFIGMAP: &str = "meshroot-checkpoints";

/// How often a conflicting update (another replica wrote its key meanwhile) is tried again.
const CONFLICT_RETRIES: usize = 5;

/// The StatefulSet's `spec.replicas` (None when it does not exist or names none).
pub(crate) async fn statefulset_replicas(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<u32>, kube::Error> {
    let api: Api<StatefulSet> = Api::namespaced(client, namespace);
    Ok(api
        .get_opt(name)
        .await?
        .and_then(|set| set.spec)
        .and_then(|spec| spec.replicas)
        .and_then(|replicas| u32::try_from(replicas).ok()))
}

/// A ConfigMap key for `member` (`[-._a-zA-Z0-9]`; anything else becomes `_`).
pub(crate) fn checkpoint_key(member: &str) -> String {
    member
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '.' | '_' => c,
            _ => '_',
        })
        .collect()
}

/// The checkpoint kept for `key`, if any.
pub(crate) async fn recorded_checkpoint(
    client: kube::Client,
    namespace: &str,
    key: &str,
) -> Result<Option<String>, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    Ok(api
        .get_opt(CHECKPOINTS_CONFIGMAP)
        .await?
        .and_then(|configmap| configmap.data)
        .and_then(|mut data| data.remove(key)))
}

/// The keys of the checkpoints ConfigMap: every replica that ever kept a checkpoint there.
pub(crate) async fn recorded_keys(
    client: kube::Client,
    namespace: &str,
) -> Result<Vec<String>, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    Ok(api
        .get_opt(CHECKPOINTS_CONFIGMAP)
        .await?
        .and_then(|configmap| configmap.data)
        .map(|data| data.into_keys().collect())
        .unwrap_or_default())
}

/// Keeps `note` under `key` unless `keep_existing` says the note already there must stay (a
/// larger checkpoint of the same log: the evidence of what it had committed to).
pub(crate) async fn record_checkpoint(
    client: kube::Client,
    namespace: &str,
    key: &str,
    note: &str,
    keep_existing: impl Fn(&str) -> bool,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match api.get_opt(CHECKPOINTS_CONFIGMAP).await? {
            None => {
                let configmap = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(CHECKPOINTS_CONFIGMAP.to_owned()),
                        namespace: Some(namespace.to_owned()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/name".to_owned(),
                            "meshroot".to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([(key.to_owned(), note.to_owned())])),
                    ..ConfigMap::default()
                };
                api.create(&PostParams::default(), &configmap)
                    .await
                    .map(|_| ())
            }
            Some(mut configmap) => {
                let data = configmap.data.get_or_insert_with(BTreeMap::new);
                match data.get(key) {
                    Some(existing) if existing == note || keep_existing(existing) => return Ok(()),
                    _ => {}
                }
                data.insert(key.to_owned(), note.to_owned());
                api.replace(CHECKPOINTS_CONFIGMAP, &PostParams::default(), &configmap)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            // Another replica wrote its own key (or created the ConfigMap) meanwhile: again.
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < CONFLICT_RETRIES => {}
            other => return other,
        }
    }
}
