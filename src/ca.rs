//! The issuance pipeline: authenticate → parse the CSR → decide → sign → check → record → answer.
//!
//! Every request ends in exactly one durable record (issued or denied) before its answer, and in
//! one log line (request id, identity, outcome, latency). Details of a refusal go to the log and
//! the record, never to the client (the edge maps [`IssueError`] to a gRPC status).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rcgen::{KeyPair, PublicKeyData as _};
use ring::rand::{SecureRandom, SystemRandom};

use crate::authn::client_cert::IdentityAnchors;
use crate::authn::impersonation::{ImpersonationError, NodeAccount, NodeAuthorizer};
use crate::authn::{AuthRequest, AuthenticatorChain, AuthnError, Caller};
use crate::authority::{IssuedCertificate, MeshAuthority, SigningError};
use crate::clock::format_time;
use crate::clock::Clock;
use crate::csr::{self, CertificateRequest, CsrError, KeyAlgorithm};
use crate::digest::hex;
use crate::digest::sha256;
use crate::identity::{SpiffeId, TrustDomain};
use crate::metrics::{Failure, Metrics};
use crate::policy::{self, Denial, Grant, MeshPolicy};
use crate::ratelimit::{RateLimits, Scope};
use crate::record::{
    client_text, CallerRecord, DenialRecord, IssuedRecord, Outcome, Record, RecordSink,
    RefusalSummary, StoreError, CLIENT_TEXT_BYTES, CLIENT_VALUE_BYTES,
};

/// A request id: in every log line of a request, its record, and any Internal error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Ids from a sequence: a random 64-bit start, then +1 per id. Unique within a process
    /// and, with a random start, across restarts; no system call per request.
    fn next_in(sequence: &std::sync::atomic::AtomicU64) -> Self {
        let value = sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(format!("{value:016x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn time_seed() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the client asked for, from the Istio CSR API request.
#[derive(Debug, Clone, Default)]
pub struct SigningRequest {
    pub csr_pem: String,
    /// `validity_duration` in seconds; <= 0 means the mesh default.
    pub validity_seconds: i64,
    /// `metadata["ImpersonatedIdentity"]`, when present.
    pub impersonated_identity: Option<String>,
}

/// A certificate handed out.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_chain: Vec<String>,
    pub identity: String,
    pub serial: Vec<u8>,
    pub sequence: u64,
}

/// Why a request did not get a certificate.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("authentication failed: {0}")]
    Authn(#[from] AuthnError),
    #[error("the CSR was refused: {0}")]
    Csr(#[from] CsrError),
    #[error("the request was denied: {0}")]
    Denied(#[from] Denial),
    #[error("impersonation refused: {0}")]
    Impersonation(#[from] ImpersonationError),
    #[error("the caller's mesh {0:?} is not served here")]
    MeshNotServed(String),
    #[error("signing failed: {0}")]
    Signing(#[from] SigningError),
    #[error("the record could not be stored: {0}")]
    Store(#[from] StoreError),
    #[error("the {} rate limit is exceeded", .0.name())]
    RateLimited(Scope),
}

impl IssueError {
    /// The recorded reason of a refusal, or None for internal failures.
    pub fn denial_reason(&self) -> Option<&'static str> {
        match self {
            Self::Authn(error) => Some(error.reason()),
            Self::Csr(error) => Some(error.reason()),
            Self::Denied(denial) => Some(denial.reason.code()),
            Self::Impersonation(error) => Some(error.reason()),
            // Not a decision about the request: nothing is recorded (under a flood that would
            // be the load the limit exists to shed).
            Self::MeshNotServed(_) | Self::Signing(_) | Self::Store(_) | Self::RateLimited(_) => {
                None
            }
        }
    }
}

/// The authority in force; a reload replaces it for every new request while requests in
/// flight finish with the one they started with.
pub struct CurrentAuthority(std::sync::RwLock<Arc<CertificateAuthority>>);

impl CurrentAuthority {
    pub fn new(authority: Arc<CertificateAuthority>) -> Self {
        Self(std::sync::RwLock::new(authority))
    }

    pub fn get(&self) -> Arc<CertificateAuthority> {
        match self.0.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, authority: Arc<CertificateAuthority>) {
        match self.0.write() {
            Ok(mut current) => *current = authority,
            Err(poisoned) => *poisoned.into_inner() = authority,
        }
    }
}

/// A mesh as the pipeline needs it.
pub struct Mesh {
    pub authority: Arc<MeshAuthority>,
    pub policy: MeshPolicy,
    /// Accounts allowed to ask for `ImpersonatedIdentity`.
    pub node_accounts: Vec<NodeAccount>,
    /// The mesh's trust domain, then its aliases.
    pub trust_domains: Vec<TrustDomain>,
    /// The ids (`clusterid`) of the mesh's clusters, where callers' pods can be looked up.
    pub clusters: Vec<String>,
}

/// The certificate authority: meshes, authenticators, the record sink and a clock.
pub struct CertificateAuthority {
    meshes: HashMap<String, Mesh>,
    /// The first configured mesh: its intermediate signs meshroot's own serving certificate.
    primary_mesh: String,
    authenticators: AuthenticatorChain,
    impersonation: NodeAuthorizer,
    records: Arc<dyn RecordSink>,
    clock: Arc<dyn Clock>,
    /// The next request id.
    request_ids: std::sync::atomic::AtomicU64,
    /// Slow (RSA) signatures in progress at once: at most one per core, on blocking threads.
    slow_signing: tokio::sync::Semaphore,
    metrics: Arc<Metrics>,
    rate_limits: Arc<RateLimits>,
    identity_anchors: Arc<IdentityAnchors>,
}

impl CertificateAuthority {
    pub fn new(
        meshes: Vec<Mesh>,
        authenticators: AuthenticatorChain,
        impersonation: NodeAuthorizer,
        records: Arc<dyn RecordSink>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let primary_mesh = meshes
            .first()
            .map(|mesh| mesh.policy.mesh.clone())
            .unwrap_or_default();
        let meshes = meshes
            .into_iter()
            .map(|mesh| (mesh.policy.mesh.clone(), mesh))
            .collect();
        // SystemRandom only fails if the OS has no randomness; a time-based start still keeps
        // ids apart across restarts.
        let mut start = [0u8; 8];
        if SystemRandom::new().fill(&mut start).is_err() {
            start = time_seed().to_be_bytes();
        }
        let clock_for_limits = clock.clone();
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Self {
            meshes,
            primary_mesh,
            authenticators,
            impersonation,
            records,
            clock,
            request_ids: std::sync::atomic::AtomicU64::new(u64::from_be_bytes(start)),
            slow_signing: tokio::sync::Semaphore::new(cores),
            metrics: Arc::default(),
            rate_limits: Arc::new(RateLimits::unlimited(clock_for_limits)),
            identity_anchors: Arc::default(),
        }
    }

    /// Limits requests per caller and per namespace (shared across reloads).
    pub fn with_rate_limits(mut self, rate_limits: Arc<RateLimits>) -> Self {
        self.rate_limits = rate_limits;
        self
    }

    /// The issuers that authenticate client certificates (see [`IdentityAnchors`]).
    pub fn with_identity_anchors(mut self, anchors: Arc<IdentityAnchors>) -> Self {
        self.identity_anchors = anchors;
        self
    }

    /// Counts requests and their outcomes in `metrics` (shared across reloads).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// One mesh's authority.
    pub fn mesh_authority(&self, mesh: &str) -> Option<&Arc<MeshAuthority>> {
        self.meshes.get(mesh).map(|mesh| &mesh.authority)
    }

    /// The configured meshes' names and authorities.
    pub fn mesh_authorities(&self) -> impl Iterator<Item = (&str, &Arc<MeshAuthority>)> {
        self.meshes
            .iter()
            .map(|(name, mesh)| (name.as_str(), &mesh.authority))
    }

    pub fn new_request_id(&self) -> RequestId {
        RequestId::next_in(&self.request_ids)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The issuers authorized to vouch for identities, per trust domain (client certificates on
    /// the CSR port, admin mutual TLS).
    pub fn identity_anchors(&self) -> &Arc<IdentityAnchors> {
        &self.identity_anchors
    }

    /// The mesh whose intermediate signs meshroot's serving certificate.
    pub fn primary_authority(&self) -> Option<&Arc<MeshAuthority>> {
        self.meshes
            .get(&self.primary_mesh)
            .map(|mesh| &mesh.authority)
    }

    /// Issues (and records) meshroot's own TLS serving certificate for `dns_names` from the
    /// primary mesh's intermediate, with a fresh P-256 key.
    pub async fn issue_serving_certificate(
        &self,
        dns_names: &[String],
        lifetime: Duration,
    ) -> Result<(IssuedCertificate, KeyPair), IssueError> {
        self.issue_server_certificate(
            &self.primary_mesh,
            dns_names,
            None,
            lifetime,
            "serving-certificate",
        )
        .await
    }

    /// Issues (and records) a server certificate from `mesh`'s intermediate with a fresh P-256
    /// key: DNS names and, for istiod, its SPIFFE identity. `purpose` is recorded as the
    /// caller's subject (meshroot itself asked).
    pub async fn issue_server_certificate(
        &self,
        mesh: &str,
        dns_names: &[String],
        identity: Option<&SpiffeId>,
        lifetime: Duration,
        purpose: &str,
    ) -> Result<(IssuedCertificate, KeyPair), IssueError> {
        let authority = self
            .meshes
            .get(mesh)
            .map(|mesh| &mesh.authority)
            .ok_or_else(|| IssueError::MeshNotServed(mesh.to_owned()))?;
        let key = KeyPair::generate().map_err(|e| IssueError::Signing(SigningError::Build(e)))?;
        let now = self.clock.now();
        let not_before = now.checked_sub(policy::BACKDATE).unwrap_or(now);
        let issued =
            authority.issue_server(dns_names, identity, &key, not_before, now + lifetime, now)?;
        let request_id = self.new_request_id();
        let record = Record::new(
            request_id.to_string(),
            now,
            CallerRecord {
                authenticator: "meshroot-internal".to_owned(),
                subject: purpose.to_owned(),
                ..CallerRecord::default()
            },
            Outcome::Issued(IssuedRecord {
                serial: issued.serial.clone(),
                spiffe_id: identity.map(ToString::to_string).unwrap_or_default(),
                requested_spiffe_id: identity.map(ToString::to_string).unwrap_or_default(),
                dns_names: dns_names.to_vec(),
                mesh: authority.mesh().to_owned(),
                trust_domain: authority.trust_domain().to_string(),
                namespace: identity
                    .map(|id| id.namespace().to_owned())
                    .unwrap_or_default(),
                service_account: identity
                    .map(|id| id.service_account().to_owned())
                    .unwrap_or_default(),
                not_before: issued.not_before,
                not_after: issued.not_after,
                key_algorithm: KeyAlgorithm::EcdsaP256.name().to_owned(),
                key_bits: KeyAlgorithm::EcdsaP256.bits(),
                public_key_sha256: sha256(&key.subject_public_key_info()).to_vec(),
                csr_sha256: Vec::new(),
                intermediate_sha256: authority.signing_certificate_sha256().to_vec(),
                certificate_sha256: sha256(&issued.der).to_vec(),
                requested_ttl_seconds: lifetime.as_secs() as i64,
            }),
        );
        let sequence = self.records.append(record).await?;
        tracing::info!(
            request_id = %request_id,
            serial = %hex(&issued.serial),
            sequence,
            purpose,
            dns_names = ?dns_names,
            identity = %identity.map(ToString::to_string).unwrap_or_default(),
            not_after = %format_time(issued.not_after),
            "server certificate issued"
        );
        Ok((issued, key))
    }

    /// Runs the whole pipeline for one request. The result is recorded durably before it is
    /// returned, whatever it is; a record that cannot be stored turns the answer into an error.
    pub async fn create_certificate(
        &self,
        request_id: &RequestId,
        auth: &AuthRequest,
        request: &SigningRequest,
    ) -> Result<Issued, IssueError> {
        let started = Instant::now();
        self.metrics.request_received();
        let mut context = RecordContext {
            caller: CallerRecord {
                cluster_id: client_text(&auth.cluster_id, CLIENT_VALUE_BYTES),
                peer_address: auth.peer_address.map(|a| a.to_string()).unwrap_or_default(),
                ..CallerRecord::default()
            },
            mesh: String::new(),
            requested_spiffe_id: String::new(),
            csr_sha256: Vec::new(),
        };
        let decided = self.decide(auth, request, &mut context).await;
        let mut metrics_only = false;
        let now = self.clock.now();
        let result = match decided {
            Ok((grant, csr, authority)) => {
                self.sign_and_record(request_id, &grant, &csr, &authority, request, &context, now)
                    .await
            }
            Err(error) if self.records_one_by_one(&error, auth) => {
                Err(self.record_refusal(request_id, error, &context, now).await)
            }
            Err(error) => {
                // Counted for the next summary record instead (`record_refusal_summaries`).
                tracing::debug!(
                    request_id = %request_id,
                    peer = %context.caller.peer_address,
                    reason = error.denial_reason().unwrap_or_default(),
                    "unauthenticated request refused; over the rate recorded one by one, it is \
                     counted in the next summary record"
                );
                metrics_only = true;
                Err(error)
            }
        };
        if !metrics_only {
            log_outcome(request_id, &context, &result, started);
        }
        // The mesh label only ever names a configured mesh, never a client's string.
        let mesh = match self.meshes.contains_key(&context.mesh) {
            true => context.mesh.as_str(),
            false => "",
        };
        let outcome = match &result {
            Ok(_) => Ok(()),
            Err(error) => Err((failure_kind(error), error.denial_reason())),
        };
        self.metrics
            .request_finished(mesh, outcome, started.elapsed());
        result
    }

    async fn decide(
        &self,
        auth: &AuthRequest,
        request: &SigningRequest,
        context: &mut RecordContext,
    ) -> Result<(Grant, CertificateRequest, Arc<MeshAuthority>), IssueError> {
        let caller = self
            .authenticators
            .authenticate(auth)
            .await
            .inspect_err(|error| {
                // The record says which authenticator refused, when one did.
                if let Some(kind) = error.authenticator() {
                    context.caller.authenticator = kind.name().to_owned();
                }
            })?;
        context.identify(&caller);
        self.rate_limits
            .allow_caller(&caller.mesh, &caller.subject)
            .map_err(IssueError::RateLimited)?;
        let parsed = csr::parse_pem(&request.csr_pem).inspect_err(|_| {
            // Unparsable: record the hash of the bytes as received.
            if !request.csr_pem.is_empty() {
                context.csr_sha256 = sha256(request.csr_pem.as_bytes()).to_vec();
            }
        })?;
        context.csr_sha256 = parsed.der_sha256.to_vec();
        if let [uri] = parsed.uri_sans.as_slice() {
            context.requested_spiffe_id = client_text(uri, CLIENT_TEXT_BYTES);
        }
        let mesh = self
            .meshes
            .get(&caller.mesh)
            .ok_or_else(|| IssueError::MeshNotServed(caller.mesh.clone()))?;
        // A node proxy asking for a workload's identity: the policy then holds the CSR to the
        // impersonated identity, while the record keeps the real caller.
        let caller = match &request.impersonated_identity {
            None => caller,
            Some(requested) => {
                let mut caller = caller;
                // A token verified offline names no cluster: the caller's pod (its name and uid
                // bound into the token) is confirmed in the cluster the request names, if that
                // is one of the mesh's.
                if caller.cluster.is_empty() && mesh.clusters.contains(&auth.cluster_id) {
                    caller.cluster = auth.cluster_id.clone();
                }
                let identity = self
                    .impersonation
                    .authorize(&caller, requested, &mesh.trust_domains, &mesh.node_accounts)
                    .await?;
                Caller { identity, ..caller }
            }
        };
        self.rate_limits
            .allow_namespace(&caller.mesh, caller.identity.namespace())
            .map_err(IssueError::RateLimited)?;
        let grant = policy::decide(
            &caller,
            &parsed,
            &mesh.policy,
            request.validity_seconds,
            request.impersonated_identity.is_some(),
            self.clock.now(),
        )?;
        Ok((grant, parsed, mesh.authority.clone()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn sign_and_record(
        &self,
        request_id: &RequestId,
        grant: &Grant,
        csr: &CertificateRequest,
        authority: &Arc<MeshAuthority>,
        request: &SigningRequest,
        context: &RecordContext,
        now: SystemTime,
    ) -> Result<Issued, IssueError> {
        let issued: IssuedCertificate = if authority.signs_slowly() {
            // Milliseconds of RSA: on a blocking thread, one per core at a time, so async
            // workers keep serving handshakes and other requests meanwhile.
            let _permit = self
                .slow_signing
                .acquire()
                .await
                .map_err(|_| SigningError::Interrupted)?;
            let (authority, grant, public_key) =
                (authority.clone(), grant.clone(), csr.public_key.clone());
            tokio::task::spawn_blocking(move || authority.issue_workload(&grant, &public_key, now))
                .await
                .map_err(|_| SigningError::Interrupted)??
        } else {
            authority.issue_workload(grant, &csr.public_key, now)?
        };
        let record = Record::new(
            request_id.to_string(),
            now,
            context.caller.clone(),
            Outcome::Issued(IssuedRecord {
                serial: issued.serial.clone(),
                spiffe_id: grant.identity.to_string(),
                requested_spiffe_id: grant.requested.to_string(),
                dns_names: Vec::new(),
                mesh: grant.mesh.clone(),
                trust_domain: grant.identity.trust_domain().to_string(),
                namespace: grant.identity.namespace().to_owned(),
                service_account: grant.identity.service_account().to_owned(),
                not_before: issued.not_before,
                not_after: issued.not_after,
                key_algorithm: csr.public_key.algorithm.name().to_owned(),
                key_bits: csr.public_key.algorithm.bits(),
                public_key_sha256: sha256(&csr.public_key.spki_der).to_vec(),
                csr_sha256: csr.der_sha256.to_vec(),
                intermediate_sha256: authority.signing_certificate_sha256().to_vec(),
                certificate_sha256: sha256(&issued.der).to_vec(),
                requested_ttl_seconds: request.validity_seconds,
            }),
        );
        let sequence = self.records.append(record).await?;
        Ok(Issued {
            cert_chain: issued.cert_chain,
            identity: grant.identity.to_string(),
            serial: issued.serial,
            sequence,
        })
    }

    /// Whether a refusal gets a record of its own: always once the caller is authenticated
    /// (its own rate limit bounds it); for a request nobody authenticated, only within the
    /// per-peer and overall refusal rates.
    fn records_one_by_one(&self, error: &IssueError, auth: &AuthRequest) -> bool {
        match (error, error.denial_reason()) {
            (IssueError::Authn(_), Some(reason)) => self
                .rate_limits
                .record_refusal(auth.peer_address.map(|a| a.ip()), reason),
            _ => true,
        }
    }

    /// Records the unauthenticated refusals counted since the last call (over the rate
    /// recorded one by one), one summary record per peer and reason. Called periodically and
    /// at shutdown. Returns how many summary records were written.
    pub async fn record_refusal_summaries(&self) -> Result<usize, IssueError> {
        let now = self.clock.now();
        let mut written = 0;
        for suppressed in self.rate_limits.take_suppressed() {
            let detail = format!(
                "{} unauthenticated requests from {} refused ({}) from {} to {}; over the rate \
                 of refusals recorded one by one, so summarized here",
                suppressed.count,
                suppressed.peer,
                suppressed.reason,
                format_time(suppressed.first),
                format_time(suppressed.last),
            );
            let record = Record::new(
                self.new_request_id().to_string(),
                now,
                CallerRecord {
                    peer_address: suppressed.peer.clone(),
                    ..CallerRecord::default()
                },
                Outcome::Denied(DenialRecord {
                    reason: suppressed.reason.to_owned(),
                    detail,
                    mesh: String::new(),
                    requested_spiffe_id: String::new(),
                    csr_sha256: Vec::new(),
                    summary: Some(RefusalSummary {
                        count: suppressed.count,
                        first_at: suppressed.first,
                        last_at: suppressed.last,
                    }),
                }),
            );
            if let Err(error) = self.records.append(record).await {
                tracing::error!(
                    peer = %suppressed.peer,
                    reason = suppressed.reason,
                    count = suppressed.count,
                    %error,
                    "a summary of unauthenticated refusals could not be recorded"
                );
                return Err(IssueError::Store(error));
            }
            tracing::warn!(
                peer = %suppressed.peer,
                reason = suppressed.reason,
                count = suppressed.count,
                first = %format_time(suppressed.first),
                last = %format_time(suppressed.last),
                "unauthenticated requests refused over the recorded rate: summary recorded"
            );
            written += 1;
        }
        Ok(written)
    }

    /// Records a refusal; internal failures (signing, store) are not denials and are only logged.
    async fn record_refusal(
        &self,
        request_id: &RequestId,
        error: IssueError,
        context: &RecordContext,
        now: SystemTime,
    ) -> IssueError {
        let Some(reason) = error.denial_reason() else {
            return error;
        };
        let record = Record::new(
            request_id.to_string(),
            now,
            context.caller.clone(),
            Outcome::Denied(DenialRecord {
                reason: reason.to_owned(),
                detail: denial_detail(&error),
                mesh: context.mesh.clone(),
                requested_spiffe_id: context.requested_spiffe_id.clone(),
                csr_sha256: context.csr_sha256.clone(),
                summary: None,
            }),
        );
        match self.records.append(record).await {
            Ok(_) => error,
            Err(store_error) => {
                tracing::error!(
                    request_id = %request_id,
                    denial = reason,
                    error = %store_error,
                    "the denial could not be recorded; answering with an internal error"
                );
                IssueError::Store(store_error)
            }
        }
    }
}

/// What is known about a request so far, for its record.
struct RecordContext {
    caller: CallerRecord,
    mesh: String,
    requested_spiffe_id: String,
    csr_sha256: Vec<u8>,
}

impl RecordContext {
    fn identify(&mut self, caller: &Caller) {
        self.caller.authenticator = caller.authenticator.name().to_owned();
        // Verified, but still chosen by whoever minted the token: bounded and escaped.
        self.caller.issuer = client_text(&caller.issuer, CLIENT_VALUE_BYTES);
        self.caller.subject = client_text(&caller.subject, CLIENT_VALUE_BYTES);
        self.caller.spiffe_id = caller.identity.to_string();
        if let Some(pod) = &caller.pod {
            self.caller.pod_name = client_text(&pod.name, CLIENT_VALUE_BYTES);
            self.caller.pod_uid = client_text(&pod.uid, CLIENT_VALUE_BYTES);
        }
        self.mesh = caller.mesh.clone();
    }
}

/// The detail kept in a denial record and logged: the error's own text (never secrets: tokens
/// and keys are not part of any error). It may quote what a client sent (a CSR's subject or
/// SAN), so it is escaped and bounded like every client value.
fn denial_detail(error: &IssueError) -> String {
    match error {
        IssueError::Denied(denial) => client_text(&denial.detail, CLIENT_TEXT_BYTES),
        other => client_text(&other.to_string(), CLIENT_TEXT_BYTES),
    }
}

fn failure_kind(error: &IssueError) -> Failure {
    match error {
        IssueError::Authn(_) | IssueError::Impersonation(_) => Failure::Authentication,
        IssueError::Csr(_) => Failure::CsrParsing,
        IssueError::Denied(_) => Failure::Policy,
        IssueError::MeshNotServed(_) | IssueError::Signing(_) | IssueError::Store(_) => {
            Failure::Internal
        }
        IssueError::RateLimited(scope) => Failure::Throttled(scope.name()),
    }
}

fn log_outcome(
    request_id: &RequestId,
    context: &RecordContext,
    result: &Result<Issued, IssueError>,
    started: Instant,
) {
    let latency_us = started.elapsed().as_micros() as u64;
    let caller = context.caller.spiffe_id.as_str();
    match result {
        Ok(issued) => tracing::info!(
            request_id = %request_id,
            identity = %issued.identity,
            serial = %hex(&issued.serial),
            sequence = issued.sequence,
            latency_us,
            "certificate issued"
        ),
        Err(IssueError::RateLimited(scope)) => tracing::debug!(
            request_id = %request_id,
            caller,
            scope = scope.name(),
            "certificate request over its rate limit: RESOURCE_EXHAUSTED"
        ),
        Err(error) => match error.denial_reason() {
            Some(reason) => tracing::warn!(
                request_id = %request_id,
                caller,
                requested = %context.requested_spiffe_id,
                cluster_id = %context.caller.cluster_id,
                peer = %context.caller.peer_address,
                reason,
                detail = %denial_detail(error),
                latency_us,
                "certificate request denied"
            ),
            None => tracing::error!(
                request_id = %request_id,
                caller,
                error = %error,
                latency_us,
                "certificate request failed"
            ),
        },
    }
}
