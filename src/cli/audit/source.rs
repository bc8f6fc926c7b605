//! Where `meshroot audit` reads: a store directory opened read-only, or a running server's
//! audit API; and the filters every command shares.

use super::*;

/// A store opened read-only, or a running server's audit API.
pub(crate) enum Log {
    Store(Arc<SledStore>),
    Remote(AuditServiceClient<Channel>),
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

    pub(super) async fn connect(addr: &str, source: &SourceArgs) -> Result<Self, Failure> {
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
                crate::client::connect(&crate::client::Target {
                    address: addr.to_owned(),
                    root_pem: read(root)?,
                    server_name: source.server_name.clone(),
                    client_identity: identity,
                })
                .await
                .map_err(|e| failed(e.to_string()))?
            }
        };
        Ok(Self::Remote(
            AuditServiceClient::new(channel).max_decoding_message_size(64 << 20),
        ))
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
            Self::Remote(client) => Ok(client
                .list_signers(api::ListSignersRequest {
                    mesh: mesh.to_owned(),
                })
                .await
                .map_err(remote_failure)?
                .into_inner()
                .signers
                .into_iter()
                .map(|signer| (signer.sha256, signer.chain))
                .collect()),
        }
    }

    /// One page of records.
    pub(crate) async fn page(
        &mut self,
        query: &Query,
        size: usize,
        token: Option<String>,
    ) -> Result<(Vec<Record>, Option<String>), Failure> {
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
                Ok((page.records, page.next_page_token))
            }
            Self::Remote(client) => {
                let response = client
                    .list_records(api::ListRecordsRequest {
                        filter: Some(filter_from_query(query)),
                        page_size: size as u32,
                        page_token: token.unwrap_or_default(),
                        count_only: false,
                    })
                    .await
                    .map_err(remote_failure)?
                    .into_inner();
                let records = response
                    .entries
                    .into_iter()
                    .filter_map(|entry| match entry.entry {
                        Some(api::log_entry::Entry::Record(record)) => store::from_message(record),
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
            Self::Remote(client) => Ok(client
                .list_records(api::ListRecordsRequest {
                    filter: Some(filter_from_query(query)),
                    count_only: true,
                    ..Default::default()
                })
                .await
                .map_err(remote_failure)?
                .into_inner()
                .count),
        }
    }

    /// Every entry (records as stored, pruned leaves) from `from` to `to`, in order, handed
    /// to `each` (for verification).
    pub(super) async fn stream_entries(
        &mut self,
        from: u64,
        to: u64,
        each: &mut dyn FnMut(u64, VerifyEntry<'_>),
    ) -> Result<(), Failure> {
        match self {
            Self::Store(store) => {
                let mut next = from;
                while next <= to {
                    let (chunk_store, start) = (store.clone(), next);
                    let entries = blocking(move || {
                        chunk_store
                            .entries(start, to, 8192)
                            .map_err(|e| e.to_string())
                    })
                    .await?;
                    let Some(last) = entries.last().map(LogEntry::sequence) else {
                        break;
                    };
                    for entry in &entries {
                        match entry {
                            LogEntry::Record { sequence, stored } => {
                                each(*sequence, VerifyEntry::Record(stored))
                            }
                            LogEntry::Pruned { sequence, leaf } => {
                                each(*sequence, VerifyEntry::Pruned(*leaf))
                            }
                        }
                    }
                    next = last + 1;
                }
                Ok(())
            }
            Self::Remote(client) => {
                if to < from {
                    return Ok(());
                }
                let mut stream = client
                    .watch_records(api::WatchRecordsRequest {
                        from_sequence: from,
                        filter: None,
                        include_stored: true,
                        include_pruned: true,
                        to_sequence: to,
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

pub(super) fn remote_failure(status: tonic::Status) -> Failure {
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
    pub(super) fn query(&self, now: SystemTime) -> Result<Query, Failure> {
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
            (Some(OutcomeArg::Denied), reason) | (None, reason @ Some(_)) => {
                Some(OutcomeFilter::Denied {
                    reason: reason.clone(),
                })
            }
            (None, None) => None,
        };
        let query = Query {
            serial: self.serial.as_deref().map(parse_serial).transpose()?,
            spiffe_id: self.spiffe_id.clone(),
            spiffe_id_prefix: self.spiffe_id_prefix.clone(),
            mesh: self.mesh.clone(),
            trust_domain: self.trust_domain.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            caller: self.caller.clone(),
            cluster_id: self.cluster.clone(),
            pod: self.pod.clone(),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            valid_at: time("valid-at", &self.valid_at)?,
            expires_after: time("expires-after", &self.expires_after)?,
            expires_before: time("expires-before", &self.expires_before)?,
            outcome,
        };
        query
            .validate()
            .map_err(|e| Failure::usage(e.to_string()))?;
        Ok(query)
    }
}
