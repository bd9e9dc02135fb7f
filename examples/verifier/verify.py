"""An authproxy chain verifier in Python with PyJWT, for an upstream that wants no extra process.
    python3 verify.py TOKEN JWKS_URL AUDIENCE ENVIRONMENT [SCOPE]  -> the principal as JSON, or exit 1
Needs `pip install 'pyjwt[crypto]'`."""
import base64, hashlib, json, sys
import jwt

token, jwks_url, audience, environment, *needed = sys.argv[1:]
roots = jwt.PyJWKClient(jwks_url)  # the root keys: make it once per process
def typ(compact, want):
    if jwt.get_unverified_header(compact).get("typ") != want: raise jwt.InvalidTokenError(f"typ is not {want}")
try:
    # The token is signed by the sidecar key in its own header; the grant inside it, by a root.
    typ(token, "at+jwt")
    jwk = jwt.get_unverified_header(token)["jwk"]
    if (jwk.get("kty"), jwk.get("crv")) != ("OKP", "Ed25519"): raise jwt.InvalidTokenError("not an Ed25519 key")
    t = jwt.decode(token, jwt.PyJWK(jwk, "EdDSA"), ["EdDSA"], audience=audience, leeway=30, options={"require": ["exp", "iat", "nbf", "grant"]})
    typ(t["grant"], "grant+jwt")
    g = jwt.decode(t["grant"], roots.get_signing_key_from_jwt(t["grant"]), ["EdDSA"], leeway=30, options={"require": ["exp", "iat", "nbf", "cnf"]})
    # Only now is the header key trusted: the grant must bind it (cnf.jkt, RFC 7638), and agree with the token.
    canonical = json.dumps({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}, separators=(",", ":")).encode()
    if g["cnf"].get("jkt") != base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode(): raise jwt.InvalidTokenError("key not bound by the grant")
    if any(t[c] != g[c] for c in ("iss", "sub", "env")) or t["client_id"] != g["sub"]: raise jwt.InvalidTokenError("token and grant disagree")
    if g["env"] != environment or t["exp"] > g["exp"] or t["exp"] - t["iat"] > 3600: raise jwt.InvalidTokenError("wrong environment or lifetime")
    scopes = t["scope"].split(" ")
    if not set(scopes) <= set(g["scope"].split(" ")): raise jwt.InvalidTokenError("scope beyond the grant")
    if needed and needed[0] not in scopes: raise jwt.InvalidTokenError(f"insufficient_scope: {needed[0]}")
    print(json.dumps({"sub": t["sub"], "env": t["env"], "scope": t["scope"], "jti": t["jti"]}))
except (jwt.PyJWTError, KeyError, TypeError, ValueError) as e:
    print(f"refused: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
