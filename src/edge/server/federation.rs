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

use super::*;
use crate::adapters::config::PartnerConfig;
use crate::adapters::store::KeptPartnerBundle;
use crate::domain::federation::bundle::SpiffeBundle;
use crate::domain::federation::cross::{check_cross_certificate, key_sha256, CrossCertified};
use crate::domain::federation::partner::HeldBundle;
use crate::domain::record::{CallerRecord, FederationRecord, Outcome, Record};

/// A fetch that takes longer than this fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// When the bundle names no refresh hint.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Bounds on the refresh hint a partner may ask for.
const MIN_REFRESH: Duration = Duration::from_secs(30);
const MAX_REFRESH: Duration = Duration::from_secs(86_400);
/// After a failed fetch: 5 s, doubling, at most the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(5);

/// The partner bundle `mesh` holds for `partner`, if a good one was ever fetched.
fn held_bundle(
    store: &SledStore,
    mesh: &str,
    partner: &PartnerConfig,
) -> Option<(SpiffeBundle, SystemTime)> {
    let kept = match store.partner_bundle(mesh, partner.trust_domain.as_str()) {
        Ok(kept) => kept?,
        Err(error) => {
            tracing::error!(%mesh, partner = %partner.trust_domain, %error, "the held partner bundle cannot be read");
            return None;
        }
    };
    match SpiffeBundle::parse(partner.trust_domain.clone(), &kept.document) {
        Ok(bundle) => Some((bundle, kept.fetched_at)),
        Err(error) => {
            tracing::error!(%mesh, partner = %partner.trust_domain, %error, "the held partner bundle no longer parses; ignoring it");
            None
        }
    }
}

/// What `mesh`'s partners add to its published bundle (cross-certificates, or opted-in roots),
/// with each held partner root authorized to vouch for its trust domain in `anchors`, and the
/// partners' status in `metrics`.
pub(super) fn partner_trust(
    mesh: &MeshConfig,
    our_roots: &[CertificateDer<'static>],
    store: &SledStore,
    metrics: &Metrics,
    anchors: &mut IdentityAnchors,
    now: SystemTime,
) -> Result<Vec<CertificateDer<'static>>, ServeError> {
    let mut published = Vec::new();
    for partner in &mesh.partners {
        let held = held_bundle(store, &mesh.name, partner);
        let authorities: Vec<CertificateDer<'static>> = held
            .as_ref()
            .map(|(bundle, _)| bundle.authorities.clone())
            .unwrap_or_default();
        for root in &authorities {
            anchors
                .authorize(&partner.trust_domain, root)
                .map_err(|e| {
                    ServeError::Tls(format!(
                        "mesh {}: partner {}: {e}",
                        mesh.name, partner.trust_domain
                    ))
                })?;
        }
        let crossed = cross_certificates(mesh, partner, our_roots, now)?;
        let covered = |root: &CertificateDer<'static>| {
            key_sha256(root).is_some_and(|key| crossed.iter().any(|c| c.partner_key_sha256 == key))
        };
        let cross_certified = authorities.iter().filter(|root| covered(root)).count();
        if partner.unprotected {
            tracing::warn!(
                mesh = %mesh.name,
                partner = %partner.trust_domain,
                roots = authorities.len(),
                "unprotected = true: the partner's roots are published to the mesh's proxies as \
                 they are; any of them can vouch there for any identity, the mesh's own included"
            );
            published.extend(authorities.iter().cloned());
        } else {
            // Only for roots the partner still publishes: a root it withdrew (rotated out, or
            // compromised) stops being trusted here at the next fetch, whatever the file holds.
            let held_keys: Vec<[u8; 32]> = authorities
                .iter()
                .filter_map(|root| key_sha256(root))
                .collect();
            let (current, withdrawn): (Vec<&CrossCertified>, Vec<&CrossCertified>) = crossed
                .iter()
                .partition(|c| held_keys.contains(&c.partner_key_sha256));
            if !withdrawn.is_empty() {
                tracing::warn!(
                    mesh = %mesh.name,
                    partner = %partner.trust_domain,
                    left_out = withdrawn.len(),
                    "cross-certificates of roots the partner's held bundle does not hold (withdrawn, \
                     or none fetched yet) are not published"
                );
            }
            published.extend(current.iter().map(|c| c.certificate.clone()));
            let uncovered = authorities.len() - cross_certified;
            if uncovered > 0 {
                tracing::warn!(
                    mesh = %mesh.name,
                    partner = %partner.trust_domain,
                    uncovered,
                    "partner roots without a cross-certificate: the mesh's proxies refuse partner \
                     chains under them; run `meshroot partner certify` for the bundle held now"
                );
            }
        }
        metrics.partner(&mesh.name, partner.trust_domain.as_str(), |status| {
            status.bundle_url = partner.bundle_url.clone();
            status.unprotected = partner.unprotected;
            status.held = held.as_ref().map(|(bundle, fetched_at)| HeldBundle {
                sequence: bundle.sequence,
                authorities: bundle.authorities.len(),
                fetched_at: *fetched_at,
            });
            status.cross_certified = cross_certified;
        });
    }
    Ok(published)
}

/// The partner's cross-certificates in force: each one ours, confined to the partner's trust
/// domain; expired ones are left out (with a warning).
fn cross_certificates(
    mesh: &MeshConfig,
    partner: &PartnerConfig,
    our_roots: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<Vec<CrossCertified>, ServeError> {
    let Some(path) = &partner.cross_certificates else {
        return Ok(Vec::new());
    };
    if !path.exists() {
        // Configured before `meshroot partner certify` ran: the partner is fetched and held,
        // and the mesh's proxies refuse its chains until the file appears (a reload follows).
        tracing::warn!(mesh = %mesh.name, partner = %partner.trust_domain, file = %path.display(), "no cross-certificates yet: run `meshroot partner certify`");
        return Ok(Vec::new());
    }
    let certificates =
        signer::files::certificates_required(path).map_err(|source| ServeError::CaMaterial {
            mesh: mesh.name.clone(),
            source,
        })?;
    let mut crossed = Vec::new();
    for certificate in &certificates {
        let checked = check_cross_certificate(certificate, &partner.trust_domain, our_roots)
            .map_err(|e| {
                ServeError::Tls(format!(
                    "mesh {}: partner {}: {}: {e}",
                    mesh.name,
                    partner.trust_domain,
                    path.display()
                ))
            })?;
        if checked.not_after <= now {
            tracing::warn!(mesh = %mesh.name, partner = %partner.trust_domain, file = %path.display(), "an expired cross-certificate is left out");
            continue;
        }
        crossed.push(checked);
    }
    Ok(crossed)
}

impl RunningServer {
    /// Fetches every mesh's partner bundles now and at their refresh hints (`[[mesh.partner]]`
    /// changes take effect at the next restart).
    pub(super) fn follow_partners(&self, shutdown: watch::Receiver<bool>) {
        let reloader = Arc::new(federation::Reloader {
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
                self.background.spawn(federation::follow_partner(
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
