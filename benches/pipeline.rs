//! Criterion benchmarks of each step of an issuance, and of the whole pipeline in-process.
//!
//! `cargo bench --bench pipeline` (criterion's filters work: `cargo bench --bench pipeline csr`).
//! Steps: CSR parse + signature check (istio-agent's RSA-2048 and ztunnel's P-256), policy,
//! leaf build + sign + re-check (P-256 and RSA-2048 intermediates), record append with group
//! commit (one durable append; 64 concurrent appends), and the whole pipeline (JWT
//! authentication, CSR, policy, signing, durable record) for one request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use meshroot::adapters::authn::impersonation::NodeAuthorizer;
use meshroot::adapters::authn::jwt::{
    self, DevTokenClaims, DevTokenSigner, JwtAuthenticator, TrustedIssuer,
};
use meshroot::adapters::authn::{
    AuthRequest, Authenticator, AuthenticatorChain, Authorization, Caller,
};
use meshroot::adapters::store::SledStore;
use meshroot::domain::clock::{Clock, SystemClock};
use meshroot::domain::identity::{SpiffeId, TrustDomain};
use meshroot::domain::keys::KeyType;
use meshroot::domain::policy::{self, AliasIssuance, MeshPolicy};
use meshroot::domain::record::{CallerRecord, IssuedRecord, Outcome, Record};
use meshroot::edge::cli::init::{self, InitOptions};
use meshroot::edge::client::{self, CsrShape};
use meshroot::issuance::{CertificateAuthority, Mesh, SigningRequest};
use rustls_pki_types::pem::PemObject as _;

const IDENTITY: &str = "spiffe://cluster.local/ns/shop/sa/cart";

/// A CA directory from `init` with the given intermediate key type.
fn ca_dir(key_type: KeyType) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    init::init(
        &InitOptions {
            dir: dir.path().to_owned(),
            meshes: vec![("default".into(), TrustDomain::new("cluster.local").unwrap())],
            key_type,
            dev_issuer: true,
            name_constraints: true,
            intermediate_path_len: 0,
            force: false,
            workloads: meshroot::domain::capacity::DEFAULT_WORKLOADS,
            token: None,
        },
        SystemTime::now(),
    )
    .unwrap();
    dir
}

fn authority(dir: &Path) -> Arc<meshroot::domain::signer::MeshSigner> {
    Arc::new(
        meshroot::domain::signer::files::load_signer(
            "default",
            TrustDomain::new("cluster.local").unwrap(),
            &dir.join("default"),
            &[],
            None,
            SystemTime::now(),
        )
        .unwrap(),
    )
}

fn mesh_policy(authority: &meshroot::domain::signer::MeshSigner) -> MeshPolicy {
    MeshPolicy {
        mesh: "default".into(),
        trust_domain: TrustDomain::new("cluster.local").unwrap(),
        trust_domain_aliases: vec![],
        alias_issuance: AliasIssuance::AsRequested,
        default_ttl: Duration::from_secs(86_400),
        max_ttl: Duration::from_secs(7 * 86_400),
        signer_not_after: authority.signing_not_after(),
        reserved: Vec::new(),
    }
}

fn caller() -> Caller {
    Caller {
        authenticator: meshroot::adapters::authn::AuthenticatorKind::Jwt,
        mesh: "default".into(),
        identity: SpiffeId::parse(IDENTITY).unwrap(),
        issuer: "https://issuer".into(),
        subject: "system:serviceaccount:shop:cart".into(),
        cluster: String::new(),
        pod: None,
    }
}

fn agent_csr() -> String {
    let key = KeyType::Rsa2048.generate().unwrap();
    client::build_csr(&key, &CsrShape::istio_agent(IDENTITY)).unwrap()
}

fn ztunnel_csr() -> String {
    let key = KeyType::EcdsaP256.generate().unwrap();
    client::build_csr(&key, &CsrShape::ztunnel(IDENTITY)).unwrap()
}

fn steps(c: &mut Criterion) {
    let (rsa_csr, p256_csr) = (agent_csr(), ztunnel_csr());
    c.bench_function("csr parse + verify / RSA-2048 (istio-agent)", |b| {
        b.iter(|| meshroot::domain::csr::parse_pem(&rsa_csr).unwrap())
    });
    c.bench_function("csr parse + verify / P-256 (ztunnel)", |b| {
        b.iter(|| meshroot::domain::csr::parse_pem(&p256_csr).unwrap())
    });

    let p256_dir = ca_dir(KeyType::EcdsaP256);
    let rsa_dir = ca_dir(KeyType::Rsa2048);
    let p256 = authority(p256_dir.path());
    let parsed = meshroot::domain::csr::parse_pem(&rsa_csr).unwrap();
    let policy = mesh_policy(&p256);
    let who = caller();
    let request = |now| policy::Request {
        caller: &who,
        csr: &parsed,
        lifetime: policy::Lifetime::Seconds(86_400),
        naming: policy::Naming::MeshRule,
        now,
    };
    c.bench_function("policy decide", |b| {
        b.iter(|| policy::decide(&policy, &request(SystemTime::now())).unwrap())
    });
    let grant = policy::decide(&policy, &request(SystemTime::now())).unwrap();
    c.bench_function("leaf build + sign + re-check / P-256 intermediate", |b| {
        b.iter(|| p256.issue_workload(&grant, SystemTime::now()).unwrap())
    });
    let rsa = authority(rsa_dir.path());
    let mut group = c.benchmark_group("slow");
    group.sample_size(20);
    group.bench_function(
        "leaf build + sign + re-check / RSA-2048 intermediate",
        |b| b.iter(|| rsa.issue_workload(&grant, SystemTime::now()).unwrap()),
    );
    group.finish();
}

fn record(i: u64) -> Record {
    let now = SystemTime::now();
    Record::new(
        format!("{i:016x}"),
        now,
        CallerRecord {
            authenticator: "jwt".into(),
            issuer: "https://issuer".into(),
            subject: "system:serviceaccount:shop:cart".into(),
            cluster_id: "Kubernetes".into(),
            peer_address: "10.0.0.1:40000".into(),
            spiffe_id: IDENTITY.into(),
            pod_name: String::new(),
            pod_uid: String::new(),
        },
        Outcome::Issued(IssuedRecord {
            serial: (i as u128 | 1 << 126).to_be_bytes().to_vec(),
            spiffe_id: IDENTITY.into(),
            requested_spiffe_id: IDENTITY.into(),
            dns_names: vec![],
            mesh: "default".into(),
            trust_domain: "cluster.local".into(),
            namespace: "shop".into(),
            service_account: "cart".into(),
            not_before: now,
            not_after: now + Duration::from_secs(86_400),
            key_algorithm: "rsa".into(),
            key_bits: 2048,
            public_key_sha256: vec![1; 32],
            csr_sha256: vec![2; 32],
            intermediate_sha256: vec![3; 32],
            certificate_sha256: vec![4; 32],
            requested_ttl_seconds: 86_400,
            ca: None,
        }),
    )
}

fn store(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut group = c.benchmark_group("record");
    group.sample_size(30);
    group.bench_function("append + group commit / one writer", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for i in 0..iterations {
                runtime.block_on(store.append_durable(record(i))).unwrap();
            }
            started.elapsed()
        })
    });
    // 64 writers at once: the time per record when one flush serves many (each criterion
    // iteration is one record, appended in rounds of 64 concurrent writers).
    group.bench_function(
        "append + group commit / 64 concurrent writers, per record",
        |b| {
            b.iter_custom(|iterations| {
                let started = Instant::now();
                runtime.block_on(async {
                    let batches = iterations.div_ceil(64);
                    for batch in 0..batches {
                        let tasks: Vec<_> = (0..64)
                            .map(|i| {
                                let store = store.clone();
                                tokio::spawn(async move {
                                    store.append_durable(record(batch * 64 + i)).await
                                })
                            })
                            .collect();
                        for task in tasks {
                            task.await.unwrap().unwrap();
                        }
                    }
                });
                started.elapsed()
            })
        },
    );
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = ca_dir(KeyType::EcdsaP256);
    let authority = authority(dir.path());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = SledStore::open(&dir.path().join("store")).unwrap();
    let pem = std::fs::read(dir.path().join("default/dev-issuer-key.pem")).unwrap();
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
    let signer = DevTokenSigner::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    let issuer = init::dev_issuer_name("default");
    let keys = jwt::load_jwks(&dir.path().join("default/dev-issuer-jwks.json")).unwrap();
    let authenticators: Vec<Box<dyn Authenticator>> = vec![Box::new(JwtAuthenticator::new(
        vec![TrustedIssuer {
            issuer: issuer.clone(),
            mesh: "default".into(),
            trust_domain: TrustDomain::new("cluster.local").unwrap(),
            audiences: vec!["istio-ca".into()],
            keys,
        }],
        clock.clone(),
    ))];
    let policy = mesh_policy(&authority);
    let ca = CertificateAuthority::new(
        vec![Mesh {
            signer: authority,
            policy,
            node_accounts: vec![],
            trust_domains: vec![TrustDomain::new("cluster.local").unwrap()],
            clusters: vec![],
            accepts: vec![],
        }],
        AuthenticatorChain::new(authenticators),
        NodeAuthorizer::new(HashMap::new(), Duration::from_secs(5), clock.clone()),
        store,
        clock,
    );
    let token = signer
        .sign(&DevTokenClaims {
            issuer: &issuer,
            audiences: &["istio-ca".to_owned()],
            namespace: "shop",
            service_account: "cart",
            issued_at: meshroot::domain::clock::unix_seconds(SystemTime::now()),
            lifetime: Duration::from_secs(3600),
            bound_pod: None,
        })
        .unwrap();
    let request = SigningRequest {
        csr_pem: agent_csr(),
        validity_seconds: 86_400,
        impersonated_identity: None,
    };
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(30);
    group.bench_function(
        "one request in-process (JWT, RSA-2048 CSR, P-256 intermediate, durable record)",
        |b| {
            b.iter_batched(
                || AuthRequest {
                    authorization: Authorization::from_header(Some(&format!("Bearer {token}"))),
                    cluster_id: "Kubernetes".into(),
                    peer_address: None,
                    peer_certificates: vec![],
                },
                |auth| {
                    runtime
                        .block_on(ca.create_certificate(&ca.new_request_id(), &auth, &request))
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        },
    );
    group.finish();
}

criterion_group!(benches, steps, store, pipeline);
criterion_main!(benches);
