"""
Integration: bookingd against real Postgres and Redis, with tools/partnersim (the stand-in for
the inventory, pricing and payment partners) as its partners (issue 6).

- 64 concurrent requests for overlapping slots of one item -> exactly one booking, 63
  ALREADY_EXISTS naming the conflicting window; one hold left at the partner;
- 64 concurrent retries with one idempotency key -> one booking, 64 identical answers (a retry
  that meets the running first request gets ABORTED and retries, as clients do);
- a key reused with another body -> ALREADY_EXISTS; a retry returns the original error;
- every illegal transition refused (FAILED_PRECONDITION naming both states), history with
  actor and reason; stale version -> ABORTED;
- authorization (guests their own, staff their venues), PII encrypted at rest, internal notes
  hidden from guests; look-ups by reference; lists; availability (cached, invalidated on
  change); events in the outbox; business metrics; export and erasure.

This module also holds the harness the other bookingd tests import (Stack).
"""
import concurrent.futures
import datetime
import os
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402

SVC = "/hospitality.booking.v1.BookingService/"
DSS = "/hospitality.privacy.v1.DataSubjectService/"
ADMIN = "/hm.tools.partnersim.v1.PartnerSimAdmin/"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

# hospitality.common.v1.BookingStatus
PENDING, CONFIRMED, CHECKED_IN, COMPLETED, CANCELLED, NO_SHOW, EXPIRED = range(1, 8)
RESTAURANT, HOTEL = 2, 1


def partnersim_pb2():
    """partnersim's admin API module, generated once from tools/partnersim/partnersim.proto."""
    path = os.path.abspath(os.path.join(ROOT, "tools", "partnersim", "partnersim.proto"))

    def run(out):
        hmtest._protoc(["--proto_path=" + os.path.dirname(path), "--python_out=" + out,
                        "partnersim.proto"])

    hmtest._generate("partnersim", [path], run)
    import importlib

    return importlib.import_module("partnersim_pb2")


class Stack:
    """partnersim and bookingd, each with its own database; bookingd's partners point at
    partnersim (HM_INVENTORY_ADDR, HM_PRICING_ADDR, HM_PAYMENT_ADDR)."""

    def __init__(self, booking_env=None, partner_env=None, workers=8):
        hmtest.project_protos()
        from hospitality.booking.v1 import booking_pb2
        from hospitality.common.v1 import common_pb2
        from hospitality.events.v1 import booking_events_pb2, events_pb2
        from hospitality.partner.v1 import partner_pb2
        from hospitality.privacy.v1 import privacy_pb2

        self.pb, self.common, self.ev, self.bev = booking_pb2, common_pb2, events_pb2, booking_events_pb2
        self.partner, self.privacy = partner_pb2, privacy_pb2
        self.ps_pb = partnersim_pb2()
        ps_exe = os.environ["HM_TEST_PARTNERSIM_EXE"]
        self.ps = hmtest.Daemon("partnersim", ps_exe, env=dict(partner_env or {}),
                                workers=workers).start()
        self.booking_env = {
            "HM_INVENTORY_ADDR": self.ps.addr,
            "HM_PRICING_ADDR": self.ps.addr,
            "HM_PAYMENT_ADDR": self.ps.addr,
            "HM_SERVICE_TOKEN": hmtest.token("bookingd", roles=("service",), ttl=86400),
            "HM_BOOKING_PARTNER_TIMEOUT": "3s",
            # fixed for the stack: a restarted bookingd or a second replica reads the same PII
            "HM_PII_KEYS": "k1:" + hmtest.random_hex(),
            "HM_PII_INDEX_KEY": hmtest.random_hex(),
        }
        self.booking_env.update(booking_env or {})
        name, exe = hmtest.daemon_under_test()
        self.exe = exe
        self.workers = workers
        self.bk = hmtest.Daemon(name, exe, env=self.booking_env, workers=workers).start()
        self.admin = hmtest.auth_md()

    def restart_bookingd(self, kill=False):
        """Stops bookingd (SIGKILL when kill) and starts a new one on the same database."""
        import signal

        db = self.bk.db
        if kill:
            self.bk.send_signal(signal.SIGKILL)
            self.bk.wait(10)
        else:
            self.bk.stop()
        env = dict(self.bk.extra_env)
        self.bk = hmtest.Daemon("bookingd", self.exe, env=env, workers=self.workers,
                                database=db).start()
        return self.bk

    def close(self):
        """Stops both (a clean drain, and no leak under LSan: exit status 0) and drops their
        databases."""
        status = {}
        for d in (getattr(self, "bk", None), getattr(self, "ps", None)):
            if d is None:
                continue
            try:
                if d.alive():
                    status[d.name] = d.stop()
            finally:
                d.close()
        assert all(v == 0 for v in status.values()), status

    # -- calls

    def rpc(self, method, req, resp_name, md=None, timeout=15, module=None):
        mod = module or self.pb
        fn = self.bk.channel().unary_unary(
            SVC + method, request_serializer=type(req).SerializeToString,
            response_deserializer=getattr(mod, resp_name).FromString)
        return fn(req, metadata=md if md is not None else self.admin, timeout=timeout)

    def raw(self, method, req, md=None, timeout=15):
        """The response bytes, undecoded (to compare answers byte for byte)."""
        fn = self.bk.channel().unary_unary(
            SVC + method, request_serializer=type(req).SerializeToString,
            response_deserializer=lambda b: b)
        return fn(req, metadata=md if md is not None else self.admin, timeout=timeout)

    def dss(self, method, req, resp_name, md=None):
        fn = self.bk.channel().unary_unary(
            DSS + method, request_serializer=type(req).SerializeToString,
            response_deserializer=getattr(self.privacy, resp_name).FromString)
        return fn(req, metadata=md or hmtest.auth_md("privacyd", roles=("service",)), timeout=15)

    def faults(self, *faults):
        """Replaces partnersim's injected faults: faults("payment:down", ...)."""
        req = self.ps_pb.SetFaultsRequest()
        for f in faults:
            head, _, opts = f.partition(":")
            svc, _, method = head.partition(".")
            fault = req.faults.add(service=svc, method=method)
            for o in filter(None, opts.split(",")):
                k, _, v = o.partition("=")
                if k == "latency":
                    fault.latency_ms = int(v)
                elif k == "after":
                    fault.latency_after_ms = int(v)
                elif k == "error":
                    fault.error_rate = float(v)
                elif k == "down":
                    fault.down = True
                elif k == "hang":
                    fault.hang = True
        fn = self.ps.channel().unary_unary(
            ADMIN + "SetFaults", request_serializer=type(req).SerializeToString,
            response_deserializer=self.ps_pb.FaultsResponse.FromString)
        return fn(req, metadata=self.admin, timeout=10)

    def create_req(self, guest=None, venue=None, item="table-1", day=None, hour=19, minute=0,
                   duration=90, party=2, key="", vtype=RESTAURANT, nights=0, **kw):
        d = day or (datetime.date.today() + datetime.timedelta(days=30))
        req = self.pb.CreateBookingRequest(
            guest_id=guest or str(uuid.uuid4()), guest_name="Ada Lovelace",
            guest_email="ada@example.com", guest_phone="+44 20 7946 0000",
            venue_id=venue or str(uuid.uuid4()), venue_type=vtype, inventory_item_id=item,
            booking_date=self.common.Date(year=d.year, month=d.month, day=d.day),
            party_size=party, idempotency_key=key, **kw)
        if vtype == HOTEL:
            req.nights = nights or 1
        else:
            req.booking_time.CopyFrom(self.common.TimeOfDay(hours=hour, minutes=minute))
            req.duration_minutes = duration
        return req

    def create(self, md=None, **kw):
        return self.rpc("CreateBooking", self.create_req(**kw), "CreateBookingResponse",
                        md).booking

    def get(self, booking_id, history=False, md=None):
        return self.rpc("GetBooking", self.pb.GetBookingRequest(
            booking_id=booking_id, include_history=history), "GetBookingResponse", md)

    def status(self, b, to, version=None, reason="", md=None, key=""):
        return self.rpc("UpdateBookingStatus", self.pb.UpdateBookingStatusRequest(
            booking_id=b.booking_id, status=to, expected_version=version or b.version,
            reason=reason, idempotency_key=key), "UpdateBookingStatusResponse",
            md or hmtest.auth_md("staff-1", roles=("staff",), venues=(b.venue_id,)))

    def cancel(self, b, version=None, reason="changed plans", md=None, key=""):
        return self.rpc("CancelBooking", self.pb.CancelBookingRequest(
            booking_id=b.booking_id, expected_version=version or b.version, reason=reason,
            idempotency_key=key), "CancelBookingResponse", md)

    # -- state

    def bsql(self, q):
        return hmtest.psql(q, dbname=self.bk.db).strip()

    def psql(self, q):
        return hmtest.psql(q, dbname=self.ps.db).strip()

    def held(self, booking_id):
        return int(self.psql("SELECT count(*) FROM ps_reservations WHERE booking_id = '%s' AND "
                             "status = 1" % booking_id))

    def events(self, etype, booking_id=None):
        """Decoded payloads of outbox events of a type (optionally of one booking)."""
        rows = self.bsql("SELECT encode(envelope, 'hex') FROM outbox WHERE event_type = '%s' "
                         "ORDER BY id" % etype)
        cls = {"booking.created": self.bev.BookingCreated, "booking.updated": self.bev.BookingUpdated,
               "booking.cancelled": self.bev.BookingCancelled,
               "booking.status_changed": self.bev.BookingStatusChanged,
               "booking.confirmed": self.bev.BookingConfirmed,
               "booking.checked_in": self.bev.BookingCheckedIn,
               "booking.completed": self.bev.BookingCompleted,
               "booking.expired": self.bev.BookingExpired}[etype]
        out = []
        for line in filter(None, rows.splitlines()):
            env = self.ev.Event.FromString(bytes.fromhex(line))
            p = cls.FromString(env.payload)
            if booking_id is None or p.booking.booking_id == booking_id:
                out.append(p)
        return out

    def wait_for(self, pred, timeout=20, what="condition"):
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            v = pred()
            if v:
                return v
            time.sleep(0.1)
        raise AssertionError("timed out waiting for " + what)


def redis_get(key):
    """GET key from the test Redis (None when absent)."""
    import socket

    host, port = hmtest.require_env().redis_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as c:
        k = key.encode()
        c.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k))
        f = c.makefile("rb")
        line = f.readline()
        if line.startswith(b"$-1"):
            return None
        n = int(line[1:])
        return f.read(n).decode()


def reason(err):
    """ErrorInfo.reason of an RpcError."""
    return hmtest.error_details(err)[1].reason


def code(err):
    return hmtest.status_name(err.code()) if hasattr(err, "code") else None


class BookingCore(hmtest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Stack()
        cls.grpc = hmtest.grpc_mod()

    @classmethod
    def tearDownClass(cls):
        cls.s.close()

    def assertRpcError(self, want, fn, *a, **kw):
        with self.assertRaises(self.grpc.RpcError) as cm:
            fn(*a, **kw)
        self.assertEqual(cm.exception.code().name, want, cm.exception.details())
        return cm.exception

    # -- no double booking

    def test_64_concurrent_overlapping_requests_make_one_booking(self):
        s = self.s
        venue = str(uuid.uuid4())
        reqs = [s.create_req(venue=venue, item="table-7", hour=19 + i // 60, minute=i % 60)
                for i in range(64)]
        barrier = threading.Barrier(64)

        def one(req):
            barrier.wait()
            try:
                return s.rpc("CreateBooking", req, "CreateBookingResponse", timeout=60).booking
            except self.grpc.RpcError as e:
                return e

        with concurrent.futures.ThreadPoolExecutor(64) as ex:
            results = list(ex.map(one, reqs))
        ok = [r for r in results if not isinstance(r, self.grpc.RpcError)]
        errs = [r for r in results if isinstance(r, self.grpc.RpcError)]
        self.assertEqual(len(ok), 1, [e.details() for e in errs][:3])
        self.assertEqual({e.code().name for e in errs}, {"ALREADY_EXISTS"})
        for e in errs:  # the conflicting window is named
            self.assertIn("table-7", e.details())
            self.assertRegex(e.details(), r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, \d{4}-")
            self.assertEqual(reason(e), "BOOKING_CONFLICT")
        self.assertEqual(s.bsql("SELECT count(*) FROM bk_bookings WHERE venue_id = '%s'" % venue),
                         "1")
        # the partner holds exactly the winner's reservation; every loser's hold was released
        s.wait_for(lambda: s.psql("SELECT count(*) FROM ps_reservations WHERE venue_id = '%s' "
                                  "AND status = 1" % venue) == "1", what="losers' holds released")
        self.assertEqual(s.held(ok[0].booking_id), 1)
        self.assertEqual(s.bsql("SELECT count(*) FROM bk_sagas WHERE state = 'running'"), "0")

    def test_exclusion_constraint_holds_without_the_code(self):
        s = self.s
        b = s.create(item="room-x")
        # a direct insert overlapping b is refused by the database itself
        with self.assertRaises(RuntimeError) as cm:
            hmtest.psql(
            "INSERT INTO bk_bookings (booking_id, reference, guest_id, venue_id, venue_type, "
            "time_zone, booking_date, booking_time, period, party_size, status, currency, "
            "inventory_item_id, provisional) SELECT gen_random_uuid(), 'BR-X', guest_id, "
            "venue_id, 2, 'UTC', booking_date, booking_time, tstzrange(lower(period) + interval "
            "'10 minutes', upper(period) + interval '10 minutes'), 2, 1, 'EUR', "
            "inventory_item_id, false FROM bk_bookings WHERE booking_id = '%s'" % b.booking_id,
            dbname=s.bk.db)
        self.assertIn("bk_no_overlap", str(cm.exception))
        # half-open: a slot starting at the end of b is fine
        nxt = s.create(venue=b.venue_id, item="room-x", hour=20, minute=30)
        self.assertEqual(nxt.status, PENDING)

    # -- idempotency

    def test_64_concurrent_retries_one_key_one_booking_identical_answers(self):
        s = self.s
        req = s.create_req(key="k-" + uuid.uuid4().hex)
        barrier = threading.Barrier(64)
        aborted = []

        def one(_):
            barrier.wait()
            while True:
                try:
                    return s.raw("CreateBooking", req, timeout=60)
                except self.grpc.RpcError as e:
                    if e.code().name != "ABORTED":
                        return e
                    self.assertEqual(reason(e), "IDEMPOTENCY_KEY_IN_USE")
                    aborted.append(1)
                    time.sleep(0.02)

        with concurrent.futures.ThreadPoolExecutor(64) as ex:
            answers = list(ex.map(one, range(64)))
        self.assertTrue(all(isinstance(a, bytes) for a in answers), answers[:2])
        self.assertEqual(len(set(answers)), 1)
        b = s.pb.CreateBookingResponse.FromString(answers[0]).booking
        self.assertEqual(s.bsql("SELECT count(*) FROM bk_bookings WHERE venue_id = '%s'"
                                % req.venue_id), "1")
        self.assertEqual(b.idempotency_key, req.idempotency_key)
        self.assertEqual(s.psql("SELECT count(*) FROM ps_reservations WHERE venue_id = '%s'"
                                % req.venue_id), "1")
        self.assertEqual(s.psql("SELECT count(*) FROM ps_intents WHERE booking_id = '%s'"
                                % b.booking_id), "1")
        hmtest.log("idempotency: %d ABORTED (in use) answers before the stored one"
                   % len(aborted))

    def test_key_reused_with_another_body_is_already_exists(self):
        s = self.s
        key = "k-" + uuid.uuid4().hex
        req = s.create_req(key=key)
        first = s.rpc("CreateBooking", req, "CreateBookingResponse").booking
        other = s.create_req(key=key, venue=req.venue_id, hour=12)
        e = self.assertRpcError("ALREADY_EXISTS", s.rpc, "CreateBooking", other,
                                "CreateBookingResponse")
        self.assertEqual(reason(e), "IDEMPOTENCY_KEY_REUSED")
        again = s.rpc("CreateBooking", req, "CreateBookingResponse").booking
        self.assertEqual(again, first)
        # the same key from another caller is another key: no replay, the slot is taken
        md = hmtest.auth_md("other-admin")
        e = self.assertRpcError("ALREADY_EXISTS", s.rpc, "CreateBooking", req,
                                "CreateBookingResponse", md)
        self.assertEqual(reason(e), "BOOKING_CONFLICT")
        self.assertIn(first.booking_id, e.details())

    def test_retry_returns_the_original_error(self):
        s = self.s
        b = s.create(item="t-err")
        key = "k-" + uuid.uuid4().hex
        req = s.create_req(venue=b.venue_id, item="t-err", minute=30, key=key)
        e1 = self.assertRpcError("ALREADY_EXISTS", s.rpc, "CreateBooking", req,
                                 "CreateBookingResponse")
        s.cancel(b)  # the slot is free now, but the key's outcome stands
        e2 = self.assertRpcError("ALREADY_EXISTS", s.rpc, "CreateBooking", req,
                                 "CreateBookingResponse")
        self.assertEqual(e1.details(), e2.details())

    # -- state machine and versions

    def make_in_state(self, state):
        s = self.s
        b = s.create()
        path = {PENDING: [], CONFIRMED: [CONFIRMED], CHECKED_IN: [CONFIRMED, CHECKED_IN],
                COMPLETED: [CONFIRMED, COMPLETED], NO_SHOW: [CONFIRMED, NO_SHOW]}
        if state == CANCELLED:
            return s.cancel(b).booking
        for to in path[state]:
            b = s.status(b, to, reason="to %d" % to).booking
        return b

    def test_every_illegal_transition_is_refused(self):
        s = self.s
        legal = {PENDING: {CONFIRMED, CANCELLED, EXPIRED},
                 CONFIRMED: {CHECKED_IN, CANCELLED, COMPLETED, NO_SHOW},
                 CHECKED_IN: {COMPLETED, CANCELLED}}
        names = {1: "PENDING", 2: "CONFIRMED", 3: "CHECKED_IN", 4: "COMPLETED", 5: "CANCELLED",
                 6: "NO_SHOW", 7: "EXPIRED"}
        refused = 0
        for frm in (PENDING, CONFIRMED, CHECKED_IN, COMPLETED, CANCELLED, NO_SHOW):
            b = self.make_in_state(frm)
            self.assertEqual(b.status, frm)
            for to in range(1, 8):
                if to in legal.get(frm, set()):
                    continue
                if to == CANCELLED:
                    e = self.assertRpcError("FAILED_PRECONDITION", s.cancel, b)
                else:
                    e = self.assertRpcError("FAILED_PRECONDITION", s.status, b, to)
                self.assertEqual(reason(e), "ILLEGAL_TRANSITION")
                self.assertIn(names[frm], e.details())
                self.assertIn(names[to], e.details())
                refused += 1
            self.assertEqual(s.get(b.booking_id).booking.version, b.version)  # unchanged
        self.assertEqual(refused, 3 * 4 + 3 * 7)

    def test_history_records_actor_and_reason(self):
        s = self.s
        b = s.create()
        b = s.status(b, CONFIRMED, reason="card ok").booking
        b = s.status(b, CHECKED_IN, reason="arrived").booking
        b = s.status(b, COMPLETED, reason="left").booking
        h = s.get(b.booking_id, history=True).status_history
        self.assertEqual([(c.from_status, c.to_status) for c in h],
                         [(0, PENDING), (PENDING, CONFIRMED), (CONFIRMED, CHECKED_IN),
                          (CHECKED_IN, COMPLETED)])
        self.assertEqual([c.reason for c in h], ["created", "card ok", "arrived", "left"])
        self.assertEqual(h[1].changed_by.id, "staff-1")
        self.assertEqual(h[1].changed_by.type, 2)  # ACTOR_TYPE_STAFF
        self.assertEqual(b.version, 4)
        self.assertTrue(b.confirmed_at.seconds and b.checked_in_at.seconds and
                        b.completed_at.seconds)
        # the completed booking's hold is released at the partner
        s.wait_for(lambda: s.held(b.booking_id) == 0, what="hold released on completion")
        types = [e.to_status for e in s.events("booking.status_changed", b.booking_id)]
        self.assertEqual(types, [CONFIRMED, CHECKED_IN, COMPLETED])
        self.assertEqual(len(s.events("booking.confirmed", b.booking_id)), 1)
        self.assertEqual(len(s.events("booking.checked_in", b.booking_id)), 1)
        self.assertEqual(len(s.events("booking.completed", b.booking_id)), 1)

    def test_stale_version_is_aborted(self):
        s = self.s
        b = s.create()
        b2 = s.status(b, CONFIRMED).booking
        self.assertEqual(b2.version, b.version + 1)
        e = self.assertRpcError("ABORTED", s.status, b, CHECKED_IN, version=b.version)
        self.assertEqual(reason(e), "VERSION_CONFLICT")
        self.assertRpcError("ABORTED", s.cancel, b, version=b.version)
        upd = s.pb.UpdateBookingRequest(booking_id=b.booking_id, expected_version=b.version,
                                        booking=s.pb.Booking(special_requests="window"))
        upd.update_mask.paths.append("special_requests")
        self.assertRpcError("ABORTED", s.rpc, "UpdateBooking", upd, "UpdateBookingResponse")
        upd.expected_version = b2.version
        b3 = s.rpc("UpdateBooking", upd, "UpdateBookingResponse").booking
        self.assertEqual((b3.version, b3.special_requests), (b2.version + 1, "window"))
        self.assertEqual(s.events("booking.updated", b.booking_id)[0].changed_fields,
                         ["special_requests"])

    # -- cancellation

    def test_cancel_releases_and_refunds(self):
        s = self.s
        b = s.create()
        self.assertEqual(s.held(b.booking_id), 1)
        # the guest paid (the stand-in's state, as a payment provider would report it)
        s.psql("UPDATE ps_intents SET status = 4 WHERE payment_intent_id = '%s'"
               % b.payment_intent_id)
        guest = hmtest.auth_md(b.guest_id, roles=("guest",))
        r = s.cancel(b, md=guest, reason="flight cancelled")
        self.assertEqual(r.booking.status, CANCELLED)
        self.assertEqual(r.booking.cancellation_reason, "flight cancelled")
        self.assertEqual(r.booking.cancelled_by.id, b.guest_id)
        self.assertTrue(r.refund_id)
        self.assertEqual(r.refund_amount.amount_minor, b.total_price.amount_minor)
        self.assertEqual(r.booking.payment_status, 8)  # REFUNDED
        self.assertEqual(s.held(b.booking_id), 0)
        self.assertEqual(s.psql("SELECT amount FROM ps_refunds WHERE payment_intent_id = '%s'"
                                % b.payment_intent_id), str(b.total_price.amount_minor))
        ev = s.events("booking.cancelled", b.booking_id)
        self.assertEqual(len(ev), 1)
        self.assertEqual(ev[0].previous_status, PENDING)
        # an unpaid intent is cancelled instead
        b2 = s.create()
        s.cancel(b2)
        self.assertEqual(s.psql("SELECT status FROM ps_intents WHERE payment_intent_id = '%s'"
                                % b2.payment_intent_id), "6")

    # -- authorization and personal data

    def test_authorization(self):
        s = self.s
        guest = str(uuid.uuid4())
        gmd = hmtest.auth_md(guest, roles=("guest",))
        b = s.create(guest=guest, md=gmd)
        other = hmtest.auth_md(str(uuid.uuid4()), roles=("guest",))
        self.assertRpcError("PERMISSION_DENIED", s.get, b.booking_id, md=other)
        self.assertRpcError("PERMISSION_DENIED", s.create, guest=guest, md=other)
        staff_here = hmtest.auth_md("s1", roles=("staff",), venues=(b.venue_id,))
        staff_there = hmtest.auth_md("s2", roles=("staff",), venues=(str(uuid.uuid4()),))
        self.assertEqual(s.get(b.booking_id, md=staff_here).booking.booking_id, b.booking_id)
        self.assertRpcError("PERMISSION_DENIED", s.get, b.booking_id, md=staff_there)
        self.assertRpcError("PERMISSION_DENIED", s.status, b, CONFIRMED, md=staff_there)
        self.assertRpcError("PERMISSION_DENIED", s.status, b, CONFIRMED, md=gmd)  # staff only
        # internal notes: staff write them, guests never see them
        upd = s.pb.UpdateBookingRequest(booking_id=b.booking_id, expected_version=b.version,
                                        booking=s.pb.Booking(internal_notes="VIP"))
        upd.update_mask.paths.append("internal_notes")
        self.assertRpcError("PERMISSION_DENIED", s.rpc, "UpdateBooking", upd,
                            "UpdateBookingResponse", gmd)
        s.rpc("UpdateBooking", upd, "UpdateBookingResponse", staff_here)
        self.assertEqual(s.get(b.booking_id, md=staff_here).booking.internal_notes, "VIP")
        self.assertEqual(s.get(b.booking_id, md=gmd).booking.internal_notes, "")
        lst = s.rpc("ListGuestBookings", s.pb.ListGuestBookingsRequest(guest_id=guest),
                    "ListGuestBookingsResponse", gmd)
        self.assertEqual([x.booking_id for x in lst.bookings], [b.booking_id])
        self.assertRpcError("PERMISSION_DENIED", s.rpc, "ListGuestBookings",
                            s.pb.ListGuestBookingsRequest(guest_id=guest),
                            "ListGuestBookingsResponse", other)
        self.assertRpcError("PERMISSION_DENIED", s.rpc, "ListVenueBookings",
                            s.pb.ListVenueBookingsRequest(venue_id=b.venue_id),
                            "ListVenueBookingsResponse", staff_there)

    def test_personal_data_encrypted_at_rest(self):
        s = self.s
        b = s.create()
        self.assertEqual(b.guest_email, "ada@example.com")
        raw = s.bsql("SELECT encode(guest_name, 'escape') || encode(guest_email, 'escape') || "
                     "encode(guest_phone, 'escape') FROM bk_bookings WHERE booking_id = '%s'"
                     % b.booking_id)
        for plain in ("Ada", "ada@example.com", "7946"):
            self.assertNotIn(plain, raw)
        # stored idempotent responses hold personal data: encrypted too
        r = s.rpc("CreateBooking", s.create_req(key="pii-" + uuid.uuid4().hex),
                  "CreateBookingResponse").booking
        raw = s.bsql("SELECT encode(response, 'escape') FROM bk_idempotency WHERE booking_id = "
                     "'%s'" % r.booking_id)
        self.assertTrue(raw)
        self.assertNotIn("ada@example.com", raw)

    def test_validation(self):
        s = self.s
        for kw, field in [(dict(guest="nope"), "guest_id"), (dict(party=0), "party_size"),
                          (dict(venue="bad venue"), "venue_id"), (dict(hour=25), "booking_time"),
                          (dict(duration=5), "duration_minutes"),
                          (dict(day=datetime.date(2020, 1, 1)), "booking_date")]:
            req = s.create_req(**kw)
            e = self.assertRpcError("INVALID_ARGUMENT", s.rpc, "CreateBooking", req,
                                    "CreateBookingResponse")
            self.assertIn(field, e.details())
        req = s.create_req()
        req.guest_email = "not-an-email"
        self.assertRpcError("INVALID_ARGUMENT", s.rpc, "CreateBooking", req, "CreateBookingResponse")
        self.assertRpcError("NOT_FOUND", s.get, str(uuid.uuid4()))
        self.assertRpcError("INVALID_ARGUMENT", s.rpc, "GetBookingByReference",
                            s.pb.GetBookingByReferenceRequest(booking_reference="X"),
                            "GetBookingByReferenceResponse")

    # -- look-ups, lists, availability

    def test_reference_lookup_cached(self):
        s = self.s
        b = s.create()
        self.assertRegex(b.booking_reference, r"^BR-\d{8}-[A-Z0-9]{6}$")
        d = b.booking_date
        self.assertTrue(b.booking_reference.startswith("BR-%04d%02d%02d-" % (d.year, d.month, d.day)))
        r = s.rpc("GetBookingByReference", s.pb.GetBookingByReferenceRequest(
            booking_reference=b.booking_reference), "GetBookingByReferenceResponse").booking
        self.assertEqual(r.booking_id, b.booking_id)
        self.assertEqual(redis_get("hm:bookingd:ref:" + b.booking_reference), b.booking_id)
        self.assertRpcError("NOT_FOUND", s.rpc, "GetBookingByReference",
                            s.pb.GetBookingByReferenceRequest(booking_reference="BR-20240101-ZZZZZZ"),
                            "GetBookingByReferenceResponse")

    def test_lists(self):
        s = self.s
        guest, venue = str(uuid.uuid4()), str(uuid.uuid4())
        a = s.create(guest=guest, venue=venue, item="t1", hour=12)
        b = s.create(guest=guest, venue=venue, item="t1", hour=18)
        s.create(venue=venue, item="t2", hour=12)
        s.cancel(b)
        r = s.rpc("ListGuestBookings", s.pb.ListGuestBookingsRequest(guest_id=guest),
                  "ListGuestBookingsResponse")
        self.assertEqual([x.booking_id for x in r.bookings], [a.booking_id, b.booking_id])
        r = s.rpc("ListGuestBookings", s.pb.ListGuestBookingsRequest(
            guest_id=guest, statuses=[PENDING]), "ListGuestBookingsResponse")
        self.assertEqual([x.booking_id for x in r.bookings], [a.booking_id])
        staff = hmtest.auth_md("s", roles=("staff",), venues=(venue,))
        r = s.rpc("ListVenueBookings", s.pb.ListVenueBookingsRequest(
            venue_id=venue, page=s.common.PageRequest(page_size=2)), "ListVenueBookingsResponse",
            staff)
        self.assertEqual(len(r.bookings), 2)
        self.assertTrue(r.page.next_page_token)
        r2 = s.rpc("ListVenueBookings", s.pb.ListVenueBookingsRequest(
            venue_id=venue, page=s.common.PageRequest(page_size=2,
                                                      page_token=r.page.next_page_token)),
            "ListVenueBookingsResponse", staff)
        self.assertEqual(len(r2.bookings), 1)
        r = s.rpc("ListVenueBookings", s.pb.ListVenueBookingsRequest(
            venue_id=venue, inventory_item_id="t2"), "ListVenueBookingsResponse", staff)
        self.assertEqual(len(r.bookings), 1)

    def test_availability_cached_and_invalidated(self):
        s = self.s
        venue = str(uuid.uuid4())
        d = datetime.date.today() + datetime.timedelta(days=40)
        req = s.pb.CheckAvailabilityRequest(
            venue_id=venue, venue_type=RESTAURANT, inventory_item_id="t9",
            booking_date=s.common.Date(year=d.year, month=d.month, day=d.day),
            booking_time=s.common.TimeOfDay(hours=19), duration_minutes=60, party_size=4)
        a = s.rpc("CheckAvailability", req, "CheckAvailabilityResponse")
        self.assertTrue(a.available)
        self.assertEqual(a.capacity.total, 1000)
        self.assertFalse(a.price_estimate.defaulted)
        self.assertEqual(a.price_estimate.base_price.amount_minor, 2500 * 4)
        self.assertEqual(a.window.end_time.seconds - a.window.start_time.seconds, 3600)
        b = s.create(venue=venue, item="t9", day=d, hour=19, minute=30)
        a2 = s.rpc("CheckAvailability", req, "CheckAvailabilityResponse")
        self.assertFalse(a2.available)  # not the cached answer: the venue's change invalidated it
        self.assertEqual([c.booking_id for c in a2.conflicts], [b.booking_id])
        req.exclude_booking_id = b.booking_id
        self.assertTrue(s.rpc("CheckAvailability", req, "CheckAvailabilityResponse").available)

    def test_hotel_nights(self):
        s = self.s
        b = s.create(vtype=HOTEL, nights=3, item="room-101", party=2)
        self.assertEqual(b.nights, 3)
        self.assertEqual(b.booking_time.hours, 15)
        # 15:00 on day 0 to 11:00 on day 3 (UTC)
        self.assertEqual(b.end_time.seconds - b.start_time.seconds, 3 * 86400 - 4 * 3600)
        self.assertEqual(b.base_price.amount_minor, 2500 * 2 * 3)
        self.assertEqual(b.tax_amount.amount_minor, 2500 * 2 * 3 // 10)

    # -- events and metrics

    def test_created_event_and_metrics(self):
        s = self.s
        before = hmtest.metric(s.bk.metrics(), "bookingd_bookings_total", event="created",
                               venue_type="restaurant") or 0
        b = s.create(party=3, promotion_code="SAVE10")
        self.assertEqual(b.discount_amount.amount_minor, 2500 * 3 * 2 // 10)
        ev = s.events("booking.created", b.booking_id)
        self.assertEqual(len(ev), 1)
        e = ev[0].booking
        self.assertEqual((e.guest_id, e.venue_id, e.party_size, e.total_price.amount_minor,
                          e.start_time, e.end_time, e.status, e.version),
                         (b.guest_id, b.venue_id, 3, b.total_price.amount_minor, b.start_time,
                          b.end_time, PENDING, 1))
        env = s.bsql("SELECT encode(envelope, 'escape') FROM outbox WHERE event_type = "
                     "'booking.created' AND subject = '%s'" % b.guest_id)
        self.assertNotIn("ada@example.com", env)  # events carry ids, never personal data
        m = s.bk.metrics()
        self.assertEqual(hmtest.metric(m, "bookingd_bookings_total", event="created",
                                       venue_type="restaurant"), before + 1)
        self.assertGreater(hmtest.metric(m, "bookingd_partner_call_seconds_count",
                                         partner="inventory"), 0)
        self.assertGreater(hmtest.metric(m, "bookingd_booking_value_minor_total",
                                         venue_type="restaurant"), 0)

    # -- partnersim's faults at start

    def test_partnersim_faults_from_the_environment(self):
        s = self.s
        ps = hmtest.Daemon("partnersim", os.environ["HM_TEST_PARTNERSIM_EXE"],
                           env={"HM_PARTNERSIM_FAULTS": "pricing:down;inventory.Reserve:latency=50"},
                           label="partnersim-faults").start()
        try:
            fn = ps.channel().unary_unary(
                ADMIN + "GetFaults", request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=s.ps_pb.FaultsResponse.FromString)
            f = fn(s.ps_pb.GetFaultsRequest(), metadata=s.admin, timeout=10).faults
            self.assertEqual([(x.service, x.method, x.down, x.latency_ms) for x in f],
                             [("pricing", "", True, 0), ("inventory", "Reserve", False, 50)])
            quote = ps.channel().unary_unary(
                "/hospitality.partner.v1.PricingService/Quote",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=s.partner.QuoteResponse.FromString)
            with self.assertRaises(self.grpc.RpcError) as cm:
                quote(s.partner.QuoteRequest(venue_id="v"), metadata=s.admin, timeout=10)
            self.assertEqual(cm.exception.code().name, "UNAVAILABLE")
        finally:
            self.assertEqual(ps.stop(), 0)
            ps.close()
        bad = hmtest.Daemon("partnersim", os.environ["HM_TEST_PARTNERSIM_EXE"],
                            env={"HM_PARTNERSIM_FAULTS": "billing:down"}, label="partnersim-bad")
        try:
            bad.spawn()
            self.assertNotEqual(bad.wait(20), 0)  # refuses to start on a bad fault spec
        finally:
            bad.close()

    # -- data subject

    def test_export_and_erase(self):
        s = self.s
        import json

        guest = str(uuid.uuid4())
        b = s.create(guest=guest)
        s.status(b, CONFIRMED)
        s.rpc("GetBookingByReference", s.pb.GetBookingByReferenceRequest(
            booking_reference=b.booking_reference), "GetBookingByReferenceResponse")
        exp = s.dss("ExportSubjectData", s.privacy.ExportSubjectDataRequest(
            request_id="r1", guest_id=guest), "ExportSubjectDataResponse")
        sec = {x.section: x for x in exp.sections}
        rec = json.loads(sec["bookings"].records_json)
        self.assertEqual(rec[0]["guest_email"], "ada@example.com")
        self.assertEqual(rec[0]["booking_reference"], b.booking_reference)
        self.assertEqual(sec["booking_status_history"].record_count, 2)
        self.assertRpcError("PERMISSION_DENIED", s.dss, "ExportSubjectData",
                            s.privacy.ExportSubjectDataRequest(guest_id=guest),
                            "ExportSubjectDataResponse",
                            hmtest.auth_md(guest, roles=("guest",)))
        req = s.privacy.EraseSubjectDataRequest(request_id="erase-" + guest, guest_id=guest)
        r1 = s.dss("EraseSubjectData", req, "EraseSubjectDataResponse").receipt
        self.assertEqual({c.section: c.count for c in r1.anonymized}["bookings"], 1)
        r2 = s.dss("EraseSubjectData", req, "EraseSubjectDataResponse").receipt
        self.assertEqual(r1, r2)  # idempotent by request id
        self.assertEqual(r1.guest_id, guest)
        # the receipt is kept by the id's hash only: nothing names the guest any more
        kept = s.bsql("SELECT encode(receipt, 'hex') FROM bk_erasures WHERE guest_hash = "
                      "encode(sha256(convert_to('%s', 'UTF8')), 'hex')" % guest)
        kept = s.privacy.ErasureReceipt.FromString(bytes.fromhex(kept))
        self.assertEqual((kept.receipt_id, kept.guest_id), (r1.receipt_id, ""))
        self.assertIsNone(redis_get("hm:bookingd:ref:" + b.booking_reference))
        # accounting keeps the booking, without the person
        row = s.bsql("SELECT reference, total_price, guest_name IS NULL, guest_id::text <> '%s' "
                     "FROM bk_bookings WHERE booking_id = '%s'" % (guest, b.booking_id))
        self.assertEqual(row, "%s|%d|t|t" % (b.booking_reference, b.total_price.amount_minor))
        exp = s.dss("ExportSubjectData", s.privacy.ExportSubjectDataRequest(
            request_id="r2", guest_id=guest), "ExportSubjectDataResponse")
        self.assertEqual({x.section: x.record_count for x in exp.sections}["bookings"], 0)


if __name__ == "__main__":
    hmtest.main(extra_env=("HM_TEST_PARTNERSIM_EXE",))
