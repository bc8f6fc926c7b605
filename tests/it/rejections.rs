//! Every refusal gets the right gRPC code, a generic message with the request id (no internal
//! detail), and a durable denial record with its own reason. Connection limits are in
//! `connection_limits.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::*;
use meshroot::domain::record::{Outcome, Record};
use meshroot::edge::client::{build_csr, CsrShape, CsrSubject, San};
use meshroot::pb::istio::IstioCertificateRequest;
use rustls_pki_types::pem::PemObject as _;
use tonic::Code;

/// Starts a CA, sends the CSR and token that `request` makes (istio-agent metadata), checks the
/// refusal, and stops.
async fn check_refusal(
    request: impl FnOnce(&TestCa) -> (String, Option<String>),
    code: Code,
    reason: &str,
) {
    let ca = TestCa::new();
    let server = ca.start().await;
    let (csr, token) = request(&ca);
    let status = server
        .call(csr, token, 0)
        .await
        .expect_err("must be refused");
    let record = common::assert_refused(&server, &status, code, reason);
    assert_eq!(record.caller.cluster_id, "Kubernetes");
    if reason.starts_with("token-") {
        assert_eq!(
            record.caller.authenticator, "jwt",
            "the refusing authenticator is recorded"
        );
    }
    server.stop().await;
}

fn cart() -> String {
    spiffe_id("shop", "cart")
}

fn cart_token(ca: &TestCa) -> Option<String> {
    Some(ca.token(MESH, "shop", "cart"))
}

fn shaped(key: &rcgen::KeyPair, shape: impl FnOnce(&mut CsrShape)) -> String {
    let mut csr = CsrShape::istio_agent(&cart());
    shape(&mut csr);
    build_csr(key, &csr).unwrap()
}

#[tokio::test]
async fn refuses_request_without_token() {
    check_refusal(
        |_| (agent_csr(&cart()), None),
        Code::Unauthenticated,
        "missing-credentials",
    )
    .await;
}

#[tokio::test]
async fn refuses_token_with_a_bad_signature() {
    let tamper = |ca: &TestCa| {
        let token = ca.token(MESH, "shop", "cart");
        // Change one character in the middle of the signature (every bit there is signature
        // data; the last character also holds padding bits, which would make it malformed).
        let at = token.rfind('.').unwrap() + 10;
        let replacement = if &token[at..=at] == "A" { "Q" } else { "A" };
        let token = format!("{}{replacement}{}", &token[..at], &token[at + 1..]);
        (agent_csr(&cart()), Some(token))
    };
    check_refusal(tamper, Code::Unauthenticated, "token-signature-invalid").await;
}

#[tokio::test]
async fn refuses_expired_token() {
    let expired = |ca: &TestCa| {
        let token = ca.token_with(MESH, "shop", "cart", |spec| spec.issued_at -= 7200);
        (agent_csr(&cart()), Some(token))
    };
    check_refusal(expired, Code::Unauthenticated, "token-expired").await;
}

#[tokio::test]
async fn refuses_token_for_another_audience() {
    let other_audience = |ca: &TestCa| {
        let token = ca.token_with(MESH, "shop", "cart", |spec| {
            spec.audiences = vec!["kubernetes".into()]
        });
        (agent_csr(&cart()), Some(token))
    };
    check_refusal(
        other_audience,
        Code::Unauthenticated,
        "token-audience-mismatch",
    )
    .await;
}

#[tokio::test]
async fn refuses_token_from_an_unknown_issuer() {
    let unknown_issuer = |ca: &TestCa| {
        let token = ca.token_with(MESH, "shop", "cart", |spec| {
            spec.issuer = "https://elsewhere".into()
        });
        (agent_csr(&cart()), Some(token))
    };
    check_refusal(
        unknown_issuer,
        Code::Unauthenticated,
        "token-issuer-unknown",
    )
    .await;
}

#[tokio::test]
async fn rejects_csr_whose_uri_san_names_another_service_account() {
    let other_account = |ca: &TestCa| (agent_csr(&spiffe_id("shop", "admin")), cart_token(ca));
    check_refusal(other_account, Code::Unauthenticated, "identity-mismatch").await;
}

#[tokio::test]
async fn rejects_csr_for_another_trust_domain() {
    let other_domain = |ca: &TestCa| {
        (
            agent_csr("spiffe://example.com/ns/shop/sa/cart"),
            cart_token(ca),
        )
    };
    check_refusal(other_domain, Code::Unauthenticated, "trust-domain-mismatch").await;
}

#[tokio::test]
async fn rejects_csr_with_a_dns_san() {
    let dns = |ca: &TestCa| {
        let csr = shaped(rsa_key(), |s| s.sans.push(San::Dns("cart.shop.svc".into())));
        (csr, cart_token(ca))
    };
    check_refusal(dns, Code::InvalidArgument, "csr-dns-san").await;
}

#[tokio::test]
async fn rejects_csr_with_a_common_name() {
    let common_name = |ca: &TestCa| {
        let csr = shaped(rsa_key(), |s| {
            s.subject = CsrSubject::CommonName("cart".into())
        });
        (csr, cart_token(ca))
    };
    check_refusal(
        common_name,
        Code::InvalidArgument,
        "csr-subject-not-allowed",
    )
    .await;
}

#[tokio::test]
async fn rejects_csr_asking_for_a_ca_certificate() {
    let ca_request = |ca: &TestCa| {
        // BasicConstraints { cA: TRUE }, critical.
        let basic_constraints = (vec![2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff], true);
        let csr = shaped(&p256_key(), |s| s.extra_extensions.push(basic_constraints));
        (csr, cart_token(ca))
    };
    check_refusal(ca_request, Code::InvalidArgument, "csr-requests-ca").await;
}

#[tokio::test]
async fn rejects_csr_with_an_unknown_extension() {
    let unknown = |ca: &TestCa| {
        let private_oid = (vec![1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00], false);
        let csr = shaped(&p256_key(), |s| s.extra_extensions.push(private_oid));
        (csr, cart_token(ca))
    };
    check_refusal(unknown, Code::InvalidArgument, "csr-unknown-extension").await;
}

#[tokio::test]
async fn rejects_csr_without_exactly_one_uri_san() {
    let two_uris = |ca: &TestCa| {
        let csr = shaped(&p256_key(), |s| {
            s.sans.push(San::Uri(spiffe_id("shop", "other")))
        });
        (csr, cart_token(ca))
    };
    check_refusal(two_uris, Code::InvalidArgument, "csr-uri-san-count").await;
}

#[tokio::test]
async fn rejects_csr_with_a_bad_signature() {
    let tampered = |ca: &TestCa| {
        let pem = ztunnel_csr(&cart());
        let der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
        let mut bytes = der.as_ref().to_vec();
        // The signature is the last field: flip a bit near the end.
        let at = bytes.len() - 3;
        bytes[at] ^= 0x01;
        let csr = meshroot::domain::keys::pem_encode("CERTIFICATE REQUEST", &bytes);
        (csr, cart_token(ca))
    };
    check_refusal(tampered, Code::InvalidArgument, "csr-signature-invalid").await;
}

#[tokio::test]
async fn rejects_garbage_pem() {
    let garbage = |ca: &TestCa| ("not a csr".to_owned(), cart_token(ca));
    check_refusal(garbage, Code::InvalidArgument, "csr-pem-invalid").await;
}

#[tokio::test]
async fn rejects_oversized_csr_before_parsing() {
    let huge = |ca: &TestCa| {
        // Over the CSR limit (32 KiB), under the message limit (64 KiB).
        let body = "QUFB".repeat(9 * 1024);
        let csr = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"
        );
        (csr, cart_token(ca))
    };
    check_refusal(huge, Code::InvalidArgument, "csr-too-large").await;
}

/// A CSR made by OpenSSL with istio-agent's shape (`O=`, critical URI SAN) and the given key.
fn openssl_agent_csr(new_key: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let san = format!("subjectAltName=critical,URI:{}", cart());
    let mut args = vec!["req", "-new"];
    args.extend_from_slice(new_key);
    args.extend_from_slice(&[
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-subj",
        "/O=",
        "-addext",
        &san,
    ]);
    let csr = openssl(&args);
    assert!(csr.contains("BEGIN CERTIFICATE REQUEST"));
    csr
}

#[tokio::test]
async fn rejects_rsa_1024_key_from_an_openssl_csr() {
    let weak = |ca: &TestCa| (openssl_agent_csr(&["-newkey", "rsa:1024"]), cart_token(ca));
    check_refusal(weak, Code::InvalidArgument, "csr-key-size").await;
}

#[tokio::test]
async fn accepts_an_openssl_made_agent_shaped_csr() {
    // A second, independent CSR encoder.
    let ca = TestCa::new();
    let csr = openssl_agent_csr(&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let chain = ca.issue_once(csr, "shop", "cart").await;
    verify_chain(&chain, &ca.root_pem());
}

fn bearer(token: String) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

#[tokio::test]
async fn refuses_malformed_authorization_header() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let body = IstioCertificateRequest {
        csr: agent_csr(&cart()),
        ..IstioCertificateRequest::default()
    };
    let headers = [
        ("authorization", "Basic dXNlcjpwYXNz".to_owned()),
        ("clusterid", "Kubernetes".to_owned()),
    ];
    let status = server.call_raw(body, &headers).await.expect_err("refused");
    common::assert_refused(
        &server,
        &status,
        Code::Unauthenticated,
        "authorization-header-malformed",
    );
    server.stop().await;
}

#[tokio::test]
async fn refuses_impersonation_by_a_caller_whose_token_names_no_pod() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let impersonated = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(cart())),
    };
    let body = IstioCertificateRequest {
        csr: ztunnel_csr(&cart()),
        validity_duration: 0,
        metadata: Some(prost_types::Struct {
            fields: [("ImpersonatedIdentity".to_owned(), impersonated)]
                .into_iter()
                .collect(),
        }),
    };
    let headers = [bearer(ca.token(MESH, "istio-system", "ztunnel"))];
    let status = server.call_raw(body, &headers).await.expect_err("refused");
    let record = common::assert_refused(
        &server,
        &status,
        Code::Unauthenticated,
        "impersonation-caller-pod-unknown",
    );
    assert_eq!(
        record.caller.subject,
        "system:serviceaccount:istio-system:ztunnel"
    );
    server.stop().await;
}

#[tokio::test]
async fn ignores_unknown_headers() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let body = IstioCertificateRequest {
        csr: ztunnel_csr(&cart()),
        validity_duration: 3600,
        metadata: None,
    };
    let headers = [
        bearer(ca.token(MESH, "shop", "cart")),
        ("x-custom-ca-header", "anything".to_owned()),
    ];
    let response = server.call_raw(body, &headers).await.unwrap();
    verify_chain(&response.cert_chain, &ca.root_pem());
    server.stop().await;
}

#[tokio::test]
async fn a_caller_over_its_rate_limit_gets_resource_exhausted_and_others_are_served() {
    let ca = TestCa::new();
    ca.edit_config(|config| {
        format!(
            "{config}\n[rate_limit]\nper_caller = 0.5\ncaller_burst = 2\nper_namespace = 100.0\n"
        )
    });
    let server = ca.start().await;
    let busy = ca.token(MESH, "default", "busy");
    for _ in 0..2 {
        server
            .call(
                agent_csr(&spiffe_id("default", "busy")),
                Some(busy.clone()),
                0,
            )
            .await
            .unwrap();
    }
    let records_before = server.records().len();
    let status = server
        .call(
            agent_csr(&spiffe_id("default", "busy")),
            Some(busy.clone()),
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status
        .message()
        .contains("rate limit exceeded for this caller; retry"));
    // Retryable and not a decision about the request: nothing recorded.
    assert_eq!(server.records().len(), records_before);
    // Another caller has its own budget.
    server
        .call(
            agent_csr(&spiffe_id("default", "calm")),
            Some(ca.token(MESH, "default", "calm")),
            0,
        )
        .await
        .unwrap();
    server.stop().await;
}

/// D10: what a client put in its CSR cannot forge a log line or a record: a subject and a URI
/// SAN carrying newlines are recorded (and logged, from the same text) escaped, on one line.
#[tokio::test]
async fn a_csr_carrying_newlines_is_recorded_escaped_on_one_line() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let forged = "x\nFAKE LOG LINE level=ERROR\r";
    let csr = shaped(rsa_key(), |s| {
        s.subject = CsrSubject::CommonName(forged.into());
    });
    let status = server
        .call(csr, cart_token(&ca), 0)
        .await
        .expect_err("a common name is refused");
    let record = common::assert_refused(
        &server,
        &status,
        Code::InvalidArgument,
        "csr-subject-not-allowed",
    );
    let Outcome::Denied(denial) = &record.outcome else {
        unreachable!()
    };
    assert!(
        denial.detail.contains(r"x\nFAKE LOG LINE level=ERROR\r"),
        "{}",
        denial.detail
    );
    assert!(!denial.detail.contains(['\n', '\r']), "{:?}", denial.detail);

    let uri = format!("{}\nFAKE", cart());
    let csr = shaped(rsa_key(), |s| s.sans = vec![San::Uri(uri.clone())]);
    let status = server
        .call(csr, cart_token(&ca), 0)
        .await
        .expect_err("a URI SAN with a newline is not a SPIFFE ID");
    let record = common::assert_refused(
        &server,
        &status,
        Code::InvalidArgument,
        "csr-uri-san-invalid",
    );
    let Outcome::Denied(denial) = &record.outcome else {
        unreachable!()
    };
    assert_eq!(denial.requested_spiffe_id, format!(r"{}\nFAKE", cart()));
    assert!(!denial.detail.contains('\n'), "{:?}", denial.detail);
    server.stop().await;
}

/// D5: header values a client chooses are bounded in the record, with the original's length
/// and hash kept.
#[tokio::test]
async fn an_oversized_cluster_id_is_recorded_truncated_with_its_length_and_hash() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let cluster_id = "k".repeat(12_000);
    let status = server
        .call_with(agent_csr(&cart()), None, 0, &cluster_id, None)
        .await
        .expect_err("no token");
    let record = common::assert_refused(
        &server,
        &status,
        Code::Unauthenticated,
        "missing-credentials",
    );
    let recorded = &record.caller.cluster_id;
    assert!(recorded.len() <= meshroot::domain::record::CLIENT_VALUE_BYTES);
    let hash = meshroot::domain::digest::hex(
        ring::digest::digest(&ring::digest::SHA256, cluster_id.as_bytes()).as_ref(),
    );
    assert!(recorded.starts_with("kkkk"));
    assert!(
        recorded.ends_with(&format!("[12000 bytes, sha256:{hash}]")),
        "{recorded}"
    );
    server.stop().await;
}

/// What a record costs the store: its key, leaf header and encoding, its leaf hash, and an
/// index entry (key and sequence number) per index it is in.
fn stored_bytes(record: &Record) -> usize {
    let encoded = meshroot::adapters::store::encode(record).len();
    let index: usize = meshroot::domain::audit::IndexKeys::of(record)
        .entries
        .iter()
        .map(|(_, key)| key.len() + 8)
        .sum();
    8 + meshroot::domain::audit::LEAF_HEADER_LEN + encoded + 32 + index
}

/// D5: unauthenticated refusals beyond the per-peer rate are not stored one by one; the audit
/// trail keeps them as a summary record (peer, reason, count, first and last time), and no
/// refused request costs more than 2 KB of store, whatever it carried.
#[tokio::test]
async fn an_unauthenticated_flood_is_recorded_within_its_rate_and_then_summarized() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let before = server.records().len();
    let huge = "k".repeat(12_000);
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let status = server
            .call_with(agent_csr(&cart()), None, 0, &huge, None)
            .await
            .expect_err("no token");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "every one is refused alike"
        );
        statuses.push(status);
    }
    let records = server.records();
    let individual = &records[before..];
    // The default allowance per peer: a burst of 10.
    assert_eq!(individual.len(), 10, "{individual:?}");
    for record in individual {
        let stored = stored_bytes(record);
        assert!(stored <= 2048, "{stored} bytes of store for one refusal");
    }

    assert_eq!(server.server.record_refusal_summaries().await.unwrap(), 1);
    let records = server.records();
    let summary = records.last().unwrap();
    let Outcome::Denied(denial) = &summary.outcome else {
        panic!("{summary:?}")
    };
    assert_eq!(denial.reason, "missing-credentials");
    assert_eq!(summary.caller.peer_address, "127.0.0.1");
    let counted = denial.summary.as_ref().expect("a summary record");
    assert_eq!(counted.count, 30);
    // docs/hardening.md's bound on store growth counts a summary as at most 0.5 KB.
    let stored = stored_bytes(summary);
    assert!(stored <= 512, "{stored} bytes of store for a summary");
    assert!(counted.first_at <= counted.last_at);
    // Nothing more to summarize until more refusals come.
    assert_eq!(server.server.record_refusal_summaries().await.unwrap(), 0);
    server.stop().await;
}
