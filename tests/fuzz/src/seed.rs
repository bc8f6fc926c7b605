//! Writes the seed corpus: one well-formed input per shape each target reads (real clients'
//! CSRs, a projected service-account token, ztunnel's metadata, an audit filter with its page
//! token, issued and denied records). `./run` calls it before fuzzing; libFuzzer mutates from
//! there. Usage: seed CORPUS_DIR.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use meshroot::domain::audit::{PageToken, Position, Query};
use meshroot::adapters::authn::jwt::DevTokenClaims;
use meshroot::adapters::authn::PodRef;
use meshroot::edge::client::{build_csr, CsrShape};
use meshroot::pb::istio::IstioCertificateRequest;
use meshroot::domain::record::{CallerRecord, DenialRecord, IssuedRecord, Outcome, Record, RefusalSummary};
use prost::Message as _;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = dir.join(target);
    if let Err(error) = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(format!("seed-{name}")), bytes))
    {
        panic!("{}: {error}", dir.display());
    }
}

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        panic!("usage: seed CORPUS_DIR");
    };
    let dir = Path::new(&dir);
    let id = "spiffe://cluster.local/ns/shop/sa/cart";

    // CSRs as istio-agent (RSA 2048, O=, critical SAN) and ztunnel (P-256, empty subject) send.
    let key = rcgen_key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let ztunnel = build_csr(&key, &CsrShape::ztunnel(id)).unwrap_or_else(|e| panic!("{e}"));
    let agent = build_csr(&key, &CsrShape::istio_agent(id)).unwrap_or_else(|e| panic!("{e}"));
    let mut pem = vec![0u8];
    pem.extend_from_slice(agent.as_bytes());
    write(dir, "csr", "agent-pem", &pem);
    write(dir, "csr", "ztunnel-der", &pem_to_der(&ztunnel));

    // A projected token, bound to a pod and a node, valid at the fuzzers' "now".
    let pod = PodRef {
        name: "cart-7d9f".into(),
        uid: "0b6c6f0e".into(),
        node: "node-1".into(),
    };
    for (name, bound_pod) in [("plain", None), ("projected", Some(&pod))] {
        let token = meshroot_fuzz::signer()
            .sign(&DevTokenClaims {
                issuer: meshroot_fuzz::ISSUER,
                audiences: &["istio-ca".to_owned()],
                namespace: "shop",
                service_account: "cart",
                issued_at: meshroot_fuzz::NOW as i64 - 60,
                lifetime: Duration::from_secs(3600),
                bound_pod,
            })
            .unwrap_or_else(|e| panic!("{e}"));
        write(dir, "jwt", name, token.as_bytes());
    }

    // ztunnel's request: a CSR and metadata naming the impersonated identity.
    let impersonated = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(id.to_owned())),
    };
    let request = IstioCertificateRequest {
        csr: ztunnel.clone(),
        validity_duration: 86400,
        metadata: Some(prost_types::Struct {
            fields: [("ImpersonatedIdentity".to_owned(), impersonated)]
                .into_iter()
                .collect(),
        }),
    };
    write(dir, "metadata", "ztunnel", &request.encode_to_vec());

    // An audit filter and a page token made for it.
    let query = Query {
        namespace: Some("shop".into()),
        spiffe_id_prefix: Some("spiffe://cluster.local/ns/shop/".into()),
        ..Query::default()
    };
    let filter = meshroot::edge::grpc::wire::filter_from_query(&query).encode_to_vec();
    let token = PageToken {
        fingerprint: query.fingerprint(),
        position: Position::Sequence(42),
    }
    .encode();
    let mut input = vec![filter.len().min(255) as u8];
    input.extend_from_slice(&filter);
    input.extend_from_slice(token.as_bytes());
    write(dir, "audit_query", "page", &input);

    // Records as the store keeps them.
    let at = UNIX_EPOCH + Duration::from_secs(meshroot_fuzz::NOW);
    let caller = CallerRecord {
        authenticator: "jwt".into(),
        subject: "system:serviceaccount:shop:cart".into(),
        cluster_id: "Kubernetes".into(),
        peer_address: "10.0.0.7:41234".into(),
        spiffe_id: id.into(),
        ..CallerRecord::default()
    };
    let issued = Record::new(
        "r1".into(),
        at,
        caller.clone(),
        Outcome::Issued(IssuedRecord {
            serial: vec![0x51; 16],
            spiffe_id: id.into(),
            requested_spiffe_id: id.into(),
            dns_names: vec![],
            mesh: "default".into(),
            trust_domain: "cluster.local".into(),
            namespace: "shop".into(),
            service_account: "cart".into(),
            not_before: at,
            not_after: at + Duration::from_secs(86400),
            key_algorithm: "ecdsa-p256".into(),
            key_bits: 256,
            public_key_sha256: vec![1; 32],
            csr_sha256: vec![2; 32],
            intermediate_sha256: vec![3; 32],
            certificate_sha256: vec![4; 32],
            requested_ttl_seconds: 86400,
            ca: None,
        }),
    );
    let summary = Record::new(
        "r2".into(),
        at,
        CallerRecord {
            peer_address: "10.0.0.9".into(),
            ..CallerRecord::default()
        },
        Outcome::Denied(DenialRecord {
            reason: "missing-credentials".into(),
            detail: "summary".into(),
            mesh: String::new(),
            requested_spiffe_id: String::new(),
            csr_sha256: vec![],
            summary: Some(RefusalSummary {
                count: 1234,
                first_at: at,
                last_at: at + Duration::from_secs(59),
            }),
        }),
    );
    let revocation = Record::new(
        "r3".into(),
        at,
        CallerRecord {
            authenticator: "admin".into(),
            subject: "spiffe://cluster.local/ns/ops/sa/admin".into(),
            ..CallerRecord::default()
        },
        Outcome::Revoked(meshroot::domain::record::RevocationRecord {
            reason: "key-compromise".into(),
            comment: "leaked".into(),
            selector: format!("spiffe_id={id}"),
            certificates: vec![meshroot::domain::record::RevokedCertificate {
                serial: vec![0x51; 16],
                intermediate_sha256: vec![3; 32],
                not_after: at + Duration::from_secs(86400),
                spiffe_id: id.into(),
                mesh: "default".into(),
                member: String::new(),
            }],
            blocked: vec![id.into()],
            blocked_until: Some(at + Duration::from_secs(3600)),
            unblocked: vec![],
        }),
    );
    // What members hand each other: a revocation to record as gathered (with a block_for
    // prefix), and a checkpoint of a log signed by the audit key under that log's name.
    let message = meshroot::edge::grpc::record_messages::record_message(&revocation);
    if let Some(meshroot::pb::audit::record::Outcome::Revoked(apply)) = message.outcome {
        let mut input = 3600i64.to_le_bytes().to_vec();
        input.extend_from_slice(&apply.encode_to_vec());
        write(dir, "revocation", "apply", &input);
    }
    let log = "meshroot-audit/member-1";
    let note = meshroot_fuzz::audit_signer(log)
        .sign_checkpoint(42, [7; 32])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut input = vec![log.len() as u8];
    input.extend_from_slice(log.as_bytes());
    input.extend_from_slice(note.as_bytes());
    write(dir, "checkpoint_share", "signed", &input);

    write(dir, "record", "issued", &meshroot::adapters::store::encode(&issued));
    write(dir, "record", "summary", &meshroot::adapters::store::encode(&summary));
    write(dir, "record", "revocation", &meshroot::adapters::store::encode(&revocation));

    // A partner's SPIFFE bundle: two roots (P-256 and P-384), a sequence and a refresh hint.
    let mut authorities = Vec::new();
    for algorithm in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384] {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params
            .self_signed(&rcgen_key(algorithm))
            .unwrap_or_else(|e| panic!("{e}"));
        authorities.push(root.der().clone());
    }
    let bundle = meshroot::domain::federation::bundle::SpiffeBundle {
        trust_domain: meshroot::domain::identity::TrustDomain::new("partner.example")
            .unwrap_or_else(|e| panic!("{e}")),
        authorities,
        sequence: 7,
        refresh_hint: Some(Duration::from_secs(300)),
    };
    let document = bundle.to_json().unwrap_or_else(|e| panic!("{e}"));
    write(dir, "spiffe_bundle", "two-roots", document.as_bytes());
}

fn rcgen_key(algorithm: &'static rcgen::SignatureAlgorithm) -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(algorithm).unwrap_or_else(|e| panic!("{e}"))
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap_or_else(|e| panic!("{e}"))
}
