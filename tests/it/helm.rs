//! The Helm chart `deploy/helm/meshroot`, through the Helm library itself (PyPI's
//! `helm-python-sdk`, Helm v4's Go SDK behind a C ABI; `tests/helm/chart.py`): it lints clean
//! (strict), every values example renders and validates against the Kubernetes 1.33 schemas
//! (`kubernetes-validate --strict`), the examples that mirror a Kustomize overlay render the same
//! objects as `kubectl kustomize` of that overlay (with the CA material `meshroot init` writes
//! for both), and `values.schema.json` refuses bad values with the path and the rule broken.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::deploy::{decode, render, validate, yaml_to_json};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestCa;
use meshroot::adapters::config::Config;
use meshroot::domain::keys::KeyType;
use serde_json::Value;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/meshroot")
}

fn chart_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/chart.py")
}

/// Renders the chart as release `meshroot` in `istio-system` with `args` (values files and
/// `--set-file KEY=PATH`): `Ok((manifest YAML file, NOTES.txt))`, or `Err(Helm's message)`.
pub(crate) fn helm_render(
    work: &Path,
    name: &str,
    args: &[&str],
) -> Result<(PathBuf, String), String> {
    let out = work.join(format!("{name}.yaml"));
    let output = Command::new(common::python())
        .arg(chart_py())
        .arg("render")
        .arg(chart())
        .arg(&out)
        .args(args)
        .output()
        .unwrap();
    if output.status.success() {
        Ok((out, String::from_utf8(output.stdout).unwrap()))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Renders and validates against the Kubernetes schemas; returns the objects and NOTES.txt.
fn helm_render_valid(work: &Path, name: &str, args: &[&str]) -> (Vec<Value>, String) {
    let (manifest, notes) =
        helm_render(work, name, args).unwrap_or_else(|e| panic!("{name} does not render: {e}"));
    validate(&manifest, name);
    (yaml_to_json(&manifest), notes)
}

fn example(name: &str) -> String {
    chart()
        .join("examples")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

/// Helm's bookkeeping labels, which Kustomize has no reason to set.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
];

/// An object in a form both renderers can be compared in: Helm's bookkeeping labels dropped
/// (from labels and selectors alike), Secret data decoded (Kustomize folds long base64), and
/// meshroot.toml parsed (comments and spacing differ; the settings must not).
fn normalized(object: &Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if key == "labels" || key == "matchLabels" || key == "selector" {
                        if let Value::Object(labels) = child {
                            for label in HELM_LABELS {
                                labels.remove(label);
                            }
                        }
                    }
                    strip(child);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut object = object.clone();
    strip(&mut object);
    if object["kind"] == "Secret" {
        let data = object["data"].as_object_mut().unwrap();
        for value in data.values_mut() {
            *value = Value::from(decode(value));
        }
    }
    if object["kind"] == "ConfigMap" {
        if let Some(text) = object["data"]["meshroot.toml"].as_str() {
            let parsed: toml::Value = toml::from_str(text).unwrap();
            object["data"]["meshroot.toml"] = serde_json::to_value(parsed).unwrap();
        }
    }
    object
}

fn by_kind_and_name(objects: &[Value]) -> BTreeMap<(String, String), Value> {
    objects
        .iter()
        .map(|o| {
            (
                (
                    o["kind"].as_str().unwrap().to_owned(),
                    o["metadata"]["name"].as_str().unwrap().to_owned(),
                ),
                normalized(o),
            )
        })
        .collect()
}

/// The overlay `overlay` and the chart with `example` and the same CA material render the same
/// objects (but the Namespace: Helm's convention is `--create-namespace`, and istio-system is
/// Istio's), so the chart's objects also hold what tests/it/deploy.rs checks of the overlay's.
fn chart_matches_overlay(overlay: &str, example_file: &str, meshes: &[(&str, &str)]) {
    let kustomized = render(overlay, meshes);
    let ca = &kustomized.ca_dir;
    let work = tempfile::tempdir().unwrap();
    let helm_values = ca.join("helm-values.yaml");
    let kubeconfig = format!(
        "kubeconfigs.meshroot-kubeconfig-b={}",
        ca.join("b.kubeconfig").display()
    );
    let mut args = vec![
        example(example_file),
        helm_values.to_str().unwrap().to_owned(),
    ];
    if meshes.len() > 1 {
        args.extend(["--set-file".to_owned(), kubeconfig]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (charted, notes) = helm_render_valid(work.path(), overlay, &args);

    let namespaces: Vec<&Value> = kustomized
        .objects
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .collect();
    assert_eq!(namespaces.len(), 1);
    let kustomize_objects: Vec<Value> = kustomized
        .objects
        .iter()
        .filter(|o| o["kind"] != "Namespace")
        .cloned()
        .collect();
    let expected = by_kind_and_name(&kustomize_objects);
    let actual = by_kind_and_name(&charted);
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{overlay}: the chart and Kustomize render different objects"
    );
    for (key, want) in &expected {
        assert_eq!(
            serde_json::to_string_pretty(&actual[key]).unwrap(),
            serde_json::to_string_pretty(want).unwrap(),
            "{overlay}: {key:?} differs between the chart (left) and Kustomize (right)"
        );
    }
    // NOTES.txt tells the operator the Istio side: this install's CA address, or on the plug-in
    // path that istiod keeps its CA.
    let istio_side = if overlay == "kyma" {
        "istiod keeps its CA"
    } else {
        "--set global.caAddress=meshroot.istio-system.svc:443"
    };
    assert!(notes.contains(istio_side), "{notes}");
    assert!(
        notes.contains("rollout status statefulset/meshroot"),
        "{notes}"
    );
}

#[test]
fn the_single_mesh_example_renders_what_the_single_mesh_overlay_renders() {
    chart_matches_overlay(
        "single-mesh",
        "single-mesh.yaml",
        &[("default", "cluster.local")],
    );
}

#[test]
fn the_multi_mesh_example_renders_what_the_multi_mesh_overlay_renders() {
    chart_matches_overlay(
        "multi-mesh",
        "multi-mesh.yaml",
        &[("a", "a.example"), ("b", "b.example")],
    );
}

#[test]
fn the_kyma_example_renders_what_the_kyma_overlay_renders() {
    chart_matches_overlay(
        "kyma",
        "kyma.yaml",
        &[("a", "a.example"), ("b", "b.example")],
    );
}

#[test]
fn the_chart_lints_clean_and_every_values_example_renders_and_validates() {
    let output = Command::new(common::python())
        .arg(chart_py())
        .arg("lint")
        .arg(chart())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["total_charts_linted"], 1, "{report}");
    assert_eq!(report["errors"], Value::Array(vec![]), "{report}");
    // Strict: no warning or error (severity 2, 3); "icon is recommended" (1) is information.
    for message in report["messages"].as_array().unwrap() {
        assert!(message["severity"].as_u64().unwrap() < 2, "{report}");
    }

    // The CA material as `meshroot init` writes it for the examples' meshes.
    let single = TestCa::with_meshes(&[("default", "cluster.local")], KeyType::EcdsaP256);
    let two = TestCa::with_meshes(
        &[("a", "a.example"), ("b", "b.example")],
        KeyType::EcdsaP256,
    );
    let examples: Vec<PathBuf> = std::fs::read_dir(chart().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(examples.len() >= 5, "{examples:?}");
    let work = tempfile::tempdir().unwrap();
    let mut rendered = 0;
    // No example at all: the chart's defaults, with the Secrets left to the operator.
    let (defaults, notes) = helm_render_valid(work.path(), "defaults", &[]);
    assert!(defaults.iter().all(|o| o["kind"] != "Secret"));
    assert!(notes.contains("the Secrets must exist"), "{notes}");
    for path in &examples {
        let text = std::fs::read_to_string(path).unwrap();
        let material = if text.contains("name: a\n") {
            &two
        } else {
            &single
        };
        let name = path.file_stem().unwrap().to_str().unwrap();
        let (objects, _) = helm_render_valid(
            work.path(),
            name,
            &[
                path.to_str().unwrap(),
                material.path().join("helm-values.yaml").to_str().unwrap(),
            ],
        );
        // Every rendered configuration loads in meshroot, with its own replicas as members (a
        // PKCS#11 module as this machine has it).
        let configmap = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
        let config = Config::parse(
            &crate::pkcs11::with_local_module(configmap["data"]["meshroot.toml"].as_str().unwrap()),
            Path::new("/etc/meshroot/config/meshroot.toml"),
            None,
            None,
        )
        .unwrap_or_else(|e| panic!("{name}: the rendered config does not load: {e}"));
        let statefulset = objects.iter().find(|o| o["kind"] == "StatefulSet").unwrap();
        assert_eq!(
            config.replicas.as_ref().unwrap().members.len() as u64,
            statefulset["spec"]["replicas"].as_u64().unwrap(),
            "{name}"
        );
        rendered += 1;
        if name == "jsonl-export" {
            let export = &config.audit.export;
            assert_eq!(
                export.jsonl_dir.as_deref(),
                Some(Path::new("/var/lib/meshroot/export")),
                "on the replica's own volume"
            );
            assert_eq!(export.jsonl_max_file_bytes, 64 << 20);
            assert!(export.readable_records);
            assert_eq!(export.otlp_endpoint, None);
        }
        if name == "production" {
            let export = &config.audit.export;
            assert_eq!(
                export.otlp_endpoint.as_deref(),
                Some("http://otel-collector.observability.svc:4317")
            );
            assert_eq!(export.fail_closed_lag_records, Some(10_000));
            assert_eq!(statefulset["spec"]["replicas"], 3);
            assert_eq!(config.admin.allowed_identities.len(), 2, "two readers");
            let kubernetes = config.kubernetes.as_ref().unwrap();
            assert_eq!(kubernetes.root_configmap_name, "mesh-trust-bundle");
            assert_eq!(kubernetes.crl_configmap_name, "istio-ca-crl");
            assert_eq!(
                config.admin.revokers,
                ["spiffe://cluster.local/ns/security/sa/incident-response"]
            );
            assert_eq!(config.rate_limit.per_caller.per_second, 50.0);
            let endpoint = config.bundle_endpoint.as_ref().expect("[bundle_endpoint]");
            assert_eq!(endpoint.listen.port(), 8443);
            assert_eq!(endpoint.refresh_hint.as_secs(), 300);
            // The serving certificate, which the endpoint serves with, names its Service.
            assert!(config
                .dns_names
                .contains(&"meshroot-bundles.istio-system.svc".to_owned()));
            assert!(
                objects
                    .iter()
                    .any(|o| o["kind"] == "Service" && o["metadata"]["name"] == "meshroot-bundles"),
                "the bundles' Service"
            );
        }
        if name == "multi-mesh" {
            assert_eq!(config.mesh("b").unwrap().accepts, ["a"]);
            assert!(config.bundle_endpoint.is_none(), "off by default");
        }
    }
    assert_eq!(rendered, examples.len());
}

#[test]
fn the_values_schema_refuses_bad_values_with_a_clear_message() {
    let work = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 10] = [
        ("replicas: 0\n", &["/replicas", "minimum"]),
        ("replica: 3\n", &["additional properties 'replica'"]),
        ("meshes: []\n", &["/meshes", "minItems"]),
        (
            "meshes:\n  - {name: a, trustDomain: Cluster Local, clusters: [{id: x}]}\n",
            &["/meshes/0/trustDomain", "does not match"],
        ),
        (
            "meshes:\n  - {name: a, trustDomain: a.example, defaultTtl: 1 day, clusters: [{id: x}]}\n",
            &["/meshes/0/defaultTtl", "does not match"],
        ),
        (
            "meshes:\n  - {name: a, trustDomain: a.example, clusters: [{id: x, cacerts: true, intermediateRenewAt: 1.5}]}\n",
            &["/meshes/0/clusters/0/intermediateRenewAt", "exclusiveMaximum"],
        ),
        (
            "export: {otlpEndpoint: 'otel:4317'}\n",
            &["/export/otlpEndpoint", "does not match"],
        ),
        (
            "audit: {allowedIdentities: [auditor]}\n",
            &["/audit/allowedIdentities/0", "does not match"],
        ),
        (
            "meshes:\n  - {name: a, trustDomain: a.example, clusters: [{id: x}]}\n  - {name: a, trustDomain: b.example, clusters: [{id: c2}]}\n",
            &["the name \"a\" is used twice"],
        ),
        (
            "kubernetes: {mesh: c}\n",
            &["kubernetes.mesh", "\"c\" is not one of the meshes"],
        ),
    ];
    for (i, (values, wanted)) in cases.iter().enumerate() {
        let file = work.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&file, values).unwrap();
        let error = helm_render(work.path(), &format!("bad-{i}"), &[file.to_str().unwrap()])
            .expect_err(values);
        for want in *wanted {
            assert!(error.contains(want), "{values}: {error}");
        }
    }
    // CA material missing a file is refused before anything renders.
    let file = work.path().join("material.yaml");
    std::fs::write(
        &file,
        "caMaterial:\n  meshes:\n    default:\n      ca-cert.pem: \"-----BEGIN CERTIFICATE-----\\n\"\n",
    )
    .unwrap();
    let error = helm_render(work.path(), "material", &[file.to_str().unwrap()]).unwrap_err();
    assert!(error.contains("missing properties"), "{error}");
}

#[test]
fn a_ca_in_a_token_deploys_with_keys_named_by_uri_and_the_pin_from_a_secret() {
    let hsm = crate::pkcs11::Hsm::new();
    let ca = crate::pkcs11::init_in_token(&hsm);
    let values_path = ca.path().join("helm-values.yaml");
    let values = &yaml_to_json(&values_path)[0];
    let uri = std::fs::read_to_string(ca.path().join("default/ca-key.uri")).unwrap();
    assert_eq!(
        values["caMaterial"]["meshes"]["default"]["ca-key.uri"],
        uri.as_str()
    );
    assert!(values["caMaterial"]["meshes"]["default"]["ca-key.pem"].is_null());
    assert!(values["caMaterial"]["audit-key.pem"].is_null());
    let audit_uri = values["pkcs11"]["auditKey"].as_str().unwrap().to_owned();
    assert!(audit_uri.starts_with("pkcs11:token=meshroot;object=meshroot-audit;id=%"));
    assert_eq!(values["pkcs11"]["enabled"], true);

    let work = tempfile::tempdir().unwrap();
    let (objects, notes) = helm_render_valid(
        work.path(),
        "softhsm",
        &[&example("softhsm.yaml"), values_path.to_str().unwrap()],
    );
    // The mesh's Secret names its key in the token and holds no key; no audit key Secret.
    let secrets: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Secret").collect();
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    let cacerts = &secrets[0]["data"];
    assert_eq!(decode(&cacerts["ca-key.uri"]), uri);
    assert!(cacerts["ca-key.pem"].is_null());
    // The configuration: the module, the PIN from a file, the audit key by URI.
    let configmap = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    let toml = configmap["data"]["meshroot.toml"].as_str().unwrap();
    let config = Config::parse(
        &crate::pkcs11::with_local_module(toml),
        Path::new("/etc/meshroot/config/meshroot.toml"),
        None,
        None,
    )
    .unwrap_or_else(|e| panic!("the rendered config does not load: {e}"));
    assert_eq!(
        config.audit.signing_key.as_deref(),
        Some(audit_uri.as_str())
    );
    assert_eq!(config.audit.key, None);
    let pkcs11 = config.pkcs11.as_ref().unwrap();
    assert_eq!(
        pkcs11.pin,
        meshroot::adapters::pkcs11::PinSource::File("/etc/meshroot/pkcs11-pin/pin".into())
    );
    assert_eq!(pkcs11.sessions, 4);
    // The pod: the PIN Secret mounted as that file, the module's volumes, its environment and
    // the init container that fills them; no audit key volume.
    let statefulset = objects.iter().find(|o| o["kind"] == "StatefulSet").unwrap();
    let pod = &statefulset["spec"]["template"]["spec"];
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
    };
    assert_eq!(
        volume("pkcs11-pin").unwrap()["secret"],
        serde_json::json!({
            "secretName": "meshroot-pkcs11-pin",
            "defaultMode": 0o440,
            "items": [{"key": "pin", "path": "pin"}],
        })
    );
    assert!(volume("audit-key").is_none());
    assert!(volume("pkcs11-module").is_some() && volume("softhsm-token").is_some());
    let container = &pod["containers"][0];
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/etc/meshroot/pkcs11-pin"), "{mounts:?}");
    assert!(mounts.contains(&"/opt/pkcs11"), "{mounts:?}");
    assert!(!mounts.contains(&"/etc/meshroot/audit"), "{mounts:?}");
    assert!(container["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "SOFTHSM2_CONF"));
    assert_eq!(pod["initContainers"][0]["name"], "softhsm");
    // The notes say where the PIN must be.
    assert!(
        notes.contains(
            "kubectl -n istio-system create secret generic meshroot-pkcs11-pin --from-file=pin="
        ),
        "{notes}"
    );
    // No key and no PIN in the values.
    let text = std::fs::read_to_string(&values_path).unwrap();
    assert!(
        !text.contains("PRIVATE KEY")
            && !text.contains("pin:")
            && text.contains("no key and no PIN"),
        "{text}"
    );
}

#[test]
fn inits_helm_values_hold_the_ca_material_but_never_the_root_key() {
    let ca = TestCa::with_meshes(
        &[("a", "a.example"), ("b", "b.example")],
        KeyType::EcdsaP256,
    );
    let dir = ca.path();
    let values_path = dir.join("helm-values.yaml");
    let values = &yaml_to_json(&values_path)[0]["caMaterial"];
    for mesh in ["a", "b"] {
        for file in [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ] {
            assert_eq!(
                values["meshes"][mesh][file].as_str().unwrap(),
                std::fs::read_to_string(dir.join(mesh).join(file)).unwrap()
            );
        }
    }
    for file in ["root-crl.pem", "audit-key.pem"] {
        assert_eq!(
            values[file].as_str().unwrap(),
            std::fs::read_to_string(dir.join(file)).unwrap()
        );
    }
    let text = std::fs::read_to_string(&values_path).unwrap();
    let root_key = std::fs::read_to_string(dir.join("root-key.pem")).unwrap();
    assert!(!text.contains(root_key.lines().nth(1).unwrap()));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&values_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // And the chart's Secrets carry exactly that material.
    let work = tempfile::tempdir().unwrap();
    let (objects, _) = helm_render_valid(
        work.path(),
        "two",
        &[&example("multi-mesh.yaml"), values_path.to_str().unwrap()],
    );
    let secret = objects
        .iter()
        .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "cacerts-b")
        .unwrap();
    assert_eq!(
        decode(&secret["data"]["ca-key.pem"]),
        std::fs::read_to_string(dir.join("b/ca-key.pem")).unwrap()
    );
}

/// The PVC each replica asks for.
fn volume_request(objects: &[Value]) -> String {
    let statefulset = objects.iter().find(|o| o["kind"] == "StatefulSet").unwrap();
    statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The sizing rule: with no `storage.size`, each replica's volume follows `sizing.workloads`
/// exactly as meshroot's own rule computes it (`volume_for_mesh`, which `init` prints), for a
/// small, a large and a very large mesh; the chart's default is the Kustomize base's; an
/// explicit size wins; and `init --workloads` puts its mesh size into the values it writes.
#[tokio::test]
async fn the_volume_request_follows_the_mesh_size_by_the_sizing_rule() {
    use meshroot::domain::capacity::{
        volume_for_mesh, DEFAULT_WORKLOADS, ISTIO_CERTIFICATE_LIFETIME,
    };
    let gib = |workloads: u64| {
        let bytes = volume_for_mesh(
            workloads,
            ISTIO_CERTIFICATE_LIFETIME,
            std::time::Duration::from_secs(400 * 86_400),
        );
        format!("{}Gi", (bytes / (1u64 << 30) as f64) as u64)
    };
    let work = tempfile::tempdir().unwrap();
    let single = example("single-mesh.yaml");
    let (objects, _) = helm_render_valid(work.path(), "default-size", &[&single]);
    assert_eq!(volume_request(&objects), gib(DEFAULT_WORKLOADS));
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/statefulset.yaml"),
    )
    .unwrap();
    assert!(
        base.contains(&format!("storage: {}", gib(DEFAULT_WORKLOADS))),
        "deploy/base sizes for the default mesh too"
    );
    let mut sizes = Vec::new();
    for workloads in [10_000u64, 100_000] {
        let values = work.path().join(format!("sizing-{workloads}.yaml"));
        std::fs::write(&values, format!("sizing:\n  workloads: {workloads}\n")).unwrap();
        let (objects, _) = helm_render_valid(
            work.path(),
            &format!("sizing-{workloads}"),
            &[&single, values.to_str().unwrap()],
        );
        assert_eq!(volume_request(&objects), gib(workloads), "{workloads}");
        sizes.push(volume_request(&objects));
    }
    assert_ne!(sizes[0], sizes[1]);
    let explicit = work.path().join("explicit.yaml");
    std::fs::write(
        &explicit,
        "storage:\n  size: 50Gi\nsizing:\n  workloads: 100000\n",
    )
    .unwrap();
    let (objects, _) = helm_render_valid(
        work.path(),
        "explicit",
        &[&single, explicit.to_str().unwrap()],
    );
    assert_eq!(volume_request(&objects), "50Gi");

    // init --workloads: its values carry the mesh size, and the chart sizes from them.
    let dir = tempfile::tempdir().unwrap();
    common::process::meshroot_output(
        [
            "init",
            "--dir",
            dir.path().to_str().unwrap(),
            "--workloads",
            "100000",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let values = dir.path().join("helm-values.yaml");
    let (objects, _) = helm_render_valid(
        work.path(),
        "from-init",
        &[&single, values.to_str().unwrap()],
    );
    assert_eq!(volume_request(&objects), gib(100_000));
    let config = std::fs::read_to_string(dir.path().join("meshroot.toml")).unwrap();
    assert!(config.contains("For 100000 workloads"), "{config}");
}
