//! Several replicas, one CA (`[replicas]`): three `meshroot serve` processes on one machine,
//! each with its own store and admin port, one configuration. They talk over their admin ports
//! with mutual TLS (the admin listeners are off loopback), as in a cluster.
//!
//! - `audit list --count` through one member counts every member's log; with a member stopped
//!   the answer is incomplete: exit code 3, naming the member (`--allow-incomplete`: exit 0).
//! - Root rotation: a bundle that drops the old root is refused by a replica that issued nothing
//!   under it (a fresh volume), because another member did; refused while that member is down
//!   (fail closed, naming it); a bundle that keeps the root is accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::Edited as _;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::process::{Serving, BINARY};
use common::{agent_csr, copy_dir, eventually, TestCa, MESH, TRUST_DOMAIN};
use meshroot::edge::client::{self, AgentMetadata, Target};

const AUDITOR: &str = "spiffe://cluster.local/ns/istio-system/sa/meshroot-auditor";

/// Three members' admin ports, free now.
fn free_ports() -> Vec<u16> {
    (0..3).map(|_| common::free_port()).collect()
}

struct Cluster {
    ca: TestCa,
    ports: Vec<u16>,
}

impl Cluster {
    fn new() -> Self {
        let ca = TestCa::new();
        let ports = free_ports();
        join(&ca, &ports);
        Self { ca, ports }
    }

    /// Starts a meshroot of another CA directory (`config`, its own store) as member `index`.
    fn start_other(&self, config: &Path, index: usize) -> Serving {
        let dir = config.parent().unwrap();
        let (store, admin, member) = (
            dir.join(format!("store-{index}")),
            format!("0.0.0.0:{}", self.ports[index]),
            self.member(index),
        );
        Serving::start_with_env(
            dir,
            &["--config", config.to_str().unwrap()],
            &[
                ("MESHROOT_STORE", store.to_str().unwrap()),
                ("MESHROOT_ADMIN_LISTEN", admin.as_str()),
                ("MESHROOT_MEMBER", member.as_str()),
            ],
        )
    }

    fn member(&self, index: usize) -> String {
        format!("localhost:{}", self.ports[index])
    }

    fn store(&self, index: usize) -> PathBuf {
        self.ca.path().join(format!("store-{index}"))
    }

    /// Starts member `index` on its own store and admin port (off loopback: mutual TLS).
    fn start(&self, index: usize) -> Serving {
        self.start_with(index, &[])
    }

    fn start_with(&self, index: usize, env: &[(&str, &str)]) -> Serving {
        let config = self.ca.config_path();
        let (store, admin, member) = (
            self.store(index),
            format!("0.0.0.0:{}", self.ports[index]),
            self.member(index),
        );
        let mut all = vec![
            ("MESHROOT_STORE", store.to_str().unwrap()),
            ("MESHROOT_ADMIN_LISTEN", admin.as_str()),
            ("MESHROOT_MEMBER", member.as_str()),
        ];
        all.extend_from_slice(env);
        Serving::start_with_env(
            self.ca.path(),
            &["--config", config.to_str().unwrap()],
            &all,
        )
    }

    /// An auditor's client certificate, written next to the config.
    fn auditor(&self) -> (PathBuf, PathBuf) {
        let now = SystemTime::now();
        let (chain, key) = self.ca.mint(
            MESH,
            AUDITOR,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        );
        let (cert_path, key_path) = (
            self.ca.path().join("auditor.pem"),
            self.ca.path().join("auditor-key.pem"),
        );
        std::fs::write(&cert_path, chain).unwrap();
        std::fs::write(&key_path, key).unwrap();
        (cert_path, key_path)
    }

    /// `meshroot audit ARGS` through member `index`: (exit code, stdout, stderr).
    fn audit(&self, index: usize, args: &[&str]) -> (i32, String, String) {
        self.command(index, &[&["audit"], args].concat())
    }

    /// `meshroot ARGS` through member `index`'s admin API: (exit code, stdout, stderr).
    fn command(&self, index: usize, args: &[&str]) -> (i32, String, String) {
        let (cert, key) = self.auditor();
        let output = Command::new(BINARY)
            .args(args)
            .args(["--addr", &format!("127.0.0.1:{}", self.ports[index])])
            .args([
                "--root",
                self.ca.path().join("root-cert.pem").to_str().unwrap(),
            ])
            .args(["--cert", cert.to_str().unwrap()])
            .args(["--key", key.to_str().unwrap()])
            .args(["--server-name", "localhost"])
            .env("MESHROOT_LOG", "warn")
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// Makes `ca`'s configuration a `[replicas]` of members `localhost:PORT`, the auditor allowed
/// to read and revoke.
fn join(ca: &TestCa, ports: &[u16]) {
    let members: Vec<String> = ports.iter().map(|p| format!("\"localhost:{p}\"")).collect();
    ca.edit_config(|text| {
        format!(
            "{}\n[replicas]\nmembers = [{}]\nmember_timeout = \"2s\"\n",
            text.edited(
                "[admin]\nlisten = \"127.0.0.1:0\"",
                &format!("[admin]\nlisten = \"127.0.0.1:0\"\nrevokers = [\"{AUDITOR}\"]"),
            ),
            members.join(", ")
        )
    });
}

/// One workload certificate from a member's CSR API.
async fn issue(ca: &TestCa, serving: &Serving, root_pem: &str, service_account: &str) {
    let channel = client::connect(&Target {
        address: serving.address.clone(),
        root_pem: root_pem.to_owned(),
        server_name: "localhost".into(),
        client_identity: None,
    })
    .await
    .unwrap();
    let identity = format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{service_account}");
    client::create_certificate(
        channel,
        agent_csr(&identity),
        3600,
        &AgentMetadata {
            token: Some(ca.token(MESH, "default", service_account)),
            cluster_id: "Kubernetes".into(),
        },
    )
    .await
    .unwrap();
}

/// Waits until a member has confirmed its bundle with the others and issues.
fn wait_ready(serving: &Serving) {
    serving.wait_for_log("cluster-gate: resolved");
    serving.wait_for_log("log-rollback: resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_answers_for_all_and_says_when_it_cannot() {
    let cluster = Cluster::new();
    let root = cluster.ca.root_pem();
    let mut members: Vec<Serving> = (0..3).map(|i| cluster.start(i)).collect();
    members.iter().for_each(wait_ready);
    for (index, count) in [3, 2, 1].into_iter().enumerate() {
        for n in 0..count {
            issue(
                &cluster.ca,
                &members[index],
                &root,
                &format!("sa-{index}-{n}"),
            )
            .await;
        }
    }
    let workloads = [
        "list",
        "--count",
        "--spiffe-id-prefix",
        "spiffe://cluster.local/ns/default/",
    ];

    // Through member 1: every member's log.
    let (code, out, err) = cluster.audit(1, &workloads);
    assert_eq!((code, out.trim()), (0, "6"), "stderr: {err}");
    let (code, out, _) = cluster.audit(2, &[&workloads[..], &["--format", "json"]].concat());
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (json["count"].as_u64(), json["complete"].as_bool()),
        (Some(6), Some(true))
    );
    // --replica: one member's log only.
    let (code, out, _) = cluster.audit(
        1,
        &[&workloads[..], &["--replica", &cluster.member(0)]].concat(),
    );
    assert_eq!((code, out.trim()), (0, "3"));
    // A merged listing, page by page, holds every member's records once, each labelled.
    let (code, out, err) = cluster.audit(
        0,
        &[
            "list",
            "--spiffe-id-prefix",
            "spiffe://cluster.local/ns/default/",
            "--limit",
            "2",
            "--all",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0, "stderr: {err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let mut by_member: Vec<String> = listed
        .iter()
        .map(|r| r["replica"].as_str().unwrap_or_default().to_owned())
        .collect();
    by_member.sort();
    let expected: Vec<String> = [0, 0, 0, 1, 1, 2]
        .iter()
        .map(|i| cluster.member(*i))
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(by_member, expected_sorted);
    let now = SystemTime::now();
    let times: Vec<SystemTime> = listed
        .iter()
        .map(|r| {
            meshroot::domain::audit::parse_time(r["recorded_at"].as_str().unwrap(), now).unwrap()
        })
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "merged in time order");
    // The rotation plan counts every member's certificates, and says so per member.
    let config = cluster.ca.config_path();
    let plan = ["rotate", "plan", "--config", config.to_str().unwrap()];
    let (code, out, err) = cluster.command(2, &plan);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("per member"), "{out}");
    for index in 0..3 {
        assert!(
            out.contains(&format!("    {}: [1] ", cluster.member(index))),
            "{out}"
        );
    }
    // Cluster stats sum the members' logs.
    let (code, out, _) = cluster.audit(0, &["stats", "--json"]);
    assert_eq!(code, 0);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["members"].as_array().unwrap().len(), 3);
    assert_eq!(stats["complete"], true);

    // The status page of any member shows the cluster: every member answered, and the
    // workload certificates (an hour each) of all three logs are expiring.
    // A page of member `index`'s admin listener, as the auditor.
    let admin_get = |index: usize, path: &'static str| {
        let (cert, key) = cluster.auditor();
        let identity = (
            std::fs::read_to_string(cert).unwrap(),
            std::fs::read_to_string(key).unwrap(),
        );
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.ports[index]));
        let root = root.clone();
        async move { crate::common::https_get(admin, &root, path, Some(identity)).await }
    };
    let page = |index: usize| admin_get(index, "/ui");
    // What each member's last request of another found (`meshroot_member_reachable`), from
    // `index`'s /metrics.
    let reachable = |index: usize| {
        let scrape = admin_get(index, "/metrics");
        async move {
            let (status, text) = scrape.await;
            assert_eq!(status, 200, "{text}");
            text.lines()
                .filter_map(|line| line.strip_prefix("meshroot_member_reachable{member=\""))
                .filter_map(|rest| rest.split_once("\"} "))
                .map(|(member, value)| (member.to_owned(), value.to_owned()))
                .collect::<std::collections::BTreeMap<String, String>>()
        }
    };
    let (status, html) = page(1).await;
    assert_eq!(status, 200, "{html}");
    let answered = [0, 2]
        .into_iter()
        .map(|i| (cluster.member(i), "1".to_owned()))
        .collect();
    assert_eq!(reachable(1).await, answered, "every other member answered");
    for index in 0..3 {
        assert!(
            html.contains(&format!(
                "data-figure=\"member-{}\">yes<",
                cluster.member(index)
            )),
            "{html}"
        );
    }
    assert!(
        html.contains("data-figure=\"expiring-default\">6<"),
        "{html}"
    );

    // Member 2 stops: the answer lacks its log, and says so.
    members[2].kill();
    let (status, html) = page(0).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains(&format!(
            "data-figure=\"member-{}\">no: ",
            cluster.member(2)
        )),
        "{html}"
    );
    let (code, out, err) = cluster.audit(1, &workloads);
    assert_eq!(
        code, 3,
        "an incomplete answer exits 3; stdout {out} stderr {err}"
    );
    assert!(
        err.contains("INCOMPLETE") && err.contains(&cluster.member(2)),
        "{err}"
    );
    let (code, out, _) = cluster.audit(
        1,
        &[&workloads[..], &["--allow-incomplete", "--format", "json"]].concat(),
    );
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["count"], 5);
    assert_eq!(json["complete"], false);
    assert_eq!(json["missing"][0]["member"], cluster.member(2));
    // So do the rotation plan, a listing and a verification.
    let (code, out, _) = cluster.command(1, &plan);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(&format!("{}: DID NOT ANSWER", cluster.member(2))),
        "{out}"
    );
    let (code, _, err) = cluster.audit(0, &["list", "--all"]);
    assert_eq!(code, 3, "{err}");
    // Member 0 asked both others since member 2 went: one answered, one could not be reached.
    let seen = [(1, "1"), (2, "0")]
        .into_iter()
        .map(|(i, value)| (cluster.member(i), value.to_owned()))
        .collect();
    assert_eq!(reachable(0).await, seen);
    let (code, out, err) = cluster.audit(
        0,
        &[
            "verify",
            "--verifier-key",
            cluster.ca.path().join("audit-key.pub").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 3, "stdout {out} stderr {err}");
    assert!(
        out.contains(&format!("member {}:", cluster.member(0))),
        "{out}"
    );
    assert!(
        out.contains(&format!("member {}:", cluster.member(1))),
        "{out}"
    );
    for member in &mut members[..2] {
        member.stop();
    }
}

/// Writes `mesh` CA material into the cluster's mesh directory: `from`'s intermediate, a bundle
/// of `roots`, and `extra_roots` in the config.
fn install_bundle(ca: &TestCa, from: &Path, roots: &[&Path], extra: Option<&Path>) {
    let mesh_dir = ca.path().join(MESH);
    for file in ["ca-cert.pem", "ca-key.pem", "cert-chain.pem"] {
        std::fs::copy(from.join(MESH).join(file), mesh_dir.join(file)).unwrap();
    }
    let bundle: String = roots
        .iter()
        .map(|root| std::fs::read_to_string(root).unwrap())
        .collect();
    std::fs::write(mesh_dir.join("root-cert.pem"), bundle).unwrap();
    ca.edit_config(|text| {
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with("extra_roots"))
            .collect();
        let mut text = kept.join("\n") + "\n";
        if let Some(extra) = extra {
            text = text.replacen(
                "[[mesh]]\n",
                &format!("[[mesh]]\nextra_roots = [{:?}]\n", extra.to_str().unwrap()),
                1,
            );
        }
        text
    });
}

/// Issue 30, N2: an impostor on a member's address, with a certificate from a partner root in
/// the trust bundle (`extra_roots`, no `vouches_for`) for the member's host name and the member
/// identity, is refused both ways: the real member does not take its answers (a cluster question
/// names it missing, so the rotation gate fails closed) and does not take its checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_member_with_a_partner_root_certificate_is_refused_both_ways() {
    let cluster = Cluster::new();
    let partner = TestCa::with_meshes(
        &[(MESH, TRUST_DOMAIN)],
        meshroot::domain::keys::KeyType::EcdsaP256,
    );
    cluster.ca.add_root_of(&partner, "partner-root.pem");
    cluster.ca.edit_config(|text| {
        text.replacen(
            "ca_dir = \"default\"\n",
            "ca_dir = \"default\"\nextra_roots = [{ path = \"partner-root.pem\" }]\n",
            1,
        )
    });
    // The impostor: meshroot itself, on the partner's CA, configured as the same cluster.
    join(&partner, &cluster.ports);
    let mut real = cluster.start(0);
    let mut impostor = cluster.start_other(&partner.config_path(), 1);
    real.wait_for_log("a member answered with a certificate that is not a member's");
    let (code, _, err) = cluster.audit(0, &["list", "--count"]);
    assert_eq!(code, 3, "the answer is incomplete: {err}");
    assert!(
        err.contains(&cluster.member(1)),
        "names the impostor: {err}"
    );
    // The start-up gate asks every member: it stays closed while the impostor is refused.
    assert_eq!(real.count_log("cluster-gate: resolved"), 0);
    // Both ways: the impostor does not take the real member for one either.
    impostor.wait_for_log("a member answered with a certificate that is not a member's");
    impostor.stop();
    real.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_is_dropped_only_when_no_member_needs_it() {
    let cluster = Cluster::new();
    let old_root = cluster.ca.path().join("old-root.pem");
    std::fs::copy(cluster.ca.path().join("root-cert.pem"), &old_root).unwrap();
    let new = TestCa::new();
    let new_root = new.path().join("root-cert.pem");
    let root = cluster.ca.root_pem();
    let mut members: Vec<Serving> = (0..3).map(|i| cluster.start(i)).collect();
    members.iter().for_each(wait_ready);
    // Member 0 issues under the old root.
    for n in 0..3 {
        issue(&cluster.ca, &members[0], &root, &format!("old-{n}")).await;
    }
    // Steps 2–4 of a root rotation: the new root joins the bundle, the new intermediate signs.
    let reloaded = members[0].count_log("configuration reloaded");
    members[1].kill();
    members[2].kill();
    install_bundle(&cluster.ca, new.path(), &[&new_root], Some(&old_root));
    members[0].wait_for_more_log("configuration reloaded", reloaded);
    // Members 1 and 2 come back on empty volumes: they never issued under the old root. (A
    // lost volume is a lost log: they start new ones, as an operator would.)
    for index in [1, 2] {
        std::fs::remove_dir_all(cluster.store(index)).unwrap();
        let log = format!("meshroot-audit/member-{index}-2");
        members[index] = cluster.start_with(index, &[("MESHROOT_LOG_NAME", log.as_str())]);
    }
    members[1..].iter().for_each(wait_ready);

    // Dropping the old root: member 1 has nothing under it, but member 0 does.
    let refused = "configuration reload refused";
    let seen = members[1].count_log(refused);
    install_bundle(&cluster.ca, new.path(), &[&new_root], None);
    let line = members[1].wait_for_more_log(refused, seen);
    assert!(
        line.contains(&format!("issued by member {}", cluster.member(0))),
        "{line}"
    );
    // While member 0 is down, the drop is refused too, naming it (fail closed).
    members[0].kill();
    let seen = members[1].count_log(refused);
    members[1].signal("-HUP");
    let line = members[1].wait_for_more_log(refused, seen);
    assert!(
        line.contains("did not say") && line.contains(&cluster.member(0)),
        "{line}"
    );
    // A bundle that keeps the old root is accepted, member 0 down or not.
    let reloaded = members[1].count_log("configuration reloaded");
    install_bundle(&cluster.ca, new.path(), &[&new_root], Some(&old_root));
    members[1].wait_for_more_log("configuration reloaded", reloaded);
    for member in &mut members[1..] {
        member.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_an_older_copy_of_its_volume_is_held_until_it_starts_a_new_log() {
    let cluster = Cluster::new();
    cluster.ca.edit_config(|text| {
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with("checkpoint_interval"))
            .collect();
        kept.join("\n")
            .replacen("[audit]\n", "[audit]\ncheckpoint_interval = \"1s\"\n", 1)
    });
    let root = cluster.ca.root_pem();
    let mut members: Vec<Serving> = (0..3).map(|i| cluster.start(i)).collect();
    members.iter().for_each(wait_ready);
    issue(&cluster.ca, &members[0], &root, "early").await;
    // A snapshot of member 0's volume, taken while it is stopped.
    members[0].stop();
    let snapshot = cluster.ca.path().join("store-0-snapshot");
    copy_dir(&cluster.store(0), &snapshot);
    members[0] = cluster.start(0);
    members[0].wait_for_log("log-rollback: resolved");
    for n in 0..3 {
        issue(&cluster.ca, &members[0], &root, &format!("late-{n}")).await;
    }
    // The members now hold a checkpoint covering the later records.
    let shared = "checkpoint shared with the members";
    let seen = members[0].count_log(shared);
    for more in 0..3 {
        members[0].wait_for_more_log(shared, seen + more);
    }
    members[0].kill();
    std::fs::remove_dir_all(cluster.store(0)).unwrap();
    copy_dir(&snapshot, &cluster.store(0));

    // Back on the older copy: held, not ready, with the reason; issuance is refused.
    members[0] = cluster.start(0);
    let line = members[0].wait_for_more_log("log-rollback: not issuing", 1);
    assert!(
        line.contains("volume was lost or restored from an older copy"),
        "{line}"
    );
    let refused = client::create_certificate(
        client::connect(&Target {
            address: members[0].address.clone(),
            root_pem: root.clone(),
            server_name: "localhost".into(),
            client_identity: None,
        })
        .await
        .unwrap(),
        agent_csr(&format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/after")),
        3600,
        &AgentMetadata {
            token: Some(cluster.ca.token(MESH, "default", "after")),
            cluster_id: "Kubernetes".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains("log-rollback"),
        "{}",
        refused.message()
    );

    // The operator starts a new log under a new name: it issues again.
    members[0].kill();
    members[0] = cluster.start_with(0, &[("MESHROOT_LOG_NAME", "meshroot-audit/member-0-2")]);
    members[0].wait_for_log("log-rollback: resolved");
    issue(&cluster.ca, &members[0], &root, "new-log").await;
    for member in &mut members {
        member.stop();
    }
}

/// In Kubernetes: the members follow the StatefulSet's `spec.replicas` (a scale-up adds the new
/// ordinals), and the API keeps each replica's latest checkpoint, so a replica on a wiped
/// volume is held even when no other member remembers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_kubernetes_members_follow_the_statefulset_and_the_api_keeps_each_checkpoint() {
    use common::kube_api::FakeApiServer;
    let api = FakeApiServer::start().await;
    api.add_namespace("istio-system", &[]);
    let statefulset = |replicas: u32| serde_json::json!({"metadata": {"name": "meshroot"}, "spec": {"replicas": replicas}});
    api.put_object("statefulsets", "istio-system", statefulset(1));
    let ca = TestCa::new();
    let kubeconfig = api.write_kubeconfig(ca.path(), "west");
    let this = "meshroot-0.meshroot-headless.istio-system.svc:15014";
    ca.edit_config(|text| {
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with("checkpoint_interval"))
            .collect();
        format!(
            "{}\n[kubernetes]\nkubeconfig = \"{path}\"\nnamespace = \"istio-system\"\n\
             identity = \"meshroot-0\"\nroot_configmap = false\nistiod_tls = false\n\n\
             [replicas]\nstatefulset = \"meshroot\"\nservice = \"meshroot-headless\"\n\
             namespace = \"istio-system\"\nreplicas = 1\nport = 15014\nself = \"{this}\"\n",
            kept.join("\n")
                .replacen("[audit]\n", "[audit]\ncheckpoint_interval = \"1s\"\n", 1),
            path = kubeconfig.display()
        )
    });
    let ready = |server: &common::TestServer| server.server.not_ready_reasons().is_empty();
    let server = ca.start().await;
    eventually("ready", || ready(&server)).await;
    for n in 0..3 {
        server
            .call(
                agent_csr(&common::spiffe_id("default", &format!("sa-{n}"))),
                Some(ca.token(MESH, "default", &format!("sa-{n}"))),
                0,
            )
            .await
            .unwrap();
    }
    // The ConfigMap keeps a checkpoint covering them (the serving certificate's record, then 3).
    let key = this.replace(':', "_");
    eventually("the checkpoint in the API", || {
        api.object("configmaps", "istio-system", "meshroot-checkpoints")
            .and_then(|cm| cm["data"][&key].as_str().map(str::to_owned))
            .and_then(|note| {
                meshroot::domain::audit::checkpoint::Checkpoint::parse_unverified(&note)
            })
            .is_some_and(|checkpoint| checkpoint.size >= 4)
    })
    .await;

    // A scale-up: the new ordinal is a member at once, though it is not running.
    api.put_object("statefulsets", "istio-system", statefulset(2));
    let cluster = members_of(&server, 2).await;
    assert_eq!(
        cluster.members[1],
        "meshroot-1.meshroot-headless.istio-system.svc:15014"
    );
    assert_eq!(cluster.this_member, this);
    // A scale-down removes no member (its volume, and its records, are kept): member 1 had
    // kept a checkpoint in the API, so it stays one across a restart too.
    api.put_object("statefulsets", "istio-system", statefulset(1));
    let mut configmap = api
        .object("configmaps", "istio-system", "meshroot-checkpoints")
        .unwrap();
    configmap["data"]["meshroot-1.meshroot-headless.istio-system.svc_15014"] =
        serde_json::Value::from(
            "meshroot-audit/other
1
AAAA

— signature
",
        );
    api.put_object("configmaps", "istio-system", configmap);

    // The volume is lost: the API remembers what the log had committed to.
    let store = ca.config().store;
    server.stop().await;
    std::fs::remove_dir_all(&store).unwrap();
    let server = ca.start().await;
    eventually("held for the lost log", || {
        server
            .server
            .not_ready_reasons()
            .iter()
            .any(|r| r.contains("log-rollback") && r.contains("ConfigMap meshroot-checkpoints"))
    })
    .await;
    // Member 1 stays a member (its checkpoint is in the API).
    members_of(&server, 2).await;
    server.stop().await;
}

/// The replica group a running server knows, once it has `count` members (bounded wait).
async fn members_of(
    server: &common::TestServer,
    count: usize,
) -> meshroot::pb::audit::GetReplicasResponse {
    let admin = meshroot::pb::audit::audit_service_client::AuditServiceClient::connect(format!(
        "http://{}",
        server.server.admin_address()
    ))
    .await
    .unwrap();
    let what = format!("{count} members");
    let replicas = common::wait_until(&what, Duration::from_secs(20), || {
        let mut admin = admin.clone();
        async move {
            let replicas = admin
                .get_replicas(meshroot::pb::audit::GetReplicasRequest {})
                .await
                .unwrap()
                .into_inner();
            if replicas.members.len() == count {
                Ok(replicas)
            } else {
                Err(format!("{replicas:?}"))
            }
        }
    })
    .await;
    // The RPC's old name, for clients of the previous release, answers the same.
    #[allow(deprecated)]
    let old = admin
        .clone()
        .get_cluster(meshroot::pb::audit::GetReplicasRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old, replicas);
    replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_member_or_names_the_one_missing() {
    let cluster = Cluster::new();
    let root = cluster.ca.root_pem();
    let mut members: Vec<Serving> = (0..3).map(|i| cluster.start(i)).collect();
    members.iter().for_each(wait_ready);
    // cart's certificates come from members 0 and 2; orders' from member 1.
    issue(&cluster.ca, &members[0], &root, "cart").await;
    issue(&cluster.ca, &members[2], &root, "cart").await;
    issue(&cluster.ca, &members[1], &root, "orders").await;
    let cart = format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/cart");
    let orders = format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/orders");
    let revocations_on = |index: usize| {
        let (code, out, err) = cluster.audit(
            0,
            &[
                "list",
                "--count",
                "--outcome",
                "revoked",
                "--replica",
                &cluster.member(index),
            ],
        );
        assert_eq!(code, 0, "{err}");
        out.trim().to_owned()
    };

    // Through member 1, which issued none of them: both of cart's certificates, and every
    // member records the revocation.
    let (code, out, err) = cluster.command(1, &["revoke", "--spiffe-id", &cart]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("revoked 2 certificate(s)"), "{out}");
    assert!(
        out.contains(&cluster.member(0)) && out.contains(&cluster.member(2)),
        "{out}"
    );
    for index in 0..3 {
        assert_eq!(revocations_on(index), "1", "member {index}");
    }

    // With member 2 stopped: recorded by the others, and the command says who is missing.
    members[2].kill();
    let (code, out, err) = cluster.command(0, &["revoke", "--spiffe-id", &orders]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("revoked 1 certificate(s)"), "{out}");
    assert!(
        err.contains(&format!("member {} did not answer", cluster.member(2))),
        "{err}"
    );
    assert!(
        err.contains("not complete until every member has it"),
        "{err}"
    );

    // Member 2 back: it reads the others' revocations and records the one it missed.
    members[2] = cluster.start(2);
    wait_ready(&members[2]);
    common::eventually("member 2 catches up with the revocation it missed", || {
        revocations_on(2) == "2"
    })
    .await;
    members[2].wait_for_log("a revocation this replica had missed is now recorded here");
    // The same command again: complete, and nobody records anything new.
    let (code, out, err) = cluster.command(0, &["revoke", "--spiffe-id", &orders]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("nothing new: the 1 selected certificate(s) were revoked already"),
        "{out}"
    );
    for index in 0..3 {
        assert_eq!(revocations_on(index), "2", "member {index}");
    }
    for member in &mut members {
        member.stop();
    }
}
