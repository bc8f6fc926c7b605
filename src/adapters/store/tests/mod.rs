//! The store against an oracle: every query served by the indexes returns exactly the records
//! `Query::matches` selects, in the same order, whether they sit in merged runs, tier-0 runs or
//! the in-memory tail, across pages, pruning and reopening.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::index::Plan;
use super::*;
use crate::domain::audit::checkpoint::{AuditSigner, AuditVerifier};
use crate::domain::audit::merkle;
use crate::domain::audit::{OutcomeFilter, Query};
use crate::domain::record::{
    CallerRecord, DenialRecord, IssuedRecord, RevocationRecord, RevokedCertificate, RECORD_VERSION,
};
use crate::pb::store as pb;
use prost::Message as _;

mod log;

const T0: u64 = 1_800_000_000;

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Record `i` of a synthetic log: two meshes, five namespaces, four service accounts, some
/// alias requests, 20 % denials for three reasons, times that sometimes step back.
fn synthetic(i: u64, rng: &mut Rng) -> Record {
    let mesh = if rng.below(3) == 0 { "b" } else { "a" };
    let trust_domain = format!("{mesh}.example");
    let namespace = format!("n{}", rng.below(5));
    let account = format!("s{}", rng.below(4));
    let id = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{account}");
    let jitter = rng.below(5) as i64 - 1; // -1 ..= 3 seconds: times may step back
    let recorded_at = UNIX_EPOCH + Duration::from_secs((T0 as i64 + i as i64 * 2 + jitter) as u64);
    let caller = CallerRecord {
        authenticator: "token-review".into(),
        issuer: String::new(),
        subject: format!("system:serviceaccount:{namespace}:{account}"),
        cluster_id: if rng.below(2) == 0 { "west" } else { "east" }.into(),
        peer_address: "10.0.0.1:1234".into(),
        spiffe_id: id.clone(),
        pod_name: format!("pod-{}", rng.below(40)),
        pod_uid: String::new(),
    };
    let outcome = if rng.below(5) == 0 {
        Outcome::Denied(DenialRecord {
            reason: [
                "identity-mismatch",
                "token-expired",
                "csr-signature-invalid",
            ][rng.below(3) as usize]
                .into(),
            detail: "detail".into(),
            mesh: mesh.into(),
            requested_spiffe_id: match rng.below(6) {
                0 => String::new(),
                // Not Istio's form: prefix filters must still find it.
                1 => format!("spiffe://{trust_domain}/ns/{namespace}"),
                _ => id.clone(),
            },
            csr_sha256: vec![1; 32],
            summary: (rng.below(7) == 0).then(|| crate::domain::record::RefusalSummary {
                count: 1 + rng.below(1000),
                first_at: UNIX_EPOCH + Duration::from_millis(T0 * 1000 + i),
                last_at: UNIX_EPOCH + Duration::from_millis(T0 * 1000 + i + 500),
            }),
        })
    } else {
        let alias = mesh == "a" && rng.below(6) == 0;
        let lifetime = [3600u64, 86400, 7 * 86400][rng.below(3) as usize];
        let issued_at = T0 + i * 2;
        Outcome::Issued(IssuedRecord {
            serial: (i as u128 * 7919 + 1).to_be_bytes().to_vec(),
            spiffe_id: id.clone(),
            requested_spiffe_id: if alias {
                format!("spiffe://a-old.example/ns/{namespace}/sa/{account}")
            } else {
                id.clone()
            },
            dns_names: vec![],
            mesh: mesh.into(),
            trust_domain,
            namespace,
            service_account: account,
            not_before: UNIX_EPOCH + Duration::from_secs(issued_at - 120),
            not_after: UNIX_EPOCH + Duration::from_secs(issued_at + lifetime),
            key_algorithm: "rsa".into(),
            key_bits: 2048,
            public_key_sha256: vec![2; 32],
            csr_sha256: vec![3; 32],
            intermediate_sha256: vec![4; 32],
            certificate_sha256: vec![5; 32],
            requested_ttl_seconds: lifetime as i64,
            ca: None,
        })
    };
    Record::new(format!("req-{i}"), recorded_at, caller, outcome)
}

fn at(offset: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + offset)
}

/// Queries covering every filter, alone and combined.
fn queries() -> Vec<Query> {
    let q = Query::default;
    let mut out = vec![
        q(),
        Query {
            serial: Some((40u128 * 7919 + 1).to_be_bytes().to_vec()),
            ..q()
        },
        Query {
            spiffe_id: Some("spiffe://a.example/ns/n1/sa/s2".into()),
            ..q()
        },
        Query {
            spiffe_id: Some("spiffe://a-old.example/ns/n1/sa/s2".into()),
            ..q()
        },
        Query {
            spiffe_id_prefix: Some("spiffe://a.example/ns/n3/".into()),
            ..q()
        },
        Query {
            spiffe_id_prefix: Some("spiffe://b.example/".into()),
            ..q()
        },
        Query {
            spiffe_id_prefix: Some("spiffe://a.example/ns/n2/sa/s".into()),
            ..q()
        },
        Query {
            spiffe_id_prefix: Some("spiffe://a".into()),
            ..q()
        },
        Query {
            spiffe_id_prefix: Some("spiffe://a.example/ns/n2".into()),
            ..q()
        },
        Query {
            spiffe_id_prefix: Some("spiffe://a.example/ns/n1/sa/".into()),
            ..q()
        },
        Query {
            mesh: Some("b".into()),
            ..q()
        },
        Query {
            trust_domain: Some("a-old.example".into()),
            ..q()
        },
        Query {
            namespace: Some("n4".into()),
            service_account: Some("s1".into()),
            ..q()
        },
        Query {
            service_account: Some("n0/s3".into()),
            ..q()
        },
        Query {
            mesh: Some("a".into()),
            namespace: Some("n2".into()),
            ..q()
        },
        Query {
            mesh: Some("b".into()),
            service_account: Some("n1/s0".into()),
            valid_at: Some(at(300 + 3600)),
            ..q()
        },
        Query {
            mesh: Some("a".into()),
            namespace: Some("n3".into()),
            outcome: Some(OutcomeFilter::Denied { reason: None }),
            ..q()
        },
        Query {
            caller: Some("system:serviceaccount:n2:s0".into()),
            ..q()
        },
        Query {
            cluster_id: Some("east".into()),
            namespace: Some("n1".into()),
            ..q()
        },
        Query {
            pod: Some("pod-7".into()),
            ..q()
        },
        Query {
            since: Some(at(100)),
            until: Some(at(300)),
            ..q()
        },
        Query {
            since: Some(at(250)),
            mesh: Some("a".into()),
            ..q()
        },
        Query {
            outcome: Some(OutcomeFilter::Issued),
            ..q()
        },
        Query {
            outcome: Some(OutcomeFilter::Denied { reason: None }),
            ..q()
        },
        Query {
            outcome: Some(OutcomeFilter::Denied { reason: None }),
            since: Some(at(200)),
            ..q()
        },
        Query {
            outcome: Some(OutcomeFilter::Denied {
                reason: Some("token-expired".into()),
            }),
            namespace: Some("n2".into()),
            ..q()
        },
        Query {
            outcome: Some(OutcomeFilter::Issued),
            namespace: Some("n3".into()),
            ..q()
        },
        Query {
            valid_at: Some(at(400 + 3600)),
            ..q()
        },
        Query {
            valid_at: Some(at(400 + 3600)),
            namespace: Some("n0".into()),
            ..q()
        },
        Query {
            expires_after: Some(at(86400)),
            expires_before: Some(at(86400 + 500)),
            ..q()
        },
        Query {
            expires_after: Some(at(3600 + 100)),
            expires_before: Some(at(3600 + 400)),
            mesh: Some("a".into()),
            cluster_id: Some("west".into()),
            ..q()
        },
        Query {
            valid_at: Some(at(500)),
            since: Some(at(100)),
            until: Some(at(600)),
            ..q()
        },
    ];
    out.push(Query {
        namespace: Some("nowhere".into()),
        ..q()
    });
    out
}

fn expected(records: &[Record], query: &Query) -> Vec<u64> {
    let mut matching: Vec<&Record> = records.iter().filter(|r| query.matches(r)).collect();
    if matches!(index::plan(query), Plan::Expiry { .. }) {
        matching.sort_by_key(|r| match &r.outcome {
            Outcome::Issued(issued) => (
                crate::domain::clock::unix_seconds(issued.not_after),
                r.sequence,
            ),
            Outcome::Denied(_)
            | Outcome::Revoked(_)
            | Outcome::Federated(_)
            | Outcome::CaKey(_) => (0, r.sequence),
        });
    }
    matching.iter().map(|r| r.sequence).collect()
}

fn paged(store: &SledStore, query: &Query, page_size: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = store.query(query, page_size, token.as_deref()).unwrap();
        assert!(page.records.len() <= page_size);
        out.extend(page.records.iter().map(|r| r.sequence));
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => return out,
        }
    }
}

fn options(segment_records: u64) -> StoreOptions {
    StoreOptions {
        segment_records,
        ..StoreOptions::default()
    }
}

async fn fill(store: &SledStore, range: std::ops::Range<u64>, rng: &mut Rng) {
    for i in range {
        store.append_durable(synthetic(i, rng)).await.unwrap();
    }
}

fn all_records(store: &SledStore) -> Vec<Record> {
    (1..=store.last_sequence())
        .filter_map(|s| store.get(s).unwrap())
        .collect()
}

fn check_every_query(store: &SledStore) {
    let records = all_records(store);
    for query in queries() {
        let want = expected(&records, &query);
        assert_eq!(paged(store, &query, 1000), want, "{query:?}");
        assert_eq!(paged(store, &query, 7), want, "pages of 7: {query:?}");
        assert_eq!(
            store.count(&query).unwrap(),
            want.len() as u64,
            "count {query:?}"
        );
    }
}

#[tokio::test]
async fn every_query_agrees_with_the_oracle_across_runs_merges_and_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_with(dir.path(), options(16)).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // 16 × 8 = 128 records make a tier-1 run; 300 records: 2 tier-1 runs, two tier-0 runs
    // and a tail of 12.
    fill(&store, 0..300, &mut rng).await;
    store.persist_index().unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.index_runs, 4, "{stats:?}");
    assert_eq!(stats.index_tail_records, 12, "{stats:?}");
    let records = all_records(&store);
    assert_eq!(records.len(), 300);
    // Recording times never go backwards, whatever the clock did.
    assert!(records
        .windows(2)
        .all(|w| w[0].recorded_at <= w[1].recorded_at));
    check_every_query(&store);

    // Reopened: runs from disk, the tail rebuilt from the records.
    drop(store);
    let store = SledStore::open_with(dir.path(), options(16)).unwrap();
    assert_eq!(store.last_sequence(), 300);
    check_every_query(&store);
    fill(&store, 300..340, &mut rng).await;
    check_every_query(&store);
}

#[tokio::test]
async fn page_tokens_are_refused_for_another_query_and_broad_prefixes_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_with(dir.path(), options(16)).unwrap();
    fill(&store, 0..50, &mut Rng(7)).await;
    let by_mesh = Query {
        mesh: Some("a".into()),
        ..Query::default()
    };
    let page = store.query(&by_mesh, 5, None).unwrap();
    let token = page.next_page_token.unwrap();
    let other = Query {
        mesh: Some("b".into()),
        ..Query::default()
    };
    assert!(matches!(
        store.query(&other, 5, Some(&token)),
        Err(AuditError::Query(QueryError::BadPageToken))
    ));
    assert!(matches!(
        store.query(&by_mesh, 5, Some("garbage")),
        Err(AuditError::Query(QueryError::BadPageToken))
    ));
}

/// A store written by the version before blocks: layout 2, one sled key per record. `tests/fixtures/store-layout-2` was made by that version (`e123147`):
/// this file's `fill` of 300 records (seed below) with segments of 16, a checkpoint, then the
/// 36 denials of the first 300 seconds pruned.
#[tokio::test]
async fn a_store_from_before_blocks_opens_answers_the_same_and_is_packed_in_place() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-layout-2");
    let dir = tempfile::tempdir().unwrap();
    for file in ["conf", "db"] {
        std::fs::copy(fixture.join(file), dir.path().join(file)).unwrap();
    }
    let verifier =
        AuditVerifier::parse(&std::fs::read_to_string(fixture.join("verifier.key")).unwrap())
            .unwrap();
    // What that version was given, as it stored it (sequence numbers, times never backwards).
    let mut rng = Rng(0x5eed_1a70_0002);
    let mut last_ms = i64::MIN;
    let written: Vec<Record> = (0..300)
        .map(|i| {
            let mut record = synthetic(i, &mut rng);
            record.sequence = i + 1;
            last_ms = crate::domain::clock::unix_millis(record.recorded_at).max(last_ms);
            record.recorded_at = crate::domain::clock::from_unix_millis(last_ms);
            record
        })
        .collect();
    let kept: Vec<Record> = written
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Denied(_)) || r.recorded_at >= at(300))
        .cloned()
        .collect();
    assert_eq!(kept.len(), 300 - 36);

    let check = |store: &SledStore| {
        assert_eq!(all_records(store), kept);
        check_every_query(store);
        let report = store.verify(Some(&verifier), &[], at(0)).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.tree_size, 300);
    };
    // Read as it is (a reader neither upgrades nor packs).
    {
        let store = SledStore::open_with(
            dir.path(),
            StoreOptions {
                read_only: true,
                ..options(16)
            },
        )
        .unwrap();
        check(&store);
        assert_eq!(blocks::packed_through(&store.inner.records).unwrap(), 0);
    }
    // A server opens it: the layout moves on, the indexer packs every block below the index
    // watermark (288 = 18 segments of 16: 9 blocks of 32), and the answers stay the same.
    {
        let store = SledStore::open_with(dir.path(), options(16)).unwrap();
        store.persist_index().unwrap();
        assert_eq!(blocks::packed_through(&store.inner.records).unwrap(), 288);
        assert_eq!(
            store.inner.records.len(),
            9 + 12,
            "9 blocks and the 12 records above the watermark"
        );
        check(&store);
        // New records go on after the old ones.
        fill(&store, 300..340, &mut Rng(7)).await;
        assert_eq!(store.last_sequence(), 340);
    }
    let store = SledStore::open_with(dir.path(), options(16)).unwrap();
    let layout = store
        .inner
        .meta
        .get(super::keys::META_LAYOUT)
        .unwrap()
        .unwrap();
    assert_eq!(layout.as_ref(), state::LAYOUT.to_be_bytes());
    assert_eq!(store.last_sequence(), 340);
    check_every_query(&store);
}

/// The search by time reads the packed blocks' first times, then one block or the unpacked
/// tail: it finds what a scan of every record kept finds, for every time in the log, with
/// whole blocks and parts of blocks removed.
#[tokio::test]
async fn the_first_record_at_a_time_is_found_through_blocks_as_by_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_with(dir.path(), options(16)).unwrap();
    fill(&store, 0..300, &mut Rng(7)).await;
    store.persist_index().unwrap();
    let inner = &store.inner;
    let last = store.last_sequence();
    assert_eq!(inner.packed.load(Ordering::SeqCst), 288, "9 blocks packed");
    let check = |what: &str| {
        let kept: Vec<(u64, i64)> = blocks::range(&inner.records, 1, last)
            .map(|entry| {
                let (sequence, stored) = entry.unwrap();
                let header = crate::domain::audit::LeafData::parse_header(&stored).unwrap();
                (sequence, header.recorded_at_ms)
            })
            .collect();
        let (first_ms, last_ms) = (kept[0].1, kept[kept.len() - 1].1);
        for millis in (first_ms - 3_000..=last_ms + 3_000).step_by(500) {
            let want = kept
                .iter()
                .find(|(_, at)| *at >= millis)
                .map_or(last + 1, |(sequence, _)| *sequence);
            // A bound for a range: the first record kept from it on is the one wanted (it
            // may be a removed record's number, below that one).
            let got = inner.first_sequence_at_or_after(millis, last).unwrap();
            let next_kept = kept
                .iter()
                .find(|(sequence, _)| *sequence >= got)
                .map_or(last + 1, |(sequence, _)| *sequence);
            assert_eq!(next_kept, want, "{what}: at {millis}, from {got}");
        }
    };
    check("packed");
    // Block 33..=64 gone whole, the first of block 65.. and a few in the middle of another.
    let gone: Vec<u64> = (33..=65).chain([100, 101, 128]).collect();
    blocks::remove(&inner.records, &inner.blocks, &gone).unwrap();
    check("blocks and parts of blocks removed");
    blocks::remove(&inner.records, &inner.blocks, &[1, 2, 289, 290]).unwrap();
    check("the first records and the first of the tail removed");
}

/// A page read through the decompressed-block cache never serves a block as it was before a
/// rewrite: records pruned from a cached block are gone from the next page.
#[tokio::test]
async fn a_cached_block_is_forgotten_when_it_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_with(dir.path(), options(16)).unwrap();
    fill(&store, 0..100, &mut Rng(3)).await;
    store.persist_index().unwrap();
    let inner = &store.inner;
    let packed = inner.packed.load(Ordering::SeqCst);
    assert_eq!(packed, 96);
    let wanted = [3, 4, 40, 41];
    let read = || {
        blocks::get_sorted(&inner.records, &inner.blocks, packed, &wanted)
            .unwrap()
            .iter()
            .map(Option::is_some)
            .collect::<Vec<_>>()
    };
    assert_eq!(read(), [true; 4]);
    assert_eq!(read(), [true; 4], "again, from the cache");
    blocks::remove(&inner.records, &inner.blocks, &[4, 40]).unwrap();
    assert_eq!(read(), [true, false, false, true]);
}
