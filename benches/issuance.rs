//! End-to-end issuance load: a real meshroot (TLS, JWT authentication, durable sled records with
//! group commit) in this process, driven over loopback by concurrent istio-agent-shaped clients
//! on warm connections. CSRs and tokens are made before the clock starts.
//!
//! `cargo bench --bench issuance` — settings by environment:
//! `BENCH_SECONDS` (default 5), `BENCH_STREAMS` (64), `BENCH_CSR_KEY` (`rsa-2048` | `ecdsa-p256`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use meshroot::authn::jwt::{DevTokenClaims, DevTokenSigner};
use meshroot::ca_files::{self, InitOptions};
use meshroot::client::{self, AgentMetadata, CsrShape, Target};
use meshroot::config::Config;
use meshroot::identity::TrustDomain;
use meshroot::keys::KeyType;
use rustls_pki_types::pem::PemObject as _;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let seconds: u64 = setting("BENCH_SECONDS", 5);
    let streams: usize = setting("BENCH_STREAMS", 64);
    let csr_key: String = setting("BENCH_CSR_KEY", "rsa-2048".to_owned());
    let key_type = match csr_key.as_str() {
        "ecdsa-p256" => KeyType::EcdsaP256,
        _ => KeyType::Rsa2048,
    };

    let dir = tempfile::tempdir().unwrap();
    ca_files::init(
        &InitOptions {
            dir: dir.path().to_owned(),
            meshes: vec![("default".into(), TrustDomain::new("cluster.local").unwrap())],
            key_type: KeyType::EcdsaP256,
            dev_issuer: true,
            force: false,
        },
        SystemTime::now(),
    )
    .unwrap();
    let config_path = dir.path().join("meshroot.toml");
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("127.0.0.1:15012", "127.0.0.1:0");
    let config = Config::parse(&text, &config_path, None, None).unwrap();

    // Client-side material, made before measuring.
    let pem = std::fs::read(dir.path().join("default/dev-issuer-key.pem")).unwrap();
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
    let signer = DevTokenSigner::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    let issuer = ca_files::dev_issuer_name("default");
    let audiences = vec!["istio-ca".to_owned()];
    let work: Vec<(String, String)> = (0..streams)
        .map(|i| {
            let namespace = format!("ns{i}");
            let key = key_type.generate().unwrap();
            let id = format!("spiffe://cluster.local/ns/{namespace}/sa/app");
            let csr = client::build_csr(&key, &CsrShape::istio_agent(&id)).unwrap();
            let token = signer
                .sign(&DevTokenClaims {
                    issuer: &issuer,
                    audiences: &audiences,
                    namespace: &namespace,
                    service_account: "app",
                    issued_at: meshroot::clock::unix_seconds(SystemTime::now()),
                    lifetime: Duration::from_secs(3600),
                })
                .unwrap();
            (csr, token)
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let server = meshroot::server::start(&config).await.unwrap();
        let target = Target {
            address: server.local_address().to_string(),
            root_pem: server.root_bundle_pem().to_owned(),
            server_name: "localhost".into(),
            client_identity: None,
        };

        // One request at a time on a warm connection: the latency of a single issuance.
        let channel = client::connect(&target).await.unwrap();
        let metadata = AgentMetadata {
            token: Some(work[0].1.clone()),
            cluster_id: "Kubernetes".into(),
        };
        let mut single = Vec::new();
        for _ in 0..200 {
            let started = Instant::now();
            client::create_certificate(channel.clone(), work[0].0.clone(), 86400, &metadata)
                .await
                .unwrap();
            single.push(started.elapsed().as_micros() as u64);
        }
        single.sort_unstable();
        println!(
            "single request ({csr_key} CSR, P-256 intermediate, durable record): p50 {:.2} ms, p99 {:.2} ms",
            percentile(&single, 0.5),
            percentile(&single, 0.99)
        );

        // Concurrent streams, one warm connection each.
        let flushes_before = server.store().flushes();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (csr, token) in work {
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let channel = client::connect(&target).await.unwrap();
                let metadata = AgentMetadata {
                    token: Some(token),
                    cluster_id: "Kubernetes".into(),
                };
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    match client::create_certificate(channel.clone(), csr.clone(), 86400, &metadata).await {
                        Ok(_) => latencies.push(begun.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            }));
        }
        let mut latencies = Vec::new();
        let mut errors = 0;
        for task in tasks {
            let (mine, failed) = task.await.unwrap();
            latencies.extend(mine);
            errors += failed;
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        println!(
            "{streams} streams for {seconds} s: {} issuances, {:.0}/s, errors {errors}; \
             latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            latencies.len(),
            latencies.len() as f64 / elapsed,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 0.99),
            percentile(&latencies, 0.999),
        );
        println!(
            "group commit: {} flushes, {:.1} records per flush",
            server.store().flushes() - flushes_before,
            latencies.len() as f64 / (server.store().flushes() - flushes_before).max(1) as f64
        );
        server.shutdown().await.unwrap();
    });
}
