// An authproxy chain verifier in Node with `jose`, for an upstream that wants no extra process.
//   node verify.mjs TOKEN JWKS_URL AUDIENCE ENVIRONMENT [SCOPE]  → the principal as JSON, or exit 1
import { jwtVerify, EmbeddedJWK, createRemoteJWKSet, calculateJwkThumbprint } from 'jose';

const [token, jwksUrl, audience, environment, needed] = process.argv.slice(2);
const roots = createRemoteJWKSet(new URL(jwksUrl)); // the root keys: make it once per process
const rules = { algorithms: ['EdDSA'], clockTolerance: 30 };
try {
  // The token is signed by the sidecar key in its own header; the grant inside it, by a root.
  const { payload: t, protectedHeader: h } = await jwtVerify(token, EmbeddedJWK, { ...rules, typ: 'at+jwt', audience });
  const { payload: g } = await jwtVerify(t.grant, roots, { ...rules, typ: 'grant+jwt' });
  // Only now is the header key trusted: the grant must bind it (cnf.jkt), and agree with the token.
  if (g.cnf?.jkt !== (await calculateJwkThumbprint(h.jwk))) throw new Error('key not bound by the grant');
  if (['iss', 'sub', 'env'].some((c) => t[c] !== g[c]) || t.client_id !== g.sub) throw new Error('token and grant disagree');
  if (g.env !== environment || t.exp > g.exp || t.exp - t.iat > 3600) throw new Error('wrong environment or lifetime');
  const scopes = t.scope.split(' ');
  if (!scopes.every((s) => g.scope.split(' ').includes(s))) throw new Error('scope beyond the grant');
  if (needed && !scopes.includes(needed)) throw new Error(`insufficient_scope: ${needed}`);
  console.log(JSON.stringify({ sub: t.sub, env: t.env, scope: t.scope, jti: t.jti }));
} catch (e) {
  console.error(`refused: ${e.message}`);
  process.exit(1);
}
