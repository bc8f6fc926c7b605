//! `meshroot partner certify`: cross-certifies a partner's roots under our root, each confined to
//! the partner's trust domain (`federation::cross`). Like `init` and `crl sign-root`, it needs
//! the root key, so it runs where the root key is kept, not on the serving replicas.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use rcgen::Issuer;

use super::args::parse_duration_arg;
use super::failure::Failure;
use crate::domain::digest::{hex, sha256};
use crate::domain::federation::bundle::SpiffeBundle;
use crate::domain::federation::cross::cross_certify;
use crate::domain::identity::TrustDomain;
use crate::domain::keys::{self, certificate_pem};

#[derive(Debug, Subcommand)]
pub enum PartnerCommand {
    /// Cross-certify a partner's roots (from its SPIFFE bundle) under our root, each one
    /// name-constrained to the partner's trust domain, and write them where
    /// `[[mesh.partner]] cross_certificates` points.
    Certify(CertifyArgs),
}

#[derive(Debug, Args)]
pub struct CertifyArgs {
    /// The directory `meshroot init` wrote (root-cert.pem, root-key.pem).
    #[arg(long)]
    pub dir: PathBuf,
    /// The partner's trust domain.
    #[arg(long)]
    pub trust_domain: String,
    /// The partner's bundle: a SPIFFE bundle document saved to a file...
    #[arg(long, conflicts_with = "url", required_unless_present = "url")]
    pub bundle: Option<PathBuf>,
    /// ...or fetched from its bundle endpoint (https_web).
    #[arg(long)]
    pub url: Option<String>,
    /// Roots that verify the endpoint's certificate (default: the system's).
    #[arg(long, requires = "url")]
    pub endpoint_ca: Option<PathBuf>,
    /// Where to write the cross-certificates (PEM, one per partner root).
    #[arg(long)]
    pub out: PathBuf,
    /// How long each is valid at most (never past the partner's root or ours).
    #[arg(long, default_value = "365d", value_parser = parse_duration_arg)]
    pub lifetime: Duration,
}

pub async fn run(command: PartnerCommand) -> Result<(), Failure> {
    match command {
        PartnerCommand::Certify(args) => certify(args, SystemTime::now()).await,
    }
}

async fn certify(args: CertifyArgs, now: SystemTime) -> Result<(), Failure> {
    let trust_domain = TrustDomain::new(&args.trust_domain)
        .map_err(|e| Failure::usage(format!("--trust-domain {:?}: {e}", args.trust_domain)))?;
    let document = match (&args.bundle, &args.url) {
        (Some(path), _) => {
            std::fs::read(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?
        }
        (None, Some(url)) => crate::edge::bundle_client::fetch(
            url,
            args.endpoint_ca.as_deref(),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| Failure::runtime(format!("{url}: {e}")))?,
        (None, None) => return Err(Failure::usage("give --bundle FILE or --url URL")),
    };
    let bundle = SpiffeBundle::parse(trust_domain.clone(), &document)
        .map_err(|e| Failure::runtime(format!("the partner's bundle: {e}")))?;
    let read = |name: &str| {
        let path = args.dir.join(name);
        std::fs::read(&path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
    };
    let root_key = keys::load_private_key_pem(&read("root-key.pem")?)
        .map_err(|e| Failure::usage(format!("root-key.pem: {e}")))?;
    let roots = keys::parse_certificates_pem(&read("root-cert.pem")?)
        .map_err(|e| Failure::usage(format!("root-cert.pem: {e}")))?;
    let [root] = roots.as_slice() else {
        return Err(Failure::usage(
            "root-cert.pem holds more than one certificate: keep only the root whose key is root-key.pem",
        ));
    };
    let issuer = Issuer::from_ca_cert_der(root, root_key)
        .map_err(|e| Failure::usage(format!("root-cert.pem: {e}")))?;
    let mut out = String::new();
    for (index, partner_root) in bundle.authorities.iter().enumerate() {
        let cross = cross_certify(
            partner_root,
            &trust_domain,
            (&issuer, root.as_ref()),
            args.lifetime,
            now,
        )
        .map_err(|e| Failure::runtime(format!("partner root {index}: {e}")))?;
        println!(
            "partner root {index} (sha256 {}): cross-certified for spiffe://{trust_domain}/ only",
            hex(&sha256(partner_root))
        );
        out.push_str(&certificate_pem(&cross));
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::runtime(format!("{}: {e}", parent.display())))?;
    }
    std::fs::write(&args.out, out)
        .map_err(|e| Failure::runtime(format!("{}: {e}", args.out.display())))?;
    println!(
        "wrote {} cross-certificate(s) to {} (bundle sequence {}); point \
         [[mesh.partner]] cross_certificates at it",
        bundle.authorities.len(),
        args.out.display(),
        bundle.sequence
    );
    Ok(())
}
