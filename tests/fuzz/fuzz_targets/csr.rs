//! CSR parsing and the policy's checks: any bytes, as DER (the first byte 0: as PEM text).
//! Whatever comes in, the answer is a CsrError, a Denial or a Grant, never a panic; and a
//! grant is only ever for the caller's own workload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshroot::domain::csr;
use meshroot::domain::policy;

fuzz_target!(|data: &[u8]| {
    let parsed = match data.split_first() {
        Some((0, pem)) => match std::str::from_utf8(pem) {
            Ok(text) => csr::parse_pem(text),
            Err(_) => return,
        },
        _ => csr::parse_der(data),
    };
    let Ok(request) = parsed else { return };
    let caller = meshroot_fuzz::caller();
    let ttl = i64::from(data.len() as u32) * 97 - 3600;
    for exact in [false, true] {
        let naming = if exact {
            policy::Naming::Exact
        } else {
            policy::Naming::MeshRule
        };
        let decision = policy::Request {
            caller: &caller,
            csr: &request,
            lifetime: policy::Lifetime::from_validity_duration(ttl),
            naming,
            now: meshroot_fuzz::now(),
        };
        if let Ok(grant) = policy::decide(&meshroot_fuzz::policy(), &decision) {
            assert_eq!(grant.identity.namespace(), "shop");
            assert_eq!(grant.identity.service_account(), "cart");
        }
    }
});
