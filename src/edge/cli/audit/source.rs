//! Where `meshroot audit` reads: a store directory opened read-only, or a running server's
//! audit API; and the filters every command shares.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use tonic::transport::Channel;

use crate::adapters::config::Config;
use crate::adapters::store::SledStore;
use crate::adapters::store::StoreError;
use crate::domain::audit::verify::VerifyEntry;
use crate::domain::audit::{parse_time, LeafData, OutcomeFilter, Query};
use crate::domain::digest::parse_hex;
use crate::domain::record::Record;
use crate::edge::cli::failure::Failure;
use crate::edge::grpc::wire::filter_from_query;
use crate::pb::audit as api;
use crate::pb::audit::audit_service_client::AuditServiceClient;

use super::args::*;

/// A store opened read-only, or a running server's audit API.
#[allow(
    clippy::large_enum_variant,
    reason = "one per command, never moved in a loop"
)]
pub(crate) enum Log {
    Store(Arc<SledStore>),
    Remote(Remote),
}

/// A running server's audit API, the scope of every request (`--replica`), and the members
/// that did not answer a cluster-wide request so far.
pub(crate) struct Remote {
    client: AuditServiceClient<Channel>,
    replica: Option<String>,
    /// Only the replica asked (several --addr: each is asked for its own log).
    local: bool,
    /// Member → why it did not answer.
    pub(crate) missing: std::collections::BTreeMap<String, String>,
    /// Members that answered.
    pub(crate) answered: std::collections::BTreeSet<String>,
}

impl std::ops::Deref for Remote {
    type Target = AuditServiceClient<Channel>;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl std::ops::DerefMut for Remote {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.client
    }
}

impl Remote {
    /// The scope of requests: every member (the server's default), or `--replica`.
    pub(crate) fn scope(&self) -> Option<api::Scope> {
        if self.local {
            return Some(api::Scope {
                member: String::new(),
                local: true,
            });
        }
        self.replica.as_ref().map(|member| api::Scope {
            member: member.clone(),
            local: false,
        })
    }

    /// Every entry from `from` to `to` of one log (the server asked, or `--replica`'s), in
    /// order, handed to `each`.
    pub(crate) async fn stream_entries(
        &mut self,
        from: u64,
        to: u64,
        each: &mut dyn FnMut(u64, VerifyEntry<'_>),
    ) -> Result<(), Failure> {
        if to < from {
            return Ok(());
        }
        let scope = self.scope();
        let mut stream = self
            .watch_records(api::WatchRecordsRequest {
                from_sequence: from,
                filter: None,
                include_stored: true,
                include_pruned: true,
                to_sequence: to,
                scope,
            })
            .await
            .map_err(remote_failure)?
            .into_inner();
        while let Some(entry) = stream.message().await.map_err(remote_failure)? {
            match entry.entry {
                Some(api::log_entry::Entry::PrunedLeaf(bytes)) => {
                    let leaf = LeafData::parse(&bytes).ok_or_else(|| {
                        Failure::runtime(format!("entry {} is malformed", entry.sequence))
                    })?;
                    each(entry.sequence, VerifyEntry::Pruned(leaf));
                }
                _ => each(entry.sequence, VerifyEntry::Record(&entry.stored)),
            }
            if entry.sequence >= to {
                break;
            }
        }
        Ok(())
    }

    /// Asks only the replica connected to (each of several `--addr` for its own log).
    pub(crate) fn set_local(&mut self) {
        self.local = true;
    }

    /// Restricts the following requests to one member.
    pub(crate) fn set_replica(&mut self, member: String) {
        self.replica = Some(member);
    }

    /// Takes note of which members answered a cluster-wide request.
    pub(crate) fn note(&mut self, cluster: Option<&api::Completeness>) {
        let Some(cluster) = cluster else {
            return;
        };
        self.answered.extend(cluster.answered.iter().cloned());
        for missing in &cluster.missing {
            self.missing
                .insert(missing.member.clone(), missing.reason.clone());
        }
    }
}

impl Log {
    /// The members that did not answer (empty for a store, one replica, or a complete answer).
    pub(crate) fn missing(&self) -> Vec<(String, String)> {
        match self {
            Self::Store(_) => Vec::new(),
            Self::Remote(remote) => remote
                .missing
                .iter()
                .map(|(m, r)| (m.clone(), r.clone()))
                .collect(),
        }
    }

    /// Ends a command: an answer some member did not contribute to is *incomplete*. It is
    /// said on stderr, naming the members, and fails with exit code 3 unless
    /// `--allow-incomplete`.
    pub(crate) fn finish(&self, allow_incomplete: bool) -> Result<(), Failure> {
        incomplete(&self.missing(), allow_incomplete)
    }
}

/// Exit code of an answer that is incomplete: a member of the cluster did not answer.
pub(crate) const EXIT_INCOMPLETE: u8 = 3;

/// Says that an answer is incomplete (stderr) and fails unless allowed.
pub(crate) fn incomplete(missing: &[(String, String)], allow: bool) -> Result<(), Failure> {
    if missing.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = missing
        .iter()
        .map(|(member, reason)| format!("{member} ({reason})"))
        .collect();
    eprintln!(
        "INCOMPLETE: {} member(s) did not answer, so their records are not in this answer: {}",
        missing.len(),
        named.join(", ")
    );
    if allow {
        return Ok(());
    }
    Err(Failure {
        message: "the answer is incomplete (accept it with --allow-incomplete)".into(),
        code: EXIT_INCOMPLETE,
    })
}

impl Log {
    pub(crate) async fn open(source: &SourceArgs) -> Result<Self, Failure> {
        if let Some(addr) = &source.addr {
            if addr.contains(',') {
                return Err(Failure::usage(
                    "several --addr replicas are only for `audit list`; name one replica",
                ));
            }
        }
        if let Some(addr) = &source.addr {
            return Self::connect(addr, source).await;
        }
        if source.replica.is_some() && source.store.is_some() {
            return Err(Failure::usage(
                "--replica picks a member of a running cluster: give --addr, not --store",
            ));
        }
        let path = match &source.store {
            Some(path) => path.clone(),
            None => Config::load(&source.config)?.store,
        };
        let opened = tokio::task::spawn_blocking({
            let path = path.clone();
            move || SledStore::open_read_only(&path)
        })
        .await
        .map_err(|e| Failure::runtime(e.to_string()))?;
        match opened {
            Ok(store) => Ok(Self::Store(store)),
            // The server holds the store: ask it instead (when the store came from the config).
            Err(StoreError::Locked { .. }) if source.store.is_none() => {
                let config = Config::load(&source.config)?;
                Self::connect(&config.admin.listen.to_string(), source).await
            }
            Err(error @ StoreError::Locked { .. }) => Err(Failure::runtime(format!(
                "{error} (is a meshroot server running? use --addr to ask it, or stop it first)"
            ))),
            Err(error) => Err(Failure::runtime(error.to_string())),
        }
    }

    pub(crate) async fn connect(addr: &str, source: &SourceArgs) -> Result<Self, Failure> {
        let failed = |e: String| Failure::runtime(format!("connecting to {addr}: {e}"));
        let channel = match &source.root {
            None => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| failed(e.to_string()))?
                .connect()
                .await
                .map_err(|e| failed(e.to_string()))?,
            Some(root) => {
                let read = |path: &Path| {
                    std::fs::read_to_string(path)
                        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
                };
                let identity = match (&source.cert, &source.key) {
                    (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                    _ => None,
                };
                crate::edge::client::connect(&crate::edge::client::Target {
                    address: addr.to_owned(),
                    root_pem: read(root)?,
                    server_name: source.server_name.clone(),
                    client_identity: identity,
                })
                .await
                .map_err(|e| failed(e.to_string()))?
            }
        };
        Ok(Self::Remote(Remote {
            client: AuditServiceClient::new(channel).max_decoding_message_size(64 << 20),
            replica: source.replica.clone(),
            local: false,
            missing: Default::default(),
            answered: Default::default(),
        }))
    }

    /// A mesh's remembered signing certificates: SHA-256 → chain (signing certificate first).
    pub(crate) async fn signers(
        &mut self,
        mesh: &str,
    ) -> Result<std::collections::HashMap<Vec<u8>, Vec<Vec<u8>>>, Failure> {
        match self {
            Self::Store(store) => {
                let (store, mesh) = (store.clone(), mesh.to_owned());
                blocking(move || store.signers(&mesh).map_err(|e| e.to_string())).await
            }
            Self::Remote(client) => {
                let scope = client.scope();
                Ok(client
                    .list_signers(api::ListSignersRequest {
                        mesh: mesh.to_owned(),
                        scope,
                    })
                    .await
                    .map_err(remote_failure)?
                    .into_inner()
                    .signers
                    .into_iter()
                    .map(|signer| (signer.sha256, signer.chain))
                    .collect())
            }
        }
    }

    /// One page of records.
    pub(crate) async fn page(
        &mut self,
        query: &Query,
        size: usize,
        token: Option<String>,
    ) -> Result<(Vec<Record>, Option<String>), Failure> {
        let (records, next) = self.labelled_page(query, size, token).await?;
        Ok((
            records.into_iter().map(|(record, _)| record).collect(),
            next,
        ))
    }

    /// One page of records, each with the member whose log holds it (empty: the log asked).
    pub(crate) async fn labelled_page(
        &mut self,
        query: &Query,
        size: usize,
        token: Option<String>,
    ) -> Result<(Vec<(Record, String)>, Option<String>), Failure> {
        match self {
            Self::Store(store) => {
                let store = store.clone();
                let query = query.clone();
                let page = blocking(move || {
                    store
                        .query(&query, size, token.as_deref())
                        .map_err(|e| e.to_string())
                })
                .await?;
                let records = page
                    .records
                    .into_iter()
                    .map(|r| (r, String::new()))
                    .collect();
                Ok((records, page.next_page_token))
            }
            Self::Remote(client) => {
                let scope = client.scope();
                let response = client
                    .list_records(api::ListRecordsRequest {
                        filter: Some(filter_from_query(query)),
                        page_size: size as u32,
                        page_token: token.unwrap_or_default(),
                        count_only: false,
                        scope,
                    })
                    .await
                    .map_err(remote_failure)?
                    .into_inner();
                client.note(response.replicas.as_ref());
                let records = response
                    .entries
                    .into_iter()
                    .filter_map(|entry| match entry.entry {
                        Some(api::log_entry::Entry::Record(record)) => {
                            crate::edge::grpc::record_messages::record_from_message(record)
                                .map(|record| (record, entry.member))
                        }
                        _ => None,
                    })
                    .collect();
                let token =
                    (!response.next_page_token.is_empty()).then_some(response.next_page_token);
                Ok((records, token))
            }
        }
    }

    pub(super) async fn count(&mut self, query: &Query) -> Result<u64, Failure> {
        match self {
            Self::Store(store) => {
                let (store, query) = (store.clone(), query.clone());
                blocking(move || store.count(&query).map_err(|e| e.to_string())).await
            }
            Self::Remote(client) => {
                let scope = client.scope();
                let response = client
                    .list_records(api::ListRecordsRequest {
                        filter: Some(filter_from_query(query)),
                        count_only: true,
                        scope,
                        ..Default::default()
                    })
                    .await
                    .map_err(remote_failure)?
                    .into_inner();
                client.note(response.replicas.as_ref());
                Ok(response.count)
            }
        }
    }

    /// The sequence number of a record given by sequence or serial.
    pub(super) async fn locate(
        &mut self,
        sequence: Option<u64>,
        serial: &Option<String>,
    ) -> Result<u64, Failure> {
        if let Some(sequence) = sequence {
            return Ok(sequence);
        }
        let serial = parse_serial(serial.as_deref().unwrap_or_default())?;
        let query = Query {
            serial: Some(serial),
            ..Query::default()
        };
        let (records, _) = self.page(&query, 1, None).await?;
        records
            .first()
            .map(|r| r.sequence)
            .ok_or_else(|| Failure::runtime("no certificate with this serial"))
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Failure::runtime(e.to_string()))?
        .map_err(Failure::runtime)
}

pub(crate) fn remote_failure(status: tonic::Status) -> Failure {
    Failure::runtime(format!(
        "the audit API answered {:?}: {}",
        status.code(),
        status.message()
    ))
}

pub(super) fn parse_serial(text: &str) -> Result<Vec<u8>, Failure> {
    parse_hex(text).ok_or_else(|| Failure::usage(format!("--serial {text:?} is not hex")))
}

impl FilterArgs {
    pub(crate) fn query(&self, now: SystemTime) -> Result<Query, Failure> {
        let time = |flag: &str, value: &Option<String>| -> Result<Option<SystemTime>, Failure> {
            value
                .as_deref()
                .map(|text| {
                    parse_time(text, now).ok_or_else(|| {
                        Failure::usage(format!(
                            "--{flag} {text:?}: give RFC 3339 (2026-11-28T10:00:00Z), now, or an age like 1h"
                        ))
                    })
                })
                .transpose()
        };
        let outcome = match (self.outcome, &self.reason) {
            (Some(OutcomeArg::Issued), Some(_)) => {
                return Err(Failure::usage(
                    "--reason is for denials, not --outcome issued",
                ))
            }
            (Some(OutcomeArg::Issued), None) => Some(OutcomeFilter::Issued),
            (Some(OutcomeArg::Revoked), None) => Some(OutcomeFilter::Revoked),
            (Some(OutcomeArg::Federated), None) => Some(OutcomeFilter::Federated),
            (Some(OutcomeArg::Federated), Some(_)) => {
                return Err(Failure::usage(
                    "--reason is for denials, not --outcome federated",
                ))
            }
            (Some(OutcomeArg::Revoked), Some(_)) => {
                return Err(Failure::usage(
                    "--reason is for denials, not --outcome revoked",
                ))
            }
            (Some(OutcomeArg::CaKey), None) => Some(OutcomeFilter::CaKey),
            (Some(OutcomeArg::CaKey), Some(_)) => {
                return Err(Failure::usage(
                    "--reason is for denials, not --outcome ca-key",
                ))
            }
            (Some(OutcomeArg::Denied), reason) | (None, reason @ Some(_)) => {
                Some(OutcomeFilter::Denied {
                    reason: reason.clone(),
                })
            }
            (None, None) => None,
        };
        // A cluster intermediate is recorded as issued to meshroot itself, subject
        // `cluster-intermediate`, with the cluster as the caller's clusterid.
        let (caller, outcome) = match self.kind {
            None => (self.caller.clone(), outcome),
            Some(KindArg::Intermediate) => {
                if self.caller.is_some() || matches!(outcome, Some(OutcomeFilter::Denied { .. })) {
                    return Err(Failure::usage(
                        "--kind intermediate selects issued cluster intermediates; leave out --caller and denials",
                    ));
                }
                (
                    Some(crate::issuance::CLUSTER_INTERMEDIATE_SUBJECT.to_owned()),
                    Some(OutcomeFilter::Issued),
                )
            }
        };
        let query = Query {
            serial: self.serial.as_deref().map(parse_serial).transpose()?,
            spiffe_id: self.spiffe_id.clone(),
            spiffe_id_prefix: self.spiffe_id_prefix.clone(),
            mesh: self.mesh.clone(),
            trust_domain: self.trust_domain.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            caller,
            cluster_id: self.cluster.clone(),
            pod: self.pod.clone(),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            valid_at: time("valid-at", &self.valid_at)?,
            expires_after: time("expires-after", &self.expires_after)?,
            expires_before: time("expires-before", &self.expires_before)?,
            outcome,
            revoked: self
                .revoked
                .then(crate::domain::audit::RevokedSerials::default),
        };
        query
            .validate()
            .map_err(|e| Failure::usage(e.to_string()))?;
        Ok(query)
    }
}
