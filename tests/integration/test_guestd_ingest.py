"""
Integration: guestd's EventIngestService/PublishEvents (issue 4, item 5) against real Postgres
and Redis. A valid batch lands in the outbox in one transaction and reaches its streams; the
same batch again is acknowledged as duplicates without a second row; a batch with one bad
event (unknown type, undecodable payload, an internal domain's type, a repeated id) is refused
whole, naming the event and field, and writes nothing; only service (and admin) callers may
publish.
"""
import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402

METHOD = "/hospitality.guest.v1.EventIngestService/PublishEvents"


uuid7 = hmtest.uuid7


def redis(*args):
    host, port = hmtest.require_env().redis_addr.rsplit(":", 1)
    return subprocess.run(["redis-cli", "-h", host, "-p", port] + list(args),
                          capture_output=True, timeout=10).stdout.decode("utf-8", "replace").strip()


class IngestTest(hmtest.TestCase):
    @classmethod
    def setUpClass(cls):
        hmtest.project_protos()
        from google.protobuf import timestamp_pb2
        from hospitality.events.v1 import events_pb2, external_events_pb2
        from hospitality.guest.v1 import guest_pb2

        cls.ev, cls.ext, cls.g, cls.ts = events_pb2, external_events_pb2, guest_pb2, timestamp_pb2
        name, exe = hmtest.daemon_under_test()
        cls.d = hmtest.Daemon(name, exe).start()
        cls.rpc = cls.d.channel().unary_unary(
            METHOD, request_serializer=guest_pb2.PublishEventsRequest.SerializeToString,
            response_deserializer=guest_pb2.PublishEventsResponse.FromString)

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.d.stop() == 0
        finally:
            cls.d.close()

    def envelope(self, etype, payload, guest=None, source="order-service"):
        t = self.ts.Timestamp()
        t.GetCurrentTime()
        return self.ev.Event(id=uuid7(), type=etype, source=source, subject=guest or "",
                             time=t, schema_version=1, payload=payload.SerializeToString())

    def order(self, guest):
        return self.envelope("order.created", self.ext.OrderCreated(
            order_id="o-" + uuid.uuid4().hex[:8], guest_id=guest, venue_id="v-1"), guest)

    def review(self, guest):
        return self.envelope("feedback.review.submitted", self.ext.FeedbackReviewSubmitted(
            review_id="r-" + uuid.uuid4().hex[:8], guest_id=guest), guest, "feedback-service")

    def publish(self, events, md=None):
        return self.rpc(self.g.PublishEventsRequest(events=events),
                        metadata=md if md is not None else hmtest.auth_md(
                            "order-service", roles=("service",)), timeout=10)

    def outbox(self, where="true"):
        return int(hmtest.psql("SELECT count(*) FROM outbox WHERE %s" % where,
                               dbname=self.d.db).strip())

    def refused(self, events, code, field_part):
        grpc = hmtest.grpc_mod()
        before = self.outbox()
        with self.assertRaises(grpc.RpcError) as cm:
            self.publish(events)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        info = hmtest.error_details(cm.exception)
        self.assertIn(field_part, repr(info) + cm.exception.details())
        self.assertEqual(self.outbox(), before, "a refused batch wrote something")
        return cm.exception

    def test_batch_published_once_and_delivered(self):
        guest = str(uuid.uuid4())
        events = [self.order(guest), self.review(guest)]
        r = self.publish(events)
        self.assertEqual([x.event_id for x in r.results], [e.id for e in events])
        self.assertEqual([x.duplicate for x in r.results], [False, False])
        ids = "', '".join(e.id for e in events)
        self.assertEqual(self.outbox("event_id IN ('%s')" % ids), 2)
        # the relay moves them to their streams
        until = time.time() + 10
        while time.time() < until and self.outbox(
                "event_id IN ('%s') AND published_at IS NULL" % ids):
            time.sleep(0.05)
        self.assertEqual(self.outbox("event_id IN ('%s') AND published_at IS NULL" % ids), 0)
        self.assertIn(events[0].id, redis("XRANGE", "hm:events:order", "-", "+"))
        self.assertIn(events[1].id, redis("XRANGE", "hm:events:feedback", "-", "+"))
        # a producer retrying the batch: duplicates, no second row
        r = self.publish(events)
        self.assertEqual([x.duplicate for x in r.results], [True, True])
        self.assertEqual(self.outbox("event_id IN ('%s')" % ids), 2)

    def test_bad_event_refuses_the_whole_batch(self):
        grpc = hmtest.grpc_mod()
        guest = str(uuid.uuid4())
        unknown = self.order(guest)
        unknown.type = "order.teleported"
        self.refused([self.order(guest), unknown], grpc.StatusCode.INVALID_ARGUMENT,
                     "events[1].type")
        garbage = self.order(guest)
        garbage.payload = b"\xff\xff\xff"
        self.refused([garbage], grpc.StatusCode.INVALID_ARGUMENT, "events[0].payload")
        internal = self.envelope("booking.created", self.ext.OrderCreated(order_id="x"), guest)
        internal.payload = b""
        self.refused([self.review(guest), internal], grpc.StatusCode.PERMISSION_DENIED,
                     "events[1]")
        dup = self.order(guest)
        self.refused([dup, dup], grpc.StatusCode.INVALID_ARGUMENT, "events[1].id")
        self.refused([], grpc.StatusCode.INVALID_ARGUMENT, "events")

    def test_only_services_publish(self):
        grpc = hmtest.grpc_mod()
        guest = str(uuid.uuid4())
        with self.assertRaises(grpc.RpcError) as cm:
            self.publish([self.order(guest)], md=hmtest.auth_md(guest, roles=("guest",)))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        with self.assertRaises(grpc.RpcError) as cm:
            self.publish([self.order(guest)], md=[])
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(self.outbox("subject = '%s'" % guest), 0)


if __name__ == "__main__":
    hmtest.main()
