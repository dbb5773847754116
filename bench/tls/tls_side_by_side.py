#!/usr/bin/env python3
"""TLS against plain, side by side in one run (standard library only).

Starts one fleetd (release build) with both plain and TLS listeners, on a
throwaway data directory with `fleetd cert dev` certificates, and alternates
phases on the plain and the TLS port so both see the same machine noise:

  ingest    MQTT 3.1.1 QoS 0 publishes of JSON positions at a target rate
            over a few connections; positions/s stored and fleetd's CPU
            seconds (utime + stime from /proc) per 1,000 positions
  connects  N CONNECT/CONNACK/close in a few threads; connects/s and fleetd
            CPU per 1,000 connects
  near      GET /v1/vehicles?near=... on keep-alive connections; queries/s
            and fleetd CPU per 1,000 queries

  usage: bench/tls/tls_side_by_side.py FLEETD_BINARY [--rate 50000]
         [--seconds 10] [--devices 10000] [--connects 10000] [--queries 4000]
         [--rounds 2]

The server runs with --allow-anonymous (no logins: the CONNECT and the
requests carry no credential, the same on both ports).
"""

import argparse
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

CENTER_LAT, CENTER_LON = 52.52, 13.405
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(s):
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id):
    body = mqtt_string("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big") + mqtt_string(client_id)
    return b"\x10" + varint(len(body)) + body


def publish_packet(topic, payload):
    body = mqtt_string(topic) + payload
    return b"\x30" + varint(len(body)) + body


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def metric(http, name):
    text = urllib.request.urlopen(f"{http}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Server:
    def __init__(self, binary, work):
        self.ports = {k: free_port() for k in ("mqtt", "mqtts", "http", "https")}
        certs = os.path.join(work, "certs")
        subprocess.run([binary, "cert", "dev", "--out", certs], check=True, capture_output=True)
        self.ca = os.path.join(certs, "ca.pem")
        p = self.ports
        self.log = open(os.path.join(work, "fleetd.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--allow-anonymous", "--data", os.path.join(work, "data"),
             "--mqtt", f"127.0.0.1:{p['mqtt']}", "--mqtts", f"127.0.0.1:{p['mqtts']}",
             "--http", f"127.0.0.1:{p['http']}", "--https", f"127.0.0.1:{p['https']}",
             "--tls-cert", os.path.join(certs, "server.pem"),
             "--tls-key", os.path.join(certs, "server.key")],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.http = f"http://127.0.0.1:{p['http']}"
        for _ in range(200):
            try:
                if urllib.request.urlopen(f"{self.http}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("fleetd did not become ready")
        self.tls = ssl.create_default_context(cafile=self.ca)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def mqtt_socket(self, tls, client_id):
        port = self.ports["mqtts" if tls else "mqtt"]
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            s = self.tls.wrap_socket(s, server_hostname="localhost")
        s.sendall(connect_packet(client_id))
        ack = b""
        while len(ack) < 4:
            chunk = s.recv(4 - len(ack))
            if not chunk:
                raise OSError("closed before CONNACK")
            ack += chunk
        if ack[0] != 0x20 or ack[3] != 0:
            raise OSError(f"CONNACK {ack!r}")
        return s


def ingest_phase(server, tls, prefix, rate, seconds, devices, connections):
    """Pre-encoded publishes, paced in 10 ms slices over `connections`."""
    rounds = max(1, int(rate * seconds / devices))
    base_ms = int(time.time() * 1000) - 3_600_000
    per_conn = [bytearray() for _ in range(connections)]
    slices = [[] for _ in range(connections)]
    # Each device moves ~10 m per second: plausible for the speed filter.
    for r in range(rounds):
        for d in range(devices):
            lat = CENTER_LAT + (d % 100) * 0.001 + r * 0.00009
            lon = CENTER_LON + (d // 100) * 0.001
            payload = json.dumps({"ts_ms": base_ms + r * 1000, "lat": round(lat, 6),
                                  "lon": round(lon, 6)}).encode()
            c = d % connections
            per_conn[c] += publish_packet(f"fleet/{prefix}-{d}/pos", payload)
            slices[c].append(len(per_conn[c]))
    total = rounds * devices
    socks = [server.mqtt_socket(tls, f"{prefix}-conn-{i}") for i in range(connections)]
    stored0, cpu0 = metric(server.http, "fleetd_positions_stored_total"), server.cpu()
    started = time.monotonic()
    per_slice = max(1, int(rate / connections / 100))

    def send(i):
        buf, ends, at, k = per_conn[i], slices[i], 0, 0
        t0 = time.monotonic()
        while at < len(buf):
            k = min(k + per_slice, len(ends))
            end = ends[k - 1]
            socks[i].sendall(buf[at:end])
            at = end
            due = t0 + (k / per_slice) * 0.01
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent_s = time.monotonic() - started
    last, last_change = stored0, time.monotonic()
    while True:
        stored = metric(server.http, "fleetd_positions_stored_total")
        if stored - stored0 >= total:
            break
        if stored != last:
            last, last_change = stored, time.monotonic()
        elif time.monotonic() - last_change > 5:
            break
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    cpu = server.cpu() - cpu0
    for s in socks:
        s.close()
    got = stored - stored0
    return {"sent": total, "stored": got, "send_s": round(sent_s, 2),
            "positions_per_s": round(got / elapsed), "cpu_s": round(cpu, 2),
            "cpu_ms_per_1k": round(cpu * 1e6 / max(got, 1), 1),
            "server_cores": round(cpu / elapsed, 2)}


def in_threads(server, run, threads_n):
    """Runs run(0..threads_n) in threads; the wall time and server CPU seconds it took."""
    cpu0, started = server.cpu(), time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started, server.cpu() - cpu0


def connects_phase(server, tls, prefix, count, threads_n):
    errors = []

    def run(i):
        for k in range(i, count, threads_n):
            try:
                server.mqtt_socket(tls, f"{prefix}-{k}").close()
            except OSError as e:
                errors.append(str(e))

    elapsed, cpu = in_threads(server, run, threads_n)
    ok = count - len(errors)
    return {"connects": ok, "errors": len(errors), "connects_per_s": round(ok / elapsed),
            "cpu_ms_per_1k": round(cpu * 1e6 / max(ok, 1), 1)}


def near_phase(server, tls, count, threads_n):
    path = f"/v1/vehicles?near={CENTER_LAT + 0.05},{CENTER_LON + 0.05}&radius_m=1000"
    errors = []

    def run(i):
        if tls:
            conn = http.client.HTTPSConnection("127.0.0.1", server.ports["https"],
                                               context=server.tls, timeout=30)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=30)
        for _ in range(i, count, threads_n):
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                errors.append(r.status)
        conn.close()

    elapsed, cpu = in_threads(server, run, threads_n)
    return {"queries": count, "errors": len(errors), "queries_per_s": round(count / elapsed),
            "cpu_ms_per_1k": round(cpu * 1e6 / count, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--connects", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=4_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        server = Server(args.binary, work)
        results = []
        try:
            for r in range(args.rounds):
                for tls in (False, True):
                    kind = "tls" if tls else "plain"
                    res = {"round": r, "kind": kind}
                    res["ingest"] = ingest_phase(server, tls, f"i{r}{kind}", args.rate,
                                                 args.seconds, args.devices, args.connections)
                    res["connects"] = connects_phase(server, tls, f"c{r}{kind}", args.connects, 4)
                    res["near"] = near_phase(server, tls, args.queries, 4)
                    print(json.dumps(res), flush=True)
                    results.append(res)
        finally:
            server.stop()
    for part, key in (("ingest", "cpu_ms_per_1k"), ("connects", "connects_per_s"),
                      ("near", "cpu_ms_per_1k")):
        plain = [x[part][key] for x in results if x["kind"] == "plain"]
        tls = [x[part][key] for x in results if x["kind"] == "tls"]
        ratio = (sum(tls) / len(tls)) / max(sum(plain) / len(plain), 1e-9)
        print(f"{part} {key}: plain {plain} tls {tls} tls/plain {ratio:.3f}")


if __name__ == "__main__":
    sys.exit(main())
