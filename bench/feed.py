#!/usr/bin/env python3
"""Issue #15 figures for PATs and the revocation feed: the store's footprint
per 10,000 PATs (SQLite file, or PostgreSQL relation sizes with --postgres
URL), and what a layer polling the feed every second costs with 10,000 live
revocations (wrk on `GET /v1/revocations?since=CURSOR`, the steady-state
poll, against the issuer's JWKS in the same run; plus one snapshot).

    python3 bench/feed.py [--binary PATH] [--postgres URL] [--count 10000]
"""
import argparse, http.client, json, os, socket, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--binary", default=None)
ap.add_argument("--postgres", default=None)
ap.add_argument("--count", type=int, default=1000, help="PATs created and deleted through the API")
ap.add_argument("--live", type=int, default=10000, help="live revocations while the feed is polled (SQLite: the rest inserted directly)")
ap.add_argument("--seconds", type=int, default=3)
a = ap.parse_args()
binary = a.binary or json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--no-deps"]))["target_directory"] + "/release/authproxy"

d = tempfile.mkdtemp()
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
store = f'\n[store]\nurl = "{a.postgres}"\n' if a.postgres else ""
cfg = os.path.join(d, "issuer.toml")
open(cfg, "w").write(f'[server]\nlisten = "127.0.0.1:{port}"\n[issuer]\nurl = "http://127.0.0.1:{port}"\nstate_dir = "{d}/state"\n{store}')
p = subprocess.Popen([binary, "issuer", "serve", "--config", cfg], stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port)).close(); break
    except OSError:
        time.sleep(0.1)
token = open(f"{d}/state/admin-token").read().strip()
c = http.client.HTTPConnection("127.0.0.1", port)

def call(method, path, body=None, auth=True):
    h = {"content-type": "application/json"}
    if auth: h["authorization"] = f"Bearer {token}"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse(); data = r.read()
    return r.status, data

def size():
    if a.postgres:
        out = subprocess.check_output(["psql", a.postgres, "-Atc",
            "select coalesce(sum(pg_total_relation_size(c.oid)),0) from pg_class c join pg_namespace n on n.oid=c.relnamespace where n.nspname='public' and c.relkind='r'"])
        return int(out)
    return sum(os.path.getsize(os.path.join(f"{d}/state", f)) for f in os.listdir(f"{d}/state") if f.startswith("issuer.db"))

s0 = size(); t0 = time.time()
for i in range(a.count):
    st, body = call("POST", "/v1/pats", {"name": f"ci-{i}", "environment": "main", "valid_minutes": 600, "scopes": ["task:operate:*"]})
    assert st == 201, body
t_create = time.time() - t0; s1 = size()
t0 = time.time()
for i in range(a.count):
    st, body = call("DELETE", f"/v1/pats/ci-{i}")
    assert st == 204, body
t_delete = time.time() - t0; s2 = size()
if not a.postgres and a.live > a.count:
    # Only the feed's read cost is measured from here: the rest of the
    # live revocations are written straight into the table.
    import sqlite3
    db = sqlite3.connect(f"{d}/state/issuer.db", timeout=30)
    exp = int(time.time()) + 3600
    db.executemany("INSERT INTO revocations (kind, id, expires_at, revoked_at) VALUES ('pat', ?, ?, ?)",
                   [(f"bench-{i}", exp, int(time.time())) for i in range(a.live - a.count)])
    db.commit(); db.close()
live = max(a.live, a.count) if not a.postgres else a.count
t0 = time.time(); st, snap = call("GET", "/v1/revocations", auth=False); t_snap = time.time() - t0
feed = json.loads(snap); assert len(feed["revocations"]) == live, len(feed["revocations"])
cursor = feed["cursor"]

def wrk(path):
    out = subprocess.check_output(["wrk", "-t1", "-c8", f"-d{a.seconds}s", f"http://127.0.0.1:{port}{path}"]).decode()
    return float([l for l in out.splitlines() if l.startswith("Requests/sec")][0].split()[1])

rounds = []
for _ in range(3):
    poll = wrk(f"/v1/revocations?since={cursor}"); jwks = wrk("/.well-known/jwks.json")
    rounds.append((poll, jwks, poll / jwks))
p.terminate(); p.wait()
rounds.sort(key=lambda r: r[2]); mid = rounds[1]
print(json.dumps({
    "store": "postgres" if a.postgres else "sqlite", "count": a.count, "live_revocations": live,
    "bytes_per_pat": round((s1 - s0) / a.count), "bytes_per_revocation": round((s2 - s1) / a.count),
    "create_per_s": round(a.count / t_create), "delete_per_s": round(a.count / t_delete),
    "snapshot_bytes": len(snap), "snapshot_ms": round(t_snap * 1000, 1),
    "poll_rps": round(mid[0]), "jwks_rps": round(mid[1]), "poll_over_jwks": round(mid[2], 2),
    "ratios": [round(r[2], 2) for r in rounds]}, indent=1))
