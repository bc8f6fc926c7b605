//! The elected replica's duties in its own cluster, which istiod stops doing once its CA is off:
//!
//! - **Root distribution**: the `istio-ca-root-cert` ConfigMap (key `root-cert.pem`) in every
//!   namespace (or those matching a label selector) holds the mesh's trust bundle; kept so on
//!   new namespaces, on edits and deletions by others, and when the bundle changes (rotation).
//! - **The ClusterTrustBundle** `istio.io:istiod-ca:root-cert` (signer `istio.io/istiod-ca`)
//!   holds the same bundle, for clusters where Istio's injector mounts it instead
//!   (`ENABLE_CLUSTER_TRUST_BUNDLE_API=true`); kept the same way.
//! - **istiod's serving certificate**: the `istiod-tls` Secret (`tls.crt`, `tls.key`, `ca.crt`)
//!   for `istiod[-<rev>].<ns>.svc` and `spiffe://<td>/ns/<ns>/sa/istiod`, re-issued at half its
//!   lifetime, when the intermediate or the bundle changes, and when someone edits or deletes it.
//!
//! Both watch with kube's watcher (list, then watch from the list's resourceVersion; re-list
//! after a 410 or a broken connection, with backoff), write with the resourceVersion they read
//! (409 Conflict: read again and retry), and only act while this replica leads.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::{pin, Pin};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;

use super::{describe, is_conflict};

/// The key of the ConfigMap istio-agent reads the mesh root from (its name is configured:
/// `PublishSettings::root_configmap_name`).
pub(crate) const ROOT_CONFIGMAP_KEY: &str = "root-cert.pem";
/// The Secret istiod serves with.
pub(crate) const ISTIOD_SECRET: &str = "istiod-tls";
/// Marks objects meshroot writes.
pub(crate) const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "meshroot");

/// How often the current bundle and intermediate are compared with what was published.
const CHANGE_POLL: Duration = Duration::from_secs(1);
/// After a failed write, try again this soon.
const RETRY: Duration = Duration::from_secs(5);
/// Writes retried after 409 before the object is left for the next pass.
const CONFLICT_RETRIES: usize = 3;

/// A server certificate and its key, PEM.
pub(crate) struct ServerCertificate {
    /// Leaf, then intermediates.
    pub chain_pem: String,
    /// PKCS#8. Never logged.
    pub key_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

pub(crate) type IssueFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ServerCertificate, String>> + Send + 'a>>;

/// The mesh whose material is published: read fresh each time, so reloads and rotations show.
pub(crate) trait MeshMaterial: Send + Sync {
    /// The trust bundle (every root), PEM.
    fn bundle_pem(&self) -> Option<String>;
    /// The served intermediates, PEM, signing certificate first.
    fn intermediates_pem(&self) -> Option<String>;
    /// The mesh's trust domain.
    fn trust_domain(&self) -> Option<String>;
    /// Issues (and records) istiod's certificate.
    fn issue_istiod<'a>(&'a self, dns_names: &'a [String], spiffe_id: &'a str) -> IssueFuture<'a>;
    /// The `istiod-tls` certificate this replica now keeps is valid from the first time to the
    /// second; `None` when it stops keeping it (leadership lost, shutdown).
    fn istiod_certificate_kept(&self, _validity: Option<(SystemTime, SystemTime)>) {}
}

/// What the publisher keeps, and where.
#[derive(Debug, Clone)]
pub(crate) struct PublishSettings {
    /// Only namespaces matching this label selector get the ConfigMap (empty: all).
    pub namespace_selector: String,
    /// Keep `istio-ca-root-cert` in namespaces.
    pub root_configmap: bool,
    /// The root and CRL ConfigMaps' names (Istio's defaults, or what Istio was told).
    pub root_configmap_name: String,
    pub crl_configmap_name: String,
    /// Keep the ClusterTrustBundle `istio.io:istiod-ca:root-cert`.
    pub cluster_trust_bundle: bool,
    /// Keep `istiod-tls` (in `istiod_namespace`).
    pub istiod_tls: bool,
    pub istiod_namespace: String,
    /// istiod revisions: `default` is `istiod.<ns>.svc`, any other `istiod-<rev>.<ns>.svc`.
    pub istiod_revisions: Vec<String>,
    /// Everything is checked again this often even without an event.
    pub resync: Duration,
}

impl PublishSettings {
    /// DNS names in istiod's certificate.
    pub(crate) fn istiod_dns_names(&self) -> Vec<String> {
        self.istiod_revisions
            .iter()
            .map(|revision| match revision.as_str() {
                "default" | "" => format!("istiod.{}.svc", self.istiod_namespace),
                revision => format!("istiod-{revision}.{}.svc", self.istiod_namespace),
            })
            .collect()
    }
}

/// Runs the root distribution while `leader` says this replica leads, until `shutdown`.
pub(crate) async fn run_root_distribution(
    client: kube::Client,
    settings: PublishSettings,
    mesh: std::sync::Arc<dyn MeshMaterial>,
    leader: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let content = NamespacedConfigMap {
        name: settings.root_configmap_name.clone(),
        key: ROOT_CONFIGMAP_KEY,
        what: "trust bundle",
        content: Box::new(move || mesh.bundle_pem()),
        published: Box::new(|_| {}),
    };
    while_leading(leader, shutdown, || {
        tracing::info!(configmap = %settings.root_configmap_name, selector = %settings.namespace_selector, "distributing the trust bundle");
        distribute(&client, &settings, &content)
    })
    .await
}

/// The key of the CRLs' ConfigMap, which Istio's sidecar injector mounts at
/// `/var/run/secrets/istio/crl` (and ztunnel's chart, with `peerCaCrl.enabled`); its name is
/// configured (`PublishSettings::crl_configmap_name`).
pub(crate) const CRL_CONFIGMAP_KEY: &str = "ca-crl.pem";

/// Keeps `istio-ca-crl` (`ca-crl.pem`: every CRL, as `crl` gives it) in every namespace that
/// gets `istio-ca-root-cert`, while `leader` says this replica leads. `published` hears of each
/// write (the metric of the last publication).
pub(crate) async fn run_crl_distribution(
    client: kube::Client,
    settings: PublishSettings,
    crl: Box<dyn Fn() -> Option<String> + Send + Sync>,
    published: Box<dyn Fn(&str) + Send + Sync>,
    leader: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let content = NamespacedConfigMap {
        name: settings.crl_configmap_name.clone(),
        key: CRL_CONFIGMAP_KEY,
        what: "CRLs",
        content: crl,
        published,
    };
    while_leading(leader, shutdown, || {
        tracing::info!(configmap = %settings.crl_configmap_name, selector = %settings.namespace_selector, "distributing the CRLs");
        distribute(&client, &settings, &content)
    })
    .await
}

/// A ConfigMap kept with the same content in every selected namespace.
struct NamespacedConfigMap {
    name: String,
    key: &'static str,
    /// For the log.
    what: &'static str,
    /// The content now (None: nothing to publish yet).
    content: Box<dyn Fn() -> Option<String> + Send + Sync>,
    /// Told the namespace after each write.
    published: Box<dyn Fn(&str) + Send + Sync>,
}

/// Runs `term` for each leadership term: from becoming leader until losing it (the future is
/// dropped then) or `shutdown`.
async fn while_leading<F, T>(
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    mut term: F,
) where
    F: FnMut() -> T,
    T: Future<Output = ()>,
{
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            led = leader.wait_for(|leads| *leads) => if led.is_err() { return },
        }
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = leader.wait_for(|leads| !*leads) => {}
            _ = term() => {}
        }
    }
}

/// One leadership term of a ConfigMap's distribution (returns only if both watch streams end).
async fn distribute(
    client: &kube::Client,
    settings: &PublishSettings,
    content: &NamespacedConfigMap,
) {
    let (name, key) = (content.name.as_str(), content.key);
    let mut namespace_config = watcher::Config::default();
    if !settings.namespace_selector.is_empty() {
        namespace_config = namespace_config.labels(&settings.namespace_selector);
    }
    let mut namespaces = pin!(watcher::watcher(
        Api::<Namespace>::all(client.clone()),
        namespace_config
    )
    .default_backoff());
    let configmap_config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut configmaps = pin!(watcher::watcher(
        Api::<ConfigMap>::all(client.clone()),
        configmap_config
    )
    .default_backoff());

    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut relisted: BTreeSet<String> = BTreeSet::new();
    let mut due: BTreeSet<String> = BTreeSet::new();
    let mut published: Option<String> = None;
    let mut poll = tokio::time::interval(CHANGE_POLL);
    let mut resync = tokio::time::interval(settings.resync);
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            event = namespaces.next() => match event {
                None => return,
                Some(Ok(Event::Init)) => relisted.clear(),
                Some(Ok(Event::InitApply(namespace))) => {
                    if let Some(name) = active_name(&namespace) {
                        relisted.insert(name);
                    }
                }
                Some(Ok(Event::InitDone)) => {
                    known = std::mem::take(&mut relisted);
                    due.extend(known.iter().cloned());
                }
                Some(Ok(Event::Apply(namespace))) => match active_name(&namespace) {
                    Some(name) => {
                        if known.insert(name.clone()) {
                            due.insert(name);
                        }
                    }
                    None => {
                        if let Some(name) = &namespace.metadata.name {
                            known.remove(name);
                        }
                    }
                },
                Some(Ok(Event::Delete(namespace))) => {
                    if let Some(name) = &namespace.metadata.name {
                        known.remove(name);
                        due.remove(name);
                    }
                }
                Some(Err(error)) => tracing::warn!(%error, "watching namespaces failed; retrying"),
            },
            event = configmaps.next() => match event {
                None => return,
                Some(Ok(Event::Apply(configmap) | Event::InitApply(configmap))) => {
                    let namespace = configmap.metadata.namespace.clone().unwrap_or_default();
                    let current = configmap.data.as_ref().and_then(|d| d.get(key));
                    if known.contains(&namespace) && current != published.as_ref() {
                        due.insert(namespace);
                    }
                }
                Some(Ok(Event::Delete(configmap))) => {
                    let namespace = configmap.metadata.namespace.clone().unwrap_or_default();
                    if known.contains(&namespace) {
                        due.insert(namespace);
                    }
                }
                Some(Ok(Event::Init | Event::InitDone)) => {}
                Some(Err(error)) => tracing::warn!(%error, "watching {name} ConfigMaps failed; retrying"),
            },
            _ = poll.tick() => {
                let now = (content.content)();
                if now.is_some() && now != published {
                    if published.is_some() {
                        tracing::info!("the {} changed: updating every {name}", content.what);
                    }
                    published = now;
                    due.extend(known.iter().cloned());
                }
            }
            _ = resync.tick() => due.extend(known.iter().cloned()),
        }
        let Some(bundle) = &published else { continue };
        if retry_at.is_some_and(|at| at > tokio::time::Instant::now()) {
            continue;
        }
        retry_at = None;
        // A bounded batch per turn, so events keep being read during a big first pass.
        let batch: Vec<String> = due.iter().take(64).cloned().collect();
        for namespace in batch {
            due.remove(&namespace);
            if let Err(error) = ensure_configmap(client, &namespace, content, bundle).await {
                tracing::warn!(%namespace, error = %describe(&error), "could not write {name}; retrying");
                due.insert(namespace);
                retry_at = Some(tokio::time::Instant::now() + RETRY);
                break;
            }
        }
    }
}

/// The namespace's name unless it is being deleted (a ConfigMap cannot be created there).
fn active_name(namespace: &Namespace) -> Option<String> {
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    (!terminating)
        .then(|| namespace.metadata.name.clone())
        .flatten()
}

/// Makes `namespace`'s ConfigMap hold exactly `bundle` under its key.
async fn ensure_configmap(
    client: &kube::Client,
    namespace: &str,
    content: &NamespacedConfigMap,
    bundle: &str,
) -> Result<(), kube::Error> {
    let (name, key) = (content.name.as_str(), content.key);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match api.get_opt(name).await? {
            None => {
                let configmap = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        namespace: Some(namespace.to_owned()),
                        labels: Some(labels(&[("istio.io/config", "true")])),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([(key.to_owned(), bundle.to_owned())])),
                    ..ConfigMap::default()
                };
                api.create(&PostParams::default(), &configmap)
                    .await
                    .map(|_| "created")
            }
            Some(mut configmap) => {
                let data = configmap.data.get_or_insert_with(BTreeMap::new);
                if data.get(key).map(String::as_str) == Some(bundle) {
                    return Ok(());
                }
                data.insert(key.to_owned(), bundle.to_owned());
                configmap
                    .metadata
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
                api.replace(name, &PostParams::default(), &configmap)
                    .await
                    .map(|_| "updated")
            }
        };
        match result {
            Ok(what) => {
                tracing::info!(%namespace, configmap = name, what, "{} published", content.what);
                (content.published)(namespace);
                return Ok(());
            }
            Err(error) if is_conflict(&error) && attempt < CONFLICT_RETRIES => {
                tracing::debug!(%namespace, "409 writing {name}: reading it again");
            }
            Err(error) => return Err(error),
        }
    }
}

fn labels(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    std::iter::once(MANAGED_BY)
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Keeps `istiod-tls` current while `leader` says this replica leads, until `shutdown`.
pub(crate) async fn run_istiod_certificate(
    client: kube::Client,
    settings: PublishSettings,
    mesh: std::sync::Arc<dyn MeshMaterial>,
    leader: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    while_leading(leader, shutdown, || {
        keep_istiod_certificate(&client, &settings, mesh.as_ref())
    })
    .await
}

async fn keep_istiod_certificate(
    client: &kube::Client,
    settings: &PublishSettings,
    mesh: &dyn MeshMaterial,
) {
    /// Whoever leads next reports the certificate; this replica stops when its term ends.
    struct Forget<'a>(&'a dyn MeshMaterial);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            self.0.istiod_certificate_kept(None);
        }
    }
    let _forget = Forget(mesh);
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.istiod_namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={ISTIOD_SECRET}"));
    let mut events = pin!(watcher::watcher(api.clone(), config).default_backoff());
    let mut poll = tokio::time::interval(CHANGE_POLL);
    let mut next_check = tokio::time::Instant::now();
    let mut seen: Option<(Option<String>, Option<String>)> = None;
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return,
                // Our own writes come back here too; checking is cheap and leaves a current
                // Secret alone.
                Some(Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone)) => next_check = tokio::time::Instant::now(),
                Some(Ok(Event::Init | Event::InitApply(_))) => {}
                Some(Err(error)) => tracing::warn!(%error, "watching {ISTIOD_SECRET} failed; retrying"),
            },
            _ = poll.tick() => {
                let now_seen = (mesh.bundle_pem(), mesh.intermediates_pem());
                if seen.as_ref().is_some_and(|seen| *seen != now_seen) {
                    tracing::info!("the trust bundle or intermediate changed: re-issuing {ISTIOD_SECRET}");
                    next_check = tokio::time::Instant::now();
                }
                seen = Some(now_seen);
            }
            _ = tokio::time::sleep_until(next_check) => {}
        }
        if next_check > tokio::time::Instant::now() {
            continue;
        }
        next_check = match ensure_istiod_secret(&api, settings, mesh).await {
            Ok(renew_in) => tokio::time::Instant::now() + renew_in.min(settings.resync),
            Err(error) => {
                tracing::warn!(%error, "could not keep {ISTIOD_SECRET}; retrying");
                tokio::time::Instant::now() + RETRY
            }
        };
    }
}

/// Re-issues `istiod-tls` unless it is current; returns how long it stays current.
async fn ensure_istiod_secret(
    api: &Api<Secret>,
    settings: &PublishSettings,
    mesh: &dyn MeshMaterial,
) -> Result<Duration, String> {
    let bundle = mesh.bundle_pem().ok_or("the mesh is not loaded")?;
    let intermediates = mesh.intermediates_pem().ok_or("the mesh is not loaded")?;
    let trust_domain = mesh.trust_domain().ok_or("the mesh is not loaded")?;
    let dns_names = settings.istiod_dns_names();
    let spiffe_id = format!(
        "spiffe://{trust_domain}/ns/{}/sa/istiod",
        settings.istiod_namespace
    );
    for _ in 0..CONFLICT_RETRIES {
        let existing = api.get_opt(ISTIOD_SECRET).await.map_err(|e| describe(&e))?;
        if let Some(secret) = &existing {
            if let Some((remaining, validity)) =
                still_current(secret, &bundle, &intermediates, &dns_names, &spiffe_id)
            {
                mesh.istiod_certificate_kept(Some(validity));
                return Ok(remaining);
            }
        }
        let issued = mesh.issue_istiod(&dns_names, &spiffe_id).await?;
        let lifetime = issued
            .not_after
            .duration_since(issued.not_before)
            .unwrap_or_default();
        let data = BTreeMap::from([
            (
                "tls.crt".to_owned(),
                ByteString(issued.chain_pem.into_bytes()),
            ),
            (
                "tls.key".to_owned(),
                ByteString(issued.key_pem.into_bytes()),
            ),
            ("ca.crt".to_owned(), ByteString(bundle.clone().into_bytes())),
        ]);
        let result = write_secret(
            api,
            ISTIOD_SECRET,
            &settings.istiod_namespace,
            "kubernetes.io/tls",
            data,
            existing,
        )
        .await;
        match result {
            Ok(_) => {
                mesh.istiod_certificate_kept(Some((issued.not_before, issued.not_after)));
                tracing::info!(secret = ISTIOD_SECRET, namespace = %settings.istiod_namespace, identity = %spiffe_id, dns_names = ?dns_names, "istiod's certificate written");
                return Ok(lifetime / 2);
            }
            // The certificate just issued stays in the record log, unused; the next one
            // is issued against what is there now.
            Err(error) if is_conflict(&error) => {
                tracing::debug!("409 writing {ISTIOD_SECRET}: reading it again")
            }
            Err(error) => return Err(describe(&error)),
        }
    }
    Err(format!(
        "{ISTIOD_SECRET} kept changing under us (409 {CONFLICT_RETRIES} times)"
    ))
}

/// Creates Secret `name` with `data` (and meshroot's label), or replaces the data of `existing`
/// (as read, so its resourceVersion makes a concurrent change a 409).
pub(super) async fn write_secret(
    api: &Api<Secret>,
    name: &str,
    namespace: &str,
    type_: &str,
    data: BTreeMap<String, ByteString>,
    existing: Option<Secret>,
) -> Result<Secret, kube::Error> {
    match existing {
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    labels: Some(labels(&[])),
                    ..ObjectMeta::default()
                },
                type_: Some(type_.to_owned()),
                data: Some(data),
                ..Secret::default()
            };
            api.create(&PostParams::default(), &secret).await
        }
        Some(mut secret) => {
            secret.data = Some(data);
            secret.string_data = None;
            secret
                .metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
            api.replace(name, &PostParams::default(), &secret).await
        }
    }
}

/// How long `secret` stays good (until half its certificate's lifetime), or None when it
/// must be re-issued: missing or unparsable data, other names, another intermediate or bundle.
fn still_current(
    secret: &Secret,
    bundle: &str,
    intermediates: &str,
    dns_names: &[String],
    spiffe_id: &str,
) -> Option<(Duration, (SystemTime, SystemTime))> {
    use rustls_pki_types::pem::PemObject as _;
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let data = secret.data.as_ref()?;
    let text = |key: &str| data.get(key).and_then(|v| std::str::from_utf8(&v.0).ok());
    if text("ca.crt")? != bundle || text("tls.key")?.is_empty() {
        return None;
    }
    let chain = text("tls.crt")?;
    let (leaf_pem, rest) = split_first_pem(chain)?;
    if rest.trim() != intermediates.trim() {
        return None;
    }
    let der = rustls_pki_types::CertificateDer::from_pem_slice(leaf_pem.as_bytes()).ok()?;
    let (_, leaf) = X509Certificate::from_der(der.as_ref()).ok()?;
    let names = crate::domain::identity::AltNames::of_certificate(&leaf);
    if names.dns != dns_names || names.uris != [spiffe_id] {
        return None;
    }
    let validity = leaf.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    let renew_at = not_before + (not_after - not_before) / 2;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let now = i64::try_from(now).ok()?;
    let validity = (
        crate::domain::clock::time_from_unix_seconds(not_before).ok()?,
        crate::domain::clock::time_from_unix_seconds(not_after).ok()?,
    );
    (now < renew_at).then(|| {
        (
            Duration::from_secs(u64::try_from(renew_at - now).unwrap_or(0)),
            validity,
        )
    })
}

/// The first PEM block of `text` and everything after it.
fn split_first_pem(text: &str) -> Option<(&str, &str)> {
    const END: &str = "-----END CERTIFICATE-----";
    let end = text.find(END)? + END.len();
    Some((&text[..end], &text[end..]))
}

/// The ClusterTrustBundle Istio's injector mounts (with `ENABLE_CLUSTER_TRUST_BUNDLE_API=true`)
/// instead of `istio-ca-root-cert`, and its signer (pilot's `clustertrustbundle` controller).
pub(crate) const CLUSTER_TRUST_BUNDLE: &str = "istio.io:istiod-ca:root-cert";
pub(crate) const CLUSTER_TRUST_BUNDLE_SIGNER: &str = "istio.io/istiod-ca";

/// Keeps the ClusterTrustBundle holding the trust bundle while `leader` says this replica
/// leads, until `shutdown`: created, put back when edited or deleted, updated on rotation.
pub(crate) async fn run_cluster_trust_bundle(
    client: kube::Client,
    settings: PublishSettings,
    mesh: std::sync::Arc<dyn MeshMaterial>,
    leader: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    while_leading(leader, shutdown, || {
        tracing::info!(
            cluster_trust_bundle = CLUSTER_TRUST_BUNDLE,
            "keeping the ClusterTrustBundle"
        );
        keep_cluster_trust_bundle(&client, &settings, mesh.as_ref())
    })
    .await
}

async fn keep_cluster_trust_bundle(
    client: &kube::Client,
    settings: &PublishSettings,
    mesh: &dyn MeshMaterial,
) {
    use k8s_openapi::api::certificates::v1beta1::ClusterTrustBundle;
    let api: Api<ClusterTrustBundle> = Api::all(client.clone());
    let config =
        watcher::Config::default().fields(&format!("metadata.name={CLUSTER_TRUST_BUNDLE}"));
    let mut events = pin!(watcher::watcher(api.clone(), config).default_backoff());
    let mut poll = tokio::time::interval(CHANGE_POLL);
    let mut resync = tokio::time::interval(settings.resync);
    let mut published: Option<String> = None;
    let mut due = false;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Ok(Event::Apply(bundle) | Event::InitApply(bundle))) => {
                    due |= bundle.spec.trust_bundle.as_str() != published.as_deref().unwrap_or_default()
                        || bundle.spec.signer_name.as_deref() != Some(CLUSTER_TRUST_BUNDLE_SIGNER);
                }
                Some(Ok(Event::Delete(_) | Event::InitDone)) => due = true,
                Some(Ok(Event::Init)) => {}
                Some(Err(error)) => tracing::warn!(%error, "watching the ClusterTrustBundle failed; retrying"),
            },
            _ = poll.tick() => {
                let bundle = mesh.bundle_pem();
                if bundle.is_some() && bundle != published {
                    published = bundle;
                    due = true;
                }
            }
            _ = resync.tick() => due = true,
        }
        let Some(bundle) = &published else { continue };
        if !due || retry_at.is_some_and(|at| at > tokio::time::Instant::now()) {
            continue;
        }
        retry_at = None;
        match ensure_cluster_trust_bundle(&api, bundle).await {
            Ok(()) => due = false,
            Err(error) => {
                tracing::warn!(error = %describe(&error), "could not write the ClusterTrustBundle; retrying");
                retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
    }
}

/// Makes the ClusterTrustBundle hold exactly `bundle` under Istio's signer name. The signer
/// name cannot change on an existing object, so one made with another is replaced.
async fn ensure_cluster_trust_bundle(
    api: &Api<k8s_openapi::api::certificates::v1beta1::ClusterTrustBundle>,
    bundle: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::certificates::v1beta1::{ClusterTrustBundle, ClusterTrustBundleSpec};
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match api.get_opt(CLUSTER_TRUST_BUNDLE).await? {
            Some(existing)
                if existing.spec.signer_name.as_deref() != Some(CLUSTER_TRUST_BUNDLE_SIGNER) =>
            {
                tracing::warn!(
                    signer = existing.spec.signer_name.as_deref().unwrap_or_default(),
                    "the ClusterTrustBundle has another signer name: replacing it"
                );
                api.delete(CLUSTER_TRUST_BUNDLE, &Default::default())
                    .await
                    .map(|_| "deleted")
            }
            None => {
                let created = ClusterTrustBundle {
                    metadata: ObjectMeta {
                        name: Some(CLUSTER_TRUST_BUNDLE.to_owned()),
                        labels: Some(labels(&[])),
                        ..ObjectMeta::default()
                    },
                    spec: ClusterTrustBundleSpec {
                        signer_name: Some(CLUSTER_TRUST_BUNDLE_SIGNER.to_owned()),
                        trust_bundle: bundle.to_owned(),
                    },
                };
                api.create(&PostParams::default(), &created)
                    .await
                    .map(|_| "created")
            }
            Some(mut existing) => {
                if existing.spec.trust_bundle == bundle {
                    return Ok(());
                }
                existing.spec.trust_bundle = bundle.to_owned();
                existing
                    .metadata
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
                api.replace(CLUSTER_TRUST_BUNDLE, &PostParams::default(), &existing)
                    .await
                    .map(|_| "updated")
            }
        };
        match result {
            Ok("deleted") => continue,
            Ok(what) => {
                tracing::info!(
                    cluster_trust_bundle = CLUSTER_TRUST_BUNDLE,
                    what,
                    "trust bundle published"
                );
                return Ok(());
            }
            Err(error) if is_conflict(&error) && attempt < CONFLICT_RETRIES => {
                tracing::debug!("409 writing the ClusterTrustBundle: reading it again");
            }
            Err(error) => return Err(error),
        }
    }
}
