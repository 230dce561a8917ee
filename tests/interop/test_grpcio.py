#!/usr/bin/python3
"""
test_grpcio.py - Debian's python3-grpcio (the C core's Python binding, a client nobody here
wrote) against one daemon, using only .proto files (generated at test time by hmtest).

The daemon is HM_TEST_DAEMON (executable HM_TEST_DAEMON_EXE); meson runs this once per daemon.
Same checks as grpcjs.test.mjs, plus the admin port (metrics counted per method and code,
/healthz, /readyz) and the drain: on SIGTERM a Watch stream sees NOT_SERVING and then ends,
readiness turns NOT_SERVING during HM_SHUTDOWN_DELAY, and the process exits 0.
"""
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
import hmtest  # noqa: E402
from hmtest import NOT_SERVING, SERVING  # noqa: E402

MAX_MESSAGE = 4 * 1024 * 1024
REQUEST_ID_RE = r"^[A-Za-z0-9._-]{16,64}$"


def grpc():
    return hmtest.grpc_mod()


class Interop(hmtest.TestCase):
    """Checks against one daemon that keeps running for the whole class."""

    @classmethod
    def setUpClass(cls):
        cls.name, exe = hmtest.daemon_under_test()
        cls.d = hmtest.Daemon(cls.name, exe, env={"HM_MAX_MESSAGE_BYTES": str(MAX_MESSAGE)})
        cls.d.start()
        cls.ch = hmtest.channel(cls.d.addr, **{"grpc.max_send_message_length": -1,
                                               "grpc.max_receive_message_length": -1})
        cls.h = hmtest.Health(cls.ch)
        cls.raw_check = cls.ch.unary_unary(hmtest.HEALTH_CHECK)  # bytes in, bytes out

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        status = cls.d.stop()
        cls.d.close()
        if status != 0:
            raise AssertionError("%s exited %s after SIGTERM (want 0)\n%s" % (
                cls.name, status, cls.d.log_tail()))

    def assertCode(self, err, want, what=""):
        self.assertEqual(err.code(), want, "%s %s: %s" % (self.name, what, err.details()))

    def rpc_error(self, fn, *args, **kw):
        try:
            r = fn(*args, **kw)
        except grpc().RpcError as e:
            return e
        self.fail("%s: expected an error, got %r" % (self.name, r))

    def assertStillServing(self):
        self.assertEqual(self.h.check(""), SERVING, "%s no longer SERVING" % self.name)

    # -- health

    def test_check_serving(self):
        self.assertTrue(self.d.services)
        for svc in ["", "liveness", "readiness"] + self.d.services:
            self.assertEqual(self.h.check(svc), SERVING, "Check(%r)" % svc)

    def test_check_unknown_not_found_with_details(self):
        e = self.rpc_error(self.h.check, "hospitality.nope.v1.NopeService",
                           metadata=[("x-request-id", "interop-py-nf-1")])
        self.assertCode(e, grpc().StatusCode.NOT_FOUND, "Check(unknown)")
        st, info, req = hmtest.error_details(e)
        self.assertEqual(st.code, grpc().StatusCode.NOT_FOUND.value[0])
        self.assertEqual(st.message, e.details())
        self.assertIsNotNone(info, "ErrorInfo detail")
        self.assertRegex(info.reason, r"^[A-Z][A-Z0-9_]*$")
        self.assertEqual(info.domain, hmtest.ERROR_DOMAIN)
        self.assertIsNotNone(req, "RequestInfo detail")
        self.assertEqual(req.request_id, "interop-py-nf-1")
        self.assertEqual(hmtest.md_get(e.initial_metadata(), "x-request-id"), "interop-py-nf-1")

    def test_check_long_unknown_name(self):
        # On a channel of its own: a response too large for the client's header limits must not
        # disturb the other tests.
        with hmtest.channel(self.d.addr, **{"grpc.use_local_subchannel_pool": 1}) as ch:
            e = self.rpc_error(hmtest.Health(ch).check, "y" * (64 * 1024), timeout=3)
        self.assertCode(e, grpc().StatusCode.NOT_FOUND, "Check(64 KiB unknown name)")
        self.assertStillServing()

    def test_watch_serving_first(self):
        for svc in ["", "readiness", self.d.services[0]]:
            stream = self.h.watch(svc, timeout=10)
            first = next(stream)
            self.assertEqual(first.status, SERVING, "Watch(%r) first message" % svc)
            # Still open after the first message: nothing else arrives within 300 ms.
            got = []
            t = threading.Thread(target=lambda: got.extend(_drain(stream)))
            t.start()
            time.sleep(0.3)
            self.assertTrue(t.is_alive(), "Watch(%r) ended early: %r" % (svc, got))
            stream.cancel()
            t.join(5)
            self.assertEqual([m for m in got if not isinstance(m, Exception)], [])

    def test_watch_unknown_name(self):
        # The health spec: Watch of an unknown name sends SERVICE_UNKNOWN and keeps watching.
        stream = self.h.watch("hospitality.nope.v1.NopeService", timeout=10)
        try:
            first = next(stream)
            self.assertEqual(first.status, hmtest.SERVICE_UNKNOWN)
        finally:
            stream.cancel()

    # -- errors

    def test_unknown_method_unimplemented_at_once(self):
        for method in ["/hospitality.nope.v1.NopeService/Nothing", "/grpc.health.v1.Health/Nope"]:
            rpc = self.ch.unary_unary(method)
            t0 = time.monotonic()
            e = self.rpc_error(rpc, b"", timeout=10)
            ms = (time.monotonic() - t0) * 1000
            self.assertCode(e, grpc().StatusCode.UNIMPLEMENTED, method)
            self.assertLess(ms, 1000, "%s answered in %.0f ms" % (method, ms))
            st, info, req = hmtest.error_details(e)
            self.assertEqual(st.code, grpc().StatusCode.UNIMPLEMENTED.value[0])
            self.assertTrue(info and info.reason)
            self.assertEqual(req.request_id, hmtest.md_get(e.initial_metadata(), "x-request-id"))

    def test_unknown_method_streaming(self):
        # A client-streaming call to an unknown method: answered at once too, stream closed.
        rpc = self.ch.stream_stream("/hospitality.nope.v1.NopeService/Chat")
        t0 = time.monotonic()
        e = self.rpc_error(lambda: list(rpc(iter([b"a", b"b", b"c"]), timeout=10)))
        self.assertCode(e, grpc().StatusCode.UNIMPLEMENTED)
        self.assertLess(time.monotonic() - t0, 1.0)
        self.assertStillServing()

    def test_deadline_exceeded(self):
        # A 200 us deadline: most calls expire (in the client, on the wire or in the server,
        # which answers DEADLINE_EXCEEDED itself when none is left); one that is fast enough
        # succeeds. Nothing else is allowed.
        expired = 0
        for _ in range(20):
            try:
                self.assertEqual(self.h.check("", timeout=0.0002), SERVING)
            except grpc().RpcError as e:
                self.assertCode(e, grpc().StatusCode.DEADLINE_EXCEEDED, "200 us deadline")
                expired += 1
        self.assertGreater(expired, 0, "none of 20 calls with a 200 us deadline expired")
        self.assertStillServing()

    def test_watch_deadline(self):
        t0 = time.monotonic()
        stream = self.h.watch("", timeout=0.7)
        msgs = []
        with self.assertRaises(grpc().RpcError) as cm:
            for m in stream:
                msgs.append(m.status)
        dt = time.monotonic() - t0
        self.assertEqual(msgs, [SERVING])
        self.assertCode(cm.exception, grpc().StatusCode.DEADLINE_EXCEEDED, "Watch deadline")
        self.assertTrue(0.6 <= dt < 5, "Watch ended after %.2f s (deadline 0.7 s)" % dt)
        self.assertStillServing()

    def test_oversized_message(self):
        e = self.rpc_error(self.h.check, "s" * (MAX_MESSAGE + 1024 * 1024), timeout=10)
        self.assertCode(e, grpc().StatusCode.RESOURCE_EXHAUSTED, "5 MiB request")
        self.assertStillServing()

    def test_message_just_under_limit(self):
        # An unknown field of almost MAX_MESSAGE bytes (skipped by the decoder): service "".
        n = MAX_MESSAGE - 16
        msg = b"\x7a" + _encode_varint(n) + b"u" * n
        self.assertLessEqual(len(msg), MAX_MESSAGE)
        pb = hmtest.base_protos().health_pb2
        resp = self.raw_check(msg, timeout=10)
        self.assertEqual(pb.HealthCheckResponse.FromString(resp).status, SERVING)

    def test_garbage_request(self):
        cases = [b"\x0a\x64" + os.urandom(10), b"\x0f" + os.urandom(32), b"\x00" + os.urandom(16),
                 b"\x08" + b"\xff" * 11]
        while len(cases) < 40:
            # Random bytes that are not a well-formed protobuf message (checked by a wire-format
            # walk of our own: python-protobuf would also refuse invalid UTF-8, which protobuf-c
            # does not check).
            b = os.urandom(1 + len(cases) * 7)
            if not _well_formed(b):
                cases.append(b)
        for b in cases:
            e = self.rpc_error(self.raw_check, b, timeout=10)
            self.assertIn(e.code(), (grpc().StatusCode.INVALID_ARGUMENT,
                                     grpc().StatusCode.INTERNAL),
                          "garbage %s: %s %s" % (b[:20].hex(), e.code(), e.details()))
            if e.code() == grpc().StatusCode.INVALID_ARGUMENT:
                _, info, _ = hmtest.error_details(e)
                self.assertTrue(info and info.reason)
        self.assertStillServing()

    def test_empty_request_message(self):
        # Zero bytes is a valid, empty HealthCheckRequest: service "".
        resp = self.raw_check(b"", timeout=5)
        pb = hmtest.base_protos().health_pb2
        self.assertEqual(pb.HealthCheckResponse.FromString(resp).status, SERVING)

    def test_gzip_compressed_request(self):
        pb = self.h.pb
        resp = self.h.check_rpc(pb.HealthCheckRequest(service="readiness"), timeout=5,
                                compression=grpc().Compression.Gzip)
        self.assertEqual(resp.status, SERVING)

    # -- metadata

    def test_request_id(self):
        _, call = self.h.check_call("")
        rid = hmtest.md_get(call.initial_metadata(), "x-request-id")
        self.assertIsNotNone(rid, "x-request-id in the response metadata")
        self.assertRegex(rid, REQUEST_ID_RE)
        _, call2 = self.h.check_call("")
        self.assertNotEqual(hmtest.md_get(call2.initial_metadata(), "x-request-id"), rid)
        _, call = self.h.check_call("", metadata=[("x-request-id", "interop-py-7.A_b")])
        self.assertEqual(hmtest.md_get(call.initial_metadata(), "x-request-id"), "interop-py-7.A_b")
        for bad in ['two words"', "x" * 200]:
            _, call = self.h.check_call("", metadata=[("x-request-id", bad)])
            got = hmtest.md_get(call.initial_metadata(), "x-request-id")
            self.assertNotEqual(got, bad)
            self.assertRegex(got, REQUEST_ID_RE)

    def test_watch_request_id(self):
        stream = self.h.watch("", timeout=10, metadata=[("x-request-id", "interop-py-watch")])
        try:
            next(stream)
            self.assertEqual(hmtest.md_get(stream.initial_metadata(), "x-request-id"),
                             "interop-py-watch")
        finally:
            stream.cancel()

    # -- concurrency

    def test_concurrent_calls(self):
        futs = [self.h.check_rpc.future(self.h.pb.HealthCheckRequest(service="readiness"),
                                        timeout=20) for _ in range(300)]
        bad = [f for f in futs if f.exception() is not None or f.result().status != SERVING]
        self.assertEqual(len(bad), 0, "%d of 300 concurrent checks failed: %s" % (
            len(bad), bad[0].exception() if bad else ""))

    def test_many_connections(self):
        chans = [hmtest.channel(self.d.addr) for _ in range(20)]
        try:
            for c in chans:
                self.assertEqual(hmtest.Health(c).check("", timeout=10), SERVING)
        finally:
            for c in chans:
                c.close()
        self.assertStillServing()

    # -- admin port

    def test_admin_endpoints(self):
        self.assertEqual(hmtest.http_get(self.d.admin_addr, "/healthz")[0], 200)
        self.assertEqual(hmtest.http_get(self.d.admin_addr, "/readyz")[0], 200)
        self.assertEqual(hmtest.http_get(self.d.admin_addr, "/nope")[0], 404)

    def test_metrics_count_calls(self):
        def counts():
            m = self.d.metrics()
            return (hmtest.metric(m, "hm_grpc_requests_total", method=hmtest.HEALTH_CHECK,
                                  code="OK"),
                    hmtest.metric(m, "hm_grpc_requests_total", method=hmtest.HEALTH_CHECK,
                                  code="NOT_FOUND"),
                    hmtest.metric(m, "hm_grpc_requests_total", method="unknown",
                                  code="UNIMPLEMENTED"))
        def settled(until_fn=lambda c: True):
            # Calls are counted when they end, which may be a moment after the client got its
            # answer: read until two reads 100 ms apart agree (and until_fn holds).
            prev = counts()
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                time.sleep(0.1)
                cur = counts()
                if cur == prev and until_fn(cur):
                    return cur
                prev = cur
            return prev

        ok0, nf0, un0 = settled()
        for _ in range(25):
            self.h.check("")
        for _ in range(3):
            self.rpc_error(self.h.check, "nope")
        for _ in range(4):
            self.rpc_error(self.ch.unary_unary("/x.y.v1.Z/W"), b"", timeout=5)
        ok1, nf1, un1 = settled(lambda c: all(a >= b for a, b in zip(c, (ok0 + 25, nf0 + 3, un0 + 4))))
        # Other tests of this class run one at a time: the deltas are exact.
        self.assertEqual((ok1 - ok0, nf1 - nf0, un1 - un0), (25, 3, 4))
        m = self.d.metrics()
        self.assertIn(("hm_grpc_inflight_calls", frozenset()), m)
        self.assertGreater(hmtest.metric(m, "hm_grpc_request_duration_seconds_count",
                                         method=hmtest.HEALTH_CHECK), 0)

    def test_inflight_gauge_follows_watch_streams(self):
        def inflight():
            return hmtest.metric(self.d.metrics(), "hm_grpc_inflight_calls")

        def settle(want):
            until = time.monotonic() + 3
            while inflight() != want and time.monotonic() < until:
                time.sleep(0.05)
            return inflight()

        # Streams of earlier tests may take a moment to be reaped after their cancel.
        self.assertEqual(settle(0), 0, "calls in flight with no client call running")
        base = 0
        streams = [self.h.watch("", timeout=10) for _ in range(3)]
        for s in streams:
            next(s)
        self.assertEqual(inflight(), base + 3)
        for s in streams:
            s.cancel()
        self.assertEqual(settle(base), base, "cancelled Watch streams still counted in flight")


def _drain(stream):
    out = []
    try:
        for m in stream:
            out.append(m)
    except Exception as e:  # cancelled
        out.append(e)
    return out


def _encode_varint(n):
    out = bytearray()
    while True:
        c = n & 0x7F
        n >>= 7
        out.append(c | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _well_formed(b):
    """True when `b` is a structurally valid protobuf message (tags, wire types 0/1/2/5, lengths
    in bounds; no groups), whatever its fields mean."""
    i = 0
    try:
        while i < len(b):
            key, i = _varint(b, i)
            field, wt = key >> 3, key & 7
            if field > 0x1FFFFFFF:
                return False
            if field == 0:
                return False
            if wt == 0:
                _, i = _varint(b, i)
            elif wt == 1:
                i += 8
            elif wt == 2:
                n, i = _varint(b, i)
                i += n
            elif wt == 5:
                i += 4
            else:
                return False
            if i > len(b):
                return False
        return True
    except IndexError:
        return False


def _varint(b, i):
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i
        if shift > 63:
            raise IndexError


class Drain(hmtest.TestCase):
    """SIGTERM: Watch streams see NOT_SERVING and end; readiness NOT_SERVING during
    HM_SHUTDOWN_DELAY while liveness stays SERVING; exit 0."""

    def test_sigterm_drain(self):
        name, exe = hmtest.daemon_under_test()
        d = hmtest.Daemon(name, exe, label=hmtest.test_name() + "-drain",
                          env={"HM_SHUTDOWN_DELAY": "1500ms"})
        try:
            d.start()
            h = d.health()
            results = {}

            def watch(svc):
                msgs, err = [], None
                try:
                    for m in h.watch(svc, timeout=20):
                        msgs.append(m.status)
                except grpc().RpcError as e:
                    err = e.code()
                results[svc] = (msgs, err)

            threads = [threading.Thread(target=watch, args=(s,)) for s in ("", "readiness")]
            for t in threads:
                t.start()
            until = time.monotonic() + 5
            while time.monotonic() < until and hmtest.metric(d.metrics(),
                                                             "hm_grpc_inflight_calls") < 2:
                time.sleep(0.05)
            t0 = time.monotonic()
            d.send_signal(signal.SIGTERM)
            # During the shutdown delay: readiness NOT_SERVING, liveness still SERVING.
            time.sleep(0.4)
            self.assertTrue(d.alive(), "exited before its HM_SHUTDOWN_DELAY was over")
            self.assertEqual(h.check("readiness", timeout=2), NOT_SERVING)
            self.assertEqual(h.check("liveness", timeout=2), SERVING)
            self.assertEqual(hmtest.http_get(d.admin_addr, "/readyz")[0], 503)
            self.assertEqual(hmtest.http_get(d.admin_addr, "/healthz")[0], 200)
            for t in threads:
                t.join(10)
                self.assertFalse(t.is_alive(), "a Watch stream did not end after SIGTERM")
            for svc, (msgs, err) in results.items():
                self.assertEqual(msgs, [SERVING, NOT_SERVING], "Watch(%r) messages" % svc)
                self.assertIn(err, (None, grpc().StatusCode.UNAVAILABLE),
                              "Watch(%r) end status" % svc)
            status = d.wait(10)
            dt = time.monotonic() - t0
            self.assertEqual(status, 0, "exit status after SIGTERM")
            self.assertLess(dt, 1.5 + 3 + 2, "took %.1f s to exit" % dt)
        finally:
            d.close()


if __name__ == "__main__":
    hmtest.main()
