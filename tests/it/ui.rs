//! The status page (`/ui` on the admin port): loaded by a real browser (headless Chromium,
//! `$MESHROOT_CHROMIUM` or Debian's `chromium`, which `.ci/run` installs) from a running server
//! with records in it; the rendered DOM holds the figures the test put there, and a screenshot
//! is saved as a test artifact (`target/test-artifacts/status-page.png`). The page holds no
//! secret, and it has the audit API's access rule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::Edited as _;
use crate::common::{self, agent_csr, spiffe_id, TestCa, MESH};
use meshroot::domain::record::Outcome;

fn chromium() -> PathBuf {
    std::env::var_os("MESHROOT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"))
}

/// Runs headless Chromium on `url` with `args` (off the test's runtime, which serves the page).
async fn chromium_run(url: String, args: Vec<String>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(chromium())
            // As root in a container, without a GPU, and without the background connections a
            // closed network refuses.
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ])
            .arg(profile_arg)
            .args(args)
            .arg(url)
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| {
        panic!("headless Chromium is needed (MESHROOT_CHROMIUM or `chromium`; .ci/run installs Debian's): {e}")
    });
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The text of the element marked `data-figure="name"` in serialized HTML.
fn figure(dom: &str, name: &str) -> Option<String> {
    let marker = format!("data-figure=\"{name}\"");
    let at = dom.find(&marker)? + marker.len();
    let rest = &dom[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')? + start;
    Some(rest[start..end].to_owned())
}

/// Every line of every private key `init` wrote for `ca`.
fn key_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_str().unwrap().ends_with("key.pem") {
                let text = std::fs::read_to_string(&path).unwrap();
                lines.extend(
                    text.lines()
                        .filter(|l| !l.starts_with("-----"))
                        .map(str::to_owned),
                );
            }
        }
    }
    assert!(lines.len() >= 4, "{lines:?}");
    lines
}

fn issued_count(server: &common::TestServer) -> usize {
    server
        .records()
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Issued(_)))
        .count()
}

#[tokio::test]
async fn a_real_browser_renders_the_figures_of_the_log_and_no_secret() {
    let ca = TestCa::new();
    // A root rotation under way: the next root is in the bundle (extra_roots), no intermediate
    // under it yet.
    ca.add_next_root();
    let server = ca.start().await;
    // What the server recorded of its own before (its serving certificate).
    let issued_before = issued_count(&server);
    // 3 certificates in default (24 h), 2 in shop for an hour, 2 refusals (a token for
    // another identity).
    for account in ["a", "b", "c"] {
        server.issue(&ca, account).await;
    }
    let mut tokens = Vec::new();
    for account in ["cart", "till"] {
        let token = ca.token(MESH, "shop", account);
        server
            .call(
                agent_csr(&spiffe_id("shop", account)),
                Some(token.clone()),
                3_600,
            )
            .await
            .unwrap();
        tokens.push(token);
    }
    let mut reasons = Vec::new();
    for account in ["x", "y"] {
        let token = ca.token(MESH, "default", "someone-else");
        let status = server
            .call(agent_csr(&spiffe_id("default", account)), Some(token), 0)
            .await
            .unwrap_err();
        let Outcome::Denied(denial) = server.record_of(&status).outcome else {
            panic!("not a refusal: {status:?}");
        };
        reasons.push((denial.mesh, denial.reason));
    }
    assert_eq!(reasons[0], reasons[1]);
    let (refused_mesh, reason) = reasons.remove(0);
    assert_eq!(refused_mesh, MESH);
    let issued = (issued_before + 5).to_string();
    let admin = server.server.admin_address();
    let url = format!("http://{admin}/ui");

    // The page as served: no key, no token.
    let (status, html) = common::http_get(admin, "/ui").await;
    assert_eq!(status, 200, "{html}");
    assert!(!html.contains("PRIVATE KEY"));
    for line in key_lines(ca.path()) {
        assert!(!html.contains(&line), "a key line is on the page");
    }
    for token in &tokens {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!html.contains(signature), "a token is on the page");
    }
    assert!(!html.contains("<script"), "no script on the page");

    // The browser's DOM holds the figures.
    let dom = chromium_run(url.clone(), vec!["--dump-dom".into()]).await;
    let expect = |name: &str, want: &str| {
        assert_eq!(
            figure(&dom, name).as_deref(),
            Some(want),
            "{name} in the rendered page:\n{dom}"
        );
    };
    expect(&format!("trust-domain-{MESH}"), "cluster.local");
    expect(&format!("issued-{MESH}"), &issued);
    expect(&format!("issued-bar-{MESH}"), &issued);
    expect(&format!("refused-{MESH}"), "2");
    expect(&format!("refused-{MESH} / {reason}"), "2");
    expect("expiring-shop", "2");
    expect(&format!("root-use-{MESH}-1"), &issued);
    expect(&format!("stranded-{MESH}"), "0");
    expect(&format!("root-use-{MESH}-2"), "0");
    let rotation = figure(&dom, &format!("rotation-{MESH}")).unwrap();
    assert!(
        rotation.starts_with("step 3: the bundle holds the new root [2]"),
        "{rotation}"
    );
    assert!(
        figure(&dom, "expiring-default").is_none(),
        "24 h ones are not expiring"
    );
    let intermediate = figure(&dom, &format!("intermediate-expiry-{MESH}")).unwrap();
    assert!(intermediate.starts_with("in "), "{intermediate}");

    // A screenshot, kept as a test artifact.
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium_run(
        url,
        vec![
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1200,1300".into(),
            "--hide-scrollbars".into(),
        ],
    )
    .await;
    let png = std::fs::read(&screenshot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 20_000, "{} bytes", png.len());
    server.stop().await;
}

#[tokio::test]
async fn off_loopback_the_page_needs_an_allowed_client_certificate() {
    let ca = TestCa::new();
    let auditor = "spiffe://cluster.local/ns/ops/sa/auditor";
    ca.admin_on_tls(&[auditor]);
    let server = ca.start().await;
    server.issue(&ca, "a").await;
    let issued_before = issued_count(&server);
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], server.server.admin_address().port()));
    let root = ca.root_pem();
    let get = |identity: Option<(String, String)>| common::https_get(admin, &root, "/ui", identity);

    let (status, body) = get(None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin.allowed_identities"), "{body}");
    assert!(!body.contains("data-figure"), "{body}");

    let intruder = server
        .workload(&ca, MESH, "spiffe://cluster.local/ns/ops/sa/intruder")
        .await;
    let (status, body) = get(Some(intruder)).await;
    assert_eq!(status, 403, "{body}");

    let allowed = server.workload(&ca, MESH, auditor).await;
    let (status, body) = get(Some(allowed)).await;
    assert_eq!(status, 200, "{body}");
    // And the intruder's and the auditor's own since.
    assert!(
        body.contains(&format!(
            "data-figure=\"issued-{MESH}\">{}<",
            issued_before + 2
        )),
        "{body}"
    );
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .unwrap();
}

/// The record-store panel: this replica's figures, and a warning when the volume is forecast
/// full within two weeks (here a budget the store already fills: full now).
#[tokio::test]
async fn the_page_warns_when_the_store_volume_is_forecast_full() {
    let ca = TestCa::new();
    let server = ca.start().await;
    server.issue(&ca, "a").await;
    let (status, html) = common::http_get(server.server.admin_address(), "/ui").await;
    assert_eq!(status, 200);
    assert!(html.contains("Record store (this replica)"), "{html}");
    assert_eq!(
        figure(&html, "store-full-in").as_deref(),
        Some("never (pruning keeps up)")
    );
    assert!(figure(&html, "store-warning").is_none());
    server.stop().await;

    ca.edit_config(|text| {
        text.edited(
            "issued_retention = \"400d\"",
            "issued_retention = \"400d\"\nvolume_bytes = 1000",
        )
    });
    let server = ca.start().await;
    server.issue(&ca, "a").await;
    let (_, html) = common::http_get(server.server.admin_address(), "/ui").await;
    let warning = figure(&html, "store-warning").unwrap();
    assert!(
        warning.contains("forecast full in 0.0 days at the last day's rate"),
        "{warning}"
    );
    assert_eq!(figure(&html, "store-full-in").as_deref(), Some("0.0 days"));
    server.stop().await;
}
