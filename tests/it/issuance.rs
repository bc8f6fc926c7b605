//! End to end over real TLS: istio-agent- and ztunnel-shaped requests get valid certificates,
//! checked by rustls-webpki and OpenSSL, with a durable record for each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::Edited as _;

use std::time::{Duration, SystemTime};

use common::*;
use meshroot::domain::record::Outcome;
use x509_parser::prelude::*;

const DAY: u64 = 86400;

fn parse_leaf(pem: &str) -> Vec<u8> {
    certificates(pem).remove(0).as_ref().to_vec()
}

fn seconds_between(a: SystemTime, b: SystemTime) -> i64 {
    meshroot::domain::clock::unix_seconds(a) - meshroot::domain::clock::unix_seconds(b)
}

#[tokio::test]
async fn issues_istio_agent_rsa_csr_with_the_istio_leaf_profile_and_chain() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let id = spiffe_id("shop", "cart");
    let before = SystemTime::now();
    let response = server
        .call(agent_csr(&id), Some(ca.token(MESH, "shop", "cart")), 86400)
        .await
        .unwrap();
    let chain = &response.cert_chain;
    assert_eq!(chain.len(), 3, "[leaf, intermediate, root bundle]");
    verify_chain(chain, &ca.root_pem());

    let der = parse_leaf(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(leaf.version(), X509Version::V3);
    assert!(
        leaf.subject().iter_attributes().next().is_none(),
        "empty subject"
    );
    let serial = leaf.raw_serial();
    assert!(
        serial.len() <= 16 && serial[0] & 0x80 == 0,
        "positive, at most 16 bytes"
    );

    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "URI SAN is critical");
    assert_eq!(san.value.general_names, vec![GeneralName::URI(&id)]);
    let key_usage = leaf.key_usage().unwrap().unwrap();
    assert!(key_usage.critical);
    assert!(key_usage.value.digital_signature() && key_usage.value.key_encipherment());
    assert!(!key_usage.value.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    let constraints = leaf.basic_constraints().unwrap().unwrap();
    assert!(constraints.critical && !constraints.value.ca);
    assert!(leaf.extensions().iter().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::AuthorityKeyIdentifier(_)
    )));

    // NotBefore backdated 2 minutes, NotAfter as requested.
    let not_before =
        SystemTime::UNIX_EPOCH + Duration::from_secs(leaf.validity().not_before.timestamp() as u64);
    let not_after =
        SystemTime::UNIX_EPOCH + Duration::from_secs(leaf.validity().not_after.timestamp() as u64);
    let backdate = seconds_between(before, not_before);
    assert!((118..=125).contains(&backdate), "backdated {backdate}s");
    let lifetime = seconds_between(not_after, before);
    assert!(
        (DAY as i64 - 2..=DAY as i64 + 5).contains(&lifetime),
        "{lifetime}s"
    );

    // The record is there, durable, and says who asked.
    let records = server.records_for_serial(serial);
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.caller.subject, "system:serviceaccount:shop:cart");
    assert_eq!(record.caller.authenticator, "jwt");
    assert_eq!(record.caller.cluster_id, "Kubernetes");
    assert!(record.caller.peer_address.starts_with("127.0.0.1:"));
    let Outcome::Issued(issued) = &record.outcome else {
        panic!("expected an issuance record")
    };
    assert_eq!(issued.spiffe_id, id);
    assert_eq!(issued.namespace, "shop");
    assert_eq!(issued.service_account, "cart");
    assert_eq!(issued.trust_domain, TRUST_DOMAIN);
    assert_eq!(issued.key_algorithm, "rsa");
    assert_eq!(issued.key_bits, 2048);
    assert_eq!(issued.requested_ttl_seconds, 86400);
    assert_eq!(
        issued.certificate_sha256,
        ring::digest::digest(&ring::digest::SHA256, &der).as_ref()
    );
    server.stop().await;
}

#[tokio::test]
async fn issues_ztunnel_p256_csr_with_empty_subject_and_non_critical_san() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let id = spiffe_id("istio-system", "ztunnel");
    let response = server
        .call(
            ztunnel_csr(&id),
            Some(ca.token(MESH, "istio-system", "ztunnel")),
            0,
        )
        .await
        .unwrap();
    verify_chain(&response.cert_chain, &ca.root_pem());
    let der = parse_leaf(&response.cert_chain[0]);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names, vec![GeneralName::URI(&id)]);
    let Outcome::Issued(issued) = &server.records_for_serial(leaf.raw_serial())[0].outcome else {
        panic!("expected an issuance record")
    };
    assert_eq!(issued.key_algorithm, "ecdsa-p256");
    server.stop().await;
}

#[tokio::test]
async fn clamps_ttl_to_the_mesh_maximum_and_defaults_non_positive_ttl() {
    let ca = TestCa::new();
    ca.edit_config(|text| text.edited("max_ttl = \"7d\"", "max_ttl = \"2d\""));
    let server = ca.start().await;
    let id = spiffe_id("shop", "cart");
    let token = || Some(ca.token(MESH, "shop", "cart"));
    let lifetime = |pem: &str| {
        let der = parse_leaf(pem);
        let (_, leaf) = X509Certificate::from_der(&der).unwrap();
        leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp()
    };
    let backdate = 120;
    let clamped = server
        .call(agent_csr(&id), token(), 90 * DAY as i64)
        .await
        .unwrap();
    assert_eq!(lifetime(&clamped.cert_chain[0]), 2 * DAY as i64 + backdate);
    let default = server.call(agent_csr(&id), token(), -1).await.unwrap();
    assert_eq!(lifetime(&default.cert_chain[0]), DAY as i64 + backdate);
    let short = server.call(agent_csr(&id), token(), 3600).await.unwrap();
    assert_eq!(lifetime(&short.cert_chain[0]), 3600 + backdate);
    server.stop().await;
}

#[tokio::test]
async fn serving_certificate_verifies_for_every_configured_dns_name() {
    let ca = TestCa::new();
    let server = ca.start().await;
    for name in ["localhost", "meshroot.istio-system.svc"] {
        let channel = meshroot::edge::client::connect(&server.target(name)).await;
        assert!(channel.is_ok(), "{name}: {:?}", channel.err());
        let response = meshroot::edge::client::create_certificate(
            channel.unwrap(),
            ztunnel_csr(&spiffe_id("a", "b")),
            0,
            &meshroot::edge::client::AgentMetadata {
                token: Some(ca.token(MESH, "a", "b")),
                cluster_id: String::new(),
            },
        )
        .await;
        assert!(response.is_ok(), "{name}: {:?}", response.err());
    }
    // A name the certificate does not carry fails the TLS handshake, as in istio-agent.
    let wrong = meshroot::edge::client::connect(&server.target("istiod.istio-system.svc")).await;
    assert!(wrong.is_err(), "a wrong server name must not verify");
    server.stop().await;
}

#[tokio::test]
async fn records_survive_a_restart_and_every_returned_certificate_has_one() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let namespace = format!("ns{i}");
        let csr = ztunnel_csr(&spiffe_id(&namespace, "app"));
        let token = ca.token(MESH, &namespace, "app");
        let target = server.target("localhost");
        tasks.push(tokio::spawn(async move {
            let channel = meshroot::edge::client::connect(&target).await.unwrap();
            let metadata = meshroot::edge::client::AgentMetadata {
                token: Some(token),
                cluster_id: "Kubernetes".into(),
            };
            meshroot::edge::client::create_certificate(channel, csr, 0, &metadata).await
        }));
    }
    let mut serials = Vec::new();
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        let der = parse_leaf(&response.cert_chain[0]);
        let (_, leaf) = X509Certificate::from_der(&der).unwrap();
        serials.push(leaf.raw_serial().to_vec());
    }
    let before_restart = server.records().len();
    server.stop().await;

    let server = ca.start().await;
    for serial in &serials {
        let records = server.records_for_serial(serial);
        assert_eq!(
            records.len(),
            1,
            "serial {}",
            meshroot::domain::digest::hex(serial)
        );
        assert!(matches!(records[0].outcome, Outcome::Issued(_)));
    }
    // The restarted server recorded its new serving certificate after the old records.
    let records = server.records();
    assert_eq!(records.len(), before_restart + 1);
    let sequences: Vec<u64> = records.iter().map(|r| r.sequence).collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    server.stop().await;
}

/// The serial of the certificate meshroot presents in a fresh TLS handshake.
async fn presented_serial(server: &TestServer) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for root in certificates(&server.root_pem) {
        roots.add(root).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.server.local_address())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = X509Certificate::from_der(&leaf).unwrap();
    parsed.raw_serial().to_vec()
}

/// The serving certificates recorded so far: (serial, recorded at, NotAfter), oldest first.
fn serving_records(server: &TestServer) -> Vec<(Vec<u8>, SystemTime, SystemTime)> {
    server
        .records()
        .into_iter()
        .filter_map(|record| match record.outcome {
            Outcome::Issued(issued) if !issued.dns_names.is_empty() => {
                Some((issued.serial, record.recorded_at, issued.not_after))
            }
            _ => None,
        })
        .collect()
}

/// Lets the server's tasks (on this test's single-threaded runtime) run until `done` holds
/// (a bound of 30 s for a loaded machine; it takes milliseconds).
async fn until<T>(mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(value) = done() {
            return value;
        }
        tokio::task::yield_now().await;
    }
    panic!("the server never got there");
}

#[tokio::test]
async fn renews_its_serving_certificate_halfway_to_expiry_and_records_it() {
    // The clock starts 40 minutes in the past, so every certificate issued while the test moves
    // it forward is valid for the real-time TLS client that checks what is presented.
    let hour = Duration::from_secs(3600);
    let minute = Duration::from_secs(60);
    let whole_seconds = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(whole_seconds) - 40 * minute;
    let clock = meshroot::domain::clock::ManualClock::at(start);
    let ca = TestCa::new();
    ca.edit_config(|text| {
        text.edited(
            "store = \"store\"",
            "store = \"store\"\nserving_certificate_ttl = \"1h\"",
        )
    });
    let server = ca
        .start_with_clock(std::sync::Arc::new(clock.clone()))
        .await;
    let first = serving_records(&server);
    assert_eq!(first.len(), 1, "one serving certificate at start");
    assert_eq!(first[0].1, start);
    assert_eq!(presented_serial(&server).await, first[0].0);

    // Just before halfway: the renewal loop wakes, looks at the clock, and waits on.
    clock.advance(29 * minute);
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    assert_eq!(serving_records(&server).len(), 1, "renewed before halfway");

    // Past halfway: renewed, recorded at the clock's time, and presented.
    clock.advance(2 * minute);
    let renewed = until(|| serving_records(&server).get(1).cloned()).await;
    assert_ne!(renewed.0, first[0].0);
    assert_eq!(
        renewed.1,
        start + 31 * minute,
        "renewed by the clock, at once"
    );
    assert_eq!(renewed.2, start + 31 * minute + hour);
    // The record is durable before the new certificate is swapped in: let the renewal finish.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut presented = presented_serial(&server).await;
    while presented != renewed.0 && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
        presented = presented_serial(&server).await;
    }
    assert_eq!(presented, renewed.0, "the renewed certificate is presented");

    // The next renewal is due halfway through the new certificate, not before.
    clock.advance(29 * minute);
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    assert_eq!(serving_records(&server).len(), 2, "renewed in a loop");
    clock.advance(2 * minute);
    let again = until(|| serving_records(&server).get(2).cloned()).await;
    assert_eq!(again.1, start + 62 * minute);
    server.stop().await;
}
