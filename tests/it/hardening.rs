//! Issue 30, the second hardening round: each attack as it was run, now getting the expected
//! answer (the cluster attacks, N2 and N13 between members, are in `replicas.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{agent_csr, TestCa, MESH};
use meshroot::pb::audit as api;
use meshroot::pb::audit::audit_service_client::AuditServiceClient;
use tonic::transport::Channel;
use tonic::Code;

const READER: &str = "spiffe://cluster.local/ns/ops/sa/auditor";
const REVOKER: &str = "spiffe://cluster.local/ns/ops/sa/security";

/// A CA whose admin listener is off loopback, with a reader and a revoker.
fn admin_ca() -> TestCa {
    let ca = TestCa::new();
    ca.admin_on_tls(&[READER]);
    ca.edit_config(|text| {
        text.replacen(
            "allowed_identities = [",
            &format!("revokers = [\"{REVOKER}\"]\nallowed_identities = ["),
            1,
        )
    });
    ca
}

/// An audit API client of `server`'s admin port with a client certificate (chain, key).
async fn audit_client(
    server: &common::TestServer,
    identity: (String, String),
) -> AuditServiceClient<Channel> {
    let channel = meshroot::client::connect(&meshroot::client::Target {
        address: format!("127.0.0.1:{}", server.server.admin_address().port()),
        root_pem: server.root_pem.clone(),
        server_name: "localhost".into(),
        client_identity: Some(identity),
    })
    .await
    .unwrap();
    AuditServiceClient::new(channel)
}

fn serial_of(chain_pem: &str) -> Vec<u8> {
    let leaf = common::certificates(chain_pem).remove(0);
    meshroot::signer::check::serial_of(&leaf).unwrap()
}

/// N8: a reader reads and cannot revoke, block or lift a block; a revoker can.
/// N1: an admin certificate revoked for key compromise loses every admin right at once: every
/// audit route and `/ui` answer PERMISSION_DENIED (403), while the revoker keeps its rights.
#[tokio::test]
async fn a_revoked_admin_certificate_loses_every_right_and_a_reader_cannot_revoke() {
    let ca = admin_ca();
    let server = ca.start().await;
    let reader = server.workload(&ca, MESH, READER).await;
    let revoker = server.workload(&ca, MESH, REVOKER).await;
    let mut reading = audit_client(&server, reader.clone()).await;
    reading
        .get_stats(api::GetStatsRequest::default())
        .await
        .expect("a reader reads");
    let filter = |serial: Vec<u8>| api::Filter {
        serial,
        ..Default::default()
    };
    for request in [
        api::RevokeRequest {
            filter: Some(filter(serial_of(&revoker.0))),
            ..Default::default()
        },
        api::RevokeRequest {
            unblock: vec![REVOKER.into()],
            ..Default::default()
        },
    ] {
        let status = reading.revoke(request).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let admin = server.server.admin_address();
    let (status, _) = common::https_get(admin, &ca.root_pem(), "/ui", Some(reader.clone())).await;
    assert_eq!(status, 200, "a reader loads the status page");

    // The revoker revokes the reader's certificate (key compromise).
    let mut revoking = audit_client(&server, revoker.clone()).await;
    let answer = revoking
        .revoke(api::RevokeRequest {
            filter: Some(filter(serial_of(&reader.0))),
            reason: "key-compromise".into(),
            no_block: true,
            ..Default::default()
        })
        .await
        .expect("a revoker revokes")
        .into_inner();
    assert_eq!(answer.certificates.len(), 1, "{answer:?}");

    // On the same connection as on a new one: every route refuses the revoked certificate.
    for mut client in [reading, audit_client(&server, reader.clone()).await] {
        let refused = [
            client
                .get_stats(api::GetStatsRequest::default())
                .await
                .map(|_| ()),
            client
                .list_records(api::ListRecordsRequest::default())
                .await
                .map(|_| ()),
            client
                .get_checkpoint(api::GetCheckpointRequest::default())
                .await
                .map(|_| ()),
            client
                .revoke(api::RevokeRequest {
                    unblock: vec![READER.into()],
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ];
        for answer in refused {
            assert_eq!(answer.unwrap_err().code(), Code::PermissionDenied);
        }
    }
    let (status, body) = common::https_get(admin, &ca.root_pem(), "/ui", Some(reader)).await;
    assert_eq!(status, 403, "{body}");
    revoking
        .get_stats(api::GetStatsRequest::default())
        .await
        .expect("the revoker keeps its rights");
    server.stop().await;
}

/// N13: the member identity is never issued through the CSR API, even to a caller whose token
/// is for meshroot's own service account; the refusal is recorded with its reason.
#[tokio::test]
async fn the_csr_api_never_issues_the_member_identity() {
    let ca = TestCa::new();
    // A cluster of one (the member identity is reserved as soon as there is a [cluster]).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    ca.edit_config(|text| {
        let member = format!("127.0.0.1:{port}");
        format!(
            "{}\n[cluster]\nmembers = [\"{member}\"]\nself = \"{member}\"\n",
            text.replace(
                "[admin]\nlisten = \"127.0.0.1:0\"",
                &format!("[admin]\nlisten = \"{member}\""),
            )
        )
    });
    let server = ca.start().await;
    let member = "spiffe://cluster.local/ns/istio-system/sa/meshroot";
    let status = server
        .call(
            agent_csr(member),
            Some(ca.token(MESH, "istio-system", "meshroot")),
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let record = server.record_of(&status);
    let meshroot::record::Outcome::Denied(denied) = &record.outcome else {
        panic!("{record:?}");
    };
    assert_eq!(denied.reason, "reserved-identity");
    // Another service account of the namespace is served as before.
    server
        .call(
            agent_csr("spiffe://cluster.local/ns/istio-system/sa/other"),
            Some(ca.token(MESH, "istio-system", "other")),
            0,
        )
        .await
        .unwrap();
    server.stop().await;
}
