//! `init` output and loading CA material: accepted by OpenSSL and by the server; every kind of
//! bad material refused with a message naming the file and the reason; Istio's other key and
//! directory layouts accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::Edited as _;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use meshroot::domain::identity::TrustDomain;
use meshroot::domain::keys::KeyType;
use meshroot::edge::cli::init::{self, CaFilesError};

fn load(dir: &Path, now: SystemTime) -> Result<meshroot::domain::signer::MeshSigner, CaFilesError> {
    meshroot::domain::signer::files::load_signer(
        "default",
        TrustDomain::new(TRUST_DOMAIN).unwrap(),
        dir,
        &[],
        None,
        now,
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test]
async fn init_makes_one_root_and_an_intermediate_per_mesh_that_openssl_and_serve_accept() {
    let ca = TestCa::with_meshes(
        &[("a", "a.example"), ("b", "b.example")],
        KeyType::EcdsaP256,
    );
    let root = ca.path().join("root-cert.pem");
    for mesh in ["a", "b"] {
        let dir = ca.path().join(mesh);
        let verified = openssl(&[
            "verify",
            "-CAfile",
            path_str(&root),
            path_str(&dir.join("ca-cert.pem")),
        ]);
        assert!(verified.contains(": OK"), "{verified}");
        assert_eq!(
            std::fs::read_to_string(dir.join("root-cert.pem")).unwrap(),
            ca.root_pem()
        );
        let chain = std::fs::read_to_string(dir.join("cert-chain.pem")).unwrap();
        let ca_cert = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap();
        assert_eq!(
            chain,
            format!("{ca_cert}{}", ca.root_pem()),
            "intermediate, then root"
        );
        let text = openssl(&[
            "x509",
            "-in",
            path_str(&dir.join("ca-cert.pem")),
            "-noout",
            "-text",
        ]);
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    }
    let config = ca.config();
    assert_eq!(config.meshes.len(), 2);
    assert_eq!(config.meshes[1].trust_domain.as_str(), "b.example");
    let server = ca.start().await;
    // A workload of mesh b gets a certificate in b's trust domain, under b's intermediate.
    let id = "spiffe://b.example/ns/shop/sa/cart";
    let response = server
        .call(ztunnel_csr(id), Some(ca.token("b", "shop", "cart")), 0)
        .await
        .unwrap();
    verify_chain(&response.cert_chain, &ca.root_pem());
    let b_intermediate = std::fs::read_to_string(ca.path().join("b/ca-cert.pem")).unwrap();
    assert_eq!(response.cert_chain[1], b_intermediate);
    server.stop().await;
}

#[test]
fn init_writes_private_keys_0600_and_refuses_to_overwrite_them() {
    use std::os::unix::fs::PermissionsExt as _;
    let ca = TestCa::new();
    for key in [
        "root-key.pem",
        "default/ca-key.pem",
        "default/dev-issuer-key.pem",
    ] {
        let mode = std::fs::metadata(ca.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let mode = std::fs::metadata(ca.path().join("root-cert.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    let mut options = init::InitOptions {
        dir: ca.path().to_owned(),
        meshes: vec![("default".into(), TrustDomain::new(TRUST_DOMAIN).unwrap())],
        key_type: KeyType::EcdsaP256,
        dev_issuer: false,
        name_constraints: true,
        intermediate_path_len: 0,
        force: false,
        workloads: meshroot::domain::capacity::DEFAULT_WORKLOADS,
        token: None,
    };
    let before = std::fs::read(ca.path().join("root-key.pem")).unwrap();
    let refused = init::init(&options, SystemTime::now()).unwrap_err();
    assert!(
        matches!(refused, CaFilesError::WouldOverwrite { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("root-key.pem"));
    assert_eq!(
        std::fs::read(ca.path().join("root-key.pem")).unwrap(),
        before
    );
    options.force = true;
    init::init(&options, SystemTime::now()).unwrap();
    assert_ne!(
        std::fs::read(ca.path().join("root-key.pem")).unwrap(),
        before
    );
}

#[test]
fn refuses_a_key_that_does_not_match_the_signing_certificate() {
    let ca = TestCa::with_meshes(
        &[("default", TRUST_DOMAIN), ("other", "other.example")],
        KeyType::EcdsaP256,
    );
    std::fs::copy(
        ca.path().join("other/ca-key.pem"),
        ca.path().join("default/ca-key.pem"),
    )
    .unwrap();
    let error = load(&ca.path().join("default"), SystemTime::now()).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("ca-key.pem does not match"), "{message}");
    assert!(
        message.contains(path_str(&ca.path().join("default"))),
        "{message}"
    );
}

#[test]
fn refuses_a_signing_certificate_that_is_not_a_ca() {
    let ca = TestCa::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["not-a-ca.example".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let leaf = params.self_signed(&key).unwrap();
    std::fs::write(ca.path().join("default/ca-cert.pem"), leaf.pem()).unwrap();
    let message = load(&ca.path().join("default"), SystemTime::now())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("ca-cert.pem is not a CA certificate"),
        "{message}"
    );
}

#[test]
fn refuses_a_chain_that_does_not_end_at_the_trusted_root() {
    let ca = TestCa::new();
    let stranger = TestCa::new();
    std::fs::write(ca.path().join("default/root-cert.pem"), stranger.root_pem()).unwrap();
    std::fs::write(
        ca.path().join("default/cert-chain.pem"),
        std::fs::read_to_string(ca.path().join("default/ca-cert.pem")).unwrap(),
    )
    .unwrap();
    let message = load(&ca.path().join("default"), SystemTime::now())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("does not end at a root in root-cert.pem"),
        "{message}"
    );
}

#[test]
fn refuses_material_that_is_expired_or_missing() {
    let ca = TestCa::new();
    let later = SystemTime::now() + Duration::from_secs(6 * 365 * 86400);
    let message = load(&ca.path().join("default"), later)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("ca-cert.pem is not valid now"),
        "{message}"
    );
    let message = load(&ca.path().join("missing"), SystemTime::now())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("neither Istio's cacerts layout"),
        "{message}"
    );
    std::fs::remove_file(ca.path().join("default/root-cert.pem")).unwrap();
    let message = load(&ca.path().join("default"), SystemTime::now())
        .unwrap_err()
        .to_string();
    assert!(message.contains("root-cert.pem: cannot read"), "{message}");
}

#[tokio::test]
async fn accepts_sec1_ec_keys_written_by_openssl() {
    let ca = TestCa::new();
    let key = ca.path().join("default/ca-key.pem");
    let sec1 = openssl(&["ec", "-in", path_str(&key)]);
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"));
    std::fs::write(&key, sec1).unwrap();
    let chain = ca
        .issue_once(ztunnel_csr(&spiffe_id("a", "b")), "a", "b")
        .await;
    verify_chain(&chain, &ca.root_pem());
}

#[tokio::test]
async fn serves_from_rsa_intermediates_with_pkcs1_keys() {
    let ca = TestCa::with_meshes(&[(MESH, TRUST_DOMAIN)], KeyType::Rsa2048);
    let key = ca.path().join("default/ca-key.pem");
    let pkcs1 = openssl(&["rsa", "-in", path_str(&key), "-traditional"]);
    assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"));
    std::fs::write(&key, pkcs1).unwrap();
    let chain = ca
        .issue_once(agent_csr(&spiffe_id("a", "b")), "a", "b")
        .await;
    verify_chain(&chain, &ca.root_pem());
}

#[tokio::test]
async fn serves_from_the_kubernetes_tls_layout() {
    let ca = TestCa::new();
    let istio = ca.path().join("default");
    let tls = ca.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    std::fs::copy(istio.join("cert-chain.pem"), tls.join("tls.crt")).unwrap();
    std::fs::copy(istio.join("ca-key.pem"), tls.join("tls.key")).unwrap();
    std::fs::copy(istio.join("root-cert.pem"), tls.join("ca.crt")).unwrap();
    ca.edit_config(|text| text.edited("ca_dir = \"default\"", "ca_dir = \"tls\""));
    let chain = ca
        .issue_once(ztunnel_csr(&spiffe_id("a", "b")), "a", "b")
        .await;
    assert_eq!(chain.len(), 3);
    verify_chain(&chain, &ca.root_pem());
}

#[tokio::test]
async fn serves_every_root_of_a_rotation_bundle_as_the_last_element() {
    let ca = TestCa::new();
    let new_root = TestCa::new().root_pem();
    let bundle = format!("{}{new_root}", ca.root_pem());
    std::fs::write(ca.path().join("default/root-cert.pem"), &bundle).unwrap();
    let chain = ca
        .issue_once(ztunnel_csr(&spiffe_id("a", "b")), "a", "b")
        .await;
    assert_eq!(chain.last().unwrap(), &bundle);
    assert_eq!(chain.len(), 3);
    verify_chain(&chain, &bundle);
}
