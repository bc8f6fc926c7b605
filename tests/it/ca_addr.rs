//! Issue 31, part 2: istio-agent checks meshroot's serving certificate against the host of
//! `CA_ADDR`, by Istio's own rule (read from istio/istio `pilot/pkg/grpc/tls.go`, commit
//! 86c9f01fd73, `getTLSDialOption`): the host part of `CA_ADDR` is the TLS server name; a name
//! containing `localhost` becomes `istiod.istio-system.svc`; a SAN override replaces it, and
//! istio-agent sets one (`ISTIOD_SAN`) only when `CA_ADDR` is unset
//! (`pilot/cmd/pilot-agent/options/security.go`). Go's crypto/tls then checks a DNS name against
//! DNS SANs and an IP address against IP SANs only, as rustls does here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{agent_csr, TestCa, MESH};
use meshroot::edge::client::{self, AgentMetadata, Target};

/// The TLS server name istio-agent verifies for `ca_addr` (HOST:PORT), CA_ADDR being set.
fn istio_agent_server_name(ca_addr: &str) -> String {
    let host = ca_addr
        .rsplit_once(':')
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(ca_addr);
    if host.contains("localhost") {
        "istiod.istio-system.svc".to_owned()
    } else {
        host.to_owned()
    }
}

#[tokio::test]
async fn ca_addr_as_a_name_as_localhost_and_as_an_ip_address_each_verify() {
    let ca = TestCa::new();
    ca.edit_config(|text| {
        text.replacen(
            "dns_names = [",
            "dns_names = [\"istiod.istio-system.svc\", \"127.0.0.1\", \"::1\", ",
            1,
        )
    });
    let server = ca.start().await;
    let port = server.server.local_address().port();
    for ca_addr in [
        format!("meshroot.istio-system.svc:{port}"),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let server_name = istio_agent_server_name(&ca_addr);
        let channel = client::connect(&Target {
            address: format!("127.0.0.1:{port}"),
            root_pem: ca.root_pem(),
            server_name: server_name.clone(),
            client_identity: None,
        })
        .await
        .unwrap_or_else(|e| panic!("CA_ADDR={ca_addr} (server name {server_name}): {e:?}"));
        client::create_certificate(
            channel,
            agent_csr(&common::spiffe_id("default", "vm")),
            0,
            &AgentMetadata {
                token: Some(ca.token(MESH, "default", "vm")),
                cluster_id: "Kubernetes".into(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("CA_ADDR={ca_addr}: {e:?}"));
    }
    // An address the certificate does not name is refused (the IP is not a DNS name to it).
    let refused = client::connect(&Target {
        address: format!("127.0.0.1:{port}"),
        root_pem: ca.root_pem(),
        server_name: istio_agent_server_name(&format!("10.0.0.5:{port}")),
        client_identity: None,
    })
    .await;
    assert!(refused.is_err(), "10.0.0.5 is not in the certificate");
    server.stop().await;
}

/// A literal IP in `dns_names` is written as an IP SAN (never as a DNS name), and an entry that
/// is neither (a numeric last label) is refused naming the key.
#[test]
fn ip_addresses_in_dns_names_become_ip_sans_and_numeric_names_are_refused() {
    let ca = TestCa::new();
    ca.edit_config(|text| text.replacen("dns_names = [", "dns_names = [\"10.0.0.256\", ", 1));
    let error = meshroot::adapters::config::Config::parse(
        &std::fs::read_to_string(ca.config_path()).unwrap(),
        &ca.config_path(),
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("dns_names[0]") && error.contains("neither a DNS name nor an IP address"),
        "{error}"
    );
}
