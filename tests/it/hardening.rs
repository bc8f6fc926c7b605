//! Issue 30, the second hardening round: each attack as it was run, now getting the expected
//! answer (the cluster attacks, N2 and N13 between members, are in `replicas.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::Edited as _;

use common::{agent_csr, TestCa, MESH};
use meshroot::pb::audit as api;
use meshroot::pb::audit::audit_service_client::AuditServiceClient;
use tonic::transport::Channel;
use tonic::Code;

const READER: &str = "spiffe://cluster.local/ns/ops/sa/auditor";
const REVOKER: &str = "spiffe://cluster.local/ns/ops/sa/security";

/// The recorded refusal behind an UNAUTHENTICATED answer.
fn denial(
    server: &common::TestServer,
    status: &tonic::Status,
) -> meshroot::domain::record::DenialRecord {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    match server.record_of(status).outcome {
        meshroot::domain::record::Outcome::Denied(denied) => denied,
        other => panic!("{other:?}"),
    }
}

/// A CA configured as a `[replicas]` whose only member is itself, on a loopback admin address
/// (plain text: any local client may speak as a member); the member's name.
fn cluster_of_one() -> (TestCa, String) {
    let ca = TestCa::new();
    let port = crate::common::free_port();
    let member = format!("127.0.0.1:{port}");
    ca.edit_config(|text| {
        format!(
            "{}\n[replicas]\nmembers = [\"{member}\"]\nself = \"{member}\"\n",
            text.edited(
                "[admin]\nlisten = \"127.0.0.1:0\"",
                &format!("[admin]\nlisten = \"{member}\""),
            )
        )
    });
    (ca, member)
}

/// A CA whose admin listener is off loopback, with a reader and a revoker.
fn admin_ca() -> TestCa {
    let ca = TestCa::new();
    ca.admin_on_tls(&[READER]);
    ca.edit_config(|text| {
        text.replacen(
            "allowed_identities = [",
            &format!("revokers = [\"{REVOKER}\"]\nallowed_identities = ["),
            1,
        )
    });
    ca
}

/// An audit API client of `server`'s admin port with a client certificate (chain, key).
async fn audit_client(
    server: &common::TestServer,
    identity: (String, String),
) -> AuditServiceClient<Channel> {
    let channel = meshroot::edge::client::connect(&meshroot::edge::client::Target {
        address: format!("127.0.0.1:{}", server.server.admin_address().port()),
        root_pem: server.root_pem.clone(),
        server_name: "localhost".into(),
        client_identity: Some(identity),
    })
    .await
    .unwrap();
    AuditServiceClient::new(channel)
}

fn serial_of(chain_pem: &str) -> Vec<u8> {
    let leaf = common::certificates(chain_pem).remove(0);
    meshroot::domain::signer::check::serial_of(&leaf).unwrap()
}

/// N8: a reader reads and cannot revoke, block or lift a block; a revoker can.
/// N1: an admin certificate revoked for key compromise loses every admin right at once: every
/// audit route and `/ui` answer PERMISSION_DENIED (403), while the revoker keeps its rights.
#[tokio::test]
async fn a_revoked_admin_certificate_loses_every_right_and_a_reader_cannot_revoke() {
    let ca = admin_ca();
    let server = ca.start().await;
    let reader = server.workload(&ca, MESH, READER).await;
    let revoker = server.workload(&ca, MESH, REVOKER).await;
    let mut reading = audit_client(&server, reader.clone()).await;
    reading
        .get_stats(api::GetStatsRequest::default())
        .await
        .expect("a reader reads");
    let filter = |serial: Vec<u8>| api::Filter {
        serial,
        ..Default::default()
    };
    for request in [
        api::RevokeRequest {
            filter: Some(filter(serial_of(&revoker.0))),
            ..Default::default()
        },
        api::RevokeRequest {
            unblock: vec![REVOKER.into()],
            ..Default::default()
        },
    ] {
        let status = reading.revoke(request).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let admin = server.server.admin_address();
    let (status, _) = common::https_get(admin, &ca.root_pem(), "/ui", Some(reader.clone())).await;
    assert_eq!(status, 200, "a reader loads the status page");

    // The revoker revokes the reader's certificate (key compromise).
    let mut revoking = audit_client(&server, revoker.clone()).await;
    let answer = revoking
        .revoke(api::RevokeRequest {
            filter: Some(filter(serial_of(&reader.0))),
            reason: "key-compromise".into(),
            no_block: true,
            ..Default::default()
        })
        .await
        .expect("a revoker revokes")
        .into_inner();
    assert_eq!(answer.certificates.len(), 1, "{answer:?}");

    // On the same connection as on a new one: every route refuses the revoked certificate.
    for mut client in [reading, audit_client(&server, reader.clone()).await] {
        let refused = [
            client
                .get_stats(api::GetStatsRequest::default())
                .await
                .map(|_| ()),
            client
                .list_records(api::ListRecordsRequest::default())
                .await
                .map(|_| ()),
            client
                .get_checkpoint(api::GetCheckpointRequest::default())
                .await
                .map(|_| ()),
            client
                .revoke(api::RevokeRequest {
                    unblock: vec![READER.into()],
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ];
        for answer in refused {
            assert_eq!(answer.unwrap_err().code(), Code::PermissionDenied);
        }
    }
    let (status, body) = common::https_get(admin, &ca.root_pem(), "/ui", Some(reader)).await;
    assert_eq!(status, 403, "{body}");
    revoking
        .get_stats(api::GetStatsRequest::default())
        .await
        .expect("the revoker keeps its rights");
    server.stop().await;
}

/// N13: the member identity is never issued through the CSR API, even to a caller whose token
/// is for meshroot's own service account; the refusal is recorded with its reason.
#[tokio::test]
async fn the_csr_api_never_issues_the_member_identity() {
    // A cluster of one (the member identity is reserved as soon as there is a [replicas]).
    let (ca, _) = cluster_of_one();
    let server = ca.start().await;
    let member = "spiffe://cluster.local/ns/istio-system/sa/meshroot";
    let status = server
        .call(
            agent_csr(member),
            Some(ca.token(MESH, "istio-system", "meshroot")),
            0,
        )
        .await
        .unwrap_err();
    let denied = denial(&server, &status);
    assert_eq!(denied.reason, "reserved-identity");
    // Another service account of the namespace is served as before.
    server
        .call(
            agent_csr("spiffe://cluster.local/ns/istio-system/sa/other"),
            Some(ca.token(MESH, "istio-system", "other")),
            0,
        )
        .await
        .unwrap();
    server.stop().await;
}

/// N4: a checkpoint handed over as a member's must be signed by the audit key, of the named
/// log, and within bounds. A forged note of size 2^40 is refused (it once erased the rollback
/// evidence for that member), and fresh 512 KiB log names no longer grow the store.
#[tokio::test]
async fn shared_checkpoints_are_verified_and_bounded() {
    use rustls_pki_types::pem::PemObject as _;
    let (ca, member) = cluster_of_one();
    let server = ca.start().await;
    let mut client = server.audit_client().await;
    let share = |log: &str, note: String| api::ShareCheckpointRequest {
        member: member.clone(),
        log: log.to_owned(),
        note,
    };
    let log = "meshroot-audit/other-log";
    let forged_for = |log: &str| {
        format!(
            "{log}\n{}\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\u{2014} {log} AAAAAAAAAAA=\n",
            1u64 << 40
        )
    };
    let forged = forged_for(log);
    let status = client
        .share_checkpoint(share(log, forged))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Signed by another key: refused as well.
    let (stranger, _) = meshroot::domain::audit::checkpoint::AuditSigner::generate(log).unwrap();
    let status = client
        .share_checkpoint(share(
            log,
            stranger.sign_checkpoint(1 << 40, [0; 32]).unwrap(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Fresh, huge log names: refused before anything is kept.
    let size = || walkdir_size(&ca.path().join("store"));
    let before = size();
    for n in 0..40 {
        let name = format!("{n}{}", "x".repeat(512 * 1024));
        let status = client
            .share_checkpoint(share(&name, forged_for(&name)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    assert!(size() < before + 1024 * 1024, "{before} -> {}", size());
    // The real thing: signed by the audit key under the log's name, kept and answered.
    let pem = std::fs::read(ca.path().join("audit-key.pem")).unwrap();
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
    let signer =
        meshroot::domain::audit::checkpoint::AuditSigner::from_pkcs8(log, key.secret_pkcs8_der())
            .unwrap();
    let note = signer.sign_checkpoint(3, [1; 32]).unwrap();
    let kept = client
        .share_checkpoint(share(log, note.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.note, note);
    server.stop().await;
}

/// Bytes of the files under `dir`.
fn walkdir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => walkdir_size(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// N5: times from a client or a member are range-checked at the boundary. A block past year
/// 9999, a filter from i64::MIN to i64::MAX, a member's revocation blocking until i64::MAX:
/// INVALID_ARGUMENT, nothing recorded, no panic.
#[tokio::test]
async fn out_of_range_times_are_refused_at_the_boundary() {
    let (ca, _) = cluster_of_one();
    let server = ca.start().await;
    server.issue(&ca, "cart").await;
    let mut client = server.audit_client().await;
    let cart = "spiffe://cluster.local/ns/default/sa/cart";
    for seconds in [1i64 << 62, i64::MAX, 3_000_000 * 86_400] {
        let status = client
            .revoke(api::RevokeRequest {
                filter: Some(api::Filter {
                    spiffe_id: cart.into(),
                    ..Default::default()
                }),
                block_for_seconds: seconds,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{seconds}: {status:?}"
        );
    }
    let extreme = api::Filter {
        since_ms: Some(i64::MIN),
        until_ms: Some(i64::MAX),
        ..Default::default()
    };
    let status = client
        .list_records(api::ListRecordsRequest {
            filter: Some(extreme.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client
        .revoke(api::RevokeRequest {
            filter: Some(extreme),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // A member's revocation to record as gathered, blocking until i64::MAX.
    let status = client
        .revoke(api::RevokeRequest {
            apply: Some(meshroot::pb::audit::Revocation {
                blocked: vec![cart.into()],
                blocked_until_ms: i64::MAX,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Nothing was recorded: cart still renews.
    server.issue(&ca, "cart").await;
    assert!(server
        .records()
        .iter()
        .all(|r| !matches!(r.outcome, meshroot::domain::record::Outcome::Revoked(_))));
    server.stop().await;
}

/// N5: a block past year 9999 already in a log (recorded before the boundary checks) no longer
/// panics the handler that formats the refusal: the identity gets UNAUTHENTICATED, with a
/// recorded denial, after a restart.
#[tokio::test]
async fn a_block_recorded_past_year_9999_is_refused_plainly() {
    let ca = TestCa::new();
    let cart = "spiffe://cluster.local/ns/default/sa/cart";
    {
        let store = meshroot::adapters::store::SledStore::open(&ca.path().join("store")).unwrap();
        let record = meshroot::domain::record::Record::new(
            "forged-block".into(),
            std::time::SystemTime::now(),
            meshroot::domain::record::CallerRecord::default(),
            meshroot::domain::record::Outcome::Revoked(
                meshroot::domain::record::RevocationRecord {
                    blocked: vec![cart.into()],
                    blocked_until: Some(meshroot::domain::clock::from_unix_millis(i64::MAX)),
                    ..Default::default()
                },
            ),
        );
        store.append_durable(record).await.unwrap();
    }
    let server = ca.start().await;
    let status = server
        .call(agent_csr(cart), Some(ca.token(MESH, "default", "cart")), 0)
        .await
        .unwrap_err();
    let denied = denial(&server, &status);
    assert_eq!(denied.reason, "identity-revoked");
    assert!(
        denied.detail.contains("after 9999-12-31T23:59:59Z"),
        "{}",
        denied.detail
    );
    server.stop().await;
}

/// N9: ztunnel sends a whole node's requests over one connection. While 100 of them wait on a
/// TokenReview that hangs, a request whose token is verified offline (JWT) on the same
/// connection is answered at once: it does not queue behind them for a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_token_review_does_not_hold_up_other_requests_on_the_same_connection() {
    use common::kube_api::{FakeApiServer, TokenIdentity};
    let west = FakeApiServer::start().await;
    west.add_token(
        "opaque",
        TokenIdentity::service_account("default", "app", None),
    );
    let ca = TestCa::new();
    let kubeconfig = west.write_kubeconfig(ca.path(), "west");
    ca.edit_config(|text| {
        format!(
            "request_timeout = \"20s\"\n{text}\n[[mesh.cluster]]\nid = \"west\"\nkubeconfig = \"{}\"\nreview_timeout = \"20s\"\nmax_concurrent_reviews = 200\n",
            kubeconfig.display()
        )
    });
    let server = ca.start().await;
    let channel = meshroot::edge::client::connect(&server.target("localhost"))
        .await
        .unwrap();
    *west.state.delay.lock().unwrap() = Some(std::time::Duration::from_secs(15));
    let metadata = |token: String| meshroot::edge::client::AgentMetadata {
        token: Some(token),
        cluster_id: "west".into(),
    };
    let app = "spiffe://cluster.local/ns/default/sa/app";
    let hung: Vec<_> = (0..100)
        .map(|n| {
            let (channel, metadata) = (channel.clone(), metadata(format!("opaque-{n}")));
            tokio::spawn(async move {
                meshroot::edge::client::create_certificate(channel, agent_csr(app), 0, &metadata)
                    .await
            })
        })
        .collect();
    common::eventually("the 100 reviews reach the API server", || {
        west.arrivals() >= 100
    })
    .await;
    let cart = "spiffe://cluster.local/ns/default/sa/cart";
    meshroot::edge::client::create_certificate(
        channel.clone(),
        agent_csr(cart),
        0,
        &metadata(ca.token(MESH, "default", "cart")),
    )
    .await
    .expect("the JWT request is answered");
    assert!(
        hung.iter().all(|task| !task.is_finished()),
        "answered while every reviewed request still waits, not after one gave up"
    );
    *west.state.delay.lock().unwrap() = None;
    for task in hung {
        task.abort();
    }
    server.stop().await;
}

/// N3: a reader of the public `/crl` that reads nothing is closed after
/// `connections.write_timeout`, and what was queued for it freed (the memory bound under a
/// thousand of them is measured by `meshroot bench --slow-crl-readers`, not here). On the
/// plain-text loopback admin listener, which now goes through the same connection guard.
#[tokio::test]
async fn a_crl_reader_that_reads_nothing_is_closed_after_the_write_timeout() {
    use tokio::io::AsyncWriteExt as _;
    let ca = TestCa::new();
    let crl =
        meshroot::edge::cli::slow_readers::filler_crl(6000, std::time::SystemTime::now()).unwrap();
    std::fs::write(ca.path().join("filler-crl.pem"), &crl).unwrap();
    ca.edit_config(|text| {
        format!(
            "{}\n[connections]\nwrite_timeout = \"300ms\"\n",
            text.edited(
                "extra_crls = [\"root-crl.pem\"]",
                "extra_crls = [\"root-crl.pem\", \"filler-crl.pem\"]"
            )
        )
    });
    let server = ca.start().await;
    let admin = server.server.admin_address();
    let (status, body) = common::http_get(admin, "/crl").await;
    assert_eq!(status, 200);
    assert!(body.len() > 300_000, "a large CRL: {} bytes", body.len());
    // 64 pipelined requests (about 25 MB of answers, far past the socket buffers), then
    // nothing read.
    let mut reader = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = b"GET /crl HTTP/1.1\r\nhost: localhost\r\n\r\n".repeat(64);
    reader.write_all(&request).await.unwrap();
    let port = reader.local_addr().unwrap().port();
    assert_eq!(tcp_state(admin.port(), port), Some(ESTABLISHED));
    common::eventually(
        "the server closes the connection of a peer that reads nothing",
        || tcp_state(admin.port(), port) != Some(ESTABLISHED),
    )
    .await;
    // Others are still served.
    let (status, _) = common::http_get(admin, "/crl").await;
    assert_eq!(status, 200);
    drop(reader);
    server.stop().await;
}

/// TCP_ESTABLISHED in `/proc/net/tcp`.
const ESTABLISHED: u8 = 1;

/// The state of this machine's IPv4 TCP socket from `local` port to `remote` port (Linux
/// `/proc/net/tcp`), if it is still there. The server's side of a connection whose peer reads
/// nothing leaves ESTABLISHED when the server closes it (FIN_WAIT1: its FIN waits behind the
/// unread data, so the peer's side never learns of it).
fn tcp_state(local: u16, remote: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |field: &str| u16::from_str_radix(field.rsplit_once(':')?.1, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (port(fields.get(1)?)? == local && port(fields.get(2)?)? == remote)
            .then(|| u8::from_str_radix(fields.get(3)?, 16).ok())
            .flatten()
    })
}

/// N12: a revoke filter with a 1 MB serial is refused with a short message (it was echoed
/// whole, a 1.25 MB trailer).
#[tokio::test]
async fn a_huge_serial_is_refused_not_echoed() {
    let ca = TestCa::new();
    let server = ca.start().await;
    let mut client = server
        .audit_client()
        .await
        .max_encoding_message_size(4 << 20);
    for request in [api::RevokeRequest {
        filter: Some(api::Filter {
            serial: vec![0xab; 1 << 20],
            ..Default::default()
        }),
        ..Default::default()
    }] {
        let status = client.revoke(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.code());
        assert!(
            status.message().len() < 300,
            "{} bytes",
            status.message().len()
        );
    }
    let status = client
        .list_records(api::ListRecordsRequest {
            filter: Some(api::Filter {
                serial: vec![0xab; 1 << 20],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().len() < 300);
    server.stop().await;
}

/// N3, the admin listener's idle timeout: an HTTP/1.1 connection left open is closed after
/// `connections.idle_timeout`, while a live tail that sees no record for longer stays open
/// (the listener pings it, and its client answers) and gets the next record.
#[tokio::test]
async fn an_idle_admin_connection_is_closed_while_a_quiet_live_tail_stays() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ca = TestCa::new();
    ca.edit_config(|text| format!("{text}\n[connections]\nidle_timeout = \"1s\"\n"));
    let server = ca.start().await;
    let admin = server.server.admin_address();
    let mut tail = server
        .audit_client()
        .await
        .watch_records(api::WatchRecordsRequest {
            from_sequence: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = tail.message().await.unwrap().unwrap().sequence;
    // An HTTP/1.1 client that asks once and then keeps the connection, silent.
    let mut idle = tokio::net::TcpStream::connect(admin).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        idle.read_to_end(&mut answer),
    )
    .await;
    assert!(closed.is_ok(), "the idle connection was closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    // The tail has been quiet for longer than the idle timeout; it still gets the next record.
    server.issue(&ca, "cart").await;
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), tail.message())
        .await
        .expect("the quiet tail is still open")
        .unwrap()
        .expect("and delivers the next record");
    assert!(next.sequence > first);
    server.stop().await;
}
