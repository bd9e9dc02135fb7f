"""Shared by bench/storm.py and bench/scale.py: what sidecars renewing their
grants do to issuer nodes — `POST /v1/grants` with a workload credential and
a fresh Ed25519 public key — from keep-alive clients, one process each.
Needs the `cryptography` package for the keys.
"""
import base64
import http.client
import json
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def fresh_jwk():
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519",
            "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}


def client(args):
    """One keep-alive client to the issuer on `port`, asking grants for its
    share of the sidecars — cycling until `stop` (a time), or once through
    them when `stop` is None. Returns (latencies in ms, statuses)."""
    port, sidecars, start, stop = args
    while time.time() < start:
        time.sleep(0.001)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat, statuses, i = [], {}, 0
    while (i < len(sidecars)) if stop is None else (time.time() < stop):
        workload, credential = sidecars[i % len(sidecars)]
        i += 1
        body = json.dumps({"workload": workload, "environment": "main",
                           "public_key": fresh_jwk()})
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/grants", body=body,
                         headers={"authorization": f"Bearer {credential}",
                                  "content-type": "application/json"})
            r = conn.getresponse()
            r.read()
            code = r.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            code = "error"
        lat.append((time.perf_counter() - t0) * 1000)
        statuses[code] = statuses.get(code, 0) + 1
    return lat, statuses


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def merge(results):
    """All latencies, and statuses summed, of client() results."""
    lat = [x for r in results for x in r[0]]
    statuses = {}
    for _, s in results:
        for k, v in s.items():
            statuses[k] = statuses.get(k, 0) + v
    return lat, statuses
