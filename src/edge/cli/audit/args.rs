//! The `meshroot audit` command line: its subcommands and their arguments, as clap reads them.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::domain::audit::DEFAULT_PAGE_SIZE;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List records matching filters, oldest first (or in expiry order for validity-only
    /// filters), a page at a time.
    List(ListArgs),
    /// Show one record in full.
    Show(ShowArgs),
    /// Follow new records as they are written (needs a running server).
    Watch(WatchArgs),
    /// Write every matching record, as JSON lines or CSV.
    Export(ExportArgs),
    /// Recompute the Merkle tree over every record and check it against signed checkpoints.
    Verify(VerifyArgs),
    /// Print an inclusion proof of a record in the latest checkpoint, for an auditor.
    Prove(ProveArgs),
    /// Check an inclusion proof (from `prove`) against a signed checkpoint.
    CheckProof(CheckProofArgs),
    /// Size of the log, oldest record, checkpoints.
    Stats(StatsArgs),
    /// Which trust domains each mesh accepts, and the partner bundles a running replica holds:
    /// sequence, age, the last fetch and its error.
    Partners(StatsArgs),
}

/// Where the records come from.
#[derive(Debug, Args, Clone)]
pub struct SourceArgs {
    /// A running meshroot's admin address, HOST:PORT (the audit API). For `list`: a name with
    /// several addresses (a headless Service: every replica) or a comma-separated list asks
    /// each replica and merges the answers in time order.
    #[arg(long, conflicts_with = "store")]
    pub addr: Option<String>,
    /// A store directory (the server must be stopped).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Config whose store, admin address and audit key to use by default.
    #[arg(long, default_value = "meshroot-data/meshroot.toml")]
    pub config: PathBuf,
    /// For a non-loopback --addr: roots to verify the server with (the mesh root-cert.pem)...
    #[arg(long, requires = "addr")]
    pub root: Option<PathBuf>,
    /// ...the client certificate chain (an allowed admin identity)...
    #[arg(long, requires = "root")]
    pub cert: Option<PathBuf>,
    /// ...its key...
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// ...and the DNS name in the server's certificate.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// With `[replicas]`: only this member's log (its admin address as in replicas.members).
    /// Without it, the server asked answers for every member.
    #[arg(long)]
    pub replica: Option<String>,
    /// Accept an answer that lacks a member's records (a member did not answer): exit 0
    /// instead of 3. The answer still says it is incomplete, on stderr and in JSON.
    #[arg(long)]
    pub allow_incomplete: bool,
}

/// Which records. Times are RFC 3339, `now`, or an age like `1h` or `7d` (before now).
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Serial number of a certificate (hex).
    #[arg(long)]
    pub serial: Option<String>,
    /// An exact SPIFFE ID (issued, or asked for).
    #[arg(long)]
    pub spiffe_id: Option<String>,
    /// A SPIFFE ID prefix, e.g. spiffe://cluster.local/ns/payments/
    #[arg(long)]
    pub spiffe_id_prefix: Option<String>,
    #[arg(long)]
    pub mesh: Option<String>,
    #[arg(long)]
    pub trust_domain: Option<String>,
    #[arg(long)]
    pub namespace: Option<String>,
    /// NAMESPACE/NAME, or NAME with --namespace.
    #[arg(long)]
    pub service_account: Option<String>,
    /// The caller's authenticated subject, e.g. system:serviceaccount:istio-system:ztunnel
    #[arg(long)]
    pub caller: Option<String>,
    /// The clusterid the caller sent.
    #[arg(long)]
    pub cluster: Option<String>,
    /// The caller's pod name.
    #[arg(long)]
    pub pod: Option<String>,
    /// Recorded at or after.
    #[arg(long)]
    pub since: Option<String>,
    /// Recorded before.
    #[arg(long)]
    pub until: Option<String>,
    /// Certificates valid at this time (e.g. now).
    #[arg(long)]
    pub valid_at: Option<String>,
    /// Certificates expiring at or after...
    #[arg(long)]
    pub expires_after: Option<String>,
    /// ...and before.
    #[arg(long)]
    pub expires_before: Option<String>,
    #[arg(long, value_enum)]
    pub outcome: Option<OutcomeArg>,
    /// A denial reason (implies --outcome denied), e.g. identity-mismatch.
    #[arg(long)]
    pub reason: Option<String>,
    /// Only certificates of this kind: `intermediate`, the clusters' istiod intermediates
    /// meshroot issued (the plug-in path; with --cluster, one cluster's).
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Only certificates that were revoked (`meshroot revoke`).
    #[arg(long)]
    pub revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Intermediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutcomeArg {
    Issued,
    Denied,
    /// Revocation records (`meshroot revoke`): who revoked what, when, why.
    Revoked,
    /// Partner bundle changes (`[[mesh.partner]]`): which roots a mesh trusts for a partner.
    Federated,
    /// CA certificates made (`init`) or taken into service, and where each key is (a file, or
    /// a token's serial, key label and key id).
    CaKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Records per page (at most 1000).
    #[arg(long, default_value_t = DEFAULT_PAGE_SIZE)]
    pub limit: usize,
    /// Continue after a previous page.
    #[arg(long)]
    pub page_token: Option<String>,
    /// Every page.
    #[arg(long)]
    pub all: bool,
    /// Only the number of matching records.
    #[arg(long)]
    pub count: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The record's sequence number.
    #[arg(required_unless_present = "serial")]
    pub sequence: Option<u64>,
    /// Or a certificate serial number (hex).
    #[arg(long)]
    pub serial: Option<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Start at this sequence number (to resume: the last one seen plus one). Default: only
    /// new records.
    #[arg(long)]
    pub from: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// json: one JSON object per line.
    #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
    pub format: ExportFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// A published checkpoint the log must still match (repeatable).
    #[arg(long = "checkpoint")]
    pub checkpoints: Vec<PathBuf>,
    /// The audit verifier key (audit-key.pub). Default: derived from the config's audit key.
    #[arg(long = "verifier-key")]
    pub verifier_key: Option<PathBuf>,
    /// Verify a JSON-lines export directory (`[audit.export] jsonl_dir`) instead of a log: that
    /// it is complete and unedited up to its last checkpoint, from the export and the verifier
    /// key alone.
    #[arg(long)]
    pub export: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProveArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The record's sequence number.
    #[arg(required_unless_present = "serial")]
    pub sequence: Option<u64>,
    /// Or a certificate serial number (hex).
    #[arg(long)]
    pub serial: Option<String>,
    /// Write the proof here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckProofArgs {
    /// A proof written by `meshroot audit prove`.
    pub proof: PathBuf,
    /// The audit verifier key (audit-key.pub).
    #[arg(long = "verifier-key")]
    pub verifier_key: PathBuf,
    /// Check against this published checkpoint (of the proof's tree size) instead of the copy
    /// inside the proof.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[arg(long)]
    pub json: bool,
}
