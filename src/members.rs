//! The other replicas of a `[cluster]`: who they are, and asking them over their admin port.
//!
//! Members talk to each other through the audit API on the admin listener. Off loopback that
//! is mutual TLS: a member verifies the other's serving certificate against the primary mesh's
//! trust bundle and presents its own serving certificate, which then carries meshroot's SPIFFE
//! identity (`cluster.identity`, allowed on every member's audit API by default). On loopback
//! (one machine, tests) it is plain HTTP/2, like every loopback admin client.
//!
//! A member that does not answer within `cluster.member_timeout` is *missing*: every cluster
//! question says which members are missing, and the caller decides (the rotation gate refuses,
//! an audit answer is marked incomplete). Nothing here is on the issuance path.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::MembershipConfig;
use crate::issuance::CurrentAuthority;
use crate::pb::audit as api;
use crate::pb::audit::audit_service_client::AuditServiceClient;

/// This replica's client identity towards the other members: its serving certificate chain and
/// key (PEM), replaced on every renewal.
#[derive(Default)]
pub struct MemberIdentity(RwLock<Option<Arc<(String, String)>>>);

impl std::fmt::Debug for MemberIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberIdentity(<certificate and key redacted>)")
    }
}

impl MemberIdentity {
    /// Installs a new chain and key (PEM).
    pub fn set(&self, chain_pem: String, key_pem: String) {
        let value = Some(Arc::new((chain_pem, key_pem)));
        match self.0.write() {
            Ok(mut slot) => *slot = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }

    fn get(&self) -> Option<Arc<(String, String)>> {
        match self.0.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// A member that did not answer a cluster question, and why (for people).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub member: String,
    pub reason: String,
}

impl Missing {
    pub fn to_message(&self) -> api::MissingMember {
        api::MissingMember {
            member: self.member.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// Names missing members for a message: `a (timed out), b (connection refused)`.
pub fn describe_missing(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| format!("{} ({})", m.member, m.reason))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The members of this replica's cluster, and how to ask them.
pub struct Members {
    /// Grows when the StatefulSet scales up; never shrinks by itself.
    members: RwLock<Vec<String>>,
    this: Option<String>,
    timeout: Duration,
    /// Mutual TLS (the admin listener is off loopback), or plain HTTP/2 on loopback.
    tls: bool,
    identity: Arc<MemberIdentity>,
    current: Arc<CurrentAuthority>,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field("members", &self.all())
            .field("this", &self.this)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Members {
    pub fn new(
        config: &MembershipConfig,
        this: Option<String>,
        tls: bool,
        identity: Arc<MemberIdentity>,
        current: Arc<CurrentAuthority>,
    ) -> Self {
        Self {
            members: RwLock::new(config.members.clone()),
            this,
            timeout: config.member_timeout,
            tls,
            identity,
            current,
        }
    }

    /// Every member, this one included, in configuration order.
    pub fn all(&self) -> Vec<String> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adopts `members` if it adds members (a scale-up); a shorter list changes nothing: a
    /// member is removed only by the configuration.
    pub fn grow(&self, members: Vec<String>) -> bool {
        let mut current = self.members.write().unwrap_or_else(|p| p.into_inner());
        let adds = members.iter().any(|m| !current.contains(m));
        if adds && members.len() >= current.len() && current.iter().all(|m| members.contains(m)) {
            tracing::info!(?members, "the cluster has new members");
            *current = members;
            return true;
        }
        false
    }

    /// This replica's own entry, when known.
    pub fn this(&self) -> Option<&str> {
        self.this.as_deref()
    }

    /// Whether `member` is this replica.
    pub fn is_this(&self, member: &str) -> bool {
        self.this.as_deref() == Some(member)
    }

    /// Whether `member` is one of the members.
    pub fn contains(&self, member: &str) -> bool {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|m| m == member)
    }

    /// Every member but this one.
    pub fn others(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|m| !self.is_this(m))
            .collect()
    }

    /// A client of `member`'s audit API.
    pub async fn connect(&self, member: &str) -> Result<AuditServiceClient<Channel>, String> {
        let channel = if self.tls {
            let host = member
                .rsplit_once(':')
                .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or(member);
            let roots = self
                .current
                .get()
                .primary_signer()
                .map(|signer| signer.root_bundle_pem().to_owned())
                .unwrap_or_default();
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(roots))
                .domain_name(host.to_owned());
            if let Some(identity) = self.identity.get() {
                tls = tls.identity(Identity::from_pem(&identity.0, &identity.1));
            }
            Endpoint::from_shared(format!("https://{member}"))
                .and_then(|endpoint| endpoint.tls_config(tls))
                .map_err(|e| e.to_string())?
        } else {
            Endpoint::from_shared(format!("http://{member}")).map_err(|e| e.to_string())?
        };
        let channel = channel
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect()
            .await
            .map_err(|e| connect_error(&e))?;
        Ok(AuditServiceClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// Asks every other member at once; each answer or why it is missing, in member order.
    pub async fn ask_others<T, F, Fut>(&self, ask: F) -> Vec<(String, Result<T, String>)>
    where
        F: Fn(AuditServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let members = self.others();
        let asks = members.iter().map(|member| self.ask(member, &ask));
        let answers = futures_util::future::join_all(asks).await;
        members.into_iter().zip(answers).collect()
    }

    /// Asks one member, within the member timeout.
    pub async fn ask<T, F, Fut>(&self, member: &str, ask: &F) -> Result<T, String>
    where
        F: Fn(AuditServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let work = async {
            let client = self.connect(member).await?;
            ask(client)
                .await
                .map_err(|status| format!("answered {:?}: {}", status.code(), status.message()))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// A connection error with its cause (tonic's own text is only "transport error").
fn connect_error(error: &tonic::transport::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// A request scope asking only the replica it is sent to (what members ask each other).
pub fn local_scope() -> Option<api::Scope> {
    Some(api::Scope {
        member: String::new(),
        local: true,
    })
}
