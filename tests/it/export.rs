//! `[audit.export]`: every record a replica acknowledged reaches the JSON-lines export, also
//! across a SIGKILL under load (at least once, from the cursor persisted in the store), and
//! `meshroot audit verify --export` proves the export complete and unedited up to its last
//! checkpoint from the export and the verifier key alone; an edited or a missing line fails it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::Edited as _;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::load::Load;
use common::process::{Serving, BINARY};
use common::{agent_csr, TestCa, MESH};
use meshroot::edge::client::Target;

const CLIENTS: usize = 8;

/// An OTLP logs receiver generated from the official opentelemetry-proto definitions: it keeps
/// the body of every log record it accepts.
#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsService
    for Receiver
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
        >,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse>,
        tonic::Status,
    > {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let mut bodies = self.bodies.lock().unwrap();
        for resource in request.into_inner().resource_logs {
            for scope in resource.scope_logs {
                for record in scope.log_records {
                    if let Some(Value::StringValue(body)) = record.body.and_then(|b| b.value) {
                        bodies.push(body);
                    }
                }
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

impl Receiver {
    /// Starts the receiver on a free loopback port; returns its endpoint.
    async fn start(&self) -> String {
        self.start_on("127.0.0.1:0").await
    }

    /// Starts the receiver on `address`; returns its endpoint.
    async fn start_on(&self, address: &str) -> String {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let service =
            opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsServiceServer::new(
                self.clone(),
            );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{address}")
    }

    /// The issued serials received, and how many entries arrived more than once.
    fn serials(&self) -> (HashSet<Vec<u8>>, usize) {
        let mut sequences = HashSet::new();
        let mut repeats = 0;
        let mut serials = HashSet::new();
        for body in self.bodies.lock().unwrap().iter() {
            let line: meshroot::edge::export::ExportLine = serde_json::from_str(body).unwrap();
            let (Some(sequence), Some(stored)) = (line.sequence, line.stored) else {
                continue;
            };
            if !sequences.insert(sequence) {
                repeats += 1;
            }
            let stored =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, stored).unwrap();
            let record = meshroot::adapters::store::decode(
                &stored[meshroot::domain::audit::LEAF_HEADER_LEN..],
            )
            .unwrap();
            if let meshroot::domain::record::Outcome::Issued(issued) = record.outcome {
                serials.insert(issued.serial);
            }
        }
        (serials, repeats)
    }
}

/// The serials of the issued records in an export directory.
fn exported_serials(dir: &Path) -> HashSet<Vec<u8>> {
    let contents = meshroot::edge::export::read_dir(dir).unwrap_or_default();
    contents
        .entries
        .values()
        .filter_map(|entry| match entry {
            meshroot::edge::export::StoredEntry::Record(stored) => {
                meshroot::adapters::store::decode(
                    &stored[meshroot::domain::audit::LEAF_HEADER_LEN..],
                )
            }
            meshroot::edge::export::StoredEntry::Pruned(_) => None,
        })
        .filter_map(|record| match record.outcome {
            meshroot::domain::record::Outcome::Issued(issued) => Some(issued.serial),
            _ => None,
        })
        .collect()
}

fn verify_export(ca: &TestCa, dir: &Path) -> std::process::Output {
    Command::new(BINARY)
        .args(["audit", "verify", "--export"])
        .arg(dir)
        .arg("--verifier-key")
        .arg(ca.path().join("audit-key.pub"))
        .env("MESHROOT_LOG", "warn")
        .output()
        .unwrap()
}

/// The export's files and lines, to tamper with.
fn export_lines(dir: &Path) -> Vec<(std::path::PathBuf, Vec<String>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text.lines().map(str::to_owned).collect())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_is_exported_across_a_sigkill_and_the_export_verifies() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let ca = TestCa::new();
    ca.edit_config(|text| {
        text.edited(
            "checkpoint_interval = \"1m\"",
            "checkpoint_interval = \"100ms\"",
        )
        .edited(
            "[admin]\n",
            &format!(
                "[audit.export]\njsonl_dir = \"export\"\njsonl_max_file_mib = 1\n\
                 readable_records = true\notlp_endpoint = \"{endpoint}\"\n\n[admin]\n"
            ),
        )
    });
    let export = ca.path().join("export");
    let config = ca.config_path().to_string_lossy().into_owned();
    let mut server = Serving::start(ca.path(), &["--config", &config]);
    let target = Target {
        address: server.address.clone(),
        root_pem: ca.root_pem(),
        server_name: "localhost".into(),
        client_identity: None,
    };
    let requests = (0..CLIENTS)
        .map(|i| {
            let account = format!("sa{i}");
            let csr = agent_csr(&common::spiffe_id("shop", &account));
            (csr, ca.token(MESH, "shop", &account))
        })
        .collect();
    let load = Load::start(&target, requests);
    // SIGKILL while exporting under load: once some records are already in the export.
    common::wait_until("an export under load", Duration::from_secs(60), || {
        let ready = load.issued() >= 300 && !exported_serials(&export).is_empty();
        async move { ready.then_some(()).ok_or_else(String::new) }
    })
    .await;
    server.kill();
    let received: HashSet<Vec<u8>> = load.stop().await.into_keys().collect();

    // The restarted replica resumes from its cursor: every acknowledged record arrives.
    let mut restarted = Serving::start(ca.path(), &["--config", &config]);
    common::wait_until(
        "every acknowledged record exported",
        Duration::from_secs(60),
        || {
            let exported = exported_serials(&export);
            let missing = received.difference(&exported).count();
            let (collected, _) = receiver.serials();
            let missing_otlp = received.difference(&collected).count();
            async move {
                (missing == 0 && missing_otlp == 0)
                    .then_some(())
                    .ok_or_else(|| {
                        format!("{missing} missing from the files, {missing_otlp} over OTLP")
                    })
            }
        },
    )
    .await;
    // And a checkpoint covering them (written every 100 ms, exported after what it covers).
    common::wait_until(
        "a covering checkpoint exported",
        Duration::from_secs(60),
        || {
            let contents = meshroot::edge::export::read_dir(&export).unwrap();
            let last = contents.checkpoints.last().and_then(|note| {
                meshroot::domain::audit::checkpoint::Checkpoint::parse_unverified(note)
                    .map(|c| c.size)
            });
            let covers = last.is_some_and(|size| size as usize >= contents.entries.len());
            async move { covers.then_some(()).ok_or_else(String::new) }
        },
    )
    .await;
    // Caught up, as /metrics reports it.
    let admin = restarted.admin_address.parse().unwrap();
    common::wait_until(
        "the export caught up",
        Duration::from_secs(30),
        || async move {
            let (status, body) = common::http_get(admin, "/metrics").await;
            assert_eq!(status, 200);
            let lag = |name: &str| {
                body.lines()
                    .find_map(|line| line.strip_prefix(&format!("{name} ")))
                    .map(|value| value.trim().parse::<f64>().unwrap())
                    .unwrap_or_else(|| panic!("no {name} in /metrics"))
            };
            let caught_up = |sink: &str| {
                lag(&format!("meshroot_export_lag_records{{sink=\"{sink}\"}}")) == 0.0
                    && lag(&format!("meshroot_export_lag_seconds{{sink=\"{sink}\"}}")) == 0.0
            };
            (caught_up("jsonl") && caught_up("otlp"))
                .then_some(())
                .ok_or_else(String::new)
        },
    )
    .await;
    restarted.stop();
    let (_, repeats) = receiver.serials();
    eprintln!("entries delivered more than once over OTLP (at least once): {repeats}");

    let verified = verify_export(&ca, &export);
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );

    // Issue 30, N7: a readable copy rewritten (what Loki and Elasticsearch index) is named,
    // though the stored bytes, and so the tree, are intact.
    let rewritten = ca.path().join("export-rewritten");
    common::copy_dir(&export, &rewritten);
    let files = export_lines(&rewritten);
    let (path, lines) = files
        .iter()
        .find(|(_, lines)| lines.iter().any(|l| l.contains("/ns/shop/")))
        .unwrap();
    let at = lines.iter().position(|l| l.contains("/ns/shop/")).unwrap();
    let mut edited = lines.clone();
    edited[at] = lines[at].replace(
        "spiffe://cluster.local/ns/shop/",
        "spiffe://cluster.local/ns/elsewhere/",
    );
    assert_ne!(edited[at], lines[at]);
    std::fs::write(path, edited.join("\n") + "\n").unwrap();
    let refused = verify_export(&ca, &rewritten);
    let out = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(
        !refused.status.success(),
        "a rewritten readable record verified: {out}"
    );
    let name = format!("{}:{}", path.display(), at + 1);
    assert!(
        out.contains(&name) && out.contains("readable copy"),
        "{name}: {out}"
    );

    // Issue 30, N6: one forged line at sequence u64::MAX ends FAILED at once (it spun a core).
    let forged = ca.path().join("export-forged");
    common::copy_dir(&export, &forged);
    let files = export_lines(&forged);
    let (path, lines) = files.last().unwrap();
    let line: serde_json::Value =
        serde_json::from_str(lines.iter().find(|l| l.contains("\"stored\"")).unwrap()).unwrap();
    let mut forged_line = line.clone();
    forged_line["sequence"] = serde_json::json!(u64::MAX);
    let mut appended = lines.clone();
    appended.push(forged_line.to_string());
    std::fs::write(path, appended.join("\n") + "\n").unwrap();
    let mut child = Command::new(BINARY)
        .args(["audit", "verify", "--export"])
        .arg(&forged)
        .arg("--verifier-key")
        .arg(ca.path().join("audit-key.pub"))
        .env("MESHROOT_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::exit_within(&mut child, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| {
            panic!("audit verify --export still runs on a forged u64::MAX sequence")
        });
    assert_eq!(status.code(), Some(1));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(out.contains("forged or corrupt"), "{out}");

    // An edited line fails verification.
    let files = export_lines(&export);
    let (path, lines) = files
        .iter()
        .find(|(_, lines)| lines.iter().any(|l| l.contains("\"stored\"")))
        .unwrap();
    let at = lines.iter().position(|l| l.contains("\"stored\"")).unwrap();
    let mut edited_lines = lines.clone();
    let line: serde_json::Value = serde_json::from_str(&lines[at]).unwrap();
    let stored = line["stored"].as_str().unwrap();
    // Another valid base64 record body: flip one character of the protobuf part.
    let position = stored.len() - 8;
    let flipped = if &stored[position..=position] == "A" {
        "B"
    } else {
        "A"
    };
    let tampered = format!(
        "{}{flipped}{}",
        &stored[..position],
        &stored[position + 1..]
    );
    edited_lines[at] = lines[at].replace(stored, &tampered);
    std::fs::write(path, edited_lines.join("\n") + "\n").unwrap();
    let refused = verify_export(&ca, &export);
    assert!(!refused.status.success(), "an edited record verified");
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("do not match checkpoint"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );

    // A missing line fails verification too.
    let mut missing_lines = lines.clone();
    missing_lines.remove(at);
    std::fs::write(path, missing_lines.join("\n") + "\n").unwrap();
    let refused = verify_export(&ca, &export);
    assert!(
        !refused.status.success(),
        "an export missing a record verified"
    );
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("missing"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
}

/// `fail_closed_lag_records`: while the sink is further behind than the bound, issuance is held
/// (UNAVAILABLE, which istio-agent retries, and not ready with the reason); once the Collector
/// takes the records, it issues again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_closed_export_holds_issuance_while_the_sink_lags() {
    let ca = TestCa::new();
    // A Collector address nobody listens on yet.
    let port = crate::common::free_port();
    ca.edit_config(|text| {
        text.edited(
            "[admin]",
            &format!(
                "[audit.export]\notlp_endpoint = \"http://127.0.0.1:{port}\"\nfail_closed_lag_records = 0\n\n[admin]"
            ),
        )
    });
    let server = ca.start().await;
    let call = || async {
        server
            .call(
                common::agent_csr(&common::spiffe_id("default", "cart")),
                Some(ca.token(MESH, "default", "cart")),
                0,
            )
            .await
    };
    // The serving certificate's record is already unshipped: the guard holds issuance.
    let refused = common::wait_until("issuance held", Duration::from_secs(20), || async {
        match call().await {
            Err(status) if status.code() == tonic::Code::Unavailable => Ok(status),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        refused.message().contains("export-lag"),
        "{}",
        refused.message()
    );
    let store = server.server.store().clone();
    let records_while_held = store.len();
    assert!(call().await.is_err());
    assert_eq!(
        store.len(),
        records_while_held,
        "nothing is signed or recorded while held"
    );

    // The Collector comes up: the sink catches up and issuance resumes.
    let receiver = Receiver::default();
    receiver.start_on(&format!("127.0.0.1:{port}")).await;
    common::wait_until("issuance released", Duration::from_secs(30), || async {
        match call().await {
            Ok(_) => Ok(()),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                Err(format!("{status:?}"))
            }
        }
    })
    .await;
    assert!(!receiver.bodies.lock().unwrap().is_empty());
    server.stop().await;
}

/// A Collector that accepts connections and never answers keeps the export waiting in a send;
/// shutdown still ends it, so the store is released when `shutdown` returns (a restart, or an
/// offline `meshroot audit`, opens it at once) and the unacknowledged batch is sent again later.
#[tokio::test]
async fn shutdown_ends_an_export_stuck_on_a_silent_collector_and_releases_the_store() {
    let ca = TestCa::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let accepted = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.lock().unwrap().push(stream);
        }
    });
    ca.edit_config(|text| {
        text.edited(
            "[admin]",
            &format!("[audit.export]\notlp_endpoint = \"http://127.0.0.1:{port}\"\n\n[admin]"),
        )
    });
    let server = ca.start().await;
    let store_path = ca.config().store;
    // The serving certificate's record is unshipped from the start: the export connects and
    // waits for an answer that never comes.
    common::eventually("the export connected to the Collector", || {
        !held.lock().unwrap().is_empty()
    })
    .await;
    let cursor = server.server.store().export_cursor("otlp").unwrap();
    server.stop().await;
    let reopened = meshroot::adapters::store::SledStore::open_with(
        &store_path,
        meshroot::adapters::store::StoreOptions {
            lock_wait: Duration::ZERO,
            ..Default::default()
        },
    )
    .expect("nothing holds the store once shutdown has returned");
    assert_eq!(
        reopened.export_cursor("otlp").unwrap(),
        cursor,
        "an unacknowledged batch does not move the cursor"
    );
}
