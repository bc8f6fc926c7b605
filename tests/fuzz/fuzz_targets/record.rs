//! The record codec: any bytes read from the store. A record that decodes re-encodes to bytes
//! that decode to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshroot::adapters::store::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Some(record) = decode(data) {
        assert_eq!(decode(&encode(&record)), Some(record));
    }
});
