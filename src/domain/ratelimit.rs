//! Token-bucket rate limits per authenticated caller and per namespace of the identity asked
//! for. A caller over its limit gets RESOURCE_EXHAUSTED, which istio-agent and ztunnel retry
//! with backoff; nothing is signed or recorded for it. One misbehaving workload (a crash loop,
//! a stolen token) cannot starve the rest of the mesh.
//!
//! Refusals of requests nobody authenticated are recorded one by one only up to a rate per peer
//! address and overall; the rest are counted per peer and reason and recorded as periodic
//! summaries, so a flood of garbage requests leaves a trail of bounded size.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::domain::clock::Clock;

/// Above this many buckets, the full (idle) ones are dropped, so one-off callers do not pile up.
const SWEEP_ABOVE: usize = 10_000;

/// A rate: `per_second` tokens added per second, up to `burst`. Zero rate: no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    pub(crate) const UNLIMITED: Rate = Rate {
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

/// At most this many (peer, reason) pairs are summarized one by one per summary period; the
/// refusals of any further peer are counted under [`OTHER_PEERS`], per reason.
pub(crate) const MAX_SUMMARIES: usize = 32;
/// The peer named by a summary of the refusals beyond [`MAX_SUMMARIES`].
pub(crate) const OTHER_PEERS: &str = "other-peers";

/// Refusals of unauthenticated requests that were not recorded one by one: from one peer, for
/// one reason, in one summary period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SuppressedRefusals {
    pub peer: String,
    pub reason: &'static str,
    pub count: u64,
    pub first: SystemTime,
    pub last: SystemTime,
}

/// The limits in force and their buckets; shared across reloads (a reload changes the rates,
/// not what callers have used).
pub(crate) struct RateLimits {
    rates: Mutex<(Rate, Rate)>,
    callers: Buckets,
    namespaces: Buckets,
    /// Unauthenticated refusals recorded one by one: per peer address, and overall.
    refusal_rates: Mutex<(Rate, Rate)>,
    refusal_peers: Buckets,
    refusals: Buckets,
    suppressed: Mutex<HashMap<(String, &'static str), SuppressedRefusals>>,
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
            refusal_rates: Mutex::new((Rate::UNLIMITED, Rate::UNLIMITED)),
            refusal_peers: Buckets::default(),
            refusals: Buckets::default(),
            suppressed: Mutex::default(),
            clock,
        }
    }

    /// How many unauthenticated refusals are recorded one by one, per peer address and overall
    /// (set at start and on reload).
    pub(crate) fn set_refusal_rates(&self, per_peer: Rate, overall: Rate) {
        *self.refusal_rates.lock().unwrap_or_else(|p| p.into_inner()) = (per_peer, overall);
    }

    /// Whether an unauthenticated refusal from `peer` gets a record of its own. When it does
    /// not, it is counted for the next summary ([`Self::take_suppressed`]).
    pub(crate) fn record_refusal(&self, peer: Option<IpAddr>, reason: &'static str) -> bool {
        let (per_peer, overall) = *self.refusal_rates.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        let peer = peer.map(peer_key).unwrap_or_default();
        let within = |buckets: &Buckets, key: &str, rate: Rate| {
            !rate.limited() || buckets.take(key, rate, now)
        };
        if within(&self.refusal_peers, &peer, per_peer) && within(&self.refusals, "", overall) {
            return true;
        }
        let mut suppressed = self.suppressed.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (peer, reason);
        if !suppressed.contains_key(&key) && suppressed.len() >= MAX_SUMMARIES {
            key.0 = OTHER_PEERS.to_owned();
        }
        let peer = key.0.clone();
        let entry = suppressed.entry(key).or_insert(SuppressedRefusals {
            peer,
            reason,
            count: 0,
            first: now,
            last: now,
        });
        entry.count += 1;
        entry.last = now;
        false
    }

    /// The refusals counted since the last call, to be recorded as summaries; the counts
    /// start again from zero.
    pub(crate) fn take_suppressed(&self) -> Vec<SuppressedRefusals> {
        let mut suppressed = self.suppressed.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken: Vec<_> = suppressed.drain().map(|(_, v)| v).collect();
        taken.sort_by(|a, b| (a.first, &a.peer, a.reason).cmp(&(b.first, &b.peer, b.reason)));
        taken
    }

    pub(crate) fn unlimited(clock: Arc<dyn Clock>) -> Self {
        Self::new(Rate::UNLIMITED, Rate::UNLIMITED, clock)
    }

    /// New rates (on reload).
    pub(crate) fn set_rates(&self, per_caller: Rate, per_namespace: Rate) {
        *self.rates.lock().unwrap_or_else(|p| p.into_inner()) = (per_caller, per_namespace);
    }

    fn rates(&self) -> (Rate, Rate) {
        *self.rates.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One request from `caller` (its mesh and authenticated subject).
    pub(crate) fn allow_caller(&self, mesh: &str, subject: &str) -> Result<(), Scope> {
        self.allow(Scope::Caller, mesh, subject)
    }

    /// One request for an identity in `namespace` of `mesh`.
    pub(crate) fn allow_namespace(&self, mesh: &str, namespace: &str) -> Result<(), Scope> {
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

/// The address a refusal is charged to: an IPv4 address, or an IPv6 /64 (one host's share of
/// a network, which a single client can otherwise rotate through freely).
fn peer_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::ManualClock;

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

    #[test]
    fn unauthenticated_refusals_beyond_their_rate_are_summarized_per_peer_and_reason() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let clock = ManualClock::at(start);
        let limits = RateLimits::unlimited(Arc::new(clock.clone()));
        limits.set_refusal_rates(
            Rate {
                per_second: 1.0 / 60.0,
                burst: 2.0,
            },
            Rate {
                per_second: 0.001,
                burst: 3.0,
            },
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(limits.record_refusal(Some(a), "missing-credentials"));
        assert!(limits.record_refusal(Some(a), "missing-credentials"));
        clock.advance(Duration::from_secs(1));
        assert!(!limits.record_refusal(Some(a), "missing-credentials"));
        assert!(!limits.record_refusal(Some(a), "token-expired"));
        clock.advance(Duration::from_secs(1));
        assert!(!limits.record_refusal(Some(a), "missing-credentials"));
        // Another peer has its own allowance, within the overall one.
        assert!(limits.record_refusal(Some(b), "token-expired"));
        assert!(
            !limits.record_refusal(Some(b), "token-expired"),
            "overall burst spent"
        );
        let taken = limits.take_suppressed();
        assert_eq!(
            taken,
            vec![
                SuppressedRefusals {
                    peer: "10.0.0.1".into(),
                    reason: "missing-credentials",
                    count: 2,
                    first: start + Duration::from_secs(1),
                    last: start + Duration::from_secs(2),
                },
                SuppressedRefusals {
                    peer: "10.0.0.1".into(),
                    reason: "token-expired",
                    count: 1,
                    first: start + Duration::from_secs(1),
                    last: start + Duration::from_secs(1),
                },
                SuppressedRefusals {
                    peer: "10.0.0.2".into(),
                    reason: "token-expired",
                    count: 1,
                    first: start + Duration::from_secs(2),
                    last: start + Duration::from_secs(2),
                },
            ]
        );
        assert!(limits.take_suppressed().is_empty(), "counts start again");
    }

    #[test]
    fn summaries_are_bounded_however_many_peers_there_are() {
        let clock = ManualClock::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
        let limits = RateLimits::unlimited(Arc::new(clock));
        let none = Rate {
            per_second: 1e-9,
            burst: 1.0,
        };
        limits.set_refusal_rates(none, none);
        for i in 0..10_000u32 {
            // Addresses of a /64 count as one peer; different /64s as different peers.
            let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1);
            limits.record_refusal(Some(IpAddr::V6(ip)), "missing-credentials");
        }
        let taken = limits.take_suppressed();
        assert_eq!(taken.len(), MAX_SUMMARIES + 1);
        assert_eq!(taken.iter().map(|t| t.count).sum::<u64>(), 9_999);
        let other = taken.iter().find(|t| t.peer == OTHER_PEERS).unwrap();
        assert_eq!(other.count, 10_000 - 1 - MAX_SUMMARIES as u64);
        assert_eq!(
            peer_key("2001:db8::1:2:3:4".parse().unwrap()),
            "2001:db8::/64"
        );
        assert_eq!(peer_key("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3");
    }
}
