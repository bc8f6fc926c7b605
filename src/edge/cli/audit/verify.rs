//! `audit verify`: recompute the log's tree and check it against signed checkpoints.

use std::path::Path;
use std::time::SystemTime;

use crate::adapters::config::Config;
use crate::domain::audit::checkpoint::{AuditVerifier, Checkpoint};
use crate::domain::audit::verify::{LogVerifier, VerifyReport};
use crate::domain::digest::hex;
use crate::edge::cli::failure::Failure;
use crate::pb::audit as api;

use super::args::*;
use super::output::*;
use super::source::*;

/// The verifier key: from a file, else derived from the config's audit key.
pub(super) fn load_verifier(
    path: Option<&Path>,
    config: &Path,
) -> Result<Option<AuditVerifier>, Failure> {
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
    let signer = config
        .audit_signer()
        .map_err(|e| Failure::usage(e.to_string()))?;
    Ok(signer.map(|signer| signer.verifier()))
}

pub(super) async fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let verifier = load_verifier(args.verifier_key.as_deref(), &args.source.config)?;
    let mut external = Vec::new();
    for path in &args.checkpoints {
        let note = std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        external.push((path.display().to_string(), note));
    }
    let started = std::time::Instant::now();
    if let Some(dir) = &args.export {
        let Some(verifier) = verifier else {
            return Err(Failure::usage(
                "verifying an export needs the verifier key: --verifier-key audit-key.pub",
            ));
        };
        let report = verify_export(dir, &verifier, external)?;
        print_report(&report, started.elapsed(), args.json)?;
        return match report.ok() {
            true => Ok(()),
            false => Err(Failure::runtime(format!(
                "the export does NOT verify: {} problem(s)",
                report.problem_count
            ))),
        };
    }
    let mut log = Log::open(&args.source).await?;
    // A cluster: each member's log against that member's own checkpoints.
    if let Log::Remote(remote) = &mut log {
        let members = cluster_members(remote).await?;
        if !members.is_empty() {
            if !external.is_empty() {
                return Err(Failure::usage(
                    "--checkpoint is one member's: name that member with --replica",
                ));
            }
            return verify_members(remote, members, verifier.as_ref(), &args, started).await;
        }
    }
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
        Log::Remote(remote) => verify_remote(remote, verifier.as_ref(), external).await?,
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

/// The members of the server's cluster, when the answer is cluster-wide (no `--replica`).
async fn cluster_members(remote: &mut Remote) -> Result<Vec<String>, Failure> {
    if remote.scope().is_some() {
        return Ok(Vec::new());
    }
    Ok(remote
        .get_replicas(api::GetReplicasRequest {})
        .await
        .map_err(remote_failure)?
        .into_inner()
        .members)
}

/// Verifies every member's log in turn; a member that cannot be read makes the answer
/// incomplete.
async fn verify_members(
    remote: &mut Remote,
    members: Vec<String>,
    verifier: Option<&AuditVerifier>,
    args: &VerifyArgs,
    started: std::time::Instant,
) -> Result<(), Failure> {
    let (mut failed, mut missing, mut reports) = (0, Vec::new(), Vec::new());
    for member in members {
        remote.set_replica(member.clone());
        match verify_remote(remote, verifier, Vec::new()).await {
            Ok(report) => {
                if !report.ok() {
                    failed += 1;
                }
                if !args.json {
                    println!("member {member}:");
                    print_report(&report, started.elapsed(), false)?;
                }
                reports.push(serde_json::json!({ "member": member, "report": report }));
            }
            Err(failure) => missing.push((member, failure.message)),
        }
    }
    if args.json {
        print_json(&serde_json::json!({
            "members": reports,
            "complete": missing.is_empty(),
            "missing": super::stats::missing_json(&missing),
        }))?;
    }
    if failed > 0 {
        return Err(Failure::runtime(format!(
            "{failed} member log(s) do NOT verify"
        )));
    }
    incomplete(&missing, args.source.allow_incomplete)
}

/// Recomputes a running server's tree from its entries (the server only supplies them) and
/// checks it against its latest checkpoint and `external` ones.
async fn verify_remote(
    remote: &mut Remote,
    verifier: Option<&AuditVerifier>,
    external: Vec<(String, String)>,
) -> Result<VerifyReport, Failure> {
    let scope = remote.scope();
    let checkpoint = remote
        .get_checkpoint(api::GetCheckpointRequest {
            scope: scope.clone(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
        .ok();
    let stats = remote
        .get_stats(api::GetStatsRequest { scope })
        .await
        .map_err(remote_failure)?
        .into_inner();
    let mut checker = LogVerifier::new(SystemTime::now());
    let mut notes: Vec<(String, String)> = external;
    if let Some(checkpoint) = &checkpoint {
        notes.push(("latest (from the server)".into(), checkpoint.note.clone()));
    }
    expect_all(&mut checker, verifier, &notes);
    let to = stats.appended;
    remote
        .stream_entries(1, to, &mut |sequence, entry| {
            checker.push(sequence, entry);
        })
        .await?;
    Ok(checker.finish())
}

/// Adds checkpoints to check: signature first (with a verifier), then the root.
pub(super) fn expect_all(
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

pub(super) fn print_report(
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

/// Recomputes the log's tree from an export directory and checks it against the signed
/// checkpoints the export holds (and any the auditor brings).
fn verify_export(
    dir: &Path,
    verifier: &AuditVerifier,
    mut notes: Vec<(String, String)>,
) -> Result<VerifyReport, Failure> {
    // The readable copy must be the decoding of the stored record, field for field.
    let readable = |body: &[u8], json: &str| {
        let decoded =
            crate::adapters::store::decode(body).and_then(|r| serde_json::to_value(r).ok());
        let written = serde_json::from_str::<serde_json::Value>(json).ok();
        decoded.is_some() && decoded == written
    };
    let contents = crate::edge::export::read_dir_checked(dir, &readable)
        .map_err(|e| Failure::usage(format!("{}: {e}", dir.display())))?;
    let mut checker = LogVerifier::new(SystemTime::now());
    if contents.checkpoints.is_empty() {
        checker.problem("the export holds no signed checkpoint: nothing proves it complete");
    }
    notes.extend(
        contents
            .checkpoints
            .iter()
            .enumerate()
            .map(|(index, note)| (format!("export checkpoint {}", index + 1), note.clone())),
    );
    expect_all(&mut checker, Some(verifier), &notes);
    for problem in &contents.problems {
        checker.problem(problem.clone());
    }
    if contents.duplicates > 0 {
        checker.warn(format!(
            "{} lines were exported more than once, identical (at-least-once delivery)",
            contents.duplicates
        ));
    }
    for (sequence, entry) in &contents.entries {
        checker.push(*sequence, entry.as_verify_entry());
    }
    Ok(checker.finish())
}
