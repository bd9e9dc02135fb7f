#!/usr/bin/env python3
"""Footprint of the release sidecar: time from exec to a 200 on /readyz, and
RSS when idle. Usage: bench/startup.py [BINARY] [RUNS]. Loopback only."""
import os, socket, subprocess, sys, tempfile, time, urllib.request

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/authproxy"
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 10

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def one(state):
    port = free_port()
    env = dict(os.environ, AUTHPROXY__SERVER__LISTEN=f"127.0.0.1:{port}",
               AUTHPROXY__TRUST__STATE_DIR=state, RUST_LOG="warn")
    t0 = time.perf_counter()
    p = subprocess.Popen([BIN, "serve", "--config", "config/authproxy.toml"], env=env,
                         stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/readyz"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.001)
    ready_ms = (time.perf_counter() - t0) * 1000
    time.sleep(1.0)
    rss = rss_kib(p.pid)
    p.terminate(); p.wait()
    return ready_ms, rss

with tempfile.TemporaryDirectory() as d:
    one(d)  # first start creates the root key; measure steady starts
    res = [one(d) for _ in range(RUNS)]
ready = sorted(r[0] for r in res); rss = sorted(r[1] for r in res)
print(f"exec -> /readyz 200: median {ready[len(ready)//2]:.1f} ms (min {ready[0]:.1f}, max {ready[-1]:.1f}) over {RUNS} runs")
print(f"idle RSS: median {rss[len(rss)//2]/1024:.1f} MiB (min {rss[0]/1024:.1f}, max {rss[-1]/1024:.1f})")
