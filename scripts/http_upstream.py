#!/usr/bin/env python3
"""A real HTTP/1.1 upstream for continuity's tests (Python 3.11 stdlib only).

    python3 scripts/http_upstream.py --port P --name NAME
        [--tls-cert F --tls-key F [--client-ca F]] [--record FILE] [--verbose]

Runs as its own process so that a test can SIGKILL it for real. Keep-alive
(HTTP/1.1), one thread per connection. Prints `READY <port>` on stdout once
listening (`--port 0`: the kernel picks the port).

Routes (any method unless stated):
  GET /health       200 `ok`; 503 `unhealthy` while the file `<record>.unhealthy` exists
  /status/NNN       status NNN with a small JSON body {"server", "status"}
  /ratelimit/N      the first N requests to this exact path get 429 + `Retry-After: 1`,
                    later ones the echo below (counted per path, in this process)
  /retryafter/N/... the first N requests to this exact path get status `?status=` (default
                    429) with `Retry-After: <?ra=, URL-decoded>`, later ones the echo below
  /slow/MS          sleeps MS ms, then the echo
  /big/BYTES        200 with a body of BYTES bytes (application/octet-stream)
  /chunked/N        200, Transfer-Encoding: chunked: N chunks `chunk I\n`, each written
                    and flushed on its own, then a trailer `X-Checksum: N`
  /eof/BYTES        200 with no Content-Length, `Connection: close`: BYTES bytes, then close
  /cut/NNN          status NNN with `Content-Length: 100`, then 10 bytes and the connection
                    closes (an upstream dying mid-answer)
  /interim          a `103 Early Hints` interim response, then the echo
  /hop              the echo, with hop-by-hop fields in the answer: `Connection:
                    keep-alive, X-Hop`, `X-Hop: secret`, `Keep-Alive: timeout=5`
  anything else     200 JSON echo: {"server", "method", "path" (with query),
                    "headers": {lowercased name: value}, "body": request body as text}
                    (+ "client_cn": the client certificate's CN with --client-ca)
                    and "peer_port": the port of the connection it came on

The request body is read by Content-Length or chunked transfer coding; every
response has a Content-Length, except /chunked and /eof (/cut sends less than it says). With --record FILE, every non-GET request and
every request whose path starts with /submissions is appended to FILE as one
JSON line {"server", "method", "path", "idempotency_key", "body"}, flushed and
fsync'd before the response is sent.
"""
import argparse
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RATE_COUNTS = {}
RATE_LOCK = threading.Lock()
RECORD_LOCK = threading.Lock()


class Upstream(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, addr, handler, name, record, tls_ctx, verbose):
        self.name = name
        self.record = record
        self.tls_ctx = tls_ctx
        self.verbose = verbose
        super().__init__(addr, handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, on the connection's own thread, so a client
        # that never finishes its handshake cannot stall the accept loop.
        if self.tls_ctx is None:
            return super().finish_request(request, client_address)
        try:
            tls = self.tls_ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            if self.verbose:
                sys.stderr.write(f"tls handshake from {client_address}: {e}\n")
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        if self.verbose:
            super().handle_error(request, client_address)
        else:
            e = sys.exc_info()[1]
            if not isinstance(e, (ConnectionError, ssl.SSLError, TimeoutError)):
                sys.stderr.write(f"error serving {client_address}: {e!r}\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def version_string(self):
        return "http_upstream"

    def __getattr__(self, attr):
        # do_GET, do_POST, do_PATCH, do_PURGE...: every method is served.
        if attr.startswith("do_"):
            return self.handle_any
        raise AttributeError(attr)

    def log_message(self, fmt, *args):  # noqa: A003 - quiet unless --verbose
        if self.server.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    # ------------------------------------------------------------------ body
    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("eof in chunk size")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, up to the empty line
                        t = self.rfile.readline(65537)
                        if not t or t in (b"\r\n", b"\n"):
                            break
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)  # CRLF after the chunk
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    # ------------------------------------------------------------------ reply
    def reply(self, status, body, ctype="application/json", extra=()):
        if isinstance(body, str):
            body = body.encode()
        no_body = status in (204, 304) or 100 <= status < 200
        self.send_response(status)
        self.send_header("X-Upstream", self.server.name)
        for k, v in extra:
            self.send_header(k, v)
        if not no_body:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and not no_body:
            self.wfile.write(body)
        self.wfile.flush()

    def record(self, body_text):
        path = self.server.record
        if not path:
            return
        line = json.dumps({
            "server": self.server.name,
            "method": self.command,
            "path": self.path,
            "idempotency_key": self.headers.get("Idempotency-Key"),
            "body": body_text,
        }) + "\n"
        with RECORD_LOCK:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def echo(self, body_text):
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        doc = {"server": self.server.name, "method": self.command, "path": self.path,
               "headers": headers, "body": body_text, "peer_port": self.client_address[1]}
        if self.server.tls_ctx is not None and self.server.tls_ctx.verify_mode == ssl.CERT_REQUIRED:
            cn = None
            try:
                for rdn in (self.connection.getpeercert() or {}).get("subject", ()):
                    for k, v in rdn:
                        if k == "commonName":
                            cn = v
            except (AttributeError, ValueError):
                pass
            doc["client_cn"] = cn
        return json.dumps(doc)

    def handle_any(self):
        try:
            raw = self.read_body()
        except (ValueError, ConnectionError):
            self.close_connection = True
            self.reply(400, json.dumps({"server": self.server.name, "error": "bad body framing"}))
            return
        body_text = raw.decode("utf-8", errors="replace")
        route = self.path.split("?", 1)[0]
        if self.command != "GET" or route.startswith("/submissions"):
            self.record(body_text)
        parts = route.strip("/").split("/")
        head = parts[0] if parts else ""
        arg = parts[1] if len(parts) > 1 else ""

        if route == "/health" and self.command in ("GET", "HEAD"):
            if self.server.record and os.path.exists(self.server.record + ".unhealthy"):
                self.reply(503, "unhealthy", "text/plain")
            else:
                self.reply(200, "ok", "text/plain")
        elif head == "status" and arg.isdigit():
            code = int(arg)
            self.reply(code, json.dumps({"server": self.server.name, "status": code}))
        elif head == "ratelimit" and arg.isdigit():
            with RATE_LOCK:
                seen = RATE_COUNTS.get(route, 0)
                RATE_COUNTS[route] = seen + 1
            if seen < int(arg):
                self.reply(429, json.dumps({"server": self.server.name, "status": 429}),
                           extra=[("Retry-After", "1")])
            else:
                self.reply(200, self.echo(body_text))
        elif head == "retryafter" and arg.isdigit():
            with RATE_LOCK:
                seen = RATE_COUNTS.get(route, 0)
                RATE_COUNTS[route] = seen + 1
            if seen < int(arg):
                query = urllib.parse.parse_qs(self.path.split("?", 1)[1] if "?" in self.path else "")
                code = int(query.get("status", ["429"])[0])
                value = query.get("ra", ["1"])[0]
                self.reply(code, json.dumps({"server": self.server.name, "status": code}),
                           extra=[("Retry-After", value)])
            else:
                self.reply(200, self.echo(body_text))
        elif head == "slow" and arg.isdigit():
            time.sleep(int(arg) / 1000.0)
            self.reply(200, self.echo(body_text))
        elif head == "big" and arg.isdigit():
            n = int(arg)
            block = (b"0123456789abcdef" * 4096)
            body = (block * (n // len(block) + 1))[:n]
            self.reply(200, body, "application/octet-stream")
        elif head == "chunked" and arg.isdigit():
            self.send_response(200)
            self.send_header("X-Upstream", self.server.name)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for i in range(int(arg)):
                data = f"chunk {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\nX-Checksum: " + arg.encode() + b"\r\n\r\n")
            self.wfile.flush()
        elif head == "eof" and arg.isdigit():
            self.close_connection = True
            self.send_response(200)
            self.send_header("X-Upstream", self.server.name)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"e" * int(arg))
            self.wfile.flush()
        elif head == "cut" and arg.isdigit():
            # A head that promises 100 bytes, 10 of them, then the connection closes.
            self.close_connection = True
            self.send_response(int(arg))
            self.send_header("X-Upstream", self.server.name)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"c" * 10)
            self.wfile.flush()
        elif route == "/interim":
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            self.wfile.flush()
            self.reply(200, self.echo(body_text))
        elif route == "/hop":
            self.reply(200, self.echo(body_text), extra=[
                ("Connection", "keep-alive, X-Hop"), ("X-Hop", "secret"), ("Keep-Alive", "timeout=5")])
        else:
            self.reply(200, self.echo(body_text))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="0: let the kernel pick")
    ap.add_argument("--name", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--client-ca", help="require a client certificate signed by this CA (mTLS)")
    ap.add_argument("--record")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    if bool(a.tls_cert) != bool(a.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    if a.client_ca and not a.tls_cert:
        ap.error("--client-ca needs --tls-cert/--tls-key")
    ctx = None
    if a.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        ctx.set_alpn_protocols(["http/1.1"])
        if a.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(a.client_ca)
    srv = Upstream((a.host, a.port), Handler, a.name, a.record, ctx, a.verbose)
    print(f"READY {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
