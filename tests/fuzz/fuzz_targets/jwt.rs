//! Service-account JWTs verified offline: any text. Nothing but a token signed by the trusted
//! issuer's key authenticates, and never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(caller) = meshroot_fuzz::authenticator().verify(token) {
        assert_eq!(caller.issuer, meshroot_fuzz::ISSUER);
        assert_eq!(caller.identity.trust_domain().as_str(), "cluster.local");
    }
});
