#!/usr/bin/python3
"""bench_marketing.py: MarketingService's RPCs through recommenderd with the real guestd and
privacyd (tests/lib/hmmesh.py: a Postgres cluster and a Redis of its own), beside the
health-check latency of the same daemon in the same run. Driven by tools/bench/bench-marketing.

Set-up: 200 catalogue items (10 categories, one item image in an asset folder), 2,000
purchases by 200 other guests (popularity), 40 guests with a profile, preferences and
personalization and marketing-email consent.

  health      grpc.health.v1.Health/Check on recommenderd: the floor of one call
  email       GenerateEmail (built-in weekly_picks, 4 recommendations): privacyd's consent,
              guestd's profile and context, Recommend's pipeline (its list recorded), the
              variant, the render, the email recorded
  board       GetVisionBoard without the PNG: the same look-ups, the layout
  board-png   GetVisionBoard with the 1200x800 PNG

Calls are sequential (one in flight: latency, not throughput), cases interleaved RUNS times;
medians over all calls of a case and the ratio to health's median are printed and written to
OUTDIR/marketing.json.
"""
import json
import os
import statistics
import sys
import time
import uuid

ROOT = os.environ["ROOT"]
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import hmmesh  # noqa: E402
import hmtest  # noqa: E402

RUNS = int(os.environ.get("RUNS", "5"))
CALLS = int(os.environ.get("CALLS", "40"))
BUILD = os.environ["BUILD"]


def main():
    for n in ("guestd", "privacyd", "recommenderd"):
        os.environ["HM_TEST_%s_EXE" % n.upper()] = os.path.join(BUILD, "services", n, n)
    hmtest.project_protos()
    hp = hmtest.base_protos().health_pb2
    from hospitality.guest.v1 import guest_pb2 as gu
    from hospitality.marketing.v1 import marketing_pb2 as mk
    from hospitality.privacy.v1 import privacy_pb2 as pv
    from hospitality.recommender.v1 import recommender_pb2 as rc

    assets = os.path.join(os.environ["HM_TEST_TMPDIR"], "assets")
    os.makedirs(os.path.join(assets, "items"), exist_ok=True)
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    import test_marketing  # png_encode

    with open(os.path.join(assets, "items", "sea.png"), "wb") as f:
        f.write(test_marketing.png_encode(320, 240, (0x1B, 0x8A, 0x9E)))
    env = {"HM_MKT_UNSUBSCRIBE_KEY": hmtest.random_hex(), "HM_REC_ASSET_DIR": assets,
           "HM_LOG_LEVEL": "warn", "HM_ACCESS_LOG": "off"}
    m = hmmesh.MeshStack(["guestd", "privacyd", "recommenderd"], extra_env=env,
                         workers=int(os.environ.get("WORKERS", "2")))
    m.start()
    try:
        admin = hmtest.auth_md()

        def call(daemon, method, req, resp_cls, md=admin):
            fn = m.daemons[daemon].channel().unary_unary(
                method, request_serializer=type(req).SerializeToString,
                response_deserializer=resp_cls.FromString)
            return fn(req, metadata=md, timeout=30)

        items = []
        for i in range(200):
            it = rc.Item(item_id="item-%03d" % i, name="Item %d of category %d" % (i, i % 10),
                         category="cat%d" % (i % 10), image_file="items/sea.png" if i < 20 else "")
            it.price.amount_minor, it.price.currency = 1000 + 37 * i, "EUR"
            items.append(it)
        call("recommenderd", "/hospitality.recommender.v1.RecommenderService/UpsertItems",
             rc.UpsertItemsRequest(items=items), rc.UpsertItemsResponse)
        evs = []
        for k in range(2000):
            ev = rc.TrackedEvent(guest_id=str(uuid.uuid5(uuid.NAMESPACE_URL, "b%d" % (k // 10))),
                                 type=rc.TRACKED_EVENT_TYPE_PURCHASE,
                                 item_id="item-%03d" % int(200 * (k % 97) / 97 * (k % 7) / 7),
                                 event_id=str(uuid.uuid4()))
            ev.transaction.transaction_id, ev.transaction.quantity = uuid.uuid4().hex, 1
            evs.append(ev)
            if len(evs) == 500:
                call("recommenderd", "/hospitality.recommender.v1.RecommenderService/TrackEvents",
                     rc.TrackEventsRequest(events=evs), rc.TrackEventsResponse)
                evs = []
        guests = []
        for i in range(40):
            g = call("guestd", "/hospitality.guest.v1.GuestService/CreateGuest",
                     gu.CreateGuestRequest(profile=gu.Profile(name="Guest %d Example" % i)),
                     gu.CreateGuestResponse).profile.guest_id
            call("guestd", "/hospitality.guest.v1.GuestService/UpdatePreferences",
                 gu.UpdatePreferencesRequest(guest_id=g, explicit_preferences=gu.ExplicitPreferences(
                     favorite_categories=["cat%d" % (i % 10), "spa"])),
                 gu.UpdatePreferencesResponse)
            req = pv.UpdateConsentRequest(guest_id=g, source=1, notice_version="2026-11")
            req.changes.add(purpose=1, status=1)
            req.changes.add(purpose=2, status=1)
            call("privacyd", "/hospitality.privacy.v1.PrivacyService/UpdateConsent", req,
                 pv.UpdateConsentResponse)
            guests.append(g)

        M = "/hospitality.marketing.v1.MarketingService/"
        cases = {
            "health": lambda g: call("recommenderd", hmtest.HEALTH_CHECK,
                                     hp.HealthCheckRequest(), hp.HealthCheckResponse, md=[]),
            "email": lambda g: call("recommenderd", M + "GenerateEmail", mk.GenerateEmailRequest(
                guest_id=g, campaign_id="bench", recommendation_limit=4),
                mk.GenerateEmailResponse),
            "board": lambda g: call("recommenderd", M + "GetVisionBoard",
                                    mk.GetVisionBoardRequest(guest_id=g), mk.GetVisionBoardResponse),
            "board-png": lambda g: call("recommenderd", M + "GetVisionBoard",
                                        mk.GetVisionBoardRequest(guest_id=g, include_png=True),
                                        mk.GetVisionBoardResponse),
        }
        for name, fn in cases.items():  # warm-up, and a check that each case works
            r = fn(guests[0])
            if name == "board-png" and not r.png.startswith(b"\x89PNG"):
                raise SystemExit("bench-marketing: GetVisionBoard returned no PNG")
        times = {n: [] for n in cases}
        for run in range(RUNS):
            for name, fn in cases.items():
                for i in range(CALLS):
                    g = guests[(run * CALLS + i) % len(guests)]
                    t0 = time.perf_counter()
                    fn(g)
                    times[name].append((time.perf_counter() - t0) * 1000)
        health = statistics.median(times["health"])
        out = {}
        print("%-10s %8s %8s %8s %10s" % ("case", "median", "p90", "calls", "x health"))
        for name, v in times.items():
            v.sort()
            med = statistics.median(v)
            out[name] = {"median_ms": round(med, 3), "p90_ms": round(v[len(v) * 9 // 10], 3),
                         "calls": len(v), "ratio_to_health": round(med / health, 1)}
            print("%-10s %7.2fms %7.2fms %8d %9.1fx" % (name, med, v[len(v) * 9 // 10], len(v),
                                                       med / health))
        path = os.path.join(os.environ["OUTDIR"], "marketing.json")
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
        print("written to %s" % path)
    finally:
        m.close()


if __name__ == "__main__":
    main()
