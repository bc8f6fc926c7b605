//! Several meshes under one shared root: each caller gets only its own mesh's trust domain, a
//! trust-domain migration keeps un-restarted workloads working, and each mesh serves its own
//! trust bundle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::Edited as _;

use common::*;
use meshroot::domain::keys::KeyType;
use meshroot::domain::record::Outcome;
use tonic::Code;
use x509_parser::prelude::GeneralName;

fn leaf_uri(chain: &[String]) -> String {
    let leaf = certificates(&chain[0]).remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let san = parsed.subject_alternative_name().unwrap().unwrap();
    match &san.value.general_names[..] {
        [GeneralName::URI(uri)] => (*uri).to_owned(),
        other => panic!("unexpected SANs {other:?}"),
    }
}

#[tokio::test]
async fn a_caller_of_one_mesh_never_gets_an_identity_of_another() {
    let ca = TestCa::with_meshes(
        &[("a", "a.example"), ("b", "b.example")],
        KeyType::EcdsaP256,
    );
    let server = ca.start().await;
    let a_token = ca.token("a", "shop", "cart");
    let own = server
        .call(
            ztunnel_csr("spiffe://a.example/ns/shop/sa/cart"),
            Some(a_token.clone()),
            0,
        )
        .await
        .unwrap();
    verify_chain(&own.cert_chain, &ca.root_pem());
    assert_eq!(
        leaf_uri(&own.cert_chain),
        "spiffe://a.example/ns/shop/sa/cart"
    );
    // Same root, same namespace and account names — but mesh b's trust domain.
    let status = server
        .call(
            ztunnel_csr("spiffe://b.example/ns/shop/sa/cart"),
            Some(a_token),
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let Outcome::Denied(denial) = server.record_of(&status).outcome else {
        panic!()
    };
    assert_eq!(denial.reason, "trust-domain-mismatch");
    server.stop().await;
}

/// A mesh moving from `cluster.local` to `example.com`, with `alias_issuance` as given.
fn migrating_ca(alias_issuance: &str) -> TestCa {
    let ca = TestCa::new();
    ca.rotate_intermediate_permitting(MESH, &["example.com", "cluster.local"]);
    ca.edit_config(|text| {
        text.edited(
            "trust_domain = \"cluster.local\"\n",
            &format!(
                "trust_domain = \"example.com\"\ntrust_domain_aliases = [\"cluster.local\"]\nalias_issuance = \"{alias_issuance}\"\n"
            ),
        )
    });
    ca
}

#[tokio::test]
async fn during_a_migration_old_identities_are_signed_as_requested_by_default() {
    let ca = migrating_ca("as-requested");
    let server = ca.start().await;
    let token = || Some(ca.token(MESH, "shop", "cart"));
    // An un-restarted workload still asks for the old trust domain: it keeps working.
    let old = server
        .call(
            agent_csr("spiffe://cluster.local/ns/shop/sa/cart"),
            token(),
            0,
        )
        .await
        .unwrap();
    verify_chain(&old.cert_chain, &ca.root_pem());
    assert_eq!(
        leaf_uri(&old.cert_chain),
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
    // A restarted one asks for the new trust domain.
    let new = server
        .call(
            agent_csr("spiffe://example.com/ns/shop/sa/cart"),
            token(),
            0,
        )
        .await
        .unwrap();
    assert_eq!(
        leaf_uri(&new.cert_chain),
        "spiffe://example.com/ns/shop/sa/cart"
    );
    // Aliases never open another workload's identity.
    let status = server
        .call(
            agent_csr("spiffe://cluster.local/ns/shop/sa/admin"),
            token(),
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test]
async fn canonical_issuance_moves_workloads_to_the_new_trust_domain_and_records_both() {
    let ca = migrating_ca("canonical");
    let server = ca.start().await;
    let response = server
        .call(
            agent_csr("spiffe://cluster.local/ns/shop/sa/cart"),
            Some(ca.token(MESH, "shop", "cart")),
            0,
        )
        .await
        .unwrap();
    assert_eq!(
        leaf_uri(&response.cert_chain),
        "spiffe://example.com/ns/shop/sa/cart"
    );
    let leaf = certificates(&response.cert_chain[0]).remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let Outcome::Issued(issued) = &server.records_for_serial(parsed.raw_serial())[0].outcome else {
        panic!()
    };
    assert_eq!(
        issued.requested_spiffe_id,
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
    assert_eq!(issued.spiffe_id, "spiffe://example.com/ns/shop/sa/cart");
    assert_eq!(issued.trust_domain, "example.com");
    // An audit by the old name finds who still asks for it.
    let by_old_name = server
        .server
        .store()
        .query_all(&meshroot::domain::audit::Query {
            spiffe_id: Some("spiffe://cluster.local/ns/shop/sa/cart".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_old_name.len(), 1);
    assert_eq!(by_old_name[0].serial(), Some(parsed.raw_serial()));
    server.stop().await;
}

#[tokio::test]
async fn a_mesh_bundle_carries_its_extra_roots_once_in_stable_order() {
    let ca = TestCa::new();
    let federated = TestCa::new().root_pem();
    std::fs::write(ca.path().join("federated-root.pem"), &federated).unwrap();
    // The shared root listed again as an extra is not repeated.
    std::fs::copy(
        ca.path().join("root-cert.pem"),
        ca.path().join("same-root.pem"),
    )
    .unwrap();
    ca.edit_config(|text| {
        text.edited(
            "ca_dir = \"default\"\n",
            "ca_dir = \"default\"\nextra_roots = [\"federated-root.pem\", \"same-root.pem\"]\n",
        )
    });
    let chain = ca
        .issue_once(ztunnel_csr(&spiffe_id("a", "b")), "a", "b")
        .await;
    let bundle = format!("{}{federated}", ca.root_pem());
    assert_eq!(chain.last().unwrap(), &bundle);
    verify_chain(&chain, &bundle);
}

#[tokio::test]
async fn a_trust_domain_change_is_picked_up_by_reload_without_an_outage() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let token = || Some(ca.token(MESH, "shop", "cart"));
    let old_id = "spiffe://cluster.local/ns/shop/sa/cart";
    server.call(agent_csr(old_id), token(), 0).await.unwrap();

    let migrate = |text: String| {
        text.edited(
            "trust_domain = \"cluster.local\"\n",
            "trust_domain = \"example.com\"\ntrust_domain_aliases = [\"cluster.local\"]\n",
        )
    };
    // The intermediate is confined to cluster.local: the new trust domain is refused, naming the
    // step that is missing, and the running configuration keeps serving.
    let before = std::fs::read_to_string(ca.config_path()).unwrap();
    ca.edit_config(migrate);
    let error = server.server.reload().await.unwrap_err().to_string();
    assert!(
        error.contains("may certify only URIs in cluster.local")
            && error.contains("trust domain example.com")
            && error.contains("meshroot rotate intermediate --trust-domain"),
        "{error}"
    );
    let kept = server.call(agent_csr(old_id), token(), 0).await.unwrap();
    assert_eq!(leaf_uri(&kept.cert_chain), old_id);

    // Step one: an intermediate that permits both; step two: the new configuration.
    std::fs::write(ca.config_path(), before).unwrap();
    ca.rotate_intermediate_permitting(MESH, &["cluster.local", "example.com"]);
    ca.edit_config(migrate);
    server.server.reload().await.unwrap();
    // Un-restarted workloads keep their identity; restarted ones get the new trust domain.
    let old = server.call(agent_csr(old_id), token(), 0).await.unwrap();
    assert_eq!(leaf_uri(&old.cert_chain), old_id);
    let new_id = "spiffe://example.com/ns/shop/sa/cart";
    let new = server.call(agent_csr(new_id), token(), 0).await.unwrap();
    assert_eq!(leaf_uri(&new.cert_chain), new_id);

    // An invalid config is refused and the running one keeps serving.
    ca.edit_config(|text| {
        text.edited(
            "trust_domain = \"example.com\"",
            "trust_domain = \"Not Valid\"",
        )
    });
    let error = server.server.reload().await.unwrap_err();
    assert!(
        error.to_string().contains("mesh[0].trust_domain"),
        "{error}"
    );
    let still = server.call(agent_csr(new_id), token(), 0).await.unwrap();
    assert_eq!(leaf_uri(&still.cert_chain), new_id);
    server.stop().await;
}

#[tokio::test]
async fn editing_the_config_file_reloads_it() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let new_id = "spiffe://example.com/ns/shop/sa/cart";
    let status = server
        .call(agent_csr(new_id), Some(ca.token(MESH, "shop", "cart")), 0)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    ca.rotate_intermediate_permitting(MESH, &["example.com"]);
    ca.edit_config(|text| {
        text.edited(
            "trust_domain = \"cluster.local\"",
            "trust_domain = \"example.com\"",
        )
    });
    // The file is polled every 2 s: the switch comes with the next poll.
    let response = common::wait_until(
        "a reload after editing the file",
        std::time::Duration::from_secs(15),
        || async {
            server
                .call(agent_csr(new_id), Some(ca.token(MESH, "shop", "cart")), 0)
                .await
                .map_err(|status| status.message().to_owned())
        },
    )
    .await;
    assert_eq!(leaf_uri(&response.cert_chain), new_id);
    server.stop().await;
}
