#!/usr/bin/env python3
"""A small upstream API that is not Rust, for the proxy examples beside it.

It answers every request with what it was told, as JSON: the method, the
path, and the X-Auth-* headers the proxy set from `authproxy verifier`'s
answer. It may trust those headers only because nothing but the proxy can
reach it (it listens on loopback) and the proxy overwrites whatever a client
sent under those names (see nginx.conf).

    python3 examples/verifier/upstream.py [--listen 127.0.0.1:8300]

Prints `upstream listening on HOST:PORT` once it accepts connections (port 0
picks a free one).
"""
import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({
            "method": self.command,
            "path": self.path,
            "subject": self.headers.get("X-Auth-Subject"),
            "environment": self.headers.get("X-Auth-Environment"),
            "scope": self.headers.get("X-Auth-Scope"),
            "token_id": self.headers.get("X-Auth-Token-Id"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        # Lets a test tell the upstream's answers from the proxy's own.
        self.send_header("X-Upstream", "example")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = answer

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:8300")
    host, _, port = p.parse_args().listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"upstream listening on {host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
