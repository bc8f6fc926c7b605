//! Metrics and health on a real server: `/metrics` scraped over HTTP/1.1 and parsed with the
//! Prometheus project's Python text parser (`prometheus_client`), `/healthz` and `/readyz`, and
//! the gRPC health service over TLS on the CSR listener and in plain text on the admin address.
//!
//! The parser runs in [`common::python`] (`.ci/run` installs `prometheus-client` there).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::Edited as _;
use common::{agent_csr, spiffe_id, TestCa, MESH};
use meshroot::domain::clock::ManualClock;
use meshroot::edge::client::{self, CsrShape, San};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Metric families as the parser reads them: name → (type, [(sample name, labels, value)]).
type Families = BTreeMap<String, (String, Vec<(String, BTreeMap<String, String>, f64)>)>;

/// The families `prometheus_client`'s text parser reads from `text`:
/// name → (type, [(sample name, labels, value)]). Panics if the parser rejects the text.
fn parse_exposition(text: &str) -> Families {
    const SCRIPT: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    # JSON has no infinity: non-finite values go as text ("inf"), which Rust parses back.
    families[family.name] = [family.type, [[s.name, s.labels, s.value if math.isfinite(s.value) else repr(s.value)] for s in family.samples]]
print(json.dumps(families))
"#;
    let mut child = Command::new(common::python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    type Raw = BTreeMap<
        String,
        (
            String,
            Vec<(String, BTreeMap<String, String>, serde_json::Value)>,
        ),
    >;
    let parsed: Raw = serde_json::from_slice(&output.stdout).unwrap();
    parsed
        .into_iter()
        .map(|(name, (kind, samples))| {
            let samples = samples
                .into_iter()
                .map(|(sample, labels, value)| {
                    let value = match value {
                        serde_json::Value::String(text) => text.parse().unwrap(),
                        number => number.as_f64().unwrap(),
                    };
                    (sample, labels, value)
                })
                .collect();
            (name, (kind, samples))
        })
        .collect()
}

fn sample(families: &Families, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.values().find_map(|(_, samples)| {
        samples.iter().find_map(|(sample, sample_labels, value)| {
            let wanted: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            // The Python parser reports a counter's samples as `<name>_total` even when the
            // text has Istio's bare names; the raw lines are checked separately.
            let same = sample == name || *sample == format!("{name}_total");
            (same && *sample_labels == wanted).then_some(*value)
        })
    })
}

fn not_after(pem: &str) -> f64 {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let der = common::certificates(pem).remove(0);
    let (_, parsed) = X509Certificate::from_der(der.as_ref()).unwrap();
    parsed.validity().not_after.timestamp() as f64
}

#[tokio::test]
async fn metrics_count_outcomes_under_istios_names_and_parse_with_the_prometheus_parser() {
    let ca = TestCa::new();
    let server = ca.start().await;
    for sa in ["a", "b"] {
        server.issue(&ca, sa).await;
    }
    // No token: an authentication failure.
    server
        .call(agent_csr(&spiffe_id("default", "a")), None, 0)
        .await
        .unwrap_err();
    // Not a CSR: a parsing error.
    server
        .call(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                .to_owned(),
            Some(ca.token(MESH, "default", "a")),
            0,
        )
        .await
        .unwrap_err();
    // Two identities in one CSR: none can be extracted (Istio's ID-extraction error).
    let mut two = CsrShape::istio_agent(&spiffe_id("default", "a"));
    two.sans.push(San::Uri(spiffe_id("default", "b")));
    server
        .call(
            client::build_csr(common::rsa_key(), &two).unwrap(),
            Some(ca.token(MESH, "default", "a")),
            0,
        )
        .await
        .unwrap_err();
    // Another identity than the token's: a policy denial.
    server
        .call(
            agent_csr(&spiffe_id("default", "other")),
            Some(ca.token(MESH, "default", "a")),
            0,
        )
        .await
        .unwrap_err();

    let (status, text) = common::http_get(server.server.admin_address(), "/metrics").await;
    assert_eq!(status, 200);
    let families = parse_exposition(&text);
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&families, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    assert_eq!(value("citadel_server_csr_count", &[]), 6.0);
    assert_eq!(
        value("citadel_server_success_cert_issuance_count", &[]),
        2.0
    );
    assert_eq!(
        value("citadel_server_authentication_failure_count", &[]),
        1.0
    );
    assert_eq!(value("citadel_server_csr_parsing_err_count", &[]), 1.0);
    assert_eq!(value("citadel_server_id_extraction_err_count", &[]), 1.0);
    // Nothing failed after a request was accepted; both of Istio's error types are present.
    for error in ["CA_NOT_READY", "CERT_GEN_ERROR"] {
        assert_eq!(
            value("citadel_server_csr_sign_err_count", &[("error", error)]),
            0.0
        );
    }
    assert_eq!(families["citadel_server_csr_count"].0, "counter");
    // The exact names Istio's dashboards query.
    for line in [
        "citadel_server_csr_count 6",
        "citadel_server_success_cert_issuance_count 2",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?}");
    }
    let denials: f64 = families["meshroot_denials"]
        .1
        .iter()
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(denials, 4.0, "{text}");
    assert_eq!(
        value("meshroot_denials_total", &[("reason", "identity-mismatch")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            "meshroot_issuance_duration_seconds_count",
            &[("mesh", MESH), ("outcome", "issued")]
        ),
        2.0
    );
    assert_eq!(
        families["meshroot_issuance_duration_seconds"].0,
        "histogram"
    );
    // Two workloads and meshroot's own serving certificate are issued, four refusals: every
    // outcome is a record; so is the intermediate the server took into service.
    assert_eq!(value("meshroot_store_records", &[]), 8.0);
    assert!(value("meshroot_store_commit_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(value("meshroot_ready", &[]), 1.0);
    let root = std::fs::read_to_string(ca.path().join("root-cert.pem")).unwrap();
    assert_eq!(
        value(
            "citadel_server_root_cert_expiry_timestamp",
            &[("mesh", MESH)]
        ),
        not_after(&root)
    );
    let chain = std::fs::read_to_string(ca.path().join(MESH).join("ca-cert.pem")).unwrap();
    assert_eq!(
        value(
            "citadel_server_cert_chain_expiry_timestamp",
            &[("mesh", MESH)]
        ),
        not_after(&chain)
    );
    // Istio's derived gauges: the time left until the same instants (this test's clock is the
    // system's, read a moment apart).
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (name, pem) in [
        ("citadel_server_root_cert_expiry_seconds", &root),
        ("citadel_server_cert_chain_expiry_seconds", &chain),
    ] {
        let left = value(name, &[("mesh", MESH)]);
        assert!(
            (left - (not_after(pem) - now)).abs() < 60.0,
            "{name} {left}"
        );
    }
    // All ten of istiod's CA metric names.
    let istio_names = [
        "citadel_server_csr_count",
        "citadel_server_authentication_failure_count",
        "citadel_server_csr_parsing_err_count",
        "citadel_server_id_extraction_err_count",
        "citadel_server_csr_sign_err_count",
        "citadel_server_success_cert_issuance_count",
        "citadel_server_root_cert_expiry_timestamp",
        "citadel_server_root_cert_expiry_seconds",
        "citadel_server_cert_chain_expiry_timestamp",
        "citadel_server_cert_chain_expiry_seconds",
    ];
    for name in istio_names {
        assert!(
            text.lines()
                .any(|line| line.starts_with(&format!("# TYPE {name} "))),
            "no {name} in\n{text}"
        );
    }
    // Bounded cardinality: no label value is an identity, a namespace or a caller.
    for (_, samples) in families.values() {
        for (name, labels, _) in samples {
            for value in labels.values() {
                assert!(
                    !value.contains("spiffe://") && !value.contains("default/"),
                    "{name} has a per-identity label {value:?}"
                );
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn healthz_readyz_and_grpc_health_report_serving() {
    let ca = TestCa::new();
    ca.edit_config(|config| format!("shutdown_grace = \"2s\"\n{config}"));
    let server = ca.start().await;
    let admin = server.server.admin_address();
    assert_eq!(
        common::http_get(admin, "/healthz").await,
        (200, "ok\n".to_owned())
    );
    assert_eq!(
        common::http_get(admin, "/readyz").await,
        (200, "ready\n".to_owned())
    );
    assert_eq!(common::http_get(admin, "/nothing-here").await.0, 404);

    // gRPC health over TLS on the CSR listener, the way grpc-health-probe asks.
    let channel = meshroot::edge::client::connect(&server.target("localhost"))
        .await
        .unwrap();
    let mut tls_health = HealthClient::new(channel);
    // ...and in plain text on the (loopback) admin address.
    let mut admin_health = HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{admin}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for service in ["", "istio.v1.auth.IstioCertificateService"] {
        for client in [&mut tls_health, &mut admin_health] {
            let answer = client
                .check(HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
        }
    }
    let unknown = tls_health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // A health watcher hears NOT_SERVING when the server starts to shut down, and the open
    // stream does not hold the shutdown up beyond shutdown_grace.
    let mut watch = admin_health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let stopping = tokio::spawn(server.stop());
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a status change within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("shutdown ends although a watch stream is still open")
        .unwrap();
}

#[tokio::test]
async fn readyz_fails_with_the_reason_once_the_signing_certificate_has_expired() {
    let ca = TestCa::new();
    let clock = ManualClock::at(SystemTime::now());
    let server = ca.start_with_clock(Arc::new(clock.clone())).await;
    let admin = server.server.admin_address();
    assert_eq!(common::http_get(admin, "/readyz").await.0, 200);
    let chain = std::fs::read_to_string(ca.path().join(MESH).join("ca-cert.pem")).unwrap();
    let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(not_after(&chain) as u64);
    clock.set(expiry + Duration::from_secs(1));
    let (status, body) = common::http_get(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        format!("not ready: mesh {MESH}: the signing certificate has expired\n")
    );
    // The chain's time left is negative, by exactly the second the clock is past it.
    let families = parse_exposition(&common::http_get(admin, "/metrics").await.1);
    assert_eq!(sample(&families, "meshroot_ready", &[]), Some(0.0));
    assert_eq!(
        sample(
            &families,
            "citadel_server_cert_chain_expiry_seconds",
            &[("mesh", MESH)]
        ),
        Some(-1.0)
    );
    // Liveness is not readiness: the process still answers, so it is not restarted for this.
    assert_eq!(common::http_get(admin, "/healthz").await.0, 200);
    server.stop().await;
}

/// The Grafana dashboard (deploy/grafana/meshroot-dashboard.json) charts only series a running
/// meshroot exposes, and charts each thing docs/monitoring.md promises: issuance rate per mesh, denials
/// by reason, latency, the three expiry countdowns, export lag and cluster membership.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_series_meshroot_exposes() {
    // meshroot_leader: only with [kubernetes] (a cluster's Lease).
    let exposed = exposed_families(&[("src/edge/server/monitoring.rs", "meshroot_leader")]).await;

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/grafana/meshroot-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut queried = std::collections::BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap().to_owned();
            // Every metric name in the query (histograms by their _bucket/_count/_sum series).
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("citadel_server_") || word.starts_with("meshroot_") {
                    let family = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|suffix| {
                            word.strip_suffix(suffix)
                                .filter(|base| exposed.contains(*base))
                        })
                        .unwrap_or(word);
                    queried.insert(family.to_owned());
                }
            }
            exprs.push(expr);
        }
    }
    for name in &queried {
        assert!(
            exposed.contains(name.as_str()),
            "the dashboard queries {name}, which /metrics does not expose"
        );
    }
    for wanted in [
        "meshroot_issuance_duration_seconds",
        "meshroot_denials_total",
        "citadel_server_root_cert_expiry_seconds",
        "citadel_server_cert_chain_expiry_seconds",
        "meshroot_istiod_tls_expiry_seconds",
        "meshroot_export_lag_records",
        "meshroot_ready",
        "meshroot_leader",
    ] {
        assert!(
            queried.contains(wanted),
            "the dashboard does not chart {wanted}"
        );
    }
    // Issuance per mesh, latency as quantiles of the histogram.
    assert!(exprs
        .iter()
        .any(|e| e.contains("sum by (mesh)") && e.contains("issuance_duration_seconds_count")));
    assert!(exprs
        .iter()
        .any(|e| e.contains("histogram_quantile(0.99")
            && e.contains("issuance_duration_seconds_bucket")));
}

/// The store's capacity forecast, driven by the injectable clock: the rate is the records of
/// the last day (extrapolated from a younger store's age), the time to full is the volume's
/// free bytes at that rate, and a window pruning balances first, or no recent records, mean it
/// never fills (`+Inf`).
#[tokio::test]
async fn the_store_forecast_follows_the_recorded_rate_on_the_clock() {
    let ca = TestCa::new();
    // A 100 MiB budget kept for 100 years: the volume would fill first, so the forecast is
    // finite.
    ca.edit_config(|text| {
        text.edited(
            "issued_retention = \"400d\"",
            "issued_retention = \"36500d\"\nvolume_bytes = 104857600",
        )
    });
    let start = SystemTime::now();
    let clock = ManualClock::at(start);
    let server = ca.start_with_clock(Arc::new(clock.clone())).await;
    for i in 0..11 {
        server.issue(&ca, &format!("sa{i}")).await;
    }
    let admin = server.server.admin_address();
    let scrape = || async { parse_exposition(&common::http_get(admin, "/metrics").await.1) };
    // Six hours on: the 11 issued and the start's own records (the intermediate's ca-key
    // record, the serving certificate), all in six hours: four times that a day.
    clock.set(start + Duration::from_secs(6 * 3_600));
    let families = scrape().await;
    let records = sample(&families, "meshroot_store_records", &[]).unwrap();
    assert_eq!(records, 13.0);
    assert_eq!(
        sample(&families, "meshroot_store_records_per_day", &[]),
        Some(records * 4.0)
    );
    let per_record = sample(&families, "meshroot_store_bytes_per_record", &[]).unwrap();
    assert_eq!(
        per_record,
        meshroot::domain::capacity::BYTES_PER_RECORD as f64,
        "a small store uses the measured figure"
    );
    assert!(sample(&families, "meshroot_store_bytes", &[]).unwrap() > 0.0);
    let free = sample(&families, "meshroot_store_volume_free_bytes", &[]).unwrap();
    let full_in = sample(&families, "meshroot_store_full_in_seconds", &[]).unwrap();
    let expected = free / (records * 4.0 * per_record) * 86_400.0;
    assert!(
        (full_in - expected).abs() / expected < 0.01,
        "{full_in} s, expected about {expected} s"
    );
    // Two days on, the issuances are out of the last day; only what the server recorded
    // itself since (its serving certificate, renewed as the clock jumped) counts, and at that
    // rate pruning keeps up.
    clock.set(start + Duration::from_secs(2 * 86_400));
    let families = scrape().await;
    let rate = sample(&families, "meshroot_store_records_per_day", &[]).unwrap();
    assert!(rate <= 2.0, "{rate}");
    assert_eq!(
        sample(&families, "meshroot_store_full_in_seconds", &[]),
        Some(f64::INFINITY)
    );
    server.stop().await;

    // The default retention (400 days after expiry) at the same rate is pruned long before
    // the volume fills.
    ca.edit_config(|text| {
        text.edited(
            "issued_retention = \"36500d\"\nvolume_bytes = 104857600",
            "issued_retention = \"400d\"",
        )
    });
    let clock = ManualClock::at(start + Duration::from_secs(6 * 3_600));
    let server = ca.start_with_clock(Arc::new(clock.clone())).await;
    let families = scrape_at(server.server.admin_address()).await;
    assert_eq!(
        sample(&families, "meshroot_store_full_in_seconds", &[]),
        Some(f64::INFINITY)
    );
    server.stop().await;
}

async fn scrape_at(admin: std::net::SocketAddr) -> Families {
    parse_exposition(&common::http_get(admin, "/metrics").await.1)
}

/// At start, a retention the volume cannot hold at the recent rate is named in the log, with
/// the volume it needs; the default retention is not.
#[test]
fn a_retention_the_volume_cannot_hold_is_warned_of_at_start() {
    let ca = TestCa::new();
    let config = ca.config_path().to_string_lossy().into_owned();
    let mut fits = common::process::Serving::start(ca.path(), &["--config", &config]);
    fits.wait_for_log("record store capacity");
    fits.stop();
    let log = fits.log();
    assert!(
        !log.contains("the store's volume has room for"),
        "the default retention fits: {log}"
    );
    // A hundred years at the start's rate (the records of the start, as an hour's worth: 72
    // a day) is 1 GB at 400 bytes a record; the store may take 100 MiB.
    ca.edit_config(|text| {
        text.edited(
            "issued_retention = \"400d\"",
            "issued_retention = \"36500d\"\nvolume_bytes = 104857600",
        )
    });
    let mut serving = common::process::Serving::start(ca.path(), &["--config", &config]);
    serving.wait_for_log("retention of 3650");
    serving.wait_for_log("days at the last day's rate (72 records/day");
    serving.wait_for_log("grow the volume to");
    serving.stop();
}

/// The certificate validity gauges the expiry alerts divide by: for the root, the intermediate
/// and the serving certificate, the NotBefore and NotAfter an independent parser (pyca's
/// `cryptography`) reads from the files and from the certificate the CSR port serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_certificate_validity_is_exposed_as_a_parser_reads_it() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let (_, text) = common::http_get(server.server.admin_address(), "/metrics").await;
    let scraped = |family: &str, certificate: &str| -> i64 {
        let mesh = if certificate == "serving" {
            String::new()
        } else {
            format!(",mesh=\"{MESH}\"")
        };
        let prefix = format!("{family}{{certificate=\"{certificate}\"{mesh}}} ");
        let line = text
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        line.parse::<f64>().unwrap() as i64
    };
    let script = "import sys, ssl\n\
        from cryptography import x509\n\
        def dates(pem):\n\
        \x20   c = x509.load_pem_x509_certificate(pem)\n\
        \x20   return int(c.not_valid_before_utc.timestamp()), int(c.not_valid_after_utc.timestamp())\n\
        print('serving', *dates(ssl.get_server_certificate(('127.0.0.1', int(sys.argv[1])), timeout=20).encode()))\n\
        for name, path in zip(sys.argv[2::2], sys.argv[3::2]):\n\
        \x20   print(name, *dates(open(path, 'rb').read()))\n";
    let port = server.server.local_address().port().to_string();
    let (root, intermediate) = (
        ca.path().join("root-cert.pem"),
        ca.path().join(MESH).join("ca-cert.pem"),
    );
    let out = Command::new(common::python())
        .args(["-c", script, &port])
        .arg("root")
        .arg(&root)
        .arg("intermediate")
        .arg(&intermediate)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = String::from_utf8(out.stdout).unwrap();
    for line in parsed.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (certificate, not_before, not_after) = (
            fields[0],
            fields[1].parse::<i64>().unwrap(),
            fields[2].parse::<i64>().unwrap(),
        );
        assert_eq!(
            (
                scraped("meshroot_certificate_not_before_timestamp", certificate),
                scraped("meshroot_certificate_not_after_timestamp", certificate)
            ),
            (not_before, not_after),
            "{certificate}"
        );
    }
    assert_eq!(parsed.lines().count(), 3, "{parsed}");
    server.stop().await;
}

/// The metric families a running meshroot exposes after one issuance, with an export sink so
/// the lag series exist; plus `elsewhere`: families that need more than one process or a
/// cluster, each checked to be named in its (file, family) source file instead.
pub(crate) async fn exposed_families(
    elsewhere: &[(&str, &str)],
) -> std::collections::BTreeSet<String> {
    let ca = TestCa::new();
    let exports = ca.path().join("exports");
    ca.edit_config(|text| {
        format!(
            "{text}\n[audit.export]\njsonl_dir = {:?}\n",
            exports.to_string_lossy()
        )
    });
    let server = ca.start().await;
    server.issue(&ca, "a").await;
    let (_, text) = common::http_get(server.server.admin_address(), "/metrics").await;
    server.stop().await;
    parse_exposition(&text);
    let mut exposed: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    for (file, family) in elsewhere {
        let source =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
                .unwrap_or_default();
        assert!(
            source.contains(&format!("\"{family}\"")),
            "{family} in {file}"
        );
        exposed.insert((*family).to_owned());
    }
    exposed
}
