//! TokenReview authentication across clusters and ztunnel impersonation, against fake Kubernetes
//! API servers that speak the documented HTTP contract over HTTPS (a real API server cannot run
//! here). Each fake counts its calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::Edited as _;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::kube_api::{FakeApiServer, TokenIdentity};
use common::*;
use meshroot::domain::clock::{Clock as _, ManualClock};
use meshroot::domain::record::{Outcome, Record};
use tonic::Code;

/// A CA whose `default` mesh authenticates by TokenReview only, with the fakes: cluster `west`
/// (and `east` if given). `extra` is added to the mesh's settings.
fn ca_with_clusters(west: &FakeApiServer, east: Option<&FakeApiServer>, extra: &str) -> TestCa {
    ca_with_review_timeout(west, east, extra, "10s")
}

fn ca_with_review_timeout(
    west: &FakeApiServer,
    east: Option<&FakeApiServer>,
    extra: &str,
    review_timeout: &str,
) -> TestCa {
    let ca = TestCa::new();
    let mut clusters = format!(
        "\n[[mesh.cluster]]\nid = \"west\"\nkubeconfig = \"{}\"\nreview_timeout = \"{review_timeout}\"\n",
        west.write_kubeconfig(ca.path(), "west").display()
    );
    if let Some(east) = east {
        clusters.push_str(&format!(
            "\n[[mesh.cluster]]\nid = \"east\"\nkubeconfig = \"{}\"\n",
            east.write_kubeconfig(ca.path(), "east").display()
        ));
    }
    ca.edit_config(|text| {
        // Drop the development JWT issuer that init wrote.
        let start = text.find("\n# Local development token issuer").unwrap();
        let end = text[start..].find("dev_signing_key").unwrap() + start;
        let end = text[end..].find('\n').unwrap() + end;
        let text = format!("{}{}", &text[..start], &text[end..]);
        // Mesh-level keys go right after the mesh's ca_dir line; clusters at the end.
        let text = text.edited(
            "ca_dir = \"default\"\n",
            &format!("ca_dir = \"default\"\n{extra}"),
        );
        format!("{text}{clusters}")
    });
    ca
}

async fn request(
    server: &TestServer,
    identity: &str,
    token: &str,
    cluster: &str,
) -> Result<Vec<String>, tonic::Status> {
    server
        .call_with(
            ztunnel_csr(identity),
            Some(token.to_owned()),
            0,
            cluster,
            None,
        )
        .await
        .map(|r| r.cert_chain)
}

fn denial_reason(record: &Record) -> &str {
    match &record.outcome {
        Outcome::Denied(denial) => &denial.reason,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn issues_after_a_positive_review_in_the_cluster_named_by_clusterid() {
    let west = FakeApiServer::start().await;
    let east = FakeApiServer::start().await;
    west.add_token(
        "west-token",
        TokenIdentity::service_account("shop", "cart", Some(("cart-1", "uid-1"))),
    );
    east.add_token(
        "east-token",
        TokenIdentity::service_account("bank", "vault", None),
    );
    let ca = ca_with_clusters(&west, Some(&east), "");
    let server = ca.start().await;

    let chain = request(&server, &spiffe_id("shop", "cart"), "west-token", "west")
        .await
        .unwrap();
    verify_chain(&chain, &ca.root_pem());
    let chain = request(&server, &spiffe_id("bank", "vault"), "east-token", "east")
        .await
        .unwrap();
    verify_chain(&chain, &ca.root_pem());
    assert_eq!((west.reviews(), east.reviews()), (1, 1));
    assert_eq!(west.state.audiences.lock().unwrap()[0], ["istio-ca"]);

    // The west token is unknown to east: the cluster id decides who reviews it.
    let status = request(&server, &spiffe_id("shop", "cart"), "west-token", "east")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        denial_reason(&server.record_of(&status)),
        "token-review-unauthenticated"
    );

    let records = server.records();
    let issued = records
        .iter()
        .find(|r| r.caller.cluster_id == "west" && matches!(r.outcome, Outcome::Issued(_)))
        .unwrap();
    assert_eq!(issued.caller.authenticator, "token-review");
    assert_eq!(issued.caller.subject, "system:serviceaccount:shop:cart");
    assert_eq!(
        (
            issued.caller.pod_name.as_str(),
            issued.caller.pod_uid.as_str()
        ),
        ("cart-1", "uid-1")
    );
    server.stop().await;
}

#[tokio::test]
async fn refuses_unauthenticated_wrong_group_malformed_user_and_unknown_cluster() {
    let west = FakeApiServer::start().await;
    west.add_token(
        "not-a-service-account",
        TokenIdentity {
            username: "jane@example.com".into(),
            groups: vec!["system:authenticated".into()],
            pod: None,
        },
    );
    west.add_token(
        "malformed-user",
        TokenIdentity {
            username: "system:serviceaccount:shop".into(),
            groups: vec!["system:serviceaccounts".into()],
            pod: None,
        },
    );
    let ca = ca_with_clusters(&west, None, "");
    let server = ca.start().await;
    let id = spiffe_id("shop", "cart");
    for (token, cluster, reason) in [
        ("revoked-token", "west", "token-review-unauthenticated"),
        (
            "not-a-service-account",
            "west",
            "token-review-not-service-account",
        ),
        ("malformed-user", "west", "token-review-not-service-account"),
        ("any-token", "south", "cluster-unknown"),
        ("any-token", "", "cluster-unknown"),
    ] {
        let status = request(&server, &id, token, cluster).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token}@{cluster}");
        assert_eq!(
            denial_reason(&server.record_of(&status)),
            reason,
            "{token}@{cluster}"
        );
    }
    assert_eq!(
        west.reviews(),
        3,
        "unknown clusters never reach an API server"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_api_server_that_is_down_or_slow_gives_a_retryable_unavailable() {
    let west = FakeApiServer::start().await;
    west.add_token("t", TokenIdentity::service_account("shop", "cart", None));
    let ca = ca_with_review_timeout(&west, None, "", "500ms");
    let server = ca.start().await;
    let id = spiffe_id("shop", "cart");

    west.state
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let status = request(&server, &id, "t", "west").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        denial_reason(&server.record_of(&status)),
        "token-review-unavailable"
    );
    west.state
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);

    *west.state.delay.lock().unwrap() = Some(Duration::from_secs(3));
    let started = Instant::now();
    let status = request(&server, &id, "t", "west").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the 500 ms review timeout applied"
    );
    assert_eq!(
        denial_reason(&server.record_of(&status)),
        "token-review-unavailable"
    );
    *west.state.delay.lock().unwrap() = None;

    // Recovered: the failure was not cached.
    request(&server, &id, "t", "west").await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn caches_positive_reviews_until_the_cache_limit_or_the_tokens_exp() {
    let west = FakeApiServer::start().await;
    let clock = ManualClock::at(SystemTime::now());
    west.add_token(
        "opaque",
        TokenIdentity::service_account("shop", "cart", None),
    );
    let ca = ca_with_clusters(&west, None, "");
    let server = ca.start_with_clock(Arc::new(clock.clone())).await;
    let id = spiffe_id("shop", "cart");

    request(&server, &id, "opaque", "west").await.unwrap();
    request(&server, &id, "opaque", "west").await.unwrap();
    assert_eq!(
        west.reviews(),
        1,
        "the second request was served from the cache"
    );
    clock.advance(Duration::from_secs(61));
    request(&server, &id, "opaque", "west").await.unwrap();
    assert_eq!(west.reviews(), 2, "reviewed again after the 60 s limit");

    // A JWT-shaped token that expires in 30 s.
    let now = meshroot::domain::clock::unix_seconds(clock.now());
    use base64::Engine as _;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{{\"exp\":{}}}", now + 30));
    let short_lived = format!("eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln");
    west.add_token(
        &short_lived,
        TokenIdentity::service_account("shop", "cart", None),
    );
    request(&server, &id, &short_lived, "west").await.unwrap();
    clock.advance(Duration::from_secs(20));
    request(&server, &id, &short_lived, "west").await.unwrap();
    assert_eq!(west.reviews(), 3);
    clock.advance(Duration::from_secs(15));
    // Past the token's exp (30 s), though within the 60 s limit: reviewed again.
    request(&server, &id, &short_lived, "west").await.unwrap();
    assert_eq!(west.reviews(), 4);
    server.stop().await;
}

#[tokio::test]
async fn a_renewal_storm_of_1000_requests_from_100_tokens_costs_at_most_100_reviews() {
    let west = FakeApiServer::start().await;
    let identities: Vec<(String, String, String)> = (0..100)
        .map(|i| {
            let namespace = format!("ns{i}");
            let token = format!("storm-token-{i}");
            west.add_token(
                &token,
                TokenIdentity::service_account(&namespace, "app", None),
            );
            let csr = ztunnel_csr(&spiffe_id(&namespace, "app"));
            (namespace, token, csr)
        })
        .collect();
    let ca = ca_with_clusters(&west, None, "");
    let server = ca.start().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    // 50 connections, each sending 20 requests: every token is used 10 times, interleaved.
    for worker in 0..50 {
        let target = server.target("localhost");
        let work: Vec<(String, String)> = (0..20)
            .map(|n| {
                let (_, token, csr) = &identities[(worker * 20 + n) % 100];
                (token.clone(), csr.clone())
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            let channel = meshroot::edge::client::connect(&target).await.unwrap();
            let mut latencies = Vec::new();
            for (token, csr) in work {
                let begun = Instant::now();
                let metadata = meshroot::edge::client::AgentMetadata {
                    token: Some(token),
                    cluster_id: "west".into(),
                };
                meshroot::edge::client::create_certificate(channel.clone(), csr, 0, &metadata)
                    .await
                    .unwrap();
                latencies.push(begun.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let reviews = west.reviews();
    eprintln!(
        "storm: {} requests in {elapsed:?}, {reviews} TokenReviews; request latency p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        latencies[latencies.len() - 1],
    );
    assert_eq!(latencies.len(), 1000);
    assert!(reviews <= 100, "{reviews} reviews for 100 distinct tokens");
    assert!(reviews >= 100, "every token was reviewed once: {reviews}");
    server.stop().await;
}

#[tokio::test]
async fn ztunnel_gets_the_identity_of_a_pod_on_its_node() {
    let west = FakeApiServer::start().await;
    west.add_ambient_workloads();
    let ca = ca_with_clusters(&west, None, "");
    let server = ca.start().await;
    let cart = spiffe_id("shop", "cart");
    let chain = server.impersonate("ztunnel-token", &cart).await.unwrap();
    verify_chain(&chain, &ca.root_pem());
    let leaf = certificates(&chain[0]).remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let san = parsed.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![x509_parser::prelude::GeneralName::URI(&cart)]
    );

    let record = &server.records_for_serial(parsed.raw_serial())[0];
    assert_eq!(
        record.caller.spiffe_id,
        spiffe_id("istio-system", "ztunnel")
    );
    assert_eq!(record.caller.pod_name, "ztunnel-abc");
    let Outcome::Issued(issued) = &record.outcome else {
        panic!()
    };
    assert_eq!(issued.spiffe_id, cart);

    // Pod lookups are cached: a second impersonation asks the API server nothing new.
    let (gets, lists) = (
        west.state
            .pod_gets
            .load(std::sync::atomic::Ordering::SeqCst),
        west.state
            .pod_lists
            .load(std::sync::atomic::Ordering::SeqCst),
    );
    server.impersonate("ztunnel-token", &cart).await.unwrap();
    assert_eq!(
        west.state
            .pod_gets
            .load(std::sync::atomic::Ordering::SeqCst),
        gets
    );
    assert_eq!(
        west.state
            .pod_lists
            .load(std::sync::atomic::Ordering::SeqCst),
        lists
    );
    server.stop().await;
}

#[tokio::test]
async fn refuses_impersonation_for_untrusted_accounts_other_nodes_and_stale_pods() {
    let west = FakeApiServer::start().await;
    west.add_ambient_workloads();
    let ca = ca_with_clusters(&west, None, "");
    let server = ca.start().await;
    for (token, identity, reason) in [
        (
            "cart-token",
            spiffe_id("bank", "vault"),
            "impersonation-untrusted-account",
        ),
        (
            "ztunnel-token",
            spiffe_id("bank", "vault"),
            "impersonation-no-pod-on-node",
        ),
        (
            "stale-ztunnel-token",
            spiffe_id("shop", "cart"),
            "impersonation-caller-pod-mismatch",
        ),
        (
            "ztunnel-token",
            "spiffe://other.example/ns/shop/sa/cart".to_owned(),
            "impersonation-identity-invalid",
        ),
    ] {
        let status = server.impersonate(token, &identity).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token} as {identity}"
        );
        assert_eq!(
            denial_reason(&server.record_of(&status)),
            reason,
            "{token} as {identity}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn refuses_impersonation_when_no_node_account_is_trusted() {
    let west = FakeApiServer::start().await;
    west.add_ambient_workloads();
    let ca = ca_with_clusters(&west, None, "trusted_node_accounts = []\n");
    let server = ca.start().await;
    let status = server
        .impersonate("ztunnel-token", &spiffe_id("shop", "cart"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        denial_reason(&server.record_of(&status)),
        "impersonation-untrusted-account"
    );
    server.stop().await;
}

#[tokio::test]
async fn beyond_max_concurrent_requests_the_answer_is_a_retryable_resource_exhausted() {
    let west = FakeApiServer::start().await;
    west.add_token("t", TokenIdentity::service_account("shop", "cart", None));
    let ca = ca_with_clusters(&west, None, "");
    ca.edit_config(|text| format!("max_concurrent_requests = 1\n{text}"));
    let server = Arc::new(ca.start().await);
    let id = spiffe_id("shop", "cart");
    // The first request waits on a slow API server, holding the only slot.
    *west.state.delay.lock().unwrap() = Some(Duration::from_millis(1500));
    let first = {
        let (server, id) = (server.clone(), id.clone());
        tokio::spawn(async move { request(&server, &id, "t", "west").await })
    };
    common::eventually("the first request reaches the API server", || {
        west.arrivals() > 0
    })
    .await;
    let records_before = server.records().len();
    let refused = request(&server, &id, "t", "west").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(
        server.records().len(),
        records_before,
        "an overload refusal decides nothing and is not recorded"
    );
    // The first one is unaffected, and the slot is free again afterwards.
    first.await.unwrap().unwrap();
    *west.state.delay.lock().unwrap() = None;
    request(&server, &id, "t", "west").await.unwrap();
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}

#[tokio::test]
async fn a_request_still_unanswered_at_request_timeout_is_cancelled() {
    let west = FakeApiServer::start().await;
    west.add_token("t", TokenIdentity::service_account("default", "app", None));
    // The review may take 10 s, but the request as a whole only 1 s.
    let ca = ca_with_review_timeout(&west, None, "", "10s");
    ca.edit_config(|config| format!("request_timeout = \"1s\"\n{config}"));
    let server = ca.start().await;
    *west.state.delay.lock().unwrap() = Some(Duration::from_secs(4));
    let started = Instant::now();
    let status = request(&server, &spiffe_id("default", "app"), "t", "west")
        .await
        .unwrap_err();
    // CANCELLED: istio-agent retries it.
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
    *west.state.delay.lock().unwrap() = None;
    server.stop().await;
}

/// D12: ztunnel's own request (P-256 CSR, empty subject, `ImpersonatedIdentity`, `clusterid`)
/// works whichever token authenticator accepts its token: TokenReview, or the cluster's issuer
/// trusted offline, which takes the pod from the projected token's `kubernetes.io` claims and
/// confirms it in the cluster the request names.
#[tokio::test]
async fn ztunnel_impersonates_under_every_authenticator_order() {
    let west = FakeApiServer::start().await;
    west.add_ambient_workloads();
    for order in [
        r#"["client-cert", "jwt", "token-review"]"#,
        r#"["jwt", "token-review"]"#,
        r#"["token-review", "jwt"]"#,
        r#"["jwt"]"#,
        r#"["token-review"]"#,
    ] {
        let ca = TestCa::new();
        let kubeconfig = west.write_kubeconfig(ca.path(), "west");
        ca.edit_config(|text| {
            format!(
                "authenticators = {order}\n{text}\n[[mesh.cluster]]\nid = \"west\"\nkubeconfig = \"{}\"\n",
                kubeconfig.display()
            )
        });
        let bound = |uid: &str, node: &str| {
            ca.token_with(MESH, "istio-system", "ztunnel", |spec| {
                spec.pod = Some(meshroot::adapters::authn::PodRef {
                    name: "ztunnel-abc".into(),
                    uid: uid.into(),
                    node: node.into(),
                })
            })
        };
        let token = bound("uid-z1", "node-1");
        // The same token, as the cluster's API server would review it.
        west.add_token(
            &token,
            TokenIdentity::service_account(
                "istio-system",
                "ztunnel",
                Some(("ztunnel-abc", "uid-z1")),
            ),
        );
        let server = ca.start().await;
        let cart = spiffe_id("shop", "cart");
        let chain = server
            .impersonate(&token, &cart)
            .await
            .unwrap_or_else(|status| panic!("{order}: {status:?}"));
        verify_chain(&chain, &ca.root_pem());
        let leaf = certificates(&chain[0]).remove(0);
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let record = &server.records_for_serial(parsed.raw_serial())[0];
        let first_token_authenticator = if order.find("jwt") < order.find("token-review") {
            "jwt"
        } else {
            "token-review"
        };
        let expected = match order {
            r#"["jwt"]"# => "jwt",
            r#"["token-review"]"# => "token-review",
            _ => first_token_authenticator,
        };
        assert_eq!(record.caller.authenticator, expected, "{order}");
        assert_eq!(record.caller.pod_name, "ztunnel-abc", "{order}");

        if expected == "jwt" {
            // A token bound to a pod that no longer exists with that uid, or that names
            // another node, is refused.
            for (token, what) in [
                (bound("uid-old", "node-1"), "stale uid"),
                (bound("uid-z1", "node-2"), "other node"),
            ] {
                let status = server.impersonate(&token, &cart).await.unwrap_err();
                assert_eq!(status.code(), Code::Unauthenticated, "{order}: {what}");
                assert_eq!(
                    denial_reason(&server.record_of(&status)),
                    "impersonation-caller-pod-mismatch",
                    "{order}: {what}"
                );
            }
        }
        server.stop().await;
    }
}
