//! A partner's SPIFFE bundle document: any bytes a bundle endpoint may answer. A bundle that
//! parses writes a document that parses to the same authorities, sequence and hint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshroot::domain::federation::bundle::SpiffeBundle;
use meshroot::domain::identity::TrustDomain;

fuzz_target!(|data: &[u8]| {
    let Ok(trust_domain) = TrustDomain::new("partner.example") else {
        return;
    };
    if let Ok(bundle) = SpiffeBundle::parse(trust_domain.clone(), data) {
        let document = bundle.to_json().expect("a parsed bundle writes");
        let again = SpiffeBundle::parse(trust_domain, document.as_bytes()).expect("and reads back");
        assert_eq!(again, bundle);
    }
});
