//! The Helm values `meshroot init` writes beside the CA material it makes: the files the chart
//! mounts, as YAML (deploy/helm/meshroot).

use std::fs;
use std::path::{Path, PathBuf};

use crate::domain::signer::files::CaFilesError;

/// The Helm chart's `caMaterial` values: each mesh's files in Istio's cacerts layout, the root's
/// CRL and the audit key (`top_level`, in `dir`), as `init` wrote them (never the root key). PEM is ASCII lines, so each
/// file is a YAML literal block holding exactly its text.
pub(crate) fn helm_values_yaml(
    dir: &Path,
    meshes: &[&str],
    top_level: &[&str],
    audit_key_uri: Option<&str>,
    workloads: u64,
) -> Result<String, CaFilesError> {
    let read = |path: PathBuf| {
        fs::read_to_string(&path).map_err(|source| CaFilesError::Read { path, source })
    };
    let block = |text: &str, indent: &str| {
        let mut out = String::from("|\n");
        for line in text.lines() {
            out.push_str(indent);
            out.push_str(line);
            out.push('\n');
        }
        out
    };
    let mut yaml = format!(
        "# The CA material for the Helm chart deploy/helm/meshroot, written by `meshroot init`:\n\
         #   helm install meshroot deploy/helm/meshroot -n istio-system --create-namespace -f <this file>\n\
         # beside the values that name these meshes (the chart's default is one mesh, \"default\";\n\
         # deploy/helm/meshroot/examples has more).\n\
         {custody}\
         caMaterial:\n  meshes:\n",
        custody = match audit_key_uri {
            None => "# It holds the meshes' intermediate keys and the audit key (never the root key): keep it as\n\
                     # secret as they are. Helm keeps a release's values in a Secret of the release's namespace.\n",
            Some(_) => "# The keys are in a PKCS#11 token: it holds certificates and the URIs that name the keys\n\
                        # there, no key and no PIN.\n",
        },
    );
    for mesh in meshes {
        // A JSON string is a YAML double-quoted scalar.
        yaml.push_str(&format!("    {}:\n", serde_json::Value::from(*mesh)));
        for file in [
            "ca-cert.pem",
            "ca-key.pem",
            "ca-key.uri",
            "cert-chain.pem",
            "root-cert.pem",
        ] {
            // A key in a token has no file: the chart gets certificates and the key's URI.
            let in_token = dir.join(mesh).join("ca-key.uri").exists();
            if (file == "ca-key.pem" && in_token) || (file == "ca-key.uri" && !in_token) {
                continue;
            }
            let text = read(dir.join(mesh).join(file))?;
            yaml.push_str(&format!("      {file}: {}", block(&text, "        ")));
        }
    }
    for &file in top_level {
        // An audit key in a token has no file either.
        if file.ends_with("key.pem") && !dir.join(file).exists() {
            continue;
        }
        let text = read(dir.join(file))?;
        yaml.push_str(&format!("  {file}: {}", block(&text, "    ")));
    }
    if let Some(uri) = audit_key_uri {
        // The chart's [pkcs11] then names the audit key in the token; its module and PIN
        // Secret are the cluster's to set (values `pkcs11`).
        yaml.push_str(&format!(
            "# The CA keys are in a PKCS#11 token: set pkcs11.module, pkcs11.pinSecret and what the\n\
             # module needs in the pod (deploy/helm/meshroot/examples/softhsm.yaml).\n\
             pkcs11:\n  enabled: true\n  auditKey: {}\n",
            serde_json::Value::from(uri)
        ));
    }
    // The chart sizes each replica's volume from these (templates/_helpers.tpl, the same rule
    // as `domain::capacity::volume_for_mesh`).
    let lifetime = crate::domain::capacity::ISTIO_CERTIFICATE_LIFETIME;
    yaml.push_str(&format!(
        "# Each replica's volume, by the sizing rule (docs/audit.md): {}.\n\
         sizing:\n  workloads: {workloads}\n  certificateLifetimeHours: {}\n",
        crate::domain::capacity::human_bytes(crate::domain::capacity::volume_for_mesh(
            workloads,
            lifetime,
            crate::domain::audit::RetentionPolicy::default().issued_after_expiry,
        )),
        lifetime.as_secs() / 3_600,
    ));
    Ok(yaml)
}
