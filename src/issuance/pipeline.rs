//! The pipeline itself: [`CertificateAuthority`] and its stages, from an authenticated request
//! to a durable record and an answer (the stages are listed in the module above).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::error::{Answer, IssueError, RevokedRefusal};
use super::holds::Holds;
use super::record_builder::{issued_record, IssuedFacts};
use super::record_builder::{refusal_record, requested_identity, summary_record, Facts};
use super::request::{self, Issued, RequestId, SigningRequest};
use crate::adapters::authn::client_cert::IdentityAnchors;
use crate::adapters::authn::impersonation::{NodeAccount, NodeAuthorizer};
use crate::adapters::authn::{AuthRequest, AuthenticatorChain};
use crate::domain::caller::Caller;
use crate::domain::clock::{format_time, Clock};
use crate::domain::csr;
use crate::domain::digest::{hex, sha256};
use crate::domain::identity::TrustDomain;
use crate::domain::metrics::Metrics;
use crate::domain::policy::{self, Grant, Lifetime, MeshPolicy, Naming};
use crate::domain::ratelimit::RateLimits;
use crate::domain::record::{client_text, Outcome, Record, RecordSink, CLIENT_VALUE_BYTES};
use crate::domain::revocation::Revocations;
use crate::domain::signer::{IssuedCertificate, MeshSigner, SigningError};

/// A mesh as the pipeline needs it.
pub struct Mesh {
    pub signer: Arc<MeshSigner>,
    pub policy: MeshPolicy,
    /// Accounts allowed to ask for `ImpersonatedIdentity`.
    pub node_accounts: Vec<NodeAccount>,
    /// The mesh's trust domain, then its aliases.
    pub trust_domains: Vec<TrustDomain>,
    /// The ids (`clusterid`) of the mesh's clusters, where callers' pods can be looked up.
    pub clusters: Vec<String>,
    /// Trust domains the mesh's proxies accept besides its own: accepted meshes' and
    /// partners' (shown on `/ui`; the proxies learn it from `meshroot istio config`).
    pub accepts: Vec<TrustDomain>,
}

impl Mesh {
    /// Whether `caller` is one of the mesh's node proxies (ztunnel's accounts).
    fn is_node_proxy(&self, caller: &Caller) -> bool {
        self.node_accounts.iter().any(|account| {
            account.namespace == caller.identity.namespace()
                && account.service_account == caller.identity.service_account()
        })
    }
}

/// The certificate authority: meshes, authenticators, the record sink and a clock.
pub struct CertificateAuthority {
    pub(super) meshes: HashMap<String, Mesh>,
    /// The first configured mesh: its intermediate signs meshroot's own serving certificate.
    pub(super) primary_mesh: String,
    pub(super) authenticators: AuthenticatorChain,
    pub(super) impersonation: NodeAuthorizer,
    pub(super) records: Arc<dyn RecordSink>,
    pub(super) clock: Arc<dyn Clock>,
    /// The next request id.
    pub(super) request_ids: AtomicU64,
    /// Slow (RSA) signatures in progress at once: at most one per core, on blocking threads.
    pub(super) slow_signing: tokio::sync::Semaphore,
    pub(super) metrics: Arc<Metrics>,
    pub(super) rate_limits: Arc<RateLimits>,
    pub(super) identity_anchors: Arc<IdentityAnchors>,
    pub(super) member_anchors: Arc<IdentityAnchors>,
    pub(super) holds: Arc<Holds>,
    pub(super) revocations: Arc<Revocations>,
}

/// How a refusal ended.
enum Refused {
    /// Recorded (or not a decision); the request gets its log line.
    Logged(IssueError),
    /// Over the rate recorded one by one: counted for the next summary record, no log line.
    Summarized(IssueError),
}

/// A request the policy granted, ready to sign.
struct Approved<'a> {
    grant: Grant,
    signer: &'a Arc<MeshSigner>,
    csr_sha256: [u8; 32],
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
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Self {
            meshes,
            primary_mesh,
            authenticators,
            impersonation,
            records,
            rate_limits: Arc::new(RateLimits::unlimited(clock.clone())),
            clock,
            request_ids: request::first_request_id(),
            slow_signing: tokio::sync::Semaphore::new(cores),
            metrics: Arc::default(),
            identity_anchors: Arc::default(),
            member_anchors: Arc::default(),
            holds: Arc::default(),
            revocations: Arc::default(),
        }
    }

    /// Holds that stop issuance while set (shared across reloads).
    pub(crate) fn with_holds(mut self, holds: Arc<Holds>) -> Self {
        self.holds = holds;
        self
    }

    /// The revocations in force (shared across reloads): revoked identities and client
    /// certificates are refused.
    pub(crate) fn with_revocations(mut self, revocations: Arc<Revocations>) -> Self {
        self.revocations = revocations;
        self
    }

    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// The holds in force.
    pub fn holds(&self) -> &Arc<Holds> {
        &self.holds
    }

    /// Limits requests per caller and per namespace (shared across reloads).
    pub(crate) fn with_rate_limits(mut self, rate_limits: Arc<RateLimits>) -> Self {
        self.rate_limits = rate_limits;
        self
    }

    /// The issuers that authenticate client certificates (see [`IdentityAnchors`]).
    pub(crate) fn with_identity_anchors(mut self, anchors: Arc<IdentityAnchors>) -> Self {
        self.identity_anchors = anchors;
        self
    }

    /// meshroot's own signing intermediates of the primary mesh, the only issuers a member
    /// certificate is accepted from (`authn::client_cert::verify_member`).
    pub(crate) fn with_member_anchors(mut self, anchors: Arc<IdentityAnchors>) -> Self {
        self.member_anchors = anchors;
        self
    }

    /// The process's metrics (shared across reloads).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Counts requests and their outcomes in `metrics` (shared across reloads).
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// One mesh's signer.
    pub(crate) fn mesh_signer(&self, mesh: &str) -> Option<&Arc<MeshSigner>> {
        self.meshes.get(mesh).map(|mesh| &mesh.signer)
    }

    /// The configured meshes' names and signers.
    pub(crate) fn mesh_signers(&self) -> impl Iterator<Item = (&str, &Arc<MeshSigner>)> {
        self.meshes
            .iter()
            .map(|(name, mesh)| (name.as_str(), &mesh.signer))
    }

    /// The trust domains `mesh` accepts besides its own and its aliases.
    pub(crate) fn accepted_trust_domains(&self, mesh: &str) -> &[TrustDomain] {
        self.meshes
            .get(mesh)
            .map(|mesh| mesh.accepts.as_slice())
            .unwrap_or_default()
    }

    /// The mesh whose trust domain, or one of whose aliases, is `trust_domain`, and its signer.
    pub(crate) fn mesh_of_trust_domain(
        &self,
        trust_domain: &TrustDomain,
    ) -> Option<(&str, &Arc<MeshSigner>)> {
        self.meshes
            .iter()
            .find(|(_, mesh)| mesh.trust_domains.contains(trust_domain))
            .map(|(name, mesh)| (name.as_str(), &mesh.signer))
    }

    /// The mesh whose intermediate signs meshroot's serving certificate.
    pub(crate) fn primary_signer(&self) -> Option<&Arc<MeshSigner>> {
        self.mesh_signer(&self.primary_mesh)
    }

    pub fn new_request_id(&self) -> RequestId {
        RequestId::next_in(&self.request_ids)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The issuers authorized to vouch for identities, per trust domain (client certificates on
    /// the CSR port, admin mutual TLS).
    pub(crate) fn identity_anchors(&self) -> &Arc<IdentityAnchors> {
        &self.identity_anchors
    }

    /// The issuers a member certificate is accepted from.
    pub(crate) fn member_anchors(&self) -> &Arc<IdentityAnchors> {
        &self.member_anchors
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
        let mut facts = Facts {
            cluster_id: client_text(&auth.cluster_id, CLIENT_VALUE_BYTES),
            peer_address: auth.peer_address.map(|a| a.to_string()).unwrap_or_default(),
            ..Facts::default()
        };
        let approved = match self.holds.first() {
            // Nothing is decided while held: no record, a retryable answer.
            Some(hold) => Err(IssueError::Held(hold)),
            None => self.approve(auth, request, &mut facts).await,
        };
        let now = self.clock.now();
        let result = match approved {
            Ok(approved) => {
                let result = self.sign_and_record(request_id, approved, request, &facts, now);
                let result = result.await;
                log_outcome(request_id, &facts, &result, started);
                result
            }
            Err(error) => match self.refuse(request_id, error, auth, &facts, now).await {
                Refused::Logged(error) => {
                    let result = Err(error);
                    log_outcome(request_id, &facts, &result, started);
                    result
                }
                Refused::Summarized(error) => Err(error),
            },
        };
        // The mesh label only ever names a configured mesh, never a client's string.
        let mesh = match self.meshes.contains_key(facts.mesh()) {
            true => facts.mesh(),
            false => "",
        };
        let outcome = match &result {
            Ok(_) => Ok(()),
            Err(error) => {
                let class = error.classify();
                Err((class.failure, class.reason))
            }
        };
        self.metrics
            .request_finished(mesh, outcome, started.elapsed());
        result
    }

    /// Stages 1–7: from the request to a grant, or the first refusal. `facts` gathers what each
    /// stage established, for the record of a refusal.
    async fn approve(
        &self,
        auth: &AuthRequest,
        request: &SigningRequest,
        facts: &mut Facts,
    ) -> Result<Approved<'_>, IssueError> {
        // 1. Authenticate.
        let caller = match self.authenticators.authenticate(auth).await {
            Ok(caller) => caller,
            Err(error) => {
                facts.refused_by = error.authenticator();
                return Err(error.into());
            }
        };
        facts.caller = Some(caller.clone());
        // A revoked certificate never renews itself.
        if caller.authenticator == crate::domain::caller::AuthenticatorKind::ClientCert {
            self.check_client_certificate(auth)?;
        }
        // 2. Throttle the caller.
        self.rate_limits
            .allow_caller(&caller.mesh, &caller.subject)
            .map_err(IssueError::RateLimited)?;
        // 3. Parse the CSR.
        let csr = match csr::parse_pem(&request.csr_pem) {
            Ok(csr) => csr,
            Err(error) => {
                // Unparsable: the record keeps the hash of the bytes as received.
                if !request.csr_pem.is_empty() {
                    facts.csr_sha256 = sha256(request.csr_pem.as_bytes()).to_vec();
                }
                return Err(error.into());
            }
        };
        facts.csr_sha256 = csr.der_sha256.to_vec();
        if let [uri] = csr.uri_sans.as_slice() {
            facts.requested_spiffe_id = requested_identity(uri);
        }
        // 4. Select the caller's mesh.
        let mesh = self
            .meshes
            .get(&caller.mesh)
            .ok_or_else(|| IssueError::MeshNotServed(caller.mesh.clone()))?;
        // ztunnel (it impersonates, or is a node proxy) cannot verify a URI-constrained chain.
        if request.impersonated_identity.is_some() || mesh.is_node_proxy(&caller) {
            self.notice_ztunnel(mesh);
        }
        // 5. Impersonate: the policy then holds the CSR to the impersonated identity, while the
        //    record keeps the real caller.
        let (caller, naming) = match &request.impersonated_identity {
            None => (caller, Naming::MeshRule),
            Some(requested) => (
                self.impersonate(caller, requested, mesh, auth).await?,
                Naming::Exact,
            ),
        };
        // 6. Throttle the namespace.
        self.rate_limits
            .allow_namespace(&caller.mesh, caller.identity.namespace())
            .map_err(IssueError::RateLimited)?;
        // 7. Decide.
        let grant = policy::decide(
            &mesh.policy,
            &policy::Request {
                caller: &caller,
                csr: &csr,
                lifetime: Lifetime::from_validity_duration(request.validity_seconds),
                naming,
                now: self.clock.now(),
            },
        )?;
        self.check_identity(&grant)?;
        Ok(Approved {
            grant,
            signer: &mesh.signer,
            csr_sha256: csr.der_sha256,
        })
    }

    /// A ztunnel request for `mesh`. ztunnel's rustls-webpki refuses every chain that carries a
    /// URI name constraint: the mesh's own, and that of every mesh under the same root, whose
    /// workloads are its peers (mTLS across meshes, gateways). For each such mesh whose chain is
    /// constrained, say so (once, until the chain changes) with the command that fixes it, and
    /// set the gauge an alert can fire on. Issuance is not refused: the certificate is valid; the
    /// verifier is what fails.
    fn notice_ztunnel(&self, mesh: &Mesh) {
        let root = mesh.signer.issuing_root();
        let peers = self.meshes.values().filter(|other| {
            other.policy.mesh == mesh.policy.mesh
                || (root.is_some() && other.signer.issuing_root() == root)
        });
        for peer in peers {
            let constrained = peer.signer.name_constrained();
            if !self.metrics.ztunnel_chain(&peer.policy.mesh, constrained) {
                continue;
            }
            let intermediate = peer
                .signer
                .intermediates()
                .first()
                .map(|der| crate::domain::audit::rotation::subject_of(der))
                .unwrap_or_default();
            let whose = if peer.policy.mesh == mesh.policy.mesh {
                "ztunnel asks for certificates of this mesh".to_owned()
            } else {
                format!(
                    "mesh {} runs ztunnel and this mesh's workloads are its peers (one root)",
                    mesh.policy.mesh
                )
            };
            tracing::warn!(
                mesh = %peer.policy.mesh,
                intermediate = %intermediate,
                fix = %format!(
                    "meshroot rotate intermediate --root-dir ROOT_DIR --mesh {} --out CA_DIR --data-plane ambient",
                    peer.policy.mesh
                ),
                "{whose}, but its intermediate carries URI name constraints, which ztunnel \
                 (rustls-webpki) refuses: those handshakes will fail until the mesh is served by \
                 an intermediate for the ambient data plane"
            );
        }
    }

    /// Refuses a renewal authenticated by a revoked client certificate.
    fn check_client_certificate(&self, auth: &AuthRequest) -> Result<(), IssueError> {
        let Some(leaf) = auth.peer_certificates.first() else {
            return Ok(());
        };
        let Some(serial) = crate::domain::signer::check::serial_of(leaf) else {
            return Ok(()); // the authenticator parsed it; this cannot fail after it
        };
        match self.revocations.revoked(&serial) {
            None => Ok(()),
            Some(revoked) => Err(IssueError::Revoked(RevokedRefusal::Certificate {
                serial: hex(&serial),
                at: format_time(revoked.revoked_at),
                reason: revoked.reason.name(),
            })),
        }
    }

    /// Refuses an identity (as granted, or as asked for under an alias) that was revoked and
    /// is still blocked.
    fn check_identity(&self, grant: &Grant) -> Result<(), IssueError> {
        if !self.revocations.any_blocks() {
            return Ok(());
        }
        let now = self.clock.now();
        for identity in [grant.identity.to_string(), grant.requested.to_string()] {
            if let Some(block) = self.revocations.blocked(&identity, now) {
                return Err(IssueError::Revoked(RevokedRefusal::Identity {
                    identity,
                    since: format_time(block.since),
                    reason: block.reason.name(),
                    until: match block.until {
                        Some(until) => format!("until {}", format_time(until)),
                        None => "until the block is lifted".into(),
                    },
                }));
            }
        }
        Ok(())
    }

    /// A node proxy asking for a workload's identity: the caller as the workload, if the node
    /// may act for it.
    async fn impersonate(
        &self,
        mut caller: Caller,
        requested: &str,
        mesh: &Mesh,
        auth: &AuthRequest,
    ) -> Result<Caller, IssueError> {
        // A token verified offline names no cluster: the caller's pod (its name and uid bound
        // into the token) is confirmed in the cluster the request names, if that is one of the
        // mesh's.
        if caller.cluster.is_empty() && mesh.clusters.contains(&auth.cluster_id) {
            caller.cluster = auth.cluster_id.clone();
        }
        let identity = self
            .impersonation
            .authorize(&caller, requested, &mesh.trust_domains, &mesh.node_accounts)
            .await?;
        Ok(Caller { identity, ..caller })
    }

    /// Stages 8–9: sign, check, record, answer.
    async fn sign_and_record(
        &self,
        request_id: &RequestId,
        approved: Approved<'_>,
        request: &SigningRequest,
        facts: &Facts,
        now: SystemTime,
    ) -> Result<Issued, IssueError> {
        let Approved {
            grant,
            signer,
            csr_sha256,
        } = approved;
        let issued = self.sign(signer, &grant, now).await?;
        let record = Record::new(
            request_id.to_string(),
            now,
            facts.caller_record(),
            Outcome::Issued(issued_record(IssuedFacts {
                certificate: &issued,
                signer,
                identity: Some(&grant.identity),
                requested: Some(&grant.requested),
                trust_domain: grant.identity.trust_domain(),
                dns_names: &[],
                public_key: &grant.public_key,
                csr_sha256: &csr_sha256,
                requested_ttl_seconds: request.validity_seconds,
            })),
        );
        let sequence = self.records.append(record).await?;
        Ok(Issued {
            cert_chain: issued.cert_chain,
            identity: grant.identity.to_string(),
            serial: issued.serial,
            sequence,
        })
    }

    /// Stage 8: signs on an async worker, or (RSA: milliseconds) on a blocking thread, one per
    /// core at a time, so async workers keep serving handshakes and other requests meanwhile.
    async fn sign(
        &self,
        signer: &Arc<MeshSigner>,
        grant: &Grant,
        now: SystemTime,
    ) -> Result<IssuedCertificate, SigningError> {
        if !signer.signs_slowly() {
            return signer.issue_workload(grant, now);
        }
        let _permit = self
            .slow_signing
            .acquire()
            .await
            .map_err(|_| SigningError::Interrupted)?;
        let (signer, grant) = (signer.clone(), grant.clone());
        tokio::task::spawn_blocking(move || signer.issue_workload(&grant, now))
            .await
            .map_err(|_| SigningError::Interrupted)?
    }

    /// A refusal: recorded, unless it is not a decision or is an unauthenticated refusal over
    /// the rate recorded one by one (then only counted for the next summary record).
    async fn refuse(
        &self,
        request_id: &RequestId,
        error: IssueError,
        auth: &AuthRequest,
        facts: &Facts,
        now: SystemTime,
    ) -> Refused {
        if !self.records_one_by_one(&error, auth) {
            // Counted for the next summary record instead (`record_refusal_summaries`).
            tracing::debug!(
                request_id = %request_id,
                peer = %facts.peer_address,
                reason = error.denial_reason().unwrap_or_default(),
                "unauthenticated request refused; over the rate recorded one by one, it is \
                 counted in the next summary record"
            );
            return Refused::Summarized(error);
        }
        let error = match refusal_record(request_id, now, facts, &error) {
            None => error,
            Some(record) => match self.records.append(record).await {
                Ok(_) => error,
                Err(store_error) => {
                    tracing::error!(
                        request_id = %request_id,
                        denial = error.denial_reason().unwrap_or_default(),
                        error = %store_error,
                        "the denial could not be recorded; answering with an internal error"
                    );
                    IssueError::Store(store_error)
                }
            },
        };
        Refused::Logged(error)
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
            let record = summary_record(&self.new_request_id(), now, &suppressed);
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
}

/// The one log line of a request.
fn log_outcome(
    request_id: &RequestId,
    facts: &Facts,
    result: &Result<Issued, IssueError>,
    started: Instant,
) {
    let latency_us = started.elapsed().as_micros() as u64;
    let caller = facts
        .caller
        .as_ref()
        .map(|caller| caller.identity.to_string())
        .unwrap_or_default();
    let error = match result {
        Ok(issued) => {
            tracing::info!(
                request_id = %request_id,
                identity = %issued.identity,
                serial = %hex(&issued.serial),
                sequence = issued.sequence,
                latency_us,
                "certificate issued"
            );
            return;
        }
        Err(error) => error,
    };
    let class = error.classify();
    match (class.reason, class.answer) {
        (_, Answer::Throttled(scope)) => tracing::debug!(
            request_id = %request_id,
            caller,
            scope,
            "certificate request over its rate limit: RESOURCE_EXHAUSTED"
        ),
        (Some(reason), _) => tracing::warn!(
            request_id = %request_id,
            caller,
            requested = %facts.requested_spiffe_id,
            cluster_id = %facts.cluster_id,
            peer = %facts.peer_address,
            reason,
            detail = %error.detail(),
            latency_us,
            "certificate request denied"
        ),
        (None, _) => tracing::error!(
            request_id = %request_id,
            caller,
            error = %error,
            latency_us,
            "certificate request failed"
        ),
    }
}
