//! Proof that a sidecar is the one it claims to be, for `authproxy health`.
//!
//! A health check that only asks "are you ready?" is answered by whoever
//! binds the port after the sidecar dies. So the check sends a fresh nonce,
//! and the sidecar signs it with its in-memory key, next to its grant: only
//! the holder of a key bound by a root-signed grant for this workload and
//! environment can answer. Tokens and grants seen by the workload do not
//! help an impostor: the nonce is new and the key never leaves the sidecar.

use serde::{Deserialize, Serialize};

use crate::grant::Grant;
use crate::jws::{InvalidToken, Part, check_header, decode_verified, embedded_key};
use crate::keys::{KeyError, RootKeys, SigningKey};
use crate::workload::{Environment, WorkloadId};

/// `typ` of a proof.
pub const PROOF_TYP: &str = "proof+jwt";

/// Longest nonce accepted, in bytes.
pub const MAX_NONCE_BYTES: usize = 128;

#[derive(Serialize, Deserialize)]
struct ProofClaims {
    nonce: String,
    grant: String,
}

/// Signs `nonce` with the sidecar `key`, carrying the `grant` that binds it.
pub fn prove(key: &SigningKey, grant: &Grant, nonce: &str) -> Result<String, KeyError> {
    key.sign(
        PROOF_TYP,
        &ProofClaims {
            nonce: nonce.to_owned(),
            grant: grant.compact().to_owned(),
        },
        true,
    )
}

/// Checks a proof: signed over `nonce` by a key that a grant valid at `now`,
/// signed by one of `roots`, binds to `workload` in `environment`.
pub fn check(
    proof: &str,
    roots: &RootKeys,
    environment: &Environment,
    workload: &WorkloadId,
    nonce: &str,
    now: u64,
) -> Result<(), InvalidToken> {
    let header = check_header(proof, Part::Token, PROOF_TYP)?;
    let key = embedded_key(&header)?;
    let claims: ProofClaims = decode_verified(proof, &key, Part::Token)?;
    let grant = Grant::verify(&claims.grant, roots, environment, 0, now)?;
    if grant.claims().cnf.jkt != key.thumbprint() {
        return Err(InvalidToken::KeyNotBound);
    }
    if grant.workload() != Some(workload) {
        return Err(InvalidToken::ClaimMismatch("sub"));
    }
    if claims.nonce != nonce {
        return Err(InvalidToken::ClaimMismatch("nonce"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ScopeSet;
    use crate::grant::GrantRequest;
    use crate::keys::random_id;

    const T0: u64 = 1_700_000_000;

    fn setup() -> (SigningKey, SigningKey, Grant, RootKeys) {
        let root = SigningKey::generate().unwrap();
        let key = SigningKey::generate().unwrap();
        let grant = Grant::issue(
            &root,
            GrantRequest {
                issuer: "urn:test",
                workload: &"app/web".parse().unwrap(),
                environment: &Environment::parse("main").unwrap(),
                ceiling: &ScopeSet::new(),
                sidecar_key: key.public(),
                ttl_secs: 3600,
            },
            T0,
            random_id(),
        )
        .unwrap();
        let roots =
            RootKeys::from([(root.public().thumbprint().to_owned(), root.public().clone())]);
        (root, key, grant, roots)
    }

    #[test]
    fn the_sidecar_key_proves_the_nonce_and_nothing_else_does() {
        let (_, key, grant, roots) = setup();
        let env = Environment::parse("main").unwrap();
        let web: WorkloadId = "app/web".parse().unwrap();
        let proof = prove(&key, &grant, "n1").unwrap();
        assert_eq!(check(&proof, &roots, &env, &web, "n1", T0 + 1), Ok(()));
        // A replayed proof for another nonce.
        assert_eq!(
            check(&proof, &roots, &env, &web, "n2", T0 + 1),
            Err(InvalidToken::ClaimMismatch("nonce"))
        );
        // Another workload's sidecar.
        let other: WorkloadId = "task/x".parse().unwrap();
        assert_eq!(
            check(&proof, &roots, &env, &other, "n1", T0 + 1),
            Err(InvalidToken::ClaimMismatch("sub"))
        );
        // An impostor holding the grant (it is in every token) but not the key.
        let impostor = SigningKey::generate().unwrap();
        let forged = prove(&impostor, &grant, "n1").unwrap();
        assert_eq!(
            check(&forged, &roots, &env, &web, "n1", T0 + 1),
            Err(InvalidToken::KeyNotBound)
        );
        // Untrusted roots.
        assert_eq!(
            check(&proof, &RootKeys::new(), &env, &web, "n1", T0 + 1),
            Err(InvalidToken::UnknownRootKey)
        );
    }
}
