//! The record store's capacity: the start-up check that retention fits the volume at the recent
//! rate, and the hourly warning when the volume is forecast full within two weeks (the metrics
//! are in `monitoring.rs`, the status page's panel in `status_page`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::adapters::config::Config;
use crate::adapters::store::SledStore;
use crate::domain::capacity::{human_bytes, CapacityPolicy, Forecast};
use crate::domain::clock::Clock;

use super::background::sleep_until;

const CHECK_EVERY: Duration = Duration::from_secs(3_600);

/// What the forecast assumes: records kept for retention after expiry plus the longest
/// certificate lifetime, within `[audit] volume_bytes` if set.
pub(crate) fn policy(config: &Config) -> CapacityPolicy {
    let longest = config
        .meshes
        .iter()
        .map(|mesh| mesh.max_ttl)
        .max()
        .unwrap_or_default();
    CapacityPolicy {
        window: config.audit.retention.issued_after_expiry + longest,
        volume_bytes: config.audit.volume_bytes,
    }
}

/// Logs what is wrong with the store's capacity as of the clock's now; returns whether it
/// warned.
pub(crate) fn check(
    store: &SledStore,
    policy: CapacityPolicy,
    clock: &dyn Clock,
    at_start: bool,
) -> bool {
    let window = policy.window;
    let usage = match store.usage(clock.now()) {
        Ok(usage) => usage.within(policy.volume_bytes),
        Err(error) => {
            tracing::warn!(%error, "the record store's size could not be measured");
            return false;
        }
    };
    let forecast = Forecast::of(&usage, window);
    let mut warned = false;
    if at_start {
        tracing::info!(
            records = usage.records,
            bytes = usage.store_bytes,
            bytes_per_record = forecast.bytes_per_record as u64,
            records_per_day = forecast.records_per_day as u64,
            volume_free = usage.volume_free_bytes,
            retention_days = window.as_secs() / 86_400,
            full_in_days = forecast
                .full_in
                .map(|left| format!("{:.1}", left.as_secs_f64() / 86_400.0))
                .unwrap_or_else(|| "never (pruning keeps up)".into()),
            "record store capacity"
        );
        if let Some(misfit) = forecast.retention_misfit(&usage, window) {
            tracing::warn!(
                records_per_day = forecast.records_per_day as u64,
                "{misfit}"
            );
            warned = true;
        }
    }
    if let (true, Some(left)) = (forecast.alarming(), forecast.full_in) {
        tracing::warn!(
            full_in_days = format!("{:.1}", left.as_secs_f64() / 86_400.0),
            free = human_bytes(usage.volume_free_bytes as f64),
            records_per_day = forecast.records_per_day as u64,
            bytes_per_record = forecast.bytes_per_record as u64,
            "the record store's volume is forecast full within 14 days at the last day's rate; \
             issuance stops when it is (grow the volume or shorten [audit] issued_retention)"
        );
        warned = true;
    }
    warned
}

/// Checks at start, then every hour of `clock`.
pub(crate) async fn watch(
    store: Arc<SledStore>,
    policy: CapacityPolicy,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut at_start = true;
    loop {
        let (pass_store, pass_clock) = (store.clone(), clock.clone());
        let _ = tokio::task::spawn_blocking(move || {
            check(&pass_store, policy, pass_clock.as_ref(), at_start)
        })
        .await;
        at_start = false;
        let next = clock.now() + CHECK_EVERY;
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = sleep_until(clock.as_ref(), next) => {}
        }
    }
}
