//! The audit API (`meshroot.audit.v1.AuditService`) of a real server, over its admin address:
//! the questions an auditor asks, page tokens, a live tail that resumes without gaps, signed
//! checkpoints and inclusion proofs checked independently, and mutual TLS on a non-loopback
//! admin address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, SystemTime};

use common::{agent_csr, spiffe_id, TestCa, TestServer, MESH};
use meshroot::domain::audit::checkpoint::AuditVerifier;
use meshroot::domain::audit::merkle;
use meshroot::domain::clock::unix_millis;
use meshroot::domain::keys::KeyType;
use meshroot::pb::audit as api;
use meshroot::pb::audit::audit_service_client::AuditServiceClient;
use tonic::transport::Channel;
use tonic::Code;

async fn audit_client(server: &TestServer) -> AuditServiceClient<Channel> {
    server.audit_client().await
}

async fn list(
    client: &mut AuditServiceClient<Channel>,
    filter: api::Filter,
) -> Vec<meshroot::pb::audit::Record> {
    client
        .list_records(api::ListRecordsRequest {
            filter: Some(filter),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|entry| match entry.entry {
            Some(api::log_entry::Entry::Record(record)) => record,
            other => panic!("not a record: {other:?}"),
        })
        .collect()
}

fn issued(record: &meshroot::pb::audit::Record) -> &meshroot::pb::audit::Issuance {
    match &record.outcome {
        Some(meshroot::pb::audit::record::Outcome::Issued(issued)) => issued,
        other => panic!("not an issuance: {other:?}"),
    }
}

/// Issues `count` certificates for `ns`/`sa`; returns the leaf DER of each.
async fn issue(ca: &TestCa, server: &TestServer, ns: &str, sa: &str, count: usize) -> Vec<Vec<u8>> {
    let mut leaves = Vec::new();
    for _ in 0..count {
        let response = server
            .call(
                agent_csr(&spiffe_id(ns, sa)),
                Some(ca.token(MESH, ns, sa)),
                0,
            )
            .await
            .unwrap();
        leaves.push(common::certificates(&response.cert_chain[0])[0].to_vec());
    }
    leaves
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn the_audit_api_answers_who_got_what_when_and_from_whom() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let carts = issue(&ca, &server, "shop", "cart", 3).await;
    issue(&ca, &server, "bank", "teller", 2).await;
    // Denied: the cart's token asking for the vault, and no token at all.
    let denied = server
        .call(
            agent_csr(&spiffe_id("bank", "vault")),
            Some(ca.token(MESH, "shop", "cart")),
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    server
        .call(agent_csr(&spiffe_id("bank", "vault")), None, 0)
        .await
        .unwrap_err();
    let mut client = audit_client(&server).await;

    // Every certificate a SPIFFE ID received, with their serials.
    let by_id = list(
        &mut client,
        api::Filter {
            spiffe_id: spiffe_id("shop", "cart"),
            outcome: api::Outcome::Issued as i32,
            ..Default::default()
        },
    )
    .await;
    let serials: Vec<Vec<u8>> = by_id.iter().map(|r| issued(r).serial.clone()).collect();
    assert_eq!(
        serials,
        carts
            .iter()
            .map(|der| meshroot::domain::signer::check::serial_of(der).unwrap())
            .collect::<Vec<_>>()
    );
    for (record, der) in by_id.iter().zip(&carts) {
        assert_eq!(issued(record).certificate_sha256, sha256(der));
    }
    // Every identity a caller obtained, and what it was refused.
    let by_caller = list(
        &mut client,
        api::Filter {
            caller: "system:serviceaccount:shop:cart".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_caller.len(), 4, "three issued, one denied");
    // Everything valid right now in a namespace.
    let now = unix_millis(SystemTime::now());
    let valid = list(
        &mut client,
        api::Filter {
            namespace: "bank".into(),
            valid_at_ms: Some(now),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(valid.len(), 2);
    // Every denial of the last hour, with its reason.
    let denials = list(
        &mut client,
        api::Filter {
            outcome: api::Outcome::Denied as i32,
            since_ms: Some(now - 3_600_000),
            ..Default::default()
        },
    )
    .await;
    let reasons: Vec<String> = denials
        .iter()
        .map(|r| match &r.outcome {
            Some(meshroot::pb::audit::record::Outcome::Denied(d)) => d.reason.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(reasons, ["identity-mismatch", "missing-credentials"]);

    // Pages, counts, and a token that belongs to another query.
    let first = client
        .list_records(api::ListRecordsRequest {
            filter: Some(api::Filter {
                namespace: "shop".into(),
                ..Default::default()
            }),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.entries.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_records(api::ListRecordsRequest {
            filter: Some(api::Filter {
                namespace: "shop".into(),
                ..Default::default()
            }),
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.entries.len(), 1);
    assert!(second.next_page_token.is_empty());
    let count = client
        .list_records(api::ListRecordsRequest {
            filter: Some(api::Filter {
                namespace: "shop".into(),
                ..Default::default()
            }),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, 3);
    let misused = client
        .list_records(api::ListRecordsRequest {
            filter: Some(api::Filter {
                namespace: "bank".into(),
                ..Default::default()
            }),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(misused.code(), Code::InvalidArgument);

    // One record by serial; an unknown serial is NotFound.
    let one = client
        .get_record(api::GetRecordRequest {
            key: Some(api::get_record_request::Key::Serial(
                meshroot::domain::signer::check::serial_of(&carts[1]).unwrap(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.sequence, by_id[1].sequence);
    let unknown = client
        .get_record(api::GetRecordRequest {
            key: Some(api::get_record_request::Key::Serial(vec![1, 2, 3])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn checkpoints_and_inclusion_proofs_verify_with_the_published_key() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let carts = issue(&ca, &server, "shop", "cart", 5).await;
    let published = server.server.checkpoint().await.unwrap().unwrap();
    // The checkpoint file holds the same note.
    assert_eq!(
        std::fs::read_to_string(ca.path().join("checkpoint.txt")).unwrap(),
        published
    );
    let verifier =
        AuditVerifier::parse(&std::fs::read_to_string(ca.path().join("audit-key.pub")).unwrap())
            .unwrap();
    let checkpoint = verifier.open_checkpoint(&published).unwrap();
    assert_eq!(
        checkpoint.size, 7,
        "the intermediate taken into service, the serving certificate and five workloads"
    );

    let mut client = audit_client(&server).await;
    let answer = client
        .get_checkpoint(api::GetCheckpointRequest {
            from_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.note, published);
    assert_eq!(
        answer.verifier_key,
        std::fs::read_to_string(ca.path().join("audit-key.pub"))
            .unwrap()
            .trim()
    );
    let old_root: merkle::Hash = server.server.store().root_at(2).unwrap();
    let proof: Vec<merkle::Hash> = answer
        .consistency_proof
        .iter()
        .map(|h| h.as_slice().try_into().unwrap())
        .collect();
    merkle::verify_consistency(2, 6, &proof, &old_root, &checkpoint.root).unwrap();

    for der in &carts {
        let proof = client
            .prove_inclusion(api::ProveInclusionRequest {
                key: Some(api::prove_inclusion_request::Key::Serial(
                    meshroot::domain::signer::check::serial_of(der).unwrap(),
                )),
                tree_size: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // Independently: the record hashes into the leaf, the leaf into the signed root.
        let leaf = meshroot::domain::audit::LeafData::parse(&proof.leaf_data).unwrap();
        assert_eq!(sha256(&proof.record), leaf.record_sha256.to_vec());
        let record = meshroot::adapters::store::decode(&proof.record).unwrap();
        assert_eq!(
            record.serial(),
            Some(
                meshroot::domain::signer::check::serial_of(der)
                    .unwrap()
                    .as_slice()
            )
        );
        let path: Vec<merkle::Hash> = proof
            .audit_path
            .iter()
            .map(|h| h.as_slice().try_into().unwrap())
            .collect();
        let leaf_hash = merkle::leaf_hash(&proof.leaf_data);
        merkle::verify_inclusion(&leaf_hash, proof.leaf_index, 7, &path, &checkpoint.root).unwrap();
        assert_eq!(proof.checkpoint_note, published);
    }
    // Issued after the checkpoint: not provable until the next one.
    let late = issue(&ca, &server, "shop", "cart", 1).await;
    let status = client
        .prove_inclusion(api::ProveInclusionRequest {
            key: Some(api::prove_inclusion_request::Key::Serial(
                meshroot::domain::signer::check::serial_of(&late[0]).unwrap(),
            )),
            tree_size: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
    // The shutdown checkpoint covers it.
    let last = std::fs::read_to_string(ca.path().join("checkpoint.txt")).unwrap();
    assert_eq!(verifier.open_checkpoint(&last).unwrap().size, 8);
}

#[tokio::test]
async fn the_live_tail_resumes_from_a_sequence_number_without_gaps() {
    let ca = TestCa::new();
    let server = ca.start().await;
    issue(&ca, &server, "shop", "cart", 2).await;
    let mut client = audit_client(&server).await;
    let mut tail = client
        .watch_records(api::WatchRecordsRequest {
            from_sequence: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(tail.message().await.unwrap().unwrap().sequence);
    }
    assert_eq!(seen, [1, 2, 3]);
    // Live: a new issuance arrives on the open stream.
    issue(&ca, &server, "shop", "cart", 1).await;
    let next = tokio::time::timeout(Duration::from_secs(10), tail.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.sequence, 4);
    drop(tail);
    // Disconnected while two more were written: resuming from 5 gets exactly those, then
    // the live one after them.
    issue(&ca, &server, "shop", "cart", 2).await;
    let mut resumed = client
        .watch_records(api::WatchRecordsRequest {
            from_sequence: 5,
            filter: Some(api::Filter {
                namespace: "shop".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut again = Vec::new();
    for _ in 0..2 {
        again.push(resumed.message().await.unwrap().unwrap().sequence);
    }
    assert_eq!(again, [5, 6]);
    issue(&ca, &server, "shop", "cart", 1).await;
    let live = tokio::time::timeout(Duration::from_secs(10), resumed.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(live.sequence, 7);
    // Shutting down ends open tails instead of holding the server up.
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_non_loopback_admin_address_serves_only_allowed_client_identities() {
    let ca = TestCa::new();
    ca.admin_on_tls(&["spiffe://cluster.local/ns/ops/sa/auditor"]);
    let server = ca.start().await;
    let port = server.server.admin_address().port();
    let connect = |identity: Option<(String, String)>| {
        let root_pem = ca.root_pem();
        async move {
            meshroot::edge::client::connect(&meshroot::edge::client::Target {
                address: format!("127.0.0.1:{port}"),
                root_pem,
                server_name: "localhost".into(),
                client_identity: identity,
            })
            .await
        }
    };
    let auditor = server
        .workload(&ca, MESH, "spiffe://cluster.local/ns/ops/sa/auditor")
        .await;
    let mut allowed = AuditServiceClient::new(connect(Some(auditor)).await.unwrap());
    allowed
        .get_stats(api::GetStatsRequest::default())
        .await
        .expect("an allowed identity is served");

    // An allowed identity reads only (issue 30, N8): it may not revoke through the selection,
    // nor hand over a revocation to record as it is (members only).
    let status = allowed
        .revoke(api::RevokeRequest {
            apply: Some(meshroot::pb::audit::Revocation {
                blocked: vec!["spiffe://cluster.local/ns/shop/sa/cart".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = allowed
        .revoke(api::RevokeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let intruder = server
        .workload(&ca, MESH, "spiffe://cluster.local/ns/ops/sa/intruder")
        .await;
    let mut refused = AuditServiceClient::new(connect(Some(intruder)).await.unwrap());
    let status = refused
        .get_stats(api::GetStatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Without a client certificate: the audit API refuses, the health service answers (so
    // probes and Prometheus need no certificate; they learn nothing about identities).
    let anonymous = connect(None).await.unwrap();
    let status = AuditServiceClient::new(anonymous.clone())
        .get_stats(api::GetStatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let health = tonic_health::pb::health_client::HealthClient::new(anonymous)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    server.stop().await;
}

/// Issue 14, D2 and D11: on the admin port, a partner root in `extra_roots` must not mint the
/// allowed auditor identity, and a certificate naming the auditor among other URIs is refused; a
/// partner root bound (`vouches_for`) to the partner's trust domain admits the partner's auditor.
#[tokio::test]
async fn admin_identities_must_chain_to_an_issuer_authorized_for_their_trust_domain() {
    let ca = TestCa::new();
    let partner = TestCa::with_meshes(&[(MESH, "partner.example")], KeyType::EcdsaP256);
    ca.add_root_of(&partner, "partner-root.pem");
    let auditor = "spiffe://cluster.local/ns/ops/sa/auditor";
    let partner_auditor = "spiffe://partner.example/ns/ops/sa/auditor";
    ca.admin_on_tls(&[auditor, partner_auditor]);
    ca.edit_config(|text| {
        text.replacen(
            "ca_dir = \"default\"\n",
            "ca_dir = \"default\"\nextra_roots = [{ path = \"partner-root.pem\", vouches_for = [\"partner.example\"] }]\n",
            1,
        )
    });
    let server = ca.start().await;
    let port = server.server.admin_address().port();
    let stats = |identity: (String, String)| {
        let root_pem = ca.root_pem();
        async move {
            let channel = meshroot::edge::client::connect(&meshroot::edge::client::Target {
                address: format!("127.0.0.1:{port}"),
                root_pem,
                server_name: "localhost".into(),
                client_identity: Some(identity),
            })
            .await
            .unwrap();
            AuditServiceClient::new(channel)
                .get_stats(api::GetStatsRequest::default())
                .await
        }
    };
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);

    let forged = partner.mint(MESH, auditor, now, now + hour);
    let status = stats(forged).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let two_names = ca.mint_with_uris(MESH, &[auditor.to_owned(), spiffe_id("ops", "x")]);
    let status = stats(two_names).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let ours = ca.mint(MESH, auditor, now, now + hour);
    stats(ours).await.expect("our own auditor is served");
    let theirs = partner.mint(MESH, partner_auditor, now, now + hour);
    stats(theirs)
        .await
        .expect("the partner's auditor, vouched for by its bound root, is served");
    server.stop().await;
}

async fn audit_cli(args: Vec<String>) -> String {
    let mut all = vec!["audit".to_owned()];
    all.extend(args);
    common::process::meshroot_output(all).await
}

#[tokio::test]
async fn audit_list_fans_out_to_every_replica_and_merges_in_time_order() {
    // Two replicas, each with its own log (as each StatefulSet pod has its own volume).
    // One clock for both, moved between issuances: each record has its own instant.
    let clock = meshroot::domain::clock::ManualClock::at(std::time::SystemTime::now());
    let (first_ca, second_ca) = (TestCa::new(), TestCa::new());
    let first = first_ca
        .start_with_clock(std::sync::Arc::new(clock.clone()))
        .await;
    let second = second_ca
        .start_with_clock(std::sync::Arc::new(clock.clone()))
        .await;
    let mut expected = Vec::new();
    for (index, sa) in ["a", "b", "c", "d"].iter().enumerate() {
        let (server, ca) = if index % 2 == 0 {
            (&first, &first_ca)
        } else {
            (&second, &second_ca)
        };
        server.issue(ca, sa).await;
        expected.push(spiffe_id("default", sa));
        // Recorded times are milliseconds: keep the order unambiguous.
        clock.advance(Duration::from_millis(5));
    }
    let addresses = format!(
        "{},{}",
        first.server.admin_address(),
        second.server.admin_address()
    );
    let listed = audit_cli(vec![
        "list".into(),
        "--addr".into(),
        addresses.clone(),
        "--spiffe-id-prefix".into(),
        "spiffe://cluster.local/ns/default/".into(),
        "--all".into(),
        "--format".into(),
        "json".into(),
    ])
    .await;
    let records: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let identities: Vec<&str> = records
        .iter()
        .map(|r| r["outcome"]["spiffe_id"].as_str().unwrap())
        .collect();
    assert_eq!(identities, expected, "{listed}");
    let replicas: Vec<&str> = records
        .iter()
        .map(|r| r["replica"].as_str().unwrap())
        .collect();
    let (a, b) = (
        first.server.admin_address().to_string(),
        second.server.admin_address().to_string(),
    );
    assert_eq!(replicas, [&a, &b, &a, &b]);
    // Both replicas' sequence numbers start at their own beginning.
    assert_eq!(records[0]["sequence"], records[1]["sequence"]);

    let counted = audit_cli(vec![
        "list".into(),
        "--addr".into(),
        addresses,
        "--spiffe-id-prefix".into(),
        "spiffe://cluster.local/ns/default/".into(),
        "--count".into(),
    ])
    .await;
    assert_eq!(counted.trim(), "4");
    first.stop().await;
    second.stop().await;
}
