//! Token-bucket rate limits per authenticated caller and per namespace of the identity asked
//! for. A caller over its limit gets RESOURCE_EXHAUSTED, which istio-agent and ztunnel retry
//! with backoff; nothing is signed or recorded for it. One misbehaving workload (a crash loop,
//! a stolen token) cannot starve the rest of the mesh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::clock::Clock;

/// Above this many buckets, the full (idle) ones are dropped, so one-off callers do not pile up.
const SWEEP_ABOVE: usize = 10_000;

/// A rate: `per_second` tokens added per second, up to `burst`. Zero rate: no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate {
        per_second: 0.0,
        burst: 0.0,
    };

    fn limited(&self) -> bool {
        self.per_second > 0.0
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Caller,
    Namespace,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Namespace => "namespace",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: SystemTime,
}

/// One family of buckets (per caller, or per namespace).
#[derive(Debug, Default)]
struct Buckets(Mutex<HashMap<String, Bucket>>);

impl Buckets {
    /// Takes one token for `key` at `now`; false when there is none.
    fn take(&self, key: &str, rate: Rate, now: SystemTime) -> bool {
        let mut buckets = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let refill = |bucket: &Bucket| {
            let elapsed = now.duration_since(bucket.at).unwrap_or(Duration::ZERO);
            (bucket.tokens + elapsed.as_secs_f64() * rate.per_second).min(rate.burst)
        };
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, bucket| refill(bucket) < rate.burst);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let tokens = refill(bucket);
        bucket.at = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            true
        } else {
            bucket.tokens = tokens;
            false
        }
    }
}

/// The limits in force and their buckets; shared across reloads (a reload changes the rates,
/// not what callers have used).
pub struct RateLimits {
    rates: Mutex<(Rate, Rate)>,
    callers: Buckets,
    namespaces: Buckets,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("rates", &self.rates())
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    pub fn new(per_caller: Rate, per_namespace: Rate, clock: Arc<dyn Clock>) -> Self {
        Self {
            rates: Mutex::new((per_caller, per_namespace)),
            callers: Buckets::default(),
            namespaces: Buckets::default(),
            clock,
        }
    }

    pub fn unlimited(clock: Arc<dyn Clock>) -> Self {
        Self::new(Rate::UNLIMITED, Rate::UNLIMITED, clock)
    }

    /// New rates (on reload).
    pub fn set_rates(&self, per_caller: Rate, per_namespace: Rate) {
        *self.rates.lock().unwrap_or_else(|p| p.into_inner()) = (per_caller, per_namespace);
    }

    fn rates(&self) -> (Rate, Rate) {
        *self.rates.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One request from `caller` (its mesh and authenticated subject).
    pub fn allow_caller(&self, mesh: &str, subject: &str) -> Result<(), Scope> {
        self.allow(Scope::Caller, mesh, subject)
    }

    /// One request for an identity in `namespace` of `mesh`.
    pub fn allow_namespace(&self, mesh: &str, namespace: &str) -> Result<(), Scope> {
        self.allow(Scope::Namespace, mesh, namespace)
    }

    fn allow(&self, scope: Scope, mesh: &str, name: &str) -> Result<(), Scope> {
        let (per_caller, per_namespace) = self.rates();
        let (buckets, rate) = match scope {
            Scope::Caller => (&self.callers, per_caller),
            Scope::Namespace => (&self.namespaces, per_namespace),
        };
        if !rate.limited() {
            return Ok(());
        }
        let key = format!("{mesh}\u{0}{name}");
        match buckets.take(&key, rate, self.clock.now()) {
            true => Ok(()),
            false => Err(scope),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let clock = ManualClock::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
        let limits = RateLimits::new(
            Rate {
                per_second: 2.0,
                burst: 3.0,
            },
            Rate::UNLIMITED,
            Arc::new(clock.clone()),
        );
        for _ in 0..3 {
            assert_eq!(limits.allow_caller("m", "a"), Ok(()));
        }
        assert_eq!(limits.allow_caller("m", "a"), Err(Scope::Caller));
        // Another caller has its own bucket; namespaces are unlimited here.
        assert_eq!(limits.allow_caller("m", "b"), Ok(()));
        assert_eq!(limits.allow_namespace("m", "ns"), Ok(()));
        // Half a second refills one token at 2/s.
        clock.advance(Duration::from_millis(500));
        assert_eq!(limits.allow_caller("m", "a"), Ok(()));
        assert_eq!(limits.allow_caller("m", "a"), Err(Scope::Caller));
        // Never beyond the burst, however long it waited.
        clock.advance(Duration::from_secs(3600));
        for _ in 0..3 {
            assert_eq!(limits.allow_caller("m", "a"), Ok(()));
        }
        assert_eq!(limits.allow_caller("m", "a"), Err(Scope::Caller));
    }

    #[test]
    fn namespaces_are_limited_per_mesh() {
        let clock = ManualClock::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
        let limits = RateLimits::new(
            Rate::UNLIMITED,
            Rate {
                per_second: 1.0,
                burst: 1.0,
            },
            Arc::new(clock),
        );
        assert_eq!(limits.allow_namespace("a", "shop"), Ok(()));
        assert_eq!(limits.allow_namespace("a", "shop"), Err(Scope::Namespace));
        assert_eq!(limits.allow_namespace("b", "shop"), Ok(()));
    }
}
