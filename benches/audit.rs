//! The issuance log at scale: ingest, disk size, query latencies and verification speed.
//!
//! `cargo bench --bench audit` builds a store of `AUDIT_BENCH_RECORDS` records (default
//! 1,000,000; the figure is 10,000,000) shaped like a day of renewals: 20 meshes ×
//! 200 namespaces × 25 service accounts (100,000 identities, ~100 renewals each at 10 M),
//! 2 % denials, 3 pods per identity, 2 clusters per mesh. Records are appended through the
//! real durable path (group commit) by `AUDIT_BENCH_WRITERS` (64) concurrent writers.
//! `AUDIT_BENCH_DIR` keeps the store (reused when it holds enough records).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshroot::adapters::store::SledStore;
use meshroot::domain::audit::{OutcomeFilter, Query};
use meshroot::domain::record::{CallerRecord, DenialRecord, IssuedRecord, Outcome, Record};

const MESHES: u64 = 20;
const NAMESPACES: u64 = 200;
const ACCOUNTS: u64 = 25;
const IDENTITIES: u64 = MESHES * NAMESPACES * ACCOUNTS;
const DAY: u64 = 86_400;
/// 2027-01-15T08:00:00Z: the log covers the following day.
const START: u64 = 1_800_000_000;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: cheap, deterministic, well mixed.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct Identity {
    mesh: u64,
    namespace: u64,
    account: u64,
}

fn identity(i: u64) -> Identity {
    let id = mix(i) % IDENTITIES;
    Identity {
        mesh: id / (NAMESPACES * ACCOUNTS),
        namespace: (id / ACCOUNTS) % NAMESPACES,
        account: id % ACCOUNTS,
    }
}

fn spiffe(who: &Identity) -> String {
    format!(
        "spiffe://mesh{}.example/ns/ns{}/sa/sa{}",
        who.mesh, who.namespace, who.account
    )
}

fn serial(i: u64) -> Vec<u8> {
    let mut serial = [0u8; 16];
    serial[..8].copy_from_slice(&mix(i ^ 0x5eed).to_be_bytes());
    serial[8..].copy_from_slice(&mix(i ^ 0xfeed).to_be_bytes());
    serial[0] = (serial[0] & 0x7f) | 0x40;
    serial.to_vec()
}

/// Record `i` of `total`, recorded at its share of the day.
fn record(i: u64, total: u64) -> Record {
    let who = identity(i);
    let id = spiffe(&who);
    let at = START as f64 + i as f64 * DAY as f64 / total as f64;
    let recorded_at = UNIX_EPOCH + Duration::from_secs_f64(at);
    let namespace = format!("ns{}", who.namespace);
    let account = format!("sa{}", who.account);
    let caller = CallerRecord {
        authenticator: "token-review".into(),
        issuer: String::new(),
        subject: format!("system:serviceaccount:{namespace}:{account}"),
        cluster_id: format!("mesh{}-cluster{}", who.mesh, mix(i) % 2),
        peer_address: format!(
            "10.{}.{}.{}:{}",
            who.mesh,
            who.namespace,
            who.account,
            40000 + i % 20000
        ),
        spiffe_id: id.clone(),
        pod_name: format!("sa{}-{}", who.account, mix(i ^ 7) % 3),
        pod_uid: format!("{:032x}", mix(i ^ 11)),
    };
    let outcome = if mix(i ^ 3).is_multiple_of(50) {
        Outcome::Denied(DenialRecord {
            reason: [
                "identity-mismatch",
                "token-expired",
                "token-review-unauthenticated",
            ][(mix(i ^ 5) % 3) as usize]
                .into(),
            detail: "denied in the benchmark".into(),
            mesh: format!("mesh{}", who.mesh),
            requested_spiffe_id: id.clone(),
            csr_sha256: mix(i ^ 13).to_be_bytes().repeat(4),
            summary: None,
        })
    } else {
        Outcome::Issued(IssuedRecord {
            serial: serial(i),
            spiffe_id: id.clone(),
            requested_spiffe_id: id,
            dns_names: vec![],
            mesh: format!("mesh{}", who.mesh),
            trust_domain: format!("mesh{}.example", who.mesh),
            namespace,
            service_account: account,
            not_before: recorded_at - Duration::from_secs(120),
            not_after: recorded_at + Duration::from_secs(DAY),
            key_algorithm: "rsa".into(),
            key_bits: 2048,
            public_key_sha256: mix(i ^ 17).to_be_bytes().repeat(4),
            csr_sha256: mix(i ^ 19).to_be_bytes().repeat(4),
            intermediate_sha256: vec![9; 32],
            certificate_sha256: mix(i ^ 23).to_be_bytes().repeat(4),
            requested_ttl_seconds: DAY as i64,
            ca: None,
        })
    };
    Record::new(
        format!("{:016x}", mix(i ^ 29)),
        recorded_at,
        caller,
        outcome,
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Runs `query(k)` for k in 0..iterations; prints p50/p99 and the mean number of results.
fn measure(name: &str, iterations: u64, mut query: impl FnMut(u64) -> usize) {
    let mut times = Vec::with_capacity(iterations as usize);
    let mut results = 0usize;
    for k in 0..iterations {
        let started = Instant::now();
        results += query(k);
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "{name:<44} p50 {:>8.3} ms   p99 {:>8.3} ms   ({:.0} results on average)",
        percentile(&times, 0.50).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        results as f64 / iterations as f64
    );
}

/// This process's resident memory, in MiB (Linux).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn main() {
    let total = setting("AUDIT_BENCH_RECORDS", 1_000_000);
    let writers = setting("AUDIT_BENCH_WRITERS", 64);
    let kept = std::env::var("AUDIT_BENCH_DIR").ok();
    let temporary = tempfile::tempdir().unwrap();
    let path = kept
        .as_deref()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temporary.path().join("store"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opening = Instant::now();
    let store = SledStore::open(&path).unwrap();
    let present = store.last_sequence();
    println!(
        "opened a store of {present} records in {:.2} s (RSS {:.0} MiB)",
        opening.elapsed().as_secs_f64(),
        rss_mib()
    );
    if present < total {
        println!(
            "ingesting {} records with {writers} concurrent durable writers...",
            total - present
        );
        let next = Arc::new(AtomicU64::new(present));
        let started = Instant::now();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..writers)
                .map(|_| {
                    let (store, next) = (store.clone(), next.clone());
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            if i >= total {
                                return;
                            }
                            store.append_durable(record(i, total)).await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        let elapsed = started.elapsed();
        println!(
            "ingest: {:.0} durable records/s ({} records in {:.1} s, {} group commits)",
            (total - present) as f64 / elapsed.as_secs_f64(),
            total - present,
            elapsed.as_secs_f64(),
            store.flushes()
        );
        let started = Instant::now();
        store.persist_index().unwrap();
        println!(
            "index catch-up after ingest: {:.1} s (RSS {:.0} MiB)",
            started.elapsed().as_secs_f64(),
            rss_mib()
        );
    }
    store.flush().unwrap();
    let stats = store.stats().unwrap();
    println!(
        "store: {} records, {} index runs + {} in memory, {:.2} GiB on disk ({:.0} bytes/record)",
        stats.records,
        stats.index_runs,
        stats.index_tail_records,
        stats.disk_bytes as f64 / (1u64 << 30) as f64,
        stats.disk_bytes as f64 / stats.records.max(1) as f64
    );

    let iterations = setting("AUDIT_BENCH_QUERIES", 1000);
    let at = |seconds: f64| UNIX_EPOCH + Duration::from_secs_f64(START as f64 + seconds);
    let issued_index = |k: u64| {
        // The k-th issued record (skipping denials).
        (0..)
            .map(|j| mix(k * 7919 + j) % total)
            .find(|i| !mix(i ^ 3).is_multiple_of(50))
            .unwrap_or(0)
    };
    measure("serial lookup", iterations, |k| {
        let query = Query {
            serial: Some(serial(issued_index(k))),
            ..Query::default()
        };
        store.query(&query, 100, None).unwrap().records.len()
    });
    measure("SPIFFE ID, first page of 100", iterations, |k| {
        let query = Query {
            spiffe_id: Some(spiffe(&identity(mix(k)))),
            ..Query::default()
        };
        store.query(&query, 100, None).unwrap().records.len()
    });
    measure("namespace, first page of 100", iterations, |k| {
        let who = identity(mix(k ^ 1));
        let query = Query {
            mesh: Some(format!("mesh{}", who.mesh)),
            namespace: Some(format!("ns{}", who.namespace)),
            ..Query::default()
        };
        store.query(&query, 100, None).unwrap().records.len()
    });
    measure("namespace, valid now, page of 100", iterations, |k| {
        let who = identity(mix(k ^ 2));
        let query = Query {
            mesh: Some(format!("mesh{}", who.mesh)),
            namespace: Some(format!("ns{}", who.namespace)),
            valid_at: Some(at(DAY as f64)),
            ..Query::default()
        };
        store.query(&query, 100, None).unwrap().records.len()
    });
    measure("time range (10 min window), page of 100", iterations, |k| {
        let from = (mix(k ^ 3) % (DAY - 600)) as f64;
        let query = Query {
            since: Some(at(from)),
            until: Some(at(from + 600.0)),
            ..Query::default()
        };
        store.query(&query, 100, None).unwrap().records.len()
    });
    measure("denials of one hour, page of 100", iterations, |k| {
        let from = (mix(k ^ 4) % (DAY - 3600)) as f64;
        let query = Query {
            since: Some(at(from)),
            until: Some(at(from + 3600.0)),
            outcome: Some(OutcomeFilter::Denied { reason: None }),
            ..Query::default()
        };
        store.query(&query, 100, None).unwrap().records.len()
    });
    measure("count: records of a SPIFFE ID", iterations, |k| {
        let query = Query {
            spiffe_id: Some(spiffe(&identity(mix(k ^ 5)))),
            ..Query::default()
        };
        store.count(&query).unwrap() as usize
    });
    measure("count: records of a namespace", iterations, |k| {
        let who = identity(mix(k ^ 6));
        let query = Query {
            mesh: Some(format!("mesh{}", who.mesh)),
            namespace: Some(format!("ns{}", who.namespace)),
            ..Query::default()
        };
        store.count(&query).unwrap() as usize
    });
    measure(
        "count: valid now in a namespace",
        iterations.min(200),
        |k| {
            let who = identity(mix(k ^ 7));
            let query = Query {
                mesh: Some(format!("mesh{}", who.mesh)),
                namespace: Some(format!("ns{}", who.namespace)),
                valid_at: Some(at(DAY as f64)),
                ..Query::default()
            };
            store.count(&query).unwrap() as usize
        },
    );

    let started = Instant::now();
    let report = store.verify(None, &[], SystemTime::now()).unwrap();
    let elapsed = started.elapsed();
    println!(
        "verify: {} entries in {:.1} s = {:.0} records/s (root {})",
        report.entries,
        elapsed.as_secs_f64(),
        report.entries as f64 / elapsed.as_secs_f64(),
        meshroot::domain::digest::hex(&report.root)
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    println!(
        "RSS after the queries and verification: {:.0} MiB",
        rss_mib()
    );
}
