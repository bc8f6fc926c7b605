//! Health and metrics on the admin address: `/metrics` (Prometheus text), `/healthz`
//! (the process answers), `/readyz` (it can issue now), and the gRPC health service
//! (`grpc.health.v1.Health`) on both listeners.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::adapters::store::SledStore;
use crate::domain::capacity::{CapacityPolicy, Forecast, StoreUsage};
use crate::domain::clock::unix_seconds;
use crate::domain::metrics::{Exposition, Kind, Metrics};
use crate::edge::status_page::render::StoreStatus;
use crate::issuance::CurrentAuthority;
use crate::pb::istio::istio_certificate_service_server::IstioCertificateServiceServer;

/// The gRPC service name health checks ask about (besides "", the whole server).
pub(crate) const CSR_SERVICE: &str =
    <IstioCertificateServiceServer<crate::edge::grpc::CsrService> as tonic::server::NamedService>::NAME;

/// What `/readyz`, `/metrics` and the gRPC health service look at.
#[derive(Clone)]
pub(crate) struct Monitor {
    pub metrics: Arc<Metrics>,
    current: Arc<CurrentAuthority>,
    store: Arc<SledStore>,
    draining: Arc<AtomicBool>,
    health: HealthReporter,
    /// Whether this replica leads (only with `[kubernetes]` duties).
    leader: Option<tokio::sync::watch::Receiver<bool>>,
    /// The export sinks whose lag is reported (their cursors live in the store).
    export_sinks: Vec<&'static str>,
    /// What the capacity forecast assumes (retention window, the store's budget).
    capacity: CapacityPolicy,
    /// With `[replicas]`: the other members (`meshroot_member_reachable`).
    members: Option<Arc<crate::edge::replicas::Members>>,
    /// meshroot's own serving certificate (`certificate="serving"`).
    serving: Option<Arc<super::tls::ServingCertificate>>,
}

impl Monitor {
    pub fn new(
        metrics: Arc<Metrics>,
        current: Arc<CurrentAuthority>,
        store: Arc<SledStore>,
        health: HealthReporter,
    ) -> Self {
        Self {
            metrics,
            current,
            store,
            draining: Arc::new(AtomicBool::new(false)),
            health,
            leader: None,
            export_sinks: Vec::new(),
            capacity: CapacityPolicy::default(),
            members: None,
            serving: None,
        }
    }

    /// Reports whether each other member answers (`meshroot_member_reachable`).
    pub(crate) fn with_members(mut self, members: Arc<crate::edge::replicas::Members>) -> Self {
        self.members = Some(members);
        self
    }

    /// Reports the serving certificate's validity.
    pub(super) fn with_serving(mut self, serving: Arc<super::tls::ServingCertificate>) -> Self {
        self.serving = Some(serving);
        self
    }

    /// What the capacity forecast assumes.
    pub(crate) fn with_capacity(mut self, capacity: CapacityPolicy) -> Self {
        self.capacity = capacity;
        self
    }

    /// Reports how far `sink` is behind the durable log (`meshroot_export_lag_*`).
    pub(crate) fn with_export_sink(mut self, sink: &'static str) -> Self {
        self.export_sinks.push(sink);
        self
    }

    /// Reports whether this replica is the elected one (`meshroot_leader`).
    pub(crate) fn with_leader(mut self, leader: tokio::sync::watch::Receiver<bool>) -> Self {
        self.leader = Some(leader);
        self
    }

    /// Marks the server as going away: not ready, gRPC health NOT_SERVING.
    pub(crate) async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for service in ["", CSR_SERVICE] {
            self.health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
    }

    /// Marks the server as serving (at start).
    pub async fn serve(&self) {
        for service in ["", CSR_SERVICE] {
            self.health
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }
    }

    /// Why the server cannot issue now; empty when it is ready.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.draining.load(Ordering::SeqCst) {
            reasons.push("shutting down".to_owned());
        }
        let ca = self.current.get();
        let now = ca.clock().now();
        let mut meshes = 0;
        for (mesh, authority) in ca.mesh_signers() {
            meshes += 1;
            if authority.signing_not_after() <= now {
                reasons.push(format!("mesh {mesh}: the signing certificate has expired"));
            }
            if let Err(error) = authority.key_health() {
                reasons.push(format!("mesh {mesh}: the signing key: {error}"));
            }
            if authority.is_unhealthy() {
                reasons.push(format!(
                    "mesh {mesh}: a leaf's signature did not verify; the signer refuses to sign \
                     until its key is loaded again (reload or restart)"
                ));
            }
        }
        if meshes == 0 {
            reasons.push("no CA material loaded".to_owned());
        }
        if self.store.flush_failing() {
            reasons.push("the record store cannot flush".to_owned());
        }
        reasons.extend(ca.holds().reasons());
        reasons.sort();
        reasons
    }

    /// The whole `/metrics` document.
    pub fn scrape(&self) -> String {
        let mut out = Exposition::new();
        self.metrics.render(&mut out);
        let ca = self.current.get();
        self.metrics.render_partners(&mut out, ca.clock().now());
        let mut meshes: Vec<_> = ca.mesh_signers().collect();
        meshes.sort_by(|a, b| a.0.cmp(b.0));
        let now = unix_seconds(ca.clock().now()) as f64;
        let mut root_expiry = Vec::new();
        let mut chain_expiry = Vec::new();
        for (mesh, authority) in &meshes {
            // The bundle's earliest root: the one that runs out first is what needs rotating.
            if let Some(expiry) = earliest_not_after(authority.roots()) {
                root_expiry.push((vec![("mesh", *mesh)], unix_seconds(expiry) as f64));
            }
            let chain = earliest_not_after(authority.intermediates())
                .unwrap_or_else(|| authority.signing_not_after())
                .min(authority.signing_not_after());
            chain_expiry.push((vec![("mesh", *mesh)], unix_seconds(chain) as f64));
        }
        // Istio's derived gauges: the time left, negative once expired.
        fn left<'a>(
            at: &[(Vec<(&'static str, &'a str)>, f64)],
            now: f64,
        ) -> Vec<(Vec<(&'static str, &'a str)>, f64)> {
            at.iter()
                .map(|(labels, at)| (labels.clone(), at - now))
                .collect()
        }
        out.labeled(
            "citadel_server_root_cert_expiry_seconds",
            "Seconds until the earliest root in the mesh's trust bundle expires (negative: \
             expired).",
            Kind::Gauge,
            left(&root_expiry, now),
        );
        out.labeled(
            "citadel_server_cert_chain_expiry_seconds",
            "Seconds until the mesh's signing chain first expires (negative: expired).",
            Kind::Gauge,
            left(&chain_expiry, now),
        );
        // Not one of Istio's: istiod's own serving certificate has no gauge in istiod. Only the
        // elected replica, which keeps the Secret, reports it.
        let istiod = self.metrics.istiod_tls_kept();
        out.labeled(
            "meshroot_istiod_tls_expiry_seconds",
            "Seconds until the istiod-tls certificate this replica keeps expires (negative: \
             expired); only on the elected replica.",
            Kind::Gauge,
            istiod.as_ref().map(|kept| {
                (
                    vec![
                        ("mesh", kept.mesh.as_str()),
                        ("namespace", kept.namespace.as_str()),
                    ],
                    kept.not_after as f64 - now,
                )
            }),
        );
        out.labeled(
            "citadel_server_root_cert_expiry_timestamp",
            "When the earliest root in the mesh's trust bundle expires (Unix seconds).",
            Kind::Gauge,
            root_expiry,
        );
        out.labeled(
            "citadel_server_cert_chain_expiry_timestamp",
            "When the mesh's signing chain (intermediates) first expires (Unix seconds).",
            Kind::Gauge,
            chain_expiry,
        );
        out.histograms(
            "meshroot_store_commit_duration_seconds",
            "Time one group commit (flush and fsync of the record store) took.",
            std::iter::once((Vec::new(), self.store.commit_latency())),
        );
        out.gauge(
            "meshroot_store_records",
            "Records in the issuance log.",
            self.store.len() as f64,
        );
        self.capacity_metrics(&mut out);
        self.validity_metrics(&mut out, &meshes);
        if let Some(members) = &self.members {
            out.labeled(
                "meshroot_member_reachable",
                "1 if the other member answered this replica's last request (the checkpoint \
                 exchange asks every member each interval), 0 if it could not be reached or did \
                 not answer within member_timeout.",
                Kind::Gauge,
                members
                    .reachability()
                    .iter()
                    .map(|(member, reached)| {
                        (
                            vec![("member", member.as_str())],
                            if *reached { 1.0 } else { 0.0 },
                        )
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let mut lag_records = Vec::new();
        let mut lag_seconds = Vec::new();
        for sink in &self.export_sinks {
            let now = self.current.get().clock().now();
            let Ok((behind, age)) = self.store.export_lag(sink, now) else {
                continue;
            };
            lag_records.push((vec![("sink", *sink)], behind as f64));
            let age = age.as_secs_f64();
            lag_seconds.push((vec![("sink", *sink)], age));
        }
        if !self.export_sinks.is_empty() {
            out.labeled(
                "meshroot_export_lag_records",
                "Durable records the export sink has not shipped yet.",
                Kind::Gauge,
                lag_records,
            );
            out.labeled(
                "meshroot_export_lag_seconds",
                "Age of the oldest durable record the export sink has not shipped yet.",
                Kind::Gauge,
                lag_seconds,
            );
        }
        if let Some(leader) = &self.leader {
            out.gauge(
                "meshroot_leader",
                "1 while this replica holds the Lease and does the cluster duties.",
                if *leader.borrow() { 1.0 } else { 0.0 },
            );
        }
        let holds = self.current.get().holds().clone();
        out.labeled(
            "meshroot_hold",
            "1 while this replica holds issuance for this reason: cluster-gate (the members have \
             not confirmed the trust bundle), export-lag (a fail-closed sink lags), log-rollback \
             (the log is behind a checkpoint it had published: a lost or restored volume).",
            Kind::Gauge,
            crate::issuance::Hold::ALL.iter().map(|hold| {
                (
                    vec![("hold", hold.code())],
                    if holds.is_set(*hold) { 1.0 } else { 0.0 },
                )
            }),
        );
        let ready = self.not_ready_reasons().is_empty();
        out.gauge(
            "meshroot_ready",
            "1 when the server can issue certificates (as /readyz).",
            if ready { 1.0 } else { 0.0 },
        );
        out.finish()
    }

    /// The store's usage and forecast as of the clock's now (None, logged, if unmeasurable).
    fn forecast(&self) -> Option<(StoreUsage, Forecast)> {
        let now = self.current.get().clock().now();
        match self.store.usage(now) {
            Ok(usage) => {
                let usage = usage.within(self.capacity.volume_bytes);
                Some((usage, Forecast::of(&usage, self.capacity.window)))
            }
            Err(error) => {
                tracing::warn!(%error, "the record store's size could not be measured");
                None
            }
        }
    }

    /// The status page's record-store panel.
    pub(crate) fn store_status(&self) -> Option<StoreStatus> {
        let (usage, forecast) = self.forecast()?;
        Some(StoreStatus {
            bytes: usage.store_bytes,
            records: usage.records,
            bytes_per_record: forecast.bytes_per_record,
            records_per_day: forecast.records_per_day,
            volume_free_bytes: usage.volume_free_bytes,
            full_in: forecast.full_in,
            alarming: forecast.alarming(),
        })
    }

    /// The store's size and the forecast of when its volume is full.
    /// When each certificate meshroot signs with, serves or keeps became valid and expires, so
    /// alerts can warn at a share of its lifetime rather than a fixed number of days: per mesh
    /// the root that expires first and the intermediate that expires first, the `istiod-tls`
    /// certificate and each cluster's `cacerts` intermediate the elected replica keeps, and
    /// meshroot's own serving certificate.
    fn validity_metrics(
        &self,
        out: &mut Exposition,
        meshes: &[(&str, &Arc<crate::domain::signer::MeshSigner>)],
    ) {
        let earliest = |certificates: &[rustls_pki_types::CertificateDer<'_>]| {
            certificates
                .iter()
                .filter_map(|der| crate::domain::audit::rotation::validity_of(der))
                .min_by_key(|(_, not_after)| *not_after)
        };
        /// Labels (certificate, then mesh) and validity (NotBefore, NotAfter).
        type Labels = Vec<(&'static str, String)>;
        let mut validity: Vec<(Labels, (i64, i64))> = Vec::new();
        fn borrowed<'a>(labels: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
            labels.iter().map(|(k, v)| (*k, v.as_str())).collect()
        }
        for (mesh, authority) in meshes {
            let of = |certificate: &str| {
                vec![
                    ("certificate", certificate.to_owned()),
                    ("mesh", (*mesh).to_owned()),
                ]
            };
            if let Some(root) = earliest(authority.roots()) {
                validity.push((of("root"), root));
            }
            if let Some(intermediate) = earliest(authority.intermediates()) {
                validity.push((of("intermediate"), intermediate));
            }
        }
        let clusters = self
            .metrics
            .cluster_intermediates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for ((mesh, cluster), kept) in clusters {
            let labels = vec![
                ("certificate", "cluster-intermediate".to_owned()),
                ("mesh", mesh),
                ("cluster", cluster),
            ];
            validity.push((labels, kept));
        }
        if let Some(kept) = self.metrics.istiod_tls_kept() {
            let labels = vec![
                ("certificate", "istiod-tls".to_owned()),
                ("mesh", kept.mesh),
            ];
            validity.push((labels, (kept.not_before, kept.not_after)));
        }
        let serving = self.serving.as_ref().and_then(|serving| {
            let slot = serving.0.read().unwrap_or_else(|p| p.into_inner());
            crate::domain::audit::rotation::validity_of(slot.as_ref()?.cert.first()?)
        });
        if let Some(serving) = serving {
            validity.push((vec![("certificate", "serving".to_owned())], serving));
        }
        out.labeled(
            "meshroot_certificate_not_before_timestamp",
            "When the certificate became valid (Unix seconds): per mesh the root and the \
             intermediate that expire first, the istiod-tls certificate the elected replica \
             keeps, each cluster's cacerts intermediate it keeps, and meshroot's serving \
             certificate.",
            Kind::Gauge,
            validity
                .iter()
                .map(|(labels, (from, _))| (borrowed(labels), *from as f64)),
        );
        out.labeled(
            "meshroot_certificate_not_after_timestamp",
            "When the certificate expires (Unix seconds); the same certificates as \
             meshroot_certificate_not_before_timestamp.",
            Kind::Gauge,
            validity
                .iter()
                .map(|(labels, (_, to))| (borrowed(labels), *to as f64)),
        );
    }

    fn capacity_metrics(&self, out: &mut Exposition) {
        let Some((usage, forecast)) = self.forecast() else {
            return;
        };
        out.gauge(
            "meshroot_store_bytes",
            "Bytes of the record store's files.",
            usage.store_bytes as f64,
        );
        out.gauge(
            "meshroot_store_bytes_per_record",
            "Bytes on disk per record kept (the benchmark's figure below 100,000 records).",
            forecast.bytes_per_record,
        );
        out.gauge(
            "meshroot_store_records_per_day",
            "Records appended in the last day (extrapolated from the store's age if younger).",
            forecast.records_per_day,
        );
        out.gauge(
            "meshroot_store_volume_free_bytes",
            "Free bytes on the record store's volume.",
            usage.volume_free_bytes as f64,
        );
        out.gauge(
            "meshroot_store_full_in_seconds",
            "Seconds until the record store's volume is full at the last day's rate, given \
             retention (+Inf: pruning balances the growth before it fills).",
            forecast
                .full_in
                .map(|left| left.as_secs_f64())
                .unwrap_or(f64::INFINITY),
        );
    }

    /// `/metrics`, `/healthz` and `/readyz` as routes for the admin listener.
    /// Any other path is a 404 (which gRPC clients read as UNIMPLEMENTED).
    pub fn routes(&self) -> axum::Router {
        let metrics = self.clone();
        let readiness = self.clone();
        axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let monitor = metrics.clone();
                    async move {
                        (
                            [(
                                header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            monitor.scrape(),
                        )
                            .into_response()
                    }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/readyz",
                axum::routing::get(move || {
                    let monitor = readiness.clone();
                    async move {
                        let reasons = monitor.not_ready_reasons();
                        if reasons.is_empty() {
                            (StatusCode::OK, "ready\n".to_owned())
                        } else {
                            (
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("not ready: {}\n", reasons.join("; ")),
                            )
                        }
                    }
                }),
            )
    }
}

fn earliest_not_after(certificates: &[rustls_pki_types::CertificateDer<'_>]) -> Option<SystemTime> {
    certificates
        .iter()
        .filter_map(|der| crate::domain::audit::rotation::not_after_of(der))
        .min()
}
