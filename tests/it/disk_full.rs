//! Issue 14, D6 and D7: a record store whose disk fills. meshroot must not hang and must not
//! linger half-alive:
//! - a shutdown (SIGTERM) while the disk is full ends within `shutdown_grace`, and its exit code
//!   says the last checkpoint was not written (3);
//! - a write that fails while serving stops the server, which exits with 75 (EX_TEMPFAIL) for
//!   its supervisor to restart it;
//! - once space returns, a restarted server opens the same store and issues again, and every
//!   certificate a client ever received has its record.
//!
//! The store lives on a small tmpfs the test mounts (it needs root, as in CI). Where mounting is
//! not permitted the test says so and passes, unless `MESHROOT_REQUIRE_MOUNT=1` (set by
//! `.ci/run`) makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::Edited as _;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::Serving;
use common::{agent_csr, spiffe_id, TestCa, MESH};
use meshroot::edge::client::{self, AgentMetadata, Target};
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// A tmpfs of `size`, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then(|| Self {
            path: path.to_owned(),
        })
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) {
        let mut file = std::fs::File::create(self.path.join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
        // The last partial chunk may have fit: top up byte by byte until nothing fits.
        while file.write_all(&[0]).and_then(|()| file.sync_all()).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// One CreateCertificate; the leaf's serial if a certificate came back.
async fn issue(server: &Serving, ca: &TestCa, account: &str) -> Option<Vec<u8>> {
    let target = Target {
        address: server.address.clone(),
        root_pem: ca.root_pem(),
        server_name: "localhost".into(),
        client_identity: None,
    };
    let channel = client::connect(&target).await.ok()?;
    let metadata = AgentMetadata {
        token: Some(ca.token(MESH, "shop", account)),
        cluster_id: "Kubernetes".into(),
    };
    let csr = agent_csr(&spiffe_id("shop", account));
    let response = client::create_certificate(channel, csr, 3600, &metadata)
        .await
        .ok()?;
    let leaf = common::certificates(&response.cert_chain[0])[0].to_vec();
    Some(
        X509Certificate::from_der(&leaf)
            .unwrap()
            .1
            .raw_serial()
            .to_vec(),
    )
}

/// Waits (bounded) for the process to exit; its exit code and how long it took.
async fn wait_exit(server: &mut Serving, bound: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    match common::exit_within(&mut server.child, bound).await {
        Some(status) => (status.code(), started.elapsed()),
        None => panic!(
            "meshroot did not exit within {bound:?}; log:\n{}",
            server.log()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_server_cleanly_and_it_serves_again_once_space_returns() {
    let ca = TestCa::new();
    let Some(disk) = SmallDisk::mount(&ca.path().join("small-disk"), "8m") else {
        assert!(
            std::env::var_os("MESHROOT_REQUIRE_MOUNT").is_none(),
            "MESHROOT_REQUIRE_MOUNT is set but a tmpfs could not be mounted"
        );
        eprintln!("skipped: mounting a tmpfs is not permitted here (run as root to test D6/D7)");
        return;
    };
    // The store and the checkpoint file on the small disk.
    let checkpoint_file = disk.path.join("checkpoint.txt");
    ca.edit_config(|text| {
        format!("shutdown_grace = \"3s\"\n{text}").edited(
            "checkpoint_file = \"checkpoint.txt\"",
            &format!("checkpoint_file = \"{}\"", checkpoint_file.display()),
        )
    });
    let config = ca.config_path().to_string_lossy().into_owned();
    let store = disk.path.join("store");
    let store_env = store.to_string_lossy().into_owned();
    let start = || {
        Serving::start_with_env(
            ca.path(),
            &["--config", &config],
            &[("MESHROOT_STORE", store_env.as_str())],
        )
    };
    let mut received = Vec::new();

    // D7: SIGTERM with the disk full. The last checkpoint cannot be written; the process still
    // ends within shutdown_grace, and says so in its exit code.
    let mut server = start();
    received.push(issue(&server, &ca, "before").await.expect("issued"));
    disk.fill();
    server.signal("-TERM");
    let (code, took) = wait_exit(&mut server, Duration::from_secs(20)).await;
    let log = server.log();
    assert_eq!(code, Some(3), "{log}");
    assert!(took < Duration::from_secs(3 + 2), "{took:?}");
    assert!(log.contains("the last checkpoint was not written"), "{log}");

    // Space returns: the same store opens and serves.
    disk.free();
    let mut server = start();
    received.push(issue(&server, &ca, "after-restart").await.expect("issued"));

    // D6: the disk fills while serving. Requests fail (never a certificate without its
    // record), and the server exits by itself with 75, for its supervisor to restart it,
    // within shutdown_grace of the first failed request (D7: no hang after an I/O error).
    disk.fill();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first_failure = None;
    let mut n = 0;
    while server.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        // A new caller each time, so no rate limit refuses these.
        n += 1;
        match issue(&server, &ca, &format!("while-full-{n}")).await {
            Some(serial) => received.push(serial),
            None => {
                first_failure.get_or_insert_with(Instant::now);
            }
        }
    }
    let (code, _) = wait_exit(&mut server, Duration::from_secs(10)).await;
    let first_failure = first_failure.expect("requests failed once the disk was full");
    assert!(
        first_failure.elapsed() < Duration::from_secs(3 + 2),
        "exited {:?} after the first failed request; log:\n{}",
        first_failure.elapsed(),
        server.log()
    );
    let log = server.log();
    assert_eq!(code, Some(75), "{log}");
    assert!(log.contains("the record store cannot write"), "{log}");

    // Space returns again: a restart serves, and a SIGTERM now ends cleanly (exit 0).
    disk.free();
    let mut server = start();
    received.push(issue(&server, &ca, "recovered").await.expect("issued"));
    server.stop();

    let store = meshroot::adapters::store::SledStore::open_read_only(&store).unwrap();
    for serial in &received {
        let query = meshroot::domain::audit::Query {
            serial: Some(serial.clone()),
            ..meshroot::domain::audit::Query::default()
        };
        assert_eq!(
            store.count(&query).unwrap(),
            1,
            "every certificate a client received has its record"
        );
    }
}
