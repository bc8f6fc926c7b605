//! No record lost: SIGKILL the server in the middle of sustained issuance, restart it, and
//! check that every certificate any client received has its record, that the log verifies
//! against its checkpoints, and that the store keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::Edited as _;

use std::time::{Duration, SystemTime};

use common::load::Load;
use common::process::{Serving, BINARY};
use common::{agent_csr, ztunnel_csr, TestCa, MESH};
use meshroot::adapters::store::SledStore;
use meshroot::domain::audit::checkpoint::AuditVerifier;
use meshroot::domain::audit::Query;
use meshroot::domain::record::Outcome;
use meshroot::edge::client::{self, AgentMetadata, Target};

const CLIENTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_sustained_issuance_loses_no_record() {
    let ca = TestCa::new();
    // Small index segments and frequent checkpoints, so the kill lands among segment writes,
    // merges and checkpoints, not only appends.
    ca.edit_config(|text| {
        text.edited(
            "checkpoint_interval = \"1m\"",
            "checkpoint_interval = \"100ms\"",
        )
        .edited("[audit]\n", "[audit]\nindex_segment_records = 64\n")
    });
    let config = ca.config_path().to_string_lossy().into_owned();
    let mut server = Serving::start(ca.path(), &["--config", &config]);

    // Pre-built requests: CSRs (istio-agent's and ztunnel's shapes) and tokens per identity.
    let requests: Vec<(String, String)> = (0..CLIENTS)
        .map(|i| {
            let (namespace, account) = (format!("ns{}", i % 4), format!("sa{i}"));
            let id = common::spiffe_id(&namespace, &account);
            let csr = if i % 2 == 0 {
                agent_csr(&id)
            } else {
                ztunnel_csr(&id)
            };
            (csr, ca.token(MESH, &namespace, &account))
        })
        .collect();
    // Kill mid-stream: after enough issuances to have written several segments.
    let load = load_until(&ca, &server, requests, 400).await;
    server.kill();
    let received = load.stop().await;
    assert!(received.len() >= 400);

    // Restart (recovery: rebuilds the in-memory index), then stop cleanly.
    let mut restarted = Serving::start(ca.path(), &["--config", &config]);
    restarted.stop();

    let store_path = ca.config().store;
    {
        let store = SledStore::open_read_only(&store_path).unwrap();
        let mut found = 0;
        for (serial, certificate_hash) in &received {
            let records = store
                .query_all(&Query {
                    serial: Some(serial.clone()),
                    ..Query::default()
                })
                .unwrap();
            assert_eq!(
                records.len(),
                1,
                "serial {}",
                meshroot::domain::digest::hex(serial)
            );
            match &records[0].outcome {
                Outcome::Issued(issued) => {
                    assert_eq!(&issued.certificate_sha256, certificate_hash);
                    found += 1;
                }
                other => panic!("a received certificate recorded as {other:?}"),
            }
        }
        assert_eq!(found, received.len());
        let verifier = AuditVerifier::parse(
            &std::fs::read_to_string(ca.path().join("audit-key.pub")).unwrap(),
        )
        .unwrap();
        let report = store
            .verify(Some(&verifier), &[], SystemTime::now())
            .unwrap();
        assert!(report.ok(), "{report:?}");
        assert!(
            report.checkpoints.len() >= 2,
            "checkpoints before the kill and at the clean stop: {report:?}"
        );
        assert_eq!(
            report.uncovered, 0,
            "the clean stop checkpointed everything"
        );
    }

    // The store keeps working: the CLI verifies it, and a restarted server issues again.
    let verify = std::process::Command::new(BINARY)
        .args(["audit", "verify", "--config", &config])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let mut again = Serving::start(ca.path(), &["--config", &config]);
    let channel = client::connect(&target_of(&ca, &again)).await.unwrap();
    client::create_certificate(
        channel,
        agent_csr(&common::spiffe_id("ns0", "after")),
        3600,
        &AgentMetadata {
            token: Some(ca.token(MESH, "ns0", "after")),
            cluster_id: "Kubernetes".into(),
        },
    )
    .await
    .unwrap();
    again.stop();
}

/// How a client reaches `server`.
fn target_of(ca: &TestCa, server: &Serving) -> Target {
    Target {
        address: server.address.clone(),
        root_pem: ca.root_pem(),
        server_name: "localhost".into(),
        client_identity: None,
    }
}

/// Starts clients sending `requests` to `server` over and over, and returns once they got
/// `count` certificates.
async fn load_until(
    ca: &TestCa,
    server: &Serving,
    requests: Vec<(String, String)>,
    count: usize,
) -> Load {
    let load = Load::start(&target_of(ca, server), requests);
    common::wait_until(
        "the clients get their certificates",
        Duration::from_secs(60),
        || {
            let issued = load.issued();
            async move {
                (issued >= count)
                    .then_some(())
                    .ok_or_else(|| format!("{issued} of {count}"))
            }
        },
    )
    .await;
    load
}

/// The newest of sled's page-table snapshots in a store directory (`snap.<LSN in hex>`).
fn newest_snapshot(store: &std::path::Path) -> Option<String> {
    std::fs::read_dir(store)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("snap.") && !name.ends_with(".in___motion"))
        .max()
}

/// sled 0.34 writes its page-table snapshot only while opening a store, so a start replays
/// every record written since the previous start (seconds for millions). A clean stop does
/// that replay itself: it leaves a snapshot that covers everything written, and says so.
#[tokio::test]
async fn a_clean_stop_leaves_the_store_ready_for_a_quick_start() {
    let ca = TestCa::new();
    let config = ca.config_path().to_string_lossy().into_owned();
    let mut server = Serving::start(ca.path(), &["--config", &config]);
    let store = ca.config().store;
    // None for a new store: nothing to snapshot yet.
    let at_start = newest_snapshot(&store);

    let requests: Vec<(String, String)> = (0..4)
        .map(|i| {
            let account = format!("sa{i}");
            let csr = agent_csr(&common::spiffe_id("ns0", &account));
            (csr, ca.token(MESH, "ns0", &account))
        })
        .collect();
    load_until(&ca, &server, requests, 50).await.stop().await;
    assert_eq!(
        newest_snapshot(&store),
        at_start,
        "running writes no snapshot"
    );

    server.stop();
    assert!(
        server
            .log()
            .contains("record store ready for a quick next start"),
        "{}",
        server.log()
    );
    let after_stop = newest_snapshot(&store);
    assert!(
        after_stop.is_some() && after_stop > at_start,
        "the stop wrote a newer snapshot: {at_start:?} → {after_stop:?}"
    );
    // The next start finds nothing to replay: its snapshot is the one the stop left.
    let mut restarted = Serving::start(ca.path(), &["--config", &config]);
    restarted.wait_for_log("serving");
    assert_eq!(newest_snapshot(&store), after_stop);
    restarted.stop();
}
