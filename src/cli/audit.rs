//! `meshroot audit …`: query, follow, export, verify and prove the issuance log, on a store
//! directory (the server stopped) or through a running server's audit API (`--addr`).
//!
//! Without `--addr` or `--store` the config's store is read; if a running server holds it, the
//! config's admin address is asked instead.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tonic::transport::Channel;

use super::Failure;
use crate::audit::checkpoint::{AuditSigner, AuditVerifier, Checkpoint};
use crate::audit::proof::{check_inclusion, ProofDocument, ProvenInclusion, PROOF_FORMAT};
use crate::audit::verify::{LogVerifier, VerifyEntry, VerifyReport};
use crate::audit::{parse_time, LeafData, OutcomeFilter, Query, DEFAULT_PAGE_SIZE};
use crate::clock::format_time;
use crate::config::Config;
use crate::digest::hex;
use crate::digest::parse_hex;
use crate::grpc::audit::filter_from_query;
use crate::pb::audit as api;
use crate::pb::audit::audit_service_client::AuditServiceClient;
use crate::record::{Outcome, Record, StoreError};
use crate::store::{self, LogEntry, SledStore, Stats};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutcomeArg {
    Issued,
    Denied,
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

/// Runs an audit command.
pub async fn run(command: AuditCommand) -> Result<(), Failure> {
    match command {
        AuditCommand::List(args) => list(args).await,
        AuditCommand::Show(args) => show(args).await,
        AuditCommand::Watch(args) => watch(args).await,
        AuditCommand::Export(args) => export(args).await,
        AuditCommand::Verify(args) => verify(args).await,
        AuditCommand::Prove(args) => prove(args).await,
        AuditCommand::CheckProof(args) => check_proof(args),
        AuditCommand::Stats(args) => stats(args).await,
    }
}

/// A store opened read-only, or a running server's audit API.
pub(crate) enum Log {
    Store(Arc<SledStore>),
    Remote(AuditServiceClient<Channel>),
}

impl Log {
    pub(crate) async fn open(source: &SourceArgs) -> Result<Self, Failure> {
        if let Some(addr) = &source.addr {
            if addr.contains(',') {
                return Err(Failure::usage(
                    "several --addr replicas are only for `audit list`; name one replica",
                ));
            }
        }
        if let Some(addr) = &source.addr {
            return Self::connect(addr, source).await;
        }
        let path = match &source.store {
            Some(path) => path.clone(),
            None => Config::load(&source.config)?.store,
        };
        let opened = tokio::task::spawn_blocking({
            let path = path.clone();
            move || SledStore::open_read_only(&path)
        })
        .await
        .map_err(|e| Failure::runtime(e.to_string()))?;
        match opened {
            Ok(store) => Ok(Self::Store(store)),
            // The server holds the store: ask it instead (when the store came from the config).
            Err(StoreError::Locked { .. }) if source.store.is_none() => {
                let config = Config::load(&source.config)?;
                Self::connect(&config.admin.listen.to_string(), source).await
            }
            Err(error) => Err(Failure::runtime(error.to_string())),
        }
    }

    async fn connect(addr: &str, source: &SourceArgs) -> Result<Self, Failure> {
        let failed = |e: String| Failure::runtime(format!("connecting to {addr}: {e}"));
        let channel = match &source.root {
            None => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| failed(e.to_string()))?
                .connect()
                .await
                .map_err(|e| failed(e.to_string()))?,
            Some(root) => {
                let read = |path: &Path| {
                    std::fs::read_to_string(path)
                        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
                };
                let identity = match (&source.cert, &source.key) {
                    (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                    _ => None,
                };
                crate::client::connect(&crate::client::Target {
                    address: addr.to_owned(),
                    root_pem: read(root)?,
                    server_name: source.server_name.clone(),
                    client_identity: identity,
                })
                .await
                .map_err(|e| failed(e.to_string()))?
            }
        };
        Ok(Self::Remote(
            AuditServiceClient::new(channel).max_decoding_message_size(64 << 20),
        ))
    }

    /// A mesh's remembered signing certificates: SHA-256 → chain (signing certificate first).
    pub(crate) async fn signers(
        &mut self,
        mesh: &str,
    ) -> Result<std::collections::HashMap<Vec<u8>, Vec<Vec<u8>>>, Failure> {
        match self {
            Self::Store(store) => {
                let (store, mesh) = (store.clone(), mesh.to_owned());
                blocking(move || store.signers(&mesh).map_err(|e| e.to_string())).await
            }
            Self::Remote(client) => Ok(client
                .list_signers(api::ListSignersRequest {
                    mesh: mesh.to_owned(),
                })
                .await
                .map_err(remote_failure)?
                .into_inner()
                .signers
                .into_iter()
                .map(|signer| (signer.sha256, signer.chain))
                .collect()),
        }
    }

    /// One page of records.
    pub(crate) async fn page(
        &mut self,
        query: &Query,
        size: usize,
        token: Option<String>,
    ) -> Result<(Vec<Record>, Option<String>), Failure> {
        match self {
            Self::Store(store) => {
                let store = store.clone();
                let query = query.clone();
                let page = blocking(move || {
                    store
                        .query(&query, size, token.as_deref())
                        .map_err(|e| e.to_string())
                })
                .await?;
                Ok((page.records, page.next_page_token))
            }
            Self::Remote(client) => {
                let response = client
                    .list_records(api::ListRecordsRequest {
                        filter: Some(filter_from_query(query)),
                        page_size: size as u32,
                        page_token: token.unwrap_or_default(),
                        count_only: false,
                    })
                    .await
                    .map_err(remote_failure)?
                    .into_inner();
                let records = response
                    .entries
                    .into_iter()
                    .filter_map(|entry| match entry.entry {
                        Some(api::log_entry::Entry::Record(record)) => store::from_message(record),
                        _ => None,
                    })
                    .collect();
                let token =
                    (!response.next_page_token.is_empty()).then_some(response.next_page_token);
                Ok((records, token))
            }
        }
    }

    async fn count(&mut self, query: &Query) -> Result<u64, Failure> {
        match self {
            Self::Store(store) => {
                let (store, query) = (store.clone(), query.clone());
                blocking(move || store.count(&query).map_err(|e| e.to_string())).await
            }
            Self::Remote(client) => Ok(client
                .list_records(api::ListRecordsRequest {
                    filter: Some(filter_from_query(query)),
                    count_only: true,
                    ..Default::default()
                })
                .await
                .map_err(remote_failure)?
                .into_inner()
                .count),
        }
    }

    /// Every entry (records as stored, pruned leaves) from `from` to `to`, in order, handed
    /// to `each` (for verification).
    async fn stream_entries(
        &mut self,
        from: u64,
        to: u64,
        each: &mut dyn FnMut(u64, VerifyEntry<'_>),
    ) -> Result<(), Failure> {
        match self {
            Self::Store(store) => {
                let mut next = from;
                while next <= to {
                    let (chunk_store, start) = (store.clone(), next);
                    let entries = blocking(move || {
                        chunk_store
                            .entries(start, to, 8192)
                            .map_err(|e| e.to_string())
                    })
                    .await?;
                    let Some(last) = entries.last().map(LogEntry::sequence) else {
                        break;
                    };
                    for entry in &entries {
                        match entry {
                            LogEntry::Record { sequence, stored } => {
                                each(*sequence, VerifyEntry::Record(stored))
                            }
                            LogEntry::Pruned { sequence, leaf } => {
                                each(*sequence, VerifyEntry::Pruned(*leaf))
                            }
                        }
                    }
                    next = last + 1;
                }
                Ok(())
            }
            Self::Remote(client) => {
                if to < from {
                    return Ok(());
                }
                let mut stream = client
                    .watch_records(api::WatchRecordsRequest {
                        from_sequence: from,
                        filter: None,
                        include_stored: true,
                        include_pruned: true,
                        to_sequence: to,
                    })
                    .await
                    .map_err(remote_failure)?
                    .into_inner();
                while let Some(entry) = stream.message().await.map_err(remote_failure)? {
                    match entry.entry {
                        Some(api::log_entry::Entry::PrunedLeaf(bytes)) => {
                            let leaf = LeafData::parse(&bytes).ok_or_else(|| {
                                Failure::runtime(format!("entry {} is malformed", entry.sequence))
                            })?;
                            each(entry.sequence, VerifyEntry::Pruned(leaf));
                        }
                        _ => each(entry.sequence, VerifyEntry::Record(&entry.stored)),
                    }
                    if entry.sequence >= to {
                        break;
                    }
                }
                Ok(())
            }
        }
    }

    /// The sequence number of a record given by sequence or serial.
    async fn locate(
        &mut self,
        sequence: Option<u64>,
        serial: &Option<String>,
    ) -> Result<u64, Failure> {
        if let Some(sequence) = sequence {
            return Ok(sequence);
        }
        let serial = parse_serial(serial.as_deref().unwrap_or_default())?;
        let query = Query {
            serial: Some(serial),
            ..Query::default()
        };
        let (records, _) = self.page(&query, 1, None).await?;
        records
            .first()
            .map(|r| r.sequence)
            .ok_or_else(|| Failure::runtime("no certificate with this serial"))
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Failure::runtime(e.to_string()))?
        .map_err(Failure::runtime)
}

fn remote_failure(status: tonic::Status) -> Failure {
    Failure::runtime(format!(
        "the audit API answered {:?}: {}",
        status.code(),
        status.message()
    ))
}

fn parse_serial(text: &str) -> Result<Vec<u8>, Failure> {
    parse_hex(text).ok_or_else(|| Failure::usage(format!("--serial {text:?} is not hex")))
}

impl FilterArgs {
    fn query(&self, now: SystemTime) -> Result<Query, Failure> {
        let time = |flag: &str, value: &Option<String>| -> Result<Option<SystemTime>, Failure> {
            value
                .as_deref()
                .map(|text| {
                    parse_time(text, now).ok_or_else(|| {
                        Failure::usage(format!(
                            "--{flag} {text:?}: give RFC 3339 (2026-11-28T10:00:00Z), now, or an age like 1h"
                        ))
                    })
                })
                .transpose()
        };
        let outcome = match (self.outcome, &self.reason) {
            (Some(OutcomeArg::Issued), Some(_)) => {
                return Err(Failure::usage(
                    "--reason is for denials, not --outcome issued",
                ))
            }
            (Some(OutcomeArg::Issued), None) => Some(OutcomeFilter::Issued),
            (Some(OutcomeArg::Denied), reason) | (None, reason @ Some(_)) => {
                Some(OutcomeFilter::Denied {
                    reason: reason.clone(),
                })
            }
            (None, None) => None,
        };
        let query = Query {
            serial: self.serial.as_deref().map(parse_serial).transpose()?,
            spiffe_id: self.spiffe_id.clone(),
            spiffe_id_prefix: self.spiffe_id_prefix.clone(),
            mesh: self.mesh.clone(),
            trust_domain: self.trust_domain.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            caller: self.caller.clone(),
            cluster_id: self.cluster.clone(),
            pod: self.pod.clone(),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            valid_at: time("valid-at", &self.valid_at)?,
            expires_after: time("expires-after", &self.expires_after)?,
            expires_before: time("expires-before", &self.expires_before)?,
            outcome,
        };
        query
            .validate()
            .map_err(|e| Failure::usage(e.to_string()))?;
        Ok(query)
    }
}

async fn list(args: ListArgs) -> Result<(), Failure> {
    let query = args.filter.query(SystemTime::now())?;
    if let Some(addr) = &args.source.addr {
        let replicas = replica_addresses(addr).await?;
        if replicas.len() > 1 {
            return list_replicas(&args, &query, replicas).await;
        }
    }
    let mut log = Log::open(&args.source).await?;
    if args.count {
        println!("{}", log.count(&query).await?);
        return Ok(());
    }
    let size = args.limit.clamp(1, crate::audit::MAX_PAGE_SIZE);
    let mut token = args.page_token.clone();
    let mut printer = Printer::new(args.format);
    loop {
        let (records, next) = log.page(&query, size, token).await?;
        for record in &records {
            printer.record(record, None)?;
        }
        match next {
            Some(next) if args.all => token = Some(next),
            Some(next) => {
                printer.finish()?;
                eprintln!("more records: --page-token {next}");
                return Ok(());
            }
            None => return printer.finish(),
        }
    }
}

/// Every address `addr` names: a comma-separated list, each an address or a name resolved to
/// all its addresses (a headless Service resolves to one per ready replica).
async fn replica_addresses(addr: &str) -> Result<Vec<String>, Failure> {
    let mut replicas: Vec<String> = Vec::new();
    for part in addr.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let resolved = tokio::net::lookup_host(part)
            .await
            .map_err(|e| Failure::runtime(format!("resolving {part}: {e}")))?;
        for address in resolved {
            let address = address.to_string();
            if !replicas.contains(&address) {
                replicas.push(address);
            }
        }
    }
    if replicas.is_empty() {
        return Err(Failure::usage(format!("--addr {addr}: no address")));
    }
    replicas.sort();
    Ok(replicas)
}

/// One replica's records, a page at a time.
struct Replica {
    address: String,
    log: Log,
    buffer: std::collections::VecDeque<Record>,
    next: Option<String>,
    exhausted: bool,
}

impl Replica {
    /// Fills the buffer from the next page if it is empty and there is more.
    async fn refill(&mut self, query: &Query, size: usize) -> Result<(), Failure> {
        if !self.buffer.is_empty() || self.exhausted {
            return Ok(());
        }
        let (records, next) = self.log.page(query, size, self.next.take()).await?;
        self.buffer.extend(records);
        self.exhausted = next.is_none();
        self.next = next;
        Ok(())
    }
}

/// `audit list` over several replicas: each keeps its own log (its own sequence numbers), so
/// the records are merged by the time they were recorded, each labelled with its replica.
async fn list_replicas(
    args: &ListArgs,
    query: &Query,
    addresses: Vec<String>,
) -> Result<(), Failure> {
    if args.page_token.is_some() {
        return Err(Failure::usage(
            "--page-token belongs to one replica; across replicas use --limit or --all",
        ));
    }
    let mut replicas = Vec::new();
    for address in addresses {
        let log = Log::connect(&address, &args.source).await?;
        replicas.push(Replica {
            address,
            log,
            buffer: Default::default(),
            next: None,
            exhausted: false,
        });
    }
    if args.count {
        let mut total = 0;
        for replica in &mut replicas {
            total += replica.log.count(query).await?;
        }
        println!("{total}");
        return Ok(());
    }
    let size = args.limit.clamp(1, crate::audit::MAX_PAGE_SIZE);
    let mut printer = Printer::new(args.format);
    printer.replicas = true;
    let mut printed = 0;
    while args.all || printed < size {
        for replica in &mut replicas {
            replica.refill(query, size).await?;
        }
        let earliest = replicas
            .iter()
            .enumerate()
            .filter_map(|(index, r)| r.buffer.front().map(|record| (index, record)))
            .min_by_key(|(index, record)| (record.recorded_at, *index, record.sequence))
            .map(|(index, _)| index);
        let Some(index) = earliest else {
            break;
        };
        let replica = &mut replicas[index];
        if let Some(record) = replica.buffer.pop_front() {
            printer.record(&record, Some(&replica.address))?;
            printed += 1;
        }
    }
    let more = replicas
        .iter()
        .any(|r| !r.buffer.is_empty() || !r.exhausted);
    printer.finish()?;
    if more && !args.all {
        eprintln!("more records: --limit N or --all");
    }
    Ok(())
}

async fn export(args: ExportArgs) -> Result<(), Failure> {
    let query = args.filter.query(SystemTime::now())?;
    let mut log = Log::open(&args.source).await?;
    let mut printer = Printer::new(match args.format {
        ExportFormat::Json => Format::Json,
        ExportFormat::Csv => Format::Csv,
    });
    printer.json_lines = true;
    let mut token = None;
    loop {
        let (records, next) = log.page(&query, crate::audit::MAX_PAGE_SIZE, token).await?;
        for record in &records {
            printer.record(record, None)?;
        }
        match next {
            Some(next) => token = Some(next),
            None => return printer.finish(),
        }
    }
}

async fn show(args: ShowArgs) -> Result<(), Failure> {
    let mut log = Log::open(&args.source).await?;
    let sequence = log.locate(args.sequence, &args.serial).await?;
    let entry = match &mut log {
        Log::Store(store) => {
            let store = store.clone();
            blocking(move || {
                store
                    .entries(sequence, sequence, 1)
                    .map_err(|e| e.to_string())
            })
            .await?
            .into_iter()
            .next()
            .map(|entry| match entry {
                LogEntry::Record { .. } => entry
                    .record()
                    .and_then(Result::ok)
                    .map(|record| Shown::Record(Box::new(record)))
                    .unwrap_or(Shown::Malformed),
                LogEntry::Pruned { leaf, .. } => Shown::Pruned(leaf),
            })
        }
        Log::Remote(client) => {
            let entry = client
                .get_record(api::GetRecordRequest {
                    key: Some(api::get_record_request::Key::Sequence(sequence)),
                })
                .await
                .map_err(remote_failure)?
                .into_inner();
            match entry.entry {
                Some(api::log_entry::Entry::Record(record)) => Some(
                    store::from_message(record)
                        .map(|record| Shown::Record(Box::new(record)))
                        .unwrap_or(Shown::Malformed),
                ),
                Some(api::log_entry::Entry::PrunedLeaf(bytes)) => {
                    LeafData::parse(&bytes).map(Shown::Pruned)
                }
                None => None,
            }
        }
    };
    match entry {
        Some(Shown::Record(record)) => print_json(&record),
        Some(Shown::Pruned(leaf)) => {
            println!(
                "record {sequence} was pruned (recorded {}, {}); its Merkle leaf is kept: {}",
                format_time(crate::clock::from_unix_millis(leaf.recorded_at_ms)),
                if leaf.issued { "issued" } else { "denied" },
                hex(&leaf.to_bytes())
            );
            Ok(())
        }
        Some(Shown::Malformed) => Err(Failure::runtime(format!("record {sequence} is malformed"))),
        None => Err(Failure::runtime(format!("no record {sequence}"))),
    }
}

enum Shown {
    Record(Box<Record>),
    Pruned(LeafData),
    Malformed,
}

async fn watch(args: WatchArgs) -> Result<(), Failure> {
    let query = args.filter.query(SystemTime::now())?;
    let mut log = Log::open(&args.source).await?;
    let Log::Remote(client) = &mut log else {
        return Err(Failure::usage(
            "watch follows a running server: give --addr (or start the server)",
        ));
    };
    let from = match args.from {
        Some(from) => from,
        None => {
            let stats = client
                .get_stats(api::GetStatsRequest {})
                .await
                .map_err(remote_failure)?
                .into_inner();
            stats.appended + 1
        }
    };
    let mut stream = client
        .watch_records(api::WatchRecordsRequest {
            from_sequence: from,
            filter: (!query.is_unfiltered()).then(|| filter_from_query(&query)),
            ..Default::default()
        })
        .await
        .map_err(remote_failure)?
        .into_inner();
    let mut printer = Printer::new(args.format);
    printer.json_lines = true;
    while let Some(entry) = stream.message().await.map_err(remote_failure)? {
        if let Some(api::log_entry::Entry::Record(record)) = entry.entry {
            if let Some(record) = store::from_message(record) {
                printer.record(&record, None)?;
                printer.flush()?;
            }
        }
    }
    printer.finish()
}

/// The verifier key: from a file, else derived from the config's audit key.
fn load_verifier(path: Option<&Path>, config: &Path) -> Result<Option<AuditVerifier>, Failure> {
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        return AuditVerifier::parse(&text)
            .map(Some)
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())));
    }
    let Ok(config) = Config::load(config) else {
        return Ok(None);
    };
    let Some(key) = &config.audit.key else {
        return Ok(None);
    };
    use rustls_pki_types::pem::PemObject as _;
    let pem = std::fs::read(key).map_err(|e| Failure::usage(format!("{}: {e}", key.display())))?;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem)
        .map_err(|_| Failure::usage(format!("{}: not a PKCS#8 key", key.display())))?;
    let signer = AuditSigner::from_pkcs8(&config.audit.key_name, der.secret_pkcs8_der())
        .map_err(|e| Failure::usage(format!("{}: {e}", key.display())))?;
    Ok(Some(signer.verifier()))
}

async fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let verifier = load_verifier(args.verifier_key.as_deref(), &args.source.config)?;
    let mut external = Vec::new();
    for path in &args.checkpoints {
        let note = std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        external.push((path.display().to_string(), note));
    }
    let started = std::time::Instant::now();
    let mut log = Log::open(&args.source).await?;
    let report = match &mut log {
        Log::Store(store) => {
            let store = store.clone();
            blocking(move || {
                store
                    .verify(verifier.as_ref(), &external, SystemTime::now())
                    .map_err(|e| e.to_string())
            })
            .await?
        }
        Log::Remote(client) => {
            // The server only supplies the entries: the tree is recomputed here.
            let checkpoint = client
                .get_checkpoint(api::GetCheckpointRequest::default())
                .await
                .map(|r| r.into_inner())
                .ok();
            let stats = client
                .get_stats(api::GetStatsRequest {})
                .await
                .map_err(remote_failure)?
                .into_inner();
            let mut checker = LogVerifier::new(SystemTime::now());
            let mut notes: Vec<(String, String)> = external;
            if let Some(checkpoint) = &checkpoint {
                notes.push(("latest (from the server)".into(), checkpoint.note.clone()));
            }
            expect_all(&mut checker, verifier.as_ref(), &notes);
            let to = stats.appended;
            log.stream_entries(1, to, &mut |sequence, entry| {
                checker.push(sequence, entry);
            })
            .await?;
            checker.finish()
        }
    };
    print_report(&report, started.elapsed(), args.json)?;
    if report.ok() {
        Ok(())
    } else {
        Err(Failure::runtime(format!(
            "the log does NOT verify: {} problem(s)",
            report.problem_count
        )))
    }
}

/// Adds checkpoints to check: signature first (with a verifier), then the root.
fn expect_all(
    checker: &mut LogVerifier,
    verifier: Option<&AuditVerifier>,
    notes: &[(String, String)],
) {
    if verifier.is_none() {
        checker.warn("no audit verifier key: checkpoint signatures were not checked");
    }
    for (label, note) in notes {
        let checkpoint = match verifier {
            Some(verifier) => verifier.open_checkpoint(note).map_err(|e| e.to_string()),
            None => Checkpoint::parse_unverified(note).ok_or_else(|| "malformed".to_owned()),
        };
        match checkpoint {
            Ok(checkpoint) => checker.expect(checkpoint.size, checkpoint.root, label.clone()),
            Err(error) => checker.problem(format!("checkpoint {label}: {error}")),
        }
    }
}

fn print_report(
    report: &VerifyReport,
    elapsed: std::time::Duration,
    json: bool,
) -> Result<(), Failure> {
    if json {
        return print_json(report);
    }
    let rate = report.entries as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "entries: {} ({} pruned), tree size {}, root {}",
        report.entries,
        report.pruned,
        report.tree_size,
        hex(&report.root)
    );
    for checkpoint in &report.checkpoints {
        println!(
            "checkpoint {} (size {}): {}",
            checkpoint.source,
            checkpoint.size,
            if checkpoint.matched {
                "matches"
            } else {
                "DOES NOT MATCH"
            }
        );
    }
    if report.uncovered > 0 {
        println!(
            "{} record(s) after the latest matching checkpoint are not covered by a signature yet",
            report.uncovered
        );
    }
    for warning in &report.warnings {
        println!("warning: {warning}");
    }
    for problem in &report.problems {
        println!("PROBLEM: {problem}");
    }
    if report.problem_count > report.problems.len() as u64 {
        println!(
            "... and {} more problem(s)",
            report.problem_count - report.problems.len() as u64
        );
    }
    println!(
        "{} in {:.2}s ({:.0} entries/s)",
        if report.ok() { "OK" } else { "FAILED" },
        elapsed.as_secs_f64(),
        rate
    );
    Ok(())
}

async fn prove(args: ProveArgs) -> Result<(), Failure> {
    let mut log = Log::open(&args.source).await?;
    let sequence = log.locate(args.sequence, &args.serial).await?;
    let document = match &mut log {
        Log::Store(store) => {
            let store = store.clone();
            blocking(move || {
                let (size, note) = store
                    .latest_checkpoint()
                    .map_err(|e| e.to_string())?
                    .ok_or("no checkpoint has been written yet")?;
                if sequence > size {
                    return Err(format!(
                        "record {sequence} is newer than the latest checkpoint ({size} records)"
                    ));
                }
                let proof = store
                    .prove_inclusion(sequence, size)
                    .map_err(|e| e.to_string())?;
                Ok(ProofDocument {
                    format: PROOF_FORMAT.into(),
                    sequence,
                    leaf_index: proof.leaf_index,
                    tree_size: proof.tree_size,
                    leaf_data: hex(&proof.leaf.to_bytes()),
                    record: proof.record.map(|r| BASE64.encode(r)),
                    audit_path: proof.path.iter().map(|h| hex(h)).collect(),
                    checkpoint: note,
                })
            })
            .await?
        }
        Log::Remote(client) => {
            let proof = client
                .prove_inclusion(api::ProveInclusionRequest {
                    key: Some(api::prove_inclusion_request::Key::Sequence(sequence)),
                    tree_size: 0,
                })
                .await
                .map_err(remote_failure)?
                .into_inner();
            ProofDocument {
                format: PROOF_FORMAT.into(),
                sequence,
                leaf_index: proof.leaf_index,
                tree_size: proof.tree_size,
                leaf_data: hex(&proof.leaf_data),
                record: (!proof.record.is_empty()).then(|| BASE64.encode(&proof.record)),
                audit_path: proof.audit_path.iter().map(|h| hex(h)).collect(),
                checkpoint: proof.checkpoint_note,
            }
        }
    };
    let json =
        serde_json::to_string_pretty(&document).map_err(|e| Failure::runtime(e.to_string()))?;
    match &args.out {
        Some(path) => std::fs::write(path, format!("{json}\n"))
            .map_err(|e| Failure::runtime(format!("{}: {e}", path.display()))),
        None => {
            println!("{json}");
            Ok(())
        }
    }
}

fn check_proof(args: CheckProofArgs) -> Result<(), Failure> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
    };
    let document: ProofDocument = serde_json::from_str(&read(&args.proof)?)
        .map_err(|e| Failure::usage(format!("{}: not a proof: {e}", args.proof.display())))?;
    let verifier = AuditVerifier::parse(&read(&args.verifier_key)?)
        .map_err(|e| Failure::usage(format!("{}: {e}", args.verifier_key.display())))?;
    let outcome = check_inclusion(
        &document,
        &verifier,
        args.checkpoint.as_deref().map(read).transpose()?.as_deref(),
    );
    match outcome {
        Ok(proven) => {
            println!("OK: {}", describe(&proven));
            Ok(())
        }
        Err(reason) => Err(Failure::runtime(format!(
            "the proof does NOT hold: {reason}"
        ))),
    }
}

/// What a proof that holds proves, for a person.
fn describe(proven: &ProvenInclusion) -> String {
    let mut described = format!(
        "record {} ({}, recorded {})",
        proven.sequence,
        if proven.issued { "issued" } else { "denied" },
        format_time(proven.recorded_at)
    );
    if let Some(Outcome::Issued(issued)) = proven
        .record
        .as_deref()
        .and_then(store::decode)
        .map(|record| record.outcome)
    {
        described = format!(
            "{described}: {} serial {}",
            issued.spiffe_id,
            hex(&issued.serial)
        );
    }
    format!(
        "{described} is in the log {} of {} records (root {})",
        proven.origin,
        proven.tree_size,
        hex(&proven.root)
    )
}

async fn stats(args: StatsArgs) -> Result<(), Failure> {
    let mut log = Log::open(&args.source).await?;
    let stats = match &mut log {
        Log::Store(store) => {
            let store = store.clone();
            blocking(move || store.stats().map_err(|e| e.to_string())).await?
        }
        Log::Remote(client) => {
            let s = client
                .get_stats(api::GetStatsRequest {})
                .await
                .map_err(remote_failure)?
                .into_inner();
            Stats {
                appended: s.appended,
                records: s.records,
                pruned: s.pruned,
                oldest_sequence: s.oldest_sequence,
                oldest_recorded_at: s.oldest_recorded_at_ms.map(crate::clock::from_unix_millis),
                newest_recorded_at: s.newest_recorded_at_ms.map(crate::clock::from_unix_millis),
                index_runs: s.index_runs as usize,
                index_tail_records: s.index_tail_records,
                checkpoints: s.checkpoints as usize,
                latest_checkpoint_size: s.latest_checkpoint_size,
                disk_bytes: s.disk_bytes,
            }
        }
    };
    if args.json {
        return print_json(&stats);
    }
    let time = |t: Option<SystemTime>| {
        t.map(crate::clock::format_time)
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "records:            {} ({} appended, {} pruned)",
        stats.records, stats.appended, stats.pruned
    );
    println!(
        "oldest record:      {} (recorded {})",
        stats
            .oldest_sequence
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
        time(stats.oldest_recorded_at)
    );
    println!(
        "newest record:      recorded {}",
        time(stats.newest_recorded_at)
    );
    println!(
        "checkpoints:        {} (latest covers {})",
        stats.checkpoints,
        stats
            .latest_checkpoint_size
            .map(|s| format!("{s} records"))
            .unwrap_or_else(|| "nothing yet".into())
    );
    println!(
        "index:              {} run(s) on disk, {} record(s) in memory",
        stats.index_runs, stats.index_tail_records
    );
    println!(
        "disk:               {:.1} MiB",
        stats.disk_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}

fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), Failure> {
    let json = serde_json::to_string_pretty(value).map_err(|e| Failure::runtime(e.to_string()))?;
    println!("{json}");
    Ok(())
}

/// Writes records as a table, a JSON array (or JSON lines), or CSV.
struct Printer {
    format: Format,
    json_lines: bool,
    /// Records come from several replicas: say which.
    replicas: bool,
    started: bool,
    out: std::io::BufWriter<std::io::Stdout>,
}

const CSV_COLUMNS: &str = "sequence,recorded_at,outcome,reason,serial,spiffe_id,requested_spiffe_id,mesh,trust_domain,namespace,service_account,not_before,not_after,caller,authenticator,cluster_id,pod,peer,request_id";

impl Printer {
    fn new(format: Format) -> Self {
        Self {
            format,
            json_lines: false,
            replicas: false,
            started: false,
            out: std::io::BufWriter::new(std::io::stdout()),
        }
    }

    fn record(&mut self, record: &Record, replica: Option<&str>) -> Result<(), Failure> {
        let first = !self.started;
        self.started = true;
        let replicas = self.replicas;
        let out = &mut self.out;
        if replicas && self.format == Format::Table {
            if first {
                let _ = write!(out, "{:<22}  ", "REPLICA");
            } else {
                let _ = write!(out, "{:<22}  ", replica.unwrap_or_default());
            }
        }
        let json = |pretty: bool| {
            let mut value =
                serde_json::to_value(record).map_err(|e| Failure::runtime(e.to_string()))?;
            if let (Some(replica), Some(object)) = (replica, value.as_object_mut()) {
                object.insert("replica".to_owned(), replica.into());
            }
            if pretty {
                serde_json::to_string_pretty(&value)
            } else {
                serde_json::to_string(&value)
            }
            .map_err(|e| Failure::runtime(e.to_string()))
        };
        let result = match self.format {
            Format::Table => {
                if first {
                    let _ = writeln!(
                        out,
                        "{:>8}  {:<24}  {:<7}  {:<32}  {:<55}  CALLER",
                        "SEQ", "RECORDED", "OUTCOME", "SERIAL / REASON", "SPIFFE ID"
                    );
                    if replicas {
                        let _ = write!(out, "{:<22}  ", replica.unwrap_or_default());
                    }
                }
                let (outcome, detail, identity) = match &record.outcome {
                    Outcome::Issued(issued) => (
                        "issued",
                        hex(&issued.serial),
                        if issued.spiffe_id.is_empty() {
                            format!("dns:{}", issued.dns_names.join(","))
                        } else {
                            issued.spiffe_id.clone()
                        },
                    ),
                    Outcome::Denied(denied) => (
                        "denied",
                        denied.reason.clone(),
                        denied.requested_spiffe_id.clone(),
                    ),
                };
                let caller = &record.caller;
                let who = if caller.subject.is_empty() {
                    format!("peer={}", caller.peer_address)
                } else {
                    format!("{} ({})", caller.subject, caller.authenticator)
                };
                writeln!(
                    out,
                    "{:>8}  {:<24}  {:<7}  {:<32}  {:<55}  {}",
                    record.sequence,
                    format_time(record.recorded_at),
                    outcome,
                    detail,
                    identity,
                    who
                )
            }
            Format::Json if self.json_lines => writeln!(out, "{}", json(false)?),
            Format::Json => writeln!(out, "{}{}", if first { "[\n" } else { ",\n" }, json(true)?),
            Format::Csv => {
                if first {
                    let _ = writeln!(
                        out,
                        "{CSV_COLUMNS}{}",
                        if replicas { ",replica" } else { "" }
                    );
                }
                match replica {
                    Some(replica) => writeln!(out, "{},{replica}", csv_row(record)),
                    None => writeln!(out, "{}", csv_row(record)),
                }
            }
        };
        result.map_err(|e| Failure::runtime(e.to_string()))
    }

    fn flush(&mut self) -> Result<(), Failure> {
        self.out
            .flush()
            .map_err(|e| Failure::runtime(e.to_string()))
    }

    fn finish(mut self) -> Result<(), Failure> {
        if self.format == Format::Json && !self.json_lines {
            let closing = if self.started { "]" } else { "[]" };
            writeln!(self.out, "{closing}").map_err(|e| Failure::runtime(e.to_string()))?;
        }
        if self.format == Format::Csv && !self.started {
            writeln!(self.out, "{CSV_COLUMNS}").map_err(|e| Failure::runtime(e.to_string()))?;
        }
        self.flush()
    }
}

fn csv_row(record: &Record) -> String {
    let caller = &record.caller;
    let time = |t: SystemTime| format_time(t);
    let (outcome, reason, serial, id, requested, mesh, td, ns, sa, nb, na) = match &record.outcome {
        Outcome::Issued(i) => (
            "issued",
            String::new(),
            hex(&i.serial),
            i.spiffe_id.clone(),
            i.requested_spiffe_id.clone(),
            i.mesh.clone(),
            i.trust_domain.clone(),
            i.namespace.clone(),
            i.service_account.clone(),
            time(i.not_before),
            time(i.not_after),
        ),
        Outcome::Denied(d) => (
            "denied",
            d.reason.clone(),
            String::new(),
            String::new(),
            d.requested_spiffe_id.clone(),
            d.mesh.clone(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ),
    };
    [
        record.sequence.to_string(),
        time(record.recorded_at),
        outcome.to_owned(),
        reason,
        serial,
        id,
        requested,
        mesh,
        td,
        ns,
        sa,
        nb,
        na,
        caller.subject.clone(),
        caller.authenticator.clone(),
        caller.cluster_id.clone(),
        caller.pod_name.clone(),
        caller.peer_address.clone(),
        record.request_id.clone(),
    ]
    .iter()
    .map(|field| csv_field(field))
    .collect::<Vec<_>>()
    .join(",")
}

/// RFC 4180 quoting; a leading formula character is defused for spreadsheet imports.
fn csv_field(value: &str) -> String {
    let defused = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
    }
}
