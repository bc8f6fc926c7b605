//! Client-certificate authentication (renewal, VMs): accepted for a valid certificate of a mesh
//! that enables it; refused, with a recorded reason, for expired certificates, foreign roots,
//! other trust domains and certificates with two URI SANs; a token still counts beside a
//! certificate this authenticator does not judge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, SystemTime};

use common::*;
use meshroot::domain::keys::KeyType;
use meshroot::domain::record::Outcome;
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

#[tokio::test]
async fn renews_with_a_certificate_it_issued_without_a_token() {
    let ca = two_mesh_ca();
    let server = ca.start().await;
    let id = spiffe_id("vm", "legacy");
    let key = p256_key();
    let first = server
        .call(
            meshroot::edge::client::build_csr(
                &key,
                &meshroot::edge::client::CsrShape::istio_agent(&id),
            )
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
    common::assert_refused(&server, &status, Code::Unauthenticated, "identity-mismatch");
    server.stop().await;
}

#[tokio::test]
async fn refuses_an_expired_client_certificate() {
    let ca = two_mesh_ca();
    let id = spiffe_id("vm", "legacy");
    let now = SystemTime::now();
    let expired = ca.mint(
        MESH,
        &id,
        // Within the intermediate's validity (init backdates it by an hour), expired now.
        now - Duration::from_secs(50 * 60),
        now - Duration::from_secs(30 * 60),
    );
    let server = ca.start().await;
    let status = renew(&server, &id, expired).await.unwrap_err();
    common::assert_refused(
        &server,
        &status,
        Code::Unauthenticated,
        "client-cert-untrusted",
    );
    server.stop().await;
}

#[tokio::test]
async fn refuses_a_client_certificate_from_a_foreign_root() {
    let ca = two_mesh_ca();
    let stranger = TestCa::new();
    let id = spiffe_id("vm", "legacy");
    let now = SystemTime::now();
    let foreign = stranger.mint(MESH, &id, now, now + Duration::from_secs(3600));
    let server = ca.start().await;
    let status = renew(&server, &id, foreign).await.unwrap_err();
    common::assert_refused(
        &server,
        &status,
        Code::Unauthenticated,
        "client-cert-untrusted",
    );
    server.stop().await;
}

#[tokio::test]
async fn refuses_a_client_certificate_of_a_trust_domain_without_client_cert_auth() {
    let ca = two_mesh_ca();
    let id = "spiffe://other.example/ns/vm/sa/legacy";
    let now = SystemTime::now();
    // Same shared root, mesh `other`'s intermediate: valid, but `other` does not accept certs.
    let other = ca.mint("other", id, now, now + Duration::from_secs(3600));
    let server = ca.start().await;
    let status = renew(&server, id, other).await.unwrap_err();
    common::assert_refused(
        &server,
        &status,
        Code::Unauthenticated,
        "client-cert-trust-domain",
    );
    server.stop().await;
}

#[tokio::test]
async fn a_token_still_authenticates_beside_a_certificate_of_another_trust_domain() {
    let ca = two_mesh_ca();
    let now = SystemTime::now();
    let other_id = "spiffe://other.example/ns/vm/sa/legacy";
    let other = ca.mint("other", other_id, now, now + Duration::from_secs(3600));
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
    common::assert_refused(&server, &status, Code::Unauthenticated, "token-expired");
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
    let credential = ca.mint_with_uris(MESH, &[spiffe_id("vm", "a"), spiffe_id("vm", "b")]);
    let server = ca.start().await;
    let status = renew(&server, &spiffe_id("vm", "a"), credential)
        .await
        .unwrap_err();
    common::assert_refused(
        &server,
        &status,
        Code::Unauthenticated,
        "client-cert-identity",
    );
    server.stop().await;
}

/// The attack of issue 14 (D1): a partner mesh's root, trusted in our bundle for federation, mints
/// a certificate for one of *our* identities. The bundle may hold the root; authentication must
/// not accept it.
#[tokio::test]
async fn refuses_our_identity_minted_by_a_partner_root_in_extra_roots() {
    let ca = two_mesh_ca();
    let partner = TestCa::new();
    ca.add_root_of(&partner, "partner-root.pem");
    ca.edit_config(|text| {
        text.replacen(
            "client_cert_auth = true\n",
            "client_cert_auth = true\nextra_roots = [\"partner-root.pem\"]\n",
            1,
        )
    });
    let id = "spiffe://cluster.local/ns/kube-system/sa/admin";
    let now = SystemTime::now();
    let minted = partner.mint(MESH, id, now, now + Duration::from_secs(3600));
    let server = ca.start().await;
    let status = renew(&server, id, minted).await.unwrap_err();
    common::assert_refused(
        &server,
        &status,
        Code::Unauthenticated,
        "client-cert-untrusted",
    );
    // The bundle handed to workloads still carries the partner's root.
    let chain = server.issue(&ca, "ok").await;
    assert!(chain.last().unwrap().contains(partner.root_pem().trim()));
    server.stop().await;
}

#[tokio::test]
async fn an_extra_root_authenticates_only_the_trust_domains_it_vouches_for() {
    let ca = two_mesh_ca();
    let partner = TestCa::new();
    ca.add_root_of(&partner, "old-root.pem");
    ca.edit_config(|text| {
        text.replacen(
            "client_cert_auth = true\n",
            "client_cert_auth = true\nextra_roots = [{ path = \"old-root.pem\", vouches_for = [\"cluster.local\"] }]\n",
            1,
        )
        .replacen(
            "ca_dir = \"other\"\n",
            "ca_dir = \"other\"\nclient_cert_auth = true\n",
            1,
        )
    });
    let id = spiffe_id("vm", "legacy");
    let now = SystemTime::now();
    let old = partner.mint(MESH, &id, now, now + Duration::from_secs(3600));
    let server = ca.start().await;
    let chain = renew(&server, &id, old).await.unwrap();
    // The bundle is our root and the old one.
    let bundle = chain.last().unwrap().clone();
    assert!(bundle.contains(partner.root_pem().trim()));
    verify_chain(&chain, &bundle);
    // The same root does not vouch for the other mesh's trust domain, which accepts client
    // certificates too.
    let other_id = "spiffe://other.example/ns/vm/sa/legacy";
    let other = partner.mint(MESH, other_id, now, now + Duration::from_secs(3600));
    let status = renew(&server, other_id, other).await.unwrap_err();
    common::assert_refused(
        &server,
        &status,
        Code::Unauthenticated,
        "client-cert-untrusted",
    );
    server.stop().await;
}

/// One shared root signs every mesh's intermediate: mesh `other`'s intermediate must not mint
/// identities of mesh `default`'s trust domain.
#[tokio::test]
async fn refuses_our_identity_minted_by_another_meshs_intermediate_under_the_shared_root() {
    let ca = two_mesh_ca();
    let id = spiffe_id("kube-system", "admin");
    let now = SystemTime::now();
    let minted = ca.mint("other", &id, now, now + Duration::from_secs(3600));
    let server = ca.start().await;
    let status = renew(&server, &id, minted).await.unwrap_err();
    common::assert_refused(
        &server,
        &status,
        Code::Unauthenticated,
        "client-cert-untrusted",
    );
    server.stop().await;
}

/// After the intermediate is replaced, certificates the previous one signed still renew: the
/// store remembers every signing intermediate while its certificates are valid.
#[tokio::test]
async fn renews_with_a_certificate_from_the_previous_intermediate() {
    let ca = two_mesh_ca();
    let id = spiffe_id("vm", "legacy");
    let now = SystemTime::now();
    let server = ca.start().await;
    server.issue(&ca, "warm").await;
    server.stop().await;
    let before_rotation = ca.mint(MESH, &id, now, now + Duration::from_secs(3600));
    ca.rotate_intermediate(MESH);
    let server = ca.start().await;
    let chain = renew(&server, &id, before_rotation).await.unwrap();
    verify_chain(&chain, &ca.root_pem());
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_client_certificate_never_renews_itself() {
    let ca = two_mesh_ca();
    let server = ca.start().await;
    let id = spiffe_id("vm", "legacy");
    let issue = || async {
        let key = p256_key();
        let response = server
            .call(
                meshroot::edge::client::build_csr(
                    &key,
                    &meshroot::edge::client::CsrShape::istio_agent(&id),
                )
                .unwrap(),
                Some(ca.token(MESH, "vm", "legacy")),
                0,
            )
            .await
            .unwrap();
        let (_, chain) = response.cert_chain.split_last().unwrap();
        let leaf = certificates(&response.cert_chain[0]).remove(0);
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        (
            meshroot::domain::digest::hex(parsed.raw_serial()),
            (chain.concat(), key.serialize_pem()),
        )
    };
    let (revoked_serial, revoked) = issue().await;
    let (_, kept) = issue().await;
    // Only that certificate, not the identity (--no-block).
    let output = common::process::meshroot_output(vec![
        "revoke".into(),
        "--addr".into(),
        server.server.admin_address().to_string(),
        "--serial".into(),
        revoked_serial.clone(),
        "--no-block".into(),
        "--reason".into(),
        "key-compromise".into(),
    ])
    .await;
    assert!(output.contains("revoked 1 certificate(s)"), "{output}");
    let status = renew(&server, &id, revoked).await.unwrap_err();
    common::assert_refused(
        &server,
        &status,
        Code::Unauthenticated,
        "certificate-revoked",
    );
    let record = server.record_of(&status);
    let Outcome::Denied(denial) = &record.outcome else {
        panic!("{record:?}")
    };
    assert!(denial.detail.contains(&revoked_serial), "{}", denial.detail);
    // The identity's other certificate still renews.
    let renewed = renew(&server, &id, kept).await.unwrap();
    verify_chain(&renewed, &ca.root_pem());
    server.stop().await;
}
