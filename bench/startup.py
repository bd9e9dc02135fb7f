#!/usr/bin/env python3
"""Footprint of the release sidecar: time from exec to a 200 on /readyz, and
RSS when idle (the shipped config, proxy mode off). Loopback only.

    python3 bench/startup.py [RUNS]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

import harness as h

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 10


def one(state):
    port = h.free_port()
    env = dict(os.environ, AUTHPROXY__SERVER__LISTEN=f"127.0.0.1:{port}",
               AUTHPROXY__TRUST__STATE_DIR=state, RUST_LOG="warn")
    t0 = time.perf_counter()
    p = subprocess.Popen([h.AUTHPROXY, "serve", "--config", "config/authproxy.toml"],
                         cwd=h.ROOT, env=env, stderr=subprocess.DEVNULL)
    h.wait_http(f"http://127.0.0.1:{port}/readyz")
    ready_ms = (time.perf_counter() - t0) * 1000
    time.sleep(1.0)
    rss = h.rss_mib(p.pid)
    p.terminate()
    p.wait()
    return ready_ms, rss


h.build()
with tempfile.TemporaryDirectory() as d:
    one(d)  # the first start creates the root key; measure steady starts
    res = [one(d) for _ in range(RUNS)]
ready = [r[0] for r in res]
rss = [r[1] for r in res]
print(f"exec -> /readyz 200: median {statistics.median(ready):.1f} ms (min {min(ready):.1f}, max {max(ready):.1f}) over {RUNS} runs")
print(f"idle RSS: median {statistics.median(rss):.1f} MiB (min {min(rss):.1f}, max {max(rss):.1f})")
