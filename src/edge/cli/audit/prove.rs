//! `audit prove` and `audit check-proof`: one record's inclusion proof, written and checked
//! (the checking itself is `audit::proof`).

use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::adapters::store::{self};
use crate::domain::audit::checkpoint::AuditVerifier;
use crate::domain::audit::proof::{check_inclusion, ProofDocument, ProvenInclusion, PROOF_FORMAT};
use crate::domain::clock::format_time;
use crate::domain::digest::hex;
use crate::domain::record::Outcome;
use crate::edge::cli::failure::Failure;
use crate::pb::audit as api;

use super::args::*;
use super::source::*;

pub(super) async fn prove(args: ProveArgs) -> Result<(), Failure> {
    let mut log = Log::open(&args.source).await?;
    // In a cluster, a serial is found on whichever member holds it; the proof is that
    // member's (against its own checkpoint).
    if let (Log::Remote(remote), Some(serial)) = (&mut log, &args.serial) {
        let scope = remote.scope();
        let entry = remote
            .get_record(api::GetRecordRequest {
                key: Some(api::get_record_request::Key::Serial(parse_serial(serial)?)),
                scope,
            })
            .await
            .map_err(remote_failure)?
            .into_inner();
        if !entry.member.is_empty() {
            eprintln!("record {} of member {}", entry.sequence, entry.member);
            remote.set_replica(entry.member);
        }
    }
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
            let scope = client.scope();
            let proof = client
                .prove_inclusion(api::ProveInclusionRequest {
                    key: Some(api::prove_inclusion_request::Key::Sequence(sequence)),
                    tree_size: 0,
                    scope,
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

pub(super) fn check_proof(args: CheckProofArgs) -> Result<(), Failure> {
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
pub(super) fn describe(proven: &ProvenInclusion) -> String {
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
