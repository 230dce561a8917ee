"""
Integration: /metrics of running daemons parsed with a real Prometheus text parser
(prometheus_client's, Debian's python3-prometheus-client), issue 3's Done-when line
"/metrics parses with a Prometheus text parser and its counters match the calls made".

guestd: every family parses with a declared type; after a known mix of calls the request
counters by method and code, the latency histogram's count and buckets, the authentication
failures, the rate-limit decisions and the database query counter move by exactly what was
done; Postgres connections killed under the daemon show up as database errors and
reconnects. meshd: a call held in its handler is counted in hm_grpc_inflight_calls.
"""
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import hmtest  # noqa: E402

GUEST = "/hospitality.guest.v1.GuestService/"
MESH = "/hm.test.mesh.v1.MeshTest/"
MISSING = "00000000-0000-4000-8000-0000000000aa"


def scrape(d):
    """{family name: Metric} from prometheus_client's parser (raises on malformed text)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = hmtest.http_get(d.admin_addr, "/metrics")
    assert status == 200, status
    fams = {}
    for f in text_string_to_metric_families(body):
        assert f.name not in fams, "family %s twice" % f.name
        fams[f.name] = f
    return fams


def value(fams, family, sample=None, **labels):
    """The value of one sample (0 when absent); `sample` defaults to the family's name (or
    name_total for counters)."""
    f = fams.get(family)
    if f is None:
        return 0.0
    names = [sample] if sample else [family, family + "_total"]
    for s in f.samples:
        if s.name in names and all(s.labels.get(k) == v for k, v in labels.items()) and \
                (sample or set(s.labels) == set(labels)):
            return s.value
    return 0.0


class GuestdMetricsTest(hmtest.TestCase):

    @classmethod
    def setUpClass(cls):
        hmtest.project_protos()
        from hospitality.guest.v1 import guest_pb2

        cls.pb = guest_pb2
        cls.grpc = hmtest.grpc_mod()
        name, exe = hmtest.daemon_under_test()
        cls.d = hmtest.Daemon(name, exe, env={"HM_RATE_LIMITS": "default=1000/1s"}).start()
        ch = cls.d.channel()
        cls.create = ch.unary_unary(GUEST + "CreateGuest",
                                    request_serializer=guest_pb2.CreateGuestRequest.SerializeToString,
                                    response_deserializer=guest_pb2.CreateGuestResponse.FromString)
        cls.get = ch.unary_unary(GUEST + "GetProfile",
                                 request_serializer=guest_pb2.GetProfileRequest.SerializeToString,
                                 response_deserializer=guest_pb2.GetProfileResponse.FromString)
        cls.admin = hmtest.auth_md("metrics-admin", roles=("admin",))

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.d.close()
        assert rc == 0, "guestd exited %s" % rc

    def test_every_family_parses_with_a_type(self):
        fams = scrape(self.d)
        for name, f in fams.items():
            self.assertIn(f.type, ("counter", "gauge", "histogram"), name)
            self.assertTrue(f.documentation, name)
        for want in ("hm_grpc_requests", "hm_grpc_request_duration_seconds",
                     "hm_grpc_inflight_calls", "hm_db_errors", "hm_db_reconnects",
                     "hm_redis_errors", "hm_redis_reconnects", "hm_cache_hits", "hm_cache_misses",
                     "hm_rate_limit_decisions", "hm_trace_spans_dropped", "hm_auth_failures"):
            self.assertIn(want, fams)

    def test_counters_match_the_calls_made(self):
        before = scrape(self.d)
        ok_creates, not_found, unauth = 3, 4, 2
        for i in range(ok_creates):
            self.create(self.pb.CreateGuestRequest(profile=self.pb.Profile(
                email="m-%d-%s@example.com" % (i, hmtest.random_hex(4)))), timeout=5,
                metadata=self.admin)
        for _ in range(not_found):
            with self.assertRaises(self.grpc.RpcError):
                self.get(self.pb.GetProfileRequest(guest_id=MISSING), timeout=5,
                         metadata=self.admin)
        for _ in range(unauth):
            with self.assertRaises(self.grpc.RpcError):
                self.get(self.pb.GetProfileRequest(guest_id=MISSING), timeout=5)
        # A call is counted, and leaves the in-flight gauge, when its final batch completes on
        # the server, which may be just after the client saw its status: scrape until the last
        # calls are in and none is still being served.
        until = time.monotonic() + 5
        while True:
            after = scrape(self.d)
            seen = sum(value(after, "hm_grpc_requests", method=GUEST + m, code=c) -
                       value(before, "hm_grpc_requests", method=GUEST + m, code=c)
                       for m, c in (("CreateGuest", "OK"), ("GetProfile", "NOT_FOUND"),
                                    ("GetProfile", "UNAUTHENTICATED")))
            settled = (seen >= ok_creates + not_found + unauth and
                       value(after, "hm_grpc_inflight_calls") == 0)
            if settled or time.monotonic() > until:
                break
            time.sleep(0.05)

        def delta(family, **labels):
            return value(after, family, **labels) - value(before, family, **labels)

        self.assertEqual(delta("hm_grpc_requests", method=GUEST + "CreateGuest", code="OK"),
                         ok_creates)
        self.assertEqual(delta("hm_grpc_requests", method=GUEST + "GetProfile", code="NOT_FOUND"),
                         not_found)
        self.assertEqual(delta("hm_grpc_requests", method=GUEST + "GetProfile",
                               code="UNAUTHENTICATED"), unauth)
        hist = "hm_grpc_request_duration_seconds"
        self.assertEqual(value(after, hist, hist + "_count", method=GUEST + "GetProfile") -
                         value(before, hist, hist + "_count", method=GUEST + "GetProfile"),
                         not_found + unauth)
        self.assertEqual(value(after, hist, hist + "_bucket", method=GUEST + "CreateGuest", le="+Inf"),
                         value(after, hist, hist + "_count", method=GUEST + "CreateGuest"))
        self.assertEqual(delta("hm_auth_failures"), unauth)
        # Authenticated calls take a token each (the unauthenticated ones never get that far).
        self.assertEqual(delta("hm_rate_limit_decisions", group="default", decision="allowed"),
                         ok_creates + not_found)
        self.assertGreaterEqual(delta("hm_db_queries"), ok_creates + not_found)
        self.assertEqual(value(after, "hm_grpc_inflight_calls"), 0)
        self.assertGreaterEqual(value(after, "hm_db_connections"), 1)

    def test_killed_database_connections_count_as_errors_and_reconnects(self):
        before = scrape(self.d)
        hmtest.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = '%s' AND pid <> pg_backend_pid()" % self.d.db)
        served = 0
        until = time.monotonic() + 10
        while served < 6 and time.monotonic() < until:
            try:
                self.get(self.pb.GetProfileRequest(guest_id=MISSING), timeout=5,
                         metadata=self.admin)
            except self.grpc.RpcError as e:
                if e.code() == self.grpc.StatusCode.NOT_FOUND:
                    served += 1
        self.assertEqual(served, 6)
        after = scrape(self.d)
        self.assertGreaterEqual(value(after, "hm_db_reconnects") - value(before, "hm_db_reconnects"),
                                1)
        self.assertGreaterEqual(value(after, "hm_db_errors") - value(before, "hm_db_errors"), 1)


class InflightTest(hmtest.TestCase):

    def test_a_held_call_is_in_flight(self):
        sys.path.insert(0, HERE)
        import test_mesh_peers

        pb = test_mesh_peers.mesh_pb()
        d = hmtest.Daemon("meshd", test_mesh_peers.meshd_exe(), label="inflight-meshd")
        try:
            d.start()
            echo = d.channel().unary_unary(MESH + "Echo",
                                           request_serializer=pb.EchoRequest.SerializeToString,
                                           response_deserializer=pb.EchoResponse.FromString)
            t = threading.Thread(target=lambda: echo(pb.EchoRequest(text="sleep:1500"), timeout=10))
            t.start()
            seen = 0
            until = time.monotonic() + 1.2
            while time.monotonic() < until and not seen:
                seen = value(scrape(d), "hm_grpc_inflight_calls")
                time.sleep(0.05)
            t.join()
            self.assertEqual(seen, 1)
            until = time.monotonic() + 5  # counted when the final batch completes (see above)
            while value(scrape(d), "hm_grpc_requests", method=MESH + "Echo", code="OK") < 1 and \
                    time.monotonic() < until:
                time.sleep(0.05)
            self.assertEqual(value(scrape(d), "hm_grpc_inflight_calls"), 0)
            self.assertEqual(value(scrape(d), "hm_grpc_requests", method=MESH + "Echo", code="OK"), 1)
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()


if __name__ == "__main__":
    hmtest.main()
