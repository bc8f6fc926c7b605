//! The `meshroot` command line: `serve`, `init`, `token`, `request`, `audit …`.

mod args;
mod audit;
mod bench;
mod failure;
mod helm_values;
pub mod init;
pub mod istio;
pub mod loadgen;
mod partner;
mod revoke;
mod rotate;
pub mod slow_readers;

use self::args::parse_duration_arg;
pub use self::args::{DataPlaneArg, Pkcs11Args};
pub use self::failure::{Failure, EXIT_USAGE};
use crate::domain::signer::constraints::DataPlane;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use rustls_pki_types::pem::PemObject as _;

use crate::adapters::authn::jwt::{DevTokenClaims, DevTokenSigner};
use crate::adapters::config::Config;
use crate::domain::identity::{SpiffeId, TrustDomain};
use crate::domain::keys::{self, KeyType};
use crate::edge::cli::init::{self as scaffold, InitOptions};
use crate::edge::client::{self, AgentMetadata, CsrShape, Target};
use crate::edge::server;

/// Where `serve` keeps everything when run without `--config`.
pub(crate) const DEFAULT_DATA_DIR: &str = "meshroot-data";

#[derive(Debug, Parser)]
#[command(
    name = "meshroot",
    version,
    about = "A certificate authority for Istio meshes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once from the command line and consumed"
)]
pub enum Command {
    /// Serve the Istio CSR API over TLS. Without --config, runs a development CA from
    /// ./meshroot-data (created on first start).
    Serve(ServeArgs),
    /// Create a shared root, one intermediate per mesh (Istio `cacerts` layout) and a config.
    Init(InitArgs),
    /// Print a service-account token from a mesh's local development issuer.
    Token(TokenArgs),
    /// Request a workload certificate like istio-agent does (for VMs and trying meshroot by hand).
    Request(RequestArgs),
    /// Query, follow, export, verify and prove the issuance log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Load-test the Istio CSR API (starts its own server unless --addr is given).
    Bench(bench::BenchArgs),
    /// Root and intermediate rotation: the plan (what is still in use), new intermediates.
    #[command(subcommand)]
    Rotate(rotate::RotateCommand),
    /// Revoke certificates by any audit filter (or lift a block): recorded, listed in the
    /// CRLs, and their identities refused new certificates.
    Revoke(revoke::RevokeArgs),
    /// CRLs meshroot does not sign itself (the root's).
    #[command(subcommand)]
    Crl(revoke::CrlCommand),
    /// The Istio side of a mesh, generated from this configuration (`istio config --mesh b`).
    #[command(subcommand)]
    Istio(istio::IstioCommand),
    /// Partners outside the shared root: cross-certify their roots under ours (root key).
    #[command(subcommand)]
    Partner(partner::PartnerCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (TOML). Without it: ./meshroot-data/meshroot.toml, created if absent.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to create the CA material and config in.
    #[arg(long)]
    pub dir: PathBuf,
    /// A mesh as NAME=TRUST_DOMAIN; repeat for several meshes. Default: default=cluster.local.
    #[arg(long = "mesh", value_parser = parse_mesh)]
    pub meshes: Vec<(String, TrustDomain)>,
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
    /// Also create a local development token issuer per mesh (for `meshroot token`).
    #[arg(long)]
    pub dev_issuer: bool,
    /// The data plane the meshes run: `sidecar` confines each intermediate to URIs of its
    /// trust domain (URI name constraints); `ambient` and `mixed` (the default) leave them out,
    /// since ztunnel's verifier (rustls-webpki) refuses every chain that carries one.
    #[arg(long, value_enum)]
    pub data_plane: Option<DataPlaneArg>,
    /// The same as `--data-plane mixed` (kept for scripts written before --data-plane).
    #[arg(long, conflicts_with = "data_plane")]
    pub no_name_constraints: bool,
    /// How many CA certificates may follow each mesh's intermediate (its pathLenConstraint): 1
    /// lets meshroot issue clusters' istiod intermediates below it (the plug-in path).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub path_len: u8,
    /// Replace existing keys.
    #[arg(long)]
    pub force: bool,
    /// Proxies (sidecars, gateways, ztunnel's workloads) the meshes run: sizes the store's
    /// volume in the config's comment and the Helm values (docs/audit.md, the sizing rule).
    #[arg(long, default_value_t = crate::domain::capacity::DEFAULT_WORKLOADS)]
    pub workloads: u64,
    /// Generate the root and intermediate keys in a PKCS#11 token (non-extractable); only
    /// certificates and the URIs naming the keys are written.
    #[command(flatten)]
    pub pkcs11: args::Pkcs11Args,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[arg(long, default_value = "meshroot-data/meshroot.toml")]
    pub config: PathBuf,
    #[arg(long, default_value = "default")]
    pub mesh: String,
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub service_account: String,
    /// Token lifetime, e.g. 1h, 12h.
    #[arg(long, default_value = "1h", value_parser = parse_duration_arg)]
    pub ttl: Duration,
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// meshroot's address, HOST:PORT.
    #[arg(long)]
    pub addr: String,
    /// The mesh root certificate(s) to verify meshroot with (root-cert.pem).
    #[arg(long)]
    pub root: PathBuf,
    /// The DNS name expected in meshroot's certificate (host part of CA_ADDR).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// The identity to ask for: spiffe://<trust-domain>/ns/<ns>/sa/<sa>.
    #[arg(long)]
    pub spiffe_id: String,
    /// File holding the service-account token.
    #[arg(long)]
    pub token_file: PathBuf,
    #[arg(long, value_enum, default_value_t = RequestKeyType::Rsa2048)]
    pub key_type: RequestKeyType,
    /// The `clusterid` header.
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Requested lifetime in seconds (istio-agent asks for 86400).
    #[arg(long, default_value_t = 86400)]
    pub ttl_seconds: i64,
    /// Directory for key.pem, cert-chain.pem and root-cert.pem.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RequestKeyType {
    /// istio-agent's default.
    #[value(name = "rsa-2048")]
    Rsa2048,
    /// ztunnel's, and istio-agent's with ECC_SIGNATURE_ALGORITHM=ECDSA.
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
}

fn parse_mesh(text: &str) -> Result<(String, TrustDomain), String> {
    let (name, trust_domain) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=TRUST_DOMAIN"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "{name:?}: mesh names use lowercase letters, digits and '-'"
        ));
    }
    let trust_domain =
        TrustDomain::new(trust_domain).map_err(|e| format!("{trust_domain:?}: {e}"))?;
    Ok((name.to_owned(), trust_domain))
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Init(args) => init(args).await,
        Command::Token(args) => token(args),
        Command::Request(args) => request(args).await,
        Command::Audit(command) => audit::run(command).await,
        Command::Rotate(command) => rotate::run(command).await,
        Command::Revoke(args) => revoke::run(args).await,
        Command::Crl(command) => revoke::run_crl(command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Istio(command) => istio::run(command),
        Command::Partner(command) => partner::run(command).await,
    }
}

/// The process exit status of a command's result, after printing its failure.
pub fn exit_status(result: Result<(), Failure>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(failure) => {
            eprintln!("meshroot: {}", failure.message);
            failure.code
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let config_path = match args.config {
        Some(path) => path,
        None => embedded_default()?,
    };
    let config = Config::load_to_serve(&config_path)?;
    // Before anything starts: a SIGTERM from here on is a graceful shutdown.
    let signals = server::Signals::install()
        .map_err(|e| Failure::runtime(format!("cannot install signal handlers: {e}")))?;
    let running = server::start(&config).await.map_err(|e| Failure {
        code: e.exit_code(),
        message: e.to_string(),
    })?;
    eprintln!(
        "meshroot: serving the Istio CSR API on {} and the audit API on {} (config {}); Ctrl-C to stop",
        running.local_address(),
        running.admin_address(),
        config_path.display()
    );
    running
        .run_until_stopped(signals)
        .await
        .map_err(|e| Failure {
            code: e.exit_code(),
            message: e.to_string(),
        })?;
    // After a clean stop only: what the next start would replay is replayed now.
    let (store, cache_bytes) = (config.store.clone(), config.store_cache_mib << 20);
    let prepared = tokio::task::spawn_blocking(move || {
        crate::adapters::store::prepare_next_start(&store, cache_bytes, Duration::from_secs(5))
    })
    .await;
    match prepared {
        Ok(Ok(took)) => tracing::info!(
            seconds = took.as_secs_f64(),
            "record store ready for a quick next start"
        ),
        Ok(Err(error)) => tracing::warn!(
            %error,
            "the record store was not prepared for a quick next start (the next start replays its log)"
        ),
        Err(_) => {}
    }
    Ok(())
}

/// The embedded default: ./meshroot-data with one mesh `default` (cluster.local), ECDSA P-256,
/// and a local development token issuer. Created on first start.
fn embedded_default() -> Result<PathBuf, Failure> {
    let dir = PathBuf::from(DEFAULT_DATA_DIR);
    let config_path = dir.join("meshroot.toml");
    if config_path.exists() {
        return Ok(config_path);
    }
    let report = scaffold::init(
        &InitOptions {
            dir: dir.clone(),
            meshes: vec![default_mesh()],
            key_type: KeyType::EcdsaP256,
            dev_issuer: true,
            name_constraints: DataPlane::default().uri_name_constraints(),
            intermediate_path_len: 0,
            force: false,
            workloads: crate::domain::capacity::DEFAULT_WORKLOADS,
            token: None,
        },
        SystemTime::now(),
    )
    .map_err(|e| Failure::runtime(e.to_string()))?;
    eprintln!(
        "meshroot: created a development CA in {} (root: {}).\n\
         Try it from another shell:\n  \
         cargo run -- token --namespace default --service-account demo > /tmp/token\n  \
         cargo run -- request --addr localhost:15012 --root {} --spiffe-id spiffe://cluster.local/ns/default/sa/demo --token-file /tmp/token --out /tmp/demo-cert",
        dir.display(),
        report.root_certificate.display(),
        report.root_certificate.display(),
    );
    Ok(config_path)
}

fn default_mesh() -> (String, TrustDomain) {
    (
        "default".to_owned(),
        TrustDomain::new("cluster.local").unwrap_or_else(|_| unreachable!("a valid literal")),
    )
}

async fn init(args: InitArgs) -> Result<(), Failure> {
    let mut meshes = args.meshes;
    if meshes.is_empty() {
        meshes.push(default_mesh());
    }
    let mut seen = std::collections::HashSet::new();
    for (name, _) in &meshes {
        if !seen.insert(name) {
            return Err(Failure::usage(format!("--mesh {name} is given twice")));
        }
    }
    let data_plane = args
        .data_plane
        .map(DataPlane::from)
        .unwrap_or(DataPlane::Mixed);
    println!("{}", data_plane.consequence());
    let token = match (args.pkcs11.settings()?, args.pkcs11.pkcs11_token.clone()) {
        (Some(settings), Some(token)) => Some(scaffold::TokenKeys { settings, token }),
        (None, None) => None,
        _ => {
            return Err(Failure::usage(
                "--pkcs11-token and --pkcs11-module go together (with the PIN)",
            ))
        }
    };
    let report = scaffold::init(
        &InitOptions {
            dir: args.dir,
            meshes,
            key_type: args.key_type,
            dev_issuer: args.dev_issuer,
            name_constraints: data_plane.uri_name_constraints(),
            intermediate_path_len: args.path_len,
            force: args.force,
            workloads: args.workloads,
            token,
        },
        SystemTime::now(),
    )
    .map_err(|e| Failure::runtime(e.to_string()))?;
    println!("root certificate: {}", report.root_certificate.display());
    for dir in &report.mesh_dirs {
        println!("mesh CA material: {}", dir.display());
    }
    println!("config:           {}", report.config.display());
    println!("Helm values:      {}", report.helm_values.display());
    record_ca_keys(&report).await
}

/// Writes `init`'s records of the CA certificates it made, and where their keys are, into the
/// configuration's store: the log then opens with them. A store in use by a running server is
/// left alone (that server records the intermediates it takes into service).
async fn record_ca_keys(report: &scaffold::InitReport) -> Result<(), Failure> {
    use crate::adapters::store::{SledStore, StoreError, StoreOptions};
    let path = Config::load(&report.config)?.store;
    let opened = SledStore::open_with(
        &path,
        StoreOptions {
            lock_wait: Duration::ZERO,
            ..StoreOptions::default()
        },
    );
    let store = match opened {
        Ok(store) => store,
        Err(StoreError::Locked { .. }) => {
            println!(
                "log:              not written ({} is in use by a running server, which records \
                 the intermediates it takes into service)",
                path.display()
            );
            return Ok(());
        }
        Err(error) => return Err(Failure::runtime(error.to_string())),
    };
    for record in &report.records {
        store
            .append_durable(record.clone())
            .await
            .map_err(|e| Failure::runtime(e.to_string()))?;
    }
    store.flush().map_err(|e| Failure::runtime(e.to_string()))?;
    println!(
        "log:              {} record(s) of the CA certificates and their keys, in {}",
        report.records.len(),
        path.display()
    );
    Ok(())
}

fn token(args: TokenArgs) -> Result<(), Failure> {
    let config = Config::load(&args.config)?;
    let mesh = config.mesh(&args.mesh).ok_or_else(|| {
        Failure::usage(format!(
            "{}: no mesh {:?}",
            args.config.display(),
            args.mesh
        ))
    })?;
    let issuer = mesh
        .token_issuers
        .iter()
        .find(|i| i.dev_signing_key.is_some())
        .ok_or_else(|| {
            Failure::usage(format!(
                "{}: mesh {:?} has no development token issuer (dev_signing_key)",
                args.config.display(),
                args.mesh
            ))
        })?;
    let key_path = issuer.dev_signing_key.as_deref().unwrap_or(Path::new(""));
    let pem = std::fs::read(key_path)
        .map_err(|e| Failure::runtime(format!("{}: {e}", key_path.display())))?;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|_| {
        Failure::runtime(format!("{}: not a PKCS#8 private key", key_path.display()))
    })?;
    let signer = DevTokenSigner::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| Failure::runtime(format!("{}: {e}", key_path.display())))?;
    let token = signer
        .sign(&DevTokenClaims {
            issuer: &issuer.issuer,
            audiences: &issuer.audiences,
            namespace: &args.namespace,
            service_account: &args.service_account,
            issued_at: crate::domain::clock::unix_seconds(SystemTime::now()),
            lifetime: args.ttl,
            bound_pod: None,
        })
        .map_err(|e| Failure::runtime(e.to_string()))?;
    println!("{token}");
    Ok(())
}

async fn request(args: RequestArgs) -> Result<(), Failure> {
    let identity = SpiffeId::parse(&args.spiffe_id)
        .map_err(|e| Failure::usage(format!("--spiffe-id {:?}: {e}", args.spiffe_id)))?;
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
    };
    let root_pem = read(&args.root)?;
    let token = read(&args.token_file)?.trim().to_owned();
    let key = match args.key_type {
        RequestKeyType::Rsa2048 => KeyType::Rsa2048,
        RequestKeyType::EcdsaP256 => KeyType::EcdsaP256,
    }
    .generate()
    .map_err(|e| Failure::runtime(e.to_string()))?;
    let csr = client::build_csr(&key, &CsrShape::istio_agent(&identity.to_string()))
        .map_err(|e| Failure::runtime(format!("building the CSR: {e}")))?;
    let channel = client::connect(&Target {
        address: args.addr.clone(),
        root_pem,
        server_name: args.server_name.clone(),
        client_identity: None,
    })
    .await
    .map_err(|e| Failure::runtime(format!("connecting to {}: {e}", args.addr)))?;
    let response = client::create_certificate(
        channel,
        csr,
        args.ttl_seconds,
        &AgentMetadata {
            token: (!token.is_empty()).then_some(token),
            cluster_id: args.cluster_id.clone(),
        },
    )
    .await
    .map_err(|status| {
        Failure::runtime(format!(
            "CreateCertificate failed: {:?}: {}",
            status.code(),
            status.message()
        ))
    })?;
    let Some((roots, chain)) = response.cert_chain.split_last() else {
        return Err(Failure::runtime("the CA answered with an empty chain"));
    };
    if chain.is_empty() {
        return Err(Failure::runtime(
            "the CA answered without a leaf certificate",
        ));
    }
    let leaf = keys::parse_certificates_pem(chain[0].as_bytes())
        .ok()
        .and_then(|mut certs| (!certs.is_empty()).then(|| certs.remove(0)))
        .ok_or_else(|| Failure::runtime("the leaf certificate cannot be parsed"))?;
    let (serial, not_after) = describe_leaf(&leaf, &identity)?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Failure::runtime(format!("{}: {e}", args.out.display())))?;
    write_out(
        &args.out.join("key.pem"),
        key.serialize_pem().as_bytes(),
        true,
    )?;
    write_out(
        &args.out.join("cert-chain.pem"),
        chain.concat().as_bytes(),
        false,
    )?;
    write_out(&args.out.join("root-cert.pem"), roots.as_bytes(), false)?;
    println!("identity:  {identity}");
    println!("serial:    {serial}");
    println!("not after: {not_after}");
    println!(
        "written:   {}/{{key.pem,cert-chain.pem,root-cert.pem}}",
        args.out.display()
    );
    Ok(())
}

/// Checks, as ztunnel does, that the leaf carries exactly the identity asked for.
fn describe_leaf(leaf: &[u8], identity: &SpiffeId) -> Result<(String, String), Failure> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, certificate) = X509Certificate::from_der(leaf)
        .map_err(|_| Failure::runtime("the leaf certificate cannot be parsed"))?;
    let uris = crate::domain::identity::AltNames::of_certificate(&certificate).uris;
    if uris != [identity.to_string().as_str()] {
        return Err(Failure::runtime(format!(
            "the leaf names {uris:?}, not {identity}"
        )));
    }
    Ok((
        crate::domain::digest::hex(certificate.raw_serial()),
        certificate.validity().not_after.to_string(),
    ))
}

fn write_out(path: &Path, contents: &[u8], secret: bool) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    options
        .open(path)
        .and_then(|mut file| file.write_all(contents))
        .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))
}
