#!/usr/bin/python3
"""
Interop: a W3C traceparent sent by an @grpc/grpc-js client comes back in the span guestd
exports (issue 3's Done-when line), at the stand-in OTLP receiver
(tools/standins/otlp_receiver.py, in this process).

A small grpc-js program (no generated code: a generic client with hand-encoded
GetProfileRequest bytes) calls GetProfile with a traceparent and a tracestate in its metadata.
The exported SERVER span must carry the client's trace id, the client's span id as its parent,
a new span id of its own, and the tracestate; guestd samples by parent (its own ratio is 0, so
nothing else is exported).
"""
import os
import shutil
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "lib"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools", "standins"))
import hmtest  # noqa: E402
import otlp_receiver  # noqa: E402

CLIENT = r"""
const grpc = require('@grpc/grpc-js');
const [addr, token, traceparent, tracestate, guestId] = process.argv.slice(1); // node -e: no script path
// GetProfileRequest{guest_id}: field 1, wire type 2.
const id = Buffer.from(guestId);
const req = Buffer.concat([Buffer.from([0x0a, id.length]), id]);
const client = new grpc.Client(addr, grpc.credentials.createInsecure());
const md = new grpc.Metadata();
md.set('authorization', 'Bearer ' + token);
md.set('traceparent', traceparent);
md.set('tracestate', tracestate);
client.makeUnaryRequest('/hospitality.guest.v1.GuestService/GetProfile', (b) => b, (b) => b,
  req, md, { deadline: new Date(Date.now() + 5000) }, (err) => {
    console.log(JSON.stringify({ code: err ? err.code : 0 }));
    client.close();
  });
"""


class GrpcJsTraceTest(hmtest.TestCase):

    def test_traceparent_from_grpcjs_comes_back_in_the_exported_span(self):
        node = os.environ.get("HM_TEST_NODE") or shutil.which("node")
        self.assertTrue(node, "node not found")
        modules = os.path.join(HERE, "node_modules")
        self.assertTrue(os.path.isdir(os.path.join(modules, "@grpc", "grpc-js")),
                        "run `npm ci` in tests/interop")
        receiver = otlp_receiver.Receiver().start()
        self.addCleanup(receiver.stop)
        d = hmtest.Daemon("guestd", hmtest.daemon_under_test()[1], env={
            "HM_OTLP_ENDPOINT": "http://127.0.0.1:%d" % receiver.port,
            "HM_TRACE_SAMPLE_RATIO": "0", "HM_TRACE_BATCH_MS": "100ms"})
        self.addCleanup(d.close)
        d.start()

        trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        tp = "00-%s-%s-01" % (trace_id, parent_id)
        r = subprocess.run([node, "-e", CLIENT, d.addr, hmtest.token("js-admin"), tp,
                            "vendor=js", str(uuid.uuid4())],
                           env=dict(os.environ, NODE_PATH=modules), capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('"code":5', r.stdout)  # NOT_FOUND: a random guest; the call was served

        until = time.monotonic() + 10
        spans = []
        while time.monotonic() < until and not spans:
            with receiver.lock:
                spans = [s for s in receiver.spans if s["traceId"] == trace_id]
            time.sleep(0.05)
        self.assertEqual(len(spans), 1, "no span of the grpc-js call was exported")
        s = spans[0]
        self.assertEqual(s["parentSpanId"], parent_id)
        self.assertRegex(s["spanId"], r"^[0-9a-f]{16}$")
        self.assertNotEqual(s["spanId"], parent_id)
        self.assertEqual(s["kind"], 2)  # SERVER
        self.assertEqual(s["name"], "hospitality.guest.v1.GuestService/GetProfile")
        self.assertEqual(s.get("traceState"), "vendor=js")
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    hmtest.main()
