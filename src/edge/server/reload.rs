//! Reload and signals: which files are watched, reloading the configuration into a new
//! authority (in-flight requests finish with the old one), and SIGHUP/SIGTERM handling.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::adapters::config::Config;
use crate::adapters::store::SledStore;
use crate::domain::clock::Clock;
use crate::domain::metrics::Metrics;
use crate::domain::ratelimit::RateLimits;
use crate::edge::replicas::Members;
use crate::issuance::CurrentAuthority;

use super::assemble::build_authority;
use super::error::{ReloadError, ServeError};
use super::running::RunningServer;

/// How often the config file's modification time is checked.
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// The files whose change triggers a reload: the config file, and each mesh's CA directory
/// (itself, for entries added or swapped, and every entry in it) and extra roots.
pub(super) fn watched_files(config: &Config) -> Vec<std::path::PathBuf> {
    let mut files = vec![config.source.clone()];
    for mesh in &config.meshes {
        files.push(mesh.ca_dir.clone());
        if let Ok(entries) = std::fs::read_dir(&mesh.ca_dir) {
            let mut entries: Vec<_> = entries.flatten().map(|entry| entry.path()).collect();
            entries.sort();
            files.extend(entries);
        }
        files.extend(mesh.extra_root_paths());
        files.extend(
            mesh.partners
                .iter()
                .filter_map(|partner| partner.cross_certificates.clone()),
        );
    }
    files
}

/// Modification time and size of each file (following symbolic links, as Kubernetes' Secret
/// volumes use them).
pub(super) fn fingerprint(files: &[std::path::PathBuf]) -> Vec<(std::path::PathBuf, Seen)> {
    files
        .iter()
        .map(|path| {
            let seen = std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (path.clone(), seen)
        })
        .collect()
}

pub(super) async fn reload(
    running: &Config,
    current: &CurrentAuthority,
    store: &Arc<SledStore>,
    clock: &Arc<dyn Clock>,
    (metrics, limits): (&Arc<Metrics>, &Arc<RateLimits>),
    reloads: &tokio::sync::Mutex<()>,
    members: Option<&Members>,
) -> Result<Config, ReloadError> {
    let _one_at_a_time = reloads.lock().await;
    let result = async {
        let config = Config::load_to_serve(&running.source)?;
        if config.listen != running.listen
            || config.store != running.store
            || config.dns_names != running.dns_names
            || config.serving_certificate_ttl != running.serving_certificate_ttl
        {
            tracing::warn!(
                "listen, store, dns_names and serving_certificate_ttl changes take effect at the next restart"
            );
        }
        let kept = |config: &Config| -> Vec<(String, crate::adapters::config::CacertsConfig)> {
            config
                .meshes
                .iter()
                .flat_map(|mesh| &mesh.clusters)
                .filter_map(|cluster| Some((cluster.id.clone(), cluster.cacerts.clone()?)))
                .collect()
        };
        if config.revocation != running.revocation {
            tracing::warn!("[revocation] changes take effect at the next restart");
        }
        if kept(&config) != kept(running) {
            tracing::warn!(
                "which clusters' cacerts meshroot keeps, and how, takes effect at the next restart"
            );
        }
        let holds = current.get().holds().clone();
        let authority = build_authority(&config, clock.clone(), store.clone(), metrics.clone())
            .await?
            .with_rate_limits(limits.clone())
            .with_holds(holds.clone())
            .with_revocations(current.get().revocations().clone());
        // A bundle that drops a root: every member must confirm none of its certificates needs
        // it (fail closed). The previous configuration keeps serving otherwise.
        match members {
            Some(members) => {
                super::replicas::cluster_gate(&config, &authority, store, members)
                    .await
                    .map_err(ServeError::from)?;
                holds.clear(crate::issuance::Hold::ClusterGate);
            }
            None => super::replicas::record_accepted_bundles(&authority, store),
        }
        super::ca_keys::record_ca_keys(&authority, store, clock.now()).await?;
        limits.set_rates(config.rate_limit.per_caller, config.rate_limit.per_namespace);
        limits.set_refusal_rates(
            config.rate_limit.refusals_recorded_per_peer,
            config.rate_limit.refusals_recorded,
        );
        current.replace(Arc::new(authority));
        Ok::<_, ReloadError>(config)
    }
    .await;
    match &result {
        Ok(config) => tracing::info!(
            meshes = ?config.meshes.iter().map(|m| (&m.name, m.trust_domain.as_str())).collect::<Vec<_>>(),
            "configuration reloaded"
        ),
        Err(error) => {
            tracing::error!(%error, "configuration reload refused; the previous configuration keeps serving")
        }
    }
    result
}

/// What a process signal asks of a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGTERM or SIGINT: shut down gracefully.
    Stop,
    /// SIGHUP: reload the configuration.
    Reload,
}

/// The process signal handlers `serve` reacts to. Install them before starting the server:
/// until a handler is installed, the signal's default action (ending the process) applies.
#[derive(Debug)]
pub(crate) struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (needs a running tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
                hangup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The next signal received.
    pub async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => Signal::Stop,
                _ = self.interrupt.recv() => Signal::Stop,
                _ = self.hangup.recv() => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

impl RunningServer {
    /// Reloads when the config file or any mesh's CA material (the files in `ca_dir`, the
    /// `extra_roots`) changes, checked every 2 s by modification time and size. A Kubernetes
    /// Secret volume swaps all its files at once, so an updated `cacerts` Secret is picked up
    /// whole; files copied by hand one at a time may be caught half-way, which is refused
    /// (the key does not match the certificate) and retried at the next change.
    pub(super) fn watch_config_file(&self, mut shutdown: watch::Receiver<bool>) {
        let (mut config, current, store, clock, metrics, limits, reloads) = (
            self.config.clone(),
            self.current.clone(),
            self.store.clone(),
            self.clock.clone(),
            self.monitor.metrics.clone(),
            self.limits.clone(),
            self.reloads.clone(),
        );
        let members = self.members.clone();
        let running = self.config.clone();
        let mut last = fingerprint(&watched_files(&config));
        self.background.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|stopped| *stopped) => return,
                    _ = tokio::time::sleep(CONFIG_POLL) => {}
                }
                let now = fingerprint(&watched_files(&config));
                if now == last {
                    continue;
                }
                last = now;
                tracing::info!(file = %config.source.display(), "the config file or CA material changed: reloading");
                if let Ok(loaded) = reload(
                    &running,
                    &current,
                    &store,
                    &clock,
                    (&metrics, &limits),
                    &reloads,
                    members.as_deref(),
                )
                .await
                {
                    config = loaded;
                    last = fingerprint(&watched_files(&config));
                }
            }
        });
    }
}

/// A file's modification time and size, as far as it can be read.
type Seen = Option<(SystemTime, u64)>;
