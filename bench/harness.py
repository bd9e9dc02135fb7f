"""Shared by bench/load.py and bench/soak.py: start a release sidecar and the
example upstream on loopback, drive them with wrk, read /proc for memory.

Everything listens on 127.0.0.1 only, and every wrk run is bounded in time.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def target_dir():
    """Where cargo puts builds ($CARGO_TARGET_DIR, config, wrappers): cargo says."""
    try:
        out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return json.loads(out)["target_directory"]
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError):
        return os.path.join(ROOT, "target")


REL = os.path.join(target_dir(), "release")
AUTHPROXY = os.path.join(REL, "authproxy")
UPSTREAM = os.path.join(REL, "examples", "environment_api")
MINT = os.path.join(REL, "examples", "mint_tokens")


def build():
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "authproxy",
                    "--example", "environment_api", "--example", "mint_tokens"],
                   cwd=ROOT, check=True)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install -y wrk")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(url, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"{url} did not come up")


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def cpu_seconds(pid):
    """User + system CPU time consumed so far by a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(cpu):
    """The command prefix that runs a program on CPU `cpu` only (none: anywhere)."""
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


def rss_mib(pid):
    return int(status(pid)["VmRSS"].split()[0]) / 1024


def peak_mib(pid):
    return int(status(pid)["VmHWM"].split()[0]) / 1024


class Stack:
    """A sidecar (app/web) with proxy mode on, and the example upstream."""

    def __init__(self, reuse=True, extra_env=None, pin=None):
        self.dir = tempfile.mkdtemp(prefix="authproxy-bench-")
        self.state = os.path.join(self.dir, "state")
        self.sidecar_port = free_port()
        self.api_port = free_port()
        self.sidecar_url = f"http://127.0.0.1:{self.sidecar_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        env = dict(os.environ)
        # The production default log level, so logging costs are measured.
        env.update(RUST_LOG="info",
                   AUTHPROXY__SERVER__LISTEN=f"127.0.0.1:{self.sidecar_port}",
                   AUTHPROXY__TRUST__STATE_DIR=self.state,
                   AUTHPROXY__TOKENS__AUDIENCE=self.api_url,
                   AUTHPROXY__TOKENS__REUSE="true" if reuse else "false",
                   AUTHPROXY__PROXY__UPSTREAM=self.api_url)
        env.update(extra_env or {})
        t0 = time.perf_counter()
        self.sidecar = subprocess.Popen(
            pinned(pin) + [AUTHPROXY, "serve", "--config", "config/authproxy.toml", "--log-format", "json"],
            cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        wait_http(self.sidecar_url + "/readyz")
        self.ready_ms = (time.perf_counter() - t0) * 1000
        self.api = subprocess.Popen(
            [UPSTREAM, "--listen", f"127.0.0.1:{self.api_port}",
             "--jwks-url", self.sidecar_url + "/.well-known/jwks.json",
             "--audience", self.api_url, "--environment", "main"],
            cwd=ROOT, env=dict(os.environ, RUST_LOG="info"), stderr=subprocess.DEVNULL)
        wait_http(self.api_url + "/healthz")

    def token(self, scope=None):
        data = b"grant_type=client_credentials" + (f"&scope={scope}".encode() if scope else b"")
        req = urllib.request.Request(self.sidecar_url + "/oauth2/token", data=data,
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req) as r:
            return json.load(r)["access_token"]

    def mint_file(self, n):
        path = os.path.join(self.dir, "tokens.txt")
        with open(path, "w") as f:
            subprocess.run([MINT, self.state, str(n), self.api_url, "main", "app/web"],
                           stdout=f, check=True)
        return path

    def stop(self):
        for p in (self.api, self.sidecar):
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


RESULT = re.compile(r"RESULT requests=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+) errors=(\d+) non2xx=(\d+)")


def wrk(url, script, connections, seconds, threads=None, env=None):
    """Runs wrk; returns dict(rps, p50_ms, p99_ms, errors, non2xx, requests)."""
    threads = threads or min(2, connections)
    e = dict(os.environ, BENCH_DIR=BENCH, WRK_THREADS=str(threads), **(env or {}))
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
         "--timeout", "5s", "-s", os.path.join(BENCH, "wrk", script), url],
        env=e, capture_output=True, text=True, timeout=seconds + 30)
    m = RESULT.search(out.stdout)
    if not m:
        raise RuntimeError(f"wrk said:\n{out.stdout}\n{out.stderr}")
    req, dur, p50, p99, err, non2xx = map(int, m.groups())
    return dict(rps=req / (dur / 1e6), p50_ms=p50 / 1000, p99_ms=p99 / 1000,
                errors=err, non2xx=non2xx, requests=req)


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} cores ({cpu}), {total:.0f} GiB"


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def ensure_nginx():
    """nginx is the bench's reference proxy: installed from the Debian
    package when missing (as root), else a clear failure."""
    global NGINX
    if os.path.exists(NGINX):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update"], check=True)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "nginx"], check=True)
        NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(NGINX):
        raise SystemExit("nginx is required for the proxy comparison: apt-get install -y nginx")


NGINX_CONF = """worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream api {{
    server {upstream};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location /api/ {{
      proxy_pass http://api/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer {token}";
      # Addressed to the proxy, as with the sidecar: not forwarded.
      proxy_set_header X-Authproxy-Request "";
    }}
  }}
}}
"""


class Nginx:
    """nginx doing the sidecar's proxy job: one worker, a keep-alive pool to
    the upstream, a fixed `Authorization` header holding `token`."""

    def __init__(self, upstream_url, token, pin=None):
        ensure_nginx()
        self.dir = tempfile.mkdtemp(prefix="authproxy-nginx-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(dir=self.dir, port=self.port, token=token,
                                      upstream=upstream_url.split("://", 1)[1]))
        self.proc = subprocess.Popen(pinned(pin) + [NGINX, "-p", self.dir, "-c", conf],
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("nginx did not come up; see " + os.path.join(self.dir, "error.log"))
                time.sleep(0.01)

    def pids(self):
        """The master and its worker."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return [self.proc.pid] + [int(p) for p in f.read().split()]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
