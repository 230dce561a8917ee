"""Driver of tools/bench/bench-recommenderd (see the head of that script): builds the
10,000-item catalogue and the purchase history, trains and loads a model, then interleaves
h2load runs of Health/Check, warm and cold Recommend, graph candidates and similar users, each
checked against the daemons' own request counters; medians and ratios.

privacyd's GetConsent is played by a STAND-IN here (a gRPC server thread granting every
guest)."""
import concurrent.futures
import json
import os
import random
import statistics
import struct
import subprocess
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
from hospitality.common.v1 import domain_pb2  # noqa: E402
from hospitality.privacy.v1 import privacy_pb2 as pv  # noqa: E402
from hospitality.recommender.v1 import recommender_pb2 as rc  # noqa: E402

WARM = "127.0.0.1:%s" % E["W_PORT"]
COLD = "127.0.0.1:%s" % E["C_PORT"]
ADMINS = {WARM: "127.0.0.1:%s" % E["W_ADMIN"], COLD: "127.0.0.1:%s" % E["C_ADMIN"]}
TOKEN = E["ADMIN_TOKEN"]
MD = [("authorization", "Bearer " + TOKEN)]
RUNS, CONNS, STREAMS, REQUESTS = (int(E["RUNS"]), int(E["CONNS"]), int(E["STREAMS"]),
                                  int(E["REQUESTS"]))
TMP = E["TMP"]
HEALTH = "/grpc.health.v1.Health/Check"
RECOMMEND = "/hospitality.recommender.v1.RecommenderService/Recommend"
GRAPH = "/hospitality.recommender.v1.RecommenderService/GetUserGraph"
NITEMS, NCATS, NGUESTS, PER_GUEST = 10000, 100, 2000, 20


def log(msg):
    print("bench-recommenderd: " + msg, file=sys.stderr, flush=True)


def counters(addr):
    text = urllib.request.urlopen("http://%s/metrics" % ADMINS[addr], timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("hm_grpc_requests_total{"):
            labels, value = line[len("hm_grpc_requests_total{"):].rsplit("} ", 1)
            kv = dict(p.split("=", 1) for p in labels.split('",') if "=" in p)
            m, c = kv["method"].strip('"'), kv["code"].strip('"')
            out[(m, c)] = out.get((m, c), 0) + int(float(value))
    return out


def frame(msg):
    b = msg.SerializeToString()
    return b"\x00" + struct.pack(">I", len(b)) + b


def h2load(name, addr, method, body, n, auth=True, conns=None, streams=None):
    before = counters(addr)
    rps, us = h2load_grpc.run(TMP, name, addr, method, body, n, conns or CONNS,
                              streams or STREAMS,
                              TOKEN if auth else None)
    after = counters(addr)
    ok = after.get((method, "OK"), 0) - before.get((method, "OK"), 0)
    other = sum(v - before.get(k, 0) for k, v in after.items() if k[0] == method and k[1] != "OK")
    return {"req_per_s": rps, "p50_ms": pct(us, 0.5) / 1000,
            "p99_ms": pct(us, 0.99) / 1000, "server_ok": ok, "server_other": other,
            "verified": ok == n and other == 0}


def standin():
    """STAND-IN privacyd: every guest granted personalization."""
    def get_consent(req, ctx):
        return pv.GetConsentResponse(guest_id=req.guest_id, version=1, consents=[
            pv.ConsentRecord(guest_id=req.guest_id,
                             purpose=domain_pb2.CONSENT_PURPOSE_PERSONALIZATION,
                             status=domain_pb2.CONSENT_STATUS_GRANTED)])

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "hospitality.privacy.v1.PrivacyService", {
            "GetConsent": grpc.unary_unary_rpc_method_handler(
                get_consent, request_deserializer=pv.GetConsentRequest.FromString,
                response_serializer=pv.GetConsentResponse.SerializeToString)}),))
    server.add_insecure_port("127.0.0.1:%s" % E["STANDIN_PORT"])
    server.start()
    return server


def call(addr, method, req, resp):
    ch = grpc.insecure_channel(addr)
    fn = ch.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                        response_deserializer=resp.FromString)
    return fn(req, metadata=MD, timeout=120)


def populate():
    rnd = random.Random(20261125)
    svc = "/hospitality.recommender.v1.RecommenderService/"
    items = []
    for i in range(NITEMS):
        c = i % NCATS
        it = rc.Item(item_id="item-%05d" % i, name="Item %d" % i, category="cat%02d" % c,
                     tags=["t%d" % (i % 37), "t%d" % (i % 53)], app=1 + i % 4,
                     attributes={"band": str(i % 5)})
        it.price.amount_minor = 500 + (i * 37) % 20000
        it.price.currency = "EUR"
        items.append(it)
    for k in range(0, NITEMS, 1000):
        call(WARM, svc + "UpsertItems", rc.UpsertItemsRequest(items=items[k:k + 1000]),
             rc.UpsertItemsResponse)
    # popularity skewed (Zipf-like), each guest leaning to three categories
    weights = [1.0 / (1 + i) ** 0.8 for i in range(NITEMS)]
    guests = [str(uuid.uuid4()) for _ in range(NGUESTS)]
    batches, batch = [], []
    for g in guests:
        cats = rnd.sample(range(NCATS), 3)
        for _ in range(PER_GUEST):
            if rnd.random() < 0.6:
                i = rnd.choice(cats) + NCATS * rnd.randrange(NITEMS // NCATS)
            else:
                i = rnd.choices(range(NITEMS), weights)[0]
            e = rc.TrackedEvent(event_id=str(uuid.uuid4()), guest_id=g,
                                type=rc.TRACKED_EVENT_TYPE_PURCHASE, item_id="item-%05d" % i)
            e.transaction.transaction_id = uuid.uuid4().hex
            batch.append(e)
            if len(batch) == 500:
                batches.append(batch)
                batch = []
    if batch:
        batches.append(batch)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for r in pool.map(lambda b: call(WARM, svc + "TrackEvents", rc.TrackEventsRequest(
                events=b), rc.TrackEventsResponse), batches):
            if r.rejected:
                raise SystemExit("events rejected: %s" % r.rejected[0])
    # steady state: the bulk load's dead rows vacuumed, statistics fresh
    subprocess.run(["psql", "-X", "-q", E["CONNINFO"], "-c", "VACUUM ANALYZE"], check=True)
    model = os.path.join(TMP, "bench.hmrec")
    t0 = time.monotonic()
    subprocess.run([E["RECTRAIN"], "--db", E["CONNINFO"], "--out", model, "--version",
                    "bench-1"], check=True, capture_output=True)
    log("rectrain: %.1f s" % (time.monotonic() - t0))
    for addr in (WARM, COLD):
        call(addr, svc + "ReloadModel", rc.ReloadModelRequest(model_path=model),
             rc.ReloadModelResponse)
    return guests


if __name__ == "__main__":
    server = standin()
    t0 = time.monotonic()
    guests = populate()
    log("populated %d items, %d guests x %d purchases in %.0f s" % (
        NITEMS, NGUESTS, PER_GUEST, time.monotonic() - t0))
    hp = hmtest.base_protos().health_pb2
    g = guests[7]
    bodies = {
        "health": (WARM, HEALTH, frame(hp.HealthCheckRequest()), False),
        "warm": (WARM, RECOMMEND, frame(rc.RecommendRequest(guest_id=g, limit=10)), True),
        # the same at 4 calls in flight (4 connections x 1 stream): latency rather than queueing
        "warm-4": (WARM, RECOMMEND, frame(rc.RecommendRequest(guest_id=g, limit=10)), True),
        "cold": (COLD, RECOMMEND, frame(rc.RecommendRequest(guest_id=g, limit=10)), True),
        "graph-cands": (COLD, RECOMMEND, frame(rc.RecommendRequest(
            guest_id=g, limit=10, strategy=domain_pb2.RECOMMENDATION_STRATEGY_GRAPH)), True),
        "similar-users": (COLD, GRAPH, frame(rc.GetUserGraphRequest(guest_id=g)), True),
    }
    # a look at what is served (and a check that it is personalized)
    r = call(COLD, RECOMMEND, rc.RecommendRequest(guest_id=g, limit=10), rc.RecommendResponse)
    if not r.personalized or len(r.items) != 10:
        raise SystemExit("cold Recommend not personalized: %s" % r)
    log("served %s: %s" % (r.model_version, ", ".join(
        "%s (%s)" % (i.item_id, i.reason) for i in r.items[:3])))
    counts = {"health": REQUESTS, "warm": REQUESTS, "warm-4": max(REQUESTS // 4, 2000),
              "cold": max(REQUESTS // 10, 500),
              "graph-cands": max(REQUESTS // 20, 200), "similar-users": max(REQUESTS // 20, 200)}
    log("warm-up")
    for k, (addr, m, body, auth) in bodies.items():
        h2load("warmup-" + k, addr, m, body, max(counts[k] // 10, 100), auth)
    runs = {k: [] for k in bodies}
    for n in range(1, RUNS + 1):
        for k, (addr, m, body, auth) in bodies.items():
            x = h2load("%s-%d" % (k, n), addr, m, body, counts[k], auth,
                       *((4, 1) if k == "warm-4" else (None, None)))
            runs[k].append(x)
            log("run %d %-13s %8.0f req/s  p50 %7.2f ms  p99 %7.2f ms  %s" % (
                n, k, x["req_per_s"], x["p50_ms"], x["p99_ms"],
                "verified" if x["verified"] else "NOT VERIFIED %s" % x))
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("req_per_s", "p50_ms", "p99_ms")}
           for k, v in runs.items()}
    hr = med["health"]["req_per_s"]
    summary = {
        "machine": os.uname().nodename, "nproc": os.cpu_count(), "workers": int(E["WORKERS"]),
        "runs": RUNS, "h2load": {"connections": CONNS, "streams": STREAMS, "requests": counts},
        "catalogue_items": NITEMS, "guests": NGUESTS, "purchases_per_guest": PER_GUEST,
        "medians": med, "ratios_to_health": {k: med[k]["req_per_s"] / hr for k in med},
        "all_verified": all(x["verified"] for v in runs.values() for x in v),
        "runs_detail": runs, "loadavg": open("/proc/loadavg").read().split()[:3],
    }
    out = os.path.join(E["OUTDIR"], "recommenderd.json")
    with open(out, "w") as f:
        json.dump(summary, f, indent=1)
    print("%-34s %10s %9s %9s %8s" % ("median of %d runs" % RUNS, "req/s", "p50 ms", "p99 ms",
                                      "/health"))
    for k, label in (("health", "Health/Check"), ("warm", "Recommend, warm cache"),
                     ("warm-4", "Recommend, warm, 4 in flight"),
                     ("cold", "Recommend, cold (full pipeline)"),
                     ("graph-cands", "Recommend GRAPH (graph candidates)"),
                     ("similar-users", "GetUserGraph (similar users)")):
        print("%-34s %10.0f %9.2f %9.2f %8.3f" % (label, med[k]["req_per_s"], med[k]["p50_ms"],
                                                  med[k]["p99_ms"], med[k]["req_per_s"] / hr))
    print("all runs verified: %s; written to %s" % (summary["all_verified"], out))
    server.stop(0)
    sys.exit(0 if summary["all_verified"] else 1)
