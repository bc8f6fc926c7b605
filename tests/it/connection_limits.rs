//! Connection limits (docs/hardening.md): silent sockets, silent TLS handshakes and peers
//! over their connection cap, oversized messages and unfinished bodies are bounded and closed,
//! while a fresh client and the admin probes are still served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::*;
use tonic::Code;

/// Opens `count` TCP connections to `target` that never send a byte, spread over source
/// addresses 127.0.0.2 to 127.0.0.5 (loopback, so each peer stays under its cap).
async fn silent_sockets(target: std::net::SocketAddr, count: usize) -> Vec<tokio::net::TcpStream> {
    let mut sockets = Vec::with_capacity(count);
    for last in 2..6 {
        sockets.extend(silent_sockets_from(target, [127, 0, 0, last], count / 4).await);
    }
    sockets
}

/// A TLS client to `address` that completes the handshake (ALPN h2) and then sends nothing.
async fn tls_then_silence(
    address: std::net::SocketAddr,
    root_pem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for root in certificates(root_pem) {
        roots.add(root).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Issue 14, D3: silent sockets once held every handshake slot for 10 s each, so a real client
/// waited behind them, and the admin port's probes timed out.
#[tokio::test]
async fn a_fresh_client_and_the_admin_probes_are_served_beside_hundreds_of_silent_sockets() {
    let ca = TestCa::new();
    ca.admin_on_tls(&["spiffe://cluster.local/ns/ops/sa/auditor"]);
    let server = ca.start().await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], server.server.admin_address().port()));
    let _csr_silent = silent_sockets(server.server.local_address(), 600).await;
    let _admin_silent = silent_sockets(admin, 600).await;

    let chain = tokio::time::timeout(Duration::from_secs(5), server.issue(&ca, "fresh"))
        .await
        .expect("a fresh client is served while silent sockets are open");
    verify_chain(&chain, &ca.root_pem());

    let probe = async {
        let channel = meshroot::edge::client::connect(&meshroot::edge::client::Target {
            address: admin.to_string(),
            root_pem: ca.root_pem(),
            server_name: "localhost".into(),
            client_identity: None,
        })
        .await
        .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
    };
    tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .expect("the admin port answers while silent sockets are open")
        .unwrap();
    server.stop().await;
}

/// Issue 14, D8: a connection that finishes TLS but sends no HTTP/2 preface is closed after
/// `preface_timeout`; connections beyond a peer's cap are closed at once while another peer is
/// still served.
#[tokio::test]
async fn silent_tls_connections_are_closed_and_each_peer_is_capped() {
    use tokio::io::AsyncReadExt as _;
    let ca = TestCa::new();
    ca.edit_config(|text| {
        format!("{text}\n[connections]\npreface_timeout = \"200ms\"\nmax_per_peer = 3\n")
    });
    let server = ca.start().await;
    let address = server.server.local_address();

    // The server speaks first (its SETTINGS frame), then closes the connection.
    let mut silent = tls_then_silence(address, &ca.root_pem()).await;
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut received))
        .await
        .expect("the server closes a connection that sends no preface")
        .ok();
    let mut byte = [0u8; 1];

    // Three silent sockets from 127.0.0.2 fill its cap; a fourth is closed at once.
    let _held = silent_sockets_from(address, [127, 0, 0, 2], 3).await;
    let mut over = silent_sockets_from(address, [127, 0, 0, 2], 1)
        .await
        .remove(0);
    let read = tokio::time::timeout(Duration::from_secs(5), over.read(&mut byte))
        .await
        .expect("a connection over the peer's cap is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // 127.0.0.1 is another peer.
    let chain = server.issue(&ca, "other-peer").await;
    verify_chain(&chain, &ca.root_pem());
    server.stop().await;
}

async fn silent_sockets_from(
    target: std::net::SocketAddr,
    source: [u8; 4],
    count: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut sockets = Vec::new();
    for _ in 0..count {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        sockets.push(socket.connect(target).await.unwrap());
    }
    sockets
}

/// Issue 14, D4: a request message over `max_message_bytes` is refused from its length prefix,
/// before its body is buffered.
#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_before_it_is_read() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let csr = "A".repeat(70 * 1024);
    let status = server
        .call(csr, Some(ca.token(MESH, "shop", "cart")), 0)
        .await
        .expect_err("over the 64 KiB message limit");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    server.stop().await;
}

/// D4: one unauthenticated connection opens 201 CreateCertificate streams, each announcing a
/// 4,000,000-byte message and sending it without end. The server buffers no more than its
/// HTTP/2 windows allow, and refuses each message from its length prefix: the attacker gets
/// at most a few hundred KiB accepted in all (before the limits: hundreds of MiB, held after
/// the connection closed).
#[tokio::test]
async fn unfinished_bodies_on_many_streams_are_bounded_by_the_windows_and_refused() {
    use http_body_util::StreamBody;
    use hyper::body::{Bytes, Frame};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let ca = TestCa::new();
    let server = ca.start().await;
    let tls = tls_then_silence(server.server.local_address(), &ca.root_pem()).await;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut answers = Vec::new();
    for _ in 0..201 {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut prefix = vec![0u8];
            prefix.extend_from_slice(&4_000_000u32.to_be_bytes());
            let mut chunk = prefix;
            loop {
                let size = chunk.len();
                if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                    return;
                }
                accepted.fetch_add(size, Ordering::SeqCst);
                chunk = vec![b'A'; 16 * 1024];
            }
        });
        let request = hyper::Request::post(format!(
            "https://localhost:{}/istio.v1.auth.IstioCertificateService/CreateCertificate",
            server.server.local_address().port()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
        let mut sender = sender.clone();
        answers.push(tokio::spawn(async move {
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                Err(error) => return Some(format!("error: {error:?}")),
            };
            response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok().map(str::to_owned))
                .or_else(|| Some(format!("{response:?}")))
        }));
    }
    // Every stream gets its answer: OUT_OF_RANGE (11), from the length prefix alone, or, for
    // streams opened beyond max_streams before the client saw the server's settings,
    // REFUSED_STREAM.
    let (mut out_of_range, mut over_stream_cap) = (0, 0);
    for answer in answers {
        let status = tokio::time::timeout(Duration::from_secs(20), answer)
            .await
            .expect("every stream is answered")
            .unwrap()
            .unwrap_or_default();
        match status.as_str() {
            "11" => out_of_range += 1,
            other if other.contains("REFUSED_STREAM") => over_stream_cap += 1,
            other => panic!("unexpected answer: {other}"),
        }
    }
    assert_eq!(out_of_range + over_stream_cap, 201);
    assert!(out_of_range >= 32, "{out_of_range} answered OUT_OF_RANGE");
    // What the server let the attacker send, cumulated over the whole attack (read and thrown
    // away as each stream was refused): at most one stream window (64 KiB) per stream, plus the
    // two 16 KiB chunks each sender task counts as sent once the client library took them,
    // about 19 MiB for 201 streams; at any moment no more than the connection window (256 KiB)
    // is in flight. Before the limits, the server took and buffered ~800 MB.
    let accepted = accepted.load(Ordering::SeqCst);
    assert!(
        accepted <= 201 * (64 + 2 * 16) * 1024,
        "{accepted} bytes of unfinished bodies were taken from the attacker"
    );
    server.stop().await;
}
