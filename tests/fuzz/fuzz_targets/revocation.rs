//! A revocation another member hands over to record (`RevokeRequest.apply`, any bytes) and the
//! block duration a client asks for: a message whose times pass the boundary check becomes a
//! record the revocations in force take without a panic, and every time it holds formats; a
//! block duration is refused or ends within year 9999.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshroot::domain::clock::{format_time, unix_seconds, LATEST_UNIX_SECONDS};
use meshroot::edge::grpc::wire::{check_times, revocation_from_message};
use meshroot::issuance::revoke::block_until;
use meshroot::pb::audit::Revocation;
use meshroot::domain::record::{CallerRecord, Outcome, Record};
use meshroot::domain::revocation::Revocations;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes are a block_for_seconds; the rest a Revocation message.
    let Some((seconds, message)) = data.split_first_chunk::<8>() else {
        return;
    };
    let now = meshroot_fuzz::now();
    if let Ok(Some(Some(until))) = block_until(false, i64::from_le_bytes(*seconds), None, now) {
        assert!(until > now && unix_seconds(until) <= LATEST_UNIX_SECONDS);
    }
    let Ok(message) = Revocation::decode(message) else {
        return;
    };
    if check_times(&message).is_err() {
        return;
    }
    let revocation = revocation_from_message(message);
    if let Some(until) = revocation.blocked_until {
        assert!(unix_seconds(until) <= LATEST_UNIX_SECONDS);
    }
    let record = Record::new(String::new(), now, CallerRecord::default(), Outcome::Revoked(revocation.clone()));
    let revocations = Revocations::default();
    revocations.apply(&record);
    for identity in &revocation.blocked {
        if let Some(block) = revocations.blocked(identity, now) {
            let _ = format_time(block.since);
            if let Some(until) = block.until {
                assert_ne!(format_time(until), "invalid-time");
            }
        }
    }
    for certificate in &revocation.certificates {
        let _ = format_time(certificate.not_after);
    }
});
