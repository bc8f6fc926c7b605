//! Counters and histograms for the Prometheus text format (`/metrics` on the admin address).
//!
//! Istio's own CA metric names (`citadel_server_*`) are kept exactly, so existing dashboards
//! chart meshroot unchanged; meshroot's own metrics are prefixed `meshroot_`. Every label value
//! comes from a bounded set: a configured mesh name, a fixed outcome, or a refusal reason code.
//! Never an identity, a namespace or anything else a client chooses.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::domain::federation::partner::PartnerStatus;

/// Bucket upper bounds in seconds for request-sized latencies (an issuance, a TokenReview).
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative histogram with fixed buckets, updated without locks.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound plus the +Inf bucket; not cumulative (summed when rendered).
    buckets: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        if let Some(counter) = self.buckets.get(bucket) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(LATENCY_BUCKETS)
    }
}

/// How a certificate request ended, as a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum OutcomeLabel {
    Issued,
    Denied,
    Failed,
    Throttled,
}

impl OutcomeLabel {
    const ALL: [OutcomeLabel; 4] = [
        OutcomeLabel::Issued,
        OutcomeLabel::Denied,
        OutcomeLabel::Failed,
        OutcomeLabel::Throttled,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Denied => "denied",
            Self::Failed => "failed",
            Self::Throttled => "throttled",
        }
    }
}

/// What went wrong with a request, for Istio's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureLabel {
    /// The caller could not be authenticated (or may not impersonate).
    Authentication,
    /// The CSR could not be parsed or its signature did not verify.
    CsrParsing,
    /// Refused by policy (identity, SANs, TTL...).
    Policy,
    /// Refused because the CSR names no identity meshroot can read (no URI SAN, several, or
    /// not a SPIFFE ID): Istio's `citadel_server_id_extraction_err_count`.
    IdExtraction,
    /// meshroot's own failure after the request was accepted, with Istio's error type for
    /// `citadel_server_csr_sign_err_count{error}`: [`CA_NOT_READY`] or [`CERT_GEN_ERROR`].
    Internal(&'static str),
    /// Over a rate limit (the scope: `caller` or `namespace`); answered RESOURCE_EXHAUSTED.
    Throttled(&'static str),
}

/// Istio's `caerror` type for a CA that cannot sign now (an expired or stopped signer, an
/// unserved mesh, a hold).
pub const CA_NOT_READY: &str = "CA_NOT_READY";
/// Istio's `caerror` type for a failure to make the certificate (signing, the check before it
/// leaves, recording it).
pub const CERT_GEN_ERROR: &str = "CERT_GEN_ERROR";

/// The process's metrics; shared by every authority a reload builds, so counts survive reloads.
#[derive(Debug, Default)]
pub struct Metrics {
    csr_requests: AtomicU64,
    authentication_failures: AtomicU64,
    csr_parsing_errors: AtomicU64,
    id_extraction_errors: AtomicU64,
    /// By Istio's error type ([`CA_NOT_READY`], [`CERT_GEN_ERROR`]).
    sign_errors: RwLock<BTreeMap<&'static str, Arc<AtomicU64>>>,
    issued: AtomicU64,
    /// By refusal reason code (a fixed set of static strings).
    denials: RwLock<BTreeMap<&'static str, Arc<AtomicU64>>>,
    /// By rate-limit scope.
    throttled: RwLock<BTreeMap<&'static str, Arc<AtomicU64>>>,
    /// By mesh (from the configuration), then outcome.
    issuance: RwLock<BTreeMap<String, Arc<[Histogram; OutcomeLabel::ALL.len()]>>>,
    token_review: Histogram,
    token_review_cache_hits: AtomicU64,
    token_review_cache_misses: AtomicU64,
    /// By cluster (from the configuration): whether its istiod serves a certificate signed by
    /// the intermediate now in its `cacerts` (1) or by an older one (0).
    istiod_intermediate_current: RwLock<BTreeMap<String, bool>>,
    /// Revocation: what the CRL keeper last found.
    revocation: RwLock<RevocationGauges>,
    /// The `istiod-tls` certificate this replica keeps (the elected replica only).
    istiod_tls: RwLock<Option<IstiodTls>>,
    /// By mesh: whether its ztunnel callers are served a chain with URI name constraints, which
    /// ztunnel's verifier refuses (1), or not (0), as of the last ztunnel request.
    ztunnel_constrained: RwLock<BTreeMap<String, bool>>,
    /// By (mesh, partner trust domain): the partner's bundle and fetches.
    partners: RwLock<BTreeMap<(String, String), PartnerStatus>>,
    /// By (mesh, cluster): NotBefore and NotAfter (Unix seconds) of the cluster's `cacerts`.
    pub(crate) cluster_intermediates: RwLock<BTreeMap<(String, String), (i64, i64)>>,
}

/// The `istiod-tls` certificate the elected replica keeps: its mesh, its namespace, and when it
/// became valid and expires (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstiodTls {
    pub mesh: String,
    pub namespace: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// What the CRL keeper reports (docs/operations/revoke-a-certificate.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RevocationGauges {
    /// Revoked certificates not yet expired.
    pub revoked_unexpired: u64,
    /// Per CRL issuer (its subject): Unix seconds of thisUpdate and nextUpdate.
    pub crls: BTreeMap<String, (i64, i64)>,
    /// Whether the CRLs cover every CA of the meshes' chains (else they are not published to
    /// Istio).
    pub complete: bool,
    /// Per place the CRLs are published (`file`, `configmap`, `cacerts/<cluster>`): Unix
    /// seconds of the last successful publication.
    pub published: BTreeMap<String, i64>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A certificate request arrived (Istio's `citadel_server_csr_count`).
    pub(crate) fn request_received(&self) {
        self.csr_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A certificate request ended. `mesh` must be a configured mesh name (or empty when the
    /// caller's mesh was never established); `reason` a refusal reason code.
    pub(crate) fn request_finished(
        &self,
        mesh: &str,
        result: Result<(), (FailureLabel, Option<&'static str>)>,
        elapsed: Duration,
    ) {
        let outcome = match result {
            Ok(()) => {
                self.issued.fetch_add(1, Ordering::Relaxed);
                OutcomeLabel::Issued
            }
            Err((failure, reason)) => {
                match failure {
                    FailureLabel::Authentication => {
                        self.authentication_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    FailureLabel::CsrParsing => {
                        self.csr_parsing_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    FailureLabel::Throttled(scope) => {
                        counter_in(&self.throttled, scope).fetch_add(1, Ordering::Relaxed);
                    }
                    FailureLabel::IdExtraction => {
                        self.id_extraction_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    FailureLabel::Internal(error) => {
                        counter_in(&self.sign_errors, error).fetch_add(1, Ordering::Relaxed);
                    }
                    FailureLabel::Policy => {}
                }
                if let Some(reason) = reason {
                    counter_in(&self.denials, reason).fetch_add(1, Ordering::Relaxed);
                }
                match failure {
                    FailureLabel::Internal(_) => OutcomeLabel::Failed,
                    FailureLabel::Throttled(_) => OutcomeLabel::Throttled,
                    _ => OutcomeLabel::Denied,
                }
            }
        };
        // Looked up by &str: no allocation per request once the mesh has its histograms.
        let histograms = read(&self.issuance).get(mesh).cloned();
        let histograms = match histograms {
            Some(histograms) => histograms,
            None => write(&self.issuance)
                .entry(mesh.to_owned())
                .or_insert_with(|| Arc::new(std::array::from_fn(|_| Histogram::default())))
                .clone(),
        };
        if let Some(histogram) = histograms.get(outcome as usize) {
            histogram.observe(elapsed);
        }
    }

    /// A TokenReview call to an API server took `elapsed` (answered or not).
    pub(crate) fn token_review(&self, elapsed: Duration) {
        self.token_review.observe(elapsed);
    }

    /// A token was judged from the TokenReview cache (`hit`) or needed a review.
    pub(crate) fn token_review_cache(&self, hit: bool) {
        let counter = if hit {
            &self.token_review_cache_hits
        } else {
            &self.token_review_cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// What the last probe of `cluster`'s istiod found: `Some(true)` when it serves a
    /// certificate signed by the intermediate in its `cacerts`, `Some(false)` when by an older
    /// one (istiod has not reloaded: restart it), `None` when unknown (not reachable).
    pub(crate) fn istiod_intermediate(&self, cluster: &str, current: Option<bool>) {
        let mut map = self
            .istiod_intermediate_current
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match current {
            Some(current) => {
                map.insert(cluster.to_owned(), current);
            }
            None => {
                map.remove(cluster);
            }
        }
    }

    /// A ztunnel request for `mesh` met a chain with (`true`) or without URI name constraints;
    /// true when this is news (it was not so before), for a caller that warns once.
    pub(crate) fn ztunnel_chain(&self, mesh: &str, constrained: bool) -> bool {
        let mut map = self
            .ztunnel_constrained
            .write()
            .unwrap_or_else(|p| p.into_inner());
        map.insert(mesh.to_owned(), constrained) != Some(constrained) && constrained
    }

    /// The meshes whose ztunnel callers were last served a URI-constrained chain.
    pub(crate) fn ztunnel_constrained_meshes(&self) -> Vec<String> {
        read(&self.ztunnel_constrained)
            .iter()
            .filter(|(_, constrained)| **constrained)
            .map(|(mesh, _)| mesh.clone())
            .collect()
    }

    /// The `istiod-tls` certificate this replica keeps now, or `None` once it stops keeping it.
    pub fn istiod_tls(&self, kept: Option<IstiodTls>) {
        *self.istiod_tls.write().unwrap_or_else(|p| p.into_inner()) = kept;
    }

    /// What [`Metrics::istiod_tls`] last said.
    pub(crate) fn istiod_tls_kept(&self) -> Option<IstiodTls> {
        self.istiod_tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Updates the revocation gauges.
    pub fn revocation(&self, update: impl FnOnce(&mut RevocationGauges)) {
        let mut gauges = self.revocation.write().unwrap_or_else(|p| p.into_inner());
        update(&mut gauges);
    }

    /// Changes what is known of `mesh`'s partner `trust_domain`.
    pub fn partner(&self, mesh: &str, trust_domain: &str, update: impl FnOnce(&mut PartnerStatus)) {
        let mut partners = self.partners.write().unwrap_or_else(|p| p.into_inner());
        update(
            partners
                .entry((mesh.to_owned(), trust_domain.to_owned()))
                .or_default(),
        );
    }

    /// Every partner of every mesh: ((mesh, trust domain), status).
    pub fn partners(&self) -> Vec<((String, String), PartnerStatus)> {
        read(&self.partners)
            .iter()
            .map(|(key, status)| (key.clone(), status.clone()))
            .collect()
    }

    /// The partner metrics, whose ages need the time.
    pub(crate) fn render_partners(&self, out: &mut Exposition, now: SystemTime) {
        let partners = read(&self.partners);
        fn labels((mesh, td): &(String, String)) -> Vec<(&'static str, &str)> {
            vec![("mesh", mesh.as_str()), ("trust_domain", td.as_str())]
        }
        out.labeled(
            "meshroot_partner_bundle_age_seconds",
            "Seconds since the partner bundle this replica holds was fetched (absent: none \
             held). It grows while fetches fail; the held bundle stays in force.",
            Kind::Gauge,
            partners.iter().filter_map(|(key, status)| {
                let held = status.held.as_ref()?;
                let age = now.duration_since(held.fetched_at).unwrap_or_default();
                Some((labels(key), age.as_secs_f64()))
            }),
        );
        out.labeled(
            "meshroot_partner_bundle_sequence",
            "The spiffe_sequence of the partner bundle held.",
            Kind::Gauge,
            partners.iter().filter_map(|(key, status)| {
                Some((labels(key), status.held.as_ref()?.sequence as f64))
            }),
        );
        out.labeled(
            "meshroot_partner_bundle_fetch_failures_total",
            "Fetches of the partner's bundle endpoint that failed since the start.",
            Kind::Counter,
            partners
                .iter()
                .map(|(key, status)| (labels(key), status.failures as f64)),
        );
        out.labeled(
            "meshroot_partner_roots_uncovered",
            "Roots of the held partner bundle that no cross-certificate in force covers: the \
             mesh's proxies refuse partner chains under them until `meshroot partner certify` \
             runs again.",
            Kind::Gauge,
            partners
                .iter()
                .map(|(key, status)| (labels(key), status.uncovered() as f64)),
        );
    }

    /// Writes every metric this struct holds.
    pub fn render(&self, out: &mut Exposition) {
        let value = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as f64;
        out.counter(
            "citadel_server_csr_count",
            "Certificate signing requests received.",
            value(&self.csr_requests),
        );
        out.counter(
            "citadel_server_authentication_failure_count",
            "Requests refused because the caller could not be authenticated.",
            value(&self.authentication_failures),
        );
        out.counter(
            "citadel_server_csr_parsing_err_count",
            "Requests whose CSR could not be parsed or verified.",
            value(&self.csr_parsing_errors),
        );
        out.counter(
            "citadel_server_id_extraction_err_count",
            "Requests whose CSR names no identity that can be read (no URI SAN, several, or not \
             a SPIFFE ID).",
            value(&self.id_extraction_errors),
        );
        let sign_errors = read(&self.sign_errors);
        out.labeled(
            "citadel_server_csr_sign_err_count",
            "Accepted requests that got no certificate, by Istio's error type: CA_NOT_READY (an \
             expired or stopped signer, a hold) or CERT_GEN_ERROR (signing, the leaf check, the \
             record).",
            Kind::Counter,
            [CA_NOT_READY, CERT_GEN_ERROR].into_iter().map(|error| {
                let count = sign_errors.get(error).map_or(0.0, |c| value(c));
                (vec![("error", error)], count)
            }),
        );
        drop(sign_errors);
        out.counter(
            "citadel_server_success_cert_issuance_count",
            "Certificates issued.",
            value(&self.issued),
        );
        let ztunnel = read(&self.ztunnel_constrained);
        out.labeled(
            "meshroot_ztunnel_constrained_chain",
            "1 when ztunnel (ImpersonatedIdentity, node-proxy accounts), of this mesh or of a \
             mesh under the same root whose peer it is, meets this mesh's chain with URI name \
             constraints, which ztunnel's verifier (rustls-webpki) refuses: those handshakes fail. \
             Fix: an intermediate for the ambient data plane.",
            Kind::Gauge,
            ztunnel.iter().map(|(mesh, constrained)| {
                (
                    vec![("mesh", mesh.as_str())],
                    f64::from(u8::from(*constrained)),
                )
            }),
        );
        drop(ztunnel);
        let istiod = read(&self.istiod_intermediate_current);
        out.labeled(
            "meshroot_istiod_intermediate_current",
            "1 when the cluster's istiod serves a certificate signed by the intermediate meshroot \
             keeps in its cacerts, 0 when by an older one (istiod has not reloaded it).",
            Kind::Gauge,
            istiod.iter().map(|(cluster, current)| {
                (
                    vec![("cluster", cluster.as_str())],
                    if *current { 1.0 } else { 0.0 },
                )
            }),
        );
        drop(istiod);
        let revocation = read(&self.revocation);
        out.gauge(
            "meshroot_revoked_certificates",
            "Revoked certificates that have not expired yet (listed in a CRL).",
            revocation.revoked_unexpired as f64,
        );
        out.gauge(
            "meshroot_crl_complete",
            "1 when the CRLs cover every CA of the meshes' chains; 0: they are not published to \
             Istio (istio-ca-crl, cacerts) until a CRL of the root is in [revocation] extra_crls.",
            if revocation.complete { 1.0 } else { 0.0 },
        );
        out.labeled(
            "meshroot_crl_this_update_seconds",
            "When each published CRL was signed (Unix seconds); its age is time() minus this.",
            Kind::Gauge,
            revocation
                .crls
                .iter()
                .map(|(issuer, (this, _))| (vec![("issuer", issuer.as_str())], *this as f64)),
        );
        out.labeled(
            "meshroot_crl_next_update_seconds",
            "When each published CRL lapses (Unix seconds). A lapsed CRL makes Envoy refuse every \
             certificate under its issuer: alert well before.",
            Kind::Gauge,
            revocation
                .crls
                .iter()
                .map(|(issuer, (_, next))| (vec![("issuer", issuer.as_str())], *next as f64)),
        );
        out.labeled(
            "meshroot_crl_published_seconds",
            "When the CRLs were last published to each place (file, configmap, cacerts/<cluster>).",
            Kind::Gauge,
            revocation
                .published
                .iter()
                .map(|(place, at)| (vec![("target", place.as_str())], *at as f64)),
        );
        drop(revocation);
        let denials = read(&self.denials);
        out.labeled(
            "meshroot_denials_total",
            "Refused certificate requests by reason.",
            Kind::Counter,
            denials
                .iter()
                .map(|(reason, count)| (vec![("reason", *reason)], value(count))),
        );
        drop(denials);
        let throttled = read(&self.throttled);
        out.labeled(
            "meshroot_rate_limited_total",
            "Requests answered RESOURCE_EXHAUSTED by a rate limit, by scope (caller, namespace).",
            Kind::Counter,
            throttled
                .iter()
                .map(|(scope, count)| (vec![("scope", *scope)], value(count))),
        );
        drop(throttled);
        let issuance = read(&self.issuance);
        out.histograms(
            "meshroot_issuance_duration_seconds",
            "Time from receiving a certificate request to answering it, by mesh and outcome.",
            issuance.iter().flat_map(|(mesh, histograms)| {
                OutcomeLabel::ALL
                    .iter()
                    .zip(histograms.iter())
                    // Outcomes a mesh never had are left out rather than shown as zeros.
                    .filter(|(_, histogram)| histogram.count() > 0)
                    .map(move |(outcome, histogram)| {
                        (
                            vec![("mesh", mesh.as_str()), ("outcome", outcome.label())],
                            histogram,
                        )
                    })
            }),
        );
        drop(issuance);
        out.histograms(
            "meshroot_token_review_duration_seconds",
            "Time a TokenReview call to a Kubernetes API server took.",
            std::iter::once((Vec::new(), &self.token_review)),
        );
        out.counter(
            "meshroot_token_review_cache_hits_total",
            "Tokens judged from the TokenReview cache.",
            value(&self.token_review_cache_hits),
        );
        out.counter(
            "meshroot_token_review_cache_misses_total",
            "Tokens that needed a TokenReview.",
            value(&self.token_review_cache_misses),
        );
    }
}

fn counter_in(
    map: &RwLock<BTreeMap<&'static str, Arc<AtomicU64>>>,
    key: &'static str,
) -> Arc<AtomicU64> {
    if let Some(counter) = read(map).get(key) {
        return counter.clone();
    }
    write(map).entry(key).or_default().clone()
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match lock.read() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match lock.write() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A Prometheus text-format (version 0.0.4) document being written.
#[derive(Debug, Default)]
pub struct Exposition(String);

/// One sample's labels: (name, value) pairs.
pub(crate) type Labels<'a> = &'a [(&'a str, &'a str)];

/// The type of a counter or gauge family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: f64) {
        self.labeled(name, help, Kind::Counter, [(Vec::new(), value)]);
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.labeled(name, help, Kind::Gauge, [(Vec::new(), value)]);
    }

    /// A counter or gauge family with a sample per label set.
    pub(crate) fn labeled<'l>(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        samples: impl IntoIterator<Item = (Vec<(&'l str, &'l str)>, f64)>,
    ) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        self.header(name, help, kind);
        for (labels, value) in samples {
            self.sample(name, &labels, None, value);
        }
    }

    /// One histogram family with a series per label set.
    pub fn histograms<'h>(
        &mut self,
        name: &str,
        help: &str,
        series: impl Iterator<Item = (Vec<(&'h str, &'h str)>, &'h Histogram)>,
    ) {
        self.header(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        for (labels, histogram) in series {
            let mut cumulative = 0u64;
            for (index, counter) in histogram.buckets.iter().enumerate() {
                cumulative += counter.load(Ordering::Relaxed);
                let le = match histogram.bounds.get(index) {
                    Some(bound) => format_value(*bound),
                    None => "+Inf".to_owned(),
                };
                self.sample(&bucket, &labels, Some(&le), cumulative as f64);
            }
            let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            self.sample(&format!("{name}_sum"), &labels, None, sum);
            // The count is the +Inf bucket, so the two always agree in one scrape.
            self.sample(&format!("{name}_count"), &labels, None, cumulative as f64);
        }
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: Labels<'_>, le: Option<&str>, value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() || le.is_some() {
            self.0.push('{');
            let mut first = true;
            for (label, label_value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
                if !first {
                    self.0.push(',');
                }
                first = false;
                let _ = write!(self.0, "{label}=\"{}\"", escape_label(label_value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", format_value(value));
    }

    pub fn finish(self) -> String {
        self.0
    }
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{value}")
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches_the_inf_bucket() {
        let histogram = Histogram::new(&[0.001, 0.01]);
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_secs(3));
        let mut out = Exposition::new();
        out.histograms(
            "h",
            "help",
            std::iter::once((vec![("mesh", "a")], &histogram)),
        );
        let text = out.finish();
        assert!(
            text.contains("h_bucket{mesh=\"a\",le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("h_bucket{mesh=\"a\",le=\"0.01\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("h_bucket{mesh=\"a\",le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("h_count{mesh=\"a\"} 4\n"), "{text}");
        assert!(text.contains("h_sum{mesh=\"a\"} 3.0105\n"), "{text}");
    }

    #[test]
    fn outcomes_feed_istios_counters_and_the_reason_counter() {
        let metrics = Metrics::default();
        for _ in 0..3 {
            metrics.request_received();
        }
        metrics.request_finished("a", Ok(()), Duration::from_millis(1));
        metrics.request_finished(
            "",
            Err((FailureLabel::Authentication, Some("token-invalid"))),
            Duration::from_millis(1),
        );
        metrics.request_finished(
            "a",
            Err((FailureLabel::CsrParsing, Some("csr-signature"))),
            Duration::from_millis(1),
        );
        metrics.request_finished(
            "a",
            Err((FailureLabel::IdExtraction, Some("csr-uri-san-count"))),
            Duration::from_millis(1),
        );
        metrics.request_finished(
            "a",
            Err((FailureLabel::Internal(CA_NOT_READY), Some("signer-expired"))),
            Duration::from_millis(1),
        );
        let mut out = Exposition::new();
        metrics.render(&mut out);
        let text = out.finish();
        for line in [
            "citadel_server_csr_count 3",
            "citadel_server_success_cert_issuance_count 1",
            "citadel_server_authentication_failure_count 1",
            "citadel_server_csr_parsing_err_count 1",
            "citadel_server_id_extraction_err_count 1",
            "citadel_server_csr_sign_err_count{error=\"CA_NOT_READY\"} 1",
            "citadel_server_csr_sign_err_count{error=\"CERT_GEN_ERROR\"} 0",
            "meshroot_denials_total{reason=\"token-invalid\"} 1",
            "meshroot_issuance_duration_seconds_count{mesh=\"a\",outcome=\"failed\"} 1",
            "meshroot_issuance_duration_seconds_count{mesh=\"a\",outcome=\"issued\"} 1",
            "meshroot_issuance_duration_seconds_count{mesh=\"a\",outcome=\"denied\"} 2",
            "meshroot_issuance_duration_seconds_count{mesh=\"\",outcome=\"denied\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::new();
        out.labeled(
            "g",
            "a \\ help\nline",
            Kind::Gauge,
            [(vec![("l", "a\"b\\c\nd")], 1.5)],
        );
        let text = out.finish();
        assert!(text.contains("# HELP g a \\\\ help\\nline\n"), "{text}");
        assert!(text.contains("g{l=\"a\\\"b\\\\c\\nd\"} 1.5\n"), "{text}");
    }
}
