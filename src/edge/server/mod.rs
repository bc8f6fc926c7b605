//! Wiring: config → CA material, authenticators, record store → the gRPC service on a TLS
//! listener; meshroot's own serving certificate, renewed before it expires; graceful shutdown.

mod admin;
mod assemble;
mod background;
mod bundle_endpoint;
mod ca_keys;
mod capacity;
mod connections;
pub mod crl;
mod duties;
mod error;
mod federation;
pub mod monitoring;
mod partner_trust;
mod reload;
mod replicas;
mod running;
mod tls;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;

use crate::adapters::config::Config;
use crate::adapters::kubernetes::KubeCluster;
use crate::adapters::store::SledStore;
use crate::domain::audit::checkpoint::AuditSigner;
use crate::domain::clock::{Clock, SystemClock};
use crate::domain::metrics::Metrics;
use crate::domain::ratelimit::RateLimits;
use crate::edge::export::ship as export;
use crate::edge::grpc::CsrService;
use crate::edge::replicas::Members;
use crate::issuance::CurrentAuthority;

use self::admin::*;
use self::assemble::*;
use self::background::*;
use self::connections::ConnectionLimits;
use self::duties::*;
pub use self::error::{
    ReloadError, ServeError, EXIT_SHUTDOWN_INCOMPLETE, EXIT_STORE_FAILED, EXIT_TOKEN_UNAVAILABLE,
};
use self::monitoring::Monitor;
pub(crate) use self::reload::*;
pub use self::running::RunningServer;
use self::tls::*;

impl RunningServer {
    /// Reports NOT_SERVING (gRPC health, `/readyz`), stops accepting, lets requests in flight
    /// finish and then cuts the rest (a record already appended stays and is flushed; the
    /// client retries), writes the refusal summaries and a last checkpoint, and flushes the
    /// store. Every step has a deadline: the whole shutdown takes at most `shutdown_grace`
    /// (three quarters of it for requests in flight and the Lease, the rest for the final
    /// writes), whatever state the store is in. Returns
    /// [`ServeError::ShutdownIncomplete`] when the last checkpoint or the final flush was not
    /// written.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let grace = self.config.shutdown_grace;
        let start = tokio::time::Instant::now();
        let (requests_deadline, deadline) = (start + grace * 3 / 4, start + grace);
        let _ = tokio::time::timeout_at(requests_deadline, self.monitor.drain()).await;
        let _ = self.shutdown.send(true);
        let result = finish_by(self.task, requests_deadline, "CSR API").await;
        let admin = finish_by(self.admin_task, requests_deadline, "admin").await;
        // A leader releases its Lease, so another replica takes over at once rather than
        // after a lease duration.
        if let Some(election) = self.election {
            if tokio::time::timeout_at(requests_deadline, election)
                .await
                .is_err()
            {
                tracing::warn!("the Lease was not released within shutdown_grace");
            }
        }
        self.background.close();
        if tokio::time::timeout_at(requests_deadline, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within shutdown_grace");
        }
        let mut unfinished = Vec::new();
        // Refusals counted since the last summary, so the trail of a flood is complete.
        let summaries = self.current.get();
        if tokio::time::timeout_at(deadline, summaries.record_refusal_summaries())
            .await
            .is_err()
        {
            tracing::error!("the last refusal summaries were not recorded within shutdown_grace");
        }
        match tokio::time::timeout_at(deadline, self.audit.publish(&self.store)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "final checkpoint failed");
                unfinished.push("the last checkpoint was not written");
            }
            Err(_) => {
                tracing::error!("final checkpoint not written within shutdown_grace");
                unfinished.push("the last checkpoint was not written");
            }
        }
        // sled's flush blocks, and may not return on a failed disk: on its own thread.
        let store = self.store.clone();
        let flush = tokio::task::spawn_blocking(move || store.flush());
        match tokio::time::timeout_at(deadline, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                tracing::error!(%error, "final flush of the record store failed");
                unfinished.push("the record store was not flushed");
            }
            Ok(Err(_)) | Err(_) => {
                tracing::error!(
                    "final flush of the record store did not finish within shutdown_grace"
                );
                unfinished.push("the record store was not flushed");
            }
        }
        result.and(admin)?;
        match unfinished.is_empty() {
            true => Ok(()),
            false => Err(ServeError::ShutdownIncomplete(unfinished.join(" and "))),
        }
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully; SIGHUP reloads the config.
    /// The handlers are `signals`, installed before the server started, so a signal that
    /// arrives at any moment after start is handled rather than ending the process abruptly.
    ///
    /// A failed write to the record store (a full disk, an I/O error) stops it too: meshroot
    /// cannot issue without its records, and sled does not recover in the same process. It
    /// then shuts down the same way and returns [`ServeError::StoreFailed`], so the process
    /// exits with [`EXIT_STORE_FAILED`] and its supervisor restarts it.
    pub(crate) async fn run_until_stopped(self, mut signals: Signals) -> Result<(), ServeError> {
        let store = self.store.clone();
        let store_failed = store.write_failure();
        tokio::pin!(store_failed);
        loop {
            let signal = tokio::select! {
                signal = signals.next() => signal,
                error = &mut store_failed => {
                    tracing::error!(
                        %error,
                        "the record store cannot write: stopping, for the supervisor to restart \
                         meshroot once the store can write again"
                    );
                    let shutdown = self.shutdown().await;
                    if let Err(error) = shutdown {
                        tracing::error!(%error, "shutdown after the store failure");
                    }
                    return Err(ServeError::StoreFailed(error));
                }
            };
            match signal {
                Signal::Stop => break,
                Signal::Reload => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = self.reload().await;
                }
            }
        }
        tracing::info!("shutting down");
        self.shutdown().await
    }

    /// Re-reads the config file and, if it is valid and its CA material loads, switches every
    /// new request to it: meshes, trust domains and aliases, TTLs, bundles, authentication.
    /// Listener, store and serving-certificate settings need a restart (a change is logged).
    /// On any error the running configuration stays, and the reason is logged and returned.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        // Partners' bundles are fetched again too (a reload is how an operator says "now").
        self.fetch_partners
            .send_modify(|generation| *generation += 1);
        reload(
            &self.config,
            &self.current,
            &self.store,
            &self.clock,
            (&self.monitor.metrics, &self.limits),
            &self.reloads,
            self.members.as_deref(),
        )
        .await
        .map(|_| ())
    }
}

/// Builds everything from the config, binds the listener and starts serving.
pub async fn start(config: &Config) -> Result<RunningServer, ServeError> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// [`start`] with a given clock (tests).
pub async fn start_with_clock(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<RunningServer, ServeError> {
    let store = SledStore::open_with(
        &config.store,
        crate::adapters::store::StoreOptions {
            segment_records: config.audit.index_segment_records,
            cache_bytes: config.store_cache_mib << 20,
            ..crate::adapters::store::StoreOptions::default()
        },
    )?;
    let signer = load_audit_signer(config)?;
    let metrics = Metrics::new();
    let limits = Arc::new(RateLimits::new(
        config.rate_limit.per_caller,
        config.rate_limit.per_namespace,
        clock.clone(),
    ));
    limits.set_refusal_rates(
        config.rate_limit.refusals_recorded_per_peer,
        config.rate_limit.refusals_recorded,
    );
    // The revocations in force, from the log's revocation records.
    let revocations = Arc::new(crate::domain::revocation::Revocations::from_records(
        &store
            .revocations()
            .map_err(|e| ServeError::Revocations(e.to_string()))?,
    ));
    let ca = build_authority(config, clock.clone(), store.clone(), metrics.clone())
        .await?
        .with_rate_limits(limits.clone())
        .with_holds(Arc::default())
        .with_revocations(revocations);
    ca_keys::record_ca_keys(&ca, &store, clock.now()).await?;
    let current = Arc::new(CurrentAuthority::new(Arc::new(ca)));
    start_serving(config, clock, store, current, signer, (metrics, limits)).await
}

async fn start_serving(
    config: &Config,
    clock: Arc<dyn Clock>,
    store: Arc<SledStore>,
    current: Arc<CurrentAuthority>,
    signer: Option<Arc<AuditSigner>>,
    (metrics, limits): (Arc<Metrics>, Arc<RateLimits>),
) -> Result<RunningServer, ServeError> {
    let ca = current.get();
    let (health, health_service) = tonic_health::server::health_reporter();
    let capacity_policy = capacity::policy(config);
    let mut monitor = Monitor::new(metrics, current.clone(), store.clone(), health)
        .with_capacity(capacity_policy);
    let (leader, leads) = watch::channel(false);
    if config.kubernetes.is_some() {
        monitor = monitor.with_leader(leads);
    }
    if config.audit.export.jsonl_dir.is_some() {
        monitor = monitor.with_export_sink(export::JSONL_SINK);
    }
    if config.audit.export.otlp_endpoint.is_some() {
        monitor = monitor.with_export_sink(export::OTLP_SINK);
    }
    monitor.serve().await;
    let serving = Arc::new(ServingCertificate::default());
    let members = config.replicas.as_ref().map(|replicas| {
        let pod = std::env::var("POD_NAME").ok();
        let this = replicas.resolve_self(pod.as_deref(), config.admin.listen);
        if this.is_none() {
            tracing::warn!(
                members = ?replicas.members,
                "cannot tell which [replicas] member this replica is (set replicas.self or \
                 MESHROOT_MEMBER): it asks every member over the network, itself included"
            );
        }
        Arc::new(Members::new(
            replicas,
            this,
            (!config.admin.listen.ip().is_loopback()).then(tls_provider),
            serving.1.clone(),
            current.clone(),
        ))
    });
    let names = ServingNames::of(config, members.as_ref().and_then(|m| m.this()));
    let renew_at = serving
        .renew(&ca, &names, config.serving_certificate_ttl)
        .await
        .map_err(ServeError::ServingCertificate)?;
    monitor = monitor.with_serving(serving.clone());
    if let Some(members) = &members {
        monitor = monitor.with_members(members.clone());
    }
    let root_bundle_pem = ca
        .primary_signer()
        .map(|a| a.root_bundle_pem().to_owned())
        .unwrap_or_default();

    let provider = tls_provider();
    let client_verifier = Arc::new(DeferredClientVerifier {
        provider: provider.clone(),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_client_cert_verifier(client_verifier as _)
        .with_cert_resolver(serving.clone());
    tls.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: istio-agent and ztunnel keep one connection and never resume (Go's
    // TLS client has no session cache unless configured), so the two TLS 1.3 tickets rustls
    // sends by default, and the cache behind them, were CPU and memory spent on every
    // handshake of a restart storm for nothing.
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let listener = connections::bind(config.listen).map_err(|source| ServeError::Bind {
        address: config.listen,
        source,
    })?;
    let local_address = listener.local_addr().map_err(|source| ServeError::Bind {
        address: config.listen,
        source,
    })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let background = TaskTracker::new();
    let (connections, incoming) = mpsc::channel(256);
    background.spawn(connections::accept_loop(
        listener,
        acceptor,
        connections,
        ConnectionLimits::new(config.connections, config.max_concurrent_handshakes),
        shutdown_rx.clone(),
    ));
    background.spawn(renewal_loop(
        serving.clone(),
        current.clone(),
        names,
        config.serving_certificate_ttl,
        renew_at,
        shutdown_rx.clone(),
    ));

    let audit = AuditPublisher {
        signer,
        file: config.audit.checkpoint_file.clone(),
        one_at_a_time: Arc::default(),
    };
    let crls =
        crl::start_crls(config, &current, &store, (&background, shutdown_rx.clone())).await?;
    let (admin_address, admin_task) = start_admin(
        config,
        current.clone(),
        provider_for_admin(),
        serving.clone(),
        store.clone(),
        &audit,
        (&monitor, health_service.clone()),
        (members.clone(), crls.clone()),
        shutdown_rx.clone(),
    )
    .await?;
    let bundle_address = match &config.bundle_endpoint {
        Some(endpoint) => {
            let (address, task) = bundle_endpoint::start_bundle_endpoint(
                config,
                endpoint,
                current.clone(),
                store.clone(),
                serving.clone(),
                shutdown_rx.clone(),
            )
            .await?;
            background.spawn(task);
            Some(address)
        }
        None => None,
    };
    if let (Some(members), Some(replicas)) = (&members, &config.replicas) {
        // In Kubernetes: the StatefulSet's size, and a checkpoint kept in the API.
        let kube = match &config.kubernetes {
            Some(kubernetes) => Some(replicas::CheckpointObject {
                cluster: KubeCluster::connect(
                    duties::access(&kubernetes.access),
                    KUBERNETES_TIMEOUT,
                )
                .await
                .map_err(|source| ServeError::Cluster {
                    mesh: kubernetes.mesh.clone(),
                    cluster: "[kubernetes]".to_owned(),
                    source,
                })?,
                namespace: kubernetes.namespace.clone(),
            }),
            None => None,
        };
        if let (Some(object), Some(set)) = (&kube, &replicas.statefulset) {
            background.spawn(replicas::follow_statefulset(
                members.clone(),
                object.cluster.clone(),
                set.clone(),
                shutdown_rx.clone(),
            ));
        }
        background.spawn(replicas::sync_revocations_loop(
            members.clone(),
            store.clone(),
            crate::issuance::revoke::RevokeContext {
                current: current.clone(),
                publisher: crls.clone(),
                block_for: config.revocation.block_for,
            },
            config.audit.checkpoint_interval,
            shutdown_rx.clone(),
        ));
        background.spawn(replicas::exchange_checkpoints_loop(
            members.clone(),
            store.clone(),
            (
                config.audit.key_name.clone(),
                audit.signer.as_ref().map(|signer| signer.verifier()),
            ),
            (current.clone(), kube),
            config.audit.checkpoint_interval,
            shutdown_rx.clone(),
        ));
    }
    match &members {
        // The members confirm the bundle (if it drops a root) before this replica issues.
        Some(members) => replicas::confirm_at_start(
            config.clone(),
            current.clone(),
            store.clone(),
            members.clone(),
            (&background, shutdown_rx.clone()),
        ),
        None => replicas::record_accepted_bundles(&ca, &store),
    }
    // The cacerts keepers follow the election; without one, this replica keeps them.
    let cacerts_leads = if config.kubernetes.is_some() {
        leader.subscribe()
    } else {
        watch::channel(true).1
    };
    duties::start_cacerts_duties(
        config,
        current.clone(),
        cacerts_leads,
        crls.clone(),
        (&background, shutdown_rx.clone()),
    )
    .await?;
    let election = match &config.kubernetes {
        Some(kubernetes) => Some(
            start_cluster_duties(
                kubernetes,
                current.clone(),
                leader,
                config.revocation.configmap.then(|| crls.clone()),
                (&background, shutdown_rx.clone()),
            )
            .await?,
        ),
        None => None,
    };
    background.spawn(checkpoint_loop(
        audit.clone(),
        store.clone(),
        config.audit.checkpoint_interval,
        shutdown_rx.clone(),
    ));
    let export = &config.audit.export;
    if export.fail_closed_lag_records.is_some() || export.fail_closed_lag.is_some() {
        let sinks = [
            export.jsonl_dir.as_ref().map(|_| export::JSONL_SINK),
            export.otlp_endpoint.as_ref().map(|_| export::OTLP_SINK),
        ]
        .into_iter()
        .flatten()
        .collect();
        background.spawn(export::fail_closed_guard(
            store.clone(),
            sinks,
            (export.fail_closed_lag_records, export.fail_closed_lag),
            current.clone(),
            shutdown_rx.clone(),
        ));
    }
    for sink in export::export_sinks(&config.audit.export) {
        background.spawn(export::export_loop(
            store.clone(),
            (
                config.audit.key_name.clone(),
                config.audit.export.readable_records,
            ),
            sink,
            shutdown_rx.clone(),
        ));
    }
    background.spawn(refusal_summary_loop(
        current.clone(),
        REFUSAL_SUMMARY_INTERVAL,
        shutdown_rx.clone(),
    ));
    background.spawn(capacity::watch(
        store.clone(),
        capacity_policy,
        clock.clone(),
        shutdown_rx.clone(),
    ));
    background.spawn(prune_loop(
        store.clone(),
        config.audit.retention,
        config.audit.prune_interval,
        clock.clone(),
        shutdown_rx.clone(),
    ));

    let mut stop = shutdown_rx.clone();
    let service = CsrService::new(
        current.clone(),
        config.max_concurrent_requests,
        config.connections.max_message_bytes,
    );
    let request_timeout = config.request_timeout;
    let connection_limits = config.connections;
    let task = tokio::spawn(async move {
        http2_limits(tonic::transport::Server::builder(), &connection_limits)
            .timeout(request_timeout)
            .add_service(service)
            .add_service(health_service)
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await
            .map_err(ServeError::from)
    });
    tracing::info!(address = %local_address, dns_names = ?config.dns_names, "meshroot is serving the Istio CSR API over TLS");
    tracing::info!(address = %admin_address, "meshroot is serving the audit API, /metrics, /healthz and /readyz");
    let server = RunningServer {
        local_address,
        admin_address,
        bundle_address,
        store,
        root_bundle_pem,
        shutdown,
        task,
        admin_task,
        audit,
        current,
        config: config.clone(),
        clock,
        reloads: Arc::new(tokio::sync::Mutex::new(())),
        monitor,
        limits,
        election,
        members,
        fetch_partners: watch::channel(0).0,
        background,
    };
    server.watch_config_file(shutdown_rx.clone());
    server.follow_partners(shutdown_rx);
    Ok(server)
}
