"""
Integration: every daemon runs the outbox relay unless HM_CONSUMERS=off. A row committed to
its outbox reaches its Redis stream and is marked published; /metrics counts it by type; with
HM_CONSUMERS=off the row stays in the outbox (nothing lost: another replica publishes it).
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402


def redis(*args):
    host, port = hmtest.require_env().redis_addr.rsplit(":", 1)
    return subprocess.run(["redis-cli", "-h", host, "-p", port] + list(args),
                          capture_output=True, text=True, timeout=10).stdout.strip()


def insert_event(db, stream):
    event_id = "0190f5c2-7d1e-7c3b-9c1a-" + hmtest.random_hex(6)
    hmtest.psql("INSERT INTO outbox (event_id, event_type, subject, stream, envelope) VALUES "
                "('%s', 'booking.created', 'g-1', '%s', '\\x0a0102'::bytea)" % (event_id, stream),
                dbname=db)
    return event_id


def published(db, event_id):
    return hmtest.psql("SELECT published_at IS NOT NULL FROM outbox WHERE event_id = '%s'"
                       % event_id, dbname=db).strip() == "t"


class OutboxRelayTest(hmtest.TestCase):
    def test_relay_publishes_committed_rows(self):
        name, exe = hmtest.daemon_under_test()
        d = hmtest.Daemon(name, exe, env={"HM_CONSUMERS": "on"}).start()
        try:
            stream = "hm:events:test-" + hmtest.random_hex(6)
            ev = insert_event(d.db, stream)
            until = time.time() + 10
            while time.time() < until and not published(d.db, ev):
                time.sleep(0.05)
            self.assertTrue(published(d.db, ev), "row not marked published within 10 s")
            self.assertEqual(redis("XLEN", stream), "1")
            entry = redis("XRANGE", stream, "-", "+")
            self.assertIn(ev, entry)
            self.assertIn("booking.created", entry)
            until = time.time() + 10
            while time.time() < until and hmtest.metric(
                    d.metrics(), "hm_events_published_total", type="booking.created") < 1:
                time.sleep(0.2)
            self.assertEqual(hmtest.metric(d.metrics(), "hm_events_published_total",
                                           type="booking.created"), 1)
        finally:
            self.assertEqual(d.stop(), 0)
            d.close()
            redis("DEL", stream)

    def test_consumers_off_leaves_rows_for_another_replica(self):
        name, exe = hmtest.daemon_under_test()
        d = hmtest.Daemon(name, exe, env={"HM_CONSUMERS": "off"}).start()
        try:
            stream = "hm:events:test-" + hmtest.random_hex(6)
            ev = insert_event(d.db, stream)
            time.sleep(1.5)
            self.assertFalse(published(d.db, ev))
            self.assertEqual(redis("XLEN", stream), "0")
            self.assertIn("HM_CONSUMERS=off", d.log_text())
        finally:
            self.assertEqual(d.stop(), 0)
            d.close()


if __name__ == "__main__":
    hmtest.main()
