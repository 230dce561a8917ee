"""
Integration: rate limits in the call path of a running daemon (guestd), issue 3's Done-when
line "a burst over the limit -> RESOURCE_EXHAUSTED and recovery after the window".

guestd runs with HM_RATE_LIMITS="default=3/1s": each caller's bucket holds 3 tokens and gets
one back every 333 ms. A guest's burst of GetProfile calls is refused after the third with
RESOURCE_EXHAUSTED, reason RATE_LIMITED, `retry-after-ms` in the trailers and a
google.rpc.RetryInfo detail saying the same; another guest's bucket is untouched; after the
announced delay the guest is served again; the limiter's counters on /metrics match. Service
callers are not limited without a "service" rule. With Redis unreachable the limiter fails
open and counts it.
"""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402

GUEST = "/hospitality.guest.v1.GuestService/"
GROUP = "hospitality.guest.v1.GuestService"  # the service name: no rule of its own -> default
LIMITS = "default=3/1s"


def dead_redis_addr():
    """An address where nothing listens (a port bound, never listened on, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "127.0.0.1:%d" % port


class RateLimitTest(hmtest.TestCase):

    @classmethod
    def setUpClass(cls):
        hmtest.project_protos()
        from hospitality.guest.v1 import guest_pb2

        cls.pb = guest_pb2
        cls.grpc = hmtest.grpc_mod()
        name, exe = hmtest.daemon_under_test()
        cls.exe = exe
        cls.d = hmtest.Daemon(name, exe, env={"HM_RATE_LIMITS": LIMITS}).start()
        cls.rpcs = cls.bind(cls.d)
        # The admin creating guests has a bucket of its own: one call per guest, spaced out.
        cls.guests = []
        for i in range(2):
            r = cls.rpcs[0](guest_pb2.CreateGuestRequest(profile=guest_pb2.Profile(
                email="rl-%d-%s@example.com" % (i, hmtest.random_hex(4)))), timeout=5,
                metadata=hmtest.auth_md("rl-admin-%d" % i, roles=("admin",)))
            cls.guests.append(r.profile.guest_id)

    @classmethod
    def bind(cls, d):
        ch = d.channel()
        create = ch.unary_unary(GUEST + "CreateGuest",
                                request_serializer=cls.pb.CreateGuestRequest.SerializeToString,
                                response_deserializer=cls.pb.CreateGuestResponse.FromString)
        get = ch.unary_unary(GUEST + "GetProfile",
                             request_serializer=cls.pb.GetProfileRequest.SerializeToString,
                             response_deserializer=cls.pb.GetProfileResponse.FromString)
        return create, get

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.d.close()
        assert rc == 0, "guestd exited %s" % rc

    def get_as_guest(self, d_rpcs, guest_id):
        md = hmtest.auth_md(guest_id, roles=("guest",))
        return d_rpcs[1].with_call(self.pb.GetProfileRequest(guest_id=guest_id), timeout=5,
                                   metadata=md)

    def decisions(self, d, decision, group="default"):
        return hmtest.metric(d.metrics(), "hm_rate_limit_decisions_total", group=group,
                             decision=decision)

    def test_burst_is_refused_then_recovers(self):
        g, other = self.guests
        allowed0 = self.decisions(self.d, "allowed")
        limited0 = self.decisions(self.d, "limited")
        for _ in range(3):
            self.get_as_guest(self.rpcs, g)
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.get_as_guest(self.rpcs, g)
        e = cm.exception
        self.assertEqual(e.code(), self.grpc.StatusCode.RESOURCE_EXHAUSTED, e.details())
        retry_ms = int(hmtest.md_get(e.trailing_metadata(), "retry-after-ms"))
        self.assertGreater(retry_ms, 0)
        self.assertLessEqual(retry_ms, 1000)
        st, info, _ = hmtest.error_details(e)
        self.assertEqual(info.reason, "RATE_LIMITED")
        retry_info = [a for a in st.details if a.type_url.endswith("google.rpc.RetryInfo")]
        self.assertEqual(len(retry_info), 1)
        ri = hmtest.base_protos().error_details_pb2.RetryInfo()
        retry_info[0].Unpack(ri)
        self.assertEqual(ri.retry_delay.seconds * 1000 + ri.retry_delay.nanos // 1000000,
                         retry_ms)

        # Another caller's bucket is its own.
        self.get_as_guest(self.rpcs, other)

        # Recovery: after the announced delay one token is back.
        time.sleep(retry_ms / 1000.0 + 0.05)
        resp, _ = self.get_as_guest(self.rpcs, g)
        self.assertEqual(resp.profile.guest_id, g)

        self.assertEqual(self.decisions(self.d, "limited") - limited0, 1)
        self.assertEqual(self.decisions(self.d, "allowed") - allowed0, 5)
        self.assertGreaterEqual(hmtest.metric(self.d.metrics(), "hm_grpc_requests_total",
                                              method=GUEST + "GetProfile",
                                              code="RESOURCE_EXHAUSTED"), 1)

    def test_service_callers_are_not_limited_without_a_service_rule(self):
        md = hmtest.auth_md("svc-bookingd", roles=("service",))
        for _ in range(8):
            self.rpcs[1](self.pb.GetProfileRequest(guest_id=self.guests[1]), timeout=5,
                         metadata=md)

    def test_redis_down_fails_open_and_is_counted(self):
        name, _ = hmtest.daemon_under_test()
        d = hmtest.Daemon(name, self.exe, label="rl-noredis",
                          env={"HM_RATE_LIMITS": LIMITS, "HM_REDIS_ADDR": dead_redis_addr(),
                               "HM_REDIS_TIMEOUT": "50ms"})
        try:
            d.start()
            create, get = self.bind(d)
            g = create(self.pb.CreateGuestRequest(profile=self.pb.Profile(
                email="rl-nr-%s@example.com" % hmtest.random_hex(4))), timeout=5,
                metadata=hmtest.auth_md("rl-nr-admin", roles=("admin",))).profile.guest_id
            for _ in range(6):  # twice the burst: a working limiter would refuse some
                self.get_as_guest((create, get), g)
            self.assertEqual(self.decisions(d, "fail_open"), 7)
            self.assertEqual(self.decisions(d, "limited"), 0)
            self.assertGreaterEqual(hmtest.metric(d.metrics(), "hm_redis_errors_total"), 1)
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()


if __name__ == "__main__":
    hmtest.main()
