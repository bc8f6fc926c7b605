//! CA keys in a PKCS#11 token (issue 34), against a real SoftHSM token each test initialises
//! itself (Debian's `softhsm2`, which `.ci/run` installs; `$MESHROOT_SOFTHSM_MODULE` names
//! another module path). `meshroot init` and `meshroot serve` run as processes with the test's
//! own `SOFTHSM2_CONF`, so each test has its own token directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshroot::domain::record::Outcome;
use meshroot::edge::client::{self, AgentMetadata, Target};

use crate::common::process::{Serving, BINARY};
use crate::common::{self, agent_csr, spiffe_id, Edited as _, TestCa, MESH};

pub(crate) const TOKEN: &str = "meshroot";
const USER_PIN: &str = "1234";

/// SoftHSM's PKCS#11 module.
pub(crate) fn module() -> PathBuf {
    let path = std::env::var_os("MESHROOT_SOFTHSM_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    assert!(
        path.exists(),
        "SoftHSM is needed ({}; .ci/run installs Debian's softhsm2)",
        path.display()
    );
    path
}

/// A configuration rendered for a pod (SoftHSM's module at `/opt/pkcs11`, where the chart's
/// and the overlay's init container put it) with the module where this machine has it, so it
/// loads here.
pub(crate) fn with_local_module(toml: &str) -> String {
    toml.replace(
        "\"/opt/pkcs11/libsofthsm2.so\"",
        &format!("{:?}", module().display().to_string()),
    )
}

/// A SoftHSM of the test's own: its configuration, token directory and PIN file, with one
/// initialised token.
pub(crate) struct Hsm {
    dir: tempfile::TempDir,
}

impl Hsm {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(dir.path().join("tokens")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("pin"), format!("{USER_PIN}\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        let hsm = Self { dir };
        let output = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", TOKEN])
            .args(["--so-pin", "5678", "--pin", USER_PIN])
            .env("SOFTHSM2_CONF", hsm.conf())
            .output()
            .unwrap_or_else(|e| panic!("softhsm2-util (Debian's softhsm2): {e}"));
        assert!(output.status.success(), "{}", common::output_text(&output));
        hsm
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    fn env(&self) -> [(&'static str, String); 1] {
        [("SOFTHSM2_CONF", self.conf().display().to_string())]
    }

    fn pkcs11_args(&self) -> Vec<String> {
        vec![
            "--pkcs11-token".into(),
            TOKEN.into(),
            "--pkcs11-module".into(),
            module().display().to_string(),
            "--pkcs11-pin-file".into(),
            self.dir.path().join("pin").display().to_string(),
        ]
    }

    fn meshroot(&self, args: &[String]) -> std::process::Output {
        Command::new(BINARY)
            .args(args)
            .envs(self.env())
            .env("MESHROOT_LOG", "warn")
            .env("MESHROOT_LISTEN", "127.0.0.1:0")
            .env("MESHROOT_ADMIN_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Takes the token away (SoftHSM's token directory moved aside), as pulling it out would.
    fn remove_token(&self) {
        std::fs::rename(self.dir.path().join("tokens"), self.dir.path().join("away"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(self.dir.path().join("tokens")).unwrap_or_else(|e| panic!("{e}"));
    }

    fn return_token(&self) {
        std::fs::remove_dir(self.dir.path().join("tokens")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(self.dir.path().join("away"), self.dir.path().join("tokens"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// `meshroot init` with the keys in the token.
pub(crate) fn init_in_token(hsm: &Hsm) -> TestCa {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    hsm.init_into(dir.path(), &["--dev-issuer"]);
    TestCa { dir }
}

impl Hsm {
    /// `meshroot init --dir DIR` with the keys in the token, and `extra` arguments.
    pub(crate) fn init_into(&self, dir: &Path, extra: &[&str]) {
        let mut args: Vec<String> = vec!["init".into(), "--dir".into()];
        args.push(dir.display().to_string());
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend(self.pkcs11_args());
        let output = self.meshroot(&args);
        assert!(output.status.success(), "{}", common::output_text(&output));
    }
}

fn target(ca: &TestCa, server: &Serving) -> Target {
    Target {
        address: server.address.clone(),
        root_pem: ca.root_pem(),
        server_name: "localhost".into(),
        client_identity: None,
    }
}

async fn request(
    ca: &TestCa,
    server: &Serving,
    account: &str,
) -> Result<Vec<String>, tonic::Status> {
    let channel = client::connect(&target(ca, server))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client::create_certificate(
        channel,
        agent_csr(&spiffe_id("default", account)),
        0,
        &AgentMetadata {
            token: Some(ca.token(MESH, "default", account)),
            cluster_id: "Kubernetes".into(),
        },
    )
    .await
    .map(|response| response.cert_chain)
}

/// Every file under `dir` that holds a private key.
fn private_key_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            found.extend(private_key_files(&path));
        } else if std::fs::read(&path)
            .map(|bytes| String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"))
            .unwrap_or(false)
        {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_in_a_token_issues_chains_that_openssl_verifies_and_keeps_no_ca_key_on_disk() {
    let hsm = Hsm::new();
    let ca = init_in_token(&hsm);
    // Only certificates and the URIs naming the keys: no root, intermediate or audit key on
    // disk (the development token issuer's key, which signs test tokens, is a file still).
    assert!(ca.path().join("root-key.uri").exists());
    assert!(ca.path().join(MESH).join("ca-key.uri").exists());
    let mut keys: Vec<String> = private_key_files(ca.path())
        .iter()
        .map(|path| path.strip_prefix(ca.path()).unwrap().display().to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, ["default/dev-issuer-key.pem"]);
    let helm = std::fs::read_to_string(ca.path().join("helm-values.yaml")).unwrap();
    assert!(
        !helm.contains("ca-key.pem") && !helm.contains("audit-key.pem"),
        "{helm}"
    );
    let config_text = std::fs::read_to_string(ca.config_path()).unwrap();
    assert!(
        config_text.contains("signing_key = \"pkcs11:token=meshroot;object=meshroot-audit;id=%"),
        "{config_text}"
    );
    let uri = std::fs::read_to_string(ca.path().join(MESH).join("ca-key.uri")).unwrap();
    assert!(
        uri.starts_with("pkcs11:token=meshroot;object=meshroot-default-intermediate;id=%"),
        "{uri}"
    );
    assert!(
        !uri.contains(USER_PIN)
            && !std::fs::read_to_string(ca.config_path())
                .unwrap()
                .contains(USER_PIN)
    );

    // An independent PKCS#11 client (PyKCS11) finds the three keys sensitive and never
    // extractable,
    // and the token withholds their value.
    let output = Command::new(common::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/pkcs11/key_attributes.py"
        ))
        .arg(module())
        .arg(TOKEN)
        .arg(hsm.dir.path().join("pin"))
        .envs(hsm.env())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::output_text(&output));
    let keys: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let locked = serde_json::json!({
        "extractable": false,
        "sensitive": true,
        "never_extractable": true,
        "always_sensitive": true,
        "value": "withheld",
    });
    assert_eq!(
        keys,
        serde_json::json!({
            "meshroot-root": locked,
            "meshroot-default-intermediate": locked,
            "meshroot-audit": locked,
        })
    );

    let config = ca.config_path().display().to_string();
    let env = hsm.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Serving::start_with_env(ca.path(), &["--config", &config], &env);
    // Two workloads, each chain checked by rustls-webpki, `openssl verify` and Go's
    // crypto/x509 (istio-agent's verifier).
    for account in ["one", "two"] {
        let chain = request(&ca, &server, account).await.unwrap();
        common::verify_chain(&chain, &ca.root_pem());
        let chain_file = ca.path().join(format!("chain-{account}.pem"));
        std::fs::write(&chain_file, chain.concat()).unwrap();
        let go = common::go_run(
            "x509verify.go",
            &[
                &ca.path().join("root-cert.pem").display().to_string(),
                &chain_file.display().to_string(),
            ],
        );
        assert!(go.status.success(), "{}", common::output_text(&go));
    }
    // The root's CRL `init` wrote was signed in the token too.
    // (`openssl crl -verify` fails unless the signature verifies.)
    common::openssl(&[
        "crl",
        "-in",
        &ca.path().join("root-crl.pem").display().to_string(),
        "-noout",
        "-verify",
        "-CAfile",
        &ca.path().join("root-cert.pem").display().to_string(),
    ]);
    server.stop();

    // The checkpoint written at the stop was signed by the audit key in the token: `audit
    // verify` accepts it with the published verifier key, and with the key the configuration
    // names (read from the token), and refuses it once edited.
    let checkpoint = ca.path().join("checkpoint.txt").display().to_string();
    let note = std::fs::read_to_string(&checkpoint).unwrap();
    // init's two records of CA keys, the serving certificate and the two workloads'.
    let size = note.lines().nth(1).unwrap();
    assert_eq!(size, "5", "{note}");
    let verifier = ca.path().join("audit-key.pub").display().to_string();
    for key_args in [vec!["--verifier-key", verifier.as_str()], vec![]] {
        let mut args: Vec<String> = ["audit", "verify", "--config", &config, "--checkpoint"]
            .map(String::from)
            .to_vec();
        args.push(checkpoint.clone());
        args.extend(key_args.iter().map(|a| a.to_string()));
        let output = hsm.meshroot(&args);
        let text = common::output_text(&output);
        assert!(output.status.success(), "{text}");
        assert!(
            text.contains(&format!("{checkpoint} (size 5): matches")),
            "{text}"
        );
    }
    let forged = ca.path().join("forged-checkpoint.txt");
    std::fs::write(&forged, note.replacen("\n5\n", "\n4\n", 1)).unwrap();
    let output = hsm.meshroot(&[
        "audit".into(),
        "verify".into(),
        "--config".into(),
        config.clone(),
        "--checkpoint".into(),
        forged.display().to_string(),
    ]);
    let text = common::output_text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("PROBLEM") && text.contains("invalid"),
        "{text}"
    );

    // A second `init` into the same token would shadow these keys' labels: refused without
    // --force.
    let again = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = ["init", "--dir"].map(String::from).to_vec();
    args.push(again.path().display().to_string());
    args.extend(hsm.pkcs11_args());
    let output = hsm.meshroot(&args);
    assert!(!output.status.success());
    assert!(
        common::output_text(&output).contains("already exists in the token"),
        "{}",
        common::output_text(&output)
    );

    // The next intermediate, made in the token under the root in the token; and the root's
    // CRL signed again there.
    let next = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = ["rotate", "intermediate", "--mesh", MESH, "--root-dir"]
        .map(String::from)
        .to_vec();
    args.push(ca.path().display().to_string());
    args.extend(["--out".into(), next.path().display().to_string()]);
    args.extend(hsm.pkcs11_args());
    let output = hsm.meshroot(&args);
    assert!(output.status.success(), "{}", common::output_text(&output));
    assert!(!next.path().join("ca-key.pem").exists());
    let next_uri = std::fs::read_to_string(next.path().join("ca-key.uri")).unwrap();
    assert_ne!(next_uri, uri, "a new key, named by its own id");
    common::openssl(&[
        "verify",
        "-CAfile",
        &ca.path().join("root-cert.pem").display().to_string(),
        &next.path().join("ca-cert.pem").display().to_string(),
    ]);
    let crl = next.path().join("root-crl.pem").display().to_string();
    let mut args: Vec<String> = ["crl", "sign-root", "--out", &crl, "--ca-dir"]
        .map(String::from)
        .to_vec();
    args.push(ca.path().display().to_string());
    args.extend(hsm.pkcs11_args().into_iter().skip(2));
    let output = hsm.meshroot(&args);
    assert!(output.status.success(), "{}", common::output_text(&output));
    common::openssl(&[
        "crl",
        "-in",
        &crl,
        "-noout",
        "-verify",
        "-CAfile",
        &ca.path().join("root-cert.pem").display().to_string(),
    ]);

    // The new intermediate in service: its chains verify, and the log names where its key is.
    for file in ["ca-cert.pem", "cert-chain.pem", "ca-key.uri"] {
        std::fs::copy(next.path().join(file), ca.path().join(MESH).join(file)).unwrap();
    }
    let mut server = Serving::start_with_env(ca.path(), &["--config", &config], &env);
    let chain = request(&ca, &server, "rotated").await.unwrap();
    common::verify_chain(&chain, &ca.root_pem());
    assert_eq!(
        common::certificates(&chain[1])[0].to_vec(),
        common::certificates(&std::fs::read_to_string(next.path().join("ca-cert.pem")).unwrap())[0]
            .to_vec()
    );
    server.stop();

    // Every CA certificate made or put into service is in the log with its key's token
    // serial, label and id: init's root and intermediate (each naming the key that signed it),
    // then the rotated intermediate, recorded by the server that took it into service.
    let id_of = |uri: &str| uri.trim().rsplit_once(";id=").unwrap().1.replace('%', "");
    let root_uri = std::fs::read_to_string(ca.path().join("root-key.uri")).unwrap();
    let store = meshroot::adapters::store::SledStore::open_read_only(&ca.config().store).unwrap();
    let ca_keys: Vec<_> = store
        .query_all(&meshroot::domain::audit::Query {
            outcome: Some(meshroot::domain::audit::OutcomeFilter::CaKey),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|record| match record.outcome {
            Outcome::CaKey(ca_key) => ca_key,
            other => panic!("{other:?}"),
        })
        .collect();
    let serial = ca_keys[0].key.token_serial.clone();
    assert!(!serial.is_empty(), "{ca_keys:?}");
    let summary: Vec<_> = ca_keys
        .iter()
        .map(|c| {
            (
                c.event.as_str(),
                c.role.as_str(),
                c.mesh.as_str(),
                c.key.custody.as_str(),
                c.key.token_label.as_str(),
                c.key.token_serial == serial,
                c.key.key_label.as_str(),
                c.key.key_id.clone(),
                c.signed_by.as_ref().map(|k| k.key_id.clone()),
            )
        })
        .collect();
    let root_id = id_of(&root_uri);
    assert_eq!(
        summary,
        [
            (
                "created",
                "root",
                "",
                "token",
                TOKEN,
                true,
                "meshroot-root",
                root_id.clone(),
                None
            ),
            (
                "created",
                "intermediate",
                MESH,
                "token",
                TOKEN,
                true,
                "meshroot-default-intermediate",
                id_of(&uri),
                Some(root_id.clone())
            ),
            (
                "in_service",
                "intermediate",
                MESH,
                "token",
                TOKEN,
                true,
                "meshroot-default-intermediate",
                id_of(&next_uri),
                None
            ),
        ]
    );
    // `audit list --outcome ca-key` shows them, each with where its key is.
    drop(store);
    let output = hsm.meshroot(&[
        "audit".into(),
        "list".into(),
        "--config".into(),
        config.clone(),
        "--outcome".into(),
        "ca-key".into(),
    ]);
    let listed = common::output_text(&output);
    assert!(output.status.success(), "{listed}");
    assert_eq!(listed.matches("ca-key").count(), 3, "{listed}");
    assert!(
        listed.contains(&format!(
            "in_service intermediate {}",
            meshroot::domain::digest::hex(&ca_keys[2].serial)
        )) && listed.contains(&format!("key {:?} (id {})", "meshroot-root", root_id)),
        "{listed}"
    );
    // Each names its certificate and issuer exactly.
    let sha = |pem: &str| meshroot::domain::digest::sha256(&common::certificates(pem)[0]).to_vec();
    let root_sha = sha(&ca.root_pem());
    assert_eq!(ca_keys[0].certificate_sha256, root_sha);
    assert_eq!(ca_keys[1].issuer_sha256, root_sha);
    assert_eq!(
        ca_keys[2].certificate_sha256,
        sha(&std::fs::read_to_string(next.path().join("ca-cert.pem")).unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_goes_away_makes_issuance_unavailable_and_not_ready_until_it_returns() {
    let hsm = Hsm::new();
    let ca = init_in_token(&hsm);
    let config = ca.config_path().display().to_string();
    let env = hsm.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Serving::start_with_env(ca.path(), &["--config", &config], &env);
    let admin: std::net::SocketAddr = server.admin_address.parse().unwrap();
    request(&ca, &server, "before").await.unwrap();
    assert_eq!(common::http_get(admin, "/readyz").await.0, 200);

    hsm.remove_token();
    let refused = request(&ca, &server, "while-away").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("signing-key-unavailable"),
        "{refused:?}"
    );
    let (status, body) = common::http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("mesh default: the signing key: the token is unavailable"),
        "{body}"
    );

    // Back: issuance and readiness recover without a restart.
    hsm.return_token();
    common::wait_until(
        "ready again once the token is back",
        Duration::from_secs(20),
        || async {
            let (status, body) = common::http_get(admin, "/readyz").await;
            (status == 200).then_some(()).ok_or(body)
        },
    )
    .await;
    let chain = request(&ca, &server, "after").await.unwrap();
    common::verify_chain(&chain, &ca.root_pem());

    // Every certificate that left has its record.
    server.stop();
    let store = meshroot::adapters::store::SledStore::open_read_only(&ca.config().store).unwrap();
    let outcomes = |account: &str| -> Vec<String> {
        store
            .query_all(&meshroot::domain::audit::Query {
                spiffe_id: Some(spiffe_id("default", account)),
                ..Default::default()
            })
            .unwrap()
            .iter()
            .map(|record| match &record.outcome {
                Outcome::Issued(_) => "issued".to_owned(),
                Outcome::Denied(denial) => denial.reason.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(outcomes("before"), ["issued"]);
    assert_eq!(outcomes("after"), ["issued"]);
    // Refused for want of the key, as a hold refuses: logged, nothing issued, so nothing to
    // record.
    assert_eq!(outcomes("while-away"), Vec::<String>::new());
    assert!(server
        .log()
        .contains("the signing key's token is unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_pulled_mid_load_loses_no_record_and_serves_again_when_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let hsm = Hsm::new();
    let ca = Arc::new(init_in_token(&hsm));
    // The workers ask far faster than istio-agent: no rate limit gets in the way.
    let mut text = std::fs::read_to_string(ca.config_path()).unwrap();
    text.push_str(
        "\n[rate_limit]\nper_caller = 1000000.0\ncaller_burst = 1000000.0\n\
         per_namespace = 1000000.0\nnamespace_burst = 1000000.0\n",
    );
    std::fs::write(ca.config_path(), text).unwrap();
    let config = ca.config_path().display().to_string();
    let env = hsm.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Serving::start_with_env(ca.path(), &["--config", &config], &env);
    let target = Arc::new(target(&ca, &server));

    // Four workloads ask again and again; every answer is kept.
    #[derive(Default)]
    struct Answers {
        chains: Vec<Vec<String>>,
        refusals: Vec<tonic::Status>,
    }
    let answers = Arc::new(Mutex::new(Answers::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (ca, target, answers, stop) =
            (ca.clone(), target.clone(), answers.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let account = format!("load-{worker}");
            let channel = client::connect(&target)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            while !stop.load(Ordering::SeqCst) {
                let answer = client::create_certificate(
                    channel.clone(),
                    agent_csr(&spiffe_id("default", &account)),
                    0,
                    &AgentMetadata {
                        token: Some(ca.token(MESH, "default", &account)),
                        cluster_id: "Kubernetes".into(),
                    },
                )
                .await;
                let mut answers = answers.lock().unwrap_or_else(|p| p.into_inner());
                match answer {
                    Ok(response) => answers.chains.push(response.cert_chain),
                    Err(status) => answers.refusals.push(status),
                }
            }
        }));
    }
    let counts = || {
        let answers = answers.lock().unwrap_or_else(|p| p.into_inner());
        (answers.chains.len(), answers.refusals.len())
    };
    let wait_for = |what: &'static str, check: Box<dyn Fn((usize, usize)) -> bool + Send>| {
        let counts = &counts;
        async move {
            common::wait_until(what, Duration::from_secs(30), || async {
                let now = counts();
                check(now).then_some(()).ok_or(format!("{now:?}"))
            })
            .await
        }
    };
    wait_for("issuing under load", Box::new(|(issued, _)| issued >= 20)).await;

    // Pulled mid-load: refusals come, and issuance stops.
    hsm.remove_token();
    let (before, _) = counts();
    wait_for(
        "refusals while the token is away",
        Box::new(|(_, refused)| refused >= 20),
    )
    .await;
    let (during, _) = counts();
    assert!(
        during <= before + 4,
        "at most the requests already signing when it went: {before} then {during}"
    );

    // Back: issuance resumes, no restart.
    hsm.return_token();
    wait_for(
        "issuing again once the token is back",
        Box::new(move |(issued, _)| issued >= during + 20),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for worker in load {
        worker.await.unwrap();
    }
    server.stop();

    let answers = Arc::try_unwrap(answers)
        .unwrap_or_else(|_| panic!("the workers are done"))
        .into_inner()
        .unwrap();
    // Every refusal is the server's UNAVAILABLE for want of its key (istio-agent retries
    // it; a server that fell over would show as transport errors), naming no internals.
    for refusal in &answers.refusals {
        assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
        assert!(
            refusal.message().contains("signing-key-unavailable")
                && !refusal.message().contains("Pkcs11"),
            "{refusal:?}"
        );
    }
    // Every certificate that left is whole and has exactly one record; no record names a
    // certificate that did not leave.
    let store = meshroot::adapters::store::SledStore::open_read_only(&ca.config().store).unwrap();
    let mut recorded = std::collections::BTreeSet::new();
    for worker in 0..4 {
        for record in store
            .query_all(&meshroot::domain::audit::Query {
                spiffe_id: Some(spiffe_id("default", &format!("load-{worker}"))),
                ..Default::default()
            })
            .unwrap()
        {
            let Outcome::Issued(issued) = &record.outcome else {
                panic!("only issuances are recorded for the load: {record:?}");
            };
            assert!(recorded.insert(issued.serial.clone()), "one record each");
        }
    }
    let mut issued = std::collections::BTreeSet::new();
    for chain in &answers.chains {
        let leaf = &common::certificates(&chain[0])[0];
        issued.insert(meshroot::domain::signer::check::serial_of(leaf).unwrap());
    }
    assert_eq!(issued.len(), answers.chains.len(), "every serial unique");
    assert_eq!(recorded, issued);
    // A sample of the chains, from before, during and after, verifies in full.
    for chain in answers.chains.iter().step_by(answers.chains.len() / 5 + 1) {
        common::verify_chain(chain, &ca.root_pem());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_at_start_on_a_missing_token_and_on_a_wrong_pin_which_it_never_retries() {
    let hsm = Hsm::new();
    let ca = init_in_token(&hsm);
    let serve = |config: &Path| {
        hsm.meshroot(&[
            "serve".into(),
            "--config".into(),
            config.display().to_string(),
        ])
    };

    hsm.remove_token();
    let output = serve(&ca.config_path());
    assert_eq!(
        output.status.code(),
        Some(69),
        "{}",
        common::output_text(&output)
    );
    assert!(
        common::output_text(&output).contains("the token is unavailable"),
        "{}",
        common::output_text(&output)
    );
    hsm.return_token();

    let wrong_pin = hsm.dir.path().join("wrong-pin");
    std::fs::write(&wrong_pin, "987654\n").unwrap();
    let config = ca.config_path().with_file_name("wrong-pin.toml");
    let text = std::fs::read_to_string(ca.config_path()).unwrap();
    let pin_file = hsm.dir.path().join("pin").display().to_string();
    std::fs::write(
        &config,
        text.edited(&pin_file, &wrong_pin.display().to_string()),
    )
    .unwrap();
    let output = serve(&config);
    let text = common::output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("PinIncorrect (not retried"), "{text}");
    assert!(!text.contains("987654"), "{text}");
    // One failed login, not a retry loop: the right PIN still opens the token, which serves.
    let config = ca.config_path().display().to_string();
    let env = hsm.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Serving::start_with_env(ca.path(), &["--config", &config], &env);
    request(&ca, &server, "after-a-wrong-pin").await.unwrap();
    server.stop();
}
