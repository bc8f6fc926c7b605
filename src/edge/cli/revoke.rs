//! `meshroot revoke`: revoke certificates by any audit filter (or lift a block), through a
//! running server's admin API (every member, by default) or on a stopped store; and
//! `meshroot crl sign-root`, the root's CRL, signed where the root key is kept.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use super::audit::{FilterArgs, Log, SourceArgs, EXIT_INCOMPLETE};
use super::failure::Failure;
use crate::adapters::store::{SledStore, StoreError, StoreOptions};
use crate::domain::clock::{format_time, parse_duration};
use crate::domain::digest::hex;
use crate::domain::record::CallerRecord;
use crate::domain::revocation::{Reason, Revocations};
use crate::edge::grpc::record_messages::revoked_certificate_from_message;
use crate::edge::grpc::wire::filter_from_query;
use crate::issuance::revoke::{
    block_until, new_revocation, record_revocation, revocation_query, select, unblock, SelectError,
};
use crate::pb::audit as api;

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Serial number of a certificate (hex).
    #[arg(long)]
    pub serial: Option<String>,
    /// Every certificate of this SPIFFE ID.
    #[arg(long)]
    pub spiffe_id: Option<String>,
    /// Every certificate whose SPIFFE ID starts so, e.g. spiffe://td/ns/shop/
    #[arg(long)]
    pub spiffe_id_prefix: Option<String>,
    #[arg(long)]
    pub mesh: Option<String>,
    #[arg(long)]
    pub namespace: Option<String>,
    /// NAMESPACE/NAME, or NAME with --namespace.
    #[arg(long)]
    pub service_account: Option<String>,
    /// Certificates issued to this caller (its authenticated subject, e.g. a node's ztunnel).
    #[arg(long)]
    pub caller: Option<String>,
    /// Certificates issued to callers of this cluster (the clusterid they sent).
    #[arg(long)]
    pub cluster: Option<String>,
    /// Certificates issued to callers in this pod.
    #[arg(long)]
    pub pod: Option<String>,
    /// Issued at or after (RFC 3339, now, or an age like 2h).
    #[arg(long)]
    pub since: Option<String>,
    /// Issued before.
    #[arg(long)]
    pub until: Option<String>,
    /// A cluster's istiod intermediate (the plug-in path): every one meshroot issued to it.
    #[arg(long, value_name = "CLUSTER", conflicts_with_all = ["caller", "cluster"])]
    pub intermediate: Option<String>,
    /// RFC 5280 CRLReason: unspecified, key-compromise, ca-compromise, affiliation-changed,
    /// superseded, cessation-of-operation, privilege-withdrawn.
    #[arg(long, default_value = "unspecified")]
    pub reason: String,
    /// Why, in your words (kept in the record).
    #[arg(long, default_value = "")]
    pub comment: String,
    /// Only show what would be revoked.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse the identities new certificates for this long (default: `[revocation]
    /// block_for`, or until lifted with --unblock).
    #[arg(long)]
    pub block_for: Option<String>,
    /// Revoke the certificates only; their identities may get new ones.
    #[arg(long, conflicts_with = "block_for")]
    pub no_block: bool,
    /// Lift the block on this SPIFFE ID (repeatable); takes no filter.
    #[arg(long)]
    pub unblock: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum CrlCommand {
    /// Sign the root's CRL with the root key (where `meshroot init` put it), for
    /// `[revocation] extra_crls`: Envoy needs a CRL from every CA in a chain.
    SignRoot(SignRootArgs),
}

#[derive(Debug, Args)]
pub struct SignRootArgs {
    /// The directory `meshroot init` wrote (root-cert.pem, root-key.pem).
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// How long the CRL is valid (sign it again before that).
    #[arg(long, default_value = "365d")]
    pub valid_for: String,
    /// Where to write it. Default: CA_DIR/root-crl.pem.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The token holding the root key (when CA_DIR has root-key.uri).
    #[command(flatten)]
    pub pkcs11: super::args::Pkcs11Args,
}

pub(crate) async fn run_crl(command: CrlCommand) -> Result<(), Failure> {
    match command {
        CrlCommand::SignRoot(args) => {
            let valid_for = parse_duration(&args.valid_for)
                .filter(|d| !d.is_zero() && *d <= crate::domain::clock::MAX_DURATION)
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "--valid-for {:?}: give a duration of at most 100 years, e.g. 365d",
                        args.valid_for
                    ))
                })?;
            let out = args
                .out
                .unwrap_or_else(|| args.ca_dir.join(super::init::ROOT_CRL_FILE));
            let pkcs11 = args.pkcs11.settings()?;
            super::init::sign_root_crl(
                &args.ca_dir,
                pkcs11.as_ref(),
                valid_for,
                SystemTime::now(),
                &out,
            )
            .map_err(|e| Failure::runtime(e.to_string()))?;
            println!(
                "root CRL written to {} (valid for {})",
                out.display(),
                args.valid_for
            );
            Ok(())
        }
    }
}

/// Where the revocation is made.
#[allow(
    clippy::large_enum_variant,
    reason = "one per command, never moved in a loop"
)]
enum Target {
    Remote(super::audit::Remote),
    Store(std::sync::Arc<SledStore>),
}

pub async fn run(args: RevokeArgs) -> Result<(), Failure> {
    let reason = Reason::parse(&args.reason).ok_or_else(|| {
        Failure::usage(format!(
            "--reason {:?}: one of {}",
            args.reason,
            Reason::ALL.map(Reason::name).join(", ")
        ))
    })?;
    let now = SystemTime::now();
    let block_for = args
        .block_for
        .as_deref()
        .map(|text| {
            parse_duration(text)
                .filter(|d| !d.is_zero() && *d <= crate::domain::clock::MAX_DURATION)
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "--block-for {text:?}: give a duration of at most 100 years, e.g. 24h"
                    ))
                })
        })
        .transpose()?;
    let unblocking = !args.unblock.is_empty();
    let query = filter(&args, now)?;
    if unblocking && !query.is_unfiltered() {
        return Err(Failure::usage(
            "--unblock takes the identities only, no filter",
        ));
    }
    if !unblocking && query.is_unfiltered() {
        return Err(Failure::usage(
            "name what to revoke (--serial, --spiffe-id, --namespace, --caller, --pod, \
             --cluster, --since, --intermediate ...): revoking every certificate is refused",
        ));
    }
    match open(&args.source).await? {
        Target::Remote(mut remote) => {
            let request = api::RevokeRequest {
                filter: (!unblocking).then(|| filter_from_query(&query)),
                reason: reason.name().to_owned(),
                comment: args.comment.clone(),
                dry_run: args.dry_run,
                block_for_seconds: block_for.map(|d| d.as_secs() as i64).unwrap_or(0),
                no_block: args.no_block,
                unblock: args.unblock.clone(),
                apply: None,
                scope: remote.scope(),
            };
            let response = remote
                .revoke(request)
                .await
                .map_err(super::audit::remote_failure)?
                .into_inner();
            remote.note(response.replicas.as_ref());
            let certificates: Vec<_> = response
                .certificates
                .into_iter()
                .map(revoked_certificate_from_message)
                .collect();
            report(
                &args,
                &certificates,
                &response.blocked,
                response.already_revoked,
                &response.recorded,
            );
            for warning in &response.warnings {
                eprintln!("warning: {warning}");
            }
            let missing: Vec<(String, String)> = remote
                .missing
                .iter()
                .map(|(m, r)| (m.clone(), r.clone()))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            for (member, why) in &missing {
                eprintln!("incomplete: member {member} did not answer ({why})");
            }
            if args.dry_run || certificates.is_empty() && !unblocking {
                eprintln!("the selection lacks those members' certificates");
            } else {
                eprintln!(
                    "the revocation is not complete until every member has it, and the \
                     certificates in a missing member's own log were not selected: run the same \
                     command again once it answers (members that have it record nothing new). \
                     A member that comes back also copies the revocation by itself (at start and \
                     every audit checkpoint_interval), but only the certificates others selected"
                );
            }
            if args.source.allow_incomplete {
                return Ok(());
            }
            Err(Failure {
                message: "the revocation is incomplete".into(),
                code: EXIT_INCOMPLETE,
            })
        }
        Target::Store(store) => {
            let revocations = Revocations::from_records(
                &store
                    .revocations()
                    .map_err(|e| Failure::runtime(e.to_string()))?,
            );
            let revocation = if unblocking {
                unblock(&args.unblock, reason, &args.comment)
                    .map_err(|e| Failure::usage(e.to_string()))?
            } else {
                let query =
                    revocation_query(query, now).map_err(|e| Failure::usage(e.to_string()))?;
                let certificates = {
                    let store = store.clone();
                    let query = query.clone();
                    tokio::task::spawn_blocking(move || {
                        select(&query, |query, size, token| store.query(query, size, token))
                    })
                    .await
                    .map_err(|e| Failure::runtime(e.to_string()))?
                    .map_err(|error| match error {
                        SelectError::Log(error) => Failure::runtime(error.to_string()),
                        SelectError::TooMany(count) => Failure::usage(
                            crate::issuance::revoke::RevokeError::TooMany(count).to_string(),
                        ),
                    })?
                };
                if certificates.is_empty() {
                    if let Some(serial) = &query.serial {
                        return Err(Failure::runtime(format!(
                            "no unexpired certificate with serial {} in the log",
                            hex(serial)
                        )));
                    }
                }
                let block = block_until(args.no_block, 0, block_for, now)
                    .map_err(|e| Failure::usage(e.to_string()))?;
                new_revocation(certificates, reason, &args.comment, &query, block)
            };
            let selected = revocation.certificates.clone();
            let blocked = revocation.blocked.clone();
            if args.dry_run || (selected.is_empty() && !unblocking) {
                report(&args, &selected, &blocked, 0, &[]);
                return Ok(());
            }
            let caller = CallerRecord {
                authenticator: "admin".into(),
                subject: format!(
                    "local:{}",
                    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
                ),
                ..CallerRecord::default()
            };
            // The server is stopped: nothing to publish to; it publishes the CRLs at start.
            let done = record_revocation(
                store.as_ref(),
                &revocations,
                None,
                (
                    format!("cli-{}", crate::domain::clock::unix_millis(now)),
                    now,
                ),
                revocation,
                caller,
            )
            .await
            .map_err(|e| Failure::runtime(e.to_string()))?;
            store.flush().map_err(|e| Failure::runtime(e.to_string()))?;
            let already = done.already_revoked;
            let recorded = match done.sequence {
                Some(_) => vec![String::new()],
                None => Vec::new(),
            };
            report(&args, &selected, &blocked, already, &recorded);
            if !recorded.is_empty() {
                println!(
                    "the server publishes the new CRLs when it starts; the other members of a \
                     [replicas] copy this revocation once it runs again (or revoke through a \
                     running member with --addr to reach them now)"
                );
            }
            Ok(())
        }
    }
}

/// The audit filter of the command's flags.
fn filter(args: &RevokeArgs, now: SystemTime) -> Result<crate::domain::audit::Query, Failure> {
    let (caller, cluster) = match &args.intermediate {
        // A cluster intermediate is recorded as issued to meshroot itself, with the cluster as
        // the caller's clusterid.
        Some(cluster) => (
            Some(crate::issuance::CLUSTER_INTERMEDIATE_SUBJECT.to_owned()),
            Some(cluster.clone()),
        ),
        None => (args.caller.clone(), args.cluster.clone()),
    };
    FilterArgs {
        serial: args.serial.clone(),
        spiffe_id: args.spiffe_id.clone(),
        spiffe_id_prefix: args.spiffe_id_prefix.clone(),
        mesh: args.mesh.clone(),
        namespace: args.namespace.clone(),
        service_account: args.service_account.clone(),
        caller,
        cluster,
        pod: args.pod.clone(),
        since: args.since.clone(),
        until: args.until.clone(),
        ..FilterArgs::default()
    }
    .query(now)
}

/// The running server's admin API, or the stopped server's store (opened for writing).
async fn open(source: &SourceArgs) -> Result<Target, Failure> {
    if let Some(addr) = &source.addr {
        return remote(addr, source).await;
    }
    let from_config = source.store.is_none();
    let path = match &source.store {
        Some(path) => path.clone(),
        None => crate::adapters::config::Config::load(&source.config)?.store,
    };
    let opened = tokio::task::spawn_blocking(move || {
        SledStore::open_with(
            &path,
            StoreOptions {
                lock_wait: Duration::ZERO,
                ..StoreOptions::default()
            },
        )
    })
    .await
    .map_err(|e| Failure::runtime(e.to_string()))?;
    match opened {
        Ok(store) => Ok(Target::Store(store)),
        Err(StoreError::Locked { .. }) if from_config => {
            let config = crate::adapters::config::Config::load(&source.config)?;
            remote(&config.admin.listen.to_string(), source).await
        }
        Err(error) => Err(Failure::runtime(format!(
            "{error} (is a meshroot server running? use --addr to revoke through it)"
        ))),
    }
}

async fn remote(addr: &str, source: &SourceArgs) -> Result<Target, Failure> {
    match Log::connect(addr, source).await? {
        Log::Remote(mut remote) => {
            if let Some(replica) = &source.replica {
                remote.set_replica(replica.clone());
            }
            Ok(Target::Remote(remote))
        }
        Log::Store(store) => Ok(Target::Store(store)),
    }
}

/// Identities named in the summary line; the record (`audit list --outcome revoked --format
/// json`) has them all.
const IDENTITIES_SHOWN: usize = 10;

/// The first `limit` of `items`, and how many more there are.
fn listed(items: &[String], limit: usize) -> String {
    let shown = items[..items.len().min(limit)].join(", ");
    match items.len().saturating_sub(limit) {
        0 => shown,
        more => format!("{shown} and {more} more (all in the revocation record)"),
    }
}

/// What was (or would be) revoked.
fn report(
    args: &RevokeArgs,
    certificates: &[crate::domain::record::RevokedCertificate],
    blocked: &[String],
    already_revoked: u64,
    recorded: &[String],
) {
    if certificates.is_empty() && args.unblock.is_empty() {
        println!("no unexpired certificate matches: nothing revoked");
        return;
    }
    if !certificates.is_empty() {
        println!(
            "{:<34}  {:<20}  {:<12}  {:<24}  SPIFFE ID",
            "SERIAL", "NOT AFTER", "MESH", "MEMBER"
        );
        for c in certificates {
            let id = match c.spiffe_id.as_str() {
                "" => "(a CA or server certificate)",
                id => id,
            };
            println!(
                "{:<34}  {:<20}  {:<12}  {:<24}  {id}",
                hex(&c.serial),
                format_time(c.not_after),
                c.mesh,
                c.member
            );
        }
    }
    let verb = if args.dry_run {
        "would revoke"
    } else {
        "revoked"
    };
    if !certificates.is_empty() {
        let already = already_revoked.min(certificates.len() as u64);
        let newly = certificates.len() as u64 - already;
        let note = if already > 0 {
            format!(" ({already} more already were)")
        } else {
            String::new()
        };
        if newly == 0 && !args.dry_run {
            println!("nothing new: the {already} selected certificate(s) were revoked already");
        } else {
            println!("{verb} {newly} certificate(s){note}");
        }
    }
    if !blocked.is_empty() {
        let verb = if args.dry_run {
            "would refuse"
        } else {
            "refused"
        };
        println!(
            "{verb} new certificates: {}",
            listed(blocked, IDENTITIES_SHOWN)
        );
    }
    if !args.unblock.is_empty() && !args.dry_run {
        println!("block lifted: {}", args.unblock.join(", "));
    }
    let members: Vec<&str> = recorded
        .iter()
        .map(String::as_str)
        .filter(|m| !m.is_empty())
        .collect();
    if !members.is_empty() {
        println!("recorded by: {}", members.join(", "));
    }
}
