"""Driver of tools/bench/bench-bookingd (see the head of that script): interleaved runs of
Health/Check and GetBooking (h2load) and CreateBooking (a closed-loop grpc.aio client) against
one bookingd, each checked against the daemon's own request counters; medians and ratios."""
import asyncio
import datetime
import json
import os
import statistics
import struct
import sys
import time
import urllib.request
import uuid

E = os.environ
sys.path.insert(0, os.path.join(E["ROOT"], "tests", "lib"))
import hmtest  # noqa: E402  (proto generation only)

hmtest.project_protos()
import grpc  # noqa: E402
import h2load_grpc  # noqa: E402
from h2load_grpc import pct  # noqa: E402
from hospitality.booking.v1 import booking_pb2 as pb  # noqa: E402
from hospitality.common.v1 import common_pb2  # noqa: E402

ADDR = "127.0.0.1:%s" % E["BK_PORT"]
ADMIN = "127.0.0.1:%s" % E["BK_ADMIN"]
TOKEN = E["ADMIN_TOKEN"]
MD = [("authorization", "Bearer " + TOKEN)]
RUNS, CONNS, STREAMS = int(E["RUNS"]), int(E["CONNS"]), int(E["STREAMS"])
REQUESTS, CREATES, CONC = int(E["REQUESTS"]), int(E["CREATE_REQUESTS"]), int(E["CREATE_CONC"])
TMP = E["TMP"]
HEALTH = "/grpc.health.v1.Health/Check"
GET = "/hospitality.booking.v1.BookingService/GetBooking"
CREATE = "/hospitality.booking.v1.BookingService/CreateBooking"


def log(msg):
    print("bench-bookingd: " + msg, file=sys.stderr, flush=True)


def counters():
    text = urllib.request.urlopen("http://%s/metrics" % ADMIN, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("hm_grpc_requests_total{"):
            labels, value = line[len("hm_grpc_requests_total{"):].rsplit("} ", 1)
            kv = dict(p.split("=", 1) for p in labels.split('",') if "=" in p)
            m, c = kv["method"].strip('"'), kv["code"].strip('"')
            out[(m, c)] = out.get((m, c), 0) + int(float(value))
    return out


def delta(before, after, method):
    ok = after.get((method, "OK"), 0) - before.get((method, "OK"), 0)
    other = sum(v - before.get(k, 0) for k, v in after.items() if k[0] == method and k[1] != "OK")
    return ok, other


def frame(msg):
    b = msg.SerializeToString()
    return b"\x00" + struct.pack(">I", len(b)) + b


def h2load(name, method, body, n, auth=True):
    before = counters()
    rps, us = h2load_grpc.run(TMP, name, ADDR, method, body, n, CONNS, STREAMS,
                              TOKEN if auth else None)
    after = counters()
    ok, other = delta(before, after, method)
    verified = ok == n and other == 0
    return {"req_per_s": rps, "p50_ms": pct(us, 0.5) / 1000,
            "p99_ms": pct(us, 0.99) / 1000, "server_ok": ok, "server_other": other,
            "verified": verified}


DAY0 = datetime.date.today() + datetime.timedelta(days=60)
SEQ = [0]


def create_request():
    """A booking of its own slot: one venue per run, items and days spread out."""
    i = SEQ[0]
    SEQ[0] += 1
    d = DAY0 + datetime.timedelta(days=(i // 2000) % 300)
    return pb.CreateBookingRequest(
        guest_id=str(uuid.uuid4()), guest_name="Bench Guest", guest_email="bench@example.com",
        guest_phone="+15550100", venue_id=VENUE, venue_type=2,
        inventory_item_id="t%d" % (i % 2000),
        booking_date=common_pb2.Date(year=d.year, month=d.month, day=d.day),
        booking_time=common_pb2.TimeOfDay(hours=19), duration_minutes=90, party_size=2)


async def closed_loop(method, make, n, conc, resp):
    async with grpc.aio.insecure_channel(ADDR) as ch:
        call = ch.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=resp.FromString)
        lat, errors = [], []
        left = [n]

        async def worker():
            while left[0] > 0:
                left[0] -= 1
                req = make()
                t0 = time.perf_counter()
                try:
                    await call(req, metadata=MD, timeout=30)
                    lat.append(time.perf_counter() - t0)
                except grpc.RpcError as e:
                    errors.append(e.code().name)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(conc)])
        return time.perf_counter() - t0, lat, errors


CLK = os.sysconf("SC_CLK_TCK")


def ticks(pid):
    """user+system clock ticks of a process (all threads); 0 when gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])
    except OSError:
        return 0


def pg_pids():
    with open(os.path.join(TMP, "pg", "data", "postmaster.pid")) as f:
        master = int(f.readline())
    pids = [master]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == master:
                        pids.append(int(d))
            except OSError:
                pass
    return pids


def cpu_snapshot():
    return {"bookingd": ticks(int(E["BK_PID"])), "partnersim": ticks(int(E["PS_PID"])),
            "postgres": sum(ticks(p) for p in pg_pids())}


def client_run(method, make, n, resp):
    before = counters()
    c0 = cpu_snapshot()
    wall, lat, errors = asyncio.run(closed_loop(method, make, n, CONC, resp))
    c1 = cpu_snapshot()
    after = counters()
    ok, other = delta(before, after, method)
    cpu = {k: (c1[k] - c0[k]) * 1e6 / CLK / max(len(lat), 1) for k in c0}
    return {"req_per_s": len(lat) / wall, "p50_ms": pct(lat, 0.5) * 1000,
            "p99_ms": pct(lat, 0.99) * 1000, "client_ok": len(lat), "client_errors": len(errors),
            "server_ok": ok, "server_other": other, "cpu_us_per_req": cpu,
            "verified": ok == len(lat) == n and other == 0 and not errors}


if __name__ == "__main__":
    hp = hmtest.base_protos().health_pb2
    health_body = frame(hp.HealthCheckRequest())
    VENUE = str(uuid.uuid4())
    ch = grpc.insecure_channel(ADDR)
    create = ch.unary_unary(CREATE, request_serializer=lambda m: m.SerializeToString(),
                            response_deserializer=pb.CreateBookingResponse.FromString)
    booking = create(create_request(), metadata=MD, timeout=10).booking
    get_body = frame(pb.GetBookingRequest(booking_id=booking.booking_id))
    log("warm-up")
    h2load("warm-health", HEALTH, health_body, max(REQUESTS // 10, 1000), auth=False)
    h2load("warm-get", GET, get_body, max(REQUESTS // 10, 1000))
    client_run(CREATE, create_request, max(CREATES // 10, 100), pb.CreateBookingResponse)
    runs = {"health": [], "get": [], "client-health": [], "create": []}
    for r in range(1, RUNS + 1):
        res = h2load("health-%d" % r, HEALTH, health_body, REQUESTS, auth=False)
        runs["health"].append(res)
        res2 = h2load("get-%d" % r, GET, get_body, REQUESTS)
        runs["get"].append(res2)
        res3 = client_run(HEALTH, hp.HealthCheckRequest, CREATES, hp.HealthCheckResponse)
        runs["client-health"].append(res3)
        res4 = client_run(CREATE, create_request, CREATES, pb.CreateBookingResponse)
        runs["create"].append(res4)
        for name, x in (("health", res), ("get", res2), ("client-health", res3),
                        ("create", res4)):
            cpu = x.get("cpu_us_per_req")
            log("run %d %-13s %8.0f req/s  p50 %7.2f ms  p99 %7.2f ms  %s%s" % (
                r, name, x["req_per_s"], x["p50_ms"], x["p99_ms"],
                "verified" if x["verified"] else "NOT VERIFIED %s" % x,
                "  CPU us/req: " + ", ".join("%s %.0f" % kv for kv in sorted(cpu.items()))
                if cpu else ""))
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("req_per_s", "p50_ms", "p99_ms")}
           for k, v in runs.items()}
    summary = {
        "machine": os.uname().nodename, "nproc": os.cpu_count(), "workers": int(E["WORKERS"]),
        "runs": RUNS, "h2load": {"connections": CONNS, "streams": STREAMS, "requests": REQUESTS},
        "create_client": {"concurrency": CONC, "requests": CREATES},
        "medians": med,
        "ratios": {"get_vs_health": med["get"]["req_per_s"] / med["health"]["req_per_s"],
                   "create_vs_client_health":
                       med["create"]["req_per_s"] / med["client-health"]["req_per_s"],
                   "create_vs_health": med["create"]["req_per_s"] / med["health"]["req_per_s"]},
        "all_verified": all(x["verified"] for v in runs.values() for x in v),
        "runs_detail": runs,
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }
    out = os.path.join(E["OUTDIR"], "bookingd.json")
    with open(out, "w") as f:
        json.dump(summary, f, indent=1)
    print("%-28s %10s %9s %9s" % ("median of %d runs" % RUNS, "req/s", "p50 ms", "p99 ms"))
    for k, label in (("health", "Health/Check (h2load)"), ("get", "GetBooking (h2load)"),
                     ("client-health", "Health/Check (aio client)"),
                     ("create", "CreateBooking (aio client)")):
        print("%-28s %10.0f %9.2f %9.2f" % (label, med[k]["req_per_s"], med[k]["p50_ms"],
                                            med[k]["p99_ms"]))
    r = summary["ratios"]
    print("GetBooking / Health = %.2f; CreateBooking / Health(same client) = %.3f; "
          "CreateBooking / Health(h2load) = %.4f; all runs verified: %s; written to %s" % (
              r["get_vs_health"], r["create_vs_client_health"], r["create_vs_health"],
              summary["all_verified"], out))
    sys.exit(0 if summary["all_verified"] else 1)
