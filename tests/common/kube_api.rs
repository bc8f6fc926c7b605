//! A fake Kubernetes API server for the tests: real HTTPS (its own CA), bearer-token
//! credentials, and the documented endpoints meshroot uses —
//! `POST /apis/authentication.k8s.io/v1/tokenreviews`, `GET /api/v1/namespaces/{ns}/pods/{name}`,
//! `GET /api/v1/pods?fieldSelector=spec.nodeName=…` — answering with Kubernetes' JSON shapes.
//! It counts its calls and can be made slow or failing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
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
}

/// A running fake API server.
pub struct FakeApiServer {
    pub address: SocketAddr,
    pub state: Arc<State>,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
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
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = shared.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Self {
            address,
            state,
            ca_pem: ca_cert.pem(),
            task,
        }
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

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    respond(
        code,
        json!({ "apiVersion": "v1", "kind": "Status", "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16() }),
    )
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
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
