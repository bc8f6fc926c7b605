//! `meshroot istio config`: what each mesh's Istio needs, generated from meshroot's
//! configuration, checked against Istio's and Kyma's own schemas (tests/istio/schemas, the
//! commits in SOURCES.md) by tests/istio/validate.py.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::Edited as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, process::BINARY};

const FORMATS: &[&str] = &[
    "mesh-config",
    "helm-values",
    "istio-operator",
    "kyma",
    "policies",
];

/// `meshroot init` for meshes a and b; b accepts a and migrates from old-b.example.
pub fn two_meshes(dir: &Path) -> PathBuf {
    let status = Command::new(BINARY)
        .args(["init", "--dir"])
        .arg(dir)
        .args(["--mesh", "a=a.example", "--mesh", "b=b.example"])
        .env("MESHROOT_LOG", "warn")
        .output()
        .unwrap();
    assert!(status.status.success());
    let config = dir.join("meshroot.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.edited(
        "name = \"b\"\n",
        "name = \"b\"\naccepts = [\"a\"]\ntrust_domain_aliases = [\"old-b.example\"]\n",
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// `meshroot istio config ARGS`: (exit code, stdout, stderr).
pub fn istio_config(config: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BINARY)
        .args(["istio", "config", "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Runs the validator on `text` as `format`: (passed, its output).
fn validate(dir: &Path, format: &str, text: &str) -> (bool, String) {
    let file = dir.join(format!("{format}.json"));
    std::fs::write(&file, text).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio/validate.py");
    let output = Command::new(common::python())
        .arg(script)
        .arg(format)
        .arg(&file)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn every_format_validates_against_istios_and_kymas_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_meshes(dir.path());
    for mesh in ["a", "b"] {
        for format in FORMATS {
            let (code, out, err) = istio_config(&config, &["--mesh", mesh, "--format", format]);
            assert_eq!(code, 0, "{err}");
            let (valid, report) = validate(dir.path(), format, &out);
            assert!(valid, "mesh {mesh}, {format}: {report}\n{out}");
        }
    }
    // `all` is one YAML stream of the same documents (2 for the policies).
    let (code, all, _) = istio_config(&config, &["--mesh", "b"]);
    assert_eq!(code, 0);
    assert_eq!(all.matches("\n---\n").count(), FORMATS.len());
}

#[test]
fn the_validator_refuses_what_istio_would_refuse() {
    // The same check must fail on a misspelt field or a wrong value, or it proves nothing.
    let dir = tempfile::tempdir().unwrap();
    let config = two_meshes(dir.path());
    let broken = [
        ("mesh-config", "\"trustDomains\"", "\"trustDomain\""),
        ("helm-values", "\"caAddress\"", "\"caAddr\""),
        ("istio-operator", "\"values\"", "\"valuez\""),
        ("kyma", "\"trustDomain\"", "\"trustDomains\""),
        ("policies", "\"notTrustDomains\"", "\"notTrustDomain\""),
        ("policies", "\"DENY\"", "\"REFUSE\""),
    ];
    for (format, from, to) in broken {
        let (_, out, _) = istio_config(&config, &["--mesh", "b", "--format", format]);
        let (valid, report) = validate(dir.path(), format, &out.edited(from, to));
        assert!(!valid, "{format} with {to} passed: {report}");
        assert!(report.contains("INVALID"), "{report}");
    }
}

#[test]
fn mesh_b_accepts_a_by_ca_certificates_and_its_aliases_stay_a_migration() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_meshes(dir.path());
    let (_, out, _) = istio_config(&config, &["--mesh", "b", "--format", "mesh-config"]);
    let mesh_config: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(mesh_config["trustDomain"], "b.example");
    assert_eq!(
        mesh_config["trustDomainAliases"],
        serde_json::json!(["old-b.example"])
    );
    let entries = mesh_config["caCertificates"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["trustDomains"], serde_json::json!(["a.example"]));
    // The PEM is mesh a's roots: the shared root init wrote.
    let root = std::fs::read_to_string(dir.path().join("a/root-cert.pem")).unwrap();
    assert_eq!(entries[0]["pem"], root.as_str());
    // Acceptance is one way: a accepts nobody.
    let (_, out, _) = istio_config(&config, &["--mesh", "a", "--format", "mesh-config"]);
    let mesh_config: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(mesh_config.get("caCertificates").is_none(), "{out}");
    // Kyma's CR cannot carry aliases or caCertificates: said on stderr, not lost silently.
    let (_, _, notes) = istio_config(&config, &["--mesh", "b", "--format", "kyma"]);
    assert!(notes.contains("no caCertificates"), "{notes}");
    assert!(notes.contains("no trustDomainAliases"), "{notes}");
}

#[test]
fn accepts_must_name_another_configured_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_meshes(dir.path());
    let text = std::fs::read_to_string(&config).unwrap();
    for (accepts, message) in [
        ("[\"c\"]", "\"c\" is not the name of a [[mesh]]"),
        ("[\"b\"]", "is this mesh"),
        ("[\"a\", \"a\"]", "listed twice"),
    ] {
        let text = text.edited("accepts = [\"a\"]", &format!("accepts = {accepts}"));
        std::fs::write(&config, &text).unwrap();
        let (code, _, err) = istio_config(&config, &["--mesh", "b"]);
        assert_eq!(code, 64, "{err}");
        assert!(err.contains("mesh[1].accepts"), "{err}");
        assert!(err.contains(message), "{err}");
    }
}

/// `meshroot init` for the default mesh only.
fn default_mesh(dir: &Path) -> PathBuf {
    let status = Command::new(BINARY)
        .args(["init", "--dir"])
        .arg(dir)
        .env("MESHROOT_LOG", "warn")
        .output()
        .unwrap();
    assert!(status.status.success());
    dir.join("meshroot.toml")
}

#[test]
fn the_docs_show_what_meshroot_istio_config_prints() {
    // Each block after a `<!-- generated: istio config --mesh M --format F ... -->` marker is
    // that command's output for the documents' example (PEM shortened), so it cannot drift.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let docs = ["meshes.md", "operations/use-with-istio.md"]
        .map(|doc| std::fs::read_to_string(root.join(doc)).unwrap())
        .join("\n");
    let work = tempfile::tempdir().unwrap();
    let two = two_meshes(&work.path().join("two"));
    let one = default_mesh(&work.path().join("one"));
    let marker = "<!-- generated: istio config ";
    let mut checked = 0;
    for (at, _) in docs.match_indices(marker) {
        let rest = &docs[at + marker.len()..];
        let command: Vec<&str> = rest[..rest.find(" (").unwrap()].split(' ').collect();
        let ["--mesh", mesh, "--format", format] = command.as_slice() else {
            panic!("marker {command:?}: expected --mesh M --format F");
        };
        let block = &rest[rest.find("```json\n").unwrap() + 8..];
        let block = &block[..block.find("```").unwrap()];
        let config = if *mesh == "default" { &one } else { &two };
        let (code, generated, err) = istio_config(
            config,
            &[
                "--mesh",
                mesh,
                "--format",
                format,
                "--ca-address",
                "meshroot.istio-system.svc:443",
            ],
        );
        assert_eq!(code, 0, "{err}");
        let shortened: String = generated
            .lines()
            .map(|line| match line.split_once("\"pem\": ") {
                Some((indent, _)) => format!("{indent}\"pem\": \"<mesh a's root-cert.pem>\","),
                None => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            block.trim(),
            shortened.trim(),
            "the block for --mesh {mesh} --format {format} differs from the command's output"
        );
        checked += 1;
    }
    assert_eq!(checked, 3, "the documents' generated blocks");
}
