//! Name constraints, checked by the verifiers the meshes use besides Envoy (`envoy_mtls`) and
//! rustls-webpki (`rustls_mtls`): Go's crypto/x509 (istio-agent's) and `openssl verify`.
//!
//! Mesh a's intermediate, as `meshroot init` makes it, permits only URIs in `a.example` (and the
//! alias it was re-issued for). A leaf for `spiffe://b.example/…` signed with that intermediate's
//! key (a leaked intermediate minting another mesh's identity under the shared root) must be
//! refused; a leaf meshroot issued for `a.example` accepted.
//!
//! Go: `$MESHROOT_GO`, else `go` on PATH (Debian's `golang-go`; `.ci/run` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// `go run tests/go/x509verify.go ROOTS CHAIN`.
fn go_verify(roots: &Path, chain: &Path) -> Output {
    go_run(
        "x509verify.go",
        &[&roots.display().to_string(), &chain.display().to_string()],
    )
}

/// `openssl verify -CAfile ROOTS -untrusted INTERMEDIATES LEAF`.
fn openssl_verify(roots: &Path, intermediates: &Path, leaf: &Path) -> Output {
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(roots)
        .arg("-untrusted")
        .arg(intermediates)
        .arg(leaf)
        .output()
        .expect("openssl must be installed (.ci/run installs it)")
}

#[tokio::test]
async fn go_and_openssl_refuse_another_meshs_identity_from_a_constrained_intermediate() {
    let scenario = CrossMesh::issue(true).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let roots = dir.join("roots.pem");
    std::fs::write(&roots, &scenario.root_pem).unwrap();
    for (name, (chain, _), accepted) in [
        ("cart", &scenario.cart, true),
        ("legacy", &scenario.legacy, true),
        ("forged", &scenario.forged, false),
    ] {
        let chain_path = dir.join(format!("{name}-chain.pem"));
        std::fs::write(&chain_path, chain).unwrap();
        let certificates = certificates(chain);
        let leaf = dir.join(format!("{name}-leaf.pem"));
        std::fs::write(
            &leaf,
            meshroot::domain::keys::certificate_pem(&certificates[0]),
        )
        .unwrap();
        let intermediates = dir.join(format!("{name}-intermediates.pem"));
        let rest: String = certificates[1..]
            .iter()
            .map(|c| meshroot::domain::keys::certificate_pem(c))
            .collect();
        std::fs::write(&intermediates, rest).unwrap();

        let go = go_verify(&roots, &chain_path);
        assert_eq!(
            go.status.success(),
            accepted,
            "Go, {name}: {}",
            common::output_text(&go)
        );
        let openssl = openssl_verify(&roots, &intermediates, &leaf);
        assert_eq!(
            openssl.status.success(),
            accepted,
            "openssl, {name}: {}",
            common::output_text(&openssl)
        );
        if !accepted {
            assert!(
                common::output_text(&go).contains("constraint"),
                "Go names the constraint: {}",
                common::output_text(&go)
            );
            assert!(
                common::output_text(&openssl).contains("permitted subtree violation"),
                "openssl names the constraint: {}",
                common::output_text(&openssl)
            );
        }
    }
}
