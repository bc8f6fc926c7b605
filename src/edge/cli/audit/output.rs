//! Printing records: a table, JSON lines or CSV.

use std::io::Write as _;
use std::time::SystemTime;

use serde::Serialize;

use crate::domain::clock::format_time;
use crate::domain::digest::hex;
use crate::domain::record::{Outcome, Record};
use crate::edge::cli::failure::Failure;

use super::args::*;

pub(super) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), Failure> {
    let json = serde_json::to_string_pretty(value).map_err(|e| Failure::runtime(e.to_string()))?;
    println!("{json}");
    Ok(())
}

/// Writes records as a table, a JSON array (or JSON lines), or CSV.
pub(super) struct Printer {
    pub(super) format: Format,
    pub(super) json_lines: bool,
    /// Records come from several replicas: say which.
    pub(super) replicas: bool,
    pub(super) started: bool,
    pub(super) out: std::io::BufWriter<std::io::Stdout>,
}

pub(super) const CSV_COLUMNS: &str = "sequence,recorded_at,outcome,reason,serial,spiffe_id,requested_spiffe_id,mesh,trust_domain,namespace,service_account,not_before,not_after,caller,authenticator,cluster_id,pod,peer,request_id";

impl Printer {
    pub(super) fn new(format: Format) -> Self {
        Self {
            format,
            json_lines: false,
            replicas: false,
            started: false,
            out: std::io::BufWriter::new(std::io::stdout()),
        }
    }

    pub(super) fn record(&mut self, record: &Record, replica: Option<&str>) -> Result<(), Failure> {
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
                        if let Some(ca) = &issued.ca {
                            // A cluster's istiod intermediate: whose, and the root it chains to.
                            let root = hex(&ca.root_sha256);
                            format!("ca:{} root:{}", ca.cluster, root.get(..16).unwrap_or(&root))
                        } else if issued.spiffe_id.is_empty() {
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
                    Outcome::Revoked(revoked) => (
                        "revoked",
                        revocation_summary(revoked),
                        revoked.selector.clone(),
                    ),
                    Outcome::Federated(federated) => (
                        "federated",
                        federation_summary(federated),
                        format!("{} <- {}", federated.mesh, federated.trust_domain),
                    ),
                    Outcome::CaKey(ca_key) => (
                        "ca-key",
                        format!("{} {} {}", ca_key.event, ca_key.role, hex(&ca_key.serial)),
                        format!("{} key: {}", ca_key.subject, ca_key.key),
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

    pub(super) fn flush(&mut self) -> Result<(), Failure> {
        self.out
            .flush()
            .map_err(|e| Failure::runtime(e.to_string()))
    }

    pub(super) fn finish(mut self) -> Result<(), Failure> {
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

/// A revocation in the table's reason column: how many certificates, and why.
fn revocation_summary(revoked: &crate::domain::record::RevocationRecord) -> String {
    let reason = match revoked.reason.as_str() {
        "" => "unspecified",
        reason => reason,
    };
    match (revoked.certificates.len(), revoked.unblocked.len()) {
        (0, lifted) if lifted > 0 => format!("unblocked {lifted}"),
        (n, _) => format!("{n} cert(s), {reason}"),
    }
}

fn federation_summary(federated: &crate::domain::record::FederationRecord) -> String {
    format!(
        "seq {} {} root(s) +{} -{}{}",
        federated.sequence,
        federated.authorities_sha256.len(),
        federated.added_sha256.len(),
        federated.removed_sha256.len(),
        if federated.unprotected {
            " unprotected"
        } else {
            ""
        }
    )
}

pub(super) fn csv_row(record: &Record) -> String {
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
        Outcome::Revoked(r) => (
            "revoked",
            r.reason.clone(),
            r.certificates
                .iter()
                .map(|c| hex(&c.serial))
                .collect::<Vec<_>>()
                .join(" "),
            r.blocked.join(" "),
            r.selector.clone(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ),
        Outcome::Federated(f) => (
            "federated",
            federation_summary(f),
            String::new(),
            String::new(),
            f.bundle_url.clone(),
            f.mesh.clone(),
            f.trust_domain.clone(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ),
        Outcome::CaKey(c) => (
            "ca-key",
            format!("{} {}", c.event, c.role),
            hex(&c.serial),
            c.subject.clone(),
            c.key.to_string(),
            c.mesh.clone(),
            String::new(),
            String::new(),
            String::new(),
            time(crate::domain::clock::from_unix_seconds(c.not_before)),
            time(crate::domain::clock::from_unix_seconds(c.not_after)),
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
pub(super) fn csv_field(value: &str) -> String {
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
