//! A checkpoint another member shares (`ShareCheckpoint`: a log name and a note, any bytes):
//! refused unless the audit key signed it for that log and it is within bounds; one that is
//! kept opens with the audit key under the log's name at the size it was kept at.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshroot::domain::audit::checkpoint::{
    check_shared, MAX_SHARED_LOG_NAME_BYTES, MAX_SHARED_NOTE_BYTES,
};

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into a log name and a note.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (log, note) = rest.split_at((split as usize).min(rest.len()));
    let (Ok(log), Ok(note)) = (std::str::from_utf8(log), std::str::from_utf8(note)) else {
        return;
    };
    let verifier = meshroot_fuzz::audit_signer("meshroot-audit/fuzz").verifier();
    match check_shared(log, note, Some(&verifier)) {
        Ok(Some((size, kept))) => {
            assert!(log.len() <= MAX_SHARED_LOG_NAME_BYTES && kept.len() <= MAX_SHARED_NOTE_BYTES);
            let opened = verifier
                .named(log)
                .and_then(|named| named.open_checkpoint(&kept));
            assert!(matches!(opened, Ok(checkpoint) if checkpoint.size == size && checkpoint.origin == log));
        }
        Ok(None) => assert!(note.is_empty()),
        Err(_) => {}
    }
});
