//! Background loops: signed checkpoints (and their publication), summaries of refusals over
//! the recorded rate, and pruning of expired records.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::adapters::store::SledStore;
use crate::adapters::store::StoreError;
use crate::domain::audit::checkpoint::AuditSigner;
use crate::domain::clock::Clock;
use crate::issuance::CurrentAuthority;

use super::error::ServeError;

/// Publishes signed checkpoints: into the store, and to the configured file.
#[derive(Clone)]
pub(super) struct AuditPublisher {
    pub(super) signer: Option<Arc<AuditSigner>>,
    pub(super) file: std::path::PathBuf,
    /// The periodic checkpoint, an admin's and the final one at shutdown may coincide; they
    /// share the file's temporary sibling, so one publishes at a time.
    pub(super) one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

impl AuditPublisher {
    pub(super) async fn publish(&self, store: &SledStore) -> Result<Option<String>, ServeError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let _publishing = self.one_at_a_time.lock().await;
        let note = store.checkpoint(signer).await?;
        let current = tokio::fs::read_to_string(&self.file).await.ok();
        if current.as_deref() != Some(note.as_str()) {
            write_atomically(&self.file, note.as_bytes())
                .await
                .map_err(|error| ServeError::Store(StoreError::Write(Arc::new(error))))?;
            if let Some(checkpoint) =
                crate::domain::audit::checkpoint::Checkpoint::parse_unverified(&note)
            {
                tracing::info!(
                    size = checkpoint.size,
                    root = %crate::domain::digest::hex(&checkpoint.root),
                    file = %self.file.display(),
                    "checkpoint published"
                );
            }
        }
        Ok(Some(note))
    }
}

/// Writes a file by renaming a temporary one into place, so readers never see half of it.
pub(super) async fn write_atomically(
    path: &std::path::Path,
    contents: &[u8],
) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    tokio::fs::write(&temporary, contents).await?;
    tokio::fs::rename(&temporary, path).await
}

pub(super) fn load_audit_signer(
    config: &crate::adapters::config::Config,
) -> Result<Option<Arc<AuditSigner>>, ServeError> {
    let signer = config.audit_signer()?;
    match &signer {
        None => tracing::warn!(
            "no audit key configured ([audit] key or signing_key): checkpoints are not written"
        ),
        Some(signer) => {
            if let Some(token) = signer.token_key() {
                tracing::info!(%token, "the audit key is in a PKCS#11 token");
            }
        }
    }
    Ok(signer.map(Arc::new))
}

pub(super) async fn checkpoint_loop(
    audit: AuditPublisher,
    store: Arc<SledStore>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if audit.signer.is_none() {
        return;
    }
    loop {
        if let Err(error) = audit.publish(&store).await {
            tracing::error!(%error, "checkpoint failed; retrying at the next interval");
        }
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// How often unauthenticated refusals over the recorded rate are written as summary records.
pub(crate) const REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

pub(super) async fn refusal_summary_loop(
    current: Arc<CurrentAuthority>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        // Failures are logged where they happen; the next period tries again.
        let _ = current.get().record_refusal_summaries().await;
    }
}

pub(super) async fn prune_loop(
    store: Arc<SledStore>,
    policy: crate::domain::audit::RetentionPolicy,
    interval: Duration,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (pass_store, now) = (store.clone(), clock.now());
        match tokio::task::spawn_blocking(move || pass_store.prune(&policy, now)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "pruning failed; retrying later"),
            Err(error) => tracing::error!(%error, "pruning task failed"),
        }
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Waits until `clock` reads `deadline`: a timer on the system clock; on a manual clock (tests),
/// until the test moves it there, with no wall-clock wait at all.
pub(super) async fn sleep_until(clock: &dyn Clock, deadline: SystemTime) {
    loop {
        let changed = clock.changed();
        if clock.now() >= deadline {
            return;
        }
        match clock.wall_time_until(deadline) {
            Some(wait) => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = changed => {}
                }
            }
            None => changed.await,
        }
    }
}
