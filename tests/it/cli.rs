//! The `meshroot` binary as a user runs it: `init`, `serve` (embedded default and config),
//! `token`, `request`, `audit list`, and how bad input ends (message and exit code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::Edited as _;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::openssl;
use common::process::{Serving, BINARY};

fn meshroot(dir: &Path, args: &[&str]) -> Output {
    meshroot_with_env(dir, args, &[])
}

fn meshroot_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BINARY)
        .args(args)
        .current_dir(dir)
        .env("MESHROOT_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `meshroot request` for `id`, with the token in `dir/token`, writing to `dir/out`.
fn request(dir: &Path, address: &str, root: &str, server_name: &str, id: &str) -> Output {
    meshroot(
        dir,
        &[
            "request",
            "--addr",
            address,
            "--root",
            root,
            "--server-name",
            server_name,
            "--spiffe-id",
            id,
            "--token-file",
            "token",
            "--out",
            "out",
        ],
    )
}

#[test]
fn embedded_default_serves_a_working_ca_and_the_cli_round_trip_works() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let mut serving = Serving::start(dir, &[]);
    for file in [
        "meshroot-data/meshroot.toml",
        "meshroot-data/root-cert.pem",
        "meshroot-data/default/ca-cert.pem",
        "meshroot-data/default/dev-issuer-jwks.json",
    ] {
        assert!(dir.join(file).exists(), "{file}");
    }
    let token = stdout(&meshroot(
        dir,
        &["token", "--namespace", "shop", "--service-account", "cart"],
    ));
    std::fs::write(dir.join("token"), token.trim()).unwrap();
    let id = "spiffe://cluster.local/ns/shop/sa/cart";
    let printed = stdout(&request(
        dir,
        &serving.address,
        "meshroot-data/root-cert.pem",
        "meshroot.istio-system.svc",
        id,
    ));
    assert!(printed.contains(id), "{printed}");
    let serial = printed
        .lines()
        .find_map(|l| l.strip_prefix("serial:"))
        .unwrap()
        .trim()
        .to_owned();
    let out = dir.join("out");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(out.join("key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let chain = std::fs::read_to_string(out.join("cert-chain.pem")).unwrap();
    let leaf_end = chain.find("-----END CERTIFICATE-----\n").unwrap() + 26;
    std::fs::write(out.join("leaf.pem"), &chain[..leaf_end]).unwrap();
    std::fs::write(out.join("intermediates.pem"), &chain[leaf_end..]).unwrap();
    let verified = openssl(&[
        "verify",
        "-CAfile",
        out.join("root-cert.pem").to_str().unwrap(),
        "-untrusted",
        out.join("intermediates.pem").to_str().unwrap(),
        out.join("leaf.pem").to_str().unwrap(),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
    // The private key matches the certificate.
    let cert_key = openssl(&[
        "x509",
        "-in",
        out.join("leaf.pem").to_str().unwrap(),
        "-noout",
        "-pubkey",
    ]);
    let key_pub = openssl(&[
        "pkey",
        "-in",
        out.join("key.pem").to_str().unwrap(),
        "-pubout",
    ]);
    assert_eq!(cert_key, key_pub);

    serving.stop();
    // The log (at debug level) shows the request but never the token, the CSR or a key.
    let log = serving.log();
    assert!(log.contains("certificate issued"), "{log}");
    assert!(log.contains(&serial), "{log}");
    let token_signature = token.trim().rsplit('.').next().unwrap();
    assert!(
        !log.contains(token_signature),
        "the token leaked into the log"
    );
    assert!(!log.contains("BEGIN"), "PEM material leaked into the log");

    let listed = stdout(&meshroot(
        dir,
        &["audit", "list", "--serial", &serial, "--format", "json"],
    ));
    let records: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 1, "{listed}");
    assert_eq!(records[0]["outcome"]["outcome"], "issued");
    assert_eq!(records[0]["outcome"]["spiffe_id"], id);
    assert_eq!(
        records[0]["caller"]["subject"],
        "system:serviceaccount:shop:cart"
    );
    assert_eq!(records[0]["outcome"]["key_algorithm"], "rsa");
    let table = stdout(&meshroot(dir, &["audit", "list", "--spiffe-id", id]));
    assert!(table.contains(&serial), "{table}");
    assert_eq!(table.lines().count(), 2, "header and one record: {table}");

    // A restart reuses the data directory rather than creating a new CA.
    let root_before = std::fs::read(dir.join("meshroot-data/root-cert.pem")).unwrap();
    let mut serving = Serving::start(dir, &[]);
    assert_eq!(
        std::fs::read(dir.join("meshroot-data/root-cert.pem")).unwrap(),
        root_before
    );
    serving.stop();
}

#[test]
fn init_refuses_to_overwrite_keys_without_force() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let first = stdout(&meshroot(
        dir,
        &[
            "init",
            "--dir",
            "ca",
            "--mesh",
            "a=a.example",
            "--mesh",
            "b=b.example",
        ],
    ));
    assert!(first.contains("ca/meshroot.toml"), "{first}");
    let again = meshroot(dir, &["init", "--dir", "ca"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    stdout(&meshroot(dir, &["init", "--dir", "ca", "--force"]));
    let bad = meshroot(dir, &["init", "--dir", "x", "--mesh", "Bad=cluster.local"]);
    assert_eq!(bad.status.code(), Some(2), "clap usage error");
}

#[test]
fn serve_with_an_invalid_config_exits_64_naming_file_and_keys() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("bad.toml");
    std::fs::write(
        &config,
        "listen = \"nowhere\"\n[[mesh]]\nname = \"default\"\ntrust_domain = \"Bad Domain\"\n",
    )
    .unwrap();
    let output = meshroot(
        work.path(),
        &["serve", "--config", config.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(64));
    let message = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "bad.toml",
        "listen",
        "mesh[0].trust_domain",
        "mesh[0].ca_dir",
    ] {
        assert!(message.contains(expected), "{expected}: {message}");
    }
}

#[test]
fn serve_with_bad_ca_material_exits_naming_the_file() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    stdout(&meshroot(dir, &["init", "--dir", "ca", "--dev-issuer"]));
    std::fs::write(
        dir.join("ca/default/ca-cert.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let output = meshroot(dir, &["serve", "--config", "ca/meshroot.toml"]);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("ca-cert.pem"), "{message}");
    assert!(message.contains("mesh default"), "{message}");
}

#[test]
fn sighup_reloads_a_changed_trust_domain() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    stdout(&meshroot(dir, &["init", "--dir", "ca", "--dev-issuer"]));
    let mut serving = Serving::start(dir, &["--config", "ca/meshroot.toml"]);
    let token = stdout(&meshroot(
        dir,
        &[
            "token",
            "--config",
            "ca/meshroot.toml",
            "--namespace",
            "shop",
            "--service-account",
            "cart",
        ],
    ));
    std::fs::write(dir.join("token"), token.trim()).unwrap();
    let request = |id: &str| request(dir, &serving.address, "ca/root-cert.pem", "localhost", id);
    let new_id = "spiffe://example.com/ns/shop/sa/cart";
    assert!(
        !request(new_id).status.success(),
        "not yet in the trust domain"
    );

    // A trust-domain migration's first step: an intermediate permitting both names.
    stdout(&meshroot(
        dir,
        &[
            "rotate",
            "intermediate",
            "--root-dir",
            "ca",
            "--mesh",
            "default",
            "--out",
            "ca/default",
            "--trust-domain",
            "cluster.local",
            "--trust-domain",
            "example.com",
            "--force",
        ],
    ));
    let config = dir.join("ca/meshroot.toml");
    let text = std::fs::read_to_string(&config).unwrap().edited(
        "trust_domain = \"cluster.local\"",
        "trust_domain = \"example.com\"\ntrust_domain_aliases = [\"cluster.local\"]",
    );
    std::fs::write(&config, text).unwrap();
    serving.signal("-HUP");
    serving.wait_for_log("SIGHUP: reloading the configuration");
    serving.wait_for_log("configuration reloaded");
    assert!(stdout(&request(new_id)).contains(new_id));
    assert!(stdout(&request("spiffe://cluster.local/ns/shop/sa/cart")).contains("cluster.local"));
    serving.stop();
}

#[test]
fn audit_commands_work_through_the_server_and_on_the_stopped_store() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    stdout(&meshroot(dir, &["init", "--dir", "ca", "--dev-issuer"]));
    let config = "ca/meshroot.toml";
    let mut serving = Serving::start(dir, &["--config", config]);
    let token = stdout(&meshroot(
        dir,
        &[
            "token",
            "--config",
            config,
            "--namespace",
            "shop",
            "--service-account",
            "cart",
        ],
    ));
    std::fs::write(dir.join("token"), token.trim()).unwrap();
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    for id in [cart, cart, "spiffe://cluster.local/ns/bank/sa/vault"] {
        request(dir, &serving.address, "ca/root-cert.pem", "localhost", id);
    }
    let addr = serving.admin_address.clone();
    // The server listens where MESHROOT_ADMIN_LISTEN said; the CLI reads the same variable.
    let audit = |args: &[&str]| {
        let mut all = vec!["audit"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", config]);
        meshroot_with_env(dir, &all, &[("MESHROOT_ADMIN_LISTEN", &addr)])
    };
    // Through the running server (explicit --addr, and found from the config).
    let count = stdout(&audit(&[
        "list",
        "--addr",
        &addr,
        "--spiffe-id",
        cart,
        "--count",
    ]));
    assert_eq!(count.trim(), "2");
    let denied = stdout(&audit(&[
        "list",
        "--reason",
        "identity-mismatch",
        "--format",
        "json",
    ]));
    let denied: serde_json::Value = serde_json::from_str(&denied).unwrap();
    assert_eq!(denied.as_array().unwrap().len(), 1, "{denied}");
    let live = stdout(&audit(&["verify", "--addr", &addr]));
    assert!(live.contains("OK"), "{live}");
    serving.stop();

    // On the stopped store: export, verify against the published checkpoint, prove.
    let csv = stdout(&audit(&[
        "export",
        "--namespace",
        "shop",
        "--format",
        "csv",
    ]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "header and two issuances: {csv}");
    assert!(lines[0].starts_with("sequence,recorded_at,outcome"));
    let verified = stdout(&audit(&[
        "verify",
        "--checkpoint",
        "ca/checkpoint.txt",
        "--verifier-key",
        "ca/audit-key.pub",
    ]));
    assert!(
        verified.contains("checkpoint ca/checkpoint.txt (size 6): matches"),
        "{verified}"
    );
    let page = stdout(&audit(&["list", "--spiffe-id", cart, "--format", "json"]));
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    let serial = page[1]["outcome"]["serial"].as_str().unwrap().to_owned();
    stdout(&audit(&[
        "prove",
        "--serial",
        &serial,
        "--out",
        "proof.json",
    ]));
    let checked = stdout(&meshroot(
        dir,
        &[
            "audit",
            "check-proof",
            "proof.json",
            "--verifier-key",
            "ca/audit-key.pub",
        ],
    ));
    assert!(checked.starts_with("OK: record 5"), "{checked}");
    assert!(checked.contains(&serial), "{checked}");
    // A proof whose record was altered does not hold.
    let mut proof: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("proof.json")).unwrap()).unwrap();
    let leaf = proof["leaf_data"].as_str().unwrap().to_owned();
    let flipped = format!(
        "{}{}",
        &leaf[..leaf.len() - 1],
        if leaf.ends_with('0') { '1' } else { '0' }
    );
    proof["leaf_data"] = serde_json::Value::String(flipped);
    std::fs::write(dir.join("forged.json"), proof.to_string()).unwrap();
    let forged = meshroot(
        dir,
        &[
            "audit",
            "check-proof",
            "forged.json",
            "--verifier-key",
            "ca/audit-key.pub",
        ],
    );
    assert_eq!(forged.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&forged.stderr).contains("does NOT hold"));
    let stats = stdout(&audit(&["stats", "--json"]));
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["records"], 6);
    assert_eq!(stats["latest_checkpoint_size"], 6);
    // Bad input is a usage error, not a crash.
    let bad = audit(&["list", "--since", "last tuesday"]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Serving::start_with_env(dir.path(), &[], &[("MESHROOT_LOG_FORMAT", "json")]);
    server.wait_for_log("CA material loaded");
    server.stop();
    let log = server.log();
    let mut events = 0;
    for line in log.lines() {
        // The lines for people that `serve` prints once (how to try it) are not log events;
        // a plain-text event would have its level in capitals after the timestamp.
        if !line.starts_with('{') {
            assert!(
                !["TRACE", "DEBUG", " INFO", " WARN", "ERROR"]
                    .iter()
                    .any(|level| line.contains(level)),
                "a plain-text log event: {line}"
            );
            continue;
        }
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            event["timestamp"].is_string() && event["level"].is_string(),
            "{line}"
        );
        assert!(event["message"].is_string(), "{line}");
        events += 1;
    }
    assert!(
        log.lines()
            .any(|l| l.contains("\"message\":\"CA material loaded\"")
                && l.contains("\"mesh\":\"default\"")),
        "fields are flattened into the object:\n{log}"
    );
    assert!(events > 3, "{log}");
}

/// Issue 30, N10 and N11: values that were accepted silently are refused with exit 64 naming
/// the key, and a start refused for a missing `extra_crls` or `extra_roots` file writes
/// nothing (it once issued and recorded a serving certificate on every crash-loop restart).
#[test]
fn serve_refuses_silent_bad_values_and_missing_files_before_writing_anything() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    stdout(&meshroot(dir, &["init", "--dir", "ca", "--dev-issuer"]));
    let config = dir.join("ca/meshroot.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    // init's records of the CA keys are the store's whole content, before and after.
    let store_files = || -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let mut files: Vec<_> = std::fs::read_dir(dir.join("ca/store"))
            .unwrap()
            .flatten()
            .filter_map(|entry| {
                let meta = entry.metadata().ok()?;
                Some((entry.path(), meta.len(), meta.modified().ok()?))
            })
            .collect();
        files.sort();
        files
    };
    let before = store_files();
    assert!(!before.is_empty());
    let cases: [(&str, String); 8] = [
        ("cluster.members", format!("{original}\n[cluster]\nmembers = []\n")),
        (
            "cluster.replicas",
            format!(
                "{original}\n[cluster]\nstatefulset = \"meshroot\"\nservice = \"meshroot-headless\"\nreplicas = 100000\n"
            ),
        ),
        (
            "revocation.crl_file",
            original.replace("crl_file = \"ca-crl.pem\"", "crl_file = \"nowhere/ca-crl.pem\""),
        ),
        (
            "audit.export",
            original.replace("[admin]", "[audit.export]\nreadable_records = true\n\n[admin]"),
        ),
        (
            "audit.export.jsonl_dir",
            original.replace("[admin]", "[audit.export]\njsonl_dir = \"meshroot.toml\"\n\n[admin]"),
        ),
        (
            "connections.max_per_peer",
            format!("{original}\n[connections]\nmax_total = 10\nmax_per_peer = 11\n"),
        ),
        (
            "mesh[0].extra_roots[0]",
            original.replacen(
                "ca_dir = \"default\"\n",
                "ca_dir = \"default\"\nextra_roots = [{ path = \"root-cert.pem\", vouch_for = [\"x.example\"] }]\n",
                1,
            ),
        ),
        (
            "revocation.crl_validity",
            original.replace("crl_file = \"ca-crl.pem\"", "crl_file = \"ca-crl.pem\"\ncrl_validity = \"87600000h\""),
        ),
    ];
    for (key, text) in cases {
        assert_ne!(text, original, "{key}: the edit applies");
        std::fs::write(&config, &text).unwrap();
        let output = meshroot(dir, &["serve", "--config", "ca/meshroot.toml"]);
        let message = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{key}: {message}");
        assert!(message.contains(key), "{key}: {message}");
    }
    // Missing extra files: exit 64, and no store was even created.
    for (key, text) in [
        (
            "revocation.extra_crls[1]",
            original.replace(
                "extra_crls = [\"root-crl.pem\"]",
                "extra_crls = [\"root-crl.pem\", \"gone-crl.pem\"]",
            ),
        ),
        (
            "mesh[0].extra_roots[0]",
            original.replacen(
                "ca_dir = \"default\"\n",
                "ca_dir = \"default\"\nextra_roots = [\"gone-root.pem\"]\n",
                1,
            ),
        ),
    ] {
        std::fs::write(&config, &text).unwrap();
        let output = meshroot(dir, &["serve", "--config", "ca/meshroot.toml"]);
        let message = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{key}: {message}");
        assert!(message.contains(key), "{key}: {message}");
        assert_eq!(store_files(), before, "{key}: nothing was written");
    }
}

/// Issue 31: `init` decides name constraints from the data plane and says so in one line; the
/// default (`mixed`) leaves URI name constraints out, so ztunnel's rustls-webpki accepts the
/// chains (`rustls_mtls.rs` shows both handshakes); `sidecar` confines the intermediate.
#[test]
fn init_decides_name_constraints_from_the_data_plane_and_says_so() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let constrained = |ca: &str| {
        let text = openssl(&[
            "x509",
            "-noout",
            "-ext",
            "nameConstraints",
            "-in",
            dir.join(ca).join("default/ca-cert.pem").to_str().unwrap(),
        ]);
        text.contains("URI:")
    };
    for (args, ca, expected, line) in [
        (&[][..], "mixed", false, "no URI name constraints"),
        (
            &["--data-plane", "ambient"][..],
            "ambient",
            false,
            "no URI name constraints",
        ),
        (
            &["--data-plane", "sidecar"][..],
            "sidecar",
            true,
            "data plane sidecar",
        ),
        (
            &["--no-name-constraints"][..],
            "legacy",
            false,
            "no URI name constraints",
        ),
    ] {
        let out = stdout(&meshroot(dir, &[&["init", "--dir", ca][..], args].concat()));
        assert!(
            out.lines().next().is_some_and(|l| l.contains(line)),
            "{ca}: {out}"
        );
        assert_eq!(constrained(ca), expected, "{ca}");
    }
    let both = meshroot(
        dir,
        &[
            "init",
            "--dir",
            "x",
            "--data-plane",
            "sidecar",
            "--no-name-constraints",
        ],
    );
    assert_eq!(both.status.code(), Some(2));
}
