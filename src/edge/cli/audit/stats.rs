//! `audit stats`: what the log holds and how it is stored.

use std::time::SystemTime;

use crate::adapters::store::Stats;
use crate::edge::cli::failure::Failure;
use crate::pb::audit as api;

use super::args::*;
use super::output::*;
use super::source::*;

pub(super) async fn stats(args: StatsArgs) -> Result<(), Failure> {
    let mut log = Log::open(&args.source).await?;
    let mut members: Vec<(String, Stats)> = Vec::new();
    let stats = match &mut log {
        Log::Store(store) => {
            let store = store.clone();
            blocking(move || store.stats().map_err(|e| e.to_string())).await?
        }
        Log::Remote(client) => {
            let scope = client.scope();
            let s = client
                .get_stats(api::GetStatsRequest { scope })
                .await
                .map_err(remote_failure)?
                .into_inner();
            client.note(s.replicas.as_ref());
            members = s
                .members
                .iter()
                .filter_map(|m| Some((m.member.clone(), stats_of(m.stats.as_ref()?))))
                .collect();
            stats_of(&s)
        }
    };
    let missing = log.missing();
    if args.json {
        if members.is_empty() && missing.is_empty() {
            print_json(&stats)?;
        } else {
            print_json(&serde_json::json!({
                "cluster": stats,
                "members": members
                    .iter()
                    .map(|(member, stats)| serde_json::json!({ "member": member, "stats": stats }))
                    .collect::<Vec<_>>(),
                "complete": missing.is_empty(),
                "missing": missing_json(&missing),
            }))?;
        }
        return log.finish(args.source.allow_incomplete);
    }
    if !members.is_empty() {
        println!("cluster of {} member(s) answering:", members.len());
        for (member, stats) in &members {
            println!(
                "  {member}: {} records ({} appended), latest checkpoint covers {}",
                stats.records,
                stats.appended,
                stats
                    .latest_checkpoint_size
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into())
            );
        }
        println!("totals:");
    }
    let time = |t: Option<SystemTime>| {
        t.map(crate::domain::clock::format_time)
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
    log.finish(args.source.allow_incomplete)
}

fn stats_of(s: &api::GetStatsResponse) -> Stats {
    Stats {
        appended: s.appended,
        records: s.records,
        pruned: s.pruned,
        oldest_sequence: s.oldest_sequence,
        oldest_recorded_at: s
            .oldest_recorded_at_ms
            .map(crate::domain::clock::from_unix_millis),
        newest_recorded_at: s
            .newest_recorded_at_ms
            .map(crate::domain::clock::from_unix_millis),
        index_runs: s.index_runs as usize,
        index_tail_records: s.index_tail_records,
        checkpoints: s.checkpoints as usize,
        latest_checkpoint_size: s.latest_checkpoint_size,
        disk_bytes: s.disk_bytes,
    }
}

/// Missing members as JSON: `[{"member": …, "reason": …}]`.
pub(super) fn missing_json(missing: &[(String, String)]) -> serde_json::Value {
    missing
        .iter()
        .map(|(member, reason)| serde_json::json!({ "member": member, "reason": reason }))
        .collect()
}
