//! One integration-test binary (one link instead of eleven): real sidecars
//! and upstreams on 127.0.0.1:0, and the real `authproxy` binary.
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)] // test code: a failure should panic loudly

mod common;
#[allow(dead_code)]
#[path = "../../examples/environment_api.rs"]
mod environment_api;

mod attacks;
mod cli;
mod declarations;
mod deploy;
mod e2e;
mod hardening;
mod health;
mod listen;
mod nodes;
mod openid_client;
mod operations;
mod pat;
mod proxy;
mod reload;
mod remote;
mod revocation;
mod rotation;
mod sidecar;
mod used_by;
mod verifier;
