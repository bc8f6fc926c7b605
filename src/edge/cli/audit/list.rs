//! `audit list`, `show`, `watch` and `export`: records by filter, across replicas when asked.

use std::time::SystemTime;

use crate::adapters::store::LogEntry;
use crate::domain::audit::{LeafData, OutcomeFilter, Query};
use crate::domain::clock::format_time;
use crate::domain::digest::hex;
use crate::domain::record::{Outcome, Record};
use crate::edge::cli::failure::Failure;
use crate::edge::grpc::wire::filter_from_query;
use crate::pb::audit as api;

use super::args::*;
use super::output::*;
use super::source::*;

pub(super) async fn list(args: ListArgs) -> Result<(), Failure> {
    let query = args.filter.query(SystemTime::now())?;
    if let Some(addr) = &args.source.addr {
        let replicas = replica_addresses(addr).await?;
        if replicas.len() > 1 {
            return list_replicas(&args, &query, replicas).await;
        }
    }
    let mut log = Log::open(&args.source).await?;
    let allow = args.source.allow_incomplete;
    if args.count {
        let count = log.count(&query).await?;
        let missing = log.missing();
        if args.format == Format::Json {
            print_json(&serde_json::json!({
                "count": count,
                "complete": missing.is_empty(),
                "missing": super::stats::missing_json(&missing),
            }))?;
        } else {
            println!("{count}");
        }
        return log.finish(allow);
    }
    let size = args.limit.clamp(1, crate::domain::audit::MAX_PAGE_SIZE);
    let mut token = args.page_token.clone();
    let mut printer = Printer::new(args.format);
    loop {
        let (records, next) = log.labelled_page(&query, size, token).await?;
        for (record, member) in &records {
            printer.replicas |= !member.is_empty();
            printer.record(record, Some(member.as_str()).filter(|m| !m.is_empty()))?;
        }
        match next {
            Some(next) if args.all => token = Some(next),
            Some(next) => {
                printer.finish()?;
                eprintln!("more records: --page-token {next}");
                return log.finish(allow);
            }
            None => {
                printer.finish()?;
                return log.finish(allow);
            }
        }
    }
}

/// Every address `addr` names: a comma-separated list, each an address or a name resolved to
/// all its addresses (a headless Service resolves to one per ready replica).
pub(super) async fn replica_addresses(addr: &str) -> Result<Vec<String>, Failure> {
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
pub(super) struct Replica {
    address: String,
    log: Log,
    buffer: std::collections::VecDeque<Record>,
    next: Option<String>,
    exhausted: bool,
}

impl Replica {
    /// Fills the buffer from the next page if it is empty and there is more.
    pub(super) async fn refill(&mut self, query: &Query, size: usize) -> Result<(), Failure> {
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
pub(super) async fn list_replicas(
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
        let mut log = Log::connect(&address, &args.source).await?;
        // Each address answers for its own log (with [replicas] one address answers for all).
        if let Log::Remote(remote) = &mut log {
            remote.set_local();
        }
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
    let size = args.limit.clamp(1, crate::domain::audit::MAX_PAGE_SIZE);
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

pub(super) async fn export(args: ExportArgs) -> Result<(), Failure> {
    let query = args.filter.query(SystemTime::now())?;
    let mut log = Log::open(&args.source).await?;
    let mut printer = Printer::new(match args.format {
        ExportFormat::Json => Format::Json,
        ExportFormat::Csv => Format::Csv,
    });
    printer.json_lines = true;
    let mut token = None;
    loop {
        let (records, next) = log
            .labelled_page(&query, crate::domain::audit::MAX_PAGE_SIZE, token)
            .await?;
        for (record, member) in &records {
            printer.replicas |= !member.is_empty();
            printer.record(record, Some(member.as_str()).filter(|m| !m.is_empty()))?;
        }
        match next {
            Some(next) => token = Some(next),
            None => {
                printer.finish()?;
                return log.finish(args.source.allow_incomplete);
            }
        }
    }
}

pub(super) async fn show(args: ShowArgs) -> Result<(), Failure> {
    let mut log = Log::open(&args.source).await?;
    let mut member = String::new();
    let (sequence, entry) = match &mut log {
        Log::Store(store) => {
            let sequence = match (args.sequence, &args.serial) {
                (Some(sequence), _) => sequence,
                (None, serial) => Log::Store(store.clone()).locate(None, serial).await?,
            };
            let store = store.clone();
            let entry = blocking(move || {
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
            });
            (sequence, entry)
        }
        Log::Remote(client) => {
            // By serial the server finds the member whose log holds it; a sequence number
            // is the asked replica's, or --replica's.
            let key = match (&args.serial, args.sequence) {
                (Some(serial), _) => api::get_record_request::Key::Serial(parse_serial(serial)?),
                (None, sequence) => api::get_record_request::Key::Sequence(sequence.unwrap_or(0)),
            };
            let scope = client.scope();
            let entry = client
                .get_record(api::GetRecordRequest {
                    key: Some(key),
                    scope,
                })
                .await
                .map_err(remote_failure)?
                .into_inner();
            member = entry.member;
            let shown = match entry.entry {
                Some(api::log_entry::Entry::Record(record)) => Some(
                    crate::edge::grpc::record_messages::record_from_message(record)
                        .map(|record| Shown::Record(Box::new(record)))
                        .unwrap_or(Shown::Malformed),
                ),
                Some(api::log_entry::Entry::PrunedLeaf(bytes)) => {
                    LeafData::parse(&bytes).map(Shown::Pruned)
                }
                None => None,
            };
            (entry.sequence, shown)
        }
    };
    match entry {
        Some(Shown::Record(record)) => {
            let mut value =
                serde_json::to_value(&record).map_err(|e| Failure::runtime(e.to_string()))?;
            if let Some(object) = value.as_object_mut() {
                if !member.is_empty() {
                    object.insert("replica".to_owned(), member.into());
                }
                if let Some(serial) = record.serial() {
                    if let Some(revocation) = revocation_of(&mut log, serial).await? {
                        object.insert("revocation".to_owned(), revocation);
                    }
                }
            }
            print_json(&value)?;
            // Whether it was revoked is only known from every member's revocations.
            log.finish(args.source.allow_incomplete)
        }
        Some(Shown::Pruned(leaf)) => {
            println!(
                "record {sequence} was pruned (recorded {}, {}); its Merkle leaf is kept: {}",
                format_time(crate::domain::clock::from_unix_millis(leaf.recorded_at_ms)),
                if leaf.issued { "issued" } else { "denied" },
                hex(&leaf.to_bytes())
            );
            Ok(())
        }
        Some(Shown::Malformed) => Err(Failure::runtime(format!("record {sequence} is malformed"))),
        None => Err(Failure::runtime(format!("no record {sequence}"))),
    }
}

/// The revocation of the certificate with `serial`, if one was recorded (the earliest, in any
/// member's log): when, why, by whom, and which record says so.
async fn revocation_of(log: &mut Log, serial: &[u8]) -> Result<Option<serde_json::Value>, Failure> {
    let query = Query {
        outcome: Some(OutcomeFilter::Revoked),
        ..Query::default()
    };
    let mut token = None;
    let mut found: Option<(Record, String)> = None;
    loop {
        let (page, next) = log
            .labelled_page(&query, crate::domain::audit::MAX_PAGE_SIZE, token)
            .await?;
        for (record, member) in page {
            let Outcome::Revoked(revoked) = &record.outcome else {
                continue;
            };
            let names = revoked.certificates.iter().any(|c| c.serial == serial);
            if names
                && found
                    .as_ref()
                    .is_none_or(|(f, _)| record.recorded_at < f.recorded_at)
            {
                found = Some((record, member));
            }
        }
        match next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    Ok(found.map(|(record, member)| {
        let Outcome::Revoked(revoked) = &record.outcome else {
            return serde_json::Value::Null;
        };
        let mut value = serde_json::json!({
            "revoked_at": format_time(record.recorded_at),
            "reason": revoked.reason,
            "comment": revoked.comment,
            "by": record.caller.subject,
            "record": record.sequence,
        });
        if let (false, Some(object)) = (member.is_empty(), value.as_object_mut()) {
            object.insert("replica".to_owned(), member.into());
        }
        value
    }))
}

pub(super) enum Shown {
    Record(Box<Record>),
    Pruned(LeafData),
    Malformed,
}

pub(super) async fn watch(args: WatchArgs) -> Result<(), Failure> {
    let query = args.filter.query(SystemTime::now())?;
    if query.revoked.is_some() {
        return Err(Failure::usage(
            "--revoked is for list, export and --count: a certificate is revoked after its \
             record was written",
        ));
    }
    let mut log = Log::open(&args.source).await?;
    let Log::Remote(client) = &mut log else {
        return Err(Failure::usage(
            "watch follows a running server: give --addr (or start the server)",
        ));
    };
    let from = match args.from {
        Some(from) => from,
        None => {
            let scope = client.scope();
            let stats = client
                .get_stats(api::GetStatsRequest { scope })
                .await
                .map_err(remote_failure)?
                .into_inner();
            stats.appended + 1
        }
    };
    let scope = client.scope();
    let mut stream = client
        .watch_records(api::WatchRecordsRequest {
            from_sequence: from,
            filter: (!query.is_unfiltered()).then(|| filter_from_query(&query)),
            scope,
            ..Default::default()
        })
        .await
        .map_err(remote_failure)?
        .into_inner();
    let mut printer = Printer::new(args.format);
    printer.json_lines = true;
    while let Some(entry) = stream.message().await.map_err(remote_failure)? {
        if let Some(api::log_entry::Entry::Record(record)) = entry.entry {
            if let Some(record) = crate::edge::grpc::record_messages::record_from_message(record) {
                printer.record(&record, None)?;
                printer.flush()?;
            }
        }
    }
    printer.finish()
}
