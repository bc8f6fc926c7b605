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
use meshroot::client::{self, AgentMetadata, Target};

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
            meshroot::keys::KeyType::EcdsaP256,
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
