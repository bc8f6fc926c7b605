//! The CSR request as it arrives (protobuf), above all its metadata `Struct` and the
//! `ImpersonatedIdentity` read from it: any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshroot::pb::istio::IstioCertificateRequest;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = IstioCertificateRequest::decode(data) else {
        return;
    };
    let impersonated = meshroot::edge::grpc::impersonated_identity(&request);
    let present = request
        .metadata
        .as_ref()
        .is_some_and(|m| m.fields.contains_key("ImpersonatedIdentity"));
    assert_eq!(impersonated.is_some(), present);
});
