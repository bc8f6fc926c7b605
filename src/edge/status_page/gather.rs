//! `GET /ui` on the admin port: gathers the status page through the audit API itself (the same
//! access rule, the same cluster-wide answers `meshroot audit` and `meshroot rotate plan` get)
//! and renders it with [`crate::edge::status_page::render`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::domain::audit::rotation;
use crate::edge::grpc::audit_api::AuditApi;
use crate::edge::status_page::render::{
    Certificate, CheckpointStatus, ClusterStatus, MeshStatus, RootStatus, StatusPage,
};
use crate::issuance::CurrentAuthority;
use crate::pb::audit as api;
use crate::pb::audit::audit_service_server::AuditService as _;
use crate::pb::audit::record as api_record;

/// The activity the page sums up.
pub(crate) const ACTIVITY_WINDOW: Duration = Duration::from_secs(24 * 3_600);
/// How far ahead it lists expiring certificates.
pub(crate) const EXPIRING_WINDOW: Duration = Duration::from_secs(4 * 3_600);
/// At most this many records are read for each figure that needs records, not counts.
pub(crate) const RECORDS_READ: usize = 20_000;
const PAGE_SIZE: u32 = 1_000;

/// The page's HTTP status and body.
pub(crate) struct PageResponse {
    pub status: u16,
    pub body: String,
}

/// Renders the page for a request with these extensions (its TLS connection info, which the
/// audit API's access rule reads).
pub async fn page(
    api: &AuditApi,
    current: &Arc<CurrentAuthority>,
    store: Option<crate::edge::status_page::render::StoreStatus>,
    extensions: tonic::Extensions,
) -> PageResponse {
    let base = || Request::from_parts(MetadataMap::new(), extensions.clone(), ());
    if let Err(status) =
        api.authorized_identity(&base(), crate::adapters::authn::admin::Right::Read)
    {
        return refused(&status);
    }
    match gather(api, current, &base).await {
        Ok(page) => PageResponse {
            body: crate::edge::status_page::render::render(&StatusPage { store, ..page }),
            status: 200,
        },
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "the status page could not be gathered");
            refused(&status)
        }
    }
}

fn refused(status: &Status) -> PageResponse {
    let (code, text) = crate::edge::grpc::status::http_status_of(status);
    PageResponse {
        status: code,
        body: format!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>meshroot status</title></head>\
             <body><h1>meshroot status</h1><p>{}</p></body></html>\n",
            crate::edge::status_page::render::escape(text)
        ),
    }
}

/// A request for the audit API carrying the page request's connection info.
fn with<T>(base: &(dyn Fn() -> Request<()> + Sync), message: T) -> Request<T> {
    let (metadata, extensions, ()) = base().into_parts();
    Request::from_parts(metadata, extensions, message)
}

async fn gather(
    api: &AuditApi,
    current: &Arc<CurrentAuthority>,
    base: &(dyn Fn() -> Request<()> + Sync),
) -> Result<StatusPage, Status> {
    let ca = current.get();
    let now = ca.clock().now();
    let cluster = api
        .get_replicas(with(base, api::GetReplicasRequest {}))
        .await?
        .into_inner();
    let mut meshes = Vec::new();
    // This replica's view: ztunnel's requests reach every replica alike.
    let ztunnel_constrained = ca.metrics().ztunnel_constrained_meshes();
    let mut completeness: Option<api::Completeness> = None;
    let mut signers_by_mesh: Vec<(&str, Arc<crate::domain::signer::MeshSigner>)> = ca
        .mesh_signers()
        .map(|(name, signer)| (name, signer.clone()))
        .collect();
    signers_by_mesh.sort_by(|a, b| a.0.cmp(b.0));
    for (name, signer) in &signers_by_mesh {
        let bundle: Vec<Vec<u8>> = signer.roots().iter().map(|r| r.to_vec()).collect();
        let usage = api
            .count_root_use(with(
                base,
                api::CountRootUseRequest {
                    mesh: (*name).to_owned(),
                    bundle: bundle.clone(),
                    scope: None,
                },
            ))
            .await?
            .into_inner();
        if usage.replicas.is_some() {
            completeness = usage.replicas.clone();
        }
        let usage = crate::edge::grpc::wire::cluster_bundle_use(&usage, bundle.len()).0;
        // Every chain some certificate of the mesh was signed through, and the one in force.
        let chain = signer.signer_chain();
        let mut chains: Vec<Vec<Vec<u8>>> = api
            .list_signers(with(
                base,
                api::ListSignersRequest {
                    mesh: (*name).to_owned(),
                    scope: None,
                },
            ))
            .await?
            .into_inner()
            .signers
            .into_iter()
            .map(|s| s.chain)
            .collect();
        chains.push(chain.clone());
        let signing_root = rotation::root_of(&chain, &bundle);
        let signed: Vec<usize> = chains
            .iter()
            .filter_map(|c| rotation::root_of(c, &bundle))
            .collect();
        let roots = bundle
            .iter()
            .zip(&usage.per_root)
            .enumerate()
            .map(|(index, (root, in_use))| RootStatus {
                certificate: Certificate {
                    subject: rotation::subject_of(root),
                    not_after: rotation::not_after_of(root),
                },
                fingerprint: crate::domain::digest::hex(&crate::domain::digest::sha256(root))[..16]
                    .to_owned(),
                signing: signing_root == Some(index),
                certificates: in_use.certificates,
                until: in_use.until,
            })
            .collect();
        meshes.push(MeshStatus {
            name: (*name).to_owned(),
            trust_domain: signer.trust_domain().to_string(),
            intermediate: Certificate {
                subject: chain
                    .first()
                    .map(|der| rotation::subject_of(der))
                    .unwrap_or_default(),
                not_after: Some(signer.signing_not_after()),
            },
            roots,
            rotation: rotation::where_we_are(&bundle, &usage, signing_root, &signed),
            stranded: usage.stranded.certificates,
            ztunnel_constrained: ztunnel_constrained.iter().any(|m| m == name),
        });
    }

    let since = now
        .checked_sub(ACTIVITY_WINDOW)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut issued = Vec::new();
    for (name, _) in &signers_by_mesh {
        let count = api
            .list_records(with(
                base,
                api::ListRecordsRequest {
                    filter: Some(api::Filter {
                        mesh: (*name).to_owned(),
                        outcome: api::Outcome::Issued as i32,
                        since_ms: Some(crate::domain::clock::unix_millis(since)),
                        ..api::Filter::default()
                    }),
                    count_only: true,
                    ..api::ListRecordsRequest::default()
                },
            ))
            .await?
            .into_inner()
            .count;
        issued.push(((*name).to_owned(), count));
    }

    let mut denials: BTreeMap<(String, String), u64> = BTreeMap::new();
    let denials_truncated = read_records(
        api,
        base,
        api::Filter {
            outcome: api::Outcome::Denied as i32,
            since_ms: Some(crate::domain::clock::unix_millis(since)),
            ..api::Filter::default()
        },
        |record| {
            if let Some(api_record::Outcome::Denied(denial)) = &record.outcome {
                let refusals = denial.summary.as_ref().map_or(1, |s| s.count.max(1));
                *denials
                    .entry((denial.mesh.clone(), denial.reason.clone()))
                    .or_default() += refusals;
            }
        },
    )
    .await?;

    let mut expiring: BTreeMap<String, u64> = BTreeMap::new();
    let expiring_truncated = read_records(
        api,
        base,
        api::Filter {
            outcome: api::Outcome::Issued as i32,
            valid_at_ms: Some(crate::domain::clock::unix_millis(now)),
            expires_before_ms: Some(crate::domain::clock::unix_millis(now + EXPIRING_WINDOW)),
            ..api::Filter::default()
        },
        |record| {
            if let Some(api_record::Outcome::Issued(issuance)) = &record.outcome {
                *expiring.entry(issuance.namespace.clone()).or_default() += 1;
            }
        },
    )
    .await?;

    let checkpoint = api
        .get_checkpoint(with(base, api::GetCheckpointRequest::default()))
        .await
        .ok()
        .map(|c| c.into_inner())
        .filter(|c| !c.note.is_empty())
        .map(|c| CheckpointStatus {
            size: c.size,
            note: c.note,
            verifier_key: c.verifier_key,
        });

    let this_member = cluster.this_member.clone();
    let cluster = (!cluster.members.is_empty()).then(|| {
        let completeness = completeness.unwrap_or_default();
        ClusterStatus {
            members: cluster.members.clone(),
            answered: completeness.answered,
            missing: completeness
                .missing
                .into_iter()
                .map(|m| (m.member, m.reason))
                .collect(),
        }
    });
    let trust = api
        .get_federation(with(base, api::GetFederationRequest {}))
        .await?
        .into_inner()
        .meshes
        .into_iter()
        .map(|mesh| crate::edge::status_page::render::TrustStatus {
            mesh: mesh.mesh,
            accepts: mesh.accepts,
            partners: mesh
                .partners
                .into_iter()
                .map(|p| crate::edge::status_page::render::PartnerRow {
                    held: p.held.then(|| {
                        (
                            p.sequence,
                            p.authorities,
                            p.cross_certified,
                            crate::domain::clock::from_unix_millis(p.fetched_at_ms),
                        )
                    }),
                    trust_domain: p.trust_domain,
                    bundle_url: p.bundle_url,
                    unprotected: p.unprotected,
                    last_attempt: (p.last_attempt_ms != 0)
                        .then(|| crate::domain::clock::from_unix_millis(p.last_attempt_ms)),
                    last_error: p.last_error,
                })
                .collect(),
        })
        .collect();
    Ok(StatusPage {
        now: Some(now),
        this_member,
        meshes,
        cluster,
        activity_window: ACTIVITY_WINDOW,
        issued,
        denials: denials
            .into_iter()
            .map(|((mesh, reason), n)| (mesh, reason, n))
            .collect(),
        denials_truncated,
        expiring_window: EXPIRING_WINDOW,
        expiring: expiring.into_iter().collect(),
        expiring_truncated,
        checkpoint,
        trust,
        store: None,
    })
}

/// Reads up to [`RECORDS_READ`] records matching `filter` (cluster-wide); true if there were
/// more.
async fn read_records(
    api: &AuditApi,
    base: &(dyn Fn() -> Request<()> + Sync),
    filter: api::Filter,
    mut each: impl FnMut(&crate::pb::audit::Record),
) -> Result<bool, Status> {
    let mut token = String::new();
    let mut read = 0;
    loop {
        let response = api
            .list_records(with(
                base,
                api::ListRecordsRequest {
                    filter: Some(filter.clone()),
                    page_size: PAGE_SIZE,
                    page_token: token,
                    ..api::ListRecordsRequest::default()
                },
            ))
            .await?
            .into_inner();
        for entry in &response.entries {
            if let Some(api::log_entry::Entry::Record(record)) = &entry.entry {
                each(record);
            }
        }
        read += response.entries.len();
        if response.next_page_token.is_empty() {
            return Ok(false);
        }
        if read >= RECORDS_READ {
            return Ok(true);
        }
        token = response.next_page_token;
    }
}
