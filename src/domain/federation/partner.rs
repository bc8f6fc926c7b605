//! What a replica knows of each partner trust domain (`[[mesh.partner]]`): the bundle it holds,
//! how much of it the data plane trusts, and how the last fetch went. Shown on `/ui`, in
//! `meshroot audit partners` and as metrics.

use std::time::SystemTime;

/// One partner of one mesh, as this replica sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartnerStatus {
    pub bundle_url: String,
    /// The partner's roots are published raw (`unprotected = true`).
    pub unprotected: bool,
    /// The last good bundle (kept in the store), if there is one.
    pub held: Option<HeldBundle>,
    /// Of the held bundle's authorities, how many a cross-certificate in force binds to the
    /// partner's trust domain (what the mesh's proxies can verify partner chains through).
    pub cross_certified: usize,
    /// When the last fetch was tried, and why it failed (None: it succeeded).
    pub last_attempt: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Fetches that failed since the start.
    pub failures: u64,
}

/// A partner bundle held: its sequence, how many X.509 authorities, when it was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBundle {
    pub sequence: u64,
    pub authorities: usize,
    pub fetched_at: SystemTime,
}

impl PartnerStatus {
    /// Authorities of the held bundle no cross-certificate covers: partner chains under them
    /// are refused by the mesh's proxies until `meshroot partner certify` runs again (unless
    /// the partner is published unprotected).
    pub fn uncovered(&self) -> usize {
        match (&self.held, self.unprotected) {
            (Some(held), false) => held.authorities.saturating_sub(self.cross_certified),
            _ => 0,
        }
    }
}
