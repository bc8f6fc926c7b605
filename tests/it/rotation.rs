//! Rotation without restarts: a new intermediate written into a mesh's CA directory is picked
//! up live under load with no failed request; a root rotation through extra_roots; a bundle
//! that drops a root still in use is refused (how many, until when) unless forced; and
//! `meshroot rotate plan` tells where the rotation stands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{agent_csr, certificates, spiffe_id, verify_chain, TestCa, TestServer, MESH};

/// The intermediate (DER) a chain was signed by.
fn signer_of(chain: &[String]) -> Vec<u8> {
    certificates(&chain[1]).remove(0).to_vec()
}

fn pem_file_der(path: &Path) -> Vec<u8> {
    certificates(&std::fs::read_to_string(path).unwrap())
        .remove(0)
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_intermediate_is_picked_up_live_under_load_with_no_failed_request() {
    let ca = TestCa::new();
    // One caller sending as fast as it can: the per-caller limit would refuse most of it.
    ca.edit_config(|config| {
        format!("{config}\n[rate_limit]\nper_caller = 0.0\nper_namespace = 0.0\n")
    });
    let server = Arc::new(ca.start().await);
    let old_signer = pem_file_der(&ca.path().join(MESH).join("ca-cert.pem"));
    let token = ca.token(MESH, "default", "load");
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let signers = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (server, stop, failures, signers, token) = (
            server.clone(),
            stop.clone(),
            failures.clone(),
            signers.clone(),
            token.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match server
                    .call(
                        agent_csr(&spiffe_id("default", "load")),
                        Some(token.clone()),
                        0,
                    )
                    .await
                {
                    Ok(response) => {
                        verify_chain(&response.cert_chain, &server.root_pem);
                        signers
                            .lock()
                            .unwrap()
                            .push(signer_of(&response.cert_chain));
                    }
                    Err(status) => {
                        eprintln!("failed during rotation: {status:?}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    common::eventually("the load runs under the old intermediate", || {
        signers.lock().unwrap().len() >= 20
    })
    .await;

    // `meshroot rotate intermediate`, then the files copied over the mesh's CA directory one by
    // one (a reload may catch them half-way; it is refused and the next change retried).
    ca.rotate_intermediate(MESH);
    let new_signer = pem_file_der(&ca.path().join(MESH).join("ca-cert.pem"));
    assert_ne!(new_signer, old_signer);
    common::eventually("the load runs on under the new intermediate", || {
        let signers = signers.lock().unwrap();
        signers.iter().filter(|s| **s == new_signer).count() >= 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let signers = signers.lock().unwrap().clone();
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no request failed");
    assert!(signers.contains(&old_signer) && signers.contains(&new_signer));
    // Once switched, never back.
    let first_new = signers.iter().position(|s| *s == new_signer).unwrap();
    let later_old = signers[first_new..]
        .iter()
        .filter(|s| **s == old_signer)
        .count();
    assert!(
        later_old <= 4,
        "at most the requests in flight at the switch finished with the old intermediate"
    );
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}

/// The config with `extra_roots` (and optionally `force_root_removal`) set on the mesh.
fn mesh_settings(original: &str, extra_roots: &[&Path], force: bool) -> String {
    let roots: Vec<String> = extra_roots
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    original.replacen(
        "ca_dir = \"default\"\n",
        &format!(
            "ca_dir = \"default\"\nextra_roots = [{}]\nforce_root_removal = {force}\n",
            roots.join(", ")
        ),
        1,
    )
}

/// `meshroot rotate plan` against the running server's audit API (the server holds the store).
async fn rotate_plan(server: &TestServer, ca: &TestCa) -> String {
    common::process::meshroot_output(vec![
        "rotate".into(),
        "plan".into(),
        "--config".into(),
        ca.config_path().display().to_string(),
        "--addr".into(),
        server.server.admin_address().to_string(),
    ])
    .await
}

#[tokio::test]
async fn a_root_rotation_refuses_to_drop_the_old_root_while_certificates_chain_to_it() {
    let ca = TestCa::new();
    let original = std::fs::read_to_string(ca.config_path()).unwrap();
    let old_root = ca.path().join("root-cert.pem");
    let server = ca.start().await;
    let before = server.issue(&ca, "before").await;

    // Step 1: a new root N with an intermediate for the mesh.
    let next = TestCa::new();
    let new_root = next.path().join("root-cert.pem");
    // Step 2: N joins the bundle.
    std::fs::write(
        ca.config_path(),
        mesh_settings(&original, &[&new_root], false),
    )
    .unwrap();
    server.server.reload().await.unwrap();
    let plan = rotate_plan(&server, &ca).await;
    assert!(plan.contains("2 root(s)"), "{plan}");
    assert!(plan.contains("step 3"), "{plan}");

    // Step 4: keep R in the bundle, switch to the intermediate under N.
    std::fs::write(
        ca.config_path(),
        mesh_settings(&original, &[&new_root, &old_root], false),
    )
    .unwrap();
    ca.take_intermediate_of(&next, MESH);
    server.server.reload().await.unwrap();
    let after = server.issue(&ca, "after").await;
    assert_eq!(
        signer_of(&after),
        pem_file_der(&next.path().join(MESH).join("ca-cert.pem"))
    );
    // Peers verify against the whole bundle: both the old and the new leaf verify.
    let bundle = after.last().unwrap().clone();
    assert!(bundle.contains(ca.root_pem().trim()) && bundle.contains(next.root_pem().trim()));
    verify_chain(&after, &bundle);
    let mut old_chain = before.clone();
    *old_chain.last_mut().unwrap() = bundle.clone();
    verify_chain(&old_chain, &bundle);

    // Step 5: the plan counts what still chains to R: the first workload's certificate and
    // meshroot's own serving certificate, both signed by R's intermediate.
    let plan = rotate_plan(&server, &ca).await;
    assert!(plan.contains("step 5: waiting"), "{plan}");
    assert!(
        plan.contains("2 unexpired certificates chain to it"),
        "{plan}"
    );

    // Step 6 too early: refused, with how many and until when; the old bundle keeps serving.
    std::fs::write(
        ca.config_path(),
        mesh_settings(&original, &[&new_root], false),
    )
    .unwrap();
    let refused = server.server.reload().await.unwrap_err().to_string();
    assert!(
        refused.contains("drops the root that 2 unexpired certificates chain to"),
        "{refused}"
    );
    assert!(refused.contains("force_root_removal"), "{refused}");
    let still = server.issue(&ca, "still").await;
    assert!(still.last().unwrap().contains(ca.root_pem().trim()));

    // Forced: loaded.
    std::fs::write(
        ca.config_path(),
        mesh_settings(&original, &[&new_root], true),
    )
    .unwrap();
    server.server.reload().await.unwrap();
    let forced = server.issue(&ca, "forced").await;
    assert!(!forced.last().unwrap().contains(ca.root_pem().trim()));
    server.stop().await;
}
