"""
Fault suite of the whole mesh (issue 12, item 3): under a steady mixed load, each daemon is
SIGKILLed and restarted, Postgres is restarted, Redis is stopped for 10 s, partnersim fails and
then hangs. After recovery the invariants must hold:
  - clients only ever saw clean statuses (OK, the domain's expected refusals, UNAVAILABLE or
    DEADLINE_EXCEEDED), and no call outlived its deadline by more than a second (no hang);
  - every outbox is drained and every consumer group has caught up (lag 0, nothing pending);
  - no double booking (no two active bookings of one item overlap) and no booking whose saga
    is unsettled (every saga finished or compensated, no partnersim hold without its booking);
  - the points ledger balances (balances equal the sum of entries) and every event's effect is
    there once (each awarded booking event has exactly one ledger entry);
  - caches agree with Postgres (a cached profile equals the row).
The mesh has its own Postgres and Redis (tests/lib/hmmesh.py), so this test may break them.

STATUS: not registered in meson yet: its load needs recommenderd and privacyd to serve
Recommend and GetConsent (issues 7 and 10), then the invariants of each daemon (issue 12).
"""
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmmesh  # noqa: E402
import hmtest  # noqa: E402

G = "hospitality.guest.v1.GuestService"
B = "hospitality.booking.v1.BookingService"
R = "hospitality.recommender.v1.RecommenderService"
X = "hospitality.gamification.v1.GamificationService"
P = "hospitality.privacy.v1.PrivacyService"

# What a client may see while the mesh is being broken: success, the domain's refusals of
# the workload's own requests, and the two statuses of a dependency that is down or slow.
CLEAN = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ALREADY_EXISTS", "ABORTED",
         "FAILED_PRECONDITION", "NOT_FOUND", "RESOURCE_EXHAUSTED"}
DEADLINE = 3.0


class MeshFaults(hmtest.TestCase):
    def setUp(self):
        self.m = hmmesh.MeshStack().start()
        self.svc = self.m.rpc.token("fault-suite", ["service", "admin"])
        self.guests = []
        for i in range(20):
            r = self.m.rpc.call("guestd", G, "CreateGuest", {"profile": {
                "name": "Fault Guest %d" % i, "email": "fault-%d-%s@example.org" % (
                    i, uuid.uuid4().hex[:6]), "time_zone": "Europe/Paris"}}, self.svc)
            self.guests.append(r["profile"]["guest_id"])

    def tearDown(self):
        self.m.close()

    # -- the workload

    def ops(self):
        svc, guests = self.svc, self.guests

        def profile(rpc, rnd, dl):
            rpc.call("guestd", G, "GetProfile", {"guest_id": rnd.choice(guests)}, svc, dl)

        def interaction(rpc, rnd, dl):
            rpc.call("guestd", G, "RecordInteraction", {
                "guest_id": rnd.choice(guests), "idempotency_key": uuid.uuid4().hex,
                "interaction": {"type": "INTERACTION_TYPE_VIEW", "item_id": "item-%d" % rnd.randrange(50)}},
                svc, dl)

        def booking(rpc, rnd, dl):
            day = time.gmtime(time.time() + 86400 * (1 + rnd.randrange(10)))
            rpc.call("bookingd", B, "CreateBooking", {
                "guest_id": rnd.choice(guests), "guest_name": "Fault Guest",
                "venue_id": "fault-venue", "venue_type": "VENUE_TYPE_RESTAURANT",
                "inventory_item_id": "table-%d" % rnd.randrange(8),
                "booking_date": {"year": day.tm_year, "month": day.tm_mon, "day": day.tm_mday},
                "booking_time": {"hours": 12 + rnd.randrange(8)}, "duration_minutes": 60,
                "party_size": 2, "idempotency_key": uuid.uuid4().hex}, svc, dl)

        def award(rpc, rnd, dl):
            rpc.call("gamificationd", X, "AwardPoints", {
                "guest_id": rnd.choice(guests), "points": 1 + rnd.randrange(20),
                "source": "POINT_SOURCE_ORDER", "idempotency_key": uuid.uuid4().hex,
                "reason": "fault suite"}, svc, dl)

        def recommend(rpc, rnd, dl):
            rpc.call("recommenderd", R, "Recommend", {"guest_id": rnd.choice(guests), "limit": 5},
                     svc, dl)

        def consent(rpc, rnd, dl):
            rpc.call("privacyd", P, "GetConsent", {"guest_id": rnd.choice(guests)}, svc, dl)

        return [("GetProfile", profile), ("RecordInteraction", interaction),
                ("CreateBooking", booking), ("AwardPoints", award), ("Recommend", recommend),
                ("GetConsent", consent)]

    # -- invariants

    def wait_quiet(self, timeout=60):
        """Every outbox drained and every consumer group caught up (or times out)."""
        until = time.time() + timeout
        while True:
            left = {n: int(self.m.psql(n, "SELECT count(*) FROM outbox WHERE published_at IS NULL"))
                    for n in self.m.names}
            lag = self.groups_behind()
            if not any(left.values()) and not lag:
                return
            if time.time() > until:
                self.fail("not quiet after %ds: unpublished %s, groups behind %s" % (
                    timeout, left, lag))
            time.sleep(0.5)

    def groups_behind(self):
        """(stream, group, pending, lag) of every consumer group that has not caught up."""
        behind = []
        cursor = "0"
        streams = []
        while True:
            cursor, keys = self.m.redis.command("SCAN", cursor, "MATCH", "hm:events:*",
                                                "COUNT", "1000")
            streams += keys
            if cursor == "0":
                break
        for stream in streams:
            for g in self.m.redis.command("XINFO", "GROUPS", stream):
                info = dict(zip(g[0::2], g[1::2]))
                if info.get("pending") or info.get("lag") not in (0, None):
                    behind.append((stream, info.get("name"), info.get("pending"),
                                   info.get("lag")))
        return behind

    def check_statuses(self, results):
        bad = [(op, code, round(s, 2)) for op, code, s in results if code not in CLEAN]
        self.assertFalse(bad[:20], "unclean statuses seen by clients: %d, e.g. %s" % (
            len(bad), bad[:20]))
        slow = [(op, code, round(s, 2)) for op, code, s in results if s > DEADLINE + 1.0]
        self.assertFalse(slow, "calls outlived their deadline (hangs): %s" % slow[:20])
        ok = sum(1 for _, code, _ in results if code == "OK")
        self.assertGreater(ok, len(results) // 4, "too few calls succeeded: %d of %d" % (
            ok, len(results)))

    def check_invariants(self):
        # no double booking: no two active bookings of one item overlap
        overlaps = self.m.psql("bookingd", """
            SELECT count(*) FROM bookings a JOIN bookings b
              ON a.inventory_item_id = b.inventory_item_id AND a.venue_id = b.venue_id
             AND a.booking_id < b.booking_id
             AND a.status IN (1, 2, 3) AND b.status IN (1, 2, 3)
             AND tstzrange(a.start_time, a.end_time) && tstzrange(b.start_time, b.end_time)""")
        self.assertEqual(overlaps, "0", "overlapping active bookings")

    # -- the scenario

    def test_faults_under_load(self):
        load = hmmesh.Load(self.m.rpc, self.ops(), threads=4, deadline=DEADLINE).start()
        try:
            time.sleep(3)
            for name in self.m.names:
                hmtest.log("SIGKILL + restart %s" % name)
                self.m.kill_restart(name)
                time.sleep(1.5)
            hmtest.log("restart Postgres")
            self.m.pg.stop()
            time.sleep(2)
            self.m.pg.start()
            time.sleep(3)
            hmtest.log("Redis down for 10 s")
            self.m.redis.stop()
            time.sleep(10)
            self.m.redis.start()
            time.sleep(3)
        finally:
            results = load.stop()
        hmtest.log("%d calls under faults" % len(results))
        self.wait_quiet()
        self.check_statuses(results)
        self.check_invariants()


if __name__ == "__main__":
    hmtest.main()
