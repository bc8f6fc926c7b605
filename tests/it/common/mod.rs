//! Shared test helpers: a CA on disk, a running server on 127.0.0.1:0 with real TLS, tokens from
//! the development issuer, CSRs shaped like istio-agent's and ztunnel's, and independent chain
//! verification (rustls-webpki and `openssl verify`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod kube_api;
pub mod load;
pub mod process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use meshroot::adapters::authn::jwt::{DevTokenClaims, DevTokenSigner};
use meshroot::adapters::config::Config;
use meshroot::domain::audit::Query;
use meshroot::domain::identity::TrustDomain;
use meshroot::domain::keys::{self, KeyType};
use meshroot::domain::record::Record;
use meshroot::edge::cli::init::{self, InitOptions};
use meshroot::edge::client::{self, AgentMetadata, CsrShape, Target};
use meshroot::edge::grpc::REQUEST_ID_HEADER;
use meshroot::edge::server::{self, RunningServer};
use meshroot::pb::istio::istio_certificate_service_client::IstioCertificateServiceClient;
use meshroot::pb::istio::IstioCertificateResponse;
use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const MESH: &str = "default";

/// A CA directory made by `init`, with a development issuer.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        Self::with_meshes(&[(MESH, TRUST_DOMAIN)], KeyType::EcdsaP256)
    }

    pub fn with_meshes(meshes: &[(&str, &str)], key_type: KeyType) -> Self {
        Self::with_meshes_constrained(meshes, key_type, true)
    }

    pub fn with_meshes_constrained(
        meshes: &[(&str, &str)],
        key_type: KeyType,
        name_constraints: bool,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        init::init(
            &InitOptions {
                dir: dir.path().to_owned(),
                meshes: meshes
                    .iter()
                    .map(|(name, td)| (name.to_string(), TrustDomain::new(td).unwrap()))
                    .collect(),
                key_type,
                dev_issuer: true,
                name_constraints,
                intermediate_path_len: 0,
                force: false,
                workloads: meshroot::domain::capacity::DEFAULT_WORKLOADS,
                token: None,
            },
            SystemTime::now(),
        )
        .unwrap();
        let ca = Self { dir };
        // Listen on ephemeral ports (the CSR API and the admin address).
        ca.edit_config(|text| {
            text.edited("127.0.0.1:15012", "127.0.0.1:0")
                .edited("127.0.0.1:15014", "127.0.0.1:0")
        });
        ca
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("meshroot.toml")
    }

    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(text)).unwrap();
    }

    /// Moves the admin listener off loopback (`0.0.0.0`, an ephemeral port), where it serves
    /// over TLS and the audit API requires one of `allowed` identities, as in a cluster.
    pub fn admin_on_tls(&self, allowed: &[&str]) {
        let allowed: Vec<String> = allowed.iter().map(|id| format!("{id:?}")).collect();
        self.edit_config(|text| {
            let tls = format!(
                "[admin]\nlisten = \"0.0.0.0:0\"\nallowed_identities = [{}]",
                allowed.join(", ")
            );
            let edited = text.edited("[admin]\nlisten = \"127.0.0.1:0\"", &tls);
            assert_ne!(edited, text, "the config has the loopback admin listener");
            edited
        });
    }

    pub fn config(&self) -> Config {
        Config::parse(
            &std::fs::read_to_string(self.config_path()).unwrap(),
            &self.config_path(),
            None,
            None,
        )
        .unwrap()
    }

    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.path().join("root-cert.pem")).unwrap()
    }

    pub fn signer(&self, mesh: &str) -> DevTokenSigner {
        let pem = std::fs::read(self.path().join(mesh).join("dev-issuer-key.pem")).unwrap();
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
        DevTokenSigner::from_pkcs8(der.secret_pkcs8_der()).unwrap()
    }

    /// A valid token for `ns`/`sa` from the mesh's development issuer.
    pub fn token(&self, mesh: &str, namespace: &str, service_account: &str) -> String {
        self.token_with(mesh, namespace, service_account, |_| {})
    }

    /// A token whose claims `adjust` may change.
    pub fn token_with(
        &self,
        mesh: &str,
        namespace: &str,
        service_account: &str,
        adjust: impl FnOnce(&mut TokenSpec),
    ) -> String {
        let mut spec = TokenSpec {
            issuer: init::dev_issuer_name(mesh),
            audiences: vec!["istio-ca".to_owned()],
            issued_at: meshroot::domain::clock::unix_seconds(SystemTime::now()),
            lifetime: Duration::from_secs(3600),
            pod: None,
        };
        adjust(&mut spec);
        self.signer(mesh)
            .sign(&DevTokenClaims {
                issuer: &spec.issuer,
                audiences: &spec.audiences,
                namespace,
                service_account,
                issued_at: spec.issued_at,
                lifetime: spec.lifetime,
                bound_pod: spec.pod.as_ref(),
            })
            .unwrap()
    }

    /// Starts the server, sends one request for `ns`/`sa` with a valid token, stops the server,
    /// and returns the chain.
    pub async fn issue_once(
        &self,
        csr: String,
        namespace: &str,
        service_account: &str,
    ) -> Vec<String> {
        let server = self.start().await;
        let response = server
            .call(csr, Some(self.token(MESH, namespace, service_account)), 0)
            .await
            .unwrap();
        server.stop().await;
        response.cert_chain
    }

    pub async fn start(&self) -> TestServer {
        init_test_log();
        self.start_with_clock(std::sync::Arc::new(meshroot::domain::clock::SystemClock))
            .await
    }

    /// Starts the server reading time from `clock` (token expiry, caches, certificates).
    pub async fn start_with_clock(
        &self,
        clock: std::sync::Arc<dyn meshroot::domain::clock::Clock>,
    ) -> TestServer {
        let server = server::start_with_clock(&self.config(), clock)
            .await
            .unwrap();
        TestServer {
            root_pem: self.root_pem(),
            server,
        }
    }
}

impl TestCa {
    /// A client certificate for `identity`, signed directly by `mesh`'s intermediate key in
    /// this CA directory with rcgen (bypassing the server and every check meshroot makes, as a
    /// holder of the key could), valid from `not_before` to `not_after`. Returns (chain PEM
    /// without the roots, key PEM).
    pub fn mint(
        &self,
        mesh: &str,
        identity: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (String, String) {
        self.mint_raw(mesh, &[identity.to_owned()], not_before, not_after)
    }

    /// Like [`TestCa::mint`], but the leaf's only SAN is the DNS name `dns` (which may look like
    /// a SPIFFE ID: nothing checks a DNS SAN's syntax).
    pub fn mint_dns(&self, mesh: &str, dns: &str) -> (String, String) {
        let now = SystemTime::now();
        self.mint_sans(
            mesh,
            vec![rcgen::SanType::DnsName(dns.try_into().unwrap())],
            now - Duration::from_secs(300),
            now + Duration::from_secs(3600),
        )
    }

    /// A client-auth certificate carrying every URI in `uris`, signed by `mesh`'s intermediate
    /// with rcgen directly (meshroot itself never issues such a thing). (chain PEM, key PEM).
    pub fn mint_with_uris(&self, mesh: &str, uris: &[String]) -> (String, String) {
        let now = SystemTime::now();
        self.mint_raw(
            mesh,
            uris,
            now - Duration::from_secs(300),
            now + Duration::from_secs(3600),
        )
    }

    fn mint_raw(
        &self,
        mesh: &str,
        uris: &[String],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (String, String) {
        let sans = uris
            .iter()
            .map(|uri| rcgen::SanType::URI(uri.clone().try_into().unwrap()))
            .collect();
        self.mint_sans(mesh, sans, not_before, not_after)
    }

    fn mint_sans(
        &self,
        mesh: &str,
        sans: Vec<rcgen::SanType>,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (String, String) {
        let ca_key = keys::load_private_key_pem(
            &std::fs::read(self.path().join(mesh).join("ca-key.pem")).unwrap(),
        )
        .unwrap();
        let ca_cert = std::fs::read_to_string(self.path().join(mesh).join("ca-cert.pem")).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, &ca_key).unwrap();
        let key = p256_key();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (format!("{}{ca_cert}", cert.pem()), key.serialize_pem())
    }

    /// `meshroot rotate intermediate` for `mesh` (with the trust domains its current
    /// intermediate is constrained to), the new files copied over its CA directory.
    pub fn rotate_intermediate(&self, mesh: &str) {
        let current = std::fs::read(self.path().join(mesh).join("ca-cert.pem")).unwrap();
        let current = CertificateDer::from_pem_slice(&current).unwrap();
        let permitted = meshroot::domain::signer::constraints::uri_constraints_of(&current)
            .expect("init constrains the intermediates")
            .permitted()
            .to_vec();
        let permitted: Vec<&str> = permitted.iter().map(String::as_str).collect();
        self.rotate_intermediate_permitting(mesh, &permitted);
    }

    /// Moves `mesh` to the intermediate `other` holds for it (under `other`'s root): its four
    /// `cacerts` files copied over this CA directory's.
    pub fn take_intermediate_of(&self, other: &TestCa, mesh: &str) {
        for file in [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ] {
            std::fs::copy(
                other.path().join(mesh).join(file),
                self.path().join(mesh).join(file),
            )
            .unwrap();
        }
    }

    /// `meshroot rotate intermediate --trust-domain … --path-len 1` for `mesh`: an intermediate
    /// under which meshroot may issue clusters' istiod intermediates (the plug-in path).
    pub fn allow_cluster_intermediates(&self, mesh: &str, trust_domains: &[&str]) {
        self.rotate_intermediate_with(mesh, trust_domains, 1);
    }

    /// `meshroot rotate intermediate --trust-domain …` for `mesh`: a new intermediate that may
    /// certify URIs of `trust_domains` (a trust-domain migration's first step), the new files
    /// copied over its CA directory.
    pub fn rotate_intermediate_permitting(&self, mesh: &str, trust_domains: &[&str]) {
        self.rotate_intermediate_with(mesh, trust_domains, 0);
    }

    fn rotate_intermediate_with(&self, mesh: &str, trust_domains: &[&str], path_len: u8) {
        let next = tempfile::tempdir().unwrap();
        let permitted: Vec<TrustDomain> = trust_domains
            .iter()
            .map(|td| TrustDomain::new(td).unwrap())
            .collect();
        init::issue_intermediate(
            self.path(),
            mesh,
            next.path(),
            &init::IntermediateOptions {
                key_type: KeyType::EcdsaP256,
                permitted: Some(permitted),
                path_len,
                force: false,
                pkcs11: None,
                token_label: None,
            },
            SystemTime::now(),
        )
        .unwrap();
        for file in ["ca-key.pem", "ca-cert.pem", "cert-chain.pem"] {
            std::fs::copy(next.path().join(file), self.path().join(mesh).join(file)).unwrap();
        }
    }

    /// Copies `other`'s root into this CA directory as `name` (a partner root for
    /// `extra_roots`).
    pub fn add_root_of(&self, other: &TestCa, name: &str) {
        std::fs::write(self.path().join(name), other.root_pem()).unwrap();
    }

    /// A root rotation's first step: the root of a new CA (returned) joins the default mesh's
    /// bundle through `extra_roots` (`next-root.pem`); no intermediate under it yet.
    pub fn add_next_root(&self) -> TestCa {
        let next = TestCa::new();
        self.add_root_of(&next, "next-root.pem");
        self.edit_config(|text| {
            let edited = text.replacen(
                "ca_dir = \"default\"",
                "ca_dir = \"default\"\nextra_roots = [\"next-root.pem\"]",
                1,
            );
            assert_ne!(edited, text, "the config has the default mesh");
            edited
        });
        next
    }
}

pub struct TokenSpec {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub issued_at: i64,
    pub lifetime: Duration,
    /// The pod a projected token is bound to (`kubernetes.io.pod`, `.node`).
    pub pod: Option<meshroot::adapters::authn::PodRef>,
}

/// `MESHROOT_TEST_LOG=<filter>` shows the servers' logs in test output (with `--nocapture`).
/// Edits of a configuration's text that fail when their pattern matches nothing, so a test
/// cannot run against the default because `meshroot init` started writing a key differently.
pub trait Edited {
    /// Every occurrence of `from` replaced by `to`; panics if there is none.
    fn edited(&self, from: &str, to: &str) -> String;
}

impl Edited for str {
    fn edited(&self, from: &str, to: &str) -> String {
        assert!(self.contains(from), "{from:?} is not in:\n{self}");
        self.replace(from, to)
    }
}

pub fn init_test_log() {
    if let Ok(filter) = std::env::var("MESHROOT_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    }
}

/// A running meshroot.
pub struct TestServer {
    pub server: RunningServer,
    pub root_pem: String,
}

impl TestServer {
    pub fn target(&self, server_name: &str) -> Target {
        Target {
            address: self.server.local_address().to_string(),
            root_pem: self.root_pem.clone(),
            server_name: server_name.to_owned(),
            client_identity: None,
        }
    }

    /// A client of the audit API on the loopback (plain-text) admin address.
    pub async fn audit_client(
        &self,
    ) -> meshroot::pb::audit::audit_service_client::AuditServiceClient<tonic::transport::Channel>
    {
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            self.server.admin_address()
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
        meshroot::pb::audit::audit_service_client::AuditServiceClient::new(channel)
    }

    /// One CreateCertificate call shaped like istio-agent's (`clusterid: Kubernetes`).
    pub async fn call(
        &self,
        csr: String,
        token: Option<String>,
        validity_seconds: i64,
    ) -> Result<IstioCertificateResponse, tonic::Status> {
        self.call_with(csr, token, validity_seconds, "Kubernetes", None)
            .await
    }

    /// One CreateCertificate call with a given `clusterid` and, optionally, a client
    /// certificate (PEM chain, PEM key) for mTLS.
    pub async fn call_with(
        &self,
        csr: String,
        token: Option<String>,
        validity_seconds: i64,
        cluster_id: &str,
        client_identity: Option<(String, String)>,
    ) -> Result<IstioCertificateResponse, tonic::Status> {
        let mut target = self.target("meshroot.istio-system.svc");
        target.client_identity = client_identity;
        let channel = client::connect(&target).await.unwrap();
        client::create_certificate(
            channel,
            csr,
            validity_seconds,
            &AgentMetadata {
                token,
                cluster_id: cluster_id.to_owned(),
            },
        )
        .await
    }

    /// One CreateCertificate call with the given request body and headers, nothing else.
    pub async fn call_raw(
        &self,
        body: meshroot::pb::istio::IstioCertificateRequest,
        headers: &[(&'static str, String)],
    ) -> Result<IstioCertificateResponse, tonic::Status> {
        let channel = client::connect(&self.target("localhost")).await.unwrap();
        let mut request = tonic::Request::new(body);
        for (name, value) in headers {
            request.metadata_mut().insert(*name, value.parse().unwrap());
        }
        IstioCertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// One istio-agent request for `default/<service_account>` with its valid token from
    /// `ca`'s development issuer; returns the chain.
    pub async fn issue(&self, ca: &TestCa, service_account: &str) -> Vec<String> {
        self.call(
            agent_csr(&spiffe_id("default", service_account)),
            Some(ca.token(MESH, "default", service_account)),
            0,
        )
        .await
        .unwrap()
        .cert_chain
    }

    /// Asks for a certificate for `identity` of `mesh` as istio-agent does (P-256 key, valid
    /// token of `ca`'s development issuer); returns (chain PEM without the roots, key PEM).
    pub async fn workload(&self, ca: &TestCa, mesh: &str, identity: &str) -> (String, String) {
        let id = meshroot::domain::identity::SpiffeId::parse(identity).unwrap();
        let key = p256_key();
        let csr = client::build_csr(&key, &CsrShape::istio_agent(identity)).unwrap();
        let token = ca.token(mesh, id.namespace(), id.service_account());
        let response = self.call(csr, Some(token), 3600).await.unwrap();
        let (_, chain) = response.cert_chain.split_last().unwrap();
        (chain.concat(), key.serialize_pem())
    }

    /// Like [`TestServer::workload`], but the whole answer: the chain, then the root bundle.
    pub async fn workload_chain(&self, ca: &TestCa, mesh: &str, identity: &str) -> Vec<String> {
        let id = meshroot::domain::identity::SpiffeId::parse(identity).unwrap();
        let csr = client::build_csr(&p256_key(), &CsrShape::istio_agent(identity)).unwrap();
        let token = ca.token(mesh, id.namespace(), id.service_account());
        self.call(csr, Some(token), 3600).await.unwrap().cert_chain
    }

    /// ztunnel's call: its own `token` (cluster `west`), asking for `identity` through
    /// `metadata["ImpersonatedIdentity"]`, with a P-256 CSR for that identity.
    pub async fn impersonate(
        &self,
        token: &str,
        identity: &str,
    ) -> Result<Vec<String>, tonic::Status> {
        let impersonated = prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(identity.to_owned())),
        };
        let body = meshroot::pb::istio::IstioCertificateRequest {
            csr: ztunnel_csr(identity),
            validity_duration: 0,
            metadata: Some(prost_types::Struct {
                fields: [("ImpersonatedIdentity".to_owned(), impersonated)]
                    .into_iter()
                    .collect(),
            }),
        };
        let headers = [
            ("authorization", format!("Bearer {token}")),
            ("clusterid", "west".to_owned()),
        ];
        self.call_raw(body, &headers).await.map(|r| r.cert_chain)
    }

    /// The record a failed call produced, found by the request id in the status.
    pub fn record_of(&self, status: &tonic::Status) -> Record {
        let request_id = status
            .metadata()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .expect("the status carries a request id")
            .to_owned();
        self.records()
            .into_iter()
            .find(|r| r.request_id == request_id)
            .unwrap_or_else(|| panic!("no record for request {request_id}"))
    }

    pub fn records(&self) -> Vec<Record> {
        self.server.store().query_all(&Query::default()).unwrap()
    }

    pub fn records_for_serial(&self, serial: &[u8]) -> Vec<Record> {
        self.server
            .store()
            .query_all(&Query {
                serial: Some(serial.to_vec()),
                ..Query::default()
            })
            .unwrap()
    }

    pub async fn stop(self) {
        self.server.shutdown().await.unwrap();
    }
}

/// The Python with the test tools from `.ci/requirements.txt` (the Prometheus text parser,
/// kubernetes-validate, PyYAML): `$MESHROOT_PYTHON`, else `target/ci-venv/bin/python`.
pub fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("MESHROOT_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/python");
    assert!(
        venv.exists(),
        "a Python with the test tools is needed: set MESHROOT_PYTHON or run `bash .ci/run` \
         once (it makes target/ci-venv from .ci/requirements.txt)"
    );
    venv
}

/// `go run tests/go/SCRIPT ARGS` with Go's standard library only (`$MESHROOT_GO`, else `go`).
pub fn go_run(script: &str, args: &[&str]) -> std::process::Output {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let go = std::env::var_os("MESHROOT_GO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("go"));
    std::process::Command::new(go)
        .arg("run")
        .arg(manifest.join("tests/go").join(script))
        .args(args)
        .env("GOCACHE", manifest.join("target/go-cache"))
        .env("GO111MODULE", "off")
        .output()
        .expect("Go is needed: set MESHROOT_GO or install golang-go (.ci/run does)")
}

/// One HTTP/1.1 GET; returns (status code, body).
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = format!("GET {path} HTTP/1.1\r\nHost: meshroot\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        head.to_ascii_lowercase().contains("content-length"),
        "not chunked: {head}"
    );
    (status, body.to_owned())
}

/// GET `path` over TLS (HTTP/1.1), with a client certificate (chain PEM, key PEM) or none:
/// (status, body).
pub async fn https_get(
    address: std::net::SocketAddr,
    root_pem: &str,
    path: &str,
    client_identity: Option<(String, String)>,
) -> (u16, String) {
    use rustls_pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    for root in certificates(root_pem) {
        roots.add(root).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client_identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(
                certificates(&chain),
                rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// An RSA-2048 key (istio-agent's default), generated once per test binary.
pub fn rsa_key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyType::Rsa2048.generate().unwrap())
}

pub fn p256_key() -> KeyPair {
    KeyType::EcdsaP256.generate().unwrap()
}

/// istio-agent's CSR: RSA-2048, `O=`, one critical URI SAN.
pub fn agent_csr(spiffe_id: &str) -> String {
    client::build_csr(rsa_key(), &CsrShape::istio_agent(spiffe_id)).unwrap()
}

/// ztunnel's CSR: P-256, empty subject, one non-critical URI SAN.
pub fn ztunnel_csr(spiffe_id: &str) -> String {
    client::build_csr(&p256_key(), &CsrShape::ztunnel(spiffe_id)).unwrap()
}

/// Parses a PEM element of a chain into DER certificates.
pub fn certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    keys::parse_certificates_pem(pem.as_bytes()).unwrap()
}

/// Checks the Istio chain shape and verifies it with rustls-webpki and `openssl verify`.
pub fn verify_chain(chain: &[String], roots_pem: &str) {
    assert!(
        chain.len() >= 2,
        "at least a leaf and the roots: {}",
        chain.len()
    );
    for element in chain {
        assert!(element.ends_with('\n'), "every element ends with a newline");
    }
    let (bundle, certs) = chain.split_last().unwrap();
    assert_eq!(
        bundle, roots_pem,
        "the last element is the whole root bundle"
    );
    let roots = certificates(bundle);
    let leaf = certificates(&certs[0]);
    assert_eq!(leaf.len(), 1, "the leaf element holds one certificate");
    let mut intermediates = Vec::new();
    for element in &certs[1..] {
        let found = certificates(element);
        assert_eq!(found.len(), 1, "one certificate per intermediate element");
        assert!(
            !roots.contains(&found[0]),
            "a root is never repeated among intermediates"
        );
        intermediates.extend(found);
    }

    // webpki refuses every URI under a URI name constraint (it does not implement them), so a
    // constrained intermediate is checked as meshroot itself does: the leaf with webpki against
    // the intermediate as a constraint-free anchor, the constraint on its URIs, and the full
    // path, constraints included, by `openssl verify` below.
    let constrained = intermediates
        .first()
        .and_then(|signing| meshroot::domain::signer::constraints::uri_constraints_of(signing));
    let (anchors, path): (Vec<_>, &[CertificateDer<'static>]) = match &constrained {
        Some(constraints) => {
            let (anchor, _) =
                meshroot::domain::signer::constraints::constraint_free_anchor(&intermediates[0])
                    .unwrap();
            let (_, parsed) = x509_parser::parse_x509_certificate(&leaf[0]).unwrap();
            for uri in meshroot::domain::identity::AltNames::of_certificate(&parsed).uris {
                assert!(constraints.permits(uri), "{uri} is outside {constraints:?}");
            }
            (vec![anchor], &[])
        }
        None => (
            roots
                .iter()
                .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
                .collect(),
            &intermediates,
        ),
    };
    let end_entity = webpki::EndEntityCert::try_from(&leaf[0]).unwrap();
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                path,
                UnixTime::now(),
                usage,
                None,
                None,
            )
            .expect("webpki accepts the chain");
    }

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let root_file = write("roots.pem", bundle);
    let leaf_file = write("leaf.pem", &certs[0]);
    let mut command = Command::new("openssl");
    command.arg("verify").arg("-CAfile").arg(&root_file);
    if certs.len() > 1 {
        let untrusted = write("intermediates.pem", &certs[1..].concat());
        command.arg("-untrusted").arg(untrusted);
    }
    let output = command
        .arg("-purpose")
        .arg("sslclient")
        .arg(&leaf_file)
        .output()
        .expect("openssl must be installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs openssl with arguments; panics with its output on failure.
pub fn openssl(args: &[&str]) -> String {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The cross-mesh data-plane scenario: one meshroot and one root serving mesh a (`a.example`,
/// migrating from `a-old.example`), mesh b (`b.example`, the gateway's) and mesh c (`c.example`,
/// not trusted by the gateway), plus a workload under another root. Each credential is
/// (chain PEM without roots, key PEM), issued through the Istio CSR API.
pub struct CrossMesh {
    pub root_pem: String,
    pub gateway: (String, String),
    /// `spiffe://a.example/ns/shop/sa/cart`
    pub cart: (String, String),
    /// `spiffe://a-old.example/ns/shop/sa/legacy` (the alias)
    pub legacy: (String, String),
    /// `spiffe://c.example/ns/shop/sa/cart`
    pub untrusted: (String, String),
    /// `spiffe://a.example/ns/shop/sa/cart` under another root
    pub foreign: (String, String),
    /// `spiffe://b.example/ns/shop/sa/forged`, minted with mesh a's intermediate key directly (a
    /// leaked intermediate minting another mesh's identity under the shared root)
    pub forged: (String, String),
}

pub const GATEWAY_ID: &str = "spiffe://b.example/ns/istio-system/sa/ingress-gateway";

impl CrossMesh {
    /// With `name_constraints`, each mesh's intermediate is confined to its trust domains
    /// (`meshroot init`'s default); without, as `init --no-name-constraints` makes them.
    pub async fn issue(name_constraints: bool) -> Self {
        let meshes = [("a", "a.example"), ("b", "b.example"), ("c", "c.example")];
        let ca = TestCa::with_meshes_constrained(&meshes, KeyType::EcdsaP256, name_constraints);
        if name_constraints {
            ca.rotate_intermediate_permitting("a", &["a.example", "a-old.example"]);
        }
        ca.edit_config(|text| {
            text.replacen(
                "trust_domain = \"a.example\"\n",
                "trust_domain = \"a.example\"\ntrust_domain_aliases = [\"a-old.example\"]\n",
                1,
            )
        });
        let server = ca.start().await;
        let gateway = server.workload(&ca, "b", GATEWAY_ID).await;
        let cart = server
            .workload(&ca, "a", "spiffe://a.example/ns/shop/sa/cart")
            .await;
        let legacy = server
            .workload(&ca, "a", "spiffe://a-old.example/ns/shop/sa/legacy")
            .await;
        let untrusted = server
            .workload(&ca, "c", "spiffe://c.example/ns/shop/sa/cart")
            .await;
        server.stop().await;
        let now = SystemTime::now();
        let forged = ca.mint(
            "a",
            "spiffe://b.example/ns/shop/sa/forged",
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        );
        let stranger = TestCa::with_meshes_constrained(
            &[("a", "a.example")],
            KeyType::EcdsaP256,
            name_constraints,
        );
        let stranger_server = stranger.start().await;
        let foreign = stranger_server
            .workload(&stranger, "a", "spiffe://a.example/ns/shop/sa/cart")
            .await;
        stranger_server.stop().await;
        Self {
            root_pem: ca.root_pem(),
            gateway,
            cart,
            legacy,
            untrusted,
            foreign,
            forged,
        }
    }
}

/// Copies a directory tree (a store snapshot, `deploy/`).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Waits, bounded by `within`, until `check` answers `Ok`, and returns its value; polls every
/// 50 ms. On timeout it fails with `what` and the last reason `check` gave for not yet.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let why = match check().await {
            Ok(value) => return value,
            Err(why) => why,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) for `child` to exit: its status, or None after `within` (the child is then
/// killed and reaped, so a failing test leaves no process behind).
pub async fn exit_within(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded, 20 s) until the asynchronous `check` holds.
pub async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until(what, Duration::from_secs(20), || {
        let done = check();
        async move { done.await.then_some(()).ok_or_else(String::new) }
    })
    .await
}

/// Waits (bounded, 20 s) until `check` holds.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    eventually_async(what, || std::future::ready(check())).await
}

/// A finished command's stdout and stderr, for messages and matching.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A Kubernetes Secret's `data[key]`, decoded (empty when absent or not text).
pub fn secret_text(secret: &serde_json::Value, key: &str) -> String {
    use base64::Engine as _;
    let encoded = secret["data"][key].as_str().unwrap_or_default();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_default(),
    )
    .unwrap_or_default()
}

/// A refusal as the client sees it and as it is recorded: `code`, a denial record with
/// `reason` and a detail the client does not see, and the request id in the message.
pub fn assert_refused(
    server: &TestServer,
    status: &tonic::Status,
    code: tonic::Code,
    reason: &str,
) -> Record {
    assert_eq!(status.code(), code, "{}", status.message());
    let record = server.record_of(status);
    let meshroot::domain::record::Outcome::Denied(denial) = &record.outcome else {
        panic!("expected a denial record, got {record:?}")
    };
    assert_eq!(denial.reason, reason, "{}", denial.detail);
    assert!(!denial.detail.is_empty());
    assert!(
        !status.message().contains(&denial.detail),
        "the client must not see the detail: {}",
        status.message()
    );
    assert!(status.message().contains(&record.request_id));
    record
}

/// A TCP port free now on every local address, for a listener a test configures by number (a
/// replica's admin address, an Envoy listener, a Collector that is not up yet).
///
/// Taken from below the kernel's ephemeral range, so no `:0` bind and no outbound connection
/// of a concurrent test can be handed the same port between now and the bind (that race once
/// failed CI with `AddrInUse`). Each port is handed out once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let low = ephemeral_low();
    let span = low.saturating_sub(PORTS_FROM).max(1);
    if NEXT.load(Ordering::Relaxed) == 0 {
        // Start at a per-process offset, so two test binaries run side by side rarely meet.
        let offset = (std::process::id() as u16).wrapping_mul(7919) % span;
        let _ = NEXT.compare_exchange(0, PORTS_FROM + offset, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let taken = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORTS_FROM + taken.wrapping_sub(PORTS_FROM) % span;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {PORTS_FROM} and {low}");
}

/// The lowest port handed out by [`free_port`].
const PORTS_FROM: u16 = 20_000;

/// The first port of the kernel's ephemeral range (`ip_local_port_range`; Linux's default 32768).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .filter(|low| *low > PORTS_FROM + 1_000)
        .unwrap_or(32_768)
}
