//! Issue 31, part 1: meshroot notices ztunnel. A request from ztunnel (its node-proxy account,
//! or an `ImpersonatedIdentity`) for a mesh served by a chain with URI name constraints, which
//! ztunnel's rustls-webpki refuses, raises a warning naming the mesh, the intermediate and the
//! command that fixes it, the gauge `meshroot_ztunnel_constrained_chain{mesh}`, and a line on
//! `/ui`, at once. The certificate is still issued (it is valid; the verifier is what fails).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::kube_api::FakeApiServer;
use common::process::Serving;
use common::{ztunnel_csr, TestCa, MESH};
use meshroot::edge::client::{self, AgentMetadata, Target};

async fn ztunnel_asks(ca: &TestCa, serving: &Serving) {
    let channel = client::connect(&Target {
        address: serving.address.clone(),
        root_pem: ca.root_pem(),
        server_name: "localhost".into(),
        client_identity: None,
    })
    .await
    .unwrap();
    client::create_certificate(
        channel,
        ztunnel_csr("spiffe://cluster.local/ns/istio-system/sa/ztunnel"),
        0,
        &AgentMetadata {
            token: Some(ca.token(MESH, "istio-system", "ztunnel")),
            cluster_id: "west".into(),
        },
    )
    .await
    .expect("ztunnel's certificate is issued all the same");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ztunnel_request_to_a_constrained_mesh_raises_a_warning_a_metric_and_a_ui_line() {
    let west = FakeApiServer::start().await;
    for constrained in [true, false] {
        let ca = TestCa::with_meshes_constrained(
            &[(MESH, "cluster.local")],
            meshroot::domain::keys::KeyType::EcdsaP256,
            constrained,
        );
        let kubeconfig = west.write_kubeconfig(ca.path(), "west");
        ca.edit_config(|text| {
            format!(
                "{text}\n[[mesh.cluster]]\nid = \"west\"\nkubeconfig = \"{}\"\n",
                kubeconfig.display()
            )
        });
        let config = ca.config_path();
        let mut serving = Serving::start(ca.path(), &["--config", config.to_str().unwrap()]);
        ztunnel_asks(&ca, &serving).await;
        let admin: std::net::SocketAddr = serving.admin_address.parse().unwrap();
        let (_, metrics) = common::http_get(admin, "/metrics").await;
        let (_, page) = common::http_get(admin, "/ui").await;
        let gauge = format!(
            "meshroot_ztunnel_constrained_chain{{mesh=\"default\"}} {}",
            u8::from(constrained)
        );
        assert!(metrics.contains(&gauge), "{gauge}: {metrics}");
        assert_eq!(
            page.contains("data-figure=\"ztunnel-constrained-default\""),
            constrained,
            "{page}"
        );
        if constrained {
            serving.wait_for_log("ztunnel asks for certificates of this mesh");
            serving.wait_for_log("--data-plane ambient");
        } else {
            assert_eq!(serving.count_log("ztunnel asks for certificates"), 0);
        }
        serving.stop();
    }
}

/// Issue 31 (Istio 1.29 delivers `ca-crl.pem` to ztunnel): meshroot's published CRLs read the way
/// ztunnel reads them (istio/ztunnel `62d82653`, `src/tls/crl.rs` and `src/tls/revocation.rs`):
/// every PEM block must parse as a webpki `OwnedCertRevocationList` (one that does not fails the
/// whole load), and a peer is checked with webpki at depth `Chain`, unknown status allowed,
/// expiry ignored. A revoked workload is refused and another accepted under that policy.
#[tokio::test]
async fn the_published_crls_load_and_revoke_as_ztunnel_checks_them() {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
    let ca = TestCa::with_meshes_constrained(
        &[(MESH, "cluster.local")],
        meshroot::domain::keys::KeyType::EcdsaP256,
        false,
    );
    let server = ca.start().await;
    let (revoked, _) = server
        .workload(&ca, MESH, "spiffe://cluster.local/ns/shop/sa/cart")
        .await;
    let (kept, _) = server
        .workload(&ca, MESH, "spiffe://cluster.local/ns/shop/sa/orders")
        .await;
    let serial = |chain: &str| {
        meshroot::domain::signer::check::serial_of(&common::certificates(chain)[0]).unwrap()
    };
    server
        .audit_client()
        .await
        .revoke(meshroot::pb::audit::RevokeRequest {
            filter: Some(meshroot::pb::audit::Filter {
                serial: serial(&revoked),
                ..Default::default()
            }),
            reason: "key-compromise".into(),
            no_block: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let (status, pem) = common::http_get(server.server.admin_address(), "/crl").await;
    assert_eq!(status, 200);
    // ztunnel's load: every CRL block parses with webpki, or nothing loads.
    let crls: Vec<webpki::CertRevocationList<'static>> =
        CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
            .map(|der| {
                webpki::OwnedCertRevocationList::from_der(der.unwrap().as_ref())
                    .unwrap()
                    .into()
            })
            .collect();
    assert!(crls.len() >= 2, "the intermediate's and the root's");
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
    let anchors: Vec<_> = common::certificates(&ca.root_pem())
        .iter()
        .map(|root| webpki::anchor_from_trusted_cert(root).unwrap().to_owned())
        .collect();
    let check = |chain: &str| {
        let certificates: Vec<CertificateDer<'static>> = common::certificates(chain);
        let (leaf, intermediates) = certificates.split_first().unwrap();
        let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
            .unwrap()
            .with_depth(webpki::RevocationCheckDepth::Chain)
            .with_status_policy(webpki::UnknownStatusPolicy::Allow)
            .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
            .build();
        webpki::EndEntityCert::try_from(leaf)
            .unwrap()
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                intermediates,
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
                Some(revocation),
                None,
            )
            .map(|_| ())
    };
    assert_eq!(check(&revoked), Err(webpki::Error::CertRevoked));
    check(&kept).expect("an unrevoked workload is accepted");
    server.stop().await;
}

/// The same for a mesh that is ztunnel's peer: meshes under one root trust each other's
/// chains, so when mesh `a` runs ztunnel, mesh `b`'s URI-constrained chain fails ztunnel's
/// handshakes with `b`'s workloads too, and is flagged the same way.
#[tokio::test]
async fn a_peer_mesh_under_the_same_root_is_flagged_when_another_runs_ztunnel() {
    let west = FakeApiServer::start().await;
    let ca = TestCa::with_meshes_constrained(
        &[("b", "b.example"), ("a", "a.example")],
        meshroot::domain::keys::KeyType::EcdsaP256,
        true,
    );
    // The cluster (and so the node-proxy accounts) goes to the last mesh, `a`.
    let kubeconfig = west.write_kubeconfig(ca.path(), "west");
    ca.edit_config(|text| {
        format!(
            "{text}\n[[mesh.cluster]]\nid = \"west\"\nkubeconfig = \"{}\"\n",
            kubeconfig.display()
        )
    });
    let server = ca.start().await;
    server
        .call_with(
            ztunnel_csr("spiffe://a.example/ns/istio-system/sa/ztunnel"),
            Some(ca.token("a", "istio-system", "ztunnel")),
            0,
            "west",
            None,
        )
        .await
        .unwrap();
    let (_, metrics) = common::http_get(server.server.admin_address(), "/metrics").await;
    for mesh in ["a", "b"] {
        let gauge = format!("meshroot_ztunnel_constrained_chain{{mesh=\"{mesh}\"}} 1");
        assert!(metrics.contains(&gauge), "{gauge}: {metrics}");
    }
    server.stop().await;
}
