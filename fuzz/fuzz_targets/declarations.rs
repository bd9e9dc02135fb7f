//! Declarations files: loading never panics; accepted files satisfy the
//! rules (every task resource names a declared task).
#![no_main]
use authproxy_core::Authorization;
use authproxy_core::declarations::Declarations;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = Declarations::parse(text, std::path::Path::new("fuzz.yaml")) {
        let _ = d.table();
        for (_, eff) in d.workloads() {
            for a in eff.authorizations.iter() {
                if let Authorization::TaskOperate(t) = a {
                    let id = authproxy_core::WorkloadId::Task(t.clone());
                    assert!(d.get(&id).is_some(), "resource {t} is not a declared task");
                }
            }
        }
    }
});
