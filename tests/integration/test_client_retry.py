"""
Integration: libhm's client (through `hmctl health --attempts`) against a peer that answers
UNAVAILABLE first and SERVING after: the call succeeds on the retry, and the retried request
is byte-for-byte the first one (a reused gRPC byte buffer would send an empty message).
A peer that keeps failing gets exactly the configured number of attempts.
"""
import os
import subprocess
import sys
import threading
from concurrent import futures

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402


class FlakyHealth:
    """A grpc.health.v1 Check that fails the first `failures` calls with UNAVAILABLE."""

    def __init__(self, failures):
        self.failures = failures
        self.requests = []
        self.lock = threading.Lock()

    def check(self, request_bytes, context):
        grpc = hmtest.grpc_mod()
        pb = hmtest.base_protos().health_pb2
        with self.lock:
            self.requests.append(request_bytes)
            n = len(self.requests)
        if n <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVING).SerializeToString()


def serve(handler):
    grpc = hmtest.grpc_mod()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc = grpc.unary_unary_rpc_method_handler(handler.check)  # raw bytes in and out
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": rpc}),))
    port = hmtest.alloc_ports(1)[0]
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    return server, "127.0.0.1:%d" % port


def hmctl():
    return os.environ.get("HM_TEST_HMCTL_EXE") or os.path.join(hmtest.BUILD_ROOT, "tools", "hmctl",
                                                              "hmctl")


class ClientRetryTest(hmtest.TestCase):
    def run_hmctl(self, addr, attempts):
        return subprocess.run([hmctl(), "health", addr, "hospitality.test.Service", "--attempts",
                               str(attempts), "--timeout", "5000"],
                              capture_output=True, text=True, timeout=30)

    def test_retry_after_unavailable_resends_the_same_request(self):
        h = FlakyHealth(failures=1)
        server, addr = serve(h)
        try:
            r = self.run_hmctl(addr, attempts=3)
        finally:
            server.stop(0)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SERVING", r.stdout)
        self.assertEqual(len(h.requests), 2)
        self.assertGreater(len(h.requests[0]), 0)
        self.assertEqual(h.requests[0], h.requests[1])
        pb = hmtest.base_protos().health_pb2
        self.assertEqual(pb.HealthCheckRequest.FromString(h.requests[1]).service,
                         "hospitality.test.Service")

    def test_attempts_are_bounded(self):
        h = FlakyHealth(failures=100)
        server, addr = serve(h)
        try:
            r = self.run_hmctl(addr, attempts=3)
        finally:
            server.stop(0)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("UNAVAILABLE", r.stdout)
        self.assertEqual(len(h.requests), 3)

    def test_single_attempt_does_not_retry(self):
        h = FlakyHealth(failures=1)
        server, addr = serve(h)
        try:
            r = self.run_hmctl(addr, attempts=1)
        finally:
            server.stop(0)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(len(h.requests), 1)


if __name__ == "__main__":
    hmtest.main()
