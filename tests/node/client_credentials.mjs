// A stock openid-client (v6) against the sidecar, as application code would
// use it: RFC 8414 discovery at the base URL, then the client credentials
// grant. Prints what it learnt as one JSON line — never the token itself.
import * as client from 'openid-client';

const base = process.argv[2];
const config = await client.discovery(new URL(base), 'app', undefined, undefined, {
  // The sidecar is an RFC 8414 authorization server, not an OpenID provider:
  // discover /.well-known/oauth-authorization-server, not openid-configuration.
  algorithm: 'oauth2',
  // Plain HTTP on loopback.
  execute: [client.allowInsecureRequests],
});
const metadata = config.serverMetadata();
const tokens = await client.clientCredentialsGrant(config, { scope: 'env:view' });
console.log(JSON.stringify({
  issuer: metadata.issuer,
  token_endpoint: metadata.token_endpoint,
  token_type: tokens.token_type,
  scope: tokens.scope,
  expires_in: tokens.expiresIn(),
  got_token: typeof tokens.access_token === 'string' && tokens.access_token.length > 0,
}));
