//! Two meshroot instances with different roots federate through each other's SPIFFE bundle
//! endpoints (`[[mesh.partner]]`): each fetches the other's bundle, keeps it, records it, and
//! publishes to its proxies only a cross-certificate of the partner's root, name-constrained to
//! the partner's trust domain (`meshroot partner certify`). A workload of each completes mTLS
//! with the other's through real Envoy configured as istiod configures an inbound sidecar for
//! the `meshConfig` that `meshroot istio config` prints; neither can mint the other's names,
//! in Envoy, Go's crypto/x509 or `openssl verify`; the partner down and up again changes
//! nothing for the data plane, and a change of its bundle is recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::acceptance::{mesh_config, root_ca, through_envoy};
use crate::common::Edited as _;
use crate::common::{self, TestCa, TestServer};
use crate::envoy_mtls::free_port;
use meshroot::domain::audit::{OutcomeFilter, Query};
use meshroot::domain::keys::KeyType;
use meshroot::domain::record::Outcome;

const B_SERVER: &str = "spiffe://b.example/ns/shop/sa/orders";
const P_SERVER: &str = "spiffe://p.example/ns/shop/sa/orders";

/// A one-mesh CA (`mesh` = `trust_domain`) serving its bundle on `bundle_port`.
fn instance(mesh: &str, trust_domain: &str, bundle_port: u16) -> TestCa {
    let ca = TestCa::with_meshes_constrained(&[(mesh, trust_domain)], KeyType::EcdsaP256, false);
    ca.edit_config(|text| {
        format!("{text}\n[bundle_endpoint]\nlisten = \"127.0.0.1:{bundle_port}\"\n")
    });
    ca
}

/// `ca`'s mesh accepts `partner` (trust domain), fetched from `port`, verified with
/// `partner_root`, cross-certificates in `ca_dir/partners/<td>.pem`.
fn add_partner(ca: &TestCa, mesh: &str, partner: &str, port: u16, partner_root: &Path) {
    // After everything else: `[[mesh.partner]]` belongs to the last `[[mesh]]`, the only one.
    ca.edit_config(|text| {
        format!(
            "{text}\n[[mesh.partner]]\ntrust_domain = \"{partner}\"\n\
             bundle_url = \"https://localhost:{port}/{partner}\"\nendpoint_ca = \"{}\"\n\
             cross_certificates = \"{mesh}/partners/{partner}.pem\"\n",
            partner_root.display()
        )
    });
}

/// `meshroot partner certify` with `ca`'s root key for `partner`'s bundle at `port`.
async fn certify(ca: &TestCa, mesh: &str, partner: &str, port: u16, partner_root: &Path) -> String {
    let args: Vec<String> = [
        "partner",
        "certify",
        "--dir",
        &ca.path().display().to_string(),
        "--trust-domain",
        partner,
        "--url",
        &format!("https://localhost:{port}/{partner}"),
        "--endpoint-ca",
        &partner_root.display().to_string(),
        "--out",
        &ca.path()
            .join(mesh)
            .join("partners")
            .join(format!("{partner}.pem"))
            .display()
            .to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    common::process::meshroot_output(args).await
}

/// A workload's (chain without roots, key) from `server`.
async fn workload(server: &TestServer, ca: &TestCa, mesh: &str, id: &str) -> (String, String) {
    server.workload(ca, mesh, id).await
}

/// The partner records of `server`'s log.
fn federation_records(server: &TestServer) -> Vec<meshroot::domain::record::FederationRecord> {
    server
        .server
        .store()
        .query_all(&Query {
            outcome: Some(OutcomeFilter::Federated),
            ..Query::default()
        })
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.outcome {
            Outcome::Federated(f) => Some(f),
            _ => None,
        })
        .collect()
}

/// The published bundle (the tail of a CSR answer) of `server` for `id`.
async fn published_bundle(server: &TestServer, ca: &TestCa, mesh: &str, id: &str) -> String {
    server
        .workload_chain(ca, mesh, id)
        .await
        .last()
        .unwrap()
        .clone()
}

fn write(dir: &Path, name: &str, (chain, key): &(String, String)) {
    std::fs::write(dir.join(format!("{name}-chain.pem")), chain).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), key).unwrap();
}

/// (leaf, intermediates) of a chain PEM.
fn split_chain(chain: &str) -> (String, String) {
    let certificates: Vec<String> = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .map(str::to_owned)
        .collect();
    (certificates[0].clone(), certificates[1..].concat())
}

/// `openssl verify` and Go's crypto/x509 of `chain` (leaf first) with `roots` trusted and
/// `extra` as further untrusted intermediates: (openssl accepted, go accepted, openssl's words).
async fn verify_elsewhere(
    dir: &Path,
    name: &str,
    chain: &str,
    roots: &str,
    extra: &str,
) -> (bool, bool, String) {
    let (leaf, intermediates) = split_chain(chain);
    let file = |suffix: &str, text: &str| {
        let path = dir.join(format!("{name}-{suffix}.pem"));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (leaf, untrusted, roots, full) = (
        file("leaf", &leaf),
        file("untrusted", &format!("{intermediates}{extra}")),
        file("roots", roots),
        file("full", &format!("{chain}{extra}")),
    );
    tokio::task::spawn_blocking(move || {
        let openssl = std::process::Command::new("openssl")
            .args(["verify", "-CAfile", &roots, "-untrusted", &untrusted, &leaf])
            .output()
            .unwrap();
        let go = common::go_run("x509verify.go", &[&roots, &full]);
        (
            openssl.status.success(),
            go.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&openssl.stdout),
                String::from_utf8_lossy(&openssl.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn two_meshroots_with_different_roots_federate_and_neither_can_mint_the_others_names() {
    common::init_test_log();
    let (b_port, p_port) = (free_port(), free_port());
    let b = instance("b", "b.example", b_port);
    let p = instance("p", "p.example", p_port);
    let (b_root, p_root) = (
        b.path().join("root-cert.pem"),
        p.path().join("root-cert.pem"),
    );
    add_partner(&b, "b", "p.example", p_port, &p_root);
    add_partner(&p, "p", "b.example", b_port, &b_root);

    // Each serves its bundle; each certifies the other's root with its own root key.
    let (b_server, p_server) = (b.start().await, p.start().await);
    let out = certify(&b, "b", "p.example", p_port, &p_root).await;
    assert!(
        out.contains("cross-certified for spiffe://p.example/ only"),
        "{out}"
    );
    certify(&p, "p", "b.example", b_port, &b_root).await;
    b_server.server.reload().await.unwrap();
    p_server.server.reload().await.unwrap();

    // Each fetched the other's bundle, kept it and recorded it: the root, cross-certified.
    let p_root_sha =
        meshroot::domain::digest::sha256(&common::certificates(&p.root_pem())[0]).to_vec();
    common::eventually("b records p's bundle", || {
        federation_records(&b_server)
            .iter()
            .any(|f| f.trust_domain == "p.example" && f.authorities_sha256 == [p_root_sha.clone()])
    })
    .await;
    let records = federation_records(&b_server);
    assert_eq!(records.len(), 1, "one change, the first fetch: {records:?}");
    let record = &records[0];
    assert_eq!(record.added_sha256, std::slice::from_ref(&p_root_sha));
    assert_eq!(
        record.bundle_url,
        format!("https://localhost:{p_port}/p.example")
    );
    assert!(!record.unprotected);

    common::eventually("p's root is cross-certified for b's proxies", || {
        b_server
            .server
            .metrics_text()
            .contains("meshroot_partner_roots_uncovered{mesh=\"b\",trust_domain=\"p.example\"} 0")
    })
    .await;

    // b's proxies get b's root and the cross-certificate, never p's root itself.
    // (The metric is set while the new authority is built; it serves a moment later.)
    common::eventually_async("b publishes the cross-certificate", || async {
        common::certificates(&published_bundle(&b_server, &b, "b", B_SERVER).await).len() == 2
    })
    .await;
    let b_bundle = published_bundle(&b_server, &b, "b", B_SERVER).await;
    let b_published = common::certificates(&b_bundle);
    assert_eq!(b_published.len(), 2, "{b_bundle}");
    assert!(
        !b_bundle.contains(p.root_pem().trim()),
        "p's root is not published raw"
    );
    // The SPIFFE bundle endpoint still serves b's own root only.
    let (status, served) = common::https_get(
        b_server.server.bundle_address().unwrap(),
        &b_server.root_pem,
        "/b.example",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&served).unwrap()["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The workloads, and p's forgery of a b name with p's own intermediate key.
    let now = SystemTime::now();
    let p_cart = workload(&p_server, &p, "p", "spiffe://p.example/ns/shop/sa/cart").await;
    let b_cart = workload(&b_server, &b, "b", "spiffe://b.example/ns/shop/sa/cart").await;
    let forged = p.mint(
        "p",
        "spiffe://b.example/ns/shop/sa/forged",
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    let forged_back = b.mint(
        "b",
        "spiffe://p.example/ns/shop/sa/forged",
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );

    // Mesh b's inbound sidecar: p's workload in, p's forgery of a b name out.
    let work = tempfile::tempdir().unwrap();
    let b_dir = work.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    let b_mesh_config = mesh_config(&b, "b");
    assert_eq!(
        crate::acceptance::trust_domains_for_validation(&b_mesh_config),
        ["b.example", "p.example"]
    );
    write(
        &b_dir,
        "orders",
        &workload(&b_server, &b, "b", B_SERVER).await,
    );
    std::fs::write(b_dir.join("rootca.pem"), root_ca(&b_bundle, &b_mesh_config)).unwrap();
    // The client sidecars only need to trust the server they call (b's orders).
    std::fs::write(b_dir.join("server-root.pem"), b.root_pem()).unwrap();
    write(&b_dir, "partner", &p_cart);
    write(&b_dir, "forged", &forged);
    write(&b_dir, "own", &b_cart);
    // p's leaf whose only SAN is a DNS name reading like a b identity: istiod's
    // match_subject_alt_names matches DNS SANs too; the cross-certificate's DNS subtree stops it.
    write(
        &b_dir,
        "dns",
        &p.mint_dns("p", "spiffe://b.example/ns/shop/sa/forged"),
    );
    let (statuses, _) = through_envoy(
        &b_dir,
        &b_mesh_config,
        (B_SERVER, "server-root.pem"),
        &["partner", "forged", "own", "dns"],
    )
    .await;
    assert_eq!(
        statuses,
        [
            ("partner".into(), 200),
            ("forged".into(), 503),
            ("own".into(), 200),
            ("dns".into(), 503),
        ],
        "{}",
        std::fs::read_to_string(b_dir.join("inbound.log")).unwrap_or_default()
    );

    // And the other way: mesh p's inbound sidecar takes b's workload, not b's forgery.
    let p_dir = work.path().join("p");
    std::fs::create_dir_all(&p_dir).unwrap();
    let p_mesh_config = mesh_config(&p, "p");
    let p_bundle = published_bundle(&p_server, &p, "p", P_SERVER).await;
    write(
        &p_dir,
        "orders",
        &workload(&p_server, &p, "p", P_SERVER).await,
    );
    std::fs::write(p_dir.join("rootca.pem"), root_ca(&p_bundle, &p_mesh_config)).unwrap();
    std::fs::write(p_dir.join("server-root.pem"), p.root_pem()).unwrap();
    write(&p_dir, "partner", &b_cart);
    write(&p_dir, "forged", &forged_back);
    let (statuses, _) = through_envoy(
        &p_dir,
        &p_mesh_config,
        (P_SERVER, "server-root.pem"),
        &["partner", "forged"],
    )
    .await;
    assert_eq!(statuses, [("partner".into(), 200), ("forged".into(), 503)]);

    // Go's crypto/x509 and OpenSSL, trusting b's root and given the cross-certificate.
    let cross = cross_file(&b, "b", "p.example");
    let (openssl_ok, go_ok, words) =
        verify_elsewhere(work.path(), "p-cart", &p_cart.0, &b.root_pem(), &cross).await;
    assert!(openssl_ok && go_ok, "p's own name: {words}");
    let (openssl_ok, go_ok, words) =
        verify_elsewhere(work.path(), "forged", &forged.0, &b.root_pem(), &cross).await;
    assert!(!openssl_ok && !go_ok, "p's forgery of a b name: {words}");
    assert!(words.contains("permitted subtree violation"), "{words}");
    // Even trusting b's whole published bundle as roots (the cross-certificate as an anchor).
    let (openssl_ok, go_ok, words) =
        verify_elsewhere(work.path(), "forged-anchor", &forged.0, &b_bundle, "").await;
    assert!(!openssl_ok && !go_ok, "{words}");

    // p goes down: b keeps serving with what it holds, and counts the failures.
    p_server.stop().await;
    b_server.server.reload().await.unwrap();
    common::eventually("b notices p is down", || {
        b_server.server.metrics_text().contains(
            "meshroot_partner_bundle_fetch_failures_total{mesh=\"b\",trust_domain=\"p.example\"} 1",
        )
    })
    .await;
    // Where it stands: /ui and `meshroot audit partners` show the held bundle and the failure.
    let (status, page) = common::http_get(b_server.server.admin_address(), "/ui").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("data-figure=\"accepts-b\">p.example<"),
        "{page}"
    );
    assert!(page.contains("connecting to localhost"), "{page}");
    let report = common::process::meshroot_output(vec![
        "audit".into(),
        "partners".into(),
        "--addr".into(),
        b_server.server.admin_address().to_string(),
    ])
    .await;
    assert!(
        report.contains("mesh b (b.example) accepts: p.example"),
        "{report}"
    );
    assert!(report.contains("1 root(s), 1 cross-certified"), "{report}");
    assert!(
        report.contains("FAILED: connecting to localhost"),
        "{report}"
    );
    b_server.stop().await;
    // b restarts with p still down: the held bundle and the cross-certificate stay in force.
    let b_server = b.start().await;
    assert_eq!(
        published_bundle(&b_server, &b, "b", B_SERVER).await,
        b_bundle
    );
    let scrape = b_server.server.metrics_text();
    assert!(
        scrape.contains("meshroot_partner_bundle_sequence{mesh=\"b\",trust_domain=\"p.example\"}"),
        "{scrape}"
    );
    assert!(
        scrape
            .contains("meshroot_partner_roots_uncovered{mesh=\"b\",trust_domain=\"p.example\"} 0"),
        "{scrape}"
    );

    // p comes back with a new root beside its old one (a rotation): b records the change,
    // and reports the new root uncovered until it is certified again.
    let next = crate::bundle_endpoint::newer_root(p.path(), &p.root_pem());
    p.edit_config(|text| {
        text.edited(
            "ca_dir = \"p\"\n",
            &format!("ca_dir = \"p\"\nextra_roots = [\"{}\"]\n", next.display()),
        )
    });
    let p_server = p.start().await;
    b_server.server.reload().await.unwrap();
    common::eventually("b records p's rotation", || {
        federation_records(&b_server)
            .iter()
            .any(|f| f.authorities_sha256.len() == 2)
    })
    .await;
    let change = federation_records(&b_server).last().cloned().unwrap();
    assert_eq!(change.added_sha256.len(), 1);
    assert!(change.removed_sha256.is_empty());
    assert_eq!(
        change.cross_certified_sha256,
        std::slice::from_ref(&p_root_sha),
        "the old root only"
    );
    common::eventually("the new root is reported uncovered", || {
        b_server
            .server
            .metrics_text()
            .contains("meshroot_partner_roots_uncovered{mesh=\"b\",trust_domain=\"p.example\"} 1")
    })
    .await;
    certify(&b, "b", "p.example", p_port, &p_root).await;
    b_server.server.reload().await.unwrap();
    common::eventually("certified again", || {
        b_server
            .server
            .metrics_text()
            .contains("meshroot_partner_roots_uncovered{mesh=\"b\",trust_domain=\"p.example\"} 0")
    })
    .await;
    let both = published_bundle(&b_server, &b, "b", B_SERVER).await;
    assert_eq!(
        common::certificates(&both).len(),
        3,
        "b's root and two cross-certificates"
    );

    // p withdraws the new root again: b records it, and stops publishing its cross-certificate
    // although the file still holds it.
    p.edit_config(|text| text.edited(&format!("extra_roots = [\"{}\"]\n", next.display()), ""));
    p_server.server.reload().await.unwrap();
    b_server.server.reload().await.unwrap();
    common::eventually("b records the withdrawal", || {
        federation_records(&b_server)
            .last()
            .is_some_and(|f| f.removed_sha256.len() == 1 && f.authorities_sha256.len() == 1)
    })
    .await;
    // The reload after it publishes the old root's cross-certificate alone.
    common::eventually_async("the withdrawn root's cross-certificate is gone", || async {
        common::certificates(&published_bundle(&b_server, &b, "b", B_SERVER).await).len() == 2
    })
    .await;
    p_server.stop().await;
    b_server.stop().await;
}

/// The cross-certificates `ca` wrote for `partner` (mesh `mesh`).
fn cross_file(ca: &TestCa, mesh: &str, partner: &str) -> String {
    let path: PathBuf = ca
        .path()
        .join(mesh)
        .join("partners")
        .join(format!("{partner}.pem"));
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn an_unprotected_partner_is_published_raw_kept_through_a_restart_and_fetched_by_istiod() {
    common::init_test_log();
    let (b_port, p_port) = (free_port(), free_port());
    let b = instance("b", "b.example", b_port);
    let p = instance("p", "p.example", p_port);
    let p_root = p.path().join("root-cert.pem");
    b.edit_config(|text| {
        format!(
            "{text}\n[[mesh.partner]]\ntrust_domain = \"p.example\"\n\
             bundle_url = \"https://localhost:{p_port}/p.example\"\nendpoint_ca = \"{}\"\n\
             unprotected = true\n",
            p_root.display()
        )
    });
    let p_server = p.start().await;
    let b_server = b.start().await;
    common::eventually("b holds p's bundle", || {
        !federation_records(&b_server).is_empty()
    })
    .await;
    assert!(federation_records(&b_server)[0].unprotected);
    // The opt-in: p's root itself is in b's published bundle, once the authority holds it.
    common::eventually("b's authority holds p's bundle", || {
        b_server
            .server
            .metrics_text()
            .contains("meshroot_partner_bundle_sequence{mesh=\"b\",trust_domain=\"p.example\"}")
    })
    .await;
    let p_root_pem = p.root_pem();
    common::eventually_async("b publishes p's root", || async {
        published_bundle(&b_server, &b, "b", B_SERVER)
            .await
            .contains(p_root_pem.trim())
    })
    .await;
    let bundle = published_bundle(&b_server, &b, "b", B_SERVER).await;
    assert!(b_server
        .server
        .metrics_text()
        .contains("meshroot_partner_roots_uncovered{mesh=\"b\",trust_domain=\"p.example\"} 0"));

    // istiod fetches it itself: the generated caCertificates entry is p's spiffeBundleUrl, and
    // it validates against Istio's schema.
    let mesh_config = mesh_config(&b, "b");
    assert_eq!(
        mesh_config["caCertificates"],
        serde_json::json!([{
            "spiffeBundleUrl": format!("https://localhost:{p_port}/p.example"),
            "trustDomains": ["p.example"],
        }])
    );
    let file = b.path().join("mesh-config.json");
    std::fs::write(&file, mesh_config.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio/validate.py");
    let output = std::process::Command::new(common::python())
        .arg(script)
        .arg("mesh-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");

    // p down, b restarted: the held bundle keeps p's root published.
    p_server.stop().await;
    b_server.stop().await;
    let b_server = b.start().await;
    assert_eq!(published_bundle(&b_server, &b, "b", B_SERVER).await, bundle);
    b_server.stop().await;
}

#[tokio::test]
async fn inside_meshroot_a_partner_root_vouches_for_the_partners_names_only() {
    common::init_test_log();
    let (b_port, p_port) = (free_port(), free_port());
    let b = instance("b", "b.example", b_port);
    let p = instance("p", "p.example", p_port);
    let p_root = p.path().join("root-cert.pem");
    let partner_reader = "spiffe://p.example/ns/audit/sa/reader";
    let own_reader = "spiffe://b.example/ns/audit/sa/reader";
    b.admin_on_tls(&[partner_reader, own_reader]);
    b.edit_config(|text| {
        format!(
            "{text}\n[[mesh.partner]]\ntrust_domain = \"p.example\"\n\
             bundle_url = \"https://localhost:{p_port}/p.example\"\nendpoint_ca = \"{}\"\n",
            p_root.display()
        )
    });
    let p_server = p.start().await;
    let b_server = b.start().await;
    common::eventually("b holds p's bundle", || {
        b_server
            .server
            .metrics_text()
            .contains("meshroot_partner_bundle_sequence{mesh=\"b\",trust_domain=\"p.example\"}")
    })
    .await;
    let admin = b_server.server.admin_address();
    // p's own reader, certified by p's root: admitted on b's admin API (b's /ui).
    let reader = workload(&p_server, &p, "p", partner_reader).await;
    let (status, _) = common::https_get(admin, &b.root_pem(), "/ui", Some(reader)).await;
    assert_eq!(status, 200);
    // p's key minting b's reader: p's root vouches for p.example only.
    let forged = p.mint(
        "p",
        own_reader,
        SystemTime::now() - Duration::from_secs(60),
        SystemTime::now() + Duration::from_secs(3600),
    );
    let (status, _) = common::https_get(admin, &b.root_pem(), "/ui", Some(forged)).await;
    assert_eq!(status, 403);
    // b's own reader, from b: admitted.
    let own = workload(&b_server, &b, "b", own_reader).await;
    let (status, _) = common::https_get(admin, &b.root_pem(), "/ui", Some(own)).await;
    assert_eq!(status, 200);
    p_server.stop().await;
    b_server.stop().await;
}
