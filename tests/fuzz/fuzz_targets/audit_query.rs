//! The audit API's filters (protobuf, any bytes) and page tokens (any text): a filter becomes a
//! query that converts back to itself, and a page token is accepted only for the query it was
//! made for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshroot::domain::audit::PageToken;
use meshroot::edge::grpc::wire::{filter_from_query, query_from_filter};
use meshroot::pb::audit::Filter;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into a filter and a page token.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (filter, token) = rest.split_at((split as usize).min(rest.len()));
    let Ok(filter) = Filter::decode(filter) else {
        return;
    };
    // Out-of-range times and overlong serials are refused; what is taken converts back.
    let Ok(query) = query_from_filter(filter) else {
        return;
    };
    assert_eq!(query_from_filter(filter_from_query(&query)), Ok(query.clone()));
    if let Ok(token) = std::str::from_utf8(token) {
        if let Ok(page) = PageToken::decode(token, &query) {
            // A token that decodes re-encodes to one that decodes to the same position.
            let again = PageToken::decode(&page.encode(), &query);
            assert!(again.is_ok());
        }
    }
});
