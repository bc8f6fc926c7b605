//! Record store throughput: durable appends with group commit, sequential and concurrent.
//!
//! `cargo bench --bench store` — `BENCH_APPENDS` (default 20000), `BENCH_WRITERS` (64).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use meshroot::adapters::store::SledStore;
use meshroot::domain::record::{CallerRecord, IssuedRecord, Outcome, Record};

fn record(i: u64) -> Record {
    Record {
        sequence: 0,
        recorded_at: SystemTime::now(),
        request_id: format!("{i:016x}"),
        caller: CallerRecord {
            authenticator: "jwt".into(),
            issuer: "https://kubernetes.default.svc".into(),
            subject: format!("system:serviceaccount:ns{}:app", i % 200),
            cluster_id: "Kubernetes".into(),
            peer_address: "10.0.0.1:41234".into(),
            spiffe_id: format!("spiffe://cluster.local/ns/ns{}/sa/app", i % 200),
            pod_name: format!("app-{i}"),
            pod_uid: format!("uid-{i}"),
        },
        outcome: Outcome::Issued(IssuedRecord {
            serial: (i as u128 | 1 << 126).to_be_bytes().to_vec(),
            spiffe_id: format!("spiffe://cluster.local/ns/ns{}/sa/app", i % 200),
            requested_spiffe_id: format!("spiffe://cluster.local/ns/ns{}/sa/app", i % 200),
            dns_names: vec![],
            mesh: "default".into(),
            trust_domain: "cluster.local".into(),
            namespace: format!("ns{}", i % 200),
            service_account: "app".into(),
            not_before: SystemTime::now(),
            not_after: SystemTime::now() + Duration::from_secs(86400),
            key_algorithm: "rsa".into(),
            key_bits: 2048,
            public_key_sha256: vec![7; 32],
            csr_sha256: vec![8; 32],
            intermediate_sha256: vec![9; 32],
            certificate_sha256: vec![10; 32],
            requested_ttl_seconds: 86400,
            ca: None,
        }),
    }
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let appends = setting("BENCH_APPENDS", 20_000);
    let writers = setting("BENCH_WRITERS", 64);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = SledStore::open(dir.path()).unwrap();

        let started = Instant::now();
        for i in 0..500 {
            store.append_durable(record(i)).await.unwrap();
        }
        let each = started.elapsed() / 500;
        println!(
            "sequential durable append: {:.0} µs each",
            each.as_secs_f64() * 1e6
        );

        let flushes_before = store.flushes();
        let started = Instant::now();
        let per_writer = appends / writers;
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..per_writer {
                        store
                            .append_durable(record(w * per_writer + i))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{writers} concurrent writers: {} durable appends in {elapsed:.2} s = {:.0}/s",
            per_writer * writers,
            (per_writer * writers) as f64 / elapsed
        );
        println!("flushes: {}", store.flushes() - flushes_before);
    });
}
