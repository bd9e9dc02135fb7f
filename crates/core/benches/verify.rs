//! Verification cost, with its floor measured in the same run:
//! - `floor_bare_eddsa_jwt`: one Ed25519 JWT verification with `jsonwebtoken`;
//! - `full_chain_uncached`: a token whose grant and token are both unseen
//!   (two signature checks, header and claim checks);
//! - `new_token_cached_grant`: a new token from a sidecar whose grant was
//!   seen before (what `tokens.reuse = false` costs);
//! - `reused_token_cached`: the same token again (what reuse costs);
//! - `pat_uncached` / `pat_cached`: a personal access token (checksum, one
//!   root signature, claims), first seen and seen again — to compare with
//!   `full_chain_uncached` and `reused_token_cached` in the same run.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // bench code

use std::collections::HashMap;

use authproxy_core::grant::{Grant, GrantRequest};
use authproxy_core::keys::{SigningKey, random_id};
use authproxy_core::pat::{self, PatName, PatRequest};
use authproxy_core::token::{MintRequest, mint};
use authproxy_core::verify::{RootKeys, Verifier};
use authproxy_core::{Environment, WorkloadId, clock};
use authproxy_core::{ScopeSet, Scopes};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, Validation};

const AUD: &str = "https://api.example.internal";

struct Setup {
    root: SigningKey,
    sidecar: SigningKey,
    grant: Grant,
    roots: RootKeys,
    scope: ScopeSet,
}

fn setup(now: u64) -> Setup {
    let root = SigningKey::generate().unwrap();
    let sidecar = SigningKey::generate().unwrap();
    let scope = ScopeSet::parse("task:operate:send-report env:view").unwrap();
    let workload: WorkloadId = "app/web".parse().unwrap();
    let env = Environment::parse("main").unwrap();
    let grant = Grant::issue(
        &root,
        GrantRequest {
            issuer: "urn:authproxy:bench",
            workload: &workload,
            environment: &env,
            ceiling: &scope,
            sidecar_key: sidecar.public(),
            ttl_secs: 86400,
        },
        now,
        random_id(),
    )
    .unwrap();
    let mut roots: RootKeys = HashMap::new();
    roots.insert(root.public().thumbprint().to_owned(), root.public().clone());
    Setup {
        root,
        sidecar,
        grant,
        roots,
        scope,
    }
}

fn verifier(capacity: usize) -> Verifier {
    Verifier::new(
        AUD.into(),
        Environment::parse("main").unwrap(),
        30,
        capacity,
    )
}

fn bench(c: &mut Criterion) {
    let now = clock::now();
    let s = setup(now);
    let new_token = || {
        mint(
            &s.sidecar,
            &s.grant,
            MintRequest {
                audience: AUD,
                scope: &s.scope,
                ttl_secs: 300,
            },
            now,
            random_id(),
        )
        .unwrap()
        .token
    };

    let mut g = c.benchmark_group("verify");

    let token = new_token();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.validate_aud = false;
    g.bench_function("floor_bare_eddsa_jwt", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Value>(&token, s.sidecar.public().decoding_key(), &v)
                .unwrap()
        })
    });

    let uncached = verifier(0);
    g.bench_function("full_chain_uncached", |b| {
        b.iter(|| uncached.verify(&token, &s.roots, now).unwrap())
    });

    let cached = verifier(1_000_000);
    cached.verify(&new_token(), &s.roots, now).unwrap(); // grant now cached
    g.bench_function("new_token_cached_grant", |b| {
        b.iter_batched(
            new_token,
            |t| cached.verify(&t, &s.roots, now).unwrap(),
            BatchSize::SmallInput,
        )
    });

    cached.verify(&token, &s.roots, now).unwrap();
    g.bench_function("reused_token_cached", |b| {
        b.iter(|| cached.verify(&token, &s.roots, now).unwrap())
    });

    let (pat_value, _) = pat::issue(
        &s.root,
        PatRequest {
            issuer: "urn:authproxy:bench",
            name: &PatName::parse("ci.deploy").unwrap(),
            environment: &Environment::parse("main").unwrap(),
            scopes: &Scopes::parse("task:operate:* env:view").unwrap(),
            ttl_secs: 86400,
        },
        now,
        random_id(),
    )
    .unwrap();
    g.bench_function("pat_uncached", |b| {
        b.iter(|| uncached.verify_pat(&pat_value, &s.roots, now).unwrap())
    });
    cached.verify_pat(&pat_value, &s.roots, now).unwrap();
    g.bench_function("pat_cached", |b| {
        b.iter(|| cached.verify_pat(&pat_value, &s.roots, now).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
