//! Revocation by identity, proven with the verifiers that matter: a real Envoy pair whose
//! `ISTIO_MUTUAL` validation context carries the CRL the way Istio's sidecar does (the `ROOTCA`
//! SDS secret naming `ca-crl.pem` by file), OpenSSL and Go's crypto/x509.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::Edited as _;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::process::meshroot_status as meshroot;
use crate::common::*;
use crate::envoy_mtls::{free_port, get, outbound_bootstrap, start_upstream, Envoy};
use meshroot::domain::keys::KeyType;

const CART: &str = "spiffe://a.example/ns/shop/sa/cart";
const ORDERS: &str = "spiffe://a.example/ns/shop/sa/orders";

/// The `ROOTCA` secret as istio-agent's SDS sends it with `ca-crl.pem` present
/// (`security/pkg/nodeagent/sds/sdsservice.go`): the roots, and the CRL by file name.
fn rootca_sds(dir: &Path, crl: &Path) -> String {
    format!(
        r#"resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: ROOTCA
  validation_context:
    trusted_ca: {{ filename: "{dir}/root.pem" }}
    crl: {{ filename: "{crl}" }}
"#,
        dir = dir.display(),
        crl = crl.display()
    )
}

/// The validation context of an `ISTIO_MUTUAL` TLS context, as Istio builds it: SAN matching
/// in the default context, the roots (and CRL) from the `ROOTCA` secret. The secret's own source
/// never changes here: a new CRL takes effect only because Envoy watches the CRL file a secret
/// names (Envoy 1.27+, envoyproxy/envoy#27751), as it does in a pod when the kubelet swaps the
/// `istio-ca-crl` ConfigMap's files.
fn istio_validation(dir: &Path, indent: &str, san: &str) -> String {
    format!(
        "{indent}combined_validation_context:\n\
         {indent}  default_validation_context:\n\
         {indent}    match_typed_subject_alt_names:\n\
         {indent}    - san_type: URI\n\
         {indent}      matcher: {san}\n\
         {indent}  validation_context_sds_secret_config:\n\
         {indent}    name: ROOTCA\n\
         {indent}    sds_config:\n\
         {indent}      resource_api_version: V3\n\
         {indent}      path_config_source:\n\
         {indent}        path: \"{dir}/rootca.yaml\"\n",
        dir = dir.display(),
    )
}

fn gateway(dir: &Path, port: u16, upstream: u16) -> String {
    format!(
        r#"node: {{ id: "router~127.0.0.1~gateway.istio-system~istio-system.svc.cluster.local", cluster: gateway }}
static_resources:
  listeners:
  - name: gateway
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: "{dir}/gateway-chain.pem" }}
              private_key: {{ filename: "{dir}/gateway-key.pem" }}
{validation}      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: upstream }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}]
"#,
        dir = dir.display(),
        validation = istio_validation(dir, "            ", "{ prefix: \"spiffe://a.example/\" }"),
    )
}

/// A sidecar with one upstream cluster per workload `name`, each presenting its certificate to
/// the gateway on a new connection per request.
fn sidecar(dir: &Path, port: u16, gateway: u16, names: &[&str]) -> String {
    let clusters: String = names
        .iter()
        .map(|n| {
            format!(
                r#"  - name: {n}
    type: STATIC
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {{ max_requests_per_connection: 1 }}
        explicit_http_config: {{ http_protocol_options: {{}} }}
    load_assignment:
      cluster_name: {n}
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {gateway} }} }} }} }}] }}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_certificates:
          - certificate_chain: {{ filename: "{dir}/{n}-chain.pem" }}
            private_key: {{ filename: "{dir}/{n}-key.pem" }}
{validation}"#,
                dir = dir.display(),
                validation = istio_validation(dir, "          ", &format!("{{ exact: \"{GATEWAY_ID}\" }}")),
            )
        })
        .collect();
    outbound_bootstrap(port, names, &clusters)
}

/// `go run tests/go/crlcheck.go CAS CRLS [CERT]`.
fn go_crlcheck(cas: &Path, crls: &Path, cert: &Path) -> Output {
    let [cas, crls, cert] = [cas, crls, cert].map(|p| p.display().to_string());
    go_run("crlcheck.go", &[&cas, &crls, &cert])
}

/// Every PEM block of `kind` in `text`, each whole.
fn pem_blocks(text: &str, kind: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {kind}-----");
    let end = format!("-----END {kind}-----");
    text.split(&begin)
        .skip(1)
        .filter_map(|rest| {
            rest.split_once(&end)
                .map(|(body, _)| format!("{begin}{body}{end}\n"))
        })
        .collect()
}

#[tokio::test]
async fn envoy_refuses_a_revoked_identity_on_a_new_connection_and_still_accepts_another() {
    let ca = TestCa::with_meshes(
        &[("a", "a.example"), ("b", "b.example")],
        KeyType::EcdsaP256,
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    // The CRL where the sidecar mounts it, written by meshroot (`[revocation] crl_file`).
    let crl = dir.join("crl").join("ca-crl.pem");
    ca.edit_config(|text| {
        text.edited(
            "crl_file = \"ca-crl.pem\"",
            &format!("crl_file = \"{}\"", crl.display()),
        )
    });
    let server = ca.start().await;
    let admin = server.server.admin_address().to_string();
    std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
    let gateway_cert = server.workload(&ca, "b", GATEWAY_ID).await;
    let cart = server.workload(&ca, "a", CART).await;
    let orders = server.workload(&ca, "a", ORDERS).await;
    for (name, (chain, key)) in [
        ("gateway", &gateway_cert),
        ("cart", &cart),
        ("orders", &orders),
    ] {
        std::fs::write(dir.join(format!("{name}-chain.pem")), chain).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key).unwrap();
    }
    let before = std::fs::read_to_string(&crl).expect("meshroot writes the CRL file at start");
    // Every CA of the chain has its CRL: both intermediates' (signed by meshroot) and the root's.
    assert_eq!(pem_blocks(&before, "X509 CRL").len(), 3, "{before}");
    std::fs::write(dir.join("rootca.yaml"), rootca_sds(dir, &crl)).unwrap();

    let (upstream, seen) = start_upstream().await;
    let (gateway_port, sidecar_port) = (free_port(), free_port());
    let _gateway = Envoy::start(
        dir,
        "gateway",
        &gateway(dir, gateway_port, upstream),
        gateway_port,
    )
    .await;
    let _sidecar = Envoy::start(
        dir,
        "sidecar",
        &sidecar(dir, sidecar_port, gateway_port, &["cart", "orders"]),
        sidecar_port,
    )
    .await;
    // Validation contexts arrive over SDS: wait until the first request passes.
    answers(sidecar_port, "/cart", 200).await;
    assert_eq!(get(sidecar_port, "/orders").await, 200);

    // Revoke everything cart holds, through the running server's admin API.
    let (code, out) = meshroot(&[
        "revoke",
        "--addr",
        &admin,
        "--spiffe-id",
        CART,
        "--reason",
        "key-compromise",
        "--comment",
        "key found in a public bucket",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("revoked 1 certificate(s)"), "{out}");
    let after = std::fs::read_to_string(&crl).unwrap();
    assert_ne!(
        after, before,
        "the CRL file is refreshed before the command returns"
    );

    // OpenSSL: every CRL's signature verifies against its issuer; cart's leaf is revoked,
    // orders' is not.
    let chain_of = |(chain, _): &(String, String)| chain.clone();
    let cas: String = pem_blocks(&chain_of(&cart), "CERTIFICATE")[1..].concat()
        + &pem_blocks(&chain_of(&gateway_cert), "CERTIFICATE")[1..].concat();
    std::fs::write(dir.join("cas.pem"), &cas).unwrap();
    let all_cas = dir.join("all-cas.pem");
    std::fs::write(&all_cas, format!("{cas}{}", ca.root_pem())).unwrap();
    for (index, one) in pem_blocks(&after, "X509 CRL").iter().enumerate() {
        let path = dir.join(format!("crl-{index}.pem"));
        std::fs::write(&path, one).unwrap();
        let verified = Command::new("openssl")
            .args(["crl", "-noout", "-verify", "-in"])
            .arg(&path)
            .arg("-CAfile")
            .arg(&all_cas)
            .output()
            .unwrap();
        assert!(
            common::output_text(&verified).contains("verify OK"),
            "{}",
            common::output_text(&verified)
        );
    }
    let leaf = |name: &str, (chain, _): &(String, String)| {
        let path = dir.join(format!("{name}-leaf.pem"));
        std::fs::write(&path, &pem_blocks(chain, "CERTIFICATE")[0]).unwrap();
        path
    };
    let (cart_leaf, orders_leaf) = (leaf("cart", &cart), leaf("orders", &orders));
    let crl_check = |leaf: &Path| {
        Command::new("openssl")
            .args(["verify", "-crl_check_all", "-CAfile"])
            .arg(dir.join("root.pem"))
            .arg("-untrusted")
            .arg(dir.join("cas.pem"))
            .arg("-CRLfile")
            .arg(&crl)
            .arg(leaf)
            .output()
            .unwrap()
    };
    let refused = crl_check(&cart_leaf);
    assert!(
        !refused.status.success(),
        "{}",
        common::output_text(&refused)
    );
    assert!(
        common::output_text(&refused).contains("certificate revoked"),
        "{}",
        common::output_text(&refused)
    );
    let accepted = crl_check(&orders_leaf);
    assert!(
        accepted.status.success(),
        "{}",
        common::output_text(&accepted)
    );

    // Go's crypto/x509: signatures verify, cart's serial is listed, orders' is not.
    let go = go_crlcheck(&all_cas, &crl, &cart_leaf);
    assert!(go.status.success(), "{}", common::output_text(&go));
    assert!(
        common::output_text(&go).trim_end().ends_with("\nrevoked"),
        "{}",
        common::output_text(&go)
    );
    assert!(
        common::output_text(&go).contains("CN=meshroot root CA,O=meshroot: signature ok"),
        "{}",
        common::output_text(&go)
    );
    let go = go_crlcheck(&all_cas, &crl, &orders_leaf);
    assert!(
        common::output_text(&go).trim_end().ends_with("not revoked"),
        "{}",
        common::output_text(&go)
    );

    // Envoy: cart's certificate is refused on a new connection; orders' still passes.
    let before_refusal = seen.lock().unwrap().len();
    answers(sidecar_port, "/cart", 503).await;
    assert_eq!(get(sidecar_port, "/cart").await, 503);
    assert_eq!(get(sidecar_port, "/orders").await, 200);
    assert_eq!(
        seen.lock().unwrap().len(),
        before_refusal + 1,
        "only orders' request reached the upstream"
    );

    // The identity gets no new certificate, with its own denial reason.
    let status = server
        .call(agent_csr(CART), Some(ca.token("a", "shop", "cart")), 3600)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason_of(&server.record_of(&status)), "identity-revoked");

    // The revocation is a record: who, why, which serial; and cart's record says it is revoked.
    let (code, out) = meshroot(&[
        "audit",
        "list",
        "--addr",
        &admin,
        "--outcome",
        "revoked",
        "--format",
        "json",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("key-compromise") && out.contains("key found in a public bucket"),
        "{out}"
    );
    let (_, out) = meshroot(&["audit", "list", "--addr", &admin, "--revoked"]).await;
    assert!(out.contains(CART) && !out.contains(ORDERS), "{out}");
    // `audit show` of cart's certificate says when, why and by which record it was revoked.
    let cart_serial = serial_of(&cart_leaf);
    let (code, out) =
        meshroot(&["audit", "show", "--addr", &admin, "--serial", &cart_serial]).await;
    assert_eq!(code, 0, "{out}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["revocation"]["reason"], "key-compromise", "{out}");
    assert_eq!(
        shown["revocation"]["comment"],
        "key found in a public bucket"
    );
    let orders_serial = serial_of(&orders_leaf);
    let (_, out) = meshroot(&[
        "audit",
        "show",
        "--addr",
        &admin,
        "--serial",
        &orders_serial,
    ])
    .await;
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(shown.get("revocation").is_none(), "{out}");
    server.stop().await;
}

/// A certificate file's serial number, as `audit show --serial` takes it (hex).
fn serial_of(path: &Path) -> String {
    let text = openssl(&["x509", "-noout", "-serial", "-in", path.to_str().unwrap()]);
    text.trim().trim_start_matches("serial=").to_lowercase()
}

fn reason_of(record: &meshroot::domain::record::Record) -> String {
    match &record.outcome {
        meshroot::domain::record::Outcome::Denied(denied) => denied.reason.clone(),
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// Waits (bounded) until a GET through the sidecar answers `status`: Envoy applies a new
/// validation context (SDS, the CRL file moved in) asynchronously.
async fn answers(port: u16, path: &str, status: u16) {
    let what = format!("GET {path} answers {status}");
    common::wait_until(&what, std::time::Duration::from_secs(20), || async {
        match get(port, path).await {
            answer if answer == status => Ok(()),
            answer => Err(format!("it answered {answer}")),
        }
    })
    .await
}

#[tokio::test]
async fn bad_revocations_are_refused_plainly_and_a_lifted_block_lets_the_identity_renew() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let admin = server.server.admin_address().to_string();
    let cart = spiffe_id("shop", "cart");
    server.workload(&ca, MESH, &cart).await;

    // No filter at all: refused (usage), nothing recorded.
    let (code, out) = meshroot(&["revoke", "--addr", &admin]).await;
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("revoking every certificate is refused"),
        "{out}"
    );
    // A filter that matches nothing: said plainly, exit 0.
    let (code, out) = meshroot(&["revoke", "--addr", &admin, "--namespace", "nowhere"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("no unexpired certificate matches: nothing revoked"),
        "{out}"
    );
    // An unknown serial: says so.
    let (code, out) = meshroot(&["revoke", "--addr", &admin, "--serial", "0badc0de"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no unexpired certificate with serial 0badc0de"),
        "{out}"
    );
    // An unknown reason code.
    let (code, out) = meshroot(&[
        "revoke",
        "--addr",
        &admin,
        "--spiffe-id",
        &cart,
        "--reason",
        "bored",
    ])
    .await;
    assert_eq!(code, 64, "{out}");
    assert!(server
        .records()
        .iter()
        .all(|r| !matches!(r.outcome, meshroot::domain::record::Outcome::Revoked(_))));

    // A dry run changes nothing; then revoke, and the identity is refused a new certificate.
    let (code, out) = meshroot(&[
        "revoke",
        "--addr",
        &admin,
        "--spiffe-id",
        &cart,
        "--dry-run",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("would revoke 1 certificate(s)"), "{out}");
    server.workload(&ca, MESH, &cart).await;
    let (code, out) = meshroot(&["revoke", "--addr", &admin, "--spiffe-id", &cart]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("revoked 2 certificate(s)"), "{out}");
    let refused = server
        .call(agent_csr(&cart), Some(ca.token(MESH, "shop", "cart")), 3600)
        .await
        .unwrap_err();
    assert_eq!(reason_of(&server.record_of(&refused)), "identity-revoked");
    // Lifting the block lets it renew; the revoked certificates stay revoked.
    let (code, out) = meshroot(&["revoke", "--addr", &admin, "--unblock", &cart]).await;
    assert_eq!(code, 0, "{out}");
    server.workload(&ca, MESH, &cart).await;
    let (_, listed) = meshroot(&["audit", "list", "--addr", &admin, "--revoked", "--count"]).await;
    assert_eq!(listed.trim(), "2");
    server.stop().await;

    // On a stopped server's store: recorded there, and in force when it starts again.
    let config = ca.config_path();
    let offline = [
        "revoke",
        "--config",
        config.to_str().unwrap(),
        "--spiffe-id",
        &cart,
    ];
    let (code, out) = meshroot(&offline).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("revoked 1 certificate(s)"), "{out}");
    // The same revocation again: what is in force already is left out, nothing is recorded.
    let (code, out) = meshroot(&offline).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("nothing new: the 3 selected certificate(s) were revoked already"),
        "{out}"
    );
    let server = ca.start().await;
    let revocations = server
        .records()
        .into_iter()
        .filter(|r| matches!(r.outcome, meshroot::domain::record::Outcome::Revoked(_)))
        .count();
    assert_eq!(
        revocations, 3,
        "a revocation, an unblock, the offline revocation"
    );
    let refused = server
        .call(agent_csr(&cart), Some(ca.token(MESH, "shop", "cart")), 3600)
        .await
        .unwrap_err();
    assert_eq!(reason_of(&server.record_of(&refused)), "identity-revoked");
    server.stop().await;
}

#[tokio::test]
async fn crls_are_public_on_the_admin_port_and_leaves_name_where() {
    let ca = TestCa::new();
    ca.admin_on_tls(&["spiffe://cluster.local/ns/ops/sa/auditor"]);
    let url = "http://meshroot.istio-system.svc:15014/crl";
    ca.edit_config(|text| {
        text.edited(
            "[revocation]\n",
            &format!("[revocation]\ncrl_url = \"{url}\"\n"),
        )
    });
    let server = ca.start().await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], server.server.admin_address().port()));
    // Off loopback the audit API needs an allowed client certificate; /crl needs none.
    let (status, body) = crate::common::https_get(admin, &ca.root_pem(), "/crl", None).await;
    assert_eq!(status, 200, "{body}");
    let file = std::fs::read_to_string(ca.path().join("ca-crl.pem")).unwrap();
    assert!(
        body.ends_with(&file) || body.contains(&file),
        "GET /crl answers the file's bytes"
    );
    // Every workload leaf names it as its CRL distribution point.
    let chain = server.issue(&ca, "cart").await;
    let leaf = certificates(&chain[0]).remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let named: Vec<String> = parsed
        .extensions()
        .iter()
        .filter_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::CRLDistributionPoints(points) => Some(
                points
                    .points
                    .iter()
                    .filter_map(|p| match &p.distribution_point {
                        Some(x509_parser::extensions::DistributionPointName::FullName(names)) => {
                            Some(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                        }
                        _ => None,
                    })
                    .flatten()
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(named.len(), 1, "{named:?}");
    assert!(named[0].contains(url), "{named:?}");
    verify_chain(&chain, &ca.root_pem());
    server.stop().await;
}
