//! `audit stats`: what the log holds and how it is stored.

use super::*;

pub(super) async fn stats(args: StatsArgs) -> Result<(), Failure> {
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
