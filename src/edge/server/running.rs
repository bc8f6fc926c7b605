//! A started server: its addresses, its store and the handles shutdown and reload work with.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::adapters::config::Config;
use crate::adapters::store::SledStore;
use crate::domain::clock::Clock;
use crate::domain::ratelimit::RateLimits;
use crate::edge::replicas::Members;
use crate::issuance::CurrentAuthority;

use super::background::AuditPublisher;
use super::error::ServeError;
use super::monitoring::Monitor;

/// A started server.
pub struct RunningServer {
    pub(super) local_address: SocketAddr,
    pub(super) admin_address: SocketAddr,
    pub(super) bundle_address: Option<SocketAddr>,
    pub(super) store: Arc<SledStore>,
    pub(super) root_bundle_pem: String,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) task: JoinHandle<Result<(), ServeError>>,
    pub(super) admin_task: JoinHandle<Result<(), ServeError>>,
    /// The Lease election, which releases the Lease when it stops.
    pub(super) election: Option<JoinHandle<()>>,
    pub(super) audit: AuditPublisher,
    pub(super) current: Arc<CurrentAuthority>,
    /// The config the server started with (its listener, store and serving certificate settings
    /// need a restart to change).
    pub(super) config: Config,
    pub(super) clock: Arc<dyn Clock>,
    /// One reload at a time.
    pub(super) reloads: Arc<tokio::sync::Mutex<()>>,
    pub(super) monitor: Monitor,
    pub(super) limits: Arc<RateLimits>,
    /// The other replicas, with `[replicas]`.
    pub(super) members: Option<Arc<Members>>,
    /// Wakes the partner fetchers (`[[mesh.partner]]`).
    pub(super) fetch_partners: watch::Sender<u64>,
    /// The background loops (checkpoints, export, pruning, membership, publication, reloads):
    /// shutdown waits for them, so none writes after the final flush or still holds the store.
    pub(super) background: TaskTracker,
}

impl RunningServer {
    /// The bound address (useful with port 0).
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// The bound admin address (the audit API).
    /// Where the SPIFFE bundles are served (`[bundle_endpoint]`), if they are.
    pub fn bundle_address(&self) -> Option<SocketAddr> {
        self.bundle_address
    }

    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// The record store the server writes to.
    pub fn store(&self) -> &Arc<SledStore> {
        &self.store
    }

    /// Why the server cannot issue now, as `/readyz` says; empty when it is ready.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        self.monitor.not_ready_reasons()
    }

    /// The primary mesh's trust bundle (what clients verify the serving certificate with).
    pub fn root_bundle_pem(&self) -> &str {
        &self.root_bundle_pem
    }

    /// Records the unauthenticated refusals counted since the last summary now (also done
    /// every [`REFUSAL_SUMMARY_INTERVAL`] and at shutdown); returns how many summary records.
    pub async fn record_refusal_summaries(&self) -> Result<usize, crate::issuance::IssueError> {
        self.current.get().record_refusal_summaries().await
    }

    /// Writes a checkpoint of every record now (also done periodically and at shutdown);
    /// returns the note, or None without an audit key.
    pub async fn checkpoint(&self) -> Result<Option<String>, ServeError> {
        self.audit.publish(&self.store).await
    }
}
