//! Mesh b accepts mesh a's workloads because meshroot's configuration says so (`accepts`), in
//! real Envoy configured the way istiod configures a sidecar's inbound listener for the
//! `meshConfig` that `meshroot istio config --mesh b` prints.
//!
//! What istiod builds (istio/istio `86c9f01fd73`):
//! - `pilot/pkg/networking/plugin/authn/util.go` `TrustDomainsForValidation`: the trust domain,
//!   then `trustDomainAliases`, then every `caCertificates[].trustDomains`, each once;
//! - `pilot/pkg/security/authn/utils/utils.go` `BuildInboundTLS`: `require_client_certificate`,
//!   TLS 1.2–1.3 with Istio's cipher list, and `ApplyToCommonTLSContext`
//!   (`pilot/pkg/security/model/authentication.go`): a combined validation context whose default
//!   part is `match_subject_alt_names`, one prefix matcher `spiffe://<td>/` per trust domain
//!   above, and whose root is the proxy's `ROOTCA`;
//! - `ROOTCA` is the root istio-agent got with its certificate, plus every
//!   `caCertificates[].pem` (`pilot/pkg/trustbundle/trustbundle.go`, merged into the proxy's
//!   trust bundle by `pkg/istio-agent/xds_proxy.go`).
//!
//! The test computes exactly that from the generated `meshConfig` and starts Envoy with it
//! statically (no istiod): `ROOTCA` is a static secret where istio-agent would serve it over
//! SDS, under the same name. Then it connects as workloads of each trust domain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::Edited as _;
use std::path::Path;

use crate::common::{self, process::BINARY, TestCa};
use crate::envoy_mtls::{client_sidecar, free_port, start_upstream, Envoy};
use meshroot::domain::keys::KeyType;

/// istiod's `SupportedCiphers` (pilot/pkg/security/authn/utils/utils.go).
const ISTIO_CIPHERS: &[&str] = &[
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

const SERVER_ID: &str = "spiffe://b.example/ns/shop/sa/orders";

/// `meshroot istio config --mesh b --format mesh-config` for `ca`'s configuration.
pub(crate) fn mesh_config(ca: &TestCa, mesh: &str) -> serde_json::Value {
    let output = std::process::Command::new(BINARY)
        .args(["istio", "config", "--config"])
        .arg(ca.config_path())
        .args(["--mesh", mesh, "--format", "mesh-config"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Istio's `TrustDomainsForValidation` for `mesh_config`.
pub(crate) fn trust_domains_for_validation(mesh_config: &serde_json::Value) -> Vec<String> {
    let mut all = vec![mesh_config["trustDomain"].as_str().unwrap().to_owned()];
    let strings = |value: &serde_json::Value| -> Vec<String> {
        value
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    all.extend(strings(&mesh_config["trustDomainAliases"]));
    if let Some(entries) = mesh_config["caCertificates"].as_array() {
        for entry in entries {
            all.extend(strings(&entry["trustDomains"]));
        }
    }
    let mut seen = std::collections::HashSet::new();
    all.retain(|td| !td.is_empty() && seen.insert(td.clone()));
    all
}

/// The proxy's `ROOTCA`: its mesh's root bundle, then each `caCertificates[].pem`.
pub(crate) fn root_ca(own_roots: &str, mesh_config: &serde_json::Value) -> String {
    let mut bundle = own_roots.to_owned();
    if let Some(entries) = mesh_config["caCertificates"].as_array() {
        for pem in entries.iter().filter_map(|e| e["pem"].as_str()) {
            if !bundle.contains(pem) {
                bundle.push_str(pem);
            }
        }
    }
    bundle
}

/// Mesh b's sidecar inbound listener as istiod configures it for `mesh_config`.
pub(crate) fn inbound_sidecar(
    dir: &Path,
    port: u16,
    upstream: u16,
    mesh_config: &serde_json::Value,
) -> String {
    let matchers: String = trust_domains_for_validation(mesh_config)
        .iter()
        .map(|td| format!("                - prefix: \"spiffe://{td}/\"\n"))
        .collect();
    let ciphers = ISTIO_CIPHERS.join(", ");
    format!(
        r#"static_resources:
  listeners:
  - name: virtualInbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_params:
              tls_minimum_protocol_version: TLSv1_2
              tls_maximum_protocol_version: TLSv1_3
              cipher_suites: [{ciphers}]
            tls_certificates:
            - certificate_chain: {{ filename: "{dir}/orders-chain.pem" }}
              private_key: {{ filename: "{dir}/orders-key.pem" }}
            combined_validation_context:
              default_validation_context:
                match_subject_alt_names:
{matchers}              validation_context_sds_secret_config: {{ name: ROOTCA }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {{ uri: true }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: app }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  secrets:
  - name: ROOTCA
    validation_context:
      trusted_ca: {{ filename: "{dir}/rootca.pem" }}
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: app
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}]
"#,
        dir = dir.display()
    )
}

/// The workloads of the scenario: (name, mesh, SPIFFE ID).
const WORKLOADS: &[(&str, &str, &str)] = &[
    ("cart", "a", "spiffe://a.example/ns/shop/sa/cart"),
    ("stranger", "c", "spiffe://c.example/ns/shop/sa/cart"),
    ("legacy", "b", "spiffe://old-b.example/ns/shop/sa/legacy"),
    ("neighbour", "b", "spiffe://b.example/ns/shop/sa/neighbour"),
];

/// Meshes a, b and c under one root; b migrates from old-b.example; `accepts` for b as given.
async fn scenario(dir: &Path, b_accepts: &str) -> (TestCa, serde_json::Value) {
    let ca = TestCa::with_meshes_constrained(
        &[("a", "a.example"), ("b", "b.example"), ("c", "c.example")],
        KeyType::EcdsaP256,
        false,
    );
    ca.edit_config(|text| {
        text.edited("trust_domain = \"b.example\"\n", &format!(
                "trust_domain = \"b.example\"\ntrust_domain_aliases = [\"old-b.example\"]\naccepts = {b_accepts}\n"
            ))
    });
    let server = ca.start().await;
    let (chain, key) = server.workload(&ca, "b", SERVER_ID).await;
    std::fs::write(dir.join("orders-chain.pem"), chain).unwrap();
    std::fs::write(dir.join("orders-key.pem"), key).unwrap();
    for (name, mesh, id) in WORKLOADS {
        let (chain, key) = server.workload(&ca, mesh, id).await;
        std::fs::write(dir.join(format!("{name}-chain.pem")), chain).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key).unwrap();
    }
    server.stop().await;
    let mesh_config = mesh_config(&ca, "b");
    std::fs::write(dir.join("shared-root.pem"), ca.root_pem()).unwrap();
    std::fs::write(
        dir.join("rootca.pem"),
        root_ca(&ca.root_pem(), &mesh_config),
    )
    .unwrap();
    (ca, mesh_config)
}

/// Starts an inbound sidecar for `mesh_config` in `dir` (its certificate `orders-*.pem`, its
/// `rootca.pem`) and a client sidecar presenting each of `clients` (`NAME-*.pem`), which checks
/// the server's SPIFFE ID `server_id` against `dir/trusted`; the HTTP status of a request from
/// each client, and the `x-forwarded-client-cert` values the app saw.
pub(crate) async fn through_envoy(
    dir: &Path,
    mesh_config: &serde_json::Value,
    (server_id, trusted): (&str, &str),
    clients: &[&str],
) -> (Vec<(String, u16)>, Vec<String>) {
    let (upstream, seen) = start_upstream().await;
    let (inbound_port, client_port) = (free_port(), free_port());
    let _inbound = Envoy::start(
        dir,
        "inbound",
        &inbound_sidecar(dir, inbound_port, upstream, mesh_config),
        inbound_port,
    )
    .await;
    let _client = Envoy::start(
        dir,
        "client",
        &client_sidecar(
            dir,
            client_port,
            inbound_port,
            clients,
            (server_id, trusted),
        ),
        client_port,
    )
    .await;
    let mut statuses = Vec::new();
    for name in clients {
        let status = crate::envoy_mtls::get(client_port, &format!("/{name}")).await;
        statuses.push((name.to_string(), status));
    }
    let seen = seen.lock().unwrap().clone();
    (statuses, seen)
}

/// b's sidecar against every workload of the scenario.
async fn run_requests(
    dir: &Path,
    mesh_config: &serde_json::Value,
) -> (Vec<(String, u16)>, Vec<String>) {
    let names: Vec<&str> = WORKLOADS.iter().map(|(name, _, _)| *name).collect();
    through_envoy(dir, mesh_config, (SERVER_ID, "shared-root.pem"), &names).await
}

#[tokio::test]
async fn mesh_b_accepts_mesh_a_only_when_its_configuration_says_so() {
    common::init_test_log();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    // b accepts a: the generated meshConfig names a.example in caCertificates, not as an alias.
    let (_ca, accepting) = scenario(dir, "[\"a\"]").await;
    assert_eq!(
        trust_domains_for_validation(&accepting),
        ["b.example", "old-b.example", "a.example"]
    );
    assert_eq!(
        accepting["trustDomainAliases"],
        serde_json::json!(["old-b.example"])
    );
    let (statuses, seen) = run_requests(dir, &accepting).await;
    let status = |name: &str| statuses.iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(
        status("cart"),
        200,
        "mesh a's workload is accepted: {statuses:?}"
    );
    assert_eq!(status("neighbour"), 200, "b's own workload: {statuses:?}");
    assert_eq!(
        status("legacy"),
        200,
        "b's alias (a migration): {statuses:?}"
    );
    assert_eq!(
        status("stranger"),
        503,
        "c is under the same root but not accepted: {statuses:?}"
    );
    // The app tells the meshes apart: mesh a's identity arrives as a.example, not as b's.
    assert!(
        seen.iter()
            .any(|xfcc| xfcc.contains("URI=spiffe://a.example/ns/shop/sa/cart")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|xfcc| xfcc.contains("c.example")),
        "{seen:?}"
    );

    // b accepts nobody: a is refused like c, and the alias still accepts only old-b.example
    // (an alias is a migration of b's own names; it does not stand in for accepting a).
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let (_ca, alone) = scenario(dir, "[]").await;
    assert!(alone.get("caCertificates").is_none(), "{alone}");
    let (statuses, _) = run_requests(dir, &alone).await;
    let status = |name: &str| statuses.iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(status("cart"), 503, "a is not accepted: {statuses:?}");
    assert_eq!(status("stranger"), 503, "{statuses:?}");
    assert_eq!(status("legacy"), 200, "{statuses:?}");
    assert_eq!(status("neighbour"), 200, "{statuses:?}");
}
