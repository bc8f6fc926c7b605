//! The log itself: its Merkle tree and proofs, signed checkpoints, group commit, the store's
//! lock, record versions, pruning, verification against tampering, and revocations.

use super::*;

#[tokio::test]
async fn the_tree_matches_the_leaves_and_proofs_verify_at_every_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_with(dir.path(), options(16)).unwrap();
    fill(&store, 0..150, &mut Rng(11)).await;
    store.persist_index().unwrap();
    let leaves: Vec<merkle::Hash> = store
        .entries(1, 150, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.leaf().unwrap().leaf_hash())
        .collect();
    assert_eq!(leaves.len(), 150);
    let mut frontier = merkle::Frontier::default();
    for (i, leaf) in leaves.iter().enumerate() {
        frontier.push(*leaf);
        let size = i as u64 + 1;
        assert_eq!(store.root_at(size).unwrap(), frontier.root(), "size {size}");
    }
    assert_eq!(store.tree_head(), (150, frontier.root()));
    for (size, sequence) in [
        (150, 1),
        (150, 150),
        (150, 77),
        (97, 96),
        (128, 128),
        (5, 3),
    ] {
        let proof = store.prove_inclusion(sequence, size).unwrap();
        assert_eq!(proof.leaf_index, sequence - 1);
        assert_eq!(
            crate::domain::digest::sha256(proof.record.as_ref().unwrap()),
            proof.leaf.record_sha256
        );
        merkle::verify_inclusion(
            &proof.leaf.leaf_hash(),
            proof.leaf_index,
            size,
            &proof.path,
            &store.root_at(size).unwrap(),
        )
        .unwrap();
    }
    let consistency = store.prove_consistency(60, 150).unwrap();
    merkle::verify_consistency(
        60,
        150,
        &consistency,
        &store.root_at(60).unwrap(),
        &frontier.root(),
    )
    .unwrap();
    assert!(store.prove_inclusion(151, 150).is_err());
    assert!(store.prove_inclusion(1, 151).is_err());
}

#[tokio::test]
async fn checkpoints_are_signed_stored_and_only_added_when_the_log_grew() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_with(dir.path(), options(16)).unwrap();
    let (signer, _) = AuditSigner::generate("meshroot-audit/test").unwrap();
    let verifier = AuditVerifier::parse(&signer.verifier_key()).unwrap();
    fill(&store, 0..20, &mut Rng(3)).await;
    let note = store.checkpoint(&signer).await.unwrap();
    let checkpoint = verifier.open_checkpoint(&note).unwrap();
    assert_eq!(checkpoint.size, 20);
    assert_eq!(checkpoint.root, store.root_at(20).unwrap());
    assert_eq!(store.checkpoint(&signer).await.unwrap(), note);
    fill(&store, 20..25, &mut Rng(4)).await;
    store.checkpoint(&signer).await.unwrap();
    let sizes: Vec<u64> = store
        .checkpoints()
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(sizes, [20, 25]);
}

#[tokio::test]
async fn one_flush_serves_many_concurrent_appends_and_sequences_have_no_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let record = synthetic(i, &mut Rng(i + 1));
                store.append_durable(record).await
            })
        })
        .collect();
    let mut sequences = Vec::new();
    for task in tasks {
        sequences.push(task.await.unwrap().unwrap());
    }
    sequences.sort();
    assert_eq!(sequences, (1..=200).collect::<Vec<_>>());
    let flushes = store.flushes();
    assert!(
        (1..200).contains(&flushes),
        "{flushes} flushes for 200 appends"
    );
    assert_eq!(store.durable_sequence(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_append_waits_for_ever_whether_the_flusher_sleeps_is_busy_or_has_not_started() {
    // A lost wake-up of the flusher leaves an append waiting for a flush that never comes; the
    // timeout turns that hang into a failure. Appends right after an open race the flusher
    // thread's start; bursts find it busy or gathering; lone appends after a pause find it
    // asleep.
    let within = |append| async move {
        tokio::time::timeout(Duration::from_secs(30), append)
            .await
            .expect("an append was never made durable")
    };
    let dir = tempfile::tempdir().unwrap();
    let mut appended = 0u64;
    for reopen in 0..10u64 {
        let store = SledStore::open(dir.path()).unwrap();
        for round in 0..6u64 {
            let burst = if round % 2 == 0 { 1 } else { 24 };
            let tasks: Vec<_> = (0..burst)
                .map(|i| {
                    let (store, seed) = (store.clone(), reopen * 1_000 + round * 100 + i);
                    tokio::spawn(async move {
                        store
                            .append_durable(synthetic(seed, &mut Rng(seed + 1)))
                            .await
                    })
                })
                .collect();
            for task in tasks {
                within(task).await.unwrap().unwrap();
                appended += 1;
            }
            if round == 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(store.durable_sequence(), appended);
    }
}

#[tokio::test]
async fn a_store_in_use_is_reported_as_such_and_read_only_opens_do_not_write() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        fill(&store, 0..3, &mut Rng(5)).await;
        // A second handle (another process, in real life) waits for the lock, then says why.
        let second = SledStore::open(dir.path());
        assert!(
            matches!(second, Err(StoreError::Locked { .. })),
            "{second:?}"
        );
    }
    let reader = SledStore::open_with(
        dir.path(),
        StoreOptions {
            read_only: true,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(reader.last_sequence(), 3);
    assert!(matches!(
        reader.append_durable(synthetic(9, &mut Rng(9))).await,
        Err(StoreError::ReadOnly)
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(SledStore::open_read_only(&empty.path().join("none")).is_err());
}

#[test]
fn refuses_records_of_a_future_version() {
    let mut rng = Rng(1);
    let mut record = pb::Record::decode(encode(&synthetic(1, &mut rng)).as_slice()).unwrap();
    record.version = RECORD_VERSION + 1;
    assert_eq!(decode(&record.encode_to_vec()), None);
}

#[tokio::test]
async fn pruning_removes_expired_issuances_and_old_denials_but_keeps_the_log_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, _) = AuditSigner::generate("meshroot-audit/test").unwrap();
    let verifier = AuditVerifier::parse(&signer.verifier_key()).unwrap();
    let mut rng = Rng(21);
    let store = SledStore::open_with(dir.path(), options(16)).unwrap();
    fill(&store, 0..200, &mut rng).await;
    store.checkpoint(&signer).await.unwrap();
    let before = all_records(&store);
    // As of 30 days after the log, keeping issuances 10 days past expiry and denials a week:
    // everything short-lived goes, the 7-day certificates issued late stay... none here, so
    // issuances expired before `now - 10 d` and every denial go.
    let now = at(30 * 86_400);
    let policy = retention::RetentionPolicy {
        issued_after_expiry: Duration::from_secs(10 * 86_400),
        denials: Duration::from_secs(7 * 86_400),
    };
    let report = store.prune(&policy, now).unwrap();
    let gone = |r: &Record| match &r.outcome {
        Outcome::Issued(issued) => issued.not_after < now - policy.issued_after_expiry,
        Outcome::Denied(_) => r.recorded_at < now - policy.denials,
        // Revocations are never pruned: the revocations in force are rebuilt from them; nor
        // are partner bundle changes (what a mesh trusted, and since when), nor records of CA
        // keys (which key made which CA certificate).
        Outcome::Revoked(_) | Outcome::Federated(_) | Outcome::CaKey(_) => false,
    };
    let expected_gone: Vec<u64> = before
        .iter()
        .filter(|r| gone(r))
        .map(|r| r.sequence)
        .collect();
    assert!(!expected_gone.is_empty());
    assert_eq!(report.issued + report.denied, expected_gone.len() as u64);
    for sequence in &expected_gone {
        assert_eq!(store.get(*sequence).unwrap(), None);
    }
    assert_eq!(store.len(), 200 - expected_gone.len() as u64);
    // Queries and counts no longer see them; a second pass finds nothing more.
    check_every_query(&store);
    assert_eq!(
        store.prune(&policy, now).unwrap(),
        retention::PruneReport::default()
    );
    // The log still verifies against the checkpoint taken before pruning, and a pruned
    // record still has an inclusion proof (of its leaf).
    let report = store.verify(Some(&verifier), &[], now).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.pruned, expected_gone.len() as u64);
    let proof = store.prove_inclusion(expected_gone[0], 200).unwrap();
    assert!(proof.record.is_none());
    merkle::verify_inclusion(
        &proof.leaf.leaf_hash(),
        proof.leaf_index,
        200,
        &proof.path,
        &store.root_at(200).unwrap(),
    )
    .unwrap();
    // Merges drop the pruned entries; everything still agrees, also after reopening.
    fill(&store, 200..400, &mut rng).await;
    store.persist_index().unwrap();
    check_every_query(&store);
    drop(store);
    let store = SledStore::open_with(dir.path(), options(16)).unwrap();
    assert_eq!(store.len(), 400 - expected_gone.len() as u64);
    check_every_query(&store);
    // Verification at a time when some pruned certificates would still be valid fails.
    let early = store.verify(Some(&verifier), &[], at(0)).unwrap();
    assert!(!early.ok());
}

/// A store of 100 records with a checkpoint, changed by `tamper` at the sled level, verified.
async fn tampered(tamper: impl FnOnce(&sled::Tree)) -> crate::domain::audit::verify::VerifyReport {
    let dir = tempfile::tempdir().unwrap();
    let (signer, _) = AuditSigner::generate("meshroot-audit/test").unwrap();
    let verifier = AuditVerifier::parse(&signer.verifier_key()).unwrap();
    {
        let store = SledStore::open_with(dir.path(), options(16)).unwrap();
        fill(&store, 0..100, &mut Rng(99)).await;
        store.persist_index().unwrap();
        store.checkpoint(&signer).await.unwrap();
    }
    {
        let db = open_db(dir.path(), Duration::from_secs(2), 1 << 26).unwrap();
        tamper(&db.open_tree("records").unwrap());
        db.flush().unwrap();
    }
    let store = SledStore::open_with(
        dir.path(),
        StoreOptions {
            read_only: true,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    store.verify(Some(&verifier), &[], at(0)).unwrap()
}

#[tokio::test]
async fn verification_passes_untouched_and_names_edited_removed_reordered_and_inserted_records() {
    let untouched = tampered(|_| {}).await;
    assert!(untouched.ok(), "{untouched:?}");
    assert_eq!(untouched.tree_size, 100);
    assert_eq!(untouched.uncovered, 0);

    let edited = tampered(|records| {
        let mut value = blocks::get(records, 10).unwrap().unwrap().to_vec();
        let last = value.len() - 1;
        value[last] ^= 1;
        blocks::overwrite(records, 10, &value);
    })
    .await;
    assert!(!edited.ok());
    assert!(
        edited
            .problems
            .iter()
            .any(|p| p.contains("record 10 differs")),
        "{edited:?}"
    );

    let removed = tampered(|records| {
        assert_eq!(
            blocks::remove(records, &blocks::BlockCache::default(), &[20]).unwrap(),
            1
        );
    })
    .await;
    assert!(
        removed
            .problems
            .iter()
            .any(|p| p.contains("20..=20 are missing")),
        "{removed:?}"
    );

    let reordered = tampered(|records| {
        let a = blocks::get(records, 30).unwrap().unwrap();
        let b = blocks::get(records, 31).unwrap().unwrap();
        blocks::overwrite(records, 30, &b);
        blocks::overwrite(records, 31, &a);
    })
    .await;
    assert!(
        reordered.problems.iter().any(|p| p.contains("reordered")),
        "{reordered:?}"
    );

    // A forged record slipped in at 50, later ones renumbered consistently (headers too).
    let inserted = tampered(|records| {
        let renumber = |stored: &[u8], sequence: u64| {
            let mut value = stored.to_vec();
            value[1..9].copy_from_slice(&sequence.to_be_bytes());
            value
        };
        for sequence in (50..=100).rev() {
            let stored = blocks::get(records, sequence).unwrap().unwrap();
            blocks::overwrite(records, sequence + 1, &renumber(&stored, sequence + 1));
        }
        let forged = blocks::get(records, 49).unwrap().unwrap();
        blocks::overwrite(records, 50, &renumber(&forged, 50));
    })
    .await;
    assert!(!inserted.ok());
    assert_eq!(inserted.tree_size, 101);
    assert!(!inserted.checkpoints[0].matched, "{inserted:?}");
}

#[tokio::test]
async fn revocations_are_indexed_select_revoked_certificates_and_outlive_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(33);
    let store = SledStore::open_with(dir.path(), options(16)).unwrap();
    fill(&store, 0..100, &mut rng).await;
    let issued: Vec<Record> = all_records(&store)
        .into_iter()
        .filter(|r| matches!(r.outcome, Outcome::Issued(_)))
        .collect();
    let chosen = [&issued[2], &issued[30]];
    let revoked_certificate = |record: &Record| match &record.outcome {
        Outcome::Issued(i) => RevokedCertificate {
            serial: i.serial.clone(),
            intermediate_sha256: i.intermediate_sha256.clone(),
            not_after: i.not_after,
            spiffe_id: i.spiffe_id.clone(),
            mesh: i.mesh.clone(),
            member: String::new(),
        },
        _ => unreachable!(),
    };
    let revocation = Record::new(
        "r".into(),
        at(300),
        CallerRecord {
            authenticator: "admin".into(),
            subject: "loopback".into(),
            ..CallerRecord::default()
        },
        Outcome::Revoked(RevocationRecord {
            reason: "key-compromise".into(),
            certificates: chosen.iter().map(|r| revoked_certificate(r)).collect(),
            blocked: vec![revoked_certificate(chosen[0]).spiffe_id],
            ..RevocationRecord::default()
        }),
    );
    let sequence = store.append_durable(revocation).await.unwrap();
    let revocations = store.revocations().unwrap();
    assert_eq!(revocations.len(), 1);
    assert_eq!(revocations[0].sequence, sequence);
    // Only issued certificates that were revoked, in log order; with another filter, fewer.
    let revoked_only = Query {
        revoked: Some(crate::domain::audit::RevokedSerials::default()),
        ..Query::default()
    };
    let found: Vec<u64> = store
        .query_all(&revoked_only)
        .unwrap()
        .iter()
        .map(|r| r.sequence)
        .collect();
    assert_eq!(found, [chosen[0].sequence, chosen[1].sequence]);
    assert_eq!(store.count(&revoked_only).unwrap(), 2);
    let Outcome::Issued(first) = &chosen[0].outcome else {
        unreachable!()
    };
    let narrower = Query {
        spiffe_id: Some(first.spiffe_id.clone()),
        ..revoked_only.clone()
    };
    assert!(store
        .query_all(&narrower)
        .unwrap()
        .iter()
        .all(|r| r.sequence == chosen[0].sequence || r.spiffe_id() == first.spiffe_id));
    // The revocation is found by the identities it names, as an auditor asks.
    let by_identity = Query {
        spiffe_id: Some(first.spiffe_id.clone()),
        outcome: Some(OutcomeFilter::Revoked),
        ..Query::default()
    };
    assert_eq!(store.count(&by_identity).unwrap(), 1);

    // Long after everything expired: issuances and denials go, the revocation stays.
    let policy = retention::RetentionPolicy {
        issued_after_expiry: Duration::from_secs(86_400),
        denials: Duration::from_secs(86_400),
    };
    store.prune(&policy, at(400 * 86_400)).unwrap();
    assert_eq!(
        store.query_all(&revoked_only).unwrap(),
        Vec::<Record>::new()
    );
    assert_eq!(store.revocations().unwrap().len(), 1);
    drop(store);
    let store = SledStore::open_with(dir.path(), options(16)).unwrap();
    assert_eq!(store.revocations().unwrap()[0].sequence, sequence);
}

/// Retention raised between passes (400 days, then 100 years): the second pass's cutoff is
/// before the first's, and before 1970; it prunes nothing more, and a query whose expiry
/// bounds cross (valid at a time after it asks expiry before) finds nothing. Both used to
/// panic on an inverted range in the in-memory index.
#[tokio::test]
async fn raised_retention_and_crossed_expiry_bounds_select_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_with(dir.path(), options(16_384)).unwrap();
    fill(&store, 0..40, &mut Rng(5)).await;
    let now = at(500 * 86_400);
    let short = retention::RetentionPolicy {
        issued_after_expiry: Duration::from_secs(400 * 86_400),
        denials: Duration::from_secs(30 * 86_400),
    };
    let first = store.prune(&short, now).unwrap();
    assert!(first.issued > 0, "{first:?}");
    let long = retention::RetentionPolicy {
        issued_after_expiry: Duration::from_secs(36_500 * 86_400),
        ..short
    };
    assert_eq!(
        store.prune(&long, now).unwrap(),
        retention::PruneReport::default()
    );
    let crossed = Query {
        valid_at: Some(at(1_000)),
        expires_before: Some(at(10)),
        ..Query::default()
    };
    assert_eq!(store.count(&crossed).unwrap(), 0);
    assert!(store.query(&crossed, 10, None).unwrap().records.is_empty());
    check_every_query(&store);
}
