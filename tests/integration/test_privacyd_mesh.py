"""
Integration (issue 10's Done-when): privacyd with the mesh's data-subject participants, all on
one Postgres cluster and one Redis of their own (tests/lib/hmmesh.py), partnersim standing in
for bookingd's partners.

A guest gets data in every participant (guestd profile, preferences and interactions; bookingd
a booking; gamificationd points; recommenderd a tracked purchase and recommendations; privacyd
consents). Then:
- withdrawing personalization consent makes recommenderd's lists non-personalized within 1 s;
- withdrawing personalization consent reaches guestd's personalization context within 1 s
  (guest.consent.updated through the bus);
- the export has every participant's sections, with the summary, CSV and the data itself;
- the erasure runs while gamificationd is down: the others confirm, gamificationd is retried
  with backoff and confirms after it returns; the re-run export in the receipt is empty;
- afterwards no participant's database holds the guest's id or personal data (checked with
  psql on every table, bytea decoded), no Redis key or value holds them, the subject is on the
  suppression list, a late event about them re-creates nothing, and a new export finds
  nothing.

The participants are the daemons that answer DataSubjectService (probed at start: a daemon
that answers UNIMPLEMENTED is not one yet, and the test says so).
"""
import datetime
import hashlib
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmmesh  # noqa: E402
import hmtest  # noqa: E402

PV = "/hospitality.privacy.v1.PrivacyService/"
DS = "/hospitality.privacy.v1.DataSubjectService/"
COMPLETED, IN_PROGRESS = 3, 2
P_CONFIRMED, P_RETRYING = 3, 4
PERSONALIZATION, MARKETING_EMAIL = 1, 2
GRANTED, WITHDRAWN = 1, 3
# Tables that keep the erased guest's id on purpose, by daemon: none. Every participant keeps its
# erasure receipts (and privacyd its suppression list) by the SHA-256 of the id only.
RETAINED = {}


class PrivacyMesh(hmtest.TestCase):
    @classmethod
    def setUpClass(cls):
        hmtest.project_protos()
        from hospitality.booking.v1 import booking_pb2
        from hospitality.common.v1 import common_pb2, domain_pb2
        from hospitality.events.v1 import booking_events_pb2
        from hospitality.gamification.v1 import gamification_pb2
        from hospitality.guest.v1 import guest_pb2
        from hospitality.privacy.v1 import privacy_pb2
        from hospitality.recommender.v1 import recommender_pb2

        cls.pv, cls.bk, cls.gm, cls.gu = privacy_pb2, booking_pb2, gamification_pb2, guest_pb2
        cls.rc = recommender_pb2
        cls.common, cls.dom, cls.bev = common_pb2, domain_pb2, booking_events_pb2
        cls.grpc = hmtest.grpc_mod()
        env = {"HM_PII_KEYS": "k1:" + hmtest.random_hex(), "HM_PII_INDEX_KEY": hmtest.random_hex(),
               "HM_PRIVACY_RETRY_BASE": "300ms", "HM_PRIVACY_RETRY_MAX": "1s",
               "HM_PRIVACY_PARTICIPANT_TIMEOUT": "3s", "HM_BOOKING_PARTNER_TIMEOUT": "3s"}
        names = [n for n in hmmesh.DAEMON_NAMES if os.environ.get("HM_TEST_%s_EXE" % n.upper())]
        cls.m = hmmesh.MeshStack(names, extra_env=env)
        cls.m.start()
        cls.admin = hmtest.auth_md()
        cls.staff = hmtest.auth_md("staff-1", roles=("staff",))
        # The participants: every daemon that answers the data-subject interface.
        cls.participants = []
        for n in names:
            try:
                cls.call(n, DS + "ExportSubjectData", cls.pv.ExportSubjectDataRequest(
                    guest_id=str(uuid.uuid4())), cls.pv.ExportSubjectDataResponse)
                cls.participants.append(n)
            except cls.grpc.RpcError as e:
                if e.code() != cls.grpc.StatusCode.UNIMPLEMENTED:
                    raise
                hmtest.log("%s does not implement DataSubjectService yet: not a participant" % n)
        p = cls.m.daemons["privacyd"]
        p.extra_env["HM_DATA_SUBJECT_PEERS"] = ",".join(cls.participants)
        cls.m.kill_restart("privacyd")

    @classmethod
    def tearDownClass(cls):
        cls.m.close()

    @classmethod
    def call(cls, daemon, method, req, resp_cls, md=None, timeout=10):
        return cls.m.unary(daemon, method, req, resp_cls, md if md is not None else cls.admin,
                           timeout)

    def privacy(self, method, req, md=None):
        return self.call("privacyd", PV + method, req, getattr(self.pv, method + "Response"), md)

    def wait_request(self, rid, pred, timeout=30):
        until = time.monotonic() + timeout
        while True:
            r = self.privacy("GetRequestStatus", self.pv.GetRequestStatusRequest(
                request_id=rid)).request
            if pred(r):
                return r
            if time.monotonic() > until:
                self.fail("request %s still %s" % (rid, r))
            time.sleep(0.1)

    def export(self, g):
        r = self.privacy("RequestDataExport", self.pv.RequestDataExportRequest(
            guest_id=g, include_csv=True), hmtest.auth_md(g, roles=("guest",)))
        self.wait_request(r.request.request_id, lambda q: q.status == COMPLETED)
        return self.privacy("GetDataExport", self.pv.GetDataExportRequest(
            guest_id=g, request_id=r.request.request_id,
            verification_code=r.verification_code),
            hmtest.auth_md(g, roles=("guest",))).data_export

    def context(self, g):
        return self.call("guestd", "/hospitality.guest.v1.GuestService/GetPersonalizationContext",
                         self.gu.GetPersonalizationContextRequest(guest_id=g),
                         self.gu.GetPersonalizationContextResponse).context

    # -- the guest's data in every participant

    def seed(self):
        tag = uuid.uuid4().hex[:10]
        pii = {"name": "Grace Hopper " + tag, "email": "grace-%s@example.com" % tag,
               "phone": "+1 555 01%s" % "".join(c for c in tag if c.isdigit())[:5].ljust(5, "7")}
        if "guestd" in self.participants:
            p = self.call("guestd", "/hospitality.guest.v1.GuestService/CreateGuest",
                          self.gu.CreateGuestRequest(profile=self.gu.Profile(
                              name=pii["name"], email=pii["email"])),
                          self.gu.CreateGuestResponse).profile
            g = p.guest_id
            self.call("guestd", "/hospitality.guest.v1.GuestService/UpdatePreferences",
                      self.gu.UpdatePreferencesRequest(
                          guest_id=g, explicit_preferences=self.gu.ExplicitPreferences(
                              dietary_restrictions=["vegetarian"],
                              favorite_categories=["italian"])),
                      self.gu.UpdatePreferencesResponse)
            self.call("guestd", "/hospitality.guest.v1.GuestService/RecordInteraction",
                      self.gu.RecordInteractionRequest(guest_id=g, interaction=self.gu.Interaction(
                          type=self.dom.INTERACTION_TYPE_VIEW, venue_id="venue-" + tag)),
                      self.gu.RecordInteractionResponse)
        else:
            g = str(uuid.uuid4())
        day = datetime.date.today() + datetime.timedelta(days=40)
        b = self.call("bookingd", "/hospitality.booking.v1.BookingService/CreateBooking",
                      self.bk.CreateBookingRequest(
                          guest_id=g, guest_name=pii["name"], guest_email=pii["email"],
                          guest_phone=pii["phone"], venue_id=str(uuid.uuid4()), venue_type=2,
                          inventory_item_id="table-1",
                          booking_date=self.common.Date(year=day.year, month=day.month,
                                                        day=day.day),
                          booking_time=self.common.TimeOfDay(hours=19), duration_minutes=90,
                          party_size=2, special_requests="window seat for " + pii["name"]),
                      self.bk.CreateBookingResponse, timeout=20).booking
        self.call("gamificationd", "/hospitality.gamification.v1.GamificationService/AwardPoints",
                  self.gm.AwardPointsRequest(guest_id=g, points=120, source=self.gm.POINT_SOURCE_MANUAL,
                                             idempotency_key=uuid.uuid4().hex, reason="welcome"),
                  self.gm.AwardPointsResponse, hmtest.auth_md("staff-1", roles=("staff",)))
        req = self.pv.UpdateConsentRequest(guest_id=g, source=1, notice_version="2026-11")
        req.changes.add(purpose=PERSONALIZATION, status=GRANTED)
        req.changes.add(purpose=MARKETING_EMAIL, status=GRANTED)
        self.privacy("UpdateConsent", req, hmtest.auth_md(g, roles=("guest",)))
        if "recommenderd" in self.participants:
            items = []
            for c in ("spa", "wine"):
                for i in range(4):
                    it = self.rc.Item(item_id="%s-%s%d" % (tag, c, i), name="%s %d" % (c, i),
                                      category="%s_%s" % (tag, c), tags=[c], app=3)
                    it.price.amount_minor, it.price.currency = 1000 * (i + 1), "EUR"
                    items.append(it)
            self.rec("UpsertItems", self.rc.UpsertItemsRequest(items=items), self.staff)
            ev = self.rc.TrackedEvent(guest_id=g, type=self.rc.TRACKED_EVENT_TYPE_PURCHASE,
                                      item_id=tag + "-spa0", event_id=str(uuid.uuid4()))
            ev.transaction.transaction_id, ev.transaction.quantity = "t-" + tag, 1
            self.rec("TrackEvents", self.rc.TrackEventsRequest(events=[ev]), self.staff)
            until = time.monotonic() + 10
            while not self.rec("Recommend", self.rc.RecommendRequest(guest_id=g,
                                                                     limit=3)).personalized:
                self.assertLess(time.monotonic(), until, "recommenderd never personalized")
                time.sleep(0.1)
        return g, pii, b

    def rec(self, method, req, md=None):
        return self.call("recommenderd", "/hospitality.recommender.v1.RecommenderService/" + method,
                         req, getattr(self.rc, method + "Response"), md)

    def test_consent_withdrawal_reaches_guestd_within_a_second(self):
        if "guestd" not in self.participants:
            self.skipTest("guestd is not part of this build")
        g, _, _ = self.seed()
        until = time.monotonic() + 10
        while not self.context(g).personalization_allowed:
            self.assertLess(time.monotonic(), until, "the grant never reached guestd")
            time.sleep(0.05)
        req = self.pv.UpdateConsentRequest(guest_id=g, source=1, notice_version="2026-11")
        req.changes.add(purpose=PERSONALIZATION, status=WITHDRAWN)
        self.privacy("UpdateConsent", req, hmtest.auth_md(g, roles=("guest",)))
        t0 = time.monotonic()
        while self.context(g).personalization_allowed:
            self.assertLess(time.monotonic() - t0, 1.0, "withdrawal took more than 1 s")
            time.sleep(0.02)
        hmtest.log("personalization withdrawn in guestd after %.0f ms" %
                   ((time.monotonic() - t0) * 1000))

    def test_consent_withdrawal_makes_recommendations_non_personalized(self):
        if "recommenderd" not in self.participants:
            self.skipTest("recommenderd is not part of this build")
        g, _, _ = self.seed()  # personalized once the grant was seen
        req = self.pv.UpdateConsentRequest(guest_id=g, source=1, notice_version="2026-11")
        req.changes.add(purpose=PERSONALIZATION, status=WITHDRAWN)
        self.privacy("UpdateConsent", req, hmtest.auth_md(g, roles=("guest",)))
        t0 = time.monotonic()
        while True:
            r = self.rec("Recommend", self.rc.RecommendRequest(guest_id=g, limit=3))
            if not r.personalized:
                break
            self.assertLess(time.monotonic() - t0, 1.0, "withdrawal took more than 1 s")
            time.sleep(0.02)
        self.assertEqual(r.non_personalized_reason, self.rc.NON_PERSONALIZED_REASON_NO_CONSENT)
        hmtest.log("recommendations non-personalized %.0f ms after the withdrawal" %
                   ((time.monotonic() - t0) * 1000))

    def test_export_erasure_with_a_participant_down_and_nothing_left(self):
        g, pii, booking = self.seed()
        # -- export: every participant's sections, with the data
        x = self.export(g)
        doc = json.loads(x.json_document)
        self.assertEqual(list(doc)[0], "summary")
        by_part = {}
        for s in doc["summary"]:
            by_part.setdefault(s["participant"], {})[s["section"]] = s["count"]
        self.assertEqual(sorted(by_part), sorted(self.participants))
        self.assertEqual(by_part["bookingd"]["bookings"], 1)
        self.assertGreaterEqual(by_part["bookingd"]["booking_status_history"], 1)
        self.assertGreaterEqual(by_part["gamificationd"]["points_transactions"], 1)
        self.assertEqual(by_part["privacyd"]["consents"], 2)
        self.assertEqual(doc["bookings"][0]["guest_email"], pii["email"])
        if "guestd" in by_part:
            self.assertEqual(by_part["guestd"]["profile"], 1)
            self.assertGreaterEqual(by_part["guestd"]["preferences"], 1)
            self.assertGreaterEqual(by_part["guestd"]["interactions"], 1)
            self.assertIn(pii["email"], json.dumps(doc["profile"]))
        csv = {f.section: f.content for f in x.csv_files}
        self.assertIn(pii["email"], csv["bookings"])
        self.assertEqual({s.section for s in x.summary}, set(csv))

        # -- erasure while gamificationd is down
        gm = self.m.daemons["gamificationd"]
        gm.stop()
        r = self.privacy("RequestErasure", self.pv.RequestErasureRequest(
            guest_id=g, reason="right to be forgotten"), hmtest.auth_md(g, roles=("guest",)))
        rid = r.request.request_id
        h = hashlib.sha256(g.encode()).hexdigest()
        self.assertEqual(self.m.redis.command("SISMEMBER", "hm:privacy:suppressed", h), 1)

        def others_done_gm_retrying(q):
            p = {x.participant: x for x in q.participants}
            return (p["gamificationd"].status == P_RETRYING and p["gamificationd"].attempts >= 2
                    and all(x.status == P_CONFIRMED for n, x in p.items()
                            if n != "gamificationd"))

        q = self.wait_request(rid, others_done_gm_retrying)
        self.assertEqual(q.status, IN_PROGRESS)
        self.assertIn("UNAVAILABLE", {x.participant: x for x in q.participants}[
            "gamificationd"].last_error)
        time.sleep(1.0)
        self.assertEqual(self.privacy("GetRequestStatus", self.pv.GetRequestStatusRequest(
            request_id=rid)).request.status, IN_PROGRESS)
        gm.start()
        self.m.rpc.reset("gamificationd")
        q = self.wait_request(rid, lambda x: x.status == COMPLETED, timeout=40)
        self.assertTrue(q.verification.verified_empty, q.verification)
        self.assertEqual(len(q.verification.residual), 0)
        self.assertEqual(sorted(x.participant for x in q.participants), sorted(self.participants))
        for x in q.participants:
            self.assertEqual(x.status, P_CONFIRMED, x.participant)
            self.assertEqual(x.receipt.participant, x.participant)
            self.assertEqual(x.receipt.request_id, rid)
            self.assertEqual(len(x.receipt.digest), 64)
        gmp = {x.participant: x for x in q.participants}["gamificationd"]
        self.assertGreaterEqual(gmp.attempts, 3)
        bkp = {x.participant: x for x in q.participants}["bookingd"]
        self.assertEqual({c.section: c.count for c in bkp.receipt.anonymized}["bookings"], 1)

        # -- nothing left: every database, every Redis key and value
        for n in self.participants:
            for needle in (g, pii["email"], pii["name"]):
                found = tables_holding(lambda sql, n=n: self.m.psql(n, sql), needle,
                                       skip={"outbox", "processed_events"} | RETAINED.get(n,
                                                                                          set()))
                self.assertEqual(found, [], "%s still holds %r" % (n, needle))
        # the booking is kept for accounting, anonymized
        self.assertEqual(self.m.psql("bookingd", "SELECT count(*) FROM bk_bookings WHERE "
                                     "reference = '%s' AND guest_name IS NULL AND guest_email "
                                     "IS NULL" % booking.booking_reference), "1")
        self.assertEqual(redis_holding(self.m.redis, (g, pii["email"], pii["name"])), [])
        # the re-run export is empty
        again = self.export(g)
        self.assertTrue(len(again.summary) > 0)
        self.assertEqual({s.section: s.count for s in again.summary if s.count}, {})
        # the event
        until = time.monotonic() + 5
        while not self._deleted_event(g):
            self.assertLess(time.monotonic(), until, "no guest.data.deleted")
            time.sleep(0.1)
        # a late event about the erased guest re-creates nothing (suppression list); the same
        # event about another guest is applied (the consumer is alive)
        other = str(uuid.uuid4())
        for who in (g, other):
            self.publish("booking.completed", self.bev.BookingCompleted(
                booking=self.bev.BookingSummary(booking_id=str(uuid.uuid4()),
                                                booking_reference="LATE" + who[:4],
                                                guest_id=who, venue_id=str(uuid.uuid4()),
                                                venue_type=2)), who)
        until = time.monotonic() + 10
        while not tables_holding(lambda q: self.m.psql("gamificationd", q), other,
                                 skip={"outbox", "processed_events"}):
            self.assertLess(time.monotonic(), until, "gamificationd never applied the event")
            time.sleep(0.2)
        self.assertEqual(tables_holding(lambda q: self.m.psql("gamificationd", q), g,
                                        skip={"outbox", "processed_events"}), [])

    def publish(self, etype, msg, subject):
        """XADDs an event envelope to the mesh's Redis as the outbox relay would."""
        import socket

        from google.protobuf import timestamp_pb2
        from hospitality.events.v1 import events_pb2

        t = timestamp_pb2.Timestamp()
        t.GetCurrentTime()
        env = events_pb2.Event(id=hmtest.uuid7(), type=etype, source="test", subject=subject,
                               time=t, schema_version=1, payload=msg.SerializeToString())
        args = [b"XADD", ("hm:events:" + etype.split(".")[0]).encode(), b"*", b"id",
                env.id.encode(), b"type", etype.encode(), b"env", env.SerializeToString()]
        with socket.create_connection(("127.0.0.1", self.m.redis.port), timeout=10) as sock:
            sock.sendall(b"*%d\r\n" % len(args) + b"".join(
                b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
            self.assertTrue(sock.makefile("rb").readline().startswith(b"$"))

    def _deleted_event(self, g):
        for _id, fields in self.m.redis.command("XRANGE", "hm:events:guest", "-", "+") or []:
            kv = dict(zip(fields[0::2], fields[1::2]))
            if kv.get("type") == "guest.data.deleted" and g in (kv.get("env") or ""):
                return True
        return False


def tables_holding(sql, needle, skip=()):
    """Tables (public schema) with a row whose text, or the escaped text of a bytea column,
    contains `needle`; sql(q) runs a query and returns its output."""
    cols = {}
    for line in sql("SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
                    ).splitlines():
        t, c, ty = line.split("|")
        cols.setdefault(t, []).append("encode(\"%s\", 'escape')" % c if ty == "bytea"
                                      else '"%s"::text' % c)
    found = []
    lit = needle.replace("'", "''")
    for t, exprs in sorted(cols.items()):
        if t in skip:
            continue
        n = sql("SELECT count(*) FROM \"%s\" WHERE concat_ws('|', %s) LIKE '%%%s%%'"
                % (t, ", ".join(exprs), lit))
        if n != "0":
            found.append(t)
    return found


def redis_holding(redis, needles):
    """Redis keys whose name or value (strings, hashes, sets, sorted sets, lists) contains one
    of `needles`; streams are skipped (events carry ids by design, never personal data)."""
    found = []
    cursor = "0"
    while True:
        cursor, keys = redis.command("SCAN", cursor, "COUNT", "500")
        for k in keys:
            t = redis.command("TYPE", k)
            vals = [k]
            if t == "string":
                vals.append(redis.command("GET", k))
            elif t == "hash":
                vals += redis.command("HGETALL", k)
            elif t == "set":
                vals += redis.command("SMEMBERS", k)
            elif t == "zset":
                vals += redis.command("ZRANGE", k, "0", "-1")
            elif t == "list":
                vals += redis.command("LRANGE", k, "0", "-1")
            if any(n in (v or "") for v in vals for n in needles):
                found.append(k)
        if cursor == "0":
            return found


if __name__ == "__main__":
    hmtest.main()
