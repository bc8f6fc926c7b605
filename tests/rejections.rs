//! Every refusal gets the right gRPC code, a generic message with the request id (no internal
//! detail), and a durable denial record with its own reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use meshroot::client::{build_csr, CsrShape, CsrSubject, San};
use meshroot::record::Outcome;
use tonic::Code;

/// Sends the request and checks the code, the recorded reason, and that the message does not
/// echo the recorded detail.
async fn assert_refused(
    server: &TestServer,
    csr: String,
    token: Option<String>,
    code: Code,
    reason: &str,
) {
    let status = server
        .call(csr, token, 0)
        .await
        .expect_err("must be refused");
    assert_eq!(status.code(), code, "{}", status.message());
    let record = server.record_of(&status);
    let Outcome::Denied(denial) = &record.outcome else {
        panic!("expected a denial record, got {record:?}")
    };
    assert_eq!(denial.reason, reason);
    assert!(!denial.detail.is_empty());
    assert!(
        !status.message().contains(&denial.detail),
        "the client must not see the detail: {}",
        status.message()
    );
    assert!(status.message().contains(&record.request_id));
    assert_eq!(record.caller.cluster_id, "Kubernetes");
}

async fn setup() -> (TestCa, TestServer) {
    let ca = TestCa::new();
    let server = ca.start().await;
    (ca, server)
}

fn cart() -> String {
    spiffe_id("shop", "cart")
}

#[tokio::test]
async fn refuses_request_without_token() {
    let (_ca, server) = setup().await;
    assert_refused(
        &server,
        agent_csr(&cart()),
        None,
        Code::Unauthenticated,
        "missing-credentials",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn refuses_token_with_a_bad_signature() {
    let (ca, server) = setup().await;
    let token = ca.token(MESH, "shop", "cart");
    // Change one character in the middle of the signature (every bit there is signature data;
    // the last character also holds padding bits, which would make the token malformed).
    let at = token.rfind('.').unwrap() + 10;
    let replacement = if &token[at..=at] == "A" { "Q" } else { "A" };
    let token = format!("{}{replacement}{}", &token[..at], &token[at + 1..]);
    assert_refused(
        &server,
        agent_csr(&cart()),
        Some(token),
        Code::Unauthenticated,
        "token-signature-invalid",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn refuses_expired_token() {
    let (ca, server) = setup().await;
    let token = ca.token_with(MESH, "shop", "cart", |spec| spec.issued_at -= 7200);
    assert_refused(
        &server,
        agent_csr(&cart()),
        Some(token),
        Code::Unauthenticated,
        "token-expired",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn refuses_token_for_another_audience() {
    let (ca, server) = setup().await;
    let token = ca.token_with(MESH, "shop", "cart", |spec| {
        spec.audiences = vec!["kubernetes".into()]
    });
    assert_refused(
        &server,
        agent_csr(&cart()),
        Some(token),
        Code::Unauthenticated,
        "token-audience-mismatch",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn refuses_token_from_an_unknown_issuer() {
    let (ca, server) = setup().await;
    let token = ca.token_with(MESH, "shop", "cart", |spec| {
        spec.issuer = "https://elsewhere".into()
    });
    assert_refused(
        &server,
        agent_csr(&cart()),
        Some(token),
        Code::Unauthenticated,
        "token-issuer-unknown",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn refuses_malformed_authorization_header() {
    let (_ca, server) = setup().await;
    let channel = meshroot::client::connect(&server.target("localhost"))
        .await
        .unwrap();
    let mut request = tonic::Request::new(meshroot::pb::istio::IstioCertificateRequest {
        csr: agent_csr(&cart()),
        validity_duration: 0,
        metadata: None,
    });
    request
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    request
        .metadata_mut()
        .insert("clusterid", "Kubernetes".parse().unwrap());
    let status =
        meshroot::pb::istio::istio_certificate_service_client::IstioCertificateServiceClient::new(
            channel,
        )
        .create_certificate(request)
        .await
        .expect_err("must be refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    let Outcome::Denied(denial) = server.record_of(&status).outcome else {
        panic!()
    };
    assert_eq!(denial.reason, "authorization-header-malformed");
    server.stop().await;
}

#[tokio::test]
async fn rejects_csr_whose_uri_san_names_another_service_account() {
    let (ca, server) = setup().await;
    let token = ca.token(MESH, "shop", "cart");
    assert_refused(
        &server,
        agent_csr(&spiffe_id("shop", "admin")),
        Some(token),
        Code::Unauthenticated,
        "identity-mismatch",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn rejects_csr_for_another_trust_domain() {
    let (ca, server) = setup().await;
    let token = ca.token(MESH, "shop", "cart");
    let csr = agent_csr("spiffe://example.com/ns/shop/sa/cart");
    assert_refused(
        &server,
        csr,
        Some(token),
        Code::Unauthenticated,
        "trust-domain-mismatch",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn rejects_csr_with_a_dns_san() {
    let (ca, server) = setup().await;
    let mut shape = CsrShape::istio_agent(&cart());
    shape.sans.push(San::Dns("cart.shop.svc".into()));
    let csr = build_csr(rsa_key(), &shape).unwrap();
    assert_refused(
        &server,
        csr,
        Some(ca.token(MESH, "shop", "cart")),
        Code::InvalidArgument,
        "csr-dns-san",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn rejects_csr_with_a_common_name() {
    let (ca, server) = setup().await;
    let mut shape = CsrShape::istio_agent(&cart());
    shape.subject = CsrSubject::CommonName("cart".into());
    let csr = build_csr(rsa_key(), &shape).unwrap();
    assert_refused(
        &server,
        csr,
        Some(ca.token(MESH, "shop", "cart")),
        Code::InvalidArgument,
        "csr-subject-not-allowed",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn rejects_csr_asking_for_a_ca_certificate() {
    let (ca, server) = setup().await;
    let mut shape = CsrShape::ztunnel(&cart());
    // BasicConstraints { cA: TRUE }, critical.
    shape
        .extra_extensions
        .push((vec![2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff], true));
    let csr = build_csr(&p256_key(), &shape).unwrap();
    assert_refused(
        &server,
        csr,
        Some(ca.token(MESH, "shop", "cart")),
        Code::InvalidArgument,
        "csr-requests-ca",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn rejects_csr_with_an_unknown_extension() {
    let (ca, server) = setup().await;
    let mut shape = CsrShape::ztunnel(&cart());
    shape
        .extra_extensions
        .push((vec![1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00], false));
    let csr = build_csr(&p256_key(), &shape).unwrap();
    assert_refused(
        &server,
        csr,
        Some(ca.token(MESH, "shop", "cart")),
        Code::InvalidArgument,
        "csr-unknown-extension",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn rejects_csr_without_exactly_one_uri_san() {
    let (ca, server) = setup().await;
    let mut shape = CsrShape::ztunnel(&cart());
    shape.sans.push(San::Uri(spiffe_id("shop", "other")));
    let csr = build_csr(&p256_key(), &shape).unwrap();
    assert_refused(
        &server,
        csr,
        Some(ca.token(MESH, "shop", "cart")),
        Code::InvalidArgument,
        "csr-uri-san-count",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn rejects_csr_with_a_bad_signature() {
    let (ca, server) = setup().await;
    let pem = ztunnel_csr(&cart());
    let der =
        rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
    let mut bytes = der.as_ref().to_vec();
    // The signature is the last field: flip a bit near the end.
    let at = bytes.len() - 3;
    bytes[at] ^= 0x01;
    let tampered = meshroot::keys::pem_encode("CERTIFICATE REQUEST", &bytes);
    assert_refused(
        &server,
        tampered,
        Some(ca.token(MESH, "shop", "cart")),
        Code::InvalidArgument,
        "csr-signature-invalid",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn rejects_garbage_pem() {
    let (ca, server) = setup().await;
    assert_refused(
        &server,
        "not a csr".into(),
        Some(ca.token(MESH, "shop", "cart")),
        Code::InvalidArgument,
        "csr-pem-invalid",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn rejects_rsa_1024_key_from_an_openssl_csr() {
    let (ca, server) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let csr = openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-subj",
        "/O=",
        "-addext",
        &format!("subjectAltName=critical,URI:{}", cart()),
    ]);
    assert!(csr.contains("BEGIN CERTIFICATE REQUEST"));
    assert_refused(
        &server,
        csr,
        Some(ca.token(MESH, "shop", "cart")),
        Code::InvalidArgument,
        "csr-key-size",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn accepts_an_openssl_made_agent_shaped_csr() {
    // A second, independent CSR encoder: OpenSSL with istio-agent's shape.
    let (ca, server) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let csr = openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-subj",
        "/O=",
        "-addext",
        &format!("subjectAltName=critical,URI:{}", cart()),
    ]);
    let response = server
        .call(csr, Some(ca.token(MESH, "shop", "cart")), 0)
        .await
        .unwrap();
    verify_chain(&response.cert_chain, &ca.root_pem());
    server.stop().await;
}

#[tokio::test]
async fn rejects_oversized_csr_before_parsing() {
    let (ca, server) = setup().await;
    let huge = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        "QUFB".repeat(17 * 1024)
    );
    assert_refused(
        &server,
        huge,
        Some(ca.token(MESH, "shop", "cart")),
        Code::InvalidArgument,
        "csr-too-large",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn refuses_impersonation_until_node_authentication_exists() {
    let (ca, server) = setup().await;
    let channel = meshroot::client::connect(&server.target("localhost"))
        .await
        .unwrap();
    let mut request = tonic::Request::new(meshroot::pb::istio::IstioCertificateRequest {
        csr: ztunnel_csr(&cart()),
        validity_duration: 0,
        metadata: Some(prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(cart())),
                },
            )]
            .into_iter()
            .collect(),
        }),
    });
    let token = ca.token(MESH, "istio-system", "ztunnel");
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let status =
        meshroot::pb::istio::istio_certificate_service_client::IstioCertificateServiceClient::new(
            channel,
        )
        .create_certificate(request)
        .await
        .expect_err("must be refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    let record = server.record_of(&status);
    let Outcome::Denied(denial) = &record.outcome else {
        panic!()
    };
    assert_eq!(denial.reason, "impersonation-not-allowed");
    assert_eq!(
        record.caller.subject,
        "system:serviceaccount:istio-system:ztunnel"
    );
    server.stop().await;
}

#[tokio::test]
async fn ignores_unknown_headers() {
    let (ca, server) = setup().await;
    let channel = meshroot::client::connect(&server.target("localhost"))
        .await
        .unwrap();
    let mut request = tonic::Request::new(meshroot::pb::istio::IstioCertificateRequest {
        csr: ztunnel_csr(&cart()),
        validity_duration: 3600,
        metadata: None,
    });
    let token = ca.token(MESH, "shop", "cart");
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
        .metadata_mut()
        .insert("x-custom-ca-header", "anything".parse().unwrap());
    let response =
        meshroot::pb::istio::istio_certificate_service_client::IstioCertificateServiceClient::new(
            channel,
        )
        .create_certificate(request)
        .await
        .unwrap();
    verify_chain(&response.into_inner().cert_chain, &ca.root_pem());
    server.stop().await;
}

use rustls_pki_types::pem::PemObject as _;
