#!/usr/bin/env python3
"""Remote mode with the release binary (issue #12): time from exec to a 200
on /readyz for a remote sidecar (one issuer round trip included) next to an
embedded one, and the token requests answered while the issuer is down.
Loopback only; writes bench/REMOTE.md.

    python3 bench/remote.py [OUTAGE_SECONDS]   (default 60)
"""
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import harness as h

OUTAGE = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
RUNS = 15
CLIENTS = 4


def main():
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "authproxy"],
                   cwd=h.ROOT, check=True)
    d = tempfile.mkdtemp(prefix="authproxy-remote-")
    port = h.free_port()
    url = f"http://127.0.0.1:{port}"
    with open(f"{d}/issuer.toml", "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\n[issuer]\nurl = "{url}"\n'
                f'state_dir = "{d}/issuer"\n')

    def start_issuer():
        p = subprocess.Popen([h.AUTHPROXY, "issuer", "serve", "--config", f"{d}/issuer.toml"],
                             env=dict(os.environ, RUST_LOG="warn"), stderr=subprocess.DEVNULL)
        h.wait_http(f"{url}/.well-known/jwks.json")
        return p

    issuer = start_issuer()
    subprocess.run([h.AUTHPROXY, "issuer", "sync", "--declarations", "config/project.yaml",
                    "--environment", "main", "--issuer", url, "--admin-token-file",
                    f"{d}/issuer/admin-token", "--credentials-dir", f"{d}/credentials"],
                   cwd=h.ROOT, check=True, stdout=subprocess.DEVNULL)

    def sidecar(remote, state):
        p = h.free_port()
        env = dict(os.environ, AUTHPROXY__SERVER__LISTEN=f"127.0.0.1:{p}", RUST_LOG="warn")
        if remote:
            env.update(AUTHPROXY__TRUST__MODE="remote", AUTHPROXY__TRUST__ISSUERS=url,
                       AUTHPROXY__TRUST__BOOTSTRAP=f"file:{d}/credentials/app_web")
        else:
            env.update(AUTHPROXY__TRUST__STATE_DIR=state)
        t0 = time.perf_counter()
        proc = subprocess.Popen([h.AUTHPROXY, "serve", "--config", "config/authproxy.toml"],
                                cwd=h.ROOT, env=env, stderr=subprocess.DEVNULL)
        h.wait_http(f"http://127.0.0.1:{p}/readyz")
        return proc, p, (time.perf_counter() - t0) * 1000

    startup = {}
    for name, remote in [("embedded", False), ("remote", True)]:
        times = []
        for _ in range(RUNS):
            proc, _, ms = sidecar(remote, f"{d}/embedded")
            times.append(ms)
            proc.terminate()
            proc.wait()
        startup[name] = (statistics.median(times), min(times), max(times))

    proc, sport, _ = sidecar(True, None)
    issuer.kill()
    issuer.wait()
    counts, lock = {}, threading.Lock()
    stop = time.time() + OUTAGE

    def hammer():
        c = http.client.HTTPConnection("127.0.0.1", sport, timeout=5)
        while time.time() < stop:
            c.request("POST", "/oauth2/token", body="grant_type=client_credentials",
                      headers={"content-type": "application/x-www-form-urlencoded",
                               "x-token-ttl": "30"})
            r = c.getresponse()
            r.read()
            with lock:
                counts[r.status] = counts.get(r.status, 0) + 1

    threads = [threading.Thread(target=hammer) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    issuer = start_issuer()
    proc.send_signal(1)  # SIGHUP: renew now
    time.sleep(0.5)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{sport}/metrics").read().decode()
    renewals = [l for l in metrics.splitlines() if l.startswith("authproxy_grant_renewals_total")]
    proc.terminate()
    issuer.terminate()
    proc.wait()
    issuer.wait()

    total = sum(counts.values())
    lines = [
        "# Remote mode (bench/remote.py)",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    for name, (med, lo, hi) in startup.items():
        lines.append(f"| {name} sidecar: exec → ready, median of {RUNS} (min–max) | "
                     f"{med:.1f} ms ({lo:.1f}–{hi:.1f}) |")
    lines.append(f"| token requests during a {OUTAGE:.0f} s issuer outage ({CLIENTS} keep-alive "
                 f"clients) | {counts.get(200, 0)} of {total} answered 200 |")
    lines.append(f"| renewals (one SIGHUP, after the issuer restarted) | {', '.join(renewals)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(h.BENCH, "REMOTE.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
