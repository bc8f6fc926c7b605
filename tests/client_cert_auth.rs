//! Client-certificate authentication (renewal, VMs): accepted for a valid certificate of a mesh
//! that enables it; refused, with a recorded reason, for expired certificates, foreign roots,
//! other trust domains and certificates with two URI SANs; a token still counts beside a
//! certificate this authenticator does not judge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use meshroot::csr::{KeyAlgorithm, SubjectPublicKey};
use meshroot::identity::{SpiffeId, TrustDomain};
use meshroot::keys::KeyType;
use meshroot::policy::Grant;
use meshroot::record::Outcome;
use rcgen::PublicKeyData as _;
use tonic::Code;

/// A CA with meshes `default` (cluster.local, client certificates accepted) and `other`
/// (other.example, not).
fn two_mesh_ca() -> TestCa {
    let ca = TestCa::with_meshes(
        &[(MESH, TRUST_DOMAIN), ("other", "other.example")],
        KeyType::EcdsaP256,
    );
    ca.edit_config(|text| {
        text.replacen(
            "ca_dir = \"default\"\n",
            "ca_dir = \"default\"\nclient_cert_auth = true\n",
            1,
        )
    });
    ca
}

/// A certificate for `identity` signed by `mesh`'s intermediate, valid from `not_before` to
/// `not_after`; returns (chain PEM without the roots, key PEM).
fn issue_directly(
    ca: &TestCa,
    mesh: &str,
    trust_domain: &str,
    identity: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> (String, String) {
    let authority = meshroot::ca_files::load_authority(
        mesh,
        TrustDomain::new(trust_domain).unwrap(),
        &ca.path().join(mesh),
        &[],
        not_before + Duration::from_secs(1),
    )
    .unwrap();
    let key = p256_key();
    let grant = Grant {
        mesh: mesh.to_owned(),
        identity: SpiffeId::parse(identity).unwrap(),
        requested: SpiffeId::parse(identity).unwrap(),
        not_before,
        not_after,
    };
    let public_key = SubjectPublicKey {
        spki_der: key.subject_public_key_info(),
        algorithm: KeyAlgorithm::EcdsaP256,
    };
    let issued = authority
        .issue_workload(&grant, &public_key, not_before + Duration::from_secs(1))
        .unwrap();
    let (_, chain) = issued.cert_chain.split_last().unwrap();
    (chain.concat(), key.serialize_pem())
}

/// Renews `identity` presenting `credential` and no token.
async fn renew(
    server: &TestServer,
    identity: &str,
    credential: (String, String),
) -> Result<Vec<String>, tonic::Status> {
    server
        .call_with(
            ztunnel_csr(identity),
            None,
            0,
            "Kubernetes",
            Some(credential),
        )
        .await
        .map(|r| r.cert_chain)
}

fn assert_refused(server: &TestServer, status: &tonic::Status, reason: &str) {
    assert_eq!(status.code(), Code::Unauthenticated);
    let record = server.record_of(status);
    let Outcome::Denied(denial) = &record.outcome else {
        panic!("expected a denial record")
    };
    assert_eq!(denial.reason, reason, "{}", denial.detail);
}

#[tokio::test]
async fn renews_with_a_certificate_it_issued_without_a_token() {
    let ca = two_mesh_ca();
    let server = ca.start().await;
    let id = spiffe_id("vm", "legacy");
    let key = p256_key();
    let first = server
        .call(
            meshroot::client::build_csr(&key, &meshroot::client::CsrShape::istio_agent(&id))
                .unwrap(),
            Some(ca.token(MESH, "vm", "legacy")),
            0,
        )
        .await
        .unwrap();
    let (_, chain) = first.cert_chain.split_last().unwrap();
    let renewed = renew(&server, &id, (chain.concat(), key.serialize_pem()))
        .await
        .unwrap();
    verify_chain(&renewed, &ca.root_pem());
    let leaf = certificates(&renewed[0]).remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let record = &server.records_for_serial(parsed.raw_serial())[0];
    assert_eq!(record.caller.authenticator, "client-cert");
    assert_eq!(record.caller.spiffe_id, id);

    // A certificate proves only its own identity.
    let status = renew(
        &server,
        &spiffe_id("vm", "other"),
        (chain.concat(), key.serialize_pem()),
    )
    .await
    .unwrap_err();
    assert_refused(&server, &status, "identity-mismatch");
    server.stop().await;
}

#[tokio::test]
async fn refuses_an_expired_client_certificate() {
    let ca = two_mesh_ca();
    let id = spiffe_id("vm", "legacy");
    let now = SystemTime::now();
    let expired = issue_directly(
        &ca,
        MESH,
        TRUST_DOMAIN,
        &id,
        // Within the intermediate's validity (init backdates it by an hour), expired now.
        now - Duration::from_secs(50 * 60),
        now - Duration::from_secs(30 * 60),
    );
    let server = ca.start().await;
    let status = renew(&server, &id, expired).await.unwrap_err();
    assert_refused(&server, &status, "client-cert-untrusted");
    server.stop().await;
}

#[tokio::test]
async fn refuses_a_client_certificate_from_a_foreign_root() {
    let ca = two_mesh_ca();
    let stranger = TestCa::new();
    let id = spiffe_id("vm", "legacy");
    let now = SystemTime::now();
    let foreign = issue_directly(
        &stranger,
        MESH,
        TRUST_DOMAIN,
        &id,
        now,
        now + Duration::from_secs(3600),
    );
    let server = ca.start().await;
    let status = renew(&server, &id, foreign).await.unwrap_err();
    assert_refused(&server, &status, "client-cert-untrusted");
    server.stop().await;
}

#[tokio::test]
async fn refuses_a_client_certificate_of_a_trust_domain_without_client_cert_auth() {
    let ca = two_mesh_ca();
    let id = "spiffe://other.example/ns/vm/sa/legacy";
    let now = SystemTime::now();
    // Same shared root, mesh `other`'s intermediate: valid, but `other` does not accept certs.
    let other = issue_directly(
        &ca,
        "other",
        "other.example",
        id,
        now,
        now + Duration::from_secs(3600),
    );
    let server = ca.start().await;
    let status = renew(&server, id, other).await.unwrap_err();
    assert_refused(&server, &status, "client-cert-trust-domain");
    server.stop().await;
}

#[tokio::test]
async fn a_token_still_authenticates_beside_a_certificate_of_another_trust_domain() {
    let ca = two_mesh_ca();
    let now = SystemTime::now();
    let other_id = "spiffe://other.example/ns/vm/sa/legacy";
    let other = issue_directly(
        &ca,
        "other",
        "other.example",
        other_id,
        now,
        now + Duration::from_secs(3600),
    );
    let server = ca.start().await;
    let id = spiffe_id("vm", "legacy");
    let expired_token = ca.token_with(MESH, "vm", "legacy", |spec| spec.issued_at -= 7200);
    let status = server
        .call_with(
            ztunnel_csr(&id),
            Some(expired_token),
            0,
            "Kubernetes",
            Some(other.clone()),
        )
        .await
        .unwrap_err();
    assert_refused(&server, &status, "token-expired");
    let chain = server
        .call_with(
            ztunnel_csr(&id),
            Some(ca.token(MESH, "vm", "legacy")),
            0,
            "Kubernetes",
            Some(other),
        )
        .await
        .unwrap()
        .cert_chain;
    verify_chain(&chain, &ca.root_pem());
    server.stop().await;
}

#[tokio::test]
async fn refuses_a_client_certificate_with_two_uri_sans() {
    let ca = two_mesh_ca();
    // Signed by the mesh's own intermediate, but with two SPIFFE IDs.
    let ca_key = meshroot::keys::load_private_key_pem(
        &std::fs::read(ca.path().join("default/ca-key.pem")).unwrap(),
    )
    .unwrap();
    let ca_cert = std::fs::read_to_string(ca.path().join("default/ca-cert.pem")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, &ca_key).unwrap();
    let key = p256_key();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = [spiffe_id("vm", "a"), spiffe_id("vm", "b")]
        .into_iter()
        .map(|uri| rcgen::SanType::URI(uri.try_into().unwrap()))
        .collect();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let chain = format!("{}{ca_cert}", cert.pem());
    let server = ca.start().await;
    let status = renew(&server, &spiffe_id("vm", "a"), (chain, key.serialize_pem()))
        .await
        .unwrap_err();
    assert_refused(&server, &status, "client-cert-identity");
    server.stop().await;
}
