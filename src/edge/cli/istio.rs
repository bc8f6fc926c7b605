//! `meshroot istio config --mesh b`: what mesh b's Istio needs, generated from meshroot's
//! configuration (`federation::istio`).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::failure::Failure;
use crate::adapters::config::{Config, MeshConfig};
use crate::domain::federation::istio::{Accepted, Anchor, Format, IstioMesh};
use crate::domain::keys::certificate_pem;
use crate::domain::signer::files::{certificates_required, load_roots};

#[derive(Debug, Subcommand)]
pub enum IstioCommand {
    /// Print a mesh's Istio configuration: trust domain, aliases, the trust domains it accepts
    /// (meshConfig.caCertificates), the CA address with istiod's CA off, and the
    /// AuthorizationPolicy that refuses every other source trust domain.
    Config(IstioConfigArgs),
}

#[derive(Debug, Args)]
pub struct IstioConfigArgs {
    #[arg(long, default_value = "meshroot-data/meshroot.toml")]
    pub config: PathBuf,
    /// The mesh, by name.
    #[arg(long)]
    pub mesh: String,
    /// What to print; `all` prints every format as one YAML stream.
    #[arg(long, value_enum, default_value_t = FormatArg::All)]
    pub format: FormatArg,
    /// `CA_ADDR` as the mesh's proxies dial meshroot (Kubernetes: the Service,
    /// meshroot.istio-system.svc:443). Default: the first of `dns_names`, with `listen`'s port.
    #[arg(long)]
    pub ca_address: Option<String>,
    /// The cluster (`[[mesh.cluster]] id`) named as values.global.multiCluster.clusterName;
    /// default: the mesh's only cluster, if it has one.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Where the AuthorizationPolicy goes: Istio's root namespace applies it to every workload.
    #[arg(long, default_value = "istio-system")]
    pub policy_namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    All,
    MeshConfig,
    HelmValues,
    IstioOperator,
    Kyma,
    Policies,
}

pub fn run(command: IstioCommand) -> Result<(), Failure> {
    match command {
        IstioCommand::Config(args) => {
            let config = Config::load(&args.config)?;
            let mesh = istio_mesh(&config, &args)?;
            print!("{}", render(&mesh, args.format));
            for limit in mesh.kyma_limits() {
                if matches!(args.format, FormatArg::All | FormatArg::Kyma) {
                    eprintln!("note (Kyma): {limit}");
                }
            }
            Ok(())
        }
    }
}

/// The formats `arg` stands for, each with the line that says what it is for.
fn formats(arg: FormatArg) -> Vec<(Format, &'static str)> {
    let all = [
        (
            Format::HelmValues,
            "Helm values for the istiod chart: helm upgrade --install istiod istio/istiod -n istio-system -f <file>",
        ),
        (
            Format::IstioOperator,
            "IstioOperator: istioctl install -f <file>",
        ),
        (
            Format::MeshConfig,
            "meshConfig alone: the `mesh` key of the `istio` ConfigMap, or any installer's meshConfig",
        ),
        (
            Format::Kyma,
            "Kyma's Istio CR (trust domain only: see the notes on stderr)",
        ),
        (
            Format::Policies,
            "AuthorizationPolicy: apply ONE. The first needs Istio >= 1.31 (source.notTrustDomains), \
             the second works on older Istio (source.notPrincipals). Both deny requests without an \
             Istio mTLS identity, gateways' included, in the namespace they are applied to",
        ),
    ];
    let wanted = match arg {
        FormatArg::All => return all.to_vec(),
        FormatArg::MeshConfig => Format::MeshConfig,
        FormatArg::HelmValues => Format::HelmValues,
        FormatArg::IstioOperator => Format::IstioOperator,
        FormatArg::Kyma => Format::Kyma,
        FormatArg::Policies => Format::Policies,
    };
    all.into_iter().filter(|(f, _)| *f == wanted).collect()
}

/// The documents as a YAML stream: each a JSON document (JSON is YAML), `---` between them and
/// a comment line before each format when there are several.
pub fn render(mesh: &IstioMesh, arg: FormatArg) -> String {
    let mut out = String::new();
    let several = arg == FormatArg::All;
    let mut first = true;
    for (format, what) in formats(arg) {
        for (index, document) in mesh.documents(format).iter().enumerate() {
            if !first {
                out.push_str("---\n");
            }
            first = false;
            if several && index == 0 {
                out.push_str(&format!("# {what}\n"));
            }
            out.push_str(&serde_json::to_string_pretty(document).unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

/// Mesh `args.mesh` as Istio should see it.
pub(crate) fn istio_mesh(config: &Config, args: &IstioConfigArgs) -> Result<IstioMesh, Failure> {
    let mesh = config.mesh(&args.mesh).ok_or_else(|| {
        let names: Vec<&str> = config.meshes.iter().map(|m| m.name.as_str()).collect();
        Failure::usage(format!(
            "no mesh {:?} in {} (meshes: {})",
            args.mesh,
            config.source.display(),
            names.join(", ")
        ))
    })?;
    let cluster_name = match &args.cluster {
        Some(id) if mesh.clusters.iter().any(|c| c.id == *id) => Some(id.clone()),
        Some(id) => {
            return Err(Failure::usage(format!(
                "mesh {:?} has no [[mesh.cluster]] with id {id:?}",
                mesh.name
            )))
        }
        None if mesh.clusters.len() == 1 => mesh.clusters.first().map(|c| c.id.clone()),
        None => None,
    };
    let ca_address = match &args.ca_address {
        Some(address) => address.clone(),
        None => {
            let host = config
                .dns_names
                .first()
                .cloned()
                .unwrap_or_else(|| "localhost".into());
            format!("{host}:{}", config.listen.port())
        }
    };
    let mut accepted = Vec::new();
    for name in &mesh.accepts {
        let Some(other) = config.mesh(name) else {
            continue; // the configuration check refuses an unknown name
        };
        accepted.push(Accepted {
            name: other.name.clone(),
            trust_domains: trust_domains(other),
            anchor: Anchor::Pem(roots_pem(other)?),
        });
    }
    for partner in &mesh.partners {
        let anchor = if partner.unprotected {
            // The partner's roots as they are: istiod fetches them itself.
            Anchor::SpiffeBundleUrl(partner.bundle_url.clone())
        } else if let Some(path) = &partner.cross_certificates {
            let certificates = certificates_required(path)
                .map_err(|e| Failure::runtime(format!("mesh {:?}: {e}", mesh.name)))?;
            Anchor::Pem(certificates.iter().map(|c| certificate_pem(c)).collect())
        } else {
            eprintln!(
                "note: partner {} has no cross_certificates yet (`meshroot partner certify`): \
                 left out of caCertificates",
                partner.trust_domain
            );
            continue;
        };
        accepted.push(Accepted {
            name: partner.trust_domain.to_string(),
            trust_domains: vec![partner.trust_domain.to_string()],
            anchor,
        });
    }
    Ok(IstioMesh {
        name: mesh.name.clone(),
        trust_domain: mesh.trust_domain.to_string(),
        aliases: mesh
            .trust_domain_aliases
            .iter()
            .map(|a| a.to_string())
            .collect(),
        accepted,
        ca_address,
        cluster_name,
        policy_namespace: args.policy_namespace.clone(),
    })
}

/// A mesh's trust domain, then its aliases (a migration there is accepted with it).
fn trust_domains(mesh: &MeshConfig) -> Vec<String> {
    std::iter::once(&mesh.trust_domain)
        .chain(&mesh.trust_domain_aliases)
        .map(|td| td.to_string())
        .collect()
}

/// The roots that verify a mesh's workloads (its `root-cert.pem` and extra roots), PEM, each once.
fn roots_pem(mesh: &MeshConfig) -> Result<String, Failure> {
    let fail = |e: crate::domain::signer::files::CaFilesError| {
        Failure::runtime(format!("mesh {:?}: {e}", mesh.name))
    };
    let mut roots = load_roots(&mesh.ca_dir).map_err(fail)?;
    for path in mesh.extra_root_paths() {
        roots.extend(certificates_required(&path).map_err(fail)?);
    }
    let mut seen = std::collections::HashSet::new();
    roots.retain(|root| seen.insert(root.as_ref().to_vec()));
    Ok(roots.iter().map(|root| certificate_pem(root)).collect())
}
