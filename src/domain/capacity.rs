//! Whether the record store's volume holds what retention keeps: the forecast behind the
//! store metrics, the status page's warning, the log's warning and the start-up check, and the
//! sizing rule `init`, the chart and `deploy/` follow. Arithmetic on measured inputs only.
//!
//! The store grows by the issuance rate × the bytes each record takes, until the oldest record
//! reaches the retention window; from then on pruning removes about as much as is added, and
//! it stays at its steady size (rate × window × bytes per record). So the volume fills only if
//! it fills before that balance is reached.

use std::time::Duration;

const DAY: f64 = 86_400.0;

/// Under this long to full, the status page and the log warn.
pub const WARN_WITHIN: Duration = Duration::from_secs(14 * 86_400);

/// Disk bytes per record kept, as measured by `cargo bench --bench audit` (layout 3: blocks
/// of 32, zstd): 1,242 at a million records and 1,369 at ten million, rounded up
/// (docs/audit.md, "At scale"). Used
/// below [`MEASURED_FROM`] records, where a store's fixed overhead would dominate its own
/// figure, and by the sizing rule.
pub const BYTES_PER_RECORD: u64 = 1_400;

/// From this many records on, a store's own bytes per record are used.
pub const MEASURED_FROM: u64 = 100_000;

/// Headroom the sizing rule adds over the steady size: sled's log needs free segments to
/// rewrite into, and the rate is not constant.
pub const HEADROOM: f64 = 1.5;

/// What the store and its volume measure now.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StoreUsage {
    /// Bytes of the store's files.
    pub store_bytes: u64,
    /// Records kept.
    pub records: u64,
    /// Records appended in the last `observed` (at most a day).
    pub recent_records: u64,
    /// How long `recent_records` covers: a day, or the store's age if younger (at least an
    /// hour, so a store minutes old does not extrapolate a burst).
    pub observed: Duration,
    /// How old the oldest record kept is.
    pub oldest_age: Duration,
    /// The size of the volume (file system) the store is on, and its free bytes.
    pub volume_bytes: u64,
    pub volume_free_bytes: u64,
}

impl StoreUsage {
    /// The usage within a budget of `volume_bytes` for the store (a disk it shares).
    pub fn within(mut self, volume_bytes: Option<u64>) -> Self {
        if let Some(budget) = volume_bytes {
            self.volume_bytes = self.volume_bytes.min(budget);
            self.volume_free_bytes = self
                .volume_free_bytes
                .min(budget.saturating_sub(self.store_bytes));
        }
        self
    }
}

/// What the forecast assumes: how long records are kept, and the store's budget.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CapacityPolicy {
    /// Retention after expiry plus the longest certificate lifetime.
    pub window: Duration,
    /// `[audit] volume_bytes`, if set.
    pub volume_bytes: Option<u64>,
}

/// The forecast from a [`StoreUsage`] and the retention window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    pub bytes_per_record: f64,
    pub records_per_day: f64,
    /// What retention keeps at this rate, once pruning balances the growth.
    pub steady_bytes: f64,
    /// How long until the volume is full at this rate; `None`: it does not fill.
    pub full_in: Option<Duration>,
}

impl Forecast {
    pub fn of(usage: &StoreUsage, window: Duration) -> Self {
        let bytes_per_record = if usage.records >= MEASURED_FROM {
            usage.store_bytes as f64 / usage.records as f64
        } else {
            BYTES_PER_RECORD as f64
        };
        let observed = usage
            .observed
            .clamp(Duration::from_secs(3_600), Duration::from_secs(86_400));
        let records_per_day = usage.recent_records as f64 * DAY / observed.as_secs_f64();
        let growth_per_day = records_per_day * bytes_per_record;
        let steady_bytes = records_per_day * window.as_secs_f64() / DAY * bytes_per_record;
        let full_in = (growth_per_day > 0.0)
            .then(|| usage.volume_free_bytes as f64 / growth_per_day * DAY)
            // Growth stops when the oldest record reaches the window.
            .filter(|&seconds| seconds < window.saturating_sub(usage.oldest_age).as_secs_f64())
            .map(Duration::from_secs_f64);
        Self {
            bytes_per_record,
            records_per_day,
            steady_bytes,
            full_in,
        }
    }

    /// Whether the time to full is short enough to warn about.
    pub fn alarming(&self) -> bool {
        self.full_in.is_some_and(|left| left < WARN_WITHIN)
    }

    /// A warning if retention, at this rate, keeps more than the volume holds.
    pub fn retention_misfit(&self, usage: &StoreUsage, window: Duration) -> Option<String> {
        // What the store may take: what it has and what is free.
        let room = usage.store_bytes.saturating_add(usage.volume_free_bytes) as f64;
        (self.steady_bytes > room).then(|| {
            format!(
                "retention of {} days at the last day's rate ({:.0} records/day, {:.0} bytes each) \
                 keeps {} but the store's volume has room for {}: grow the volume to {}, \
                 shorten [audit] issued_retention, or keep the long-term archive in the OpenTelemetry \
                 export (docs/audit.md)",
                window.as_secs() / 86_400,
                self.records_per_day,
                self.bytes_per_record,
                human_bytes(self.steady_bytes),
                human_bytes(room),
                human_bytes(volume_for(self.records_per_day, window, self.bytes_per_record)),
            )
        })
    }
}

/// The sizing rule: the volume for `records_per_day` kept for `window` at `bytes_per_record`,
/// with [`HEADROOM`], rounded up to whole GiB (at least 1).
pub fn volume_for(records_per_day: f64, window: Duration, bytes_per_record: f64) -> f64 {
    let steady = records_per_day * window.as_secs_f64() / DAY * bytes_per_record;
    let gib = (steady * HEADROOM / GIB).ceil().max(1.0);
    gib * GIB
}

/// Workloads `init` and the chart size for unless told.
pub const DEFAULT_WORKLOADS: u64 = 2_500;

/// istio-agent's default workload certificate lifetime (`SECRET_TTL`).
pub const ISTIO_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(86_400);

/// The sizing rule for a mesh: the volume for `workloads` renewing certificates of `lifetime`
/// at half-life, their records kept `retention` after expiry, at [`BYTES_PER_RECORD`].
pub fn volume_for_mesh(workloads: u64, lifetime: Duration, retention: Duration) -> f64 {
    volume_for(
        daily_certificates(workloads, lifetime),
        retention + lifetime,
        BYTES_PER_RECORD as f64,
    )
}

/// The sizing rule's answer for `workloads` at the defaults, in words.
pub fn sizing_summary(workloads: u64) -> String {
    let retention = crate::domain::audit::RetentionPolicy::default().issued_after_expiry;
    format!(
        "For {workloads} workloads with 24h certificates renewed at half their life, {} days of \
         records need a volume of {}",
        retention.as_secs() / 86_400,
        human_bytes(volume_for_mesh(
            workloads,
            ISTIO_CERTIFICATE_LIFETIME,
            retention
        ))
    )
}

/// Certificates a day for a mesh of `workloads` proxies with certificates of `lifetime`,
/// renewed at half their life (istio-agent's default grace period).
pub fn daily_certificates(workloads: u64, lifetime: Duration) -> f64 {
    workloads as f64 * DAY / (lifetime.as_secs_f64() / 2.0).max(1.0)
}

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes as MiB or GiB, one decimal.
pub fn human_bytes(bytes: f64) -> String {
    if bytes >= GIB {
        format!("{:.1} GiB", bytes / GIB)
    } else {
        format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAYS: u64 = 86_400;

    fn usage(recent: u64, free_gib: u64) -> StoreUsage {
        StoreUsage {
            store_bytes: 400 * 1_000_000,
            records: 1_000_000,
            recent_records: recent,
            observed: Duration::from_secs(DAYS),
            oldest_age: Duration::from_secs(10 * DAYS),
            volume_bytes: 2 << 30,
            volume_free_bytes: free_gib << 30,
        }
    }

    #[test]
    fn a_volume_fills_at_the_rate_times_bytes_per_record_unless_pruning_balances_first() {
        let window = Duration::from_secs(401 * DAYS);
        // 1 GiB free at 200,000 records a day of 400 bytes: 80 MB a day, 13.4 days.
        let forecast = Forecast::of(&usage(200_000, 1), window);
        assert_eq!(forecast.bytes_per_record, 400.0);
        assert_eq!(forecast.records_per_day, 200_000.0);
        let days = forecast.full_in.unwrap().as_secs_f64() / DAYS as f64;
        assert!((days - 13.42).abs() < 0.01, "{days}");
        assert!(forecast.alarming());
        // A tenth of the rate: 134 days, no warning yet.
        let slow = Forecast::of(&usage(20_000, 1), window);
        assert!(!slow.alarming());
        assert!(slow.full_in.is_some());
        // A window that ends before the volume would fill: it never does.
        let short = Forecast::of(&usage(20_000, 1), Duration::from_secs(30 * DAYS));
        assert_eq!(short.full_in, None);
        // Nothing recorded lately: nothing grows.
        assert_eq!(Forecast::of(&usage(0, 1), window).full_in, None);
        // A budget smaller than the disk: what is left of it is what is free.
        let within = usage(200_000, 1).within(Some(500 << 20));
        assert_eq!(within.volume_bytes, 500 << 20);
        assert_eq!(within.volume_free_bytes, (500 << 20) - 400_000_000);
        assert_eq!(usage(200_000, 1).within(Some(1)).volume_free_bytes, 0);
    }

    #[test]
    fn a_young_store_extrapolates_from_its_age_but_not_from_minutes() {
        let mut young = usage(10_000, 1);
        young.observed = Duration::from_secs(6 * 3_600);
        assert_eq!(
            Forecast::of(&young, Duration::from_secs(DAYS)).records_per_day,
            40_000.0
        );
        young.observed = Duration::from_secs(60);
        assert_eq!(
            Forecast::of(&young, Duration::from_secs(DAYS)).records_per_day,
            240_000.0,
            "an hour at least"
        );
        // A small store uses the measured figure, not its fixed overhead per record.
        young.records = 50;
        young.store_bytes = 2 << 20;
        assert_eq!(
            Forecast::of(&young, Duration::from_secs(DAYS)).bytes_per_record,
            BYTES_PER_RECORD as f64
        );
    }

    #[test]
    fn retention_that_cannot_fit_is_named_with_the_volume_it_needs() {
        let window = Duration::from_secs(401 * DAYS);
        let forecast = Forecast::of(&usage(20_000, 1), window);
        let warning = forecast
            .retention_misfit(&usage(20_000, 1), window)
            .unwrap();
        // 20,000 × 401 × 400 B = 2.99 GiB kept; × 1.5 = 4.5, so 5 GiB.
        assert!(warning.contains("retention of 401 days"), "{warning}");
        assert!(warning.contains("keeps 3.0 GiB"), "{warning}");
        assert!(warning.contains("grow the volume to 5.0 GiB"), "{warning}");
        let fits = Forecast::of(&usage(2_000, 1), window);
        assert_eq!(fits.retention_misfit(&usage(2_000, 1), window), None);
    }

    #[test]
    fn the_sizing_rule_follows_the_mesh() {
        let day = Duration::from_secs(DAYS);
        assert_eq!(daily_certificates(10_000, day), 20_000.0);
        let window = Duration::from_secs(401 * DAYS);
        assert_eq!(volume_for(20_000.0, window, 400.0), 5.0 * GIB);
        assert_eq!(volume_for(5.0, window, 400.0), GIB, "at least 1 GiB");
    }
}
