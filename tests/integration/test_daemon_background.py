"""
Integration: the runtime's support for a daemon's own background work, through testd (a
test-only daemon, tests/integration/testd): a handler's event goes to the outbox in its
transaction and reaches the declared consumer, whose effect is applied once; events about a
subject on the erasure suppression list are acknowledged without effect; periodic tasks run;
/metrics shows all of it; SIGTERM still drains to exit 0.
"""
import hashlib
import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402

STREAM = "hm:events:notification"


def redis(*args):
    host, port = hmtest.require_env().redis_addr.rsplit(":", 1)
    return subprocess.run(["redis-cli", "-h", host, "-p", port] + list(args),
                          capture_output=True, text=True, timeout=10).stdout.strip()


def wait_for(pred, timeout=15, what="condition"):
    until = time.time() + timeout
    while time.time() < until:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


class DaemonBackgroundTest(hmtest.TestCase):
    def setUp(self):
        hmtest.project_protos()
        from hospitality.events.v1 import external_events_pb2 as ev

        self.ev = ev
        # The consumer group is named after the daemon and starts at the beginning of the
        # stream: start each test from an empty stream and no group.
        redis("DEL", STREAM)
        self.d = hmtest.Daemon("testd", os.environ["HM_TEST_DAEMON_EXE"]).start()
        self.publish_rpc = self.d.channel().unary_unary(
            "/hm.test.Runtime/Publish",
            request_serializer=ev.NotificationSent.SerializeToString,
            response_deserializer=ev.NotificationSent.FromString)

    def tearDown(self):
        try:
            self.assertEqual(self.d.stop(), 0)
            self.assertIn("stopped cleanly", self.d.log_text())
        finally:
            self.d.close()
            redis("DEL", STREAM)

    def publish(self, nid, guest):
        self.publish_rpc(self.ev.NotificationSent(notification_id=nid, guest_id=guest),
                         metadata=hmtest.auth_md(), timeout=10)

    def rows(self, sql):
        return hmtest.psql(sql, dbname=self.d.db).split()

    def test_published_event_applied_once(self):
        guest = str(uuid.uuid4())
        ids = ["n-%d-%s" % (i, hmtest.random_hex(4)) for i in range(3)]
        for nid in ids:
            self.publish(nid, guest)
        self.assertEqual(sorted(self.rows("SELECT notification_id FROM sent")), sorted(ids))
        got = wait_for(lambda: len(self.rows("SELECT notification_id FROM effects")) == 3
                       and self.rows("SELECT notification_id FROM effects"), what="3 effects")
        self.assertEqual(sorted(got), sorted(ids))
        self.assertEqual(set(self.rows("SELECT guest_id FROM effects")), {guest})
        # Exactly once: every event id is in processed_events, the outbox rows are published.
        self.assertEqual(self.rows("SELECT count(*) FROM processed_events"), ["3"])
        self.assertEqual(self.rows("SELECT count(*) FROM outbox WHERE published_at IS NULL"),
                         ["0"])
        m = wait_for(lambda: (lambda m: m if hmtest.metric(
            m, "hm_consumer_processed_total") == 3 else None)(self.d.metrics()),
            what="processed metric")
        self.assertEqual(hmtest.metric(m, "hm_events_published_total",
                                       type="notification.sent"), 3)
        self.assertEqual(hmtest.metric(m, "hm_consumer_dead_letters_total"), 0)

    def test_invalid_request_writes_nothing(self):
        grpc = hmtest.grpc_mod()
        with self.assertRaises(grpc.RpcError) as cm:
            self.publish("", str(uuid.uuid4()))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        # A subject that is not a guest id: the registry refuses the event, and the
        # transaction that would have recorded the notification is rolled back with it.
        with self.assertRaises(grpc.RpcError) as cm:
            self.publish("n-bad", "not-a-uuid")
        self.assertEqual(self.rows("SELECT count(*) FROM sent"), ["0"])
        self.assertEqual(self.rows("SELECT count(*) FROM outbox"), ["0"])

    def test_suppressed_subject_has_no_effect(self):
        erased, kept = str(uuid.uuid4()), str(uuid.uuid4())
        redis("SADD", "hm:privacy:suppressed", hashlib.sha256(erased.encode()).hexdigest())
        try:
            self.publish("n-erased", erased)
            self.publish("n-kept", kept)
            # Same stream, in order: once the second is applied the first was handled.
            wait_for(lambda: self.rows("SELECT notification_id FROM effects") == ["n-kept"],
                     what="the kept subject's effect")
            time.sleep(0.3)
            self.assertEqual(self.rows("SELECT notification_id FROM effects"), ["n-kept"])
            m = self.d.metrics()
            self.assertEqual(hmtest.metric(m, "hm_consumer_suppressed_total"), 1)
            self.assertEqual(hmtest.metric(m, "hm_consumer_processed_total"), 1)
        finally:
            redis("DEL", "hm:privacy:suppressed")

    def test_tasks_run_periodically(self):
        n = wait_for(lambda: (lambda v: v if v >= 3 else None)(
            int(self.rows("SELECT n FROM ticks")[0])), what="3 ticks")
        self.assertGreaterEqual(n, 3)
        m = self.d.metrics()
        self.assertGreaterEqual(hmtest.metric(m, "hm_task_runs_total", task="tick"), 3)
        self.assertEqual(hmtest.metric(m, "hm_task_failures_total", task="tick"), 0)


if __name__ == "__main__":
    hmtest.main()
