//! The alerts in deploy/alerts: Prometheus's own `promtool` checks the rules and runs their
//! unit tests (every alert fires on one series history and must not on another), every series
//! an expression names is one a running meshroot exposes, and every runbook link lands on a
//! heading of docs/runbooks.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;

fn alerts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alerts")
}

/// The rule groups: what the chart's PrometheusRule and deploy/alerts' carry.
fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/meshroot/files/meshroot.rules.yaml")
}

/// `$MESHROOT_PROMTOOL`, else `promtool` on the PATH (Debian's `prometheus`, from .ci/run).
fn promtool(args: &[&str]) -> String {
    let tool = std::env::var_os("MESHROOT_PROMTOOL").unwrap_or_else(|| "promtool".into());
    let out = Command::new(&tool)
        .args(args)
        .current_dir(alerts_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool ({tool:?}) is needed: install Debian's prometheus ({e})")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// Runs a Python script of the test tools (PyYAML) on `args`; what it printed, as JSON.
fn python_json(script: &str, args: &[&Path]) -> serde_json::Value {
    let out = Command::new(common::python())
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// A YAML file as JSON.
fn yaml(path: &Path) -> serde_json::Value {
    python_json(
        "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        &[path],
    )
}

/// The alerting rules: (name, expression, runbook URL).
fn rules() -> Vec<(String, String, String)> {
    let doc = yaml(&rules_file());
    let mut out = Vec::new();
    let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
    for group in doc["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            out.push((
                text(&rule["alert"]),
                text(&rule["expr"]),
                rule["annotations"]["runbook_url"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
    }
    out
}

#[test]
fn promtool_checks_the_rules_and_every_alert_fires_and_holds_back_as_tested() {
    let checked = promtool(&["check", "rules", rules_file().to_str().unwrap()]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "meshroot.rules.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Each alert has a history that fires it and one where it must not (yet) fire.
    let tests = yaml(&alerts_dir().join("meshroot.rules.test.yaml"));
    let (mut fires, mut holds) = (BTreeSet::new(), BTreeSet::new());
    for test in tests["tests"].as_array().unwrap() {
        for case in test["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            match case["exp_alerts"].as_array().map(Vec::is_empty) {
                Some(false) => fires.insert(name),
                _ => holds.insert(name),
            };
        }
    }
    let rules = rules();
    assert_eq!(rules.len(), 12, "{rules:?}");
    for (alert, _, _) in rules {
        assert!(fires.contains(&alert), "no test fires {alert}");
        assert!(
            holds.contains(&alert),
            "no test where {alert} must not fire"
        );
    }
}

/// Every series an alert names is exposed by a running meshroot (with an export sink, so the
/// lag series exist); series that need more than one process are named in the code that
/// exposes them instead.
#[tokio::test]
async fn every_alert_names_only_series_meshroot_exposes() {
    // Only with [replicas] and another member, or with a federation partner.
    let exposed = crate::monitoring::exposed_families(&[
        ("src/edge/server/monitoring.rs", "meshroot_member_reachable"),
        (
            "src/domain/metrics.rs",
            "meshroot_partner_bundle_age_seconds",
        ),
        (
            "src/domain/metrics.rs",
            "meshroot_partner_bundle_fetch_failures_total",
        ),
    ])
    .await;
    let mut named = BTreeSet::new();
    for (alert, expr, _) in rules() {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("citadel_server_") || word.starts_with("meshroot_") {
                assert!(
                    exposed.contains(word),
                    "{alert} names {word}, which /metrics does not expose"
                );
                named.insert(word.to_owned());
            }
        }
    }
    // What the issue asks alerts for: expiry, holds, errors, export, members, partners, store.
    for wanted in [
        "meshroot_certificate_not_after_timestamp",
        "meshroot_crl_next_update_seconds",
        "meshroot_hold",
        "citadel_server_csr_sign_err_count",
        "citadel_server_authentication_failure_count",
        "meshroot_export_lag_seconds",
        "meshroot_member_reachable",
        "meshroot_partner_bundle_age_seconds",
        "meshroot_store_full_in_seconds",
    ] {
        assert!(named.contains(wanted), "no alert on {wanted}");
    }
}

/// Every `runbook_url` points at a heading of docs/runbooks.md (GitHub's anchor for it).
#[test]
fn every_runbook_link_lands_on_a_heading() {
    let runbooks =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbooks.md"))
            .unwrap();
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|heading| {
            heading
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let prefix = "https://github.com/meshroot/meshroot/blob/main/docs/runbooks.md#";
    for (alert, _, url) in rules() {
        let anchor = url
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{alert}: runbook_url {url:?} is not under {prefix}"));
        assert!(
            anchors.contains(anchor),
            "{alert}: no heading for #{anchor} in docs/runbooks.md"
        );
    }
}

/// Takes the PrometheusRule documents out of the manifest at `path` (they have no Kubernetes
/// schema): each must be the chart's rule groups, which promtool checks; returns a manifest of
/// the other documents, for the Kubernetes schemas.
pub(crate) fn check_prometheus_rules(path: &Path) -> PathBuf {
    let rest = path.with_extension("kubernetes.yaml");
    let script = "import json, sys, yaml\n\
        docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\n\
        rules = [d for d in docs if d.get('kind') == 'PrometheusRule']\n\
        yaml.safe_dump_all([d for d in docs if d.get('kind') != 'PrometheusRule'], open(sys.argv[2], 'w'))\n\
        print(json.dumps(rules))\n";
    let found = python_json(script, &[path, &rest]);
    let found = found.as_array().cloned().unwrap_or_default();
    if found.is_empty() {
        return path.to_owned();
    }
    let groups = yaml(&rules_file());
    for rule in found {
        assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1", "{rule}");
        assert_eq!(
            rule["spec"], groups,
            "{path:?}: a PrometheusRule that is not the chart's rule file"
        );
    }
    let checked = promtool(&["check", "rules", &rules_file().to_string_lossy()]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    rest
}

/// The chart renders the rule only with `alerts.enabled`, labelled for the Operator's
/// ruleSelector; each overlay renders the same rule with its alerts component uncommented.
#[test]
fn the_chart_and_every_overlay_carry_the_same_rule() {
    let work = tempfile::tempdir().unwrap();
    let rules_of = |objects: &[serde_json::Value]| -> Vec<serde_json::Value> {
        objects
            .iter()
            .filter(|o| o["kind"] == "PrometheusRule")
            .cloned()
            .collect()
    };
    let (manifest, _) = crate::helm::helm_render(work.path(), "default", &[]).unwrap();
    assert!(
        rules_of(&crate::deploy::yaml_to_json(&manifest)).is_empty(),
        "off by default"
    );
    let values = work.path().join("alerts.yaml");
    std::fs::write(
        &values,
        "alerts:\n  enabled: true\n  labels:\n    release: kube-prometheus-stack\n",
    )
    .unwrap();
    let (manifest, _) =
        crate::helm::helm_render(work.path(), "alerts", &[values.to_str().unwrap()]).unwrap();
    crate::deploy::validate(&manifest, "the chart with alerts");
    let rules = rules_of(&crate::deploy::yaml_to_json(&manifest));
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["metadata"]["namespace"], "istio-system");
    assert_eq!(
        rules[0]["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    for (overlay, meshes) in [
        ("single-mesh", &[("default", "cluster.local")][..]),
        ("multi-mesh", &[("a", "a.example"), ("b", "b.example")][..]),
        ("kyma", &[("a", "a.example"), ("b", "b.example")][..]),
    ] {
        let rendered = crate::deploy::render_edited(
            overlay,
            |ca| crate::deploy::init_for(ca, meshes),
            |dir| {
                let path = dir.join("kustomization.yaml");
                let text = std::fs::read_to_string(&path).unwrap();
                let on = text.replace(
                    "# components:\n#   - ../../alerts",
                    "components:\n  - ../../alerts",
                );
                assert_ne!(on, text, "{overlay} has no alerts component to turn on");
                std::fs::write(&path, on).unwrap();
            },
        );
        let rules = rules_of(&rendered.objects);
        assert_eq!(rules.len(), 1, "{overlay}");
        assert_eq!(
            rules[0]["metadata"]["namespace"], "istio-system",
            "{overlay}"
        );
    }
}
