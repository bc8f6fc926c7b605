//! The CRL keeper: signs one CRL per signing certificate of the meshes, keeps the last CRL of an
//! intermediate rotated out until its nextUpdate, adds the CRLs meshroot does not sign
//! (`[revocation] extra_crls`: the root's, a partner's), and publishes the whole as `ca-crl.pem`:
//! a file and `GET /crl` on the admin port; the `istio-ca-crl` ConfigMap and each cluster's
//! `cacerts` read [`CrlKeeper::current`] (a complete set only).
//!
//! CRLs are signed again at once after a revocation or a reload that changes a signer, and when
//! half of their validity has passed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::adapters::config::RevocationConfig;
use crate::adapters::store::SledStore;
use crate::domain::clock::{format_time, unix_seconds};
use crate::domain::keys::crl_pem;
use crate::issuance::CurrentAuthority;

/// How often the keeper looks for a change (revocation, reload, refresh time).
const POLL: Duration = Duration::from_secs(1);

/// The published CRLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CrlSet {
    /// Every CRL, PEM, concatenated: `ca-crl.pem`.
    pub pem: String,
    /// The same bytes, shared by every `GET /crl` answer in flight (never copied per request:
    /// a thousand slow readers hold one copy).
    pub body: bytes::Bytes,
    /// Why the set must not reach Istio (a CA of a chain has no CRL in it), if so: Envoy would
    /// refuse every certificate under that CA.
    pub incomplete: Option<String>,
}

impl CrlSet {
    /// `ca-crl.pem` for Istio (the ConfigMap, `cacerts`): only a complete set.
    pub(crate) fn for_istio(&self) -> Option<&str> {
        (self.incomplete.is_none() && !self.pem.is_empty()).then_some(self.pem.as_str())
    }
}

/// One CRL's facts, read back from its DER.
struct CrlFacts {
    issuer: String,
    this_update: i64,
    next_update: Option<i64>,
}

fn facts(der: &[u8]) -> Option<CrlFacts> {
    let (_, crl) = CertificateRevocationList::from_der(der).ok()?;
    Some(CrlFacts {
        issuer: crl.issuer().to_string(),
        this_update: crl.last_update().timestamp(),
        next_update: crl.next_update().map(|t| t.timestamp()),
    })
}

/// Signs, keeps and publishes the CRLs.
pub(crate) struct CrlKeeper {
    store: Arc<SledStore>,
    current: Arc<CurrentAuthority>,
    settings: RevocationConfig,
    published: watch::Sender<Arc<CrlSet>>,
    /// One refresh at a time; holds what the last one was made from.
    state: tokio::sync::Mutex<Made>,
}

/// What the published set was made from, to tell when it is stale.
#[derive(Default)]
struct Made {
    generation: Option<u64>,
    signers: Vec<[u8; 32]>,
    /// When the CRLs signed last must be signed again.
    due: Option<SystemTime>,
    /// When each extra CRL file was last modified (a re-signed root CRL shows at once).
    extra_modified: Vec<Option<SystemTime>>,
}

impl CrlKeeper {
    pub fn new(
        store: Arc<SledStore>,
        current: Arc<CurrentAuthority>,
        settings: RevocationConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            current,
            settings,
            published: watch::channel(Arc::default()).0,
            state: tokio::sync::Mutex::default(),
        })
    }

    /// The published `ca-crl.pem`, shared (for `GET /crl`).
    pub fn body(&self) -> bytes::Bytes {
        self.published.borrow().body.clone()
    }

    /// The published set.
    pub fn current(&self) -> Arc<CrlSet> {
        self.published.borrow().clone()
    }

    /// Signs and publishes again if a revocation, a reload or the time asks for it; `force`
    /// signs again anyway.
    pub async fn refresh(&self, force: bool) -> Result<(), String> {
        let mut made = self.state.lock().await;
        let ca = self.current.get();
        let now = ca.clock().now();
        let generation = ca.revocations().generation();
        let mut signers: Vec<[u8; 32]> = ca
            .mesh_signers()
            .map(|(_, signer)| signer.signing_certificate_sha256())
            .collect();
        signers.sort();
        signers.dedup();
        let extra_modified: Vec<Option<SystemTime>> = self
            .settings
            .extra_crls
            .iter()
            .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .collect();
        let stale = force
            || made.extra_modified != extra_modified
            || made.generation != Some(generation)
            || made.signers != signers
            || made.due.is_none_or(|due| now >= due);
        if !stale {
            return Ok(());
        }
        let validity = self.settings.crl_validity;
        let next_update = now + validity;
        let mut pems = Vec::new();
        let mut gauges = BTreeMap::new();
        // The meshes' signers (in mesh order): a fresh CRL each, kept in the store.
        let mut signed = std::collections::HashSet::new();
        let mut meshes: Vec<_> = ca.mesh_signers().collect();
        meshes.sort_by(|a, b| a.0.cmp(b.0));
        for (mesh, signer) in meshes {
            let sha = signer.signing_certificate_sha256();
            if !signed.insert(sha) {
                continue; // meshes sharing an intermediate share its CRL
            }
            let entries = ca.revocations().crl_entries(&sha, now);
            let der = signer
                .sign_crl(&entries, now, next_update)
                .map_err(|e| format!("mesh {mesh}: signing its CRL failed: {e}"))?;
            self.store
                .save_crl(&sha, &der)
                .map_err(|e| format!("keeping the CRL of mesh {mesh}: {e}"))?;
            if let Some(facts) = facts(&der) {
                gauges.insert(
                    facts.issuer,
                    (facts.this_update, facts.next_update.unwrap_or_default()),
                );
            }
            pems.push(crl_pem(&der));
        }
        // Intermediates rotated out: their last CRL until its nextUpdate.
        let saved = self
            .store
            .saved_crls()
            .map_err(|e| format!("reading kept CRLs: {e}"))?;
        for (sha, der) in saved {
            if signed.iter().any(|s| s.as_slice() == sha.as_slice()) {
                continue;
            }
            match facts(&der) {
                Some(f) if f.next_update.is_some_and(|next| next > unix_seconds(now)) => {
                    gauges.insert(f.issuer, (f.this_update, f.next_update.unwrap_or_default()));
                    pems.push(crl_pem(&der));
                }
                _ => {
                    let _ = self.store.forget_crl(&sha);
                }
            }
        }
        // CRLs meshroot does not sign, read again each time so a re-signed file shows.
        let mut extra_issuers = std::collections::BTreeSet::new();
        for path in &self.settings.extra_crls {
            for der in read_crls(path)? {
                if let Ok((_, crl)) = CertificateRevocationList::from_der(&der) {
                    extra_issuers.insert(crl.issuer().as_raw().to_vec());
                }
                if let Some(f) = facts(&der) {
                    if f.next_update.is_some_and(|next| next <= unix_seconds(now)) {
                        tracing::error!(
                            file = %path.display(),
                            issuer = %f.issuer,
                            "an extra CRL has passed its nextUpdate: Envoy refuses every \
                             certificate under its issuer until it is signed again"
                        );
                    }
                    gauges.insert(f.issuer, (f.this_update, f.next_update.unwrap_or_default()));
                }
                pems.push(crl_pem(&der));
            }
        }
        let pem = pems.concat();
        let unexpired = ca.revocations().unexpired(now) as u64;
        ca.metrics().revocation(|g| {
            g.revoked_unexpired = unexpired;
            g.crls = gauges;
        });
        if let Some(file) = &self.settings.crl_file {
            if self.published.borrow().pem != pem || !file.exists() {
                write_atomically(file, pem.as_bytes())
                    .map_err(|e| format!("writing {}: {e}", file.display()))?;
                let at = unix_seconds(now);
                ca.metrics().revocation(|g| {
                    g.published.insert("file".into(), at);
                });
                tracing::info!(file = %file.display(), "CRLs written");
            }
        }
        let incomplete = uncovered(&ca, &extra_issuers);
        if incomplete.is_some() != self.published.borrow().incomplete.is_some() {
            match &incomplete {
                Some(problem) => tracing::warn!(
                    %problem,
                    "the CRLs are not published to Istio (istio-ca-crl, cacerts): Envoy would \
                     refuse every certificate under a CA without one"
                ),
                None => tracing::info!("the CRLs cover every CA of the meshes' chains"),
            }
        }
        let complete = incomplete.is_none();
        ca.metrics().revocation(|g| g.complete = complete);
        self.published.send_replace(Arc::new(CrlSet {
            body: bytes::Bytes::from(pem.clone()),
            pem,
            incomplete,
        }));
        made.generation = Some(generation);
        made.extra_modified = extra_modified;
        made.signers = signers;
        made.due = Some(now + validity / 2);
        tracing::debug!(next_update = %format_time(next_update), "CRLs signed");
        Ok(())
    }
}

/// Every CRL in a PEM file (DER inside `X509 CRL` blocks).
fn read_crls(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let crls = crate::domain::keys::parse_crls_pem(&text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if crls.is_empty() {
        return Err(format!("{} holds no X509 CRL", path.display()));
    }
    Ok(crls)
}

/// Writes through a temporary file and a rename, so a reader (Envoy watching the file) never
/// sees half of it.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// Keeps the CRLs fresh until shutdown.
pub(crate) async fn keep_crls(keeper: Arc<CrlKeeper>, mut shutdown: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        match keeper.refresh(false).await {
            Ok(()) => failing = false,
            Err(error) if !failing => {
                tracing::error!(%error, "the CRLs could not be signed or written; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Why the CRLs do not cover every CA above a mesh's signing certificate, if they do not:
/// meshroot signs its signing certificates' CRLs, and every CA above (upper intermediates, the
/// root) needs one among `extra_crls` (`issuers`: their issuers' names, DER). Envoy checks the
/// CRL of every CA in a chain once `ca-crl.pem` is given.
fn uncovered(
    ca: &crate::issuance::CertificateAuthority,
    issuers: &std::collections::BTreeSet<Vec<u8>>,
) -> Option<String> {
    for (mesh, signer) in ca.mesh_signers() {
        let above = signer
            .intermediates()
            .iter()
            .skip(1)
            .chain(signer.issuing_root());
        for der in above {
            let Ok((_, certificate)) = x509_parser::certificate::X509Certificate::from_der(der)
            else {
                continue;
            };
            if !issuers.contains(certificate.subject().as_raw()) {
                return Some(format!(
                    "mesh {mesh}: no CRL from {} in [revocation] extra_crls; sign one with \
                     `meshroot crl sign-root --ca-dir DIR` (where its key is) and list it there",
                    certificate.subject()
                ));
            }
        }
    }
    None
}

impl crate::issuance::revoke::CrlPublisher for CrlKeeper {
    fn publish(&self) -> crate::issuance::revoke::PublishFuture<'_> {
        Box::pin(async move {
            self.refresh(false).await?;
            Ok(self.current().incomplete.clone())
        })
    }
}

/// Signs the CRLs once before serving (so `/crl` and the file hold them from the start) and
/// keeps them fresh. They reach Istio (the `istio-ca-crl` ConfigMap, `cacerts`) only while
/// every CA above a signing certificate has its CRL among `extra_crls`: Envoy would refuse every
/// certificate of the mesh otherwise.
pub(super) async fn start_crls(
    config: &crate::adapters::config::Config,
    current: &Arc<crate::issuance::CurrentAuthority>,
    store: &Arc<crate::adapters::store::SledStore>,
    (background, shutdown): (&tokio_util::task::TaskTracker, watch::Receiver<bool>),
) -> Result<Arc<CrlKeeper>, super::error::ServeError> {
    let settings = &config.revocation;
    let keeper = CrlKeeper::new(store.clone(), current.clone(), settings.clone());
    keeper
        .refresh(true)
        .await
        .map_err(super::error::ServeError::Crl)?;
    background.spawn(keep_crls(keeper.clone(), shutdown));
    Ok(keeper)
}
