//! The SPIFFE bundle endpoint (`[bundle_endpoint]`): one bundle per trust domain, read by
//! parsers nobody here wrote (Go's standard library with Istio's fetcher's rules and go-jose's
//! key check, tests/go/spiffebundle.go; PyJWT and pyca/cryptography, tests/spiffe/jwks_check.py),
//! holding the same roots in the same order as every other published bundle, with a sequence
//! that rises with each change, survives restarts and is the same on a replica with a fresh
//! volume.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::Edited as _;
use std::path::Path;
use std::process::Command;

use crate::common::{self, TestCa, TestServer};
use meshroot::domain::federation::bundle::content_sequence;
use meshroot::domain::keys::KeyType;

/// Meshes a (with the alias old-a.example) and b, and a bundle endpoint on an ephemeral port.
fn two_meshes() -> TestCa {
    let ca = TestCa::with_meshes_constrained(
        &[("a", "a.example"), ("b", "b.example")],
        KeyType::EcdsaP256,
        false,
    );
    ca.edit_config(|text| {
        let text = text.edited(
            "trust_domain = \"a.example\"\n",
            "trust_domain = \"a.example\"\ntrust_domain_aliases = [\"old-a.example\"]\n",
        );
        format!("{text}\n[bundle_endpoint]\nlisten = \"127.0.0.1:0\"\nrefresh_hint = \"2m\"\n")
    });
    ca
}

/// `GET /<trust domain>`: (status, body).
async fn fetch(server: &TestServer, trust_domain: &str) -> (u16, String) {
    let address = server.server.bundle_address().expect("a bundle endpoint");
    common::https_get(address, &server.root_pem, &format!("/{trust_domain}"), None).await
}

fn document(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The SHA-256 (hex) of each certificate of a PEM bundle, in order.
fn digests_of_pem(pem: &str) -> Vec<String> {
    common::certificates(pem)
        .iter()
        .map(|der| meshroot::domain::digest::hex(&meshroot::domain::digest::sha256(der)))
        .collect()
}

/// A second root (self-signed CA) not before `after` plus a second, in `dir`.
pub(crate) fn newer_root(dir: &Path, after: &str) -> std::path::PathBuf {
    let old = &common::certificates(after)[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(old).unwrap();
    let not_before = parsed.validity().not_before.timestamp() + 1;
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
    params.not_after = params.not_before + time::Duration::days(3650);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "meshroot next root");
    let root = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let path = dir.join("next-root.pem");
    std::fs::write(&path, root.pem()).unwrap();
    path
}

/// `go run tests/go/spiffebundle.go URL CA_FILE`: its JSON summary, or its failure. On a
/// blocking thread: the server it fetches from runs on the test's runtime.
async fn go_fetch(url: &str, ca_file: &Path) -> Result<serde_json::Value, String> {
    let args = [url.to_owned(), ca_file.display().to_string()];
    let output = tokio::task::spawn_blocking(move || {
        common::go_run("spiffebundle.go", &[&args[0], &args[1]])
    })
    .await
    .unwrap();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `tests/spiffe/jwks_check.py BUNDLE`: its JSON summary, or its failure.
fn python_check(dir: &Path, body: &str) -> Result<serde_json::Value, String> {
    let file = dir.join("bundle.json");
    std::fs::write(&file, body).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spiffe/jwks_check.py");
    let output = Command::new(common::python())
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

#[tokio::test]
async fn each_trust_domain_has_its_bundle_and_independent_parsers_read_it() {
    let ca = two_meshes();
    let server = ca.start().await;
    let work = tempfile::tempdir().unwrap();
    let root_file = work.path().join("root.pem");
    std::fs::write(&root_file, &server.root_pem).unwrap();

    let (status, body) = fetch(&server, "a.example").await;
    assert_eq!(status, 200, "{body}");
    let bundle = document(&body);
    assert_eq!(bundle["spiffe_refresh_hint"], 120);
    let roots = common::certificates(&server.root_pem);
    assert_eq!(bundle["spiffe_sequence"], content_sequence(&roots));
    // The same roots, in the same order, as the last element of every CSR answer.
    let chain = server
        .workload_chain(&ca, "a", "spiffe://a.example/ns/shop/sa/cart")
        .await;
    let expected = digests_of_pem(chain.last().unwrap());

    let address = server.server.bundle_address().unwrap();
    let url = format!("https://localhost:{}/a.example", address.port());
    let go = go_fetch(&url, &root_file).await.unwrap();
    assert_eq!(go["certificates"], serde_json::json!(expected));
    assert_eq!(go["sequence"], bundle["spiffe_sequence"]);
    let python = python_check(work.path(), &body).unwrap();
    assert_eq!(python["certificates"], serde_json::json!(expected));

    // The alias serves the mesh's bundle; b has its own; other names are not served.
    let (status, alias) = fetch(&server, "old-a.example").await;
    assert_eq!((status, document(&alias)), (200, bundle.clone()));
    let (status, b) = fetch(&server, "b.example").await;
    assert_eq!(status, 200);
    assert_eq!(document(&b)["keys"], bundle["keys"], "one shared root");
    for unknown in ["c.example", "Not%20A%20Domain", ""] {
        assert_eq!(fetch(&server, unknown).await.0, 404, "{unknown}");
    }
    let wrong = format!("https://localhost:{}/c.example", address.port());
    assert!(go_fetch(&wrong, &root_file)
        .await
        .unwrap_err()
        .contains("404"));
    server.stop().await;
}

#[tokio::test]
async fn the_sequence_rises_with_each_change_survives_restarts_and_agrees_across_replicas() {
    let ca = two_meshes();
    let server = ca.start().await;
    let first = document(&fetch(&server, "a.example").await.1)["spiffe_sequence"]
        .as_u64()
        .unwrap();

    // A root rotation begins: a newer root joins mesh a's bundle.
    let next = newer_root(ca.path(), &server.root_pem);
    ca.edit_config(|text| {
        text.edited(
            "ca_dir = \"a\"\n",
            &format!("ca_dir = \"a\"\nextra_roots = [\"{}\"]\n", next.display()),
        )
    });
    server.server.reload().await.unwrap();
    let during = document(&fetch(&server, "a.example").await.1);
    let during_sequence = during["spiffe_sequence"].as_u64().unwrap();
    assert!(during_sequence > first, "{during_sequence} > {first}");
    assert_eq!(during["keys"].as_array().unwrap().len(), 2);
    // Mesh b's bundle did not change, nor did its sequence.
    assert_eq!(
        document(&fetch(&server, "b.example").await.1)["spiffe_sequence"],
        first
    );

    // Another replica with a fresh volume and the same files serves the same number.
    let replica = TestCa {
        dir: tempfile::tempdir().unwrap(),
    };
    common::copy_dir(ca.path(), replica.path());
    replica.edit_config(|text| {
        text.edited(
            &ca.path().display().to_string(),
            &replica.path().display().to_string(),
        )
    });
    std::fs::remove_dir_all(replica.path().join("store")).ok();
    let other = replica.start().await;
    assert_eq!(
        document(&fetch(&other, "a.example").await.1)["spiffe_sequence"],
        during_sequence
    );
    other.stop().await;

    // The new root withdrawn: the content's number would fall; the served one rises by one...
    ca.edit_config(|text| text.edited(&format!("extra_roots = [\"{}\"]\n", next.display()), ""));
    server.server.reload().await.unwrap();
    let withdrawn = document(&fetch(&server, "a.example").await.1)["spiffe_sequence"]
        .as_u64()
        .unwrap();
    assert_eq!(withdrawn, during_sequence + 1);
    server.stop().await;

    // ...and stays there after a restart on the same store.
    let server = ca.start().await;
    assert_eq!(
        document(&fetch(&server, "a.example").await.1)["spiffe_sequence"],
        withdrawn
    );
    server.stop().await;
}
