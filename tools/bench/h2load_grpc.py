"""Unary gRPC load with h2load, for the Python benchmark drivers (bench_bookingd.py,
bench_recommenderd.py): one request body sent N times over CONNS connections x STREAMS
streams; returns the rate h2load reports and every call's latency from its log file."""
import os
import subprocess
import time


def pct(xs, q):
    """The q-quantile (0..1) of xs by rank; 0 for no samples."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0


def run(tmp, name, addr, method, body, n, conns, streams, token=None):
    """(req/s, [latency in us per call]) of N calls of METHOD (full path) on ADDR with BODY
    (a gRPC-framed message); files go to TMP under NAME. Exits on an h2load failure."""
    path = os.path.join(tmp, name + ".bin")
    with open(path, "wb") as f:
        f.write(body)
    lat = os.path.join(tmp, name + ".lat")
    cmd = ["h2load", "-n", str(n), "-c", str(conns), "-m", str(streams), "-t", "1", "-d", path,
           "-H", "content-type: application/grpc", "-H", "te: trailers",
           "--log-file=" + lat, "http://%s%s" % (addr, method)]
    if token:
        cmd[1:1] = ["-H", "authorization: Bearer " + token]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit("h2load failed: " + r.stderr[-500:])
    rps = None
    for line in r.stdout.splitlines():
        if line.startswith("finished in"):
            rps = float(line.split(",")[1].split()[0])
    us = []
    with open(lat) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                us.append(int(parts[2]))
    return rps or n / wall, us
