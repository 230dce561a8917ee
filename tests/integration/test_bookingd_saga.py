"""
Integration: bookingd's saga with the partners under faults injected into tools/partnersim
(issue 6), verified against partnersim's own state.

- pricing down -> the booking is made at the configured default price, flagged;
- payment down -> the inventory hold is released and no booking exists;
- inventory down -> UNAVAILABLE, nothing held, no booking;
- bookingd killed with SIGKILL in the middle of a saga (after the partner created the payment
  intent, before bookingd heard of it; and after the hold, before the booking record) -> after
  restart the recovery task leaves no hold and no live payment intent behind, the key is free;
- an update that moves the time re-reserves (old hold released, new one held) and re-prices;
  a failed re-reserve leaves the booking exactly as it was (old hold still held);
- PENDING bookings expire: EXPIRED, hold released, intent cancelled, booking.expired.
"""
import datetime
import os
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402
from test_bookingd_core import CONFIRMED, EXPIRED, PENDING, Stack, reason  # noqa: E402


class BookingSaga(hmtest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Stack(booking_env={"HM_BOOKING_PENDING_TTL": "3s",
                                   "HM_BOOKING_DEFAULT_PRICE": "4200"})
        cls.grpc = hmtest.grpc_mod()

    @classmethod
    def tearDownClass(cls):
        cls.s.close()

    def tearDown(self):
        self.s.faults()

    def assertRpcError(self, want, fn, *a, **kw):
        with self.assertRaises(self.grpc.RpcError) as cm:
            fn(*a, **kw)
        self.assertEqual(cm.exception.code().name, want, cm.exception.details())
        return cm.exception

    def confirmed(self, **kw):
        """A CONFIRMED booking: PENDING ones expire after 3 s in this class (expiry tests)."""
        return self.s.status(self.s.create(**kw), CONFIRMED).booking

    def no_booking(self, venue):
        return self.s.bsql("SELECT count(*) FROM bk_bookings WHERE venue_id = '%s'" % venue) == "0"

    def test_pricing_down_uses_the_default_price_flagged(self):
        s = self.s
        s.faults("pricing:down")
        b = s.create(party=3)
        self.assertTrue(b.pricing_defaulted)
        self.assertEqual(b.total_price.amount_minor, 4200 * 3)
        self.assertEqual(b.status, PENDING)
        ev = s.events("booking.created", b.booking_id)
        self.assertTrue(ev[0].pricing_defaulted)
        self.assertEqual(s.bsql("SELECT s.step, s.status FROM bk_saga_steps s JOIN bk_sagas g "
                                "USING (saga_id) WHERE g.booking_id = '%s' AND s.step = 'quote'"
                                % b.booking_id), "quote|defaulted")

    def test_payment_down_releases_inventory_and_creates_nothing(self):
        s = self.s
        s.faults("payment.CreatePaymentIntent:down")
        req = s.create_req(key="k-" + uuid.uuid4().hex)
        e = self.assertRpcError("UNAVAILABLE", s.rpc, "CreateBooking", req, "CreateBookingResponse")
        self.assertIn("payment", e.details())
        self.assertTrue(self.no_booking(req.venue_id))
        self.assertEqual(s.psql("SELECT status FROM ps_reservations WHERE venue_id = '%s'"
                                % req.venue_id), "2")  # released
        bid = s.psql("SELECT booking_id FROM ps_reservations WHERE venue_id = '%s'" % req.venue_id)
        self.assertEqual(s.bsql("SELECT state FROM bk_sagas WHERE booking_id = '%s'" % bid),
                         "compensated")
        # the outcome is the key's: a retry gets the same error even with payment back
        s.faults()
        e2 = self.assertRpcError("UNAVAILABLE", s.rpc, "CreateBooking", req,
                                 "CreateBookingResponse")
        self.assertEqual(e.details(), e2.details())
        # and a new key books
        req.idempotency_key = "k-" + uuid.uuid4().hex
        b = s.rpc("CreateBooking", req, "CreateBookingResponse").booking
        self.assertEqual(s.held(b.booking_id), 1)

    def test_inventory_down_is_unavailable(self):
        s = self.s
        s.faults("inventory:down")
        req = s.create_req()
        self.assertRpcError("UNAVAILABLE", s.rpc, "CreateBooking", req, "CreateBookingResponse")
        self.assertTrue(self.no_booking(req.venue_id))
        s.faults()
        self.assertEqual(s.psql("SELECT count(*) FROM ps_reservations WHERE venue_id = '%s' AND "
                                "status = 1" % req.venue_id), "0")
        self.assertEqual(s.psql("SELECT count(*) FROM ps_intents WHERE status = 1 AND booking_id "
                                "= ''"), "0")

    def kill_mid_saga(self, fault, wait_sql):
        """Starts a create, SIGKILLs bookingd once partnersim's state shows `wait_sql` true,
        restarts it and returns the request."""
        s = self.s
        s.faults(fault)
        req = s.create_req(key="k-" + uuid.uuid4().hex)
        done = threading.Event()

        def call():
            try:
                s.rpc("CreateBooking", req, "CreateBookingResponse", timeout=30)
            except self.grpc.RpcError:
                pass
            done.set()

        t = threading.Thread(target=call, daemon=True)
        t.start()
        s.wait_for(lambda: s.psql(wait_sql % req.venue_id) == "t", what=wait_sql)
        s.restart_bookingd(kill=True)
        s.faults()
        t.join(30)
        return req

    def assert_nothing_leaked(self, req):
        s = self.s
        # recovery: no hold, no live intent for the attempt, no booking, the key free again
        s.wait_for(lambda: s.psql("SELECT count(*) FROM ps_reservations WHERE venue_id = '%s' "
                                  "AND status = 1" % req.venue_id) == "0",
                   what="hold released by recovery")
        booking_ids = s.psql("SELECT booking_id FROM ps_reservations WHERE venue_id = '%s'"
                             % req.venue_id).split()
        self.assertEqual(len(booking_ids), 1)
        s.wait_for(lambda: s.psql("SELECT count(*) FROM ps_intents WHERE idempotency_key = "
                                  "'bk:%s:create:pay' AND status <> 6" % booking_ids[0]) == "0",
                   what="payment intent cancelled by recovery")
        self.assertTrue(self.no_booking(req.venue_id))
        self.assertEqual(s.bsql("SELECT state FROM bk_sagas WHERE booking_id = '%s'"
                                % booking_ids[0]), "compensated")
        steps = s.bsql("SELECT string_agg(s.step || ':' || s.status, ',' ORDER BY s.seq) FROM "
                       "bk_saga_steps s JOIN bk_sagas g USING (saga_id) WHERE g.booking_id = '%s'"
                       % booking_ids[0])
        self.assertIn("recover:started", steps)
        self.assertIn("compensate:done", steps)
        self.assertEqual(s.bsql("SELECT count(*) FROM bk_idempotency WHERE key = '%s'"
                                % req.idempotency_key), "0")
        # the client's retry with the same key now books normally
        b = s.rpc("CreateBooking", req, "CreateBookingResponse").booking
        self.assertEqual(b.status, PENDING)
        self.assertEqual(s.held(b.booking_id), 1)

    def test_sigkill_after_payment_intent_leaks_nothing(self):
        req = self.kill_mid_saga(
            "payment.CreatePaymentIntent:after=20000",
            "SELECT EXISTS (SELECT 1 FROM ps_intents i JOIN ps_reservations r ON r.booking_id = "
            "i.booking_id WHERE r.venue_id = '%s' AND i.status = 1)")
        self.assert_nothing_leaked(req)

    def test_sigkill_after_reserve_leaks_nothing(self):
        req = self.kill_mid_saga(
            "inventory.Reserve:after=20000",
            "SELECT EXISTS (SELECT 1 FROM ps_reservations WHERE venue_id = '%s' AND status = 1)")
        self.assert_nothing_leaked(req)

    def test_sigkill_during_update_leaves_the_booking_as_it_was(self):
        s = self.s
        b = self.confirmed(hour=19)
        s.faults("inventory.Reserve:after=20000")
        done = threading.Event()

        def call():
            try:
                s.rpc("UpdateBooking", self.move_req(b, 12, party=3), "UpdateBookingResponse",
                      timeout=30)
            except self.grpc.RpcError:
                pass
            done.set()

        t = threading.Thread(target=call, daemon=True)
        t.start()
        s.wait_for(lambda: s.held(b.booking_id) == 2, what="the update's new hold")
        s.restart_bookingd(kill=True)
        s.faults()
        t.join(30)
        s.wait_for(lambda: s.held(b.booking_id) == 1, what="the new hold released by recovery")
        self.assertEqual(s.psql("SELECT status FROM ps_reservations WHERE reservation_id = '%s'"
                                % b.inventory_reservation_id), "1")  # the old one stays
        s.wait_for(lambda: s.bsql("SELECT saga_id IS NULL FROM bk_bookings WHERE booking_id = "
                                  "'%s'" % b.booking_id) == "t", what="booking unclaimed")
        self.assertEqual(s.get(b.booking_id).booking, b)
        self.assertEqual(s.bsql("SELECT state FROM bk_sagas WHERE booking_id = '%s' AND kind = "
                                "'update'" % b.booking_id), "compensated")
        # and the booking can be moved afterwards
        u = s.rpc("UpdateBooking", self.move_req(b, 12, party=3), "UpdateBookingResponse").booking
        self.assertEqual((u.booking_time.hours, u.party_size), (12, 3))

    def test_cancel_with_inventory_down_releases_later(self):
        s = self.s
        b = s.create()
        s.faults("inventory.Release:down")
        r = s.cancel(b)
        self.assertEqual(r.booking.status, 5)  # cancelled at once
        self.assertEqual(s.held(b.booking_id), 1)  # the partner could not be told yet
        self.assertEqual(s.bsql("SELECT count(*) FROM bk_partner_actions WHERE booking_id = '%s' "
                                "AND kind = 'release' AND done_at IS NULL" % b.booking_id), "1")
        s.faults()
        s.wait_for(lambda: s.held(b.booking_id) == 0, timeout=30,
                   what="the release retried by the partner-actions task")
        self.assertEqual(s.bsql("SELECT count(*) FROM bk_partner_actions WHERE booking_id = '%s' "
                                "AND done_at IS NULL" % b.booking_id), "0")

    def move_req(self, b, hour, party=None):
        s = self.s
        req = s.pb.UpdateBookingRequest(booking_id=b.booking_id, expected_version=b.version)
        req.booking.booking_time.CopyFrom(s.common.TimeOfDay(hours=hour))
        req.update_mask.paths.append("booking_time")
        if party:
            req.booking.party_size = party
            req.update_mask.paths.append("party_size")
        return req

    def test_update_moving_the_time_rereserves_and_reprices(self):
        s = self.s
        b = self.confirmed(hour=19, party=2)
        old_res, old_intent = b.inventory_reservation_id, b.payment_intent_id
        u = s.rpc("UpdateBooking", self.move_req(b, 12, party=4), "UpdateBookingResponse").booking
        self.assertEqual((u.booking_time.hours, u.party_size, u.version), (12, 4, b.version + 1))
        self.assertEqual(u.start_time.seconds - b.start_time.seconds, -7 * 3600)
        self.assertNotEqual(u.inventory_reservation_id, old_res)
        self.assertEqual(u.total_price.amount_minor, 2 * b.total_price.amount_minor)  # re-priced
        self.assertNotEqual(u.payment_intent_id, old_intent)
        self.assertEqual(s.psql("SELECT status FROM ps_reservations WHERE reservation_id = '%s'"
                                % old_res), "2")  # old hold released
        self.assertEqual(s.psql("SELECT status, party_size FROM ps_reservations WHERE "
                                "reservation_id = '%s'" % u.inventory_reservation_id), "1|4")
        self.assertEqual(s.psql("SELECT status FROM ps_intents WHERE payment_intent_id = '%s'"
                                % old_intent), "6")  # old intent cancelled
        ev = s.events("booking.updated", b.booking_id)[-1]
        self.assertEqual(sorted(ev.changed_fields), ["booking_time", "party_size"])
        self.assertEqual(ev.previous.party_size, 2)
        self.assertEqual(ev.booking.party_size, 4)
        # moving onto another booking's slot: ALREADY_EXISTS, nothing changes
        other = self.confirmed(venue=b.venue_id, item=b.inventory_item_id, hour=16)
        e = self.assertRpcError("ALREADY_EXISTS", s.rpc, "UpdateBooking", self.move_req(u, 16),
                                "UpdateBookingResponse")
        self.assertIn(other.booking_id, e.details())
        self.assertEqual(s.get(b.booking_id).booking, u)

    def test_failed_rereserve_leaves_the_booking_as_it_was(self):
        s = self.s
        b = self.confirmed(hour=19)
        s.faults("inventory.Reserve:down")
        e = self.assertRpcError("UNAVAILABLE", s.rpc, "UpdateBooking", self.move_req(b, 13, 5),
                                "UpdateBookingResponse")
        self.assertIn("booking unchanged", e.details())
        s.faults()
        after = s.get(b.booking_id).booking
        self.assertEqual(after, b)  # every field, version included
        self.assertEqual(s.held(b.booking_id), 1)
        self.assertEqual(s.psql("SELECT status FROM ps_reservations WHERE reservation_id = '%s'"
                                % b.inventory_reservation_id), "1")
        self.assertEqual(s.bsql("SELECT saga_id IS NULL FROM bk_bookings WHERE booking_id = '%s'"
                                % b.booking_id), "t")
        # a failure after the new hold (payment down): the new hold is released too
        s.faults("payment.CreatePaymentIntent:down")
        self.assertRpcError("UNAVAILABLE", s.rpc, "UpdateBooking", self.move_req(b, 13, 5),
                            "UpdateBookingResponse")
        s.faults()
        self.assertEqual(s.get(b.booking_id).booking, b)
        self.assertEqual(s.held(b.booking_id), 1)
        # and the move works once the partners are back
        u = s.rpc("UpdateBooking", self.move_req(b, 13, 5), "UpdateBookingResponse").booking
        self.assertEqual(u.party_size, 5)
        self.assertEqual(s.held(b.booking_id), 1)

    def test_pending_bookings_expire(self):
        s = self.s
        b = s.create()
        c = s.create()
        c = s.status(c, CONFIRMED).booking  # confirmed ones never expire
        s.wait_for(lambda: s.get(b.booking_id).booking.status == EXPIRED, timeout=20,
                   what="expiry")
        x = s.get(b.booking_id, history=True)
        self.assertEqual(x.booking.version, b.version + 1)
        last = x.status_history[-1]
        self.assertEqual((last.from_status, last.to_status, last.changed_by.type),
                         (PENDING, EXPIRED, 5))  # ACTOR_TYPE_SYSTEM
        s.wait_for(lambda: s.held(b.booking_id) == 0, what="hold released on expiry")
        s.wait_for(lambda: s.psql("SELECT status FROM ps_intents WHERE payment_intent_id = '%s'"
                                  % b.payment_intent_id) == "6", what="intent cancelled")
        self.assertEqual(len(s.events("booking.expired", b.booking_id)), 1)
        self.assertEqual(s.get(c.booking_id).booking.status, CONFIRMED)
        m = s.bk.metrics()
        self.assertGreaterEqual(hmtest.metric(m, "bookingd_bookings_total", event="expired",
                                              venue_type="restaurant"), 1)
        # an expired booking cannot be confirmed
        e = self.assertRpcError("FAILED_PRECONDITION", s.status, x.booking, CONFIRMED)
        self.assertEqual(reason(e), "ILLEGAL_TRANSITION")

    def test_expiry_sweeper_is_replica_safe(self):
        s = self.s
        venue = str(uuid.uuid4())
        second = hmtest.Daemon("bookingd", s.exe, env=s.booking_env, workers=2,
                               database=s.bk.db, label="bookingd-replica2").start()
        try:
            ids = [s.create(venue=venue, item="t%d" % i).booking_id for i in range(20)]
            s.wait_for(lambda: s.bsql("SELECT count(*) FROM bk_bookings WHERE venue_id = '%s' "
                                      "AND status = 7" % venue) == "20", timeout=30,
                       what="all 20 expired")
            # each expired once: one history entry, one event, one release at the partner
            self.assertEqual(s.bsql(
                "SELECT count(*), count(DISTINCT booking_id) FROM bk_status_history WHERE "
                "to_status = 7 AND booking_id IN (SELECT booking_id FROM bk_bookings WHERE "
                "venue_id = '%s')" % venue), "20|20")
            self.assertEqual(sorted(e.booking.booking_id for e in s.events("booking.expired")
                                    if e.booking.venue_id == venue), sorted(ids))
            s.wait_for(lambda: s.psql("SELECT count(*) FROM ps_reservations WHERE venue_id = '%s' "
                                      "AND status = 1" % venue) == "0", what="holds released")
            self.assertEqual(s.bsql("SELECT count(*) FROM bk_partner_actions WHERE done_at IS "
                                    "NULL"), "0")
        finally:
            self.assertEqual(second.stop(), 0)
            second.close()

    def test_partner_error_rate_is_retried(self):
        s = self.s
        s.faults("inventory.Reserve:error=0.5")
        made = 0
        for _ in range(6):
            try:
                s.create()
                made += 1
            except self.grpc.RpcError as e:
                self.assertEqual(e.code().name, "UNAVAILABLE")
        self.assertGreaterEqual(made, 3)  # 3 attempts per call: most get through
        m = s.bk.metrics()
        self.assertGreater(hmtest.metric(m, "bookingd_partner_errors_total",
                                         partner="inventory"), 0)


if __name__ == "__main__":
    hmtest.main(extra_env=("HM_TEST_PARTNERSIM_EXE",))
