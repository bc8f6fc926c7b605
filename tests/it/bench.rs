//! `meshroot bench` end to end, in a small run: it starts its own `meshroot serve` process,
//! loads it over real TLS, and reports what docs/performance.md's tables is made of.

use crate::common::process::meshroot_output;

/// An open-loop run sends requests on its schedule (not when earlier ones are answered), so
/// the requests it reports are the offered rate times the measured seconds, and it reports the
/// server's CPU per issuance as a multiple of the machine's own crypto cost of one issuance.
#[tokio::test]
async fn an_open_loop_run_offers_its_rate_and_judges_cpu_by_the_crypto_cost() {
    let args = [
        "bench",
        "--rate",
        "40",
        "--seconds",
        "2",
        "--warmup",
        "1",
        "--streams",
        "2",
        "--identities",
        "4",
        "--csr",
        "ecdsa-p256",
        "--json",
    ];
    let output = meshroot_output(args.iter().map(|a| a.to_string()).collect()).await;
    let report: serde_json::Value = serde_json::from_str(&output).unwrap();
    let load = &report["load"];
    assert_eq!(load["offered_per_second"], 40.0, "{report:#}");
    assert_eq!(load["errors"], serde_json::json!({}), "{report:#}");
    // Due in the measured 2 s: 80 requests (±1 at the window's edges), each answered.
    let issued = load["issued"].as_u64().unwrap();
    assert!((79..=81).contains(&issued), "{issued} issued: {report:#}");
    let p50 = load["latency_ms"]["p50"].as_f64().unwrap();
    let p999 = load["latency_ms"]["p99_9"].as_f64().unwrap();
    assert!(p50 > 0.0 && p999 >= p50, "{report:#}");

    let crypto_us = report["issuance_crypto_us"].as_f64().unwrap();
    let crypto = &report["crypto"];
    let parts =
        crypto["p256_verify_us"].as_f64().unwrap() * 2.0 + crypto["p256_sign_us"].as_f64().unwrap();
    assert!(
        (crypto_us - parts).abs() < 1e-6,
        "P-256 CSR, P-256 intermediate: verify + sign + verify: {report:#}"
    );
    let cpu_us = 1e6 * load["server"]["cpu_seconds"].as_f64().unwrap() / issued as f64;
    let multiple = report["server_cpu_multiple"].as_f64().unwrap();
    assert!(
        multiple > 0.0 && (multiple - cpu_us / crypto_us).abs() < 1e-6,
        "{report:#}"
    );
}
