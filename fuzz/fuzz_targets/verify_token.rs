//! Token verification never panics and never accepts a token it was not
//! given by the holder of a trusted root: the root here is generated fresh
//! in this process, so any input the fuzzer finds acceptable is a forgery.
#![no_main]
use std::collections::HashMap;
use std::sync::OnceLock;

use authproxy_core::Environment;
use authproxy_core::keys::SigningKey;
use authproxy_core::verify::{RootKeys, Verifier};
use libfuzzer_sys::fuzz_target;

fn setup() -> &'static (Verifier, RootKeys) {
    static S: OnceLock<(Verifier, RootKeys)> = OnceLock::new();
    S.get_or_init(|| {
        let root = SigningKey::generate().expect("key");
        let mut roots: RootKeys = HashMap::new();
        roots.insert(root.public().thumbprint().to_owned(), root.public().clone());
        let env = Environment::parse("main").expect("env");
        (Verifier::new("https://api".into(), env, 30, 0), roots)
    })
}

fuzz_target!(|data: &[u8]| {
    let (verifier, roots) = setup();
    if let Ok(token) = std::str::from_utf8(data) {
        let r = verifier.verify(token, roots, authproxy_core::clock::now());
        assert!(r.is_err(), "a token signed by no trusted root was accepted");
    }
});
