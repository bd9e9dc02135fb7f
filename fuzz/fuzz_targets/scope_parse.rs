//! Scope strings: parsing never panics, and whatever parses formats back to
//! something that parses to the same set.
#![no_main]
use authproxy_core::ScopeSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(set) = ScopeSet::parse(s) {
            let again = ScopeSet::parse(&set.to_string()).expect("canonical form parses");
            assert_eq!(again, set);
        }
        let _ = s.parse::<authproxy_core::Authorization>();
        let _ = s.parse::<authproxy_core::WorkloadId>();
    }
});
