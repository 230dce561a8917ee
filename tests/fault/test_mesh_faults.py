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

Registered in tests/fault/meson.build as fault-mesh (suite 'fault', runs alone: about two
minutes, most of it the 10 s outages and the waits for recovery).
"""
import os
import subprocess
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
                "interaction": {"type": "INTERACTION_TYPE_VIEW",
                                "item_id": "item-%d" % rnd.randrange(50)}},
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

        def update(rpc, rnd, dl):  # profile changes: the cached context must follow them
            g = rnd.choice(guests)
            v = rpc.call("guestd", G, "GetProfile", {"guest_id": g}, svc, dl)["profile"]
            rpc.call("guestd", G, "UpdateProfile", {
                "guest_id": g, "profile": {"bio": "bio %d" % rnd.randrange(1000)},
                "update_mask": "bio", "expected_version": v["version"]}, svc, dl)

        def context(rpc, rnd, dl):
            rpc.call("guestd", G, "GetPersonalizationContext", {"guest_id": rnd.choice(guests)},
                     svc, dl)

        def consent(rpc, rnd, dl):
            rpc.call("privacyd", P, "GetConsent", {"guest_id": rnd.choice(guests)}, svc, dl)

        return [("GetProfile", profile), ("RecordInteraction", interaction),
                ("CreateBooking", booking), ("AwardPoints", award), ("Recommend", recommend),
                ("GetConsent", consent), ("UpdateProfile", update),
                ("GetPersonalizationContext", context)]

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

    def rows(self, db, sql):
        out = self.m.psql(db, sql)
        return [line.split("|") for line in out.splitlines() if line]

    def wait_sagas_settled(self, timeout=60):
        """bookingd's saga recovery task finishes or compensates what a kill left running."""
        until = time.time() + timeout
        while True:
            running = self.m.psql("bookingd", "SELECT count(*) FROM bk_sagas WHERE state = "
                                  "'running'")
            if running == "0":
                return
            if time.time() > until:
                self.fail("%s saga(s) still running after %ds: %s" % (running, timeout, self.rows(
                    "bookingd", "SELECT saga_id, booking_id, step, updated_at FROM bk_sagas "
                    "WHERE state = 'running' LIMIT 5")))
            time.sleep(0.5)

    def check_invariants(self):
        # no double booking: no two active bookings of one item overlap
        overlaps = self.m.psql("bookingd", """
            SELECT count(*) FROM bk_bookings a JOIN bk_bookings b
              ON a.inventory_item_id = b.inventory_item_id AND a.venue_id = b.venue_id
             AND a.booking_id < b.booking_id
             AND a.status IN (1, 2, 3) AND b.status IN (1, 2, 3) AND a.period && b.period""")
        self.assertEqual(overlaps, "0", "overlapping active bookings")
        nbookings = int(self.m.psql("bookingd", "SELECT count(*) FROM bk_bookings"))
        hmtest.log("%d bookings" % nbookings)
        self.assertGreater(nbookings, 0, "the load made no booking at all")
        # no booking without its saga settled: every saga done or compensated
        self.assertEqual(self.m.psql("bookingd", "SELECT count(*) FROM bk_sagas WHERE state = "
                                     "'running'"), "0")
        # no partner hold without an active booking behind it
        active = {r[0] for r in self.rows("bookingd", "SELECT booking_id FROM bk_bookings "
                                          "WHERE status IN (1, 2, 3)")}
        held = self.rows("partnersim", "SELECT reservation_id, booking_id FROM ps_reservations "
                         "WHERE status = 1 AND (hold_until IS NULL OR hold_until > now())")
        orphans = [h for h in held if h[1] not in active]
        self.assertFalse(orphans, "partner holds without an active booking: %s" % orphans[:10])
        # events: nothing lost; each effect once (processed_events is keyed by event id, the
        # effects by their source event: guestd's interactions.source_event_id is UNIQUE)
        produced = {r[0] for r in self.rows("bookingd", "SELECT event_id FROM outbox WHERE "
                                            "event_type = 'booking.created'")}
        consumed = {r[0] for r in self.rows("guestd", "SELECT event_id FROM processed_events "
                                            "WHERE event_type = 'booking.created'")}
        self.assertFalse(produced - consumed, "booking.created events guestd never consumed: "
                         "%d of %d" % (len(produced - consumed), len(produced)))
        effects = self.rows("guestd", "SELECT source_event_id, count(*) FROM interactions "
                            "WHERE source_event_id IS NOT NULL GROUP BY 1")
        self.assertEqual({r[0] for r in effects if r[0] in produced}, produced,
                         "a booking.created event without its interaction in guestd")
        rec = {r[0] for r in self.rows("guestd", "SELECT event_id FROM outbox WHERE "
                                       "event_type = 'guest.interaction.recorded'")}
        for d in ("gamificationd", "recommenderd"):
            got = {r[0] for r in self.rows(d, "SELECT event_id FROM processed_events WHERE "
                                           "event_type = 'guest.interaction.recorded'")}
            self.assertFalse(rec - got, "guest.interaction.recorded events %s never consumed: "
                             "%d of %d" % (d, len(rec - got), len(rec)))
        # the points ledger balances: each transaction's entries sum to zero, and every
        # account's balances equal the sums of its entries
        self.assertEqual(self.m.psql("gamificationd", "SELECT count(*) FROM (SELECT txn_id FROM "
                                     "gm_entries GROUP BY txn_id HAVING sum(amount) <> 0) t"),
                         "0", "unbalanced ledger transactions")
        bad = self.rows("gamificationd", """
            SELECT a.guest_id, a.available, a.pending, a.redeemed, e.av, e.pe, e.re
              FROM gm_accounts a LEFT JOIN (
                SELECT guest_id,
                       coalesce(sum(amount) FILTER (WHERE account = 'available'), 0) AS av,
                       coalesce(sum(amount) FILTER (WHERE account = 'pending'), 0) AS pe,
                       coalesce(sum(amount) FILTER (WHERE account = 'redeemed'), 0) AS re
                  FROM gm_entries GROUP BY guest_id) e USING (guest_id)
             WHERE a.available <> coalesce(e.av, 0) OR a.pending <> coalesce(e.pe, 0)
                OR a.redeemed <> coalesce(e.re, 0)""")
        self.assertFalse(bad, "balances differ from the ledger: %s" % bad[:5])
        awards = int(self.m.psql("gamificationd", "SELECT count(*) FROM gm_transactions"))
        self.assertGreater(awards, 0, "no award made it")
        # caches agree with Postgres: the personalization context (cached in Redis) carries
        # the profile version of the row
        versions = dict(self.rows("guestd", "SELECT guest_id, version FROM guests WHERE "
                                  "guest_id IN (%s)" % ",".join("'%s'" % g for g in self.guests)))
        for g in self.guests:
            ctx = self.m.rpc.call("guestd", G, "GetPersonalizationContext", {"guest_id": g},
                                  self.svc)["context"]
            self.assertEqual(str(ctx.get("profile_version", "")), versions[g],
                             "guest %s: cached context disagrees with Postgres" % g)

    # -- partnersim's fault injection (tools/partnersim/partnersim.proto, admin role)

    def partner_faults(self, **fault):
        from google.protobuf import descriptor_pb2

        rpc = self.m.rpc
        if "partnersim" not in rpc.addrs:
            src = os.path.join(hmtest.SRC_ROOT, "tools", "partnersim")
            out = os.path.join(self.m.pg.dir, "partnersim.binpb")
            subprocess.run(["protoc", "-I" + src, "--descriptor_set_out=" + out,
                            "partnersim.proto"], check=True, cwd=src)
            with open(out, "rb") as f:
                for fd in descriptor_pb2.FileDescriptorSet.FromString(f.read()).file:
                    rpc.pool.Add(fd)
            rpc.addrs["partnersim"] = self.m.partnersim.addr
        rpc.call("partnersim", "hm.tools.partnersim.v1.PartnerSimAdmin", "SetFaults",
                 {"faults": [fault] if fault else []}, self.svc)

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
            hmtest.log("partnersim fails every call for 4 s, then hangs for 4 s")
            self.partner_faults(down=True)
            time.sleep(4)
            self.partner_faults(hang=True)
            time.sleep(4)
            self.partner_faults()
            time.sleep(3)
        finally:
            results = load.stop()
        counts = {}
        for op, code, _ in results:
            counts["%s %s" % (op, code)] = counts.get("%s %s" % (op, code), 0) + 1
        hmtest.log("%d calls under faults: %s" % (len(results), sorted(counts.items())))
        for code, (t, op, detail) in sorted(load.details.items()):
            hmtest.log("first %s at %s: %s: %s" % (code, time.strftime("%H:%M:%S",
                                                                       time.gmtime(t)), op,
                                                   detail))
        self.check_statuses(results)
        self.wait_sagas_settled()
        self.wait_quiet()
        self.check_invariants()


if __name__ == "__main__":
    hmtest.main()
