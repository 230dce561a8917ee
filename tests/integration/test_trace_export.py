"""
Integration: tracing through a running daemon (guestd) to the stand-in OTLP receiver
(tools/standins/otlp_receiver.py, run in this process).

A call carrying a W3C traceparent (and tracestate) comes back as a SERVER span in the exported
OTLP/HTTP JSON with the same trace id, the caller's span as its parent, integer kind, string
nanoseconds and the gRPC attributes; the daemon's log lines for the call carry that trace id and
span id; with HM_TRACE_SAMPLE_RATIO=0 calls without a parent export nothing (parent-based
sampling); spans still queued at SIGTERM are exported before the daemon exits.
"""
import json
import os
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "standins"))
import hmtest  # noqa: E402
import otlp_receiver  # noqa: E402

GET_PROFILE = "/hospitality.guest.v1.GuestService/GetProfile"


def traceparent(sampled=True):
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return trace_id, parent_id, "00-%s-%s-%s" % (trace_id, parent_id, "01" if sampled else "00")


def wait_for_spans(receiver, trace_id, n=1, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with receiver.lock:
            got = [s for s in receiver.spans if s["traceId"] == trace_id]
        if len(got) >= n:
            return got
        time.sleep(0.05)
    return got


def attr(span, key):
    for a in span.get("attributes", []):
        if a["key"] == key:
            return a["value"]
    raise AssertionError("attribute %s missing in %s" % (key, span))


class TraceExportTest(hmtest.TestCase):
    def start(self, **env):
        self.receiver = otlp_receiver.Receiver().start()
        self.addCleanup(self.receiver.stop)
        name, exe = hmtest.daemon_under_test()
        base = {"HM_OTLP_ENDPOINT": "http://127.0.0.1:%d" % self.receiver.port,
                "HM_TRACE_SAMPLE_RATIO": "0", "HM_TRACE_BATCH_MS": "100ms", "HM_AUTH": "off"}
        base.update(env)
        d = hmtest.Daemon(name, exe, env=base).start()
        self.addCleanup(d.close)
        hmtest.project_protos()
        from hospitality.guest.v1 import guest_pb2
        rpc = d.channel().unary_unary(
            GET_PROFILE, request_serializer=guest_pb2.GetProfileRequest.SerializeToString,
            response_deserializer=guest_pb2.GetProfileResponse.FromString)
        return d, lambda md: rpc.with_call(guest_pb2.GetProfileRequest(guest_id=str(uuid.uuid4())),
                                           metadata=md, timeout=5)

    def call(self, rpc, md):
        """Makes the call; its outcome (NOT_FOUND for a random guest) does not matter here."""
        grpc = hmtest.grpc_mod()
        try:
            rpc(md)
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    def test_incoming_context_comes_back_in_the_exported_span(self):
        d, rpc = self.start()
        trace_id, parent_id, tp = traceparent()
        code = self.call(rpc, [("traceparent", tp), ("tracestate", "hm=test,other=1")])
        self.call(rpc, [])  # no parent, ratio 0: not sampled
        spans = wait_for_spans(self.receiver, trace_id)
        self.assertEqual(len(spans), 1, "the traced call was not exported")
        s = spans[0]
        self.assertEqual(s["parentSpanId"], parent_id)
        self.assertRegex(s["spanId"], r"^[0-9a-f]{16}$")
        self.assertNotEqual(s["spanId"], parent_id)
        self.assertEqual(s["kind"], 2)  # SERVER, an integer
        self.assertEqual(s["name"], GET_PROFILE[1:])
        self.assertEqual(s.get("traceState"), "hm=test,other=1")
        self.assertIsInstance(s["startTimeUnixNano"], str)
        self.assertIsInstance(s["endTimeUnixNano"], str)
        self.assertLessEqual(int(s["startTimeUnixNano"]), int(s["endTimeUnixNano"]))
        self.assertEqual(attr(s, "rpc.system"), {"stringValue": "grpc"})
        self.assertEqual(attr(s, "rpc.service"),
                         {"stringValue": "hospitality.guest.v1.GuestService"})
        self.assertEqual(attr(s, "rpc.method"), {"stringValue": "GetProfile"})
        self.assertEqual(attr(s, "rpc.grpc.status_code"), {"intValue": str(code.value[0])})
        self.assertEqual(attr(s, "network.peer.address"), {"stringValue": "127.0.0.1"})
        self.assertEqual(s["resource"]["service.name"], d.name)

        # Everything exported belongs to the traced call: health probes and the call without a
        # parent were not sampled at ratio 0.
        time.sleep(0.3)
        with self.receiver.lock:
            self.assertEqual({x["traceId"] for x in self.receiver.spans}, {trace_id})

        # The daemon's log lines for the call carry its trace and span ids.
        lines = []
        for line in d.log_text().splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("trace_id") == trace_id:
                lines.append(obj)
        self.assertTrue(lines, "no log line carries trace_id %s" % trace_id)
        for obj in lines:
            self.assertEqual(obj.get("span_id"), s["spanId"])

    def test_queued_spans_are_exported_at_shutdown(self):
        d, rpc = self.start(HM_TRACE_BATCH_MS="60s")
        trace_id, _, tp = traceparent()
        self.call(rpc, [("traceparent", tp)])
        self.assertEqual(wait_for_spans(self.receiver, trace_id, timeout=0.5), [],
                         "exported before the 60 s batch timer")
        self.assertEqual(d.stop(), 0)
        self.assertEqual(len(wait_for_spans(self.receiver, trace_id, timeout=5)), 1)

    def test_unsampled_parent_is_not_exported(self):
        d, rpc = self.start(HM_TRACE_SAMPLE_RATIO="1")
        trace_id, _, tp = traceparent(sampled=False)
        self.call(rpc, [("traceparent", tp)])
        self.assertEqual(d.stop(), 0)  # flushes
        with self.receiver.lock:
            self.assertNotIn(trace_id, {x["traceId"] for x in self.receiver.spans})


if __name__ == "__main__":
    hmtest.main()
