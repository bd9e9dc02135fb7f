//! Bench helper: prints N distinct access tokens, one per line, signed under
//! the embedded root key in STATE_DIR — what N sidecar requests with
//! `tokens.reuse = false` would hand out, without N HTTP round trips.
//!
//! `mint_tokens STATE_DIR N AUDIENCE ENVIRONMENT WORKLOAD`

use std::io::Write as _;

use authproxy_core::grant::{Grant, GrantRequest};
use authproxy_core::keys::{SigningKey, random_id};
use authproxy_core::root_key::load_or_create_root_key;
use authproxy_core::token::{MintRequest, mint};
use authproxy_core::{Environment, ScopeSet, WorkloadId, clock};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, state, n, audience, env, workload] = args.as_slice() else {
        anyhow::bail!("usage: mint_tokens STATE_DIR N AUDIENCE ENVIRONMENT WORKLOAD");
    };
    let root = load_or_create_root_key(std::path::Path::new(state))?;
    let key = SigningKey::generate()?;
    let workload: WorkloadId = workload.parse()?;
    let env = Environment::parse(env)?;
    let scope = ScopeSet::parse("env:view")?;
    let now = clock::now();
    let grant = Grant::issue(
        &root,
        GrantRequest {
            issuer: "urn:authproxy:dev",
            workload: &workload,
            environment: &env,
            ceiling: &scope,
            sidecar_key: key.public(),
            ttl_secs: 3600,
        },
        now,
        random_id(),
    )?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..n.parse::<usize>()? {
        writeln!(
            out,
            "{}",
            mint(
                &key,
                &grant,
                MintRequest {
                    audience,
                    scope: &scope,
                    ttl_secs: 600,
                },
                now,
                random_id(),
            )?
            .token
        )?;
    }
    Ok(())
}
