//! Partners outside the shared root (`[[mesh.partner]]`): fetching each one's SPIFFE bundle at
//! start and at its refresh hint, keeping the last good one in the store (a restart with the
//! partner down still trusts it), recording every change, and turning the held bundle into
//! what the mesh trusts:
//!
//! - inside meshroot, each partner root vouches for the partner's trust domain only (client
//!   certificates, the admin API), as an `extra_roots` entry with `vouches_for` does;
//! - for the mesh's proxies, the configured cross-certificates (`meshroot partner certify`),
//!   each checked to be ours and confined to the partner's trust domain, join the published
//!   bundle; or, opted in with `unprotected = true`, the partner's roots themselves.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use crate::adapters::config::Config;
use crate::adapters::config::PartnerConfig;
use crate::adapters::store::KeptPartnerBundle;
use crate::adapters::store::SledStore;
use crate::domain::clock::Clock;
use crate::domain::federation::bundle::SpiffeBundle;
use crate::domain::federation::cross::key_sha256;
use crate::domain::metrics::Metrics;
use crate::domain::ratelimit::RateLimits;
use crate::domain::record::{CallerRecord, FederationRecord, Outcome, Record};
use crate::edge::replicas::Members;
use crate::issuance::CurrentAuthority;

use super::partner_trust::{cross_certificates, held_bundle};
use super::reload::reload;
use super::running::RunningServer;

/// A fetch that takes longer than this fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// When the bundle names no refresh hint.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Bounds on the refresh hint a partner may ask for.
const MIN_REFRESH: Duration = Duration::from_secs(30);
const MAX_REFRESH: Duration = Duration::from_secs(86_400);
/// After a failed fetch: 5 s, doubling, at most the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(5);

impl RunningServer {
    /// Fetches every mesh's partner bundles now and at their refresh hints (`[[mesh.partner]]`
    /// changes take effect at the next restart).
    pub(super) fn follow_partners(&self, shutdown: watch::Receiver<bool>) {
        let reloader = Arc::new(Reloader {
            running: self.config.clone(),
            current: self.current.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            metrics: self.monitor.metrics.clone(),
            limits: self.limits.clone(),
            reloads: self.reloads.clone(),
            members: self.members.clone(),
            fetch_now: self.fetch_partners.subscribe(),
        });
        for mesh in &self.config.meshes {
            for partner in &mesh.partners {
                self.background.spawn(follow_partner(
                    mesh.name.clone(),
                    partner.clone(),
                    reloader.clone(),
                    shutdown.clone(),
                ));
            }
        }
    }
}

/// What a reload needs, for the partner fetchers to reload after a change.
pub(super) struct Reloader {
    pub(super) running: Config,
    pub(super) current: Arc<CurrentAuthority>,
    pub(super) store: Arc<SledStore>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) limits: Arc<RateLimits>,
    pub(super) reloads: Arc<tokio::sync::Mutex<()>>,
    pub(super) members: Option<Arc<Members>>,
    /// Bumped by every reload (SIGHUP, `RunningServer::reload`): fetch every partner now. A
    /// counter, so a reload during a fetch is not lost: the fetcher sees it changed afterwards.
    pub(super) fetch_now: watch::Receiver<u64>,
}

impl Reloader {
    async fn reload(&self) {
        let _ = reload(
            &self.running,
            &self.current,
            &self.store,
            &self.clock,
            (&self.metrics, &self.limits),
            &self.reloads,
            self.members.as_deref(),
        )
        .await;
    }
}

/// Fetches `mesh`'s `partner` bundle now and then at its refresh hint until shutdown; a
/// change is kept, recorded, and reloaded into the authority.
pub(super) async fn follow_partner(
    mesh: String,
    partner: PartnerConfig,
    reloader: Arc<Reloader>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = FIRST_RETRY;
    let mut fetch_now = reloader.fetch_now.clone();
    loop {
        let now = reloader.clock.now();
        let fetched = crate::edge::bundle_client::fetch(
            &partner.bundle_url,
            partner.endpoint_ca.as_deref(),
            FETCH_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())
        .and_then(|document| {
            SpiffeBundle::parse(partner.trust_domain.clone(), &document)
                .map(|bundle| (bundle, document))
                .map_err(|e| format!("the bundle was refused: {e}"))
        });
        let wait = match fetched {
            Ok((bundle, document)) => {
                retry = FIRST_RETRY;
                reloader
                    .metrics
                    .partner(&mesh, partner.trust_domain.as_str(), |status| {
                        status.last_attempt = Some(now);
                        status.last_error = None;
                    });
                if let Err(error) = keep(&mesh, &partner, &bundle, document, &reloader, now).await {
                    tracing::error!(%mesh, partner = %partner.trust_domain, %error, "a changed partner bundle could not be kept and recorded; the held one stays in force");
                }
                bundle
                    .refresh_hint
                    .unwrap_or(DEFAULT_REFRESH)
                    .clamp(MIN_REFRESH, MAX_REFRESH)
            }
            Err(error) => {
                tracing::warn!(%mesh, partner = %partner.trust_domain, url = %partner.bundle_url, %error, retry_in = ?retry, "fetching the partner's bundle failed; the held one stays in force");
                reloader
                    .metrics
                    .partner(&mesh, partner.trust_domain.as_str(), |status| {
                        status.last_attempt = Some(now);
                        status.last_error = Some(error);
                        status.failures += 1;
                    });
                let wait = retry;
                retry = (retry * 2).min(DEFAULT_REFRESH);
                wait
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(wait) => {}
            changed = fetch_now.changed() => {
                if changed.is_err() {
                    return; // the server that reloads is gone
                }
            }
        }
    }
}

/// Keeps `bundle` if it differs from the held one (authorities or sequence): recorded first,
/// then kept, then reloaded. A bundle with a lower sequence than the held one is refused.
async fn keep(
    mesh: &str,
    partner: &PartnerConfig,
    bundle: &SpiffeBundle,
    document: Vec<u8>,
    reloader: &Reloader,
    now: SystemTime,
) -> Result<(), String> {
    let store = &reloader.store;
    let held = held_bundle(store, mesh, partner);
    let kept = KeptPartnerBundle {
        document,
        fetched_at: now,
    };
    if let Some((previous, _)) = &held {
        if previous.authorities == bundle.authorities && previous.sequence == bundle.sequence {
            // Unchanged: only when it was last confirmed moves (the bundle's age).
            store
                .keep_partner_bundle(mesh, partner.trust_domain.as_str(), &kept)
                .map_err(|e| e.to_string())?;
            reloader
                .metrics
                .partner(mesh, partner.trust_domain.as_str(), |status| {
                    if let Some(held) = status.held.as_mut() {
                        held.fetched_at = now;
                    }
                });
            return Ok(());
        }
        if bundle.sequence < previous.sequence && previous.authorities != bundle.authorities {
            return Err(format!(
                "other roots under a lower sequence ({} < {}): refused as a replay of an older \
                 bundle",
                bundle.sequence, previous.sequence
            ));
        }
    }
    let digests = |authorities: &[CertificateDer<'static>]| -> Vec<Vec<u8>> {
        authorities
            .iter()
            .map(|der| crate::domain::digest::sha256(der).to_vec())
            .collect()
    };
    let now_held = digests(&bundle.authorities);
    let before = held
        .as_ref()
        .map(|(previous, _)| digests(&previous.authorities))
        .unwrap_or_default();
    let crossed = cross_certificates(
        reloader
            .running
            .mesh(mesh)
            .ok_or_else(|| format!("mesh {mesh} is no longer configured"))?,
        partner,
        &reloader
            .current
            .get()
            .mesh_signer(mesh)
            .map(|signer| signer.roots().to_vec())
            .unwrap_or_default(),
        now,
    )
    .unwrap_or_default();
    let cross_certified = bundle
        .authorities
        .iter()
        .filter(|root| {
            key_sha256(root).is_some_and(|key| crossed.iter().any(|c| c.partner_key_sha256 == key))
        })
        .map(|root| crate::domain::digest::sha256(root).to_vec())
        .collect();
    let record = Record::new(
        reloader.current.get().new_request_id().to_string(),
        now,
        CallerRecord {
            authenticator: "meshroot".into(),
            subject: "partner-bundle-fetch".into(),
            ..CallerRecord::default()
        },
        Outcome::Federated(FederationRecord {
            mesh: mesh.to_owned(),
            trust_domain: partner.trust_domain.to_string(),
            bundle_url: partner.bundle_url.clone(),
            sequence: bundle.sequence,
            added_sha256: now_held
                .iter()
                .filter(|d| !before.contains(d))
                .cloned()
                .collect(),
            removed_sha256: before
                .iter()
                .filter(|d| !now_held.contains(d))
                .cloned()
                .collect(),
            authorities_sha256: now_held,
            cross_certified_sha256: cross_certified,
            unprotected: partner.unprotected,
        }),
    );
    // Recorded before it is kept: no change of trust without its record.
    store
        .append_durable(record)
        .await
        .map_err(|e| e.to_string())?;
    store
        .keep_partner_bundle(mesh, partner.trust_domain.as_str(), &kept)
        .map_err(|e| e.to_string())?;
    tracing::info!(%mesh, partner = %partner.trust_domain, sequence = bundle.sequence, roots = bundle.authorities.len(), "the partner's bundle changed: kept, recorded, reloading");
    reloader.reload().await;
    Ok(())
}
