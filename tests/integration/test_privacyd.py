"""
Integration: privacyd on its own against real Postgres and Redis (issue 10).

privacyd is its own only data-subject participant here (HM_DATA_SUBJECT_PEERS=privacyd, called
back through HM_PRIVACYD_ADDR with its service token); a second privacyd also lists "ghostd",
a participant with no address, to make exports fail and erasures wait. The mesh-wide export
and erasure (bookingd, gamificationd, ...) are in test_privacyd_mesh.py.

- consent: grant/deny/withdraw with source, notice version, expiry and history; versions and
  stale expected_version; guest.consent.updated in the stream; the Redis cache is rewritten by
  the update itself (the next read sees the change), lapsed grants read as WITHDRAWN at once
  and are recorded (source EXPIRY) by the expiry task;
- export of privacyd's own records: asynchronous, fetched with the verification code (wrong
  code refused), stored encrypted, summary first, CSV per section, jurisdiction deadlines,
  idempotency key returns the same request and code;
- a participant that cannot be reached: the export fails after its attempts with an alert (log
  event + metric); an erasure keeps retrying with backoff; an overdue request raises an alert;
- erasure of privacyd's own records: verified empty, receipt, suppression list, no guest id
  left in privacyd's tables, later consent changes refused;
- retention: dry run counts without deleting, the purge deletes expired exports;
- audit log: the chain verifies, UPDATE is refused, a row modified behind the trigger's back is
  found;
- bad input and authorization give clear statuses.
"""
import datetime
import hashlib
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402

SVC = "/hospitality.privacy.v1.PrivacyService/"
PERSONALIZATION, MARKETING_EMAIL, MARKETING_SMS, ANALYTICS, THIRD_PARTY = 1, 2, 3, 4, 5
GRANTED, DENIED, WITHDRAWN = 1, 2, 3
APP, WEB, STAFF_SRC, IMPORT, UNSUB, EXPIRY = 1, 2, 3, 4, 5, 6
RECEIVED, IN_PROGRESS, COMPLETED, FAILED, EXPIRED = 1, 2, 3, 4, 5
P_CONFIRMED, P_RETRYING = 3, 4
GDPR, CCPA, PIPEDA = 1, 2, 3


redis_cmd = hmtest.redis_cmd


def stream_events(stream, type_, guest):
    """Envelopes of `type_` about `guest` in a Redis stream."""
    out = []
    for _id, fields in redis_cmd("XRANGE", stream, "-", "+") or []:
        kv = dict(zip(fields[0::2], fields[1::2]))
        if kv.get(b"type") == type_.encode() and guest.encode() in kv.get(b"env", b""):
            out.append(kv)
    return out


def tables_holding(sql, needle, skip=()):
    """Tables of a database (public schema) with a row whose text, or the escaped text of a
    bytea column, contains `needle`; sql(q) runs a query and returns its output."""
    cols = {}
    for line in sql("SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
                    ).splitlines():
        t, c, ty = line.split("|")
        cols.setdefault(t, []).append('encode("%s", \'escape\')' % c if ty == "bytea"
                                      else '"%s"::text' % c)
    found = []
    for t, exprs in sorted(cols.items()):
        if t in skip:
            continue
        n = sql("SELECT count(*) FROM \"%s\" WHERE concat_ws('|', %s) LIKE '%%%s%%'"
                % (t, ", ".join(exprs), needle))
        if n != "0":
            found.append(t)
    return found


def privacyd_env(d, peers):
    return {"HM_DATA_SUBJECT_PEERS": peers, "HM_PRIVACYD_ADDR": d.addr,
            "HM_SERVICE_TOKEN": hmtest.token("privacyd", roles=("service",), ttl=86400),
            "HM_PRIVACY_RETRY_BASE": "200ms", "HM_PRIVACY_RETRY_MAX": "1s",
            "HM_PRIVACY_EXPORT_ATTEMPTS": "2", "HM_PRIVACY_PARTICIPANT_TIMEOUT": "2s"}


class Privacy(hmtest.TestCase):
    @classmethod
    def setUpClass(cls):
        hmtest.project_protos()
        from google.protobuf import timestamp_pb2
        from hospitality.privacy.v1 import privacy_pb2

        cls.pb, cls.ts = privacy_pb2, timestamp_pb2
        cls.grpc = hmtest.grpc_mod()
        name, exe = hmtest.daemon_under_test()
        cls.d = hmtest.Daemon(name, exe, workers=4)
        cls.d.extra_env.update(privacyd_env(cls.d, "privacyd"))
        cls.d.start()
        # A second privacyd whose participant list names one that does not exist.
        cls.g = hmtest.Daemon(name, exe, workers=2, label=hmtest.test_name() + "-ghost")
        cls.g.extra_env.update(privacyd_env(cls.g, "ghostd,privacyd"))
        cls.g.extra_env["HM_PRIVACY_RETRY_BASE"] = "1s"
        cls.g.start()
        cls.admin = hmtest.auth_md()

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.d.stop() == 0
            assert cls.g.stop() == 0
        finally:
            cls.d.close()
            cls.g.close()

    # -- helpers

    def rpc(self, method, req, md=None, d=None, timeout=10):
        resp = getattr(self.pb, method + "Response")
        fn = (d or self.d).channel().unary_unary(
            SVC + method, request_serializer=type(req).SerializeToString,
            response_deserializer=resp.FromString)
        return fn(req, metadata=md if md is not None else self.admin, timeout=timeout)

    def assertRpcError(self, want, fn, *a, **kw):
        with self.assertRaises(self.grpc.RpcError) as cm:
            fn(*a, **kw)
        self.assertEqual(cm.exception.code().name, want, cm.exception.details())
        return cm.exception

    def guest_md(self, g):
        return hmtest.auth_md(g, roles=("guest",))

    def update(self, g, changes, source=APP, notice="2026-11", expected=0, md=None, d=None):
        req = self.pb.UpdateConsentRequest(guest_id=g, source=source, notice_version=notice,
                                           expected_version=expected)
        for purpose, status, *exp in changes:
            c = req.changes.add(purpose=purpose, status=status)
            if exp:
                c.expires_at.FromDatetime(exp[0])
        return self.rpc("UpdateConsent", req, md if md is not None else self.guest_md(g), d=d)

    def consent(self, g, purposes=(), md=None):
        return self.rpc("GetConsent", self.pb.GetConsentRequest(guest_id=g, purposes=purposes),
                        md if md is not None else self.guest_md(g))

    def status_of(self, resp, purpose):
        return {c.purpose: c.status for c in resp.consents}[purpose]

    def sql(self, q, d=None):
        return hmtest.psql(q, dbname=(d or self.d).db).strip()

    def request_status(self, rid, d=None):
        return self.rpc("GetRequestStatus", self.pb.GetRequestStatusRequest(request_id=rid),
                        d=d).request

    def wait_request(self, rid, pred, timeout=20, d=None):
        until = time.monotonic() + timeout
        while True:
            r = self.request_status(rid, d=d)
            if pred(r):
                return r
            if time.monotonic() > until:
                self.fail("request %s still %s" % (rid, r))
            time.sleep(0.1)

    def export(self, g, key="", csv=True, jurisdiction=GDPR, categories=(), d=None):
        return self.rpc("RequestDataExport", self.pb.RequestDataExportRequest(
            guest_id=g, jurisdiction=jurisdiction, include_csv=csv, idempotency_key=key,
            categories=categories), self.guest_md(g), d=d)

    def fetch(self, g, rid, code, md=None):
        return self.rpc("GetDataExport", self.pb.GetDataExportRequest(
            guest_id=g, request_id=rid, verification_code=code),
            md if md is not None else self.guest_md(g)).data_export

    # -- consent

    def test_consent_lifecycle_history_versions_and_event(self):
        g = str(uuid.uuid4())
        r = self.consent(g)
        self.assertEqual(r.version, 0)
        self.assertEqual(sorted(c.purpose for c in r.consents), [1, 2, 3, 4, 5])
        self.assertTrue(all(c.status == 0 for c in r.consents))
        later = datetime.datetime.utcnow() + datetime.timedelta(days=30)
        r = self.update(g, [(PERSONALIZATION, GRANTED, later), (MARKETING_EMAIL, DENIED)],
                        notice="2026-11")
        self.assertEqual(r.version, 1)
        got = {c.purpose: c for c in r.consents}
        self.assertEqual(got[PERSONALIZATION].status, GRANTED)
        self.assertEqual(got[PERSONALIZATION].source, APP)
        self.assertEqual(got[PERSONALIZATION].notice_version, "2026-11")
        self.assertEqual(got[PERSONALIZATION].expires_at.ToDatetime().date(), later.date())
        self.assertEqual(got[PERSONALIZATION].recorded_by.id, g)
        self.assertEqual(got[MARKETING_EMAIL].status, DENIED)
        self.assertEqual(got[ANALYTICS].status, 0)
        r = self.update(g, [(PERSONALIZATION, WITHDRAWN)], source=WEB, notice="2026-12",
                        expected=1)
        self.assertEqual(r.version, 2)
        c = self.consent(g, purposes=[PERSONALIZATION])
        self.assertEqual(len(c.consents), 1)
        self.assertEqual(c.consents[0].status, WITHDRAWN)
        self.assertEqual(c.consents[0].source, WEB)
        self.assertEqual(c.version, 2)
        # a stale expected version is refused and changes nothing
        e = self.assertRpcError("ABORTED", self.update, g, [(ANALYTICS, GRANTED)], expected=1)
        self.assertIn("version", e.details())
        self.assertEqual(self.consent(g).version, 2)
        # history, newest first, with paging
        h = self.rpc("ListConsentHistory", self.pb.ListConsentHistoryRequest(guest_id=g),
                     self.guest_md(g))
        self.assertEqual([(x.purpose, x.status, x.version) for x in h.records],
                         [(PERSONALIZATION, WITHDRAWN, 2), (MARKETING_EMAIL, DENIED, 1),
                          (PERSONALIZATION, GRANTED, 1)])
        p1 = self.rpc("ListConsentHistory", self.pb.ListConsentHistoryRequest(
            guest_id=g, page={"page_size": 2}), self.guest_md(g))
        self.assertEqual(len(p1.records), 2)
        self.assertTrue(p1.page.next_page_token)
        p2 = self.rpc("ListConsentHistory", self.pb.ListConsentHistoryRequest(
            guest_id=g, page={"page_size": 2, "page_token": p1.page.next_page_token}),
            self.guest_md(g))
        self.assertEqual([(x.purpose, x.status) for x in p2.records],
                         [(PERSONALIZATION, GRANTED)])
        self.assertEqual(p2.page.next_page_token, "")
        only = self.rpc("ListConsentHistory", self.pb.ListConsentHistoryRequest(
            guest_id=g, purpose=MARKETING_EMAIL), self.guest_md(g))
        self.assertEqual(len(only.records), 1)
        # one guest.consent.updated per update, through the outbox
        until = time.monotonic() + 5
        while len(stream_events("hm:events:guest", "guest.consent.updated", g)) < 2:
            self.assertLess(time.monotonic(), until, "events not relayed")
            time.sleep(0.05)
        self.assertEqual(len(stream_events("hm:events:guest", "guest.consent.updated", g)), 2)
        self.assertEqual(self.sql("SELECT count(*) FROM outbox WHERE subject = '%s' AND "
                                  "event_type = 'guest.consent.updated'" % g), "2")

    def test_consent_cache_rewritten_by_the_update(self):
        g = str(uuid.uuid4())
        self.update(g, [(PERSONALIZATION, GRANTED)])
        key = "hm:privacyd:consent:" + hashlib.sha256(g.encode()).hexdigest()
        self.assertEqual(self.status_of(self.consent(g), PERSONALIZATION), GRANTED)
        cached = redis_cmd("GET", key)
        self.assertIsNotNone(cached)
        self.assertTrue(cached.startswith(b"1:"))
        hits0 = hmtest.metric(self.d.metrics(), "privacyd_consent_cache_total", result="hit")
        for _ in range(5):
            self.assertEqual(self.status_of(self.consent(g), PERSONALIZATION), GRANTED)
        hits1 = hmtest.metric(self.d.metrics(), "privacyd_consent_cache_total", result="hit")
        self.assertGreaterEqual(hits1 - hits0, 5)
        # the withdrawal is visible to the very next read (the update rewrote the cache)
        t0 = time.monotonic()
        self.update(g, [(PERSONALIZATION, WITHDRAWN)], source=UNSUB)
        self.assertEqual(self.status_of(self.consent(g), PERSONALIZATION), WITHDRAWN)
        self.assertLess(time.monotonic() - t0, 1.0)
        self.assertTrue(redis_cmd("GET", key).startswith(b"2:"))
        # an older version never replaces a newer one in the cache
        redis_cmd("SET", key, b"1:" + b"\x00")
        self.update(g, [(PERSONALIZATION, GRANTED)])
        self.assertTrue(redis_cmd("GET", key).startswith(b"3:"))

    def test_consent_expiry_reported_at_once_and_recorded(self):
        g = str(uuid.uuid4())
        soon = datetime.datetime.utcnow() + datetime.timedelta(seconds=1.5)
        self.update(g, [(MARKETING_SMS, GRANTED, soon)])
        self.assertEqual(self.status_of(self.consent(g), MARKETING_SMS), GRANTED)
        time.sleep(max(0.0, (soon - datetime.datetime.utcnow()).total_seconds()) + 0.1)
        # read from the cache, the lapsed grant is already reported as withdrawn
        self.assertEqual(self.status_of(self.consent(g), MARKETING_SMS), WITHDRAWN)
        until = time.monotonic() + 5
        while True:
            h = self.rpc("ListConsentHistory", self.pb.ListConsentHistoryRequest(guest_id=g),
                         self.guest_md(g)).records
            if len(h) == 2:
                break
            self.assertLess(time.monotonic(), until, "expiry not recorded")
            time.sleep(0.1)
        self.assertEqual((h[0].status, h[0].source, h[0].recorded_by.id),
                         (WITHDRAWN, EXPIRY, "privacyd"))
        self.assertEqual(self.consent(g).version, 2)
        time.sleep(1.2)  # recorded once, not once per task run
        self.assertEqual(self.consent(g).version, 2)

    # -- export

    def test_export_own_records_fetched_with_code_encrypted_with_csv(self):
        g = str(uuid.uuid4())
        notice = "notice-" + uuid.uuid4().hex[:8]
        self.update(g, [(PERSONALIZATION, GRANTED), (ANALYTICS, DENIED)], notice=notice)
        r = self.export(g, key="k-" + g)
        rid, code = r.request.request_id, r.verification_code
        self.assertEqual(r.request.type, 1)
        self.assertIn(r.request.status, (RECEIVED, IN_PROGRESS, COMPLETED))
        self.assertEqual(r.request.guest_id, g)
        self.assertEqual([p.participant for p in r.request.participants], ["privacyd"])
        days = (r.request.due_at.ToDatetime() - r.request.received_at.ToDatetime()).days
        self.assertIn(days, (28, 29, 30, 31))  # GDPR: one month
        # the same idempotency key: the same request and the same code
        again = self.export(g, key="k-" + g)
        self.assertEqual((again.request.request_id, again.verification_code), (rid, code))
        done = self.wait_request(rid, lambda q: q.status == COMPLETED)
        self.assertEqual(done.participants[0].status, P_CONFIRMED)
        self.assertEqual(done.participants[0].exported_records, 2 + 2 + 0)
        self.assertTrue(done.HasField("export_expires_at"))
        # a wrong code is refused
        e = self.assertRpcError("PERMISSION_DENIED", self.fetch, g, rid, "0" * len(code))
        self.assertEqual(hmtest.error_details(e)[1].reason, "VERIFICATION_FAILED")
        x = self.fetch(g, rid, code)
        # (a request never lists itself)
        self.assertEqual({s.section: s.count for s in x.summary},
                         {"consents": 2, "consent_history": 2, "privacy_requests": 0})
        self.assertIn("General Data Protection Regulation", x.disclaimer)
        doc = json.loads(x.json_document)
        self.assertEqual(list(doc)[0], "summary")
        self.assertEqual(doc["disclaimer"], x.disclaimer)
        self.assertEqual(sorted(r["purpose"] for r in doc["consents"]), [1, 4])
        self.assertEqual({r["notice_version"] for r in doc["consent_history"]}, {notice})
        self.assertEqual(doc["privacy_requests"], [])
        csv = {f.file_name: f.content for f in x.csv_files}
        self.assertEqual(set(csv), {"consents.csv", "consent_history.csv",
                                    "privacy_requests.csv"})
        lines = csv["consents.csv"].split("\r\n")
        self.assertIn("purpose", lines[0].split(","))
        self.assertEqual(len([ln for ln in lines if ln]), 3)
        # encrypted at rest: the stored blob holds no readable record
        blob = self.sql("SELECT encode(sealed, 'escape') FROM pv_exports WHERE request_id = '%s'"
                        % rid)
        self.assertTrue(blob)
        self.assertNotIn(notice, blob)
        self.assertNotIn(g, blob)
        # events: requested and exported
        until = time.monotonic() + 5
        while not stream_events("hm:events:guest", "guest.data.exported", g):
            self.assertLess(time.monotonic(), until)
            time.sleep(0.05)
        self.assertEqual(len(stream_events("hm:events:privacy", "privacy.export.requested", g)),
                         1)
        # someone else's guest token cannot fetch it
        self.assertRpcError("PERMISSION_DENIED", self.fetch, g, rid, code,
                            md=self.guest_md(str(uuid.uuid4())))
        # categories: only what was asked for
        r2 = self.export(g, categories=[4])  # bookings: privacyd holds none
        done2 = self.wait_request(r2.request.request_id, lambda q: q.status == COMPLETED)
        self.assertEqual(done2.participants[0].exported_records, 0)
        self.assertEqual(len(self.fetch(g, r2.request.request_id, r2.verification_code).summary),
                         0)
        # a later export lists the earlier requests
        r3 = self.export(g)
        self.wait_request(r3.request.request_id, lambda q: q.status == COMPLETED)
        doc3 = json.loads(self.fetch(g, r3.request.request_id, r3.verification_code).json_document)
        self.assertEqual(sorted(x["request_id"] for x in doc3["privacy_requests"]),
                         sorted([rid, r2.request.request_id]))

    def test_jurisdiction_deadlines(self):
        g = str(uuid.uuid4())
        for j, days, name in ((CCPA, 45, "California"), (PIPEDA, 30, "PIPEDA")):
            r = self.export(g, jurisdiction=j)
            q = r.request
            self.assertEqual(q.jurisdiction, j)
            self.assertEqual((q.due_at.ToDatetime() - q.received_at.ToDatetime()).days, days)
            self.wait_request(q.request_id, lambda x: x.status == COMPLETED)
            self.assertIn(name, self.fetch(g, q.request_id, r.verification_code).disclaimer)

    def test_not_ready_then_failed_export_raises_alert(self):
        g = str(uuid.uuid4())
        r = self.export(g, d=self.g)
        rid = r.request.request_id
        self.assertEqual(sorted(p.participant for p in r.request.participants),
                         ["ghostd", "privacyd"])
        # the export cannot be fetched before it is ready
        e = self.assertRpcError("FAILED_PRECONDITION", lambda: self.rpc(
            "GetDataExport", self.pb.GetDataExportRequest(
                guest_id=g, request_id=rid, verification_code=r.verification_code),
            d=self.g))
        self.assertEqual(hmtest.error_details(e)[1].reason, "NOT_READY")
        q = self.wait_request(rid, lambda x: x.status == FAILED, d=self.g)
        self.assertIn("ghostd", q.failure_reason)
        self.assertTrue(q.HasField("finished_at"))
        parts = {p.participant: p for p in q.participants}
        self.assertEqual(parts["ghostd"].status, P_RETRYING)
        self.assertEqual(parts["ghostd"].attempts, 2)
        self.assertIn("ghostd", parts["ghostd"].last_error)
        self.assertGreaterEqual(hmtest.metric(self.g.metrics(), "privacyd_request_alerts_total",
                                              kind="failed"), 1)
        self.assertIn('"event":"privacy_request_failed"', self.g.log_text())
        self.assertIn(rid, self.g.log_text())

    def test_erasure_waits_for_missing_participant_and_overdue_alert(self):
        g = str(uuid.uuid4())
        self.update(g, [(PERSONALIZATION, GRANTED)], d=self.g)
        r = self.rpc("RequestErasure", self.pb.RequestErasureRequest(
            guest_id=g, reason="guest asked"), self.guest_md(g), d=self.g).request
        rid = r.request_id

        def waiting(q):
            p = {x.participant: x for x in q.participants}
            return p["privacyd"].status == P_CONFIRMED and p["ghostd"].attempts >= 3

        q = self.wait_request(rid, waiting, d=self.g)
        self.assertEqual(q.status, IN_PROGRESS)
        ghost = {x.participant: x for x in q.participants}["ghostd"]
        self.assertEqual(ghost.status, P_RETRYING)
        self.assertTrue(ghost.HasField("next_attempt_at"))
        # a second request for the same guest while one is open is that one
        again = self.rpc("RequestErasure", self.pb.RequestErasureRequest(guest_id=g),
                         d=self.g).request
        self.assertEqual(again.request_id, rid)
        # past its deadline: an alert (log event + metric), listed as overdue
        self.sql("UPDATE pv_requests SET due_at = now() - interval '1 day' WHERE request_id = "
                 "'%s'" % rid, d=self.g)
        until = time.monotonic() + 8
        while '"event":"privacy_request_overdue"' not in self.g.log_text():
            self.assertLess(time.monotonic(), until, "no overdue alert")
            time.sleep(0.2)
        m = self.g.metrics()
        self.assertGreaterEqual(hmtest.metric(m, "privacyd_request_alerts_total", kind="overdue"),
                                1)
        self.assertGreaterEqual(hmtest.metric(m, "privacyd_overdue_requests"), 1)
        self.assertTrue(self.request_status(rid, d=self.g).overdue)
        listed = self.rpc("ListRequests", self.pb.ListRequestsRequest(overdue_only=True),
                          hmtest.auth_md("staff-1", roles=("staff",)), d=self.g).requests
        self.assertIn(rid, [x.request_id for x in listed])
        # an extension (staff, with a reason) moves the deadline and is recorded
        staff = hmtest.auth_md("staff-1", roles=("staff",))
        before = self.request_status(rid, d=self.g).due_at.ToDatetime()
        q = self.rpc("ExtendRequestDeadline", self.pb.ExtendRequestDeadlineRequest(
            request_id=rid, extension_days=30, reason="complex request"), staff, d=self.g).request
        self.assertEqual((q.due_at.ToDatetime() - before).days, 30)
        self.assertFalse(q.overdue)
        self.assertEqual(len(q.extensions), 1)
        x = q.extensions[0]
        self.assertEqual((x.previous_due_at.ToDatetime(), x.due_at.ToDatetime(), x.reason,
                          x.extended_by.id), (before, q.due_at.ToDatetime(), "complex request",
                                              "staff-1"))
        self.assertNotIn(rid, [r.request_id for r in self.rpc(
            "ListRequests", self.pb.ListRequestsRequest(overdue_only=True), staff,
            d=self.g).requests])
        # GDPR allows two more months in total: 30 + 80 days is too much
        e = self.assertRpcError("FAILED_PRECONDITION", self.rpc, "ExtendRequestDeadline",
                                self.pb.ExtendRequestDeadlineRequest(
                                    request_id=rid, extension_days=80, reason="more"), staff,
                                self.g)
        self.assertIn("jurisdiction", e.details())
        self.assertEqual(len(self.request_status(rid, d=self.g).extensions), 1)
        self.assertRpcError("INVALID_ARGUMENT", self.rpc, "ExtendRequestDeadline",
                            self.pb.ExtendRequestDeadlineRequest(request_id=rid,
                                                                 extension_days=5), staff, self.g)
        self.assertRpcError("PERMISSION_DENIED", self.rpc, "ExtendRequestDeadline",
                            self.pb.ExtendRequestDeadlineRequest(
                                request_id=rid, extension_days=5, reason="x"),
                            self.guest_md(g), self.g)
        done = self.export(g)
        self.wait_request(done.request.request_id, lambda q: q.status == COMPLETED)
        self.assertRpcError("FAILED_PRECONDITION", self.rpc, "ExtendRequestDeadline",
                            self.pb.ExtendRequestDeadlineRequest(
                                request_id=done.request.request_id, extension_days=5,
                                reason="x"), staff)

    # -- erasure

    def test_erasure_of_own_records_verified_and_suppressed(self):
        g = str(uuid.uuid4())
        self.update(g, [(PERSONALIZATION, GRANTED), (MARKETING_EMAIL, GRANTED)])
        ex = self.export(g)
        self.wait_request(ex.request.request_id, lambda q: q.status == COMPLETED)
        self.consent(g)
        key = "hm:privacyd:consent:" + hashlib.sha256(g.encode()).hexdigest()
        self.assertIsNotNone(redis_cmd("GET", key))
        r = self.rpc("RequestErasure", self.pb.RequestErasureRequest(
            guest_id=g, jurisdiction=CCPA, reason="guest request via app",
            idempotency_key="e-" + g), self.guest_md(g)).request
        h = hashlib.sha256(g.encode()).hexdigest()
        # on the suppression list at once
        self.assertEqual(redis_cmd("SISMEMBER", "hm:privacy:suppressed", h), 1)
        q = self.wait_request(r.request_id, lambda x: x.status == COMPLETED)
        self.assertTrue(q.verification.verified_empty)
        self.assertEqual(len(q.verification.residual), 0)
        self.assertEqual(q.guest_id, "")  # the request keeps only the hash of the id
        rc = q.participants[0].receipt
        self.assertEqual(rc.participant, "privacyd")
        self.assertEqual(len(rc.digest), 64)
        self.assertEqual({c.section: c.count for c in rc.deleted},
                         {"consents": 2, "consent_history": 2, "privacy_requests": 1})
        # no trace of the id in privacyd's tables (the outbox carries ids by design)
        self.assertEqual(tables_holding(lambda q: self.sql(q), g, skip=("outbox",)), [])
        self.assertEqual(self.sql("SELECT count(*) FROM pv_suppressed WHERE subject_hash = '%s'"
                                  % h), "1")
        # the cached consent is a tombstone without the id: nothing consented, version 0
        self.assertNotIn(g.encode(), redis_cmd("GET", key))
        c = self.consent(g, md=self.admin)
        self.assertEqual((c.version, {x.status for x in c.consents}), (0, {0}))
        # the export made before is gone with the guest's records
        self.assertRpcError("NOT_FOUND", self.fetch, g, ex.request.request_id,
                            ex.verification_code)
        # an erased guest's consent cannot be re-created
        e = self.assertRpcError("FAILED_PRECONDITION", self.update, g,
                                [(PERSONALIZATION, GRANTED)])
        self.assertIn("erased", e.details())
        until = time.monotonic() + 5
        while not stream_events("hm:events:guest", "guest.data.deleted", g):
            self.assertLess(time.monotonic(), until)
            time.sleep(0.05)
        self.assertEqual(len(stream_events("hm:events:privacy", "privacy.erasure.requested", g)),
                         1)
        # the same idempotency key answers with the finished request
        again = self.rpc("RequestErasure", self.pb.RequestErasureRequest(
            guest_id=g, idempotency_key="e-" + g), self.guest_md(g)).request
        self.assertEqual(again.request_id, r.request_id)

    # -- retention

    def test_retention_dry_run_then_purge(self):
        g = str(uuid.uuid4())
        r = self.export(g)
        rid = r.request.request_id
        self.wait_request(rid, lambda q: q.status == COMPLETED)
        self.sql("UPDATE pv_exports SET expires_at = now() - interval '1 minute' WHERE "
                 "request_id = '%s'" % rid)
        dry = self.rpc("PurgeExpiredData", self.pb.PurgeExpiredDataRequest(dry_run=True))
        self.assertTrue(dry.dry_run)
        self.assertGreaterEqual({c.section: c.count for c in dry.purged}["exports"], 1)
        self.assertEqual(self.sql("SELECT count(*) FROM pv_exports WHERE request_id = '%s'" % rid),
                         "1")
        real = self.rpc("PurgeExpiredData", self.pb.PurgeExpiredDataRequest())
        self.assertGreaterEqual({c.section: c.count for c in real.purged}["exports"], 1)
        self.assertEqual(self.sql("SELECT count(*) FROM pv_exports WHERE request_id = '%s'" % rid),
                         "0")
        self.assertEqual(self.request_status(rid).status, EXPIRED)
        e = self.assertRpcError("NOT_FOUND", self.fetch, g, rid, r.verification_code)
        self.assertIn("expired", e.details())
        self.assertEqual({c.section: c.count for c in self.rpc(
            "PurgeExpiredData", self.pb.PurgeExpiredDataRequest(dry_run=True)).purged}["exports"],
            0)
        self.assertGreaterEqual(int(self.sql(
            "SELECT count(*) FROM pv_audit WHERE action = 'retention.purged'")), 1)
        self.assertRpcError("PERMISSION_DENIED", self.rpc, "PurgeExpiredData",
                            self.pb.PurgeExpiredDataRequest(),
                            hmtest.auth_md("staff-1", roles=("staff",)))

    # -- audit

    def test_audit_log_chain_detects_modified_row(self):
        g = str(uuid.uuid4())
        self.update(g, [(ANALYTICS, GRANTED)])
        self.consent(g, md=hmtest.auth_md("staff-9", roles=("staff",)))  # audited staff read
        v = self.rpc("VerifyAuditLog", self.pb.VerifyAuditLogRequest())
        self.assertTrue(v.valid)
        n = int(self.sql("SELECT max(seq) FROM pv_audit"))
        self.assertGreaterEqual(v.entries_checked, n)
        self.assertEqual(len(v.head_hash), 64)
        h = hashlib.sha256(g.encode()).hexdigest()
        seq = int(self.sql("SELECT max(seq) FROM pv_audit WHERE subject_hash = '%s' AND action = "
                           "'consent.read'" % h))
        self.assertEqual(self.sql("SELECT actor_id FROM pv_audit WHERE seq = %d" % seq), "staff-9")
        # the table refuses changes
        with self.assertRaises(RuntimeError):
            self.sql("UPDATE pv_audit SET detail = 'x' WHERE seq = %d" % seq)
        # a change behind the trigger's back is found, at that entry
        old = self.sql("SELECT actor_id FROM pv_audit WHERE seq = %d" % seq)
        self.sql("SET session_replication_role = replica; UPDATE pv_audit SET actor_id = "
                 "'someone-else' WHERE seq = %d" % seq)
        try:
            v = self.rpc("VerifyAuditLog", self.pb.VerifyAuditLogRequest())
            self.assertFalse(v.valid)
            self.assertEqual(v.first_invalid_sequence, seq)
            self.assertEqual(v.entries_checked, seq - 1)
            # a range that ends before it is still valid
            if seq > 1:
                ok = self.rpc("VerifyAuditLog", self.pb.VerifyAuditLogRequest(
                    from_sequence=1, to_sequence=seq - 1))
                self.assertTrue(ok.valid)
        finally:
            self.sql("SET session_replication_role = replica; UPDATE pv_audit SET actor_id = "
                     "'%s' WHERE seq = %d" % (old, seq))
        self.assertTrue(self.rpc("VerifyAuditLog", self.pb.VerifyAuditLogRequest()).valid)
        # a deleted entry (one with a successor: a cut-off tail is what head_hash, anchored
        # elsewhere, is for) breaks the chain too
        seq = int(self.sql("SELECT max(seq) FROM pv_audit WHERE subject_hash = '%s' AND action = "
                           "'consent.updated'" % h))
        self.assertLess(seq, int(self.sql("SELECT max(seq) FROM pv_audit")))
        row = self.sql("SELECT seq, at, actor_type, actor_id, action, subject_hash, request_id, "
                       "detail, prev_hash, hash FROM pv_audit WHERE seq = %d" % seq)
        self.sql("SET session_replication_role = replica; DELETE FROM pv_audit WHERE seq = %d"
                 % seq)
        try:
            v = self.rpc("VerifyAuditLog", self.pb.VerifyAuditLogRequest())
            self.assertFalse(v.valid)
            self.assertEqual(v.first_invalid_sequence, seq)
        finally:
            f = row.split("|")
            self.sql("INSERT INTO pv_audit VALUES (%s, '%s', %s, '%s', '%s', '%s', '%s', '%s', "
                     "'%s', '%s')" % tuple(f))
        self.assertTrue(self.rpc("VerifyAuditLog", self.pb.VerifyAuditLogRequest()).valid)
        self.assertRpcError("PERMISSION_DENIED", self.rpc, "VerifyAuditLog",
                            self.pb.VerifyAuditLogRequest(),
                            hmtest.auth_md("staff-1", roles=("staff",)))

    # -- replicas

    def test_two_replicas_work_each_request_and_lapse_once(self):
        r2 = hmtest.Daemon("privacyd", self.d.exe, workers=2, database=self.d.db,
                           label=hmtest.test_name() + "-replica")
        r2.extra_env.update(privacyd_env(self.d, "privacyd"))
        r2.start()
        try:
            g = str(uuid.uuid4())
            soon = datetime.datetime.utcnow() + datetime.timedelta(seconds=1)
            guests = [str(uuid.uuid4()) for _ in range(6)]
            for x in guests:
                self.update(x, [(ANALYTICS, GRANTED, soon)], d=r2 if x < g else None)
            rids = [self.export(g, d=r2 if i % 2 else None).request.request_id
                    for i in range(10)]
            for rid in rids:
                self.wait_request(rid, lambda q: q.status == COMPLETED)
            ids = ",".join("'%s'" % r for r in rids)
            self.assertEqual(self.sql("SELECT count(*) FROM pv_audit WHERE action = "
                                      "'export.completed' AND request_id IN (%s)" % ids), "10")
            self.assertEqual(self.sql("SELECT count(*) FROM outbox WHERE event_type = "
                                      "'guest.data.exported' AND subject = '%s'" % g), "10")
            self.assertEqual(self.sql("SELECT count(*) FROM pv_exports WHERE request_id IN (%s)"
                                      % ids), "10")
            until = time.monotonic() + 8
            q = ("SELECT count(*) FROM pv_consent_history WHERE source = 6 AND guest_id IN (%s)"
                 % ",".join("'%s'" % x for x in guests))
            while self.sql(q) != "6":
                self.assertLess(time.monotonic(), until, "lapses not recorded")
                time.sleep(0.2)
            time.sleep(2.5)  # both replicas' expiry tasks ran again: still one lapse per guest
            self.assertEqual(self.sql(q), "6")
            self.assertTrue(self.rpc("VerifyAuditLog", self.pb.VerifyAuditLogRequest()).valid)
        finally:
            self.assertEqual(r2.stop(), 0)
            r2.close()

    # -- bad input, authorization

    def test_bad_input_and_authorization(self):
        g = str(uuid.uuid4())
        pb = self.pb

        def invalid(method, req, field, md=None):
            e = self.assertRpcError("INVALID_ARGUMENT", self.rpc, method, req, md)
            self.assertIn(field, e.details())

        invalid("GetConsent", pb.GetConsentRequest(guest_id="nope"), "guest_id")
        invalid("GetConsent", pb.GetConsentRequest(guest_id=g, purposes=[9]), "purposes")
        base = dict(guest_id=g, source=APP, notice_version="v1")
        invalid("UpdateConsent", pb.UpdateConsentRequest(**base), "changes")
        invalid("UpdateConsent", pb.UpdateConsentRequest(
            changes=[{"purpose": 1, "status": 1}, {"purpose": 1, "status": 2}], **base),
            "purpose")
        invalid("UpdateConsent", pb.UpdateConsentRequest(
            changes=[{"purpose": 1, "status": 0}], **base), "status")
        invalid("UpdateConsent", pb.UpdateConsentRequest(
            changes=[{"purpose": 0, "status": 1}], **base), "purpose")
        invalid("UpdateConsent", pb.UpdateConsentRequest(
            changes=[{"purpose": 1, "status": 2, "expires_at": {"seconds": 4102444800}}],
            **base), "expires_at")
        invalid("UpdateConsent", pb.UpdateConsentRequest(
            changes=[{"purpose": 1, "status": 1, "expires_at": {"seconds": 1000}}], **base),
            "expires_at")
        invalid("UpdateConsent", pb.UpdateConsentRequest(
            guest_id=g, source=APP, changes=[{"purpose": 1, "status": 1}]), "notice_version")
        invalid("UpdateConsent", pb.UpdateConsentRequest(
            guest_id=g, source=EXPIRY, notice_version="v", changes=[{"purpose": 1,
                                                                     "status": 3}]), "source")
        # a guest cannot claim to be staff
        invalid("UpdateConsent", pb.UpdateConsentRequest(
            guest_id=g, source=STAFF_SRC, notice_version="v",
            changes=[{"purpose": 1, "status": 1}]), "source", md=self.guest_md(g))
        invalid("ListConsentHistory", pb.ListConsentHistoryRequest(
            guest_id=g, page={"page_token": "abc"}), "page_token")
        invalid("RequestDataExport", pb.RequestDataExportRequest(guest_id=g, categories=[42]),
                "categories")
        invalid("RequestDataExport", pb.RequestDataExportRequest(guest_id=g, jurisdiction=7),
                "jurisdiction")
        invalid("RequestErasure", pb.RequestErasureRequest(guest_id=g, mode=5), "mode")
        invalid("GetDataExport", pb.GetDataExportRequest(guest_id=g, request_id="x",
                                                         verification_code="c"), "request_id")
        invalid("GetDataExport", pb.GetDataExportRequest(guest_id=g,
                                                         request_id=str(uuid.uuid4())),
                "verification_code")
        invalid("GetRequestStatus", pb.GetRequestStatusRequest(request_id="42"), "request_id")
        invalid("ListRequests", pb.ListRequestsRequest(statuses=[9]), "statuses")
        invalid("VerifyAuditLog", pb.VerifyAuditLogRequest(from_sequence=5, to_sequence=2),
                "to_sequence")
        self.assertRpcError("NOT_FOUND", self.rpc, "GetRequestStatus",
                            pb.GetRequestStatusRequest(request_id=str(uuid.uuid4())))
        self.assertRpcError("NOT_FOUND", self.rpc, "GetDataExport", pb.GetDataExportRequest(
            guest_id=g, request_id=str(uuid.uuid4()), verification_code="abc"))
        # guests: only themselves
        other = str(uuid.uuid4())
        self.assertRpcError("PERMISSION_DENIED", self.consent, other, md=self.guest_md(g))
        self.assertRpcError("PERMISSION_DENIED", self.rpc, "RequestErasure",
                            pb.RequestErasureRequest(guest_id=other), self.guest_md(g))
        self.assertRpcError("PERMISSION_DENIED", self.rpc, "ListRequests",
                            pb.ListRequestsRequest(), self.guest_md(g))
        mine = self.export(g).request.request_id
        self.assertRpcError("NOT_FOUND", self.rpc, "GetRequestStatus",
                            pb.GetRequestStatusRequest(request_id=mine), self.guest_md(other))
        self.assertEqual(self.rpc("GetRequestStatus", pb.GetRequestStatusRequest(
            request_id=mine), self.guest_md(g)).request.guest_id, g)
        self.assertRpcError("UNAUTHENTICATED", self.rpc, "GetConsent",
                            pb.GetConsentRequest(guest_id=g), [])
        # the data-subject interface is for services only
        self.assertRpcError("PERMISSION_DENIED", lambda: self.d.channel().unary_unary(
            "/hospitality.privacy.v1.DataSubjectService/ExportSubjectData",
            request_serializer=pb.ExportSubjectDataRequest.SerializeToString,
            response_deserializer=pb.ExportSubjectDataResponse.FromString)(
                pb.ExportSubjectDataRequest(guest_id=g), metadata=self.guest_md(g), timeout=5))
        # staff list with filters and paging
        staff = hmtest.auth_md("staff-1", roles=("staff",))
        for _ in range(3):
            self.export(g)
        p1 = self.rpc("ListRequests", pb.ListRequestsRequest(guest_id=g, type=1,
                                                             page={"page_size": 2}), staff)
        self.assertEqual(len(p1.requests), 2)
        p2 = self.rpc("ListRequests", pb.ListRequestsRequest(
            guest_id=g, type=1, page={"page_size": 2, "page_token": p1.page.next_page_token}),
            staff)
        ids = [x.request_id for x in list(p1.requests) + list(p2.requests)]
        self.assertEqual(len(ids), 4)
        self.assertEqual(len(set(ids)), 4)
        self.assertIn(mine, ids)


if __name__ == "__main__":
    hmtest.main()
