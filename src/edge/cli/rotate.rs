//! `meshroot rotate`: the root rotation plan (what the issued certificates still chain to, and
//! the steps), and new intermediates under an existing root.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use super::audit::{Log, SourceArgs};
use super::failure::Failure;
use crate::adapters::config::Config;
use crate::domain::audit::rotation::{self, BundleUse};
use crate::domain::audit::{OutcomeFilter, Query};
use crate::domain::clock::format_time;
use crate::domain::digest::hex;
use crate::domain::identity::TrustDomain;
use crate::domain::keys::KeyType;
use crate::domain::record::Record;

#[derive(Debug, Subcommand)]
pub enum RotateCommand {
    /// Show, per mesh, the trust bundle as it would load now, how many unexpired certificates
    /// chain to each root (until when), and the steps of a root rotation with where things
    /// stand. Reads the store, or the running server's audit API when it holds the store.
    Plan(PlanArgs),
    /// Make a new intermediate for a mesh under an existing root, in Istio's cacerts layout
    /// (an intermediate rotation: write it into the mesh's ca_dir, or its cacerts Secret, and
    /// meshroot switches to it without a restart).
    Intermediate(IntermediateArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Only this mesh.
    #[arg(long)]
    pub mesh: Option<String>,
}

#[derive(Debug, Args)]
pub struct IntermediateArgs {
    /// The root's directory: root-cert.pem and root-key.pem, as `meshroot init` wrote them.
    #[arg(long)]
    pub root_dir: PathBuf,
    /// The mesh the intermediate is for (its name goes into the subject).
    #[arg(long)]
    pub mesh: String,
    /// Where to write ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
    /// The mesh's trust domain, and each of its aliases (repeat the flag): with `--data-plane
    /// sidecar` (implied when these are given alone) the intermediate may certify only URIs in
    /// these (a critical name-constraints extension).
    #[arg(long = "trust-domain", value_name = "TRUST_DOMAIN")]
    pub trust_domains: Vec<String>,
    /// The data plane the mesh runs: `sidecar` (URI name constraints, needs --trust-domain),
    /// `ambient` or `mixed` (none: ztunnel refuses chains that carry them). Default: `sidecar`
    /// when --trust-domain is given, else `mixed`.
    #[arg(long, value_enum)]
    pub data_plane: Option<super::args::DataPlaneArg>,
    /// The same as `--data-plane mixed` (kept for scripts written before --data-plane).
    #[arg(long, conflicts_with_all = ["trust_domains", "data_plane"])]
    pub no_name_constraints: bool,
    /// The intermediate's pathLenConstraint: 1 lets meshroot issue clusters' istiod
    /// intermediates below it (the plug-in path).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub path_len: u8,
    /// Replace an existing ca-key.pem (or ca-key.uri) in --out.
    #[arg(long)]
    pub force: bool,
    /// The token: holding the root key (when --root-dir has root-key.uri), and, with
    /// --pkcs11-token, where the new intermediate's key is generated.
    #[command(flatten)]
    pub pkcs11: super::args::Pkcs11Args,
}

pub async fn run(command: RotateCommand) -> Result<(), Failure> {
    match command {
        RotateCommand::Plan(args) => plan(args).await,
        RotateCommand::Intermediate(args) => {
            let trust_domains = args
                .trust_domains
                .iter()
                .map(|td| {
                    TrustDomain::new(td)
                        .map_err(|e| Failure::usage(format!("--trust-domain {td:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            use crate::domain::signer::constraints::DataPlane;
            let data_plane = match (args.data_plane.map(DataPlane::from), trust_domains.is_empty()) {
                (None, false) => DataPlane::Sidecar,
                (None, true) => DataPlane::Mixed,
                (Some(DataPlane::Sidecar), true) => {
                    return Err(Failure::usage(
                        "--data-plane sidecar needs the mesh's trust domains: --trust-domain TD...",
                    ))
                }
                (Some(plane), false) if !plane.uri_name_constraints() => {
                    return Err(Failure::usage(format!(
                        "--trust-domain names URI name constraints, which --data-plane {} leaves out",
                        plane.name()
                    )))
                }
                (Some(plane), _) => plane,
            };
            println!("{}", data_plane.consequence());
            crate::edge::cli::init::issue_intermediate(
                &args.root_dir,
                &args.mesh,
                &args.out,
                &crate::edge::cli::init::IntermediateOptions {
                    key_type: args.key_type,
                    permitted: data_plane.uri_name_constraints().then_some(trust_domains),
                    path_len: args.path_len,
                    force: args.force,
                    pkcs11: args.pkcs11.settings()?,
                    token_label: args.pkcs11.pkcs11_token.clone(),
                },
                SystemTime::now(),
            )
            .map_err(|e| Failure::runtime(e.to_string()))?;
            println!(
                "wrote a new {} intermediate for mesh {} under {} into {}",
                args.key_type,
                args.mesh,
                args.root_dir.join("root-cert.pem").display(),
                args.out.display()
            );
            Ok(())
        }
    }
}

async fn plan(args: PlanArgs) -> Result<(), Failure> {
    let config = Config::load(&args.source.config)?;
    let now = SystemTime::now();
    let mut log = Log::open(&args.source).await?;
    let mut out = String::new();
    for mesh in &config.meshes {
        if args.mesh.as_ref().is_some_and(|only| *only != mesh.name) {
            continue;
        }
        let key = config
            .token_key(mesh)
            .map_err(|e| Failure::runtime(format!("mesh {}: {e}", mesh.name)))?;
        let authority = crate::domain::signer::files::load_signer(
            &mesh.name,
            mesh.trust_domain.clone(),
            &mesh.ca_dir,
            &mesh.extra_root_paths(),
            key,
            now,
        )
        .map_err(|e| Failure::runtime(format!("mesh {}: {e}", mesh.name)))?;
        let bundle: Vec<Vec<u8>> = authority.roots().iter().map(|r| r.to_vec()).collect();
        let mut signers = log.signers(&mesh.name).await?;
        // What the CA material on disk would sign with, even before the server has loaded it.
        let current = authority.signer_chain();
        if let Some(signing) = current.first() {
            signers.insert(
                crate::domain::digest::sha256(signing).to_vec(),
                current.clone(),
            );
        }
        let (usage, per_member) = match &mut log {
            // The server counts, on every member (the plan is the cluster's).
            Log::Remote(remote) => cluster_use(remote, &mesh.name, &bundle).await?,
            Log::Store(_) => {
                let records = unexpired(&mut log, &mesh.name, now).await?;
                (
                    rotation::bundle_use(&records, &signers, &bundle, now),
                    Vec::new(),
                )
            }
        };
        let signing_root = rotation::root_of(&current, &bundle);
        // Roots some intermediate of this mesh ever chained to.
        let signed: Vec<usize> = signers
            .values()
            .filter_map(|chain| rotation::root_of(chain, &bundle))
            .collect();
        describe_mesh(&mut out, mesh, &bundle, &usage, signing_root, &signed);
        let clusters = cluster_intermediates(&mut log, &mesh.name, now).await?;
        describe_cluster_intermediates(&mut out, &clusters, &bundle);
        describe_members(&mut out, &per_member, &log.missing());
    }
    out.push_str(STEPS);
    print!("{out}");
    // A stopped replica's store holds its own log only: in a cluster the count lacks the
    // other members.
    if let (Log::Store(_), Some(cluster)) = (&log, &config.replicas) {
        let this = cluster.resolve_self(
            std::env::var("POD_NAME").ok().as_deref(),
            config.admin.listen,
        );
        let others: Vec<(String, String)> = cluster
            .members
            .iter()
            .filter(|m| this.as_deref() != Some(m.as_str()))
            .map(|m| {
                (
                    m.clone(),
                    "not asked: this plan read one replica's store".to_owned(),
                )
            })
            .collect();
        return super::audit::incomplete(&others, args.source.allow_incomplete);
    }
    log.finish(args.source.allow_incomplete)
}

/// Each member's counts against `bundle`, and their sum.
async fn cluster_use(
    remote: &mut super::audit::Remote,
    mesh: &str,
    bundle: &[Vec<u8>],
) -> Result<(BundleUse, Vec<(String, BundleUse)>), Failure> {
    let scope = remote.scope();
    let response = remote
        .count_root_use(crate::pb::audit::CountRootUseRequest {
            mesh: mesh.to_owned(),
            bundle: bundle.to_vec(),
            scope,
        })
        .await
        .map_err(|status| {
            Failure::runtime(format!(
                "the audit API answered {:?}: {}",
                status.code(),
                status.message()
            ))
        })?
        .into_inner();
    remote.note(response.replicas.as_ref());
    Ok(crate::edge::grpc::wire::cluster_bundle_use(
        &response,
        bundle.len(),
    ))
}

/// The per-member counts of a cluster, and the members missing from them.
fn describe_members(
    out: &mut String,
    members: &[(String, BundleUse)],
    missing: &[(String, String)],
) {
    if members.is_empty() && missing.is_empty() {
        return;
    }
    let _ = writeln!(out, "  per member (the counts above are their sum):");
    for (member, usage) in members {
        let roots: Vec<String> = usage
            .per_root
            .iter()
            .enumerate()
            .map(|(index, in_use)| format!("[{}] {}", index + 1, in_use.certificates))
            .collect();
        let _ = writeln!(
            out,
            "    {member}: {}; chaining to no root: {}",
            roots.join(", "),
            usage.stranded.certificates
        );
    }
    for (member, reason) in missing {
        let _ = writeln!(out, "    {member}: DID NOT ANSWER ({reason})");
    }
    if !missing.is_empty() {
        let _ = writeln!(
            out,
            "  INCOMPLETE: the counts lack the members that did not answer; a root is not safe \
             to drop until every member has been counted\n"
        );
    }
}

/// Every unexpired issued record of `mesh`.
async fn unexpired(log: &mut Log, mesh: &str, now: SystemTime) -> Result<Vec<Record>, Failure> {
    let query = Query {
        mesh: Some(mesh.to_owned()),
        expires_after: Some(now),
        outcome: Some(OutcomeFilter::Issued),
        ..Query::default()
    };
    every_page(log, &query).await
}

/// Every record `query` selects, page by page.
async fn every_page(log: &mut Log, query: &Query) -> Result<Vec<Record>, Failure> {
    let mut records = Vec::new();
    let mut token = None;
    loop {
        let (page, next) = log.page(query, 1000, token).await?;
        records.extend(page);
        match next {
            Some(next) => token = Some(next),
            None => return Ok(records),
        }
    }
}

/// The unexpired cluster intermediates (plug-in path) of `mesh`.
async fn cluster_intermediates(
    log: &mut Log,
    mesh: &str,
    now: SystemTime,
) -> Result<Vec<Record>, Failure> {
    let query = Query {
        mesh: Some(mesh.to_owned()),
        caller: Some(crate::issuance::CLUSTER_INTERMEDIATE_SUBJECT.to_owned()),
        expires_after: Some(now),
        outcome: Some(OutcomeFilter::Issued),
        ..Query::default()
    };
    every_page(log, &query).await
}

/// Which clusters' istiod hold an unexpired intermediate, under which root of the bundle (they
/// are among the certificates counted above: a root one chains to is not dropped).
fn describe_cluster_intermediates(out: &mut String, records: &[Record], bundle: &[Vec<u8>]) {
    if records.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  cluster intermediates (istiod, plug-in path), unexpired: {}",
        records.len()
    );
    for record in records {
        let crate::domain::record::Outcome::Issued(issued) = &record.outcome else {
            continue;
        };
        let Some(ca) = &issued.ca else { continue };
        let root = bundle
            .iter()
            .position(|root| {
                crate::domain::digest::sha256(root).as_slice() == ca.root_sha256.as_slice()
            })
            .map_or_else(
                || format!("a root not in this bundle ({})", hex(&ca.root_sha256)),
                |index| format!("root [{}]", index + 1),
            );
        let _ = writeln!(
            out,
            "    cluster {}: serial {} under {root}, until {}",
            ca.cluster,
            hex(&issued.serial),
            format_time(issued.not_after)
        );
    }
}

fn describe_mesh(
    out: &mut String,
    mesh: &crate::adapters::config::MeshConfig,
    bundle: &[Vec<u8>],
    usage: &BundleUse,
    signing_root: Option<usize>,
    signed: &[usize],
) {
    let _ = writeln!(
        out,
        "mesh {} (trust domain {})\n  trust bundle as it loads now ({}/root-cert.pem and extra_roots): {} root(s)",
        mesh.name,
        mesh.trust_domain,
        mesh.ca_dir.display(),
        bundle.len()
    );
    for (index, (root, in_use)) in bundle.iter().zip(&usage.per_root).enumerate() {
        let expires = rotation::not_after_of(root)
            .map(format_time)
            .unwrap_or_else(|| "?".to_owned());
        let _ = writeln!(
            out,
            "    [{}] {}  sha256:{}  expires {expires}{}",
            index + 1,
            rotation::subject_of(root),
            &hex(&crate::domain::digest::sha256(root))[..16],
            if signing_root == Some(index) {
                "  <- the current intermediate chains to it"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "        {}", in_use_line(in_use, "chain to it"));
    }
    let _ = writeln!(
        out,
        "  unexpired certificates that chain to no root of this bundle: {}",
        in_use_line(&usage.stranded, "would fail")
    );
    if usage.unknown.certificates > 0 {
        let _ = writeln!(
            out,
            "  unexpired certificates whose signer meshroot does not know (issued before it \
             remembered signers): {}",
            in_use_line(&usage.unknown, "unknown root")
        );
    }
    let _ = writeln!(
        out,
        "  now: {}\n",
        rotation::where_we_are(bundle, usage, signing_root, signed)
    );
}

fn in_use_line(in_use: &rotation::InUse, what: &str) -> String {
    match in_use.until {
        None => "no unexpired certificates".to_owned(),
        Some(until) => format!(
            "{} unexpired certificates {what}, the last until {}",
            in_use.certificates,
            format_time(until)
        ),
    }
}

const STEPS: &str = "\
Root rotation, step by step (R: the old root, N: the new one):
  1. meshroot init --dir NEW --mesh <mesh>=<trust domain>   makes N and an intermediate under it
     (keep NEW/root-key.pem offline).
  2. Add N to the bundle: extra_roots = [\"NEW/root-cert.pem\"] in the mesh's config. meshroot
     reloads, and every istio-ca-root-cert ConfigMap and istiod-tls's ca.crt carry R and N.
  3. Wait until every proxy has the new bundle (they read istio-ca-root-cert; restart workloads
     that do not follow ConfigMap updates).
  4. Switch to the intermediate under N: set extra_roots = [\"OLD/root-cert.pem\"] (keep R), then
     replace the mesh's ca_dir files (or its cacerts Secret) with NEW/<mesh>/. meshroot picks it
     up live; new certificates chain to N.
  5. Wait until no unexpired certificate chains to R (this plan counts them; at most max_ttl
     after step 4, as proxies renew at half their lifetime).
  6. Remove R from extra_roots. meshroot refuses a bundle without R while certificates still
     chain to it (say how many, and until when) unless force_root_removal = true.
An intermediate rotation alone (same root) is step 4 with `meshroot rotate intermediate`.
";
