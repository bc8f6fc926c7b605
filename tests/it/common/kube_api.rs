//! A fake Kubernetes API server for the tests: real HTTPS (its own CA), bearer-token
//! credentials, and the documented endpoints meshroot uses —
//! `POST /apis/authentication.k8s.io/v1/tokenreviews`, `GET /api/v1/namespaces/{ns}/pods/{name}`,
//! `GET /api/v1/pods?fieldSelector=spec.nodeName=…` — answering with Kubernetes' JSON shapes.
//! It counts its calls and can be made slow or failing.
//!
//! It also keeps `namespaces`, `configmaps`, `secrets` (core), `leases` (coordination.k8s.io),
//! `statefulsets` (apps) and `clustertrustbundles` (certificates.k8s.io/v1beta1, cluster-scoped)
//! as the API server does: get, list (label and field selectors), watch
//! (a stream of `{"type", "object"}` lines from a resourceVersion), create (409 AlreadyExists),
//! update (409 Conflict on a stale resourceVersion) and delete, with a global resourceVersion.
//! It records the verb, group and resource of every call (for the RBAC test), can be told to
//! answer the next updates with 409, and can restart on the same port, cutting every connection
//! and watch while keeping its objects (etcd survives an API-server restart).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

/// The credential meshroot must present.
pub const API_TOKEN: &str = "meshroot-reviewer-token";

/// What the API server says about a reviewed token.
#[derive(Clone, Debug)]
pub struct TokenIdentity {
    pub username: String,
    pub groups: Vec<String>,
    pub pod: Option<(String, String)>,
}

impl TokenIdentity {
    /// A service account, optionally bound to a pod (name, uid).
    pub fn service_account(namespace: &str, name: &str, pod: Option<(&str, &str)>) -> Self {
        Self {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            pod: pod.map(|(n, u)| (n.to_owned(), u.to_owned())),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FakePod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub node: String,
    pub phase: String,
}

impl FakePod {
    pub fn running(
        namespace: &str,
        name: &str,
        uid: &str,
        service_account: &str,
        node: &str,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            service_account: service_account.into(),
            node: node.into(),
            phase: "Running".into(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": self.name, "namespace": self.namespace, "uid": self.uid },
            "spec": { "serviceAccountName": self.service_account, "nodeName": self.node,
                      "containers": [{ "name": "app", "image": "app" }] },
            "status": { "phase": self.phase },
        })
    }
}

#[derive(Default)]
pub struct State {
    pub tokens: Mutex<HashMap<String, TokenIdentity>>,
    pub pods: Mutex<Vec<FakePod>>,
    /// Answer every call with 503.
    pub down: std::sync::atomic::AtomicBool,
    /// Delay before answering.
    pub delay: Mutex<Option<Duration>>,
    /// Calls received (counted on arrival, before any delay).
    pub arrivals: AtomicU64,
    pub reviews: AtomicU64,
    pub pod_gets: AtomicU64,
    pub pod_lists: AtomicU64,
    pub unauthorized: AtomicU64,
    /// Audiences seen in reviews.
    pub audiences: Mutex<Vec<Vec<String>>>,
    pub objects: Mutex<Objects>,
    /// Every stored change, to watchers.
    pub changes: Mutex<Option<tokio::sync::broadcast::Sender<Change>>>,
    /// Answer this many coming updates (PUT) with 409 Conflict.
    pub conflicts: AtomicU64,
    /// Every authorized call: (verb, API group, resource).
    pub calls: Mutex<Vec<ApiCall>>,
}

/// A call as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiCall {
    pub verb: String,
    pub group: String,
    pub resource: String,
    /// The namespace of a namespaced call; None for cluster-wide ones.
    pub namespace: Option<String>,
}

/// The stored objects and the change log.
#[derive(Default)]
pub struct Objects {
    pub resource_version: u64,
    /// (resource, namespace, name) → object.
    pub items: std::collections::BTreeMap<(String, String, String), Value>,
    pub log: Vec<Change>,
}

/// One stored change.
#[derive(Clone, Debug)]
pub struct Change {
    pub resource_version: u64,
    pub resource: String,
    pub namespace: String,
    pub kind: &'static str,
    pub object: Value,
}

/// A running fake API server.
pub struct FakeApiServer {
    pub address: SocketAddr,
    pub state: Arc<State>,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// Bumped to cut every open connection.
    generation: tokio::sync::watch::Sender<u64>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake kubernetes CA");
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), ca_cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        *state.changes.lock().unwrap() = Some(tokio::sync::broadcast::channel(4096).0);
        let (generation, _) = tokio::sync::watch::channel(0);
        let task = tokio::spawn(serve(
            listener,
            acceptor.clone(),
            state.clone(),
            generation.subscribe(),
        ));
        Self {
            address,
            state,
            ca_pem: ca_cert.pem(),
            task,
            acceptor,
            generation,
        }
    }

    /// Stops like a restarting API server (every connection and watch cut, nothing listening
    /// for `down_for`), then listens again on the same address with the same objects.
    pub async fn restart(&mut self, down_for: Duration) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
        tokio::time::sleep(down_for).await;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.task = tokio::spawn(serve(
            listener,
            self.acceptor.clone(),
            self.state.clone(),
            self.generation.subscribe(),
        ));
    }

    /// Stores an object (as a client's create would), e.g. a namespace.
    pub fn put_object(&self, resource: &str, namespace: &str, object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        store(&self.state, resource, namespace, &name, object, "ADDED");
    }

    /// Deletes an object (as another client would).
    pub fn delete_object(&self, resource: &str, namespace: &str, name: &str) {
        remove(
            &self.state,
            &(resource.to_owned(), namespace.to_owned(), name.to_owned()),
        );
    }

    /// An object as stored now.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .objects
            .lock()
            .unwrap()
            .items
            .get(&(resource.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Creates a namespace with `labels`.
    pub fn add_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        self.put_object(
            "namespaces",
            "",
            json!({ "metadata": { "name": name, "labels": labels }, "status": { "phase": "Active" } }),
        );
    }

    /// An ambient cluster: a ztunnel on node-1 (token `ztunnel-token`; `stale-ztunnel-token`
    /// names an older pod uid), a `shop/cart` pod on node-1 (token `cart-token`) and a
    /// `bank/vault` pod on node-2.
    pub fn add_ambient_workloads(&self) {
        self.add_token(
            "ztunnel-token",
            TokenIdentity::service_account(
                "istio-system",
                "ztunnel",
                Some(("ztunnel-abc", "uid-z1")),
            ),
        );
        self.add_token(
            "stale-ztunnel-token",
            TokenIdentity::service_account(
                "istio-system",
                "ztunnel",
                Some(("ztunnel-abc", "uid-old")),
            ),
        );
        self.add_token(
            "cart-token",
            TokenIdentity::service_account("shop", "cart", Some(("cart-1", "uid-c1"))),
        );
        self.add_pod(FakePod::running(
            "istio-system",
            "ztunnel-abc",
            "uid-z1",
            "ztunnel",
            "node-1",
        ));
        self.add_pod(FakePod::running(
            "shop", "cart-1", "uid-c1", "cart", "node-1",
        ));
        self.add_pod(FakePod::running(
            "bank", "vault-1", "uid-v1", "vault", "node-2",
        ));
    }

    /// The distinct calls received so far.
    pub fn calls(&self) -> std::collections::BTreeSet<ApiCall> {
        self.state.calls.lock().unwrap().iter().cloned().collect()
    }

    pub fn add_token(&self, token: &str, identity: TokenIdentity) {
        self.state
            .tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), identity);
    }

    pub fn add_pod(&self, pod: FakePod) {
        self.state.pods.lock().unwrap().push(pod);
    }

    pub fn reviews(&self) -> u64 {
        self.state.reviews.load(Ordering::SeqCst)
    }

    /// Calls that have arrived (a delayed one counts at once).
    pub fn arrivals(&self) -> u64 {
        self.state.arrivals.load(Ordering::SeqCst)
    }

    /// Writes a kubeconfig for this server (its CA, meshroot's bearer token) and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path, name: &str) -> PathBuf {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: https://{}\n    certificate-authority-data: {ca}\nusers:\n- name: meshroot\n  user:\n    token: {API_TOKEN}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: meshroot\ncurrent-context: {name}\n",
            self.address
        );
        let path = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    generation: tokio::sync::watch::Receiver<u64>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut cut = generation.clone();
        cut.mark_unchanged();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::select! {
                _ = connection => {}
                _ = cut.changed() => {}
            }
        });
    }
}

fn respond(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        json!({ "apiVersion": "v1", "kind": "Status", "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16() }),
    )
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Body> {
    state.arrivals.fetch_add(1, Ordering::SeqCst);
    let delay = *state.delay.lock().unwrap();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if state.down.load(Ordering::SeqCst) {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "etcd is down",
        );
    }
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {API_TOKEN}"));
    if !authorized {
        state.unauthorized.fetch_add(1, Ordering::SeqCst);
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let Some(call) = api_call(&method, &segments, &query) {
        state.calls.lock().unwrap().push(call);
    }
    if let Some(target) = stored_target(&segments) {
        return stored(state, method, target, &query, request).await;
    }
    match (method, segments.as_slice()) {
        (Method::POST, ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            state.reviews.fetch_add(1, Ordering::SeqCst);
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let review: Value = serde_json::from_slice(&body).unwrap();
            let token = review["spec"]["token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let audiences: Vec<String> = review["spec"]["audiences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            state.audiences.lock().unwrap().push(audiences.clone());
            let identity = state.tokens.lock().unwrap().get(&token).cloned();
            let status_json = match identity {
                None => json!({ "authenticated": false, "error": "invalid bearer token" }),
                Some(identity) => {
                    let mut extra = serde_json::Map::new();
                    if let Some((name, uid)) = identity.pod {
                        extra.insert(
                            "authentication.kubernetes.io/pod-name".into(),
                            json!([name]),
                        );
                        extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([uid]));
                    }
                    json!({
                        "authenticated": true,
                        "audiences": audiences,
                        "user": { "username": identity.username, "uid": "1",
                                  "groups": identity.groups, "extra": extra },
                    })
                }
            };
            respond(
                StatusCode::CREATED,
                json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "metadata": {}, "spec": review["spec"], "status": status_json }),
            )
        }
        (Method::GET, ["api", "v1", "namespaces", namespace, "pods", name]) => {
            state.pod_gets.fetch_add(1, Ordering::SeqCst);
            let pod = state
                .pods
                .lock()
                .unwrap()
                .iter()
                .find(|p| p.namespace == *namespace && p.name == *name)
                .cloned();
            match pod {
                Some(pod) => respond(StatusCode::OK, pod.json()),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pods \"{name}\" not found"),
                ),
            }
        }
        (Method::GET, ["api", "v1", "pods"]) => {
            state.pod_lists.fetch_add(1, Ordering::SeqCst);
            let node = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("fieldSelector="))
                .map(|v| v.replace("%3D", "=").replace("%3d", "="))
                .and_then(|v| v.strip_prefix("spec.nodeName=").map(str::to_owned));
            let Some(node) = node else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "fieldSelector required",
                );
            };
            let items: Vec<Value> = state
                .pods
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.node == node)
                .map(FakePod::json)
                .collect();
            respond(
                StatusCode::OK,
                json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items }),
            )
        }
        _ => status(StatusCode::NOT_FOUND, "NotFound", "no such endpoint"),
    }
}

/// The verb, group and resource RBAC would check for a call.
fn api_call(method: &Method, segments: &[&str], query: &str) -> Option<ApiCall> {
    let (group, rest) = match segments {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    let (resource, named, namespace) = match rest {
        ["namespaces", namespace, resource] => (*resource, false, Some(namespace.to_string())),
        ["namespaces", namespace, resource, _] => (*resource, true, Some(namespace.to_string())),
        [resource] => (*resource, false, None),
        [resource, _] => (*resource, true, None),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (method.clone(), named) {
        (Method::GET, true) => "get",
        (Method::GET, false) if watch => "watch",
        (Method::GET, false) => "list",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        _ => return None,
    };
    Some(ApiCall {
        verb: verb.to_owned(),
        group,
        resource: resource.to_owned(),
        namespace,
    })
}

/// Which stored resource a path addresses: (resource, namespace or "", name or "").
struct Target {
    resource: String,
    namespace: String,
    name: String,
}

const STORED: &[(&str, &str, &str, bool)] = &[
    // (resource, apiVersion, kind, namespaced)
    ("namespaces", "v1", "Namespace", false),
    ("configmaps", "v1", "ConfigMap", true),
    ("secrets", "v1", "Secret", true),
    ("leases", "coordination.k8s.io/v1", "Lease", true),
    ("statefulsets", "apps/v1", "StatefulSet", true),
    (
        "clustertrustbundles",
        "certificates.k8s.io/v1beta1",
        "ClusterTrustBundle",
        false,
    ),
];

fn stored_target(segments: &[&str]) -> Option<Target> {
    let rest = match segments {
        ["api", "v1", rest @ ..] => rest,
        ["apis", "coordination.k8s.io", "v1", rest @ ..] => rest,
        ["apis", "apps", "v1", rest @ ..] => rest,
        ["apis", "certificates.k8s.io", "v1beta1", rest @ ..] => rest,
        _ => return None,
    };
    let (resource, namespace, name) = match rest {
        ["namespaces", namespace, resource] => (*resource, *namespace, ""),
        ["namespaces", namespace, resource, name] => (*resource, *namespace, *name),
        ["namespaces", name] => ("namespaces", "", *name),
        [resource] => (*resource, "", ""),
        [resource, name] => (*resource, "", *name),
        _ => return None,
    };
    STORED.iter().any(|(r, ..)| *r == resource).then(|| Target {
        resource: resource.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

fn describe_kind(resource: &str) -> (&'static str, &'static str, bool) {
    let (_, api_version, kind, namespaced) = STORED.iter().find(|(r, ..)| *r == resource).unwrap();
    (api_version, kind, *namespaced)
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes (and `+`) of a query value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `object` passes the list's label and field selectors (`k=v` terms only).
fn selected(object: &Value, query: &str) -> bool {
    let labels = query_value(query, "labelSelector").unwrap_or_default();
    let fields = query_value(query, "fieldSelector").unwrap_or_default();
    let labels_ok = labels.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        object["metadata"]["labels"][k].as_str() == Some(v)
    });
    let fields_ok = fields.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        match k {
            "metadata.name" => object["metadata"]["name"].as_str() == Some(v),
            "metadata.namespace" => object["metadata"]["namespace"].as_str() == Some(v),
            _ => false,
        }
    });
    labels_ok && fields_ok
}

fn record_change(
    state: &State,
    resource: &str,
    namespace: &str,
    kind: &'static str,
    object: Value,
) {
    let change = {
        let mut objects = state.objects.lock().unwrap();
        let change = Change {
            resource_version: object["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(objects.resource_version),
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            kind,
            object,
        };
        objects.log.push(change.clone());
        change
    };
    if let Some(sender) = state.changes.lock().unwrap().as_ref() {
        let _ = sender.send(change);
    }
}

/// Deletes an object; the DELETED event carries a new resourceVersion, as the API server's does.
fn remove(state: &State, key: &(String, String, String)) -> Option<Value> {
    let object = {
        let mut objects = state.objects.lock().unwrap();
        let mut object = objects.items.remove(key)?;
        objects.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(objects.resource_version.to_string());
        object
    };
    record_change(state, &key.0, &key.1, "DELETED", object.clone());
    Some(object)
}

/// Stores `object` with a new resourceVersion and records the change.
fn store(
    state: &State,
    resource: &str,
    namespace: &str,
    name: &str,
    mut object: Value,
    kind: &'static str,
) -> Value {
    let (api_version, kind_name, namespaced) = describe_kind(resource);
    {
        let mut objects = state.objects.lock().unwrap();
        objects.resource_version += 1;
        let version = objects.resource_version;
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(kind_name);
        object["metadata"]["name"] = json!(name);
        if namespaced {
            object["metadata"]["namespace"] = json!(namespace);
        }
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{version}"));
            object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        objects.items.insert(
            (resource.to_owned(), namespace.to_owned(), name.to_owned()),
            object.clone(),
        );
    }
    record_change(state, resource, namespace, kind, object.clone());
    object
}

async fn stored(
    state: &State,
    method: Method,
    target: Target,
    query: &str,
    request: Request<Incoming>,
) -> Response<Body> {
    let Target {
        resource,
        namespace,
        name,
    } = target;
    let (api_version, kind, _) = describe_kind(&resource);
    let key = (resource.clone(), namespace.clone(), name.clone());
    let not_found = |what: &str, name: &str| {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{what} \"{name}\" not found"),
        )
    };
    match method {
        Method::GET if !name.is_empty() => match state.objects.lock().unwrap().items.get(&key) {
            Some(object) => respond(StatusCode::OK, object.clone()),
            None => not_found(&resource, &name),
        },
        Method::GET => {
            let in_scope = |change_namespace: &str, object: &Value| {
                (namespace.is_empty() || change_namespace == namespace) && selected(object, query)
            };
            let watch = query
                .split('&')
                .any(|p| p == "watch=true" || p == "watch=1");
            if !watch {
                let objects = state.objects.lock().unwrap();
                let items: Vec<Value> = objects
                    .items
                    .iter()
                    .filter(|((r, ns, _), object)| *r == resource && in_scope(ns, object))
                    .map(|(_, object)| object.clone())
                    .collect();
                return respond(
                    StatusCode::OK,
                    json!({ "apiVersion": api_version, "kind": format!("{kind}List"),
                            "metadata": { "resourceVersion": objects.resource_version.to_string() },
                            "items": items }),
                );
            }
            let from: u64 = query_value(query, "resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // Subscribe before reading the log, so no change falls between the two.
            let mut live = state.changes.lock().unwrap().as_ref().unwrap().subscribe();
            let backlog: Vec<Change> = state
                .objects
                .lock()
                .unwrap()
                .log
                .iter()
                .filter(|c| c.resource_version > from)
                .cloned()
                .collect();
            let (sender, receiver) =
                tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(64);
            let resource_filter = resource.clone();
            let namespace_filter = namespace.clone();
            let query = query.to_owned();
            tokio::spawn(async move {
                let matches = |change: &Change| {
                    change.resource == resource_filter
                        && (namespace_filter.is_empty() || change.namespace == namespace_filter)
                        && selected(&change.object, &query)
                };
                let line = |change: &Change| {
                    let text = json!({ "type": change.kind, "object": change.object }).to_string();
                    Ok(hyper::body::Frame::data(Bytes::from(text + "\n")))
                };
                let mut last = from;
                for change in backlog.iter().filter(|c| matches(c)) {
                    last = last.max(change.resource_version);
                    if sender.send(line(change)).await.is_err() {
                        return;
                    }
                }
                while let Ok(change) = live.recv().await {
                    if change.resource_version <= last || !matches(&change) {
                        continue;
                    }
                    if sender.send(line(&change)).await.is_err() {
                        return;
                    }
                }
            });
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(body.boxed())
                .unwrap()
        }
        Method::POST => {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let object: Value = serde_json::from_slice(&body).unwrap();
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let namespace_exists = namespace.is_empty()
                || state.objects.lock().unwrap().items.contains_key(&(
                    "namespaces".to_owned(),
                    String::new(),
                    namespace.clone(),
                ));
            if !namespace_exists {
                return not_found("namespaces", &namespace);
            }
            let exists = state.objects.lock().unwrap().items.contains_key(&(
                resource.clone(),
                namespace.clone(),
                name.clone(),
            ));
            if exists {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("{resource} \"{name}\" already exists"),
                );
            }
            let created = store(state, &resource, &namespace, &name, object, "ADDED");
            respond(StatusCode::CREATED, created)
        }
        Method::PUT => {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let object: Value = serde_json::from_slice(&body).unwrap();
            if state
                .conflicts
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            let current = state.objects.lock().unwrap().items.get(&key).cloned();
            let Some(current) = current else {
                return not_found(&resource, &name);
            };
            if object["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            let mut object = object;
            object["metadata"]["uid"] = current["metadata"]["uid"].clone();
            object["metadata"]["creationTimestamp"] =
                current["metadata"]["creationTimestamp"].clone();
            let updated = store(state, &resource, &namespace, &name, object, "MODIFIED");
            respond(StatusCode::OK, updated)
        }
        Method::DELETE => match remove(state, &key) {
            Some(object) => respond(StatusCode::OK, object),
            None => not_found(&resource, &name),
        },
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported",
        ),
    }
}
