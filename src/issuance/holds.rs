//! Holds: reasons this replica must not issue right now, though it is otherwise healthy.
//!
//! A hold is set and cleared by whoever watches its condition: the cluster-wide rotation gate
//! while a member has not confirmed the trust bundle, a fail-closed export while its sink lags
//! more than the bound, a log found shorter than a checkpoint it had published. While any hold
//! is set, requests are answered UNAVAILABLE (istio-agent and ztunnel retry it), readiness is
//! false with each hold's reason, and nothing is signed or recorded. Holds outlive reloads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// The kinds of hold, each a stable code (the client sees it, never the reason's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hold {
    /// A member has not confirmed that the trust bundle strands none of its certificates.
    ClusterGate,
    /// A fail-closed export sink is further behind than its bound.
    ExportLag,
    /// The log is shorter than, or inconsistent with, a checkpoint it had published.
    LogRollback,
}

impl Hold {
    pub(crate) const ALL: [Hold; 3] = [Self::ClusterGate, Self::ExportLag, Self::LogRollback];

    pub fn code(self) -> &'static str {
        match self {
            Self::ClusterGate => "cluster-gate",
            Self::ExportLag => "export-lag",
            Self::LogRollback => "log-rollback",
        }
    }
}

/// The holds in force, with the reason of each (for readiness and the log).
#[derive(Debug, Default)]
pub struct Holds {
    held: RwLock<BTreeMap<Hold, String>>,
    /// Whether any hold is set: read on every request without taking the lock.
    any: AtomicBool,
}

impl Holds {
    /// Sets (or updates the reason of) `hold`.
    pub fn set(&self, hold: Hold, reason: String) {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        if held.get(&hold) != Some(&reason) {
            tracing::warn!(%reason, "{}: not issuing until this is resolved", hold.code());
        }
        held.insert(hold, reason);
        self.any.store(true, Ordering::SeqCst);
    }

    /// Clears `hold`.
    pub(crate) fn clear(&self, hold: Hold) {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        if held.remove(&hold).is_some() {
            tracing::info!("{}: resolved", hold.code());
        }
        self.any.store(!held.is_empty(), Ordering::SeqCst);
    }

    /// Whether `hold` is set.
    pub(crate) fn is_set(&self, hold: Hold) -> bool {
        self.any.load(Ordering::SeqCst)
            && self
                .held
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&hold)
    }

    /// The first hold in force, if any (cheap when there is none).
    pub fn first(&self) -> Option<Hold> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.keys().next().copied()
    }

    /// Every hold's reason, for `/readyz`.
    pub fn reasons(&self) -> Vec<String> {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.iter()
            .map(|(hold, reason)| format!("{}: {reason}", hold.code()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_set_and_cleared_independently() {
        let holds = Holds::default();
        assert_eq!(holds.first(), None);
        holds.set(Hold::ExportLag, "otlp is 10 records behind".into());
        holds.set(Hold::ClusterGate, "b:1 did not answer".into());
        assert_eq!(holds.first(), Some(Hold::ClusterGate));
        assert!(holds.is_set(Hold::ExportLag));
        holds.clear(Hold::ClusterGate);
        assert_eq!(holds.first(), Some(Hold::ExportLag));
        assert_eq!(holds.reasons(), ["export-lag: otlp is 10 records behind"]);
        holds.clear(Hold::ExportLag);
        assert_eq!(holds.first(), None);
        assert!(holds.reasons().is_empty());
    }
}
