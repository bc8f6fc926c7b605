//! The plug-in path: meshroot keeps each configured cluster's istiod intermediate in its
//! `cacerts` Secret, against the local Kubernetes API server (`common::kube_api`, which speaks
//! the API's documented HTTP contract; no real API server runs here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, SystemTime};

use common::kube_api::FakeApiServer;
use common::*;
use meshroot::domain::clock::ManualClock;
use serde_json::Value;

fn cacerts(api: &FakeApiServer) -> Option<Value> {
    api.object("secrets", "istio-system", "cacerts")
}

/// The serial of the intermediate in `cacerts`, when it holds all four files.
fn serial(api: &FakeApiServer) -> Option<String> {
    let secret = cacerts(api)?;
    for file in ["ca-key.pem", "cert-chain.pem", "root-cert.pem"] {
        if common::secret_text(&secret, file).is_empty() {
            return None;
        }
    }
    let der = certificates(&common::secret_text(&secret, "ca-cert.pem"))
        .into_iter()
        .next()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(meshroot::domain::digest::hex(parsed.raw_serial()))
}

/// A CA that keeps cluster `west`'s `cacerts` through a fake API server (namespace
/// `istio-system`), with `settings` added to the cluster's table.
async fn keeping_cacerts(settings: &str) -> (FakeApiServer, TestCa) {
    let api = FakeApiServer::start().await;
    api.add_namespace("istio-system", &[]);
    let ca = TestCa::new();
    ca.allow_cluster_intermediates(MESH, &[TRUST_DOMAIN]);
    let kubeconfig = api.write_kubeconfig(ca.path(), "west");
    ca.edit_config(|config| {
        format!(
            "{config}\n[[mesh.cluster]]\nid = \"west\"\nkubeconfig = \"{}\"\ncacerts = true\n{settings}",
            kubeconfig.display()
        )
    });
    (api, ca)
}

/// A stand-in for istiod's TLS port: it serves a certificate signed by whichever intermediate
/// it was last given (as istiod re-issues its own certificate when it reloads `cacerts`).
struct FakeIstiod {
    address: std::net::SocketAddr,
    serving: std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<rustls::ServerConfig>>>>,
}

impl FakeIstiod {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let serving: std::sync::Arc<
            std::sync::Mutex<Option<std::sync::Arc<rustls::ServerConfig>>>,
        > = Default::default();
        let current = serving.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let config = current.lock().unwrap().clone();
                if let Some(config) = config {
                    tokio::spawn(async move {
                        let _ = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await;
                    });
                }
            }
        });
        Self { address, serving }
    }

    /// Serves a certificate for istiod.istio-system.svc signed with `cacerts`' intermediate.
    fn load(&self, cacerts: &Value) {
        let ca_key = rcgen::KeyPair::from_pem(&common::secret_text(cacerts, "ca-key.pem")).unwrap();
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&common::secret_text(cacerts, "ca-cert.pem"), ca_key)
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["istiod.istio-system.svc".to_owned()]).unwrap();
        let leaf = params.signed_by(&key, &issuer).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        *self.serving.lock().unwrap() = Some(std::sync::Arc::new(config));
    }
}

/// Waits (bounded, 10 s) until `meshroot_istiod_intermediate_current{cluster="west"}` is
/// `expected`; fails with `what` otherwise.
async fn wait_for_istiod(server: &TestServer, expected: f64, what: &str) {
    common::wait_until(what, Duration::from_secs(10), || async {
        match istiod_current(server).await {
            Some(current) if current == expected => Ok(()),
            current => Err(format!("the metric is {current:?}, not {expected}")),
        }
    })
    .await
}

/// `meshroot_istiod_intermediate_current{cluster="west"}`, if present.
async fn istiod_current(server: &TestServer) -> Option<f64> {
    let (_, text) = common::http_get(server.server.admin_address(), "/metrics").await;
    text.lines()
        .find(|l| l.starts_with("meshroot_istiod_intermediate_current{cluster=\"west\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn a_clusters_cacerts_is_issued_recorded_put_back_and_renewed() {
    let api = FakeApiServer::start().await;
    api.add_namespace("istio-system", &[]);
    let istiod = FakeIstiod::start().await;
    let ca = TestCa::new();
    ca.allow_cluster_intermediates(MESH, &[TRUST_DOMAIN]);
    let kubeconfig = api.write_kubeconfig(ca.path(), "west");
    ca.edit_config(|config| {
        format!(
            "{config}\n[[mesh.cluster]]\nid = \"west\"\nkubeconfig = \"{}\"\ncacerts = true\n\
             intermediate_ttl = \"10h\"\nintermediate_renew_at = 0.5\n\
             istiod_address = \"{}\"\nistiod_probe_interval = \"200ms\"\n",
            kubeconfig.display(),
            istiod.address
        )
    });
    let clock = ManualClock::at(SystemTime::now());
    let server = ca
        .start_with_clock(std::sync::Arc::new(clock.clone()))
        .await;

    common::eventually("cacerts written", || serial(&api).is_some()).await;
    let secret = cacerts(&api).unwrap();
    let first = serial(&api).unwrap();
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshroot"
    );
    // Istio's layout: the chain up to the root, the whole bundle, and a key for the certificate.
    let chain = common::secret_text(&secret, "cert-chain.pem");
    let bundle = common::secret_text(&secret, "root-cert.pem");
    assert_eq!(bundle, server.root_pem);
    assert!(chain.starts_with(&common::secret_text(&secret, "ca-cert.pem")));
    assert_eq!(certificates(&chain).len(), 3, "cluster, mesh, root");
    assert!(chain.ends_with(bundle.as_str()));
    let ca_cert = certificates(&common::secret_text(&secret, "ca-cert.pem"))[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(&ca_cert).unwrap();
    assert!(parsed.is_ca());
    // /metrics has its validity, for the expiry alerts (reported once the write returns).
    let admin = server.server.admin_address();
    common::eventually_async(
        "the cluster intermediate's validity in /metrics",
        || async move {
            let (_, metrics) = common::http_get(admin, "/metrics").await;
            metrics.contains("certificate=\"cluster-intermediate\"")
        },
    )
    .await;
    let (_, metrics) = common::http_get(admin, "/metrics").await;
    for (family, want) in [
        ("not_before", parsed.validity().not_before.timestamp()),
        ("not_after", parsed.validity().not_after.timestamp()),
    ] {
        let prefix = format!(
            "meshroot_certificate_{family}_timestamp{{certificate=\"cluster-intermediate\",mesh=\"{MESH}\",cluster=\"west\"}} "
        );
        let value = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"));
        assert_eq!(value.parse::<f64>().unwrap() as i64, want, "{family}");
    }
    assert_eq!(
        meshroot::domain::signer::constraints::uri_constraints_of(&ca_cert)
            .unwrap()
            .permitted(),
        [TRUST_DOMAIN]
    );
    // `openssl verify` accepts it under the root through the mesh's intermediate.
    let work = tempfile::tempdir().unwrap();
    let roots = work.path().join("root.pem");
    std::fs::write(&roots, &bundle).unwrap();
    let chain_file = work.path().join("chain.pem");
    std::fs::write(&chain_file, &chain).unwrap();
    let leaf_file = work.path().join("ca-cert.pem");
    std::fs::write(&leaf_file, common::secret_text(&secret, "ca-cert.pem")).unwrap();
    openssl(&[
        "verify",
        "-CAfile",
        roots.to_str().unwrap(),
        "-untrusted",
        chain_file.to_str().unwrap(),
        leaf_file.to_str().unwrap(),
    ]);

    // It is recorded, with the cluster, before it was written.
    let records = server.records();
    let record = records
        .iter()
        .find(|r| {
            matches!(&r.outcome, meshroot::domain::record::Outcome::Issued(i)
                if meshroot::domain::digest::hex(&i.serial) == first)
        })
        .expect("the intermediate's record");
    let meshroot::domain::record::Outcome::Issued(issued) = &record.outcome else {
        panic!("{record:?}")
    };
    let issued_ca = issued.ca.as_ref().unwrap();
    assert_eq!(issued_ca.cluster, "west");
    assert_eq!(issued_ca.permitted_trust_domains, [TRUST_DOMAIN]);
    assert_eq!(record.caller.subject, "cluster-intermediate");

    // istiod serves a certificate from this intermediate: current.
    istiod.load(&secret);
    wait_for_istiod(&server, 1.0, "istiod serves the current intermediate").await;

    // Edited by someone else: a new intermediate is written.
    let mut edited = cacerts(&api).unwrap();
    edited["data"]["ca-key.pem"] = Value::from("c3RhbGU=");
    api.put_object("secrets", "istio-system", edited);
    common::eventually("an edited cacerts replaced", || {
        serial(&api).is_some_and(|s| s != first)
    })
    .await;
    let second = serial(&api).unwrap();
    // istiod has not reloaded: it still serves the first intermediate's certificate.
    wait_for_istiod(&server, 0.0, "istiod behind the Secret").await;
    istiod.load(&cacerts(&api).unwrap());
    wait_for_istiod(&server, 1.0, "istiod reloaded").await;

    // Deleted: written again.
    api.delete_object("secrets", "istio-system", "cacerts");
    common::eventually("a deleted cacerts re-created", || {
        serial(&api).is_some_and(|s| s != second)
    })
    .await;
    let third = serial(&api).unwrap();

    // Not before half its lifetime (10 h). The clock moves 4 h; then a revocation changes the
    // mesh's CRL, which the keeper writes into cacerts on its next pass: that pass read the clock
    // at 4 h, and kept the intermediate...
    let bystander = spiffe_id("shop", "bystander");
    // (a day's certificate: still valid, and so revocable, 4 h on)
    server
        .call(
            agent_csr(&bystander),
            Some(ca.token(MESH, "shop", "bystander")),
            86_400,
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(4 * 3600));
    let crl = || cacerts(&api).map(|secret| common::secret_text(&secret, "ca-crl.pem"));
    let crl_before = crl();
    let admin = server.server.admin_address().to_string();
    let (code, out) = common::process::meshroot_status(&[
        "revoke",
        "--addr",
        &admin,
        "--spiffe-id",
        &bystander,
        "--no-block",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    common::eventually("the keeper writes the new CRL into cacerts", || {
        crl() != crl_before
    })
    .await;
    assert_eq!(serial(&api).unwrap(), third, "renewed too early");
    // ...but once half of it has passed.
    clock.advance(Duration::from_secs(3600 + 60));
    common::eventually("renewed at half its lifetime", || {
        serial(&api).is_some_and(|s| s != third)
    })
    .await;
    let fourth = serial(&api).unwrap();

    // A new root joins the bundle: a new intermediate carries it in root-cert.pem.
    let next = ca.add_next_root();
    server.server.reload().await.unwrap();
    common::eventually("renewed on the bundle change", || {
        serial(&api).is_some_and(|s| s != fourth)
            && cacerts(&api).is_some_and(|s| {
                common::secret_text(&s, "root-cert.pem").contains(next.root_pem().trim())
            })
    })
    .await;
    let last = serial(&api).unwrap();
    server.stop().await;

    // An auditor lists the clusters' intermediates: every one written, with its cluster and
    // root, and nothing else.
    let list = |format: &str| {
        let output = std::process::Command::new(common::process::BINARY)
            .args(["audit", "list", "--config"])
            .arg(ca.config_path())
            .args(["--kind", "intermediate", "--format", format])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let listed: Value = serde_json::from_str(&list("json")).unwrap();
    let listed = listed.as_array().unwrap();
    let serials: Vec<&str> = listed
        .iter()
        .map(|r| r["outcome"]["serial"].as_str().unwrap())
        .collect();
    for written in [&first, &second, &third, &fourth, &last] {
        assert!(
            serials.contains(&written.as_str()),
            "{written} in {serials:?}"
        );
    }
    assert!(listed
        .iter()
        .all(|r| r["outcome"]["ca"]["cluster"] == "west" && r["outcome"]["spiffe_id"] == ""));
    let table = list("table");
    assert!(table.contains("ca:west root:"), "{table}");

    // rotate plan names the clusters whose istiod holds an unexpired intermediate, and the root.
    let output = std::process::Command::new(common::process::BINARY)
        .args(["rotate", "plan", "--config"])
        .arg(ca.config_path())
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{plan}");
    assert!(
        plan.contains("cluster intermediates (istiod, plug-in path), unexpired:")
            && plan.contains(&format!("cluster west: serial {last} under root [1]")),
        "{plan}"
    );
}

/// istiod in cluster a signs a workload with the intermediate meshroot keeps in its `cacerts`
/// (as istiod does: the leaf, then `cert-chain.pem` without the root), and mesh b's gateway, an
/// Envoy with Istio's ISTIO_MUTUAL validation against the shared root, accepts it; a leaf for
/// b.example signed with the same intermediate is refused by the name constraints on its path.
#[tokio::test]
async fn a_workload_signed_by_a_clusters_intermediate_reaches_another_meshs_envoy_gateway() {
    use crate::envoy_mtls::{
        free_port, gateway_config, get, sidecar_config, start_upstream, Envoy,
    };
    let api = FakeApiServer::start().await;
    api.add_namespace("istio-system", &[]);
    let ca = TestCa::with_meshes(
        &[("a", "a.example"), ("b", "b.example")],
        meshroot::domain::keys::KeyType::EcdsaP256,
    );
    ca.allow_cluster_intermediates("a", &["a.example"]);
    let kubeconfig = api.write_kubeconfig(ca.path(), "cluster-a");
    ca.edit_config(|config| {
        config.replacen(
            "\n[[mesh]]\nname = \"b\"",
            &format!(
                "\n[[mesh.cluster]]\nid = \"cluster-a\"\nkubeconfig = \"{}\"\ncacerts = true\n\n[[mesh]]\nname = \"b\"",
                kubeconfig.display()
            ),
            1,
        )
    });
    let server = ca.start().await;
    let gateway = server.workload(&ca, "b", GATEWAY_ID).await;
    common::eventually("cluster a's cacerts written", || serial(&api).is_some()).await;
    let secret = cacerts(&api).unwrap();
    server.stop().await;

    // istiod's signing, with the cacerts material.
    let istiod_key = rcgen::KeyPair::from_pem(&common::secret_text(&secret, "ca-key.pem")).unwrap();
    let istiod =
        rcgen::Issuer::from_ca_cert_pem(&common::secret_text(&secret, "ca-cert.pem"), istiod_key)
            .unwrap();
    let chain_without_root: String = {
        let chain = common::secret_text(&secret, "cert-chain.pem");
        let certificates = certificates(&chain);
        certificates[..certificates.len() - 1]
            .iter()
            .map(|c| meshroot::domain::keys::certificate_pem(c))
            .collect()
    };
    let sign = |uri: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        let leaf = params.signed_by(&key, &istiod).unwrap();
        (
            format!("{}{chain_without_root}", leaf.pem()),
            key.serialize_pem(),
        )
    };
    let cart = sign("spiffe://a.example/ns/shop/sa/cart");
    let forged = sign("spiffe://b.example/ns/shop/sa/forged");

    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::write(
        dir.join("root.pem"),
        common::secret_text(&secret, "root-cert.pem"),
    )
    .unwrap();
    for (name, (chain, key)) in [("gateway", &gateway), ("cart", &cart), ("forged", &forged)] {
        std::fs::write(dir.join(format!("{name}-chain.pem")), chain).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key).unwrap();
    }
    let (upstream, seen) = start_upstream().await;
    let (gateway_port, sidecar_port) = (free_port(), free_port());
    let _gateway = Envoy::start(
        dir,
        "gateway",
        &gateway_config(dir, gateway_port, upstream, &["a.example", "b.example"]),
        gateway_port,
    )
    .await;
    let _sidecar = Envoy::start(
        dir,
        "sidecar",
        &sidecar_config(dir, sidecar_port, gateway_port, &["cart", "forged"]),
        sidecar_port,
    )
    .await;
    assert_eq!(get(sidecar_port, "/cart").await, 200);
    let xfcc = seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        xfcc.contains("URI=spiffe://a.example/ns/shop/sa/cart"),
        "{xfcc}"
    );
    let before = seen.lock().unwrap().len();
    assert_eq!(get(sidecar_port, "/forged").await, 503);
    assert_eq!(seen.lock().unwrap().len(), before);
}

/// The root rotation gate counts the clusters' intermediates: a bundle that drops the root an
/// unexpired cluster intermediate chains to is refused until that intermediate expires (its
/// expiry, months away, is the one the refusal names; meshroot's own certificates last a day).
#[tokio::test]
async fn a_root_an_unexpired_cluster_intermediate_chains_to_is_not_dropped() {
    let (api, ca) = keeping_cacerts("intermediate_ttl = \"2000h\"\n").await;
    let server = ca.start().await;
    common::eventually("cacerts written", || serial(&api).is_some()).await;
    let expires = SystemTime::now() + Duration::from_secs(2000 * 3600);
    let expected_day = meshroot::domain::clock::format_time(expires)[..10].to_owned();

    // The mesh moves to an intermediate under a new root, and the bundle holds the new root only.
    let next = TestCa::new();
    ca.take_intermediate_of(&next, MESH);
    let error = server.server.reload().await.unwrap_err().to_string();
    assert!(
        error.contains("drops the root that")
            && error.contains(&format!("(the last expires {expected_day}")),
        "{error}"
    );
    server.stop().await;
}

/// A mesh whose intermediate may not have CA certificates below it cannot keep a cluster's
/// cacerts: meshroot refuses the configuration at once, naming the fix.
#[tokio::test]
async fn cacerts_under_a_pathlen_0_intermediate_is_refused_at_start() {
    let api = FakeApiServer::start().await;
    let ca = TestCa::new();
    let kubeconfig = api.write_kubeconfig(ca.path(), "west");
    ca.edit_config(|config| {
        format!(
            "{config}\n[[mesh.cluster]]\nid = \"west\"\nkubeconfig = \"{}\"\ncacerts = true\n",
            kubeconfig.display()
        )
    });
    let error = match meshroot::edge::server::start(&ca.config()).await {
        Ok(_) => panic!("started"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("--path-len 1"), "{error}");
    assert!(api.object("secrets", "istio-system", "cacerts").is_none());
}

/// Every `X509 CRL` PEM block of `text`, each whole.
fn crl_blocks(text: &str) -> Vec<String> {
    let (begin, end) = ("-----BEGIN X509 CRL-----", "-----END X509 CRL-----");
    text.split(begin)
        .skip(1)
        .filter_map(|rest| {
            rest.split_once(end)
                .map(|(body, _)| format!("{begin}{body}{end}\n"))
        })
        .collect()
}

#[tokio::test]
async fn a_clusters_cacerts_carries_the_crls_of_its_chain_and_a_revoked_intermediate_is_replaced() {
    let (api, ca) = keeping_cacerts("intermediate_ttl = \"10h\"\n").await;
    let server = ca.start().await;
    let admin = server.server.admin_address();
    let crl_of = |api: &FakeApiServer| {
        cacerts(api)
            .map(|secret| common::secret_text(&secret, "ca-crl.pem"))
            .unwrap_or_default()
    };
    common::eventually("cacerts with ca-crl.pem", || !crl_of(&api).is_empty()).await;
    let secret = cacerts(&api).unwrap();
    let first = serial(&api).unwrap();
    // The cluster intermediate's own CRL (istiod signs with it), then exactly the mesh's CRLs.
    let (_, mesh_crls) = common::http_get(admin, "/crl").await;
    let first_crls = mesh_crls.clone();
    let text = crl_of(&api);
    let blocks = crl_blocks(&text);
    assert_eq!(blocks.len(), 3, "cluster, mesh intermediate, root: {text}");
    assert_eq!(&text[blocks[0].len()..], mesh_crls);
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str, content: &str| {
        let path = work.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let own = path("own-crl.pem", &blocks[0]);
    let ca_cert = path("ca-cert.pem", &common::secret_text(&secret, "ca-cert.pem"));
    let verified = std::process::Command::new("openssl")
        .args(["crl", "-noout", "-verify", "-in"])
        .arg(&own)
        .arg("-CAfile")
        .arg(&ca_cert)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&verified.stderr).contains("verify OK"),
        "{verified:?}"
    );
    // A workload leaf istiod would sign with it passes a whole-chain CRL check (as Envoy does).
    let leaf_of = |secret: &Value| {
        let key = rcgen::KeyPair::from_pem(&common::secret_text(secret, "ca-key.pem")).unwrap();
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&common::secret_text(secret, "ca-cert.pem"), key)
                .unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            spiffe_id("shop", "cart").try_into().unwrap(),
        )];
        params
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
            .unwrap()
            .pem()
    };
    let roots = path("root.pem", &server.root_pem);
    let check = |leaf: &str, chain: &str, crls: &str| {
        std::process::Command::new("openssl")
            .args(["verify", "-crl_check_all", "-CAfile"])
            .arg(&roots)
            .arg("-untrusted")
            .arg(path("chain.pem", chain))
            .arg("-CRLfile")
            .arg(path("crls.pem", crls))
            .arg(path("leaf.pem", leaf))
            .output()
            .unwrap()
    };
    let old_leaf = leaf_of(&secret);
    let old_chain = common::secret_text(&secret, "cert-chain.pem");
    let passed = check(&old_leaf, &old_chain, &text);
    assert!(passed.status.success(), "{passed:?}");

    // Revoking the cluster's intermediate: a new one replaces it at once, and the CRLs in
    // cacerts list the old one.
    let output = common::process::meshroot_output(vec![
        "revoke".into(),
        "--addr".into(),
        admin.to_string(),
        "--intermediate".into(),
        "west".into(),
        "--reason".into(),
        "ca-compromise".into(),
    ])
    .await;
    assert!(output.contains("revoked 1 certificate(s)"), "{output}");
    assert!(output.contains(&first), "{output}");
    common::eventually("a new intermediate in cacerts", || {
        serial(&api).is_some_and(|serial| serial != first)
    })
    .await;
    common::wait_until(
        "ca-crl.pem follows the new intermediate and the new mesh CRLs",
        Duration::from_secs(10),
        || async {
            let (_, mesh_crls) = common::http_get(admin, "/crl").await;
            let text = crl_of(&api);
            // Own, the replaced intermediate's last, then the mesh intermediate's and the root's.
            (crl_blocks(&text).len() == 4 && text.ends_with(&mesh_crls) && mesh_crls != first_crls)
                .then_some(())
                .ok_or_else(|| format!("{} CRLs in cacerts", crl_blocks(&text).len()))
        },
    )
    .await;
    let refused = check(&old_leaf, &old_chain, &crl_of(&api));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("certificate revoked")
            || String::from_utf8_lossy(&refused.stderr).contains("certificate revoked"),
        "{refused:?}"
    );
    let secret = cacerts(&api).unwrap();
    let passed = check(
        &leaf_of(&secret),
        &common::secret_text(&secret, "cert-chain.pem"),
        &crl_of(&api),
    );
    assert!(passed.status.success(), "{passed:?}");
    server.stop().await;
}

/// Issue 31 (Istio 1.27's plug-in CA no longer falls back when `cacerts` is incomplete): every
/// write of `cacerts` replaces all its keys in one update. A Secret left half-written by someone
/// else (a key missing, a stray one) is replaced whole; while the API refuses the write, the
/// Secret is left as it was, never partly ours.
#[tokio::test]
async fn cacerts_is_written_all_or_nothing() {
    use std::sync::atomic::Ordering;
    let (api, ca) = keeping_cacerts("istiod_address = \"127.0.0.1:1\"\n").await;
    let server = ca.start().await;
    common::eventually("cacerts written", || serial(&api).is_some()).await;
    let first = cacerts(&api).unwrap();
    // Someone leaves it half-written: the key gone, a stray file added.
    let mut half = first.clone();
    half["data"].as_object_mut().unwrap().remove("ca-key.pem");
    half["data"]["stray.pem"] = serde_json::json!("eA==");
    api.state.down.store(true, Ordering::SeqCst);
    api.put_object("secrets", "istio-system", half.clone());
    // While the API refuses every call, what is stored is what that client left.
    let arrivals = api.arrivals();
    common::eventually("meshroot tries again", || api.arrivals() > arrivals + 1).await;
    assert_eq!(cacerts(&api).unwrap()["data"], half["data"]);
    api.state.down.store(false, Ordering::SeqCst);
    common::eventually("cacerts rewritten whole", || {
        cacerts(&api).is_some_and(|s| s["data"].get("stray.pem").is_none())
            && serial(&api).is_some()
    })
    .await;
    let rewritten = cacerts(&api).unwrap();
    let keys: Vec<&String> = rewritten["data"].as_object().unwrap().keys().collect();
    for file in [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ] {
        assert!(keys.iter().any(|k| *k == file), "{file} in {keys:?}");
    }
    // The key is the certificate's: one consistent set.
    let key = common::secret_text(&rewritten, "ca-key.pem");
    let cert = common::secret_text(&rewritten, "ca-cert.pem");
    let key_pair = rcgen::KeyPair::from_pem(&key).unwrap();
    let der = certificates(&cert).remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        parsed.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key_pair).as_slice()
    );
    server.stop().await;
}
