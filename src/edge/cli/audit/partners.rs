//! `audit partners`: which trust domains each mesh accepts, and the partner bundles the
//! replica holds (sequence, age, the last fetch and its error). From a running server only:
//! fetch state lives in the replica, not in the log (the log holds each change, as
//! `--outcome federated` records).

use std::time::SystemTime;

use crate::domain::clock::format_time;
use crate::edge::cli::failure::Failure;
use crate::pb::audit as api;

use super::args::*;
use super::output::*;
use super::source::*;
use crate::domain::clock::from_unix_millis;

pub(super) async fn partners(args: StatsArgs) -> Result<(), Failure> {
    let mut log = Log::open(&args.source).await?;
    let Log::Remote(client) = &mut log else {
        return Err(Failure::usage(
            "audit partners asks a running server (--addr): what a replica fetched is not in the \
             log; `audit list --outcome federated` reads each recorded change from a store",
        ));
    };
    let answer = client
        .get_federation(api::GetFederationRequest {})
        .await
        .map_err(remote_failure)?
        .into_inner();
    if args.json {
        let meshes: Vec<serde_json::Value> = answer.meshes.iter().map(mesh_json).collect();
        return print_json(&serde_json::json!({ "meshes": meshes }));
    }
    let now = SystemTime::now();
    for mesh in &answer.meshes {
        println!(
            "mesh {} ({}) accepts: {}",
            mesh.mesh,
            mesh.trust_domain,
            if mesh.accepts.is_empty() {
                "its own trust domain only".to_owned()
            } else {
                mesh.accepts.join(", ")
            }
        );
        for partner in &mesh.partners {
            println!(
                "  partner {} <- {}",
                partner.trust_domain, partner.bundle_url
            );
            if partner.held {
                let fetched = from_unix_millis(partner.fetched_at_ms);
                let age = now.duration_since(fetched).unwrap_or_default().as_secs();
                println!(
                    "    held: sequence {}, {} root(s), {} cross-certified{}; fetched {} ({age} s ago)",
                    partner.sequence,
                    partner.authorities,
                    partner.cross_certified,
                    if partner.unprotected {
                        ", published UNPROTECTED"
                    } else {
                        ""
                    },
                    format_time(fetched),
                );
            } else {
                println!("    held: none yet (its chains are refused)");
            }
            if partner.last_attempt_ms != 0 {
                let at = format_time(from_unix_millis(partner.last_attempt_ms));
                match partner.last_error.as_str() {
                    "" => println!("    last fetch: {at}, ok"),
                    error => println!(
                        "    last fetch: {at}, FAILED: {error} ({} failure(s) since the start)",
                        partner.failures
                    ),
                }
            }
        }
    }
    Ok(())
}

fn mesh_json(mesh: &api::MeshFederation) -> serde_json::Value {
    let time = |ms: i64| (ms != 0).then(|| format_time(from_unix_millis(ms)));
    serde_json::json!({
        "mesh": mesh.mesh,
        "trust_domain": mesh.trust_domain,
        "accepts": mesh.accepts,
        "partners": mesh.partners.iter().map(|p| serde_json::json!({
            "trust_domain": p.trust_domain,
            "bundle_url": p.bundle_url,
            "held": p.held.then(|| serde_json::json!({
                "sequence": p.sequence,
                "authorities": p.authorities,
                "cross_certified": p.cross_certified,
                "fetched_at": time(p.fetched_at_ms),
            })),
            "unprotected": p.unprotected,
            "last_attempt": time(p.last_attempt_ms),
            "last_error": (!p.last_error.is_empty()).then_some(&p.last_error),
            "failures": p.failures,
        })).collect::<Vec<_>>(),
    })
}
