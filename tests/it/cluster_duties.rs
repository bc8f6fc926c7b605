//! The elected replica's duties, against a local HTTPS server that speaks the Kubernetes API for
//! the resources involved (namespaces, ConfigMaps, Secrets, Leases: get, list, watch, create,
//! update, 409s; `tests/common/kube_api.rs`), because a real API server cannot run here:
//! Lease election and takeover, `istio-ca-root-cert` in every namespace, `istiod-tls`, conflicts,
//! edits and deletions by others, rotation, and an API-server restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::kube_api::FakeApiServer;
use common::{TestCa, TestServer, MESH};
use meshroot::domain::audit::Query;
use serde_json::Value;

/// Adds `[kubernetes]` duties pointed at `api` to `ca`'s config, as replica `identity`.
fn with_duties(ca: &TestCa, api: &FakeApiServer, identity: &str, extra: &str) {
    let kubeconfig = api.write_kubeconfig(ca.path(), "local");
    ca.edit_config(|config| {
        format!(
            "{config}\n[kubernetes]\nmesh = \"{MESH}\"\nkubeconfig = \"{}\"\nnamespace = \"istio-system\"\n\
             identity = \"{identity}\"\nlease_duration = \"2s\"\nistiod_revisions = [\"default\", \"canary\"]\n{extra}",
            kubeconfig.display()
        )
    });
}

fn cluster_with_namespaces(api: &FakeApiServer) {
    for namespace in ["istio-system", "default", "shop", "kube-system"] {
        api.add_namespace(namespace, &[]);
    }
}

fn root_configmap(api: &FakeApiServer, namespace: &str) -> Option<String> {
    api.object("configmaps", namespace, "istio-ca-root-cert")
        .and_then(|c| c["data"]["root-cert.pem"].as_str().map(str::to_owned))
}

fn lease_holder(api: &FakeApiServer) -> Option<String> {
    api.object("leases", "istio-system", "meshroot")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

fn all_have(api: &FakeApiServer, namespaces: &[&str], bundle: &str) -> bool {
    namespaces
        .iter()
        .all(|ns| root_configmap(api, ns).as_deref() == Some(bundle))
}

#[tokio::test]
async fn the_leader_keeps_the_root_configmap_in_every_namespace() {
    let api = FakeApiServer::start().await;
    cluster_with_namespaces(&api);
    let ca = TestCa::new();
    with_duties(&ca, &api, "meshroot-0", "istiod_tls = false\n");
    let server = ca.start().await;
    let bundle = server.server.root_bundle_pem().to_owned();
    let everywhere = ["istio-system", "default", "shop", "kube-system"];

    common::eventually("the bundle in every namespace", || {
        all_have(&api, &everywhere, &bundle)
    })
    .await;
    assert_eq!(lease_holder(&api).as_deref(), Some("meshroot-0"));
    let configmap = api
        .object("configmaps", "default", "istio-ca-root-cert")
        .unwrap();
    assert_eq!(
        configmap["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshroot"
    );

    // A namespace created later gets it.
    api.add_namespace("late", &[]);
    common::eventually("the bundle in a new namespace", || {
        root_configmap(&api, "late").as_deref() == Some(bundle.as_str())
    })
    .await;

    // Someone overwrites it: it is put back.
    let mut edited = configmap.clone();
    edited["data"]["root-cert.pem"] = Value::from("not a root");
    api.put_object("configmaps", "default", edited.clone());
    common::eventually("an edited ConfigMap restored", || {
        root_configmap(&api, "default").as_deref() == Some(bundle.as_str())
    })
    .await;

    // Someone deletes it: it is created again.
    api.delete_object("configmaps", "shop", "istio-ca-root-cert");
    common::eventually("a deleted ConfigMap re-created", || {
        root_configmap(&api, "shop").as_deref() == Some(bundle.as_str())
    })
    .await;

    // Writes that race another writer (409 Conflict) are read again and retried.
    api.state
        .conflicts
        .store(2, std::sync::atomic::Ordering::SeqCst);
    api.put_object("configmaps", "default", edited);
    common::eventually("restored through two 409s", || {
        root_configmap(&api, "default").as_deref() == Some(bundle.as_str())
    })
    .await;
    assert_eq!(
        api.state
            .conflicts
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "both conflicts were met"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_namespace_selector_limits_where_the_root_goes() {
    let api = FakeApiServer::start().await;
    api.add_namespace("istio-system", &[]);
    api.add_namespace("meshed", &[("istio-injection", "enabled")]);
    api.add_namespace("plain", &[]);
    let ca = TestCa::new();
    with_duties(
        &ca,
        &api,
        "meshroot-0",
        "istiod_tls = false\nnamespace_selector = \"istio-injection=enabled\"\n",
    );
    let server = ca.start().await;
    let bundle = server.server.root_bundle_pem().to_owned();
    common::eventually("the bundle in the selected namespace", || {
        all_have(&api, &["meshed"], &bundle)
    })
    .await;
    api.add_namespace("meshed-later", &[("istio-injection", "enabled")]);
    common::eventually("the bundle in a selected namespace made later", || {
        all_have(&api, &["meshed-later"], &bundle)
    })
    .await;
    assert_eq!(root_configmap(&api, "plain"), None);
    assert_eq!(root_configmap(&api, "istio-system"), None);
    server.stop().await;
}

#[tokio::test]
async fn istiod_tls_is_issued_recorded_and_replaced_when_deleted() {
    let api = FakeApiServer::start().await;
    cluster_with_namespaces(&api);
    let ca = TestCa::new();
    with_duties(&ca, &api, "meshroot-0", "root_configmap = false\n");
    let server = ca.start().await;
    let bundle = server.server.root_bundle_pem().to_owned();
    common::eventually("istiod-tls written", || {
        api.object("secrets", "istio-system", "istiod-tls")
            .is_some()
    })
    .await;
    let secret = api.object("secrets", "istio-system", "istiod-tls").unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(common::secret_text(&secret, "ca.crt"), bundle);
    let chain_pem = common::secret_text(&secret, "tls.crt");
    let chain: Vec<String> = common::certificates(&chain_pem)
        .iter()
        .map(|der| meshroot::domain::keys::certificate_pem(der))
        .collect();
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    // rustls-webpki and openssl both accept it (verify_chain checks the leaf as a client
    // certificate and as a server certificate for its names).
    common::verify_chain(&[chain.clone(), vec![bundle.clone()]].concat(), &bundle);
    use x509_parser::prelude::{FromDer as _, GeneralName, ParsedExtension, X509Certificate};
    let leaf_der = common::certificates(&chain_pem).remove(0);
    let (_, leaf) = X509Certificate::from_der(leaf_der.as_ref()).unwrap();
    let mut names = Vec::new();
    for extension in leaf.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() {
            for name in &san.general_names {
                names.push(match name {
                    GeneralName::DNSName(n) => format!("DNS:{n}"),
                    GeneralName::URI(u) => format!("URI:{u}"),
                    other => format!("{other:?}"),
                });
            }
        }
    }
    assert_eq!(
        names,
        [
            "DNS:istiod.istio-system.svc",
            "DNS:istiod-canary.istio-system.svc",
            "URI:spiffe://cluster.local/ns/istio-system/sa/istiod"
        ]
    );
    // The key in the Secret is the certificate's.
    let key = rcgen::KeyPair::from_pem(&common::secret_text(&secret, "tls.key")).unwrap();
    use rcgen::PublicKeyData as _;
    assert_eq!(
        key.subject_public_key_info(),
        leaf.public_key().raw.to_vec(),
        "tls.key matches tls.crt"
    );
    // Recorded like any other issuance, findable by istiod's identity.
    let serial = leaf.raw_serial().to_vec();
    let records = server
        .server
        .store()
        .query_all(&Query {
            spiffe_id: Some("spiffe://cluster.local/ns/istio-system/sa/istiod".to_owned()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(records.len(), 1, "one istiod issuance recorded");
    assert_eq!(records[0].caller.subject, "istiod-tls");
    assert_eq!(server.records_for_serial(&serial).len(), 1);

    // The elected replica reports the time left on the certificate it keeps.
    let (_, metrics) = common::http_get(server.server.admin_address(), "/metrics").await;
    let left: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "meshroot_istiod_tls_expiry_seconds{mesh=\"default\",namespace=\"istio-system\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no istiod-tls expiry gauge:\n{metrics}"))
        .parse()
        .unwrap();
    let not_after = leaf.validity().not_after.timestamp() as f64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((left - (not_after - now)).abs() < 5.0, "{left} s left");

    // Deleted by someone: a new certificate is issued and written.
    api.delete_object("secrets", "istio-system", "istiod-tls");
    common::eventually("istiod-tls re-issued after deletion", || {
        api.object("secrets", "istio-system", "istiod-tls")
            .is_some_and(|s| common::secret_text(&s, "tls.crt") != chain_pem)
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn one_replica_leads_and_another_takes_over_when_it_stops() {
    let api = FakeApiServer::start().await;
    cluster_with_namespaces(&api);
    // Two replicas. Each has its own CA material here, so the ConfigMaps show which one wrote.
    let first_ca = TestCa::new();
    with_duties(&first_ca, &api, "meshroot-0", "istiod_tls = false\n");
    let second_ca = TestCa::new();
    with_duties(&second_ca, &api, "meshroot-1", "istiod_tls = false\n");
    let first = first_ca.start().await;
    let first_bundle = first.server.root_bundle_pem().to_owned();
    common::eventually("the first replica publishes", || {
        all_have(&api, &["default", "shop"], &first_bundle)
    })
    .await;
    let second = second_ca.start().await;
    let second_bundle = second.server.root_bundle_pem().to_owned();
    assert_ne!(first_bundle, second_bundle);
    // While the leader renews (six renewals seen, every third of the 2 s lease: two lease
    // durations with the follower running), the follower never takes the lease nor writes.
    let renew_time = || {
        api.object("leases", "istio-system", "meshroot")
            .map(|lease| lease["spec"]["renewTime"].clone())
    };
    let mut seen = vec![renew_time()];
    common::eventually("the leader renews its lease six times", || {
        let now = renew_time();
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        seen.len() > 6
    })
    .await;
    assert_eq!(lease_holder(&api).as_deref(), Some("meshroot-0"));
    assert!(all_have(
        &api,
        &["istio-system", "default", "shop", "kube-system"],
        &first_bundle
    ));

    // Each replica says in /metrics whether it leads.
    let leads = |server: &TestServer| {
        let address = server.server.admin_address();
        async move {
            let (_, text) = common::http_get(address, "/metrics").await;
            text.lines()
                .find_map(|l| l.strip_prefix("meshroot_leader "))
                .map(str::to_owned)
        }
    };
    assert_eq!(leads(&first).await.as_deref(), Some("1"));
    assert_eq!(leads(&second).await.as_deref(), Some("0"));

    // The leader stops: it releases the lease, and the other replica takes over at once.
    let stopped = tokio::time::Instant::now();
    first.stop().await;
    // Released as it stopped: not its name any more, well before its 2 s lease would expire.
    assert_ne!(lease_holder(&api).as_deref(), Some("meshroot-0"));
    common::eventually("the second replica leads and publishes", || {
        lease_holder(&api).as_deref() == Some("meshroot-1")
            && all_have(&api, &["default", "shop"], &second_bundle)
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "took over after {:?}",
        stopped.elapsed()
    );
    let lease = api.object("leases", "istio-system", "meshroot").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    second.stop().await;
}

#[tokio::test]
async fn duties_resume_after_an_api_server_restart_and_follow_a_root_rotation() {
    let mut api = FakeApiServer::start().await;
    cluster_with_namespaces(&api);
    let ca = TestCa::new();
    with_duties(&ca, &api, "meshroot-0", "");
    let server = ca.start().await;
    let bundle = server.server.root_bundle_pem().to_owned();
    common::eventually("published", || {
        all_have(&api, &["default", "shop"], &bundle)
            && api
                .object("secrets", "istio-system", "istiod-tls")
                .is_some()
    })
    .await;

    // Down for longer than the renew deadline: the leader steps down, then leads again.
    api.restart(Duration::from_secs(3)).await;
    api.add_namespace("after-restart", &[]);
    common::eventually("a namespace made after the restart gets the root", || {
        root_configmap(&api, "after-restart").as_deref() == Some(bundle.as_str())
    })
    .await;
    assert_eq!(lease_holder(&api).as_deref(), Some("meshroot-0"));

    // Root rotation: a second root joins the bundle (extra_roots), the config is reloaded, and
    // every ConfigMap and istiod's ca.crt follow.
    let other = ca.add_next_root();
    server.server.reload().await.unwrap();
    common::eventually(
        "every ConfigMap and istiod's ca.crt carry both roots",
        || {
            let configmap = root_configmap(&api, "default").unwrap_or_default();
            let secret = api
                .object("secrets", "istio-system", "istiod-tls")
                .map(|s| common::secret_text(&s, "ca.crt"))
                .unwrap_or_default();
            configmap.contains(bundle.trim())
                && configmap.contains(other.root_pem().trim())
                && secret == configmap
                && all_have(
                    &api,
                    &["istio-system", "shop", "kube-system", "after-restart"],
                    &configmap,
                )
        },
    )
    .await;
    server.stop().await;
}

fn cluster_trust_bundle(api: &FakeApiServer) -> Option<Value> {
    api.object("clustertrustbundles", "", "istio.io:istiod-ca:root-cert")
}

#[tokio::test]
async fn the_leader_keeps_istios_cluster_trust_bundle() {
    let api = FakeApiServer::start().await;
    cluster_with_namespaces(&api);
    let ca = TestCa::new();
    with_duties(
        &ca,
        &api,
        "meshroot-0",
        "istiod_tls = false\nroot_configmap = false\ncluster_trust_bundle = true\n",
    );
    let server = ca.start().await;
    let bundle = server.server.root_bundle_pem().to_owned();
    let holds = |api: &FakeApiServer, bundle: &str| {
        cluster_trust_bundle(api).is_some_and(|ctb| {
            ctb["spec"]["trustBundle"] == bundle
                && ctb["spec"]["signerName"] == "istio.io/istiod-ca"
                && ctb["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshroot"
        })
    };
    common::eventually("the ClusterTrustBundle created", || holds(&api, &bundle)).await;
    assert_eq!(
        root_configmap(&api, "default"),
        None,
        "root_configmap = false"
    );

    // Edited by someone else: put back.
    let mut edited = cluster_trust_bundle(&api).unwrap();
    edited["spec"]["trustBundle"] = Value::from("stale");
    api.put_object("clustertrustbundles", "", edited);
    common::eventually("an edited ClusterTrustBundle restored", || {
        holds(&api, &bundle)
    })
    .await;

    // Made with another signer (immutable): replaced.
    let mut other = cluster_trust_bundle(&api).unwrap();
    other["spec"]["signerName"] = Value::from("example.com/other");
    api.put_object("clustertrustbundles", "", other);
    common::eventually("a ClusterTrustBundle of another signer replaced", || {
        holds(&api, &bundle)
    })
    .await;

    // Deleted: created again.
    api.delete_object("clustertrustbundles", "", "istio.io:istiod-ca:root-cert");
    common::eventually("a deleted ClusterTrustBundle re-created", || {
        holds(&api, &bundle)
    })
    .await;

    // A new root joins the bundle (a rotation's first step): the ClusterTrustBundle follows.
    let next = ca.add_next_root();
    server.server.reload().await.unwrap();
    common::eventually("the ClusterTrustBundle carries both roots", || {
        cluster_trust_bundle(&api).is_some_and(|ctb| {
            let held = ctb["spec"]["trustBundle"].as_str().unwrap_or_default();
            held.contains(bundle.trim()) && held.contains(next.root_pem().trim())
        })
    })
    .await;
    server.stop().await;
}

fn crl_configmap(api: &FakeApiServer, namespace: &str) -> Option<String> {
    api.object("configmaps", namespace, "istio-ca-crl")
        .and_then(|c| c["data"]["ca-crl.pem"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn the_leader_keeps_the_crl_configmap_and_publishes_a_revocation_at_once() {
    let api = FakeApiServer::start().await;
    cluster_with_namespaces(&api);
    let ca = TestCa::new();
    with_duties(&ca, &api, "meshroot-0", "istiod_tls = false\n");
    let server = ca.start().await;
    let admin = server.server.admin_address();
    let everywhere = ["istio-system", "default", "shop", "kube-system"];
    let (status, first) = common::http_get(admin, "/crl").await;
    assert_eq!(status, 200);
    assert!(first.contains("-----BEGIN X509 CRL-----"), "{first}");
    common::eventually(
        "istio-ca-crl in every namespace, as GET /crl answers",
        || {
            everywhere
                .iter()
                .all(|ns| crl_configmap(&api, ns).as_deref() == Some(first.as_str()))
        },
    )
    .await;

    let cart = common::spiffe_id("shop", "cart");
    server.workload(&ca, MESH, &cart).await;
    let output = common::process::meshroot_output(vec![
        "revoke".into(),
        "--addr".into(),
        admin.to_string(),
        "--spiffe-id".into(),
        cart.clone(),
    ])
    .await;
    assert!(output.contains("revoked 1 certificate(s)"), "{output}");
    let (_, revoked) = common::http_get(admin, "/crl").await;
    assert_ne!(revoked, first, "the CRL is signed again at once");
    common::eventually("the new CRLs in every namespace", || {
        everywhere
            .iter()
            .all(|ns| crl_configmap(&api, ns).as_deref() == Some(revoked.as_str()))
    })
    .await;
    // Deleted by someone: created again.
    api.delete_object("configmaps", "shop", "istio-ca-crl");
    common::eventually("a deleted istio-ca-crl re-created", || {
        crl_configmap(&api, "shop").as_deref() == Some(revoked.as_str())
    })
    .await;
    let (_, metrics) = common::http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("meshroot_revoked_certificates 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshroot_crl_published_seconds{target=\"configmap\"}"),
        "{metrics}"
    );
    server.stop().await;
}

/// Issue 31: Istio ≥ 1.27 can rename the root ConfigMap (`values.global.trustBundleName`) and
/// ≥ 1.29 the CRL ConfigMap (`values.pilot.crlConfigMapName`); meshroot publishes under the
/// names it is given, and not under the defaults.
#[tokio::test]
async fn the_root_and_crl_configmaps_are_published_under_the_configured_names() {
    let api = FakeApiServer::start().await;
    cluster_with_namespaces(&api);
    let ca = TestCa::new();
    with_duties(
        &ca,
        &api,
        "meshroot-0",
        "istiod_tls = false\nroot_configmap_name = \"mesh-trust-bundle\"\ncrl_configmap_name = \"mesh-crl\"\n",
    );
    let server = ca.start().await;
    let bundle = server.server.root_bundle_pem().to_owned();
    let (_, crl) = common::http_get(server.server.admin_address(), "/crl").await;
    common::eventually(
        "both ConfigMaps under their names in every namespace",
        || {
            ["istio-system", "default", "shop", "kube-system"]
                .iter()
                .all(|ns| {
                    api.object("configmaps", ns, "mesh-trust-bundle")
                        .is_some_and(|c| c["data"]["root-cert.pem"] == bundle.as_str())
                        && api
                            .object("configmaps", ns, "mesh-crl")
                            .is_some_and(|c| c["data"]["ca-crl.pem"] == crl.as_str())
                })
        },
    )
    .await;
    assert!(root_configmap(&api, "default").is_none());
    assert!(crl_configmap(&api, "default").is_none());
    server.stop().await;
}

/// Issue 31 (Istio 1.30, #59909, a missed CA-bundle rotation when a bundle's certificates came
/// in another order): after a root rotation's first step, every bundle meshroot publishes, the
/// root ConfigMap, the ClusterTrustBundle, `cacerts`' `root-cert.pem` and the tail of a CSR
/// answer's chain, holds the same certificates in the same order, and nothing but them.
#[tokio::test]
async fn every_published_bundle_has_one_order_after_a_rotation() {
    let api = FakeApiServer::start().await;
    cluster_with_namespaces(&api);
    let ca = TestCa::new();
    ca.allow_cluster_intermediates(MESH, &[common::TRUST_DOMAIN]);
    with_duties(
        &ca,
        &api,
        "meshroot-0",
        "istiod_tls = false\ncluster_trust_bundle = true\n",
    );
    let kubeconfig = api.write_kubeconfig(ca.path(), "west");
    ca.edit_config(|config| {
        format!(
            "{config}\n[[mesh.cluster]]\nid = \"west\"\nkubeconfig = \"{}\"\ncacerts = true\n\
             istiod_address = \"127.0.0.1:1\"\n",
            kubeconfig.display()
        )
    });
    let server = ca.start().await;
    let next = ca.add_next_root();
    server.server.reload().await.unwrap();
    let two_roots = |pem: &str| common::certificates(pem).len() == 2;
    let cacerts_root = |api: &FakeApiServer| {
        use base64::Engine as _;
        api.object("secrets", "istio-system", "cacerts")
            .and_then(|s| s["data"]["root-cert.pem"].as_str().map(str::to_owned))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    common::eventually("every bundle published after the rotation", || {
        let Some(bundle) = root_configmap(&api, "default").filter(|b| two_roots(b)) else {
            return false;
        };
        cluster_trust_bundle(&api).is_some_and(|c| c["spec"]["trustBundle"] == bundle.as_str())
            && cacerts_root(&api).as_deref() == Some(bundle.as_str())
    })
    .await;
    let bundle = root_configmap(&api, "default").unwrap();
    // The mesh's root first, then the new one, as configured.
    let roots = common::certificates(&bundle);
    assert_eq!(roots[0], common::certificates(&ca.root_pem())[0]);
    assert_eq!(roots[1], common::certificates(&next.root_pem())[0]);
    let chain = server.issue(&ca, "cart").await;
    assert_eq!(chain.last(), Some(&bundle), "the CSR answer's tail");
    // Only CERTIFICATE blocks.
    assert_eq!(
        bundle.matches("-----BEGIN ").count(),
        bundle.matches("-----BEGIN CERTIFICATE-----").count()
    );
    server.stop().await;
}
